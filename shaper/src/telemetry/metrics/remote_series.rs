//! The opt-in per-remote series, `shaper_remote_bytes_total{port,remote,direction}`: the N
//! remotes of watched ports that moved the most bytes (`--metrics-top-remotes N`, default 0 =
//! none). A remote address is unbounded in number, so without a bound a scan or a spoofed
//! flood would create a series per address in Prometheus; with it a scrape has at most N.

use crate::datapath::watched_ports::{TalkersReading, WatchSpec};

/// One series: the bytes one remote exchanged with one watched local port in one direction,
/// over every interface and both protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSeries {
    pub port: u16,
    pub remote: String,
    pub direction: &'static str,
    pub bytes: u64,
}

/// The `n` busiest (by bytes since first seen) remotes of the ports `watches` name now. Entries
/// of ports no longer watched, which linger in the LRU until evicted, are left out.
pub fn top_remotes(reading: &TalkersReading, watches: &[WatchSpec], n: usize) -> Vec<RemoteSeries> {
    if n == 0 {
        return Vec::new();
    }
    let mut sums: std::collections::BTreeMap<(u16, String, &'static str), u64> =
        std::collections::BTreeMap::new();
    for talker in &reading.talkers {
        let watched = watches.iter().any(|w| {
            w.ports.contains(talker.port)
                && w.dir.directions().contains(&talker.direction.index())
                && w.iface.as_ref().is_none_or(|i| *i == talker.iface)
        });
        if watched {
            *sums
                .entry((
                    talker.port,
                    talker.remote.to_string(),
                    talker.direction.name(),
                ))
                .or_default() += talker.bytes;
        }
    }
    let mut series: Vec<RemoteSeries> = sums
        .into_iter()
        .map(|((port, remote, direction), bytes)| RemoteSeries {
            port,
            remote,
            direction,
            bytes,
        })
        .collect();
    // Ties broken by the key, so the same counts always pick the same series.
    series.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    series.truncate(n);
    series
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Direction,
        datapath::{classifier::Proto, watched_ports::Talker},
        policy::rule_table::DirSel,
    };

    fn talker(port: u16, remote: &str, bytes: u64, proto: Proto) -> Talker {
        Talker {
            iface: "eth0".into(),
            direction: Direction::Ingress,
            proto,
            port,
            remote: remote.parse().unwrap(),
            packets: 1,
            bytes,
            dropped_packets: 0,
            dropped_bytes: 0,
            would_drop_packets: 0,
            would_drop_bytes: 0,
        }
    }

    #[test]
    fn at_most_n_series_of_watched_ports_busiest_first_protocols_summed() {
        let reading = TalkersReading {
            talkers: vec![
                talker(9090, "10.0.0.1", 100, Proto::Tcp),
                talker(9090, "10.0.0.1", 50, Proto::Udp),
                talker(9090, "10.0.0.2", 120, Proto::Tcp),
                talker(9090, "10.0.0.3", 10, Proto::Tcp),
                // No longer watched: never a series, however busy.
                talker(22, "10.0.0.9", 1_000_000, Proto::Tcp),
            ],
            capacity: 16384,
            live: 5,
            inserted: 5,
            evicted: 0,
        };
        let watches = [WatchSpec {
            ports: "9090".parse().unwrap(),
            dir: DirSel::Both,
            iface: None,
        }];
        let top = top_remotes(&reading, &watches, 2);
        let pairs: Vec<_> = top.iter().map(|s| (s.remote.as_str(), s.bytes)).collect();
        assert_eq!(pairs, [("10.0.0.1", 150), ("10.0.0.2", 120)]);
        assert!(top_remotes(&reading, &watches, 0).is_empty());
    }
}
