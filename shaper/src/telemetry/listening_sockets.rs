//! The local ports that something listens on, and which process it is.
//!
//! Read from procfs in the daemon's own network namespace (`/proc/net/{tcp,tcp6,udp,udp6}`
//! are the reading process's namespace's tables), the same namespace as the interfaces it
//! shapes. A TCP socket counts in state LISTEN; a UDP socket when it is bound and not connected
//! (state TCP_CLOSE in the table, as `ss -uln` shows "UNCONN"): a connected UDP socket is a
//! client's ephemeral port, not a service. The owner is found by matching the socket's inode
//! against every process's `/proc/PID/fd` links; its name is the kernel's `comm` (at most 15
//! characters). A socket whose owner cannot be seen (a kernel socket, or a process that exited
//! meanwhile) is reported with process `unknown`, and so is every socket when the daemon runs
//! with `--no-owner-names` ([`Owners::Unnamed`]), which skips the walk and, with it, the two
//! capabilities it needs.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use procfs::{
    net::{TcpState, UdpState},
    process::FDTarget,
};
use serde::{Deserialize, Serialize};

use crate::datapath::classifier::Proto;

/// A listening socket's protocol, port and owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listener {
    /// `tcp` or `udp`.
    pub proto: Proto,
    pub port: u16,
    pub process: String,
}

/// The process name used when a socket's owner cannot be found.
pub const UNKNOWN_PROCESS: &str = "unknown";

/// Whether listening sockets are named with their owning processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owners {
    /// Every process's `/proc/PID/fd` is walked for the socket's inode (CAP_SYS_PTRACE and
    /// CAP_DAC_READ_SEARCH for other users' processes).
    #[default]
    Named,
    /// No walk: every socket's process is `unknown`.
    Unnamed,
}

/// Every listening socket, one entry per (protocol, port, process), sorted. A table that
/// cannot be read (IPv6 disabled, say) contributes nothing.
pub fn listeners(owners: Owners) -> Vec<Listener> {
    let unique: BTreeSet<Listener> = scoped_listeners(owners)
        .into_iter()
        .map(|scoped| scoped.listener)
        .collect();
    unique.into_iter().collect()
}

/// A listener and the address it is bound to: who can reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopedListener {
    pub listener: Listener,
    /// `loopback` (127.0.0.0/8, ::1), `any` (0.0.0.0, ::) or the address itself.
    pub scope: String,
}

/// The bind scope of a local address.
pub fn bind_scope(addr: IpAddr) -> String {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if addr.is_loopback() {
        "loopback".to_owned()
    } else if addr.is_unspecified() {
        "any".to_owned()
    } else {
        addr.to_string()
    }
}

/// Every listening socket with its bind scope, one entry per (protocol, port, process, scope),
/// sorted.
pub fn scoped_listeners(owners: Owners) -> Vec<ScopedListener> {
    let mut sockets: Vec<(Proto, SocketAddr, u64)> = Vec::new();
    let tcp = procfs::net::tcp()
        .into_iter()
        .chain(procfs::net::tcp6())
        .flatten();
    for entry in tcp {
        if entry.state == TcpState::Listen {
            sockets.push((Proto::Tcp, entry.local_address, entry.inode));
        }
    }
    let udp = procfs::net::udp()
        .into_iter()
        .chain(procfs::net::udp6())
        .flatten();
    for entry in udp {
        if entry.state == UdpState::Close && entry.local_address.port() != 0 {
            sockets.push((Proto::Udp, entry.local_address, entry.inode));
        }
    }
    let owners = match owners {
        Owners::Named => socket_owners(),
        Owners::Unnamed => HashMap::new(),
    };
    let unique: BTreeSet<ScopedListener> = sockets
        .into_iter()
        .map(|(proto, addr, inode)| ScopedListener {
            listener: Listener {
                proto,
                port: addr.port(),
                process: owners
                    .get(&inode)
                    .cloned()
                    .unwrap_or_else(|| UNKNOWN_PROCESS.to_owned()),
            },
            scope: bind_scope(addr.ip()),
        })
        .collect();
    unique.into_iter().collect()
}

/// Socket inode to the name of a process holding it. Processes come and go during the walk;
/// one that vanishes or hides its fds is skipped.
fn socket_owners() -> HashMap<u64, String> {
    let mut owners = HashMap::new();
    let Ok(processes) = procfs::process::all_processes() else {
        return owners;
    };
    for process in processes.flatten() {
        let Ok(fds) = process.fd() else { continue };
        let mut name = None;
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                let name = match &name {
                    Some(name) => name,
                    None => match process.stat() {
                        Ok(stat) => name.insert(stat.comm),
                        Err(_) => break,
                    },
                };
                owners.entry(inode).or_insert_with(|| name.clone());
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_scopes_name_loopback_any_and_addresses() {
        for (addr, scope) in [
            ("127.0.0.1", "loopback"),
            ("127.0.0.53", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0", "any"),
            ("::", "any"),
            ("::ffff:0.0.0.0", "any"),
            ("198.18.0.1", "198.18.0.1"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            assert_eq!(bind_scope(addr.parse().unwrap()), scope, "{addr}");
        }
    }

    #[test]
    fn a_listening_tcp_socket_and_a_bound_udp_socket_are_found_with_their_owner() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
        client
            .connect(udp.local_addr().expect("addr"))
            .expect("connect");
        let me = procfs::process::Process::myself()
            .and_then(|p| p.stat())
            .expect("own stat")
            .comm;
        let found = listeners(Owners::Named);
        let has = |proto, port| {
            found
                .iter()
                .any(|l| l.proto == proto && l.port == port && l.process == me)
        };
        assert!(
            has(Proto::Tcp, tcp.local_addr().expect("addr").port()),
            "{found:?}"
        );
        assert!(
            has(Proto::Udp, udp.local_addr().expect("addr").port()),
            "{found:?}"
        );
        // A connected UDP socket is a client, not a listener.
        let client_port = client.local_addr().expect("addr").port();
        assert!(
            !found
                .iter()
                .any(|l| l.proto == Proto::Udp && l.port == client_port)
        );
    }
}
