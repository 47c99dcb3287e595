//! One value that all the tests of a test binary share, made by whichever test asks first.
//!
//! The BPF_PROG_TEST_RUN binaries share their loaded classifier this way: creating its maps and
//! verifying both programs is nearly all of such a test's time (0.4 s on a build machine, about
//! 5 s in a TCG guest of the kernel matrix, which runs each of those binaries whole), while
//! running a frame through it takes microseconds.

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// A value made on first use and then lent to one test at a time: a test holds the guard for
/// its whole body, so the binary's tests take turns, in whatever order and on whatever threads
/// the harness runs them, and each sees the value as the previous one left it: what a test
/// leaves behind (rules, counts in the maps) is for its users to clear or to read around. A test
/// that panics while holding it poisons the mutex; the poison is ignored, since a failed
/// assertion leaves the value as usable as a passing test does.
pub struct Shared<T>(OnceLock<Mutex<T>>);

impl<T> Shared<T> {
    pub const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// The value, made with `init` if no test has made it yet (a panic in `init` fails that
    /// test and leaves the next to try again), held until the guard drops.
    pub fn lock(&self, init: impl FnOnce() -> T) -> MutexGuard<'_, T> {
        self.0
            .get_or_init(|| Mutex::new(init()))
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self::new()
    }
}
