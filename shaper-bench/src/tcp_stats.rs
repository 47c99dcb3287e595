//! What a TCP sender's kernel says about its connections: the namespace's segment counters
//! (`TcpRetransSegs`, `OutSegs` of /proc/net/snmp) and each socket's smoothed round trip
//! (`rtt:` of `ss -tin`). Parsing is pure and unit-tested; reading goes through the namespace.

use anyhow::Context as _;

use crate::sys::Namespace;

/// A namespace's TCP segment counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub retransmitted: u64,
    pub sent: u64,
}

impl Segments {
    /// Reads /proc/net/snmp of `ns` through /proc/thread-self: /proc/net is the namespace of the
    /// thread group leader, not that of the thread `enter` moved into `ns`.
    pub fn read(ns: &Namespace) -> anyhow::Result<Self> {
        let snmp = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
        Self::parse(&snmp)
    }

    /// The `Tcp:` lines of /proc/net/snmp: a line of names, then a line of values.
    pub fn parse(snmp: &str) -> anyhow::Result<Self> {
        let mut lines = snmp.lines().filter(|line| line.starts_with("Tcp:"));
        let names = lines.next().context("no Tcp: names in /proc/net/snmp")?;
        let values = lines.next().context("no Tcp: values in /proc/net/snmp")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let at = names
                .split_whitespace()
                .position(|n| n == name)
                .with_context(|| format!("no {name} in /proc/net/snmp"))?;
            values
                .split_whitespace()
                .nth(at)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bad {name} in /proc/net/snmp"))
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

/// The smoothed round trips (ms) of the established TCP sockets of `ns` with local or remote
/// port `port`, from `ss -tin`.
pub fn smoothed_rtts_ms(ns: &Namespace, port: u16) -> anyhow::Result<Vec<f64>> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = ns.run("ss", &["-Htin", "state", "established", &filter])?;
    Ok(parse_rtts_ms(&out))
}

/// Every `rtt:SRTT/RTTVAR` of `ss -ti` output: SRTT in milliseconds, one per socket.
pub fn parse_rtts_ms(ss: &str) -> Vec<f64> {
    ss.split_whitespace()
        .filter_map(|word| word.strip_prefix("rtt:"))
        .filter_map(|value| value.split('/').next()?.parse().ok())
        .collect()
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

    #[test]
    fn ss_round_trips_are_the_smoothed_value_of_each_socket() {
        let ss = "ESTAB 0 2896 198.18.3.2:40788 198.18.3.1:5401\n\t cubic wscale:7,7 \
            rto:201 rtt:0.052/0.013 ato:40 mss:1460 cwnd:10 bytes_sent:1234\n\
            ESTAB 0 0 198.18.3.2:40790 198.18.3.1:5401\n\t cubic rto:304 rtt:103.5/1.25 \
            minrtt:0.02 mss:1460\n";
        assert_eq!(parse_rtts_ms(ss), vec![0.052, 103.5]);
        assert!(parse_rtts_ms("").is_empty());
    }
}
