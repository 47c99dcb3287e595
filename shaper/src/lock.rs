//! One shaper per interface: a second daemon on the same hook would count every packet twice (and
//! later police it twice). Each attached interface is claimed with an flock(2) that the kernel
//! releases when the holder exits, however it exits.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Where the interface locks live. Fixed rather than configurable: two daemons must agree on it
/// to see each other.
pub const LOCK_DIR: &str = "/run/shaper/locks";

/// A claim on one interface, released on drop.
#[derive(Debug)]
pub struct InterfaceLock {
    /// Held open for the flock; closing it releases the claim.
    _file: File,
    path: PathBuf,
}

impl InterfaceLock {
    /// Claims `iface` in network namespace `netns` (names repeat across namespaces).
    pub fn acquire(iface: &str, netns: u64) -> Result<Self> {
        Self::acquire_in(Path::new(LOCK_DIR), iface, netns)
    }

    fn acquire_in(dir: &Path, iface: &str, netns: u64) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(Error::path(dir))?;
        let path = dir.join(format!("net{netns}-{iface}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(Error::path(&path))?;
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown".to_owned(),
                pid => pid.to_owned(),
            };
            return Err(Error::AlreadyAttached {
                iface: iface.to_owned(),
                pid,
            });
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        Ok(Self { _file: file, path })
    }
}

impl Drop for InterfaceLock {
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
        let first = InterfaceLock::acquire_in(&dir, "eth0", 1).expect("first claim");
        let err = InterfaceLock::acquire_in(&dir, "eth0", 1).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("already attached to eth0"), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        // Other interfaces and namespaces are independent.
        let _other_iface = InterfaceLock::acquire_in(&dir, "eth1", 1).expect("other interface");
        let _other_netns = InterfaceLock::acquire_in(&dir, "eth0", 2).expect("other namespace");
        drop(first);
        let _again = InterfaceLock::acquire_in(&dir, "eth0", 1).expect("claim after release");
        let _ = fs::remove_dir_all(&dir);
    }
}
