//! The bench's own sandbox: network namespaces and veth pairs named `shb*` (apart from the test
//! suite's), temporary directories, CPU pinning, and the Ctrl-C flag every loop watches. All of
//! it is removed on drop, so an error or an interrupt leaves nothing behind.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
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

/// Runs a command to completion; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_setaffinity(0) pins the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

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

#[derive(Debug)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn create(name: String) -> anyhow::Result<Self> {
        // One of the same name left by a killed earlier run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs inside the namespace (`ip netns exec`, which execs the program: the
    /// child's pid is the program's own).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    pub fn sysctl(&self, setting: &str) -> anyhow::Result<()> {
        run(self.command("sysctl").args(["-qw", setting])).map(|_| ())
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets created there stay in the
    /// namespace (a socket keeps the netns it was created in), and so do netlink requests and
    /// tcx attachments made from that thread.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this thread only; the fd is valid for the call.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns {path}: {}", std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces, `a` (the shaper's side) and `b`, joined by a veth pair, with addresses from
/// the benchmarking range 198.18.0.0/15 (RFC 2544), static neighbours (no packet waits on ARP)
/// and TCP timestamps off (fixed 20-byte TCP headers, MSS 1460 at MTU 1500).
#[derive(Debug)]
pub struct VethPair {
    // Deleting a namespace deletes the veth end in it, and its peer with it: the namespaces'
    // guards are all the cleanup a pair needs.
    pub a: Namespace,
    pub b: Namespace,
    pub a_if: String,
    pub b_if: String,
    pub a_addr: Ipv4Addr,
    pub b_addr: Ipv4Addr,
}

impl VethPair {
    /// Pair `index` (a small number): namespaces `shb-<index>a`/`shb-<index>b`, interfaces
    /// `shb<index>a`/`shb<index>b`, subnet 198.18.<index>.0/24.
    pub fn create(index: u8) -> anyhow::Result<Self> {
        let a = Namespace::create(format!("shb-{index}a"))?;
        let b = Namespace::create(format!("shb-{index}b"))?;
        let (a_if, b_if) = (format!("shb{index}a"), format!("shb{index}b"));
        let (a_mac, b_mac) = ("02:00:c6:12:00:01", "02:00:c6:12:00:02");
        ip(&[
            "link", "add", &a_if, "address", a_mac, "netns", &a.name, "type", "veth", "peer",
            "name", &b_if, "address", b_mac, "netns", &b.name,
        ])?;
        let pair = Self {
            a,
            b,
            a_if,
            b_if,
            a_addr: Ipv4Addr::new(198, 18, index, 1),
            b_addr: Ipv4Addr::new(198, 18, index, 2),
        };
        for (ns, dev, addr, peer, peer_mac) in [
            (&pair.a, &pair.a_if, pair.a_addr, pair.b_addr, b_mac),
            (&pair.b, &pair.b_if, pair.b_addr, pair.a_addr, a_mac),
        ] {
            ns.sysctl("net.ipv4.tcp_timestamps=0")?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
            ns.ip(&[
                "neigh",
                "replace",
                &peer.to_string(),
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        Ok(pair)
    }
}
