//! Throwaway network namespaces joined by a veth pair: traffic stays between namespaces the
//! caller creates, and everything is removed on drop (deleting a namespace deletes the veth end
//! inside it, and with it the peer), so an error or a failing test leaves nothing behind.

use std::{
    ffi::OsStr,
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

/// Where `ip netns add` mounts a namespace (`/var/run` is a link to `/run` on current systems).
const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("entering namespace {namespace}: {source}")]
    Setns {
        namespace: String,
        #[source]
        source: io::Error,
    },
    #[error("a thread in namespace {namespace} panicked")]
    Panicked { namespace: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Runs `command` to completion: its stdout, or an error with its stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let name = format!("{command:?}");
    let output = command.output().map_err(|source| Error::Spawn {
        command: name.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Failed {
            command: name,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip ARGS` (iproute2).
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// The names of the namespaces whose name starts with `prefix`, from `ip netns list`.
pub fn namespaces_named(prefix: &str) -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        // Each line is `NAME` or `NAME (id: N)`.
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// Creates namespace `name` with its loopback up, after removing one of the same name that a
    /// killed earlier run left behind.
    pub fn create(name: &str) -> Result<Self> {
        remove_leftover(name)?;
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command run inside the namespace. `ip netns exec` execs the program, so the child's pid
    /// is the program's own (signals sent to it reach the program).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program ARGS` inside the namespace to completion; its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    pub fn sysctl(&self, setting: &str) -> Result<()> {
        self.run("sysctl", &["-qw", setting]).map(|_| ())
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets created there stay in the
    /// namespace after the thread ends (a socket keeps the netns it was created in), and so do
    /// netlink requests and tcx attachments made from that thread.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        let setns_error = |source| Error::Setns {
            namespace: self.name.clone(),
            source,
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).map_err(setns_error)?;
                    // SAFETY: setns changes only the calling thread, which ends with the scope;
                    // the fd is open for the duration of the call.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(setns_error(io::Error::last_os_error()));
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| Error::Panicked {
                    namespace: self.name.clone(),
                })?
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("{e}");
        }
    }
}

/// Removes namespace `name` if a killed earlier run (SIGKILL, power loss) left it, ending the
/// processes still inside it first: a daemon left in it would keep the namespace, and its
/// interface, alive after `ip netns del`.
fn remove_leftover(name: &str) -> Result<()> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    let pids: Vec<i32> = ip(&["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    eprintln!("removing namespace {name}, left by an earlier run, and its processes {pids:?}");
    for &pid in &pids {
        // SAFETY: kill(2) has no memory effects; the pids are those `ip` found in the namespace.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    // A shaper daemon detaches and exits within a second of SIGTERM; give it five before SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(5);
    for &pid in &pids {
        while Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    ip(&["netns", "del", name]).map(|_| ())
}

/// Names of a pair: its two namespaces and the veth end in each.
#[derive(Debug, Clone, Copy)]
pub struct PairNames<'a> {
    pub a: &'a str,
    pub b: &'a str,
    pub a_if: &'a str,
    pub b_if: &'a str,
}

/// Two namespaces, `a` and `b`, joined by veth `a_if` <-> `b_if`, with addresses
/// 198.18.`subnet`.1 and .2 from the benchmarking range 198.18.0.0/15 (RFC 2544, which no real
/// network uses), static neighbours (so no packet waits on ARP and none is dropped from the
/// resolution queue) and TCP timestamps off (fixed 20-byte TCP headers, so byte counts are
/// exact).
#[derive(Debug)]
pub struct VethPair {
    pub a: Namespace,
    pub b: Namespace,
    pub a_if: String,
    pub b_if: String,
    pub a_addr: Ipv4Addr,
    pub b_addr: Ipv4Addr,
}

impl VethPair {
    pub fn create(names: PairNames<'_>, subnet: u8) -> Result<Self> {
        let a = Namespace::create(names.a)?;
        let b = Namespace::create(names.b)?;
        let (a_mac, b_mac) = ("02:00:c6:12:00:01", "02:00:c6:12:00:02");
        // Created directly inside the namespaces: no moment exists where a killed run leaves an
        // interface in the caller's namespace.
        ip(&[
            "link", "add", names.a_if, "address", a_mac, "netns", names.a, "type", "veth", "peer",
            "name", names.b_if, "address", b_mac, "netns", names.b,
        ])?;
        let pair = Self {
            a,
            b,
            a_if: names.a_if.into(),
            b_if: names.b_if.into(),
            a_addr: Ipv4Addr::new(198, 18, subnet, 1),
            b_addr: Ipv4Addr::new(198, 18, subnet, 2),
        };
        for (ns, dev, addr, peer, peer_mac) in [
            (&pair.a, &pair.a_if, pair.a_addr, pair.b_addr, b_mac),
            (&pair.b, &pair.b_if, pair.b_addr, pair.a_addr, a_mac),
        ] {
            ns.sysctl("net.ipv4.tcp_timestamps=0")?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
            let peer = peer.to_string();
            let neighbour = [
                "neigh",
                "replace",
                &peer,
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ];
            ns.ip(&neighbour)?;
        }
        Ok(pair)
    }
}
