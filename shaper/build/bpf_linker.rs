//! Where the bpf-linker that matches the active rustc lives.
//!
//! Shared by `shaper`'s build script (which puts it on PATH for the eBPF build) and
//! `cargo xtask bootstrap` (which builds it there), so both agree on one location.
//!
//! bpf-linker reads the LLVM bitcode rustc emits, so its LLVM must be at least rustc's ("Invalid
//! record" otherwise). It is built against rustc's own libLLVM and cached per rustc commit.

use std::path::PathBuf;

/// What a cached bpf-linker was built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkerKey {
    pub rustc_commit: String,
    pub llvm_major: u32,
}

impl LinkerKey {
    /// Reads the key from `rustc -vV` output.
    pub fn from_rustc_verbose_version(text: &str) -> Option<Self> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let rustc_commit = field("commit-hash:")?.to_owned();
        let llvm_major = field("LLVM version:")?.split('.').next()?.parse().ok()?;
        Some(Self {
            rustc_commit,
            llvm_major,
        })
    }

    /// The directory name under `bpf-linker/` in the cache.
    pub fn dir_name(&self) -> String {
        let commit: String = self.rustc_commit.chars().take(12).collect();
        format!("{commit}-llvm{}", self.llvm_major)
    }
}

/// `$SHAPER_CACHE_DIR`, else `$XDG_CACHE_HOME/shaper`, else `$HOME/.cache/shaper`.
pub fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SHAPER_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("shaper"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("shaper"))
}

/// The install root (`--root` of `cargo install`) of the bpf-linker for `key`.
pub fn linker_root(key: &LinkerKey) -> Option<PathBuf> {
    cache_root().map(|root| root.join("bpf-linker").join(key.dir_name()))
}

/// The command that builds the missing linker; named in every error about it.
pub const BOOTSTRAP_COMMAND: &str = "cargo xtask bootstrap";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comes_from_commit_and_llvm_major() {
        let text = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\n\
                    commit-hash: 59807616e1fa2540724bfbac14d7976d7e4a3860\n\
                    host: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.2\n";
        let key = LinkerKey::from_rustc_verbose_version(text).unwrap();
        assert_eq!(key.llvm_major, 22);
        assert_eq!(key.dir_name(), "59807616e1fa-llvm22");
    }

    #[test]
    fn output_without_llvm_version_has_no_key() {
        assert_eq!(
            LinkerKey::from_rustc_verbose_version("commit-hash: abc\n"),
            None
        );
    }
}
