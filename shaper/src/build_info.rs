//! What this binary was built from, as `shaper --version` prints it: the crate version, the git
//! commit (`-dirty` when tracked files differed from it, `unknown` for a build outside a git
//! checkout without `SHAPER_GIT_COMMIT`), and the aya and rustc versions (all found by
//! `build.rs`).

/// The git commit: a short hash, maybe with `-dirty`, or `unknown`.
pub const GIT_COMMIT: &str = env!("SHAPER_GIT_COMMIT");

/// The aya version Cargo.lock resolved.
pub const AYA_VERSION: &str = env!("SHAPER_AYA_VERSION");

/// `0.1.0 (commit 7382c16, aya 0.14.0, rustc 1.95.0)`: what follows `shaper ` in `--version`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SHAPER_GIT_COMMIT"),
    ", aya ",
    env!("SHAPER_AYA_VERSION"),
    ", rustc ",
    env!("SHAPER_RUSTC_VERSION"),
    ")"
);
