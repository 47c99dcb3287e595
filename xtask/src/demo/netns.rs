//! The demo's two throwaway network namespaces joined by a veth pair. Deleting a namespace
//! deletes the veth end inside it, so dropping the pair removes everything it created.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

/// Where `ip netns add` mounts a namespace (`/var/run` is a link to `/run` on current systems).
const NETNS_DIR: &str = "/run/netns";

/// Runs `ip ARGS`; returns its stdout, or an error with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip(8) (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[derive(Debug)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// Creates namespace `name` with its loopback up (the daemon's metrics endpoint binds
    /// 127.0.0.1 in it), after removing one of the same name that a killed run left behind.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        remove_leftover(name)?;
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command run inside the namespace. `ip netns exec` execs the program, so the child's
    /// pid is the program's own (signals sent to it reach the program).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace. A socket created there stays in the
    /// namespace after the thread ends (a socket keeps the netns it was created in).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file =
                        File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    // SAFETY: setns changes only the calling thread, which ends with the scope;
                    // the fd is open for the duration of the call.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        bail!(
                            "setns {}: {}",
                            path.display(),
                            std::io::Error::last_os_error()
                        );
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("a thread in namespace {} panicked", self.name))?
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("xtask: {e}");
        }
    }
}

/// Removes namespace `name` if an earlier demo that was killed (SIGKILL, power loss) left it,
/// ending the processes still inside it first: a daemon left in it would keep the namespace,
/// and its interface, alive after `ip netns del`.
fn remove_leftover(name: &str) -> anyhow::Result<()> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    let pids: Vec<i32> = ip(&["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    eprintln!(
        "xtask: removing namespace {name}, left by an earlier demo{}",
        if pids.is_empty() {
            String::new()
        } else {
            format!(", and the processes in it: {pids:?}")
        }
    );
    for &pid in &pids {
        // SAFETY: kill(2) has no memory effects; the pids are those `ip` found in our namespace.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    // A daemon detaches and exits within a second of SIGTERM; give it five before SIGKILL.
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

/// Two namespaces, `server` (the daemon and the UDP services) and `client` (the senders),
/// joined by veth `server_if` <-> `client_if`. Addresses come from the benchmarking range
/// 198.18.0.0/15 (RFC 2544), which no real network uses; static neighbours mean no datagram
/// waits on ARP.
#[derive(Debug)]
pub struct VethPair {
    pub server: Namespace,
    pub client: Namespace,
    pub server_if: String,
    pub client_if: String,
    pub server_addr: Ipv4Addr,
    pub client_addr: Ipv4Addr,
}

impl VethPair {
    pub fn create(
        server_ns: &str,
        client_ns: &str,
        server_if: &str,
        client_if: &str,
    ) -> anyhow::Result<Self> {
        let server = Namespace::create(server_ns)?;
        let client = Namespace::create(client_ns)?;
        let (server_mac, client_mac) = ("02:00:c6:12:00:01", "02:00:c6:12:00:02");
        // Created directly inside the namespaces, so no moment exists where a killed run leaves
        // an interface in the caller's namespace.
        ip(&[
            "link", "add", server_if, "address", server_mac, "netns", server_ns, "type", "veth",
            "peer", "name", client_if, "address", client_mac, "netns", client_ns,
        ])?;
        let pair = Self {
            server,
            client,
            server_if: server_if.into(),
            client_if: client_if.into(),
            server_addr: Ipv4Addr::new(198, 18, 0, 1),
            client_addr: Ipv4Addr::new(198, 18, 0, 2),
        };
        for (ns, dev, addr, peer, peer_mac) in [
            (
                &pair.server,
                &pair.server_if,
                pair.server_addr,
                pair.client_addr,
                client_mac,
            ),
            (
                &pair.client,
                &pair.client_if,
                pair.client_addr,
                pair.server_addr,
                server_mac,
            ),
        ] {
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

/// The names of the namespaces whose name starts with `prefix`, from `ip netns list`.
pub fn namespaces_named(prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        // Each line is `NAME` or `NAME (id: N)`.
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}
