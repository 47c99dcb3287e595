//! The bench's own sandbox: network namespaces and veth pairs named `shb*` (apart from the test
//! suite's), temporary directories, and the Ctrl-C flag every loop watches. All of
//! it is removed on drop, so an error or an interrupt leaves nothing behind.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set a flag instead of killing the process, so the scenario in progress
/// stops at its next check and unwinds through its guards (namespaces, daemons, nft tables).
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails once Ctrl-C was pressed; called between steps of every scenario.
pub fn check_interrupt() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps until `deadline`, waking early (with an error) on Ctrl-C.
pub fn sleep_until(deadline: Instant) -> anyhow::Result<()> {
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// The CPUs this process may use (affinity and cgroup quota), as the report states them.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("shb-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub use shaper_testbed::netns::{Namespace, VethPair, run};

/// Pair `index` (a small number): namespaces `shb-<index>a`/`shb-<index>b`, interfaces
/// `shb<index>a`/`shb<index>b`, subnet 198.18.<index>.0/24.
pub fn veth_pair(index: u8) -> anyhow::Result<VethPair> {
    let (a, b) = (format!("shb-{index}a"), format!("shb-{index}b"));
    let (a_if, b_if) = (format!("shb{index}a"), format!("shb{index}b"));
    let names = shaper_testbed::netns::PairNames {
        a: &a,
        b: &b,
        a_if: &a_if,
        b_if: &b_if,
    };
    Ok(VethPair::create(names, index)?)
}
