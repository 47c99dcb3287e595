//! Throwaway network namespaces joined by a veth pair. Everything is removed on drop, so a
//! failing test leaves nothing behind (deleting a namespace deletes the veth end inside it).

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
};

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> Output {
    let output = Command::new("ip").args(args).output().expect("run ip(8)");
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[derive(Debug)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn create(name: String) -> Self {
        // A namespace of the same name left by a killed earlier run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `tc -n NAME args...`
    pub fn tc(&self, args: &[&str]) -> String {
        let output = Command::new("tc")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run tc(8)");
        assert!(
            output.status.success(),
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets created there stay in the
    /// namespace after the thread ends (a socket keeps the netns it was created in).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).expect("open netns");
                    // SAFETY: setns on this thread only; the fd is valid for the call.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("thread in namespace panicked")
        })
    }

    pub fn sysctl(&self, setting: &str) {
        let status = self
            .command("sysctl")
            .args(["-qw", setting])
            .status()
            .expect("sysctl");
        assert!(status.success(), "sysctl {setting} in {}", self.name);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces, `a` and `b`, joined by veth `a_if` <-> `b_if`, with addresses from the
/// benchmarking range 198.18.0.0/15 (RFC 2544), static neighbours (so no packet waits on ARP and
/// none is dropped from the resolution queue) and TCP timestamps off (fixed 20-byte TCP headers).
#[derive(Debug)]
pub struct VethPair {
    pub a: Namespace,
    pub b: Namespace,
    pub a_if: String,
    pub b_if: String,
    pub a_addr: std::net::Ipv4Addr,
    pub b_addr: std::net::Ipv4Addr,
}

impl VethPair {
    /// `tag` (a few characters) keeps concurrent pairs apart.
    pub fn create(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let a = Namespace::create(format!("shaper-test-{id}-{tag}-a"));
        let b = Namespace::create(format!("shaper-test-{id}-{tag}-b"));
        let a_if = format!("sh{id}{tag}a");
        let b_if = format!("sh{id}{tag}b");
        let (a_mac, b_mac) = ("02:00:c6:12:00:01", "02:00:c6:12:00:02");
        ip(&[
            "link", "add", &a_if, "address", a_mac, "netns", &a.name, "type", "veth", "peer",
            "name", &b_if, "address", b_mac, "netns", &b.name,
        ]);
        let pair = Self {
            a,
            b,
            a_if,
            b_if,
            a_addr: "198.18.0.1".parse().unwrap(),
            b_addr: "198.18.0.2".parse().unwrap(),
        };
        for (ns, dev, addr, peer, peer_mac) in [
            (&pair.a, &pair.a_if, "198.18.0.1/24", "198.18.0.2", b_mac),
            (&pair.b, &pair.b_if, "198.18.0.2/24", "198.18.0.1", a_mac),
        ] {
            ns.sysctl("net.ipv4.tcp_timestamps=0");
            ns.ip(&["addr", "add", addr, "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&[
                "neigh",
                "replace",
                peer,
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        pair
    }
}
