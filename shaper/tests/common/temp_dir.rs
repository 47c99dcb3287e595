//! A directory of the test's own below the system's temp dir, emptied when made and removed on
//! drop, even when the test fails.

use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `$TMPDIR/shaper-tmp-PID-TAG`, made afresh: the pid keeps concurrent test runs apart, the
    /// tag the tests of one run (a daemon's own directory is `shaper-test-PID-TAG`, so the same
    /// tag may name both).
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("shaper-tmp-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test's temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// Where a daemon of this test keeps its state file.
    pub fn state_file(&self) -> PathBuf {
        self.join("state.json")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
