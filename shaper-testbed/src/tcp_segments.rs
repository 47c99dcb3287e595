//! A namespace's TCP segment counters (`RetransSegs`, `OutSegs` of /proc/net/snmp: RFC 4022's
//! tcpRetransSegs and tcpOutSegs): how much of what a sender sent was sent again.

use crate::netns::Namespace;

/// Why the counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnmpError {
    #[error("reading /proc/net/snmp: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Namespace(#[from] crate::netns::Error),
    #[error("/proc/net/snmp: {0}")]
    Format(String),
}

/// A namespace's TCP segment counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub retransmitted: u64,
    pub sent: u64,
}

impl Segments {
    /// Reads /proc/net/snmp of `ns` through /proc/thread-self: /proc/net is the namespace of the
    /// thread group leader, not that of the thread `enter` moved into `ns`.
    pub fn read(ns: &Namespace) -> Result<Self, SnmpError> {
        let snmp = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
        Self::parse(&snmp)
    }

    /// The `Tcp:` lines of /proc/net/snmp: a line of names, then a line of values.
    pub fn parse(snmp: &str) -> Result<Self, SnmpError> {
        let mut lines = snmp.lines().filter(|line| line.starts_with("Tcp:"));
        let missing = |what: &str| SnmpError::Format(format!("no Tcp: {what}"));
        let names = lines.next().ok_or_else(|| missing("names"))?;
        let values = lines.next().ok_or_else(|| missing("values"))?;
        let field = |name: &str| -> Result<u64, SnmpError> {
            let at = names
                .split_whitespace()
                .position(|n| n == name)
                .ok_or_else(|| SnmpError::Format(format!("no {name}")))?;
            values
                .split_whitespace()
                .nth(at)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| SnmpError::Format(format!("bad {name}")))
        };
        Ok(Self {
            retransmitted: field("RetransSegs")?,
            sent: field("OutSegs")?,
        })
    }

    /// Retransmitted segments per segment sent from `self` to `later` (0 when nothing was sent).
    /// The counters only grow; a smaller later value (a namespace recreated) reads as 0.
    pub fn retrans_share_until(self, later: Self) -> f64 {
        let sent = later.sent.saturating_sub(self.sent);
        let retransmitted = later.retransmitted.saturating_sub(self.retransmitted);
        if sent == 0 {
            0.0
        } else {
            retransmitted as f64 / sent as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
        Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets \
        CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
        Tcp: 1 200 120000 -1 3 0 0 0 1 4242 7791 4181 0 2 0\n\
        Udp: InDatagrams NoPorts\nUdp: 5 0\n";

    #[test]
    fn snmp_counters_are_read_by_name() {
        assert_eq!(
            Segments::parse(SNMP).unwrap(),
            Segments {
                retransmitted: 4181,
                sent: 7791
            }
        );
    }

    #[test]
    fn snmp_without_tcp_lines_is_an_error() {
        assert!(Segments::parse("Ip: Forwarding\nIp: 1\n").is_err());
        assert!(Segments::parse("Tcp: OutSegs\nTcp: 5\n").is_err());
    }

    #[test]
    fn the_share_is_the_delta_of_retransmitted_over_the_delta_sent() {
        let before = Segments {
            retransmitted: 100,
            sent: 1000,
        };
        let after = Segments {
            retransmitted: 110,
            sent: 3000,
        };
        assert_eq!(before.retrans_share_until(after), 10.0 / 2000.0);
        assert_eq!(before.retrans_share_until(before), 0.0);
        assert_eq!(after.retrans_share_until(before), 0.0);
    }
}
