//! One shaper per interface: a second daemon on the same hook would count every packet twice (and
//! police it twice). Each attached interface is claimed with an flock(2) that the kernel
//! releases when the holder exits, however it exits. A daemon's state file is claimed the same
//! way, so two daemons never save over each other's rules.

use std::{
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
};

use crate::datapath::{DatapathError, Result};

/// Where the interface locks live. Fixed rather than configurable: two daemons must agree on it
/// to see each other.
pub const LOCK_DIR: &str = "/run/shaper/locks";

/// A claim on one interface (or one state file), released on drop.
#[derive(Debug)]
pub struct PidLock {
    /// Held open for the flock; closing it releases the claim.
    _file: File,
    path: PathBuf,
}

/// Who holds a claim: a pid, or "unknown".
struct HeldBy(String);

impl PidLock {
    /// Claims `iface` in network namespace `netns` (names repeat across namespaces).
    pub fn acquire(iface: &str, netns: u64) -> Result<Self> {
        Self::acquire_in(Path::new(LOCK_DIR), iface, netns)
    }

    /// Claims the state file `state` for this daemon's lifetime, with a lock file beside it.
    /// A directory others may write to is refused: they could take the names of the lock and
    /// the state file before the daemon does.
    pub fn acquire_state(state: &Path) -> Result<Self> {
        let dir = match state.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(DatapathError::path(dir))?;
        let meta = fs::metadata(dir).map_err(DatapathError::path(dir))?;
        crate::private_files::refuse_writable_by_others(dir, &meta)?;
        let mut name = state.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        Self::claim(dir.join(name))?.map_err(|HeldBy(pid)| DatapathError::StateInUse {
            path: state.to_owned(),
            pid,
        })
    }

    /// Claims the datapath pinned at `pins` (one network namespace's) for this daemon's life.
    pub fn acquire_datapath(pins: &crate::datapath::pins::PinDir) -> Result<Self> {
        let dir = Path::new(LOCK_DIR);
        Self::create_dir(dir)?;
        let path = dir.join(Self::datapath_lock_name(pins));
        Self::claim(path)?.map_err(|HeldBy(pid)| DatapathError::DatapathInUse {
            dir: pins.root().to_owned(),
            pid,
        })
    }

    /// The pid of the daemon that holds the datapath pinned at `pins`, if one runs.
    pub fn datapath_holder(pins: &crate::datapath::pins::PinDir) -> Result<Option<String>> {
        let path = Path::new(LOCK_DIR).join(Self::datapath_lock_name(pins));
        if !path.exists() {
            return Ok(None);
        }
        // Taking the lock and dropping it at once is the only race-free question flock(2)
        // answers; a daemon starting in that instant is refused and can simply start again.
        match Self::claim(path)? {
            Ok(lock) => {
                drop(lock);
                Ok(None)
            }
            Err(HeldBy(pid)) => Ok(Some(pid)),
        }
    }

    fn datapath_lock_name(pins: &crate::datapath::pins::PinDir) -> String {
        // The pin directory's path, flattened: one lock per base directory and namespace.
        let flat: String = pins
            .root()
            .to_string_lossy()
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        format!("datapath{flat}.lock")
    }

    fn create_dir(dir: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(DatapathError::path(dir))
    }

    fn acquire_in(dir: &Path, iface: &str, netns: u64) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(DatapathError::path(dir))?;
        let path = dir.join(format!("net{netns}-{iface}.lock"));
        Self::claim(path)?.map_err(|HeldBy(pid)| DatapathError::AlreadyAttached {
            iface: iface.to_owned(),
            pid,
        })
    }

    /// Takes the flock on `path` (created if needed) and writes our pid into it.
    fn claim(path: PathBuf) -> Result<std::result::Result<Self, HeldBy>> {
        // Never a link or another file: the pid is written into it below, truncating it.
        let mut file = crate::private_files::open_lock_file(&path)?;
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown".to_owned(),
                pid => pid.to_owned(),
            };
            return Ok(Err(HeldBy(pid)));
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        Ok(Ok(Self { _file: file, path }))
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock (the file closes, releasing it, right after), so a
        // daemon that opens the path from now on gets a fresh inode.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_on_an_interface_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("shaper-lock-test-{}", std::process::id()));
        let first = PidLock::acquire_in(&dir, "eth0", 1).expect("first claim");
        let err = PidLock::acquire_in(&dir, "eth0", 1).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("already attached to eth0"), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        // Other interfaces and namespaces are independent.
        let _other_iface = PidLock::acquire_in(&dir, "eth1", 1).expect("other interface");
        let _other_netns = PidLock::acquire_in(&dir, "eth0", 2).expect("other namespace");
        drop(first);
        let _again = PidLock::acquire_in(&dir, "eth0", 1).expect("claim after release");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_file_has_one_daemon_at_a_time() {
        let dir = std::env::temp_dir().join(format!("shaper-state-lock-{}", std::process::id()));
        let state = dir.join("state.json");
        let first = PidLock::acquire_state(&state).expect("first claim");
        let message = PidLock::acquire_state(&state).unwrap_err().to_string();
        assert!(
            message.contains("state.json") && message.contains("--state"),
            "{message}"
        );
        drop(first);
        let _again = PidLock::acquire_state(&state).expect("claim after release");
        let _ = fs::remove_dir_all(&dir);
    }
}
