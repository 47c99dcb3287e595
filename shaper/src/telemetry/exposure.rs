//! `shaper exposure`: every listening port with who can reach it and who did, and the closed
//! ports that were probed — surprising lines first.
//!
//! What the hook saw is what the datapath counted since it was made (it outlives a daemon
//! restart when pinned): handshakes accepted (SYN-ACKs a local port sent) and the remote
//! addresses they went to. The remotes come from an LRU of (interface, port, remote address)
//! pairs of `REMOTE_ENTRIES` entries over all ports: exact while fewer pairs were seen, a lower
//! bound (the most recent pairs) after. UDP has no handshake: its listeners show no
//! connections.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{IpAddr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};
use shaper_common::{DIR_EGRESS, DIR_INGRESS, PORTS, PROTO_TCP};

use crate::{
    Classifier, Direction,
    datapath::classifier::Proto,
    telemetry::Result,
    telemetry::listening_sockets::{Owners, ScopedListener, scoped_listeners},
};

/// The JSON schema version of [`Exposure`]; bumped on any incompatible change.
pub const EXPOSURE_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exposure {
    pub schema_version: u32,
    /// Listening sockets, surprising first (see [`surprise`]).
    pub listening: Vec<ExposedPort>,
    /// TCP ports nothing listens on that received probes (SYNs answered by a reset).
    pub probed_closed: Vec<ProbedPort>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExposedPort {
    pub proto: Proto,
    pub port: u16,
    pub process: String,
    /// `loopback`, `any` or the bound address.
    pub scope: String,
    /// A limit rule governs the port on some attached interface.
    pub rule: bool,
    /// Handshakes accepted (SYN-ACKs sent), over the attached interfaces.
    pub accepted: u64,
    /// Distinct remote addresses accepted from (a lower bound once the LRU is full).
    pub remotes: u64,
    /// Some of them are not this host's own addresses.
    pub from_outside: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbedPort {
    pub iface: String,
    pub port: u16,
    /// SYNs answered by our reset: nothing listens.
    pub probes: u64,
    /// SYNs that got neither a SYN-ACK nor a reset (retransmissions included): dropped further
    /// in, by a firewall say. Counted here, in userspace, as SYNs minus SYN-ACKs minus probes
    /// of a port nothing listens on.
    #[serde(default)]
    pub unanswered: u64,
}

/// How surprising a listener is, higher first: reachable from other hosts, reached from outside,
/// and no rule on it.
pub fn surprise(port: &ExposedPort) -> (bool, bool, bool) {
    (port.scope != "loopback", port.from_outside, !port.rule)
}

/// Gathers the report from the classifier and procfs, naming listeners' processes or not.
pub fn gather(classifier: &Classifier, owners: Owners) -> Result<Exposure> {
    let tcp = classifier.port_counters();
    let tcp = tcp.tcp();
    let interfaces = classifier.interface_states();
    let own = host_addresses();
    let mut remotes: BTreeMap<u16, BTreeSet<[u8; 16]>> = BTreeMap::new();
    for key in classifier.accepted_remotes()? {
        if classifier.slot_is_current(key.slot) {
            remotes
                .entry(key.local_port)
                .or_default()
                .insert(key.remote_addr);
        }
    }
    let listeners = scoped_listeners(owners);
    let mut listening: Vec<ExposedPort> = listeners
        .iter()
        .map(|ScopedListener { listener, scope }| {
            let is_tcp = listener.proto == Proto::Tcp;
            let accepted = if is_tcp {
                interfaces
                    .iter()
                    .map(|i| tcp.events(i.slot, DIR_EGRESS, listener.port).synack)
                    .sum()
            } else {
                0
            };
            let seen = remotes.get(&listener.port).filter(|_| is_tcp);
            let rule = interfaces.iter().any(|i| {
                Direction::BOTH.into_iter().any(|d| {
                    classifier
                        .local_rule(i.slot, d, listener.proto.index(), listener.port)
                        .is_some()
                })
            });
            ExposedPort {
                proto: listener.proto,
                port: listener.port,
                process: listener.process.clone(),
                scope: scope.clone(),
                rule,
                accepted,
                remotes: seen.map_or(0, |s| s.len() as u64),
                from_outside: seen.is_some_and(|s| {
                    s.iter()
                        .any(|a| !own.contains(&canonical(IpAddr::V6(Ipv6Addr::from(*a)))))
                }),
            }
        })
        .collect();
    listening.sort_by(|a, b| {
        surprise(b)
            .cmp(&surprise(a))
            .then(b.accepted.cmp(&a.accepted))
            .then(a.proto.cmp(&b.proto))
            .then(a.port.cmp(&b.port))
            .then(a.scope.cmp(&b.scope))
    });
    let open: HashSet<u16> = listeners
        .iter()
        .filter(|l| l.listener.proto == Proto::Tcp)
        .map(|l| l.listener.port)
        .collect();
    let mut probed_closed = Vec::new();
    for iface in &interfaces {
        for port in 0..PORTS {
            let port = port as u16;
            let received = tcp.events(iface.slot, DIR_INGRESS, port);
            if received.syn == 0 || open.contains(&port) {
                continue;
            }
            let accepted = tcp.events(iface.slot, DIR_EGRESS, port).synack;
            let unanswered = received
                .syn
                .saturating_sub(accepted)
                .saturating_sub(received.probes);
            if received.probes != 0 || unanswered != 0 {
                probed_closed.push(ProbedPort {
                    iface: iface.name.clone(),
                    port,
                    probes: received.probes,
                    unanswered,
                });
            }
        }
    }
    probed_closed.sort_by(|a, b| {
        (b.probes + b.unanswered)
            .cmp(&(a.probes + a.unanswered))
            .then(a.port.cmp(&b.port))
    });
    debug_assert_eq!(PROTO_TCP, Proto::Tcp.index());
    Ok(Exposure {
        schema_version: EXPOSURE_SCHEMA_VERSION,
        listening,
        probed_closed,
    })
}

/// IPv4-mapped IPv6 addresses as IPv4, so both spellings of an address compare equal.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses of this network namespace's interfaces (getifaddrs(3)); empty if they cannot
/// be read, which makes every remote count as outside.
fn host_addresses() -> HashSet<IpAddr> {
    let mut addresses = HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`, which is freed below on success.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return addresses;
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let (addr, next) = unsafe { ((*entry).ifa_addr, (*entry).ifa_next) };
        if !addr.is_null() {
            // SAFETY: a non-null `ifa_addr` points to a sockaddr whose family says its type.
            let family = i32::from(unsafe { (*addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET, so the sockaddr is a sockaddr_in.
                let v4 = unsafe { *(addr as *const libc::sockaddr_in) };
                addresses.insert(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6, so the sockaddr is a sockaddr_in6.
                let v6 = unsafe { *(addr as *const libc::sockaddr_in6) };
                addresses.insert(IpAddr::from(v6.sin6_addr.s6_addr));
            }
        }
        entry = next;
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed once; no node is used after.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

impl Exposure {
    /// The report as a table.
    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<5} {:>5}  {:<15} {:<16} {:<4} {:>9} {:>7}  OUTSIDE",
            "PROTO", "PORT", "PROCESS", "SCOPE", "RULE", "ACCEPTED", "REMOTES"
        );
        for p in &self.listening {
            let _ = writeln!(
                out,
                "{:<5} {:>5}  {:<15} {:<16} {:<4} {:>9} {:>7}  {}",
                p.proto,
                p.port,
                p.process,
                p.scope,
                if p.rule { "yes" } else { "no" },
                p.accepted,
                p.remotes,
                if p.from_outside { "yes" } else { "no" },
            );
        }
        if !self.probed_closed.is_empty() {
            let _ = writeln!(
                out,
                "\nprobed closed ports (SYNs answered by a reset, or by nothing):"
            );
            for p in &self.probed_closed {
                let _ = writeln!(
                    out,
                    "  {:<16} tcp/{:<5} {:>9} probes {:>9} unanswered",
                    p.iface, p.port, p.probes, p.unanswered
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(scope: &str, from_outside: bool, rule: bool, accepted: u64) -> ExposedPort {
        ExposedPort {
            proto: Proto::Tcp,
            port: 1,
            process: "p".into(),
            scope: scope.into(),
            rule,
            accepted,
            remotes: 0,
            from_outside,
        }
    }

    #[test]
    fn exposed_reached_unruled_listeners_are_the_most_surprising() {
        let mut ports = [
            port("loopback", false, false, 100),
            port("any", false, true, 0),
            port("any", true, true, 0),
            port("10.0.0.1", true, false, 0),
        ];
        ports.sort_by_key(|p| std::cmp::Reverse(surprise(p)));
        let order: Vec<(&str, bool, bool)> = ports
            .iter()
            .map(|p| (p.scope.as_str(), p.from_outside, p.rule))
            .collect();
        assert_eq!(
            order,
            [
                ("10.0.0.1", true, false),
                ("any", true, true),
                ("any", false, true),
                ("loopback", false, false)
            ]
        );
    }

    #[test]
    fn loopback_is_among_the_host_addresses() {
        let own = host_addresses();
        assert!(
            own.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()),
            "{own:?}"
        );
        assert_eq!(
            canonical("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
