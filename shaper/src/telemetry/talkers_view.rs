//! The model behind `shaper top --port`: two readings of a watched port's remotes make one view
//! of who sends and receives how much, busiest first, optionally grouped by prefix.
//!
//! Rates are deltas over the real time between the readings, as in [`super::top_view`]. A
//! remote evicted between the readings shows its totals from the second reading only: its
//! earlier counts are gone with it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::{
    Direction,
    datapath::classifier::Proto,
    datapath::watched_ports::{Talker, TalkersReading},
};

/// The `schema` of [`PortView`] (`shaper top --port P --once --json`), its own document.
pub const SCHEMA: u32 = 1;

/// How remote addresses are grouped: the prefix length kept of each family (32 and 128 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    pub v4: u8,
    pub v6: u8,
}

impl Default for Grouping {
    fn default() -> Self {
        Self { v4: 32, v6: 128 }
    }
}

/// One `--group` value: `/N` applies to IPv4 when N ≤ 32 and to IPv6 when it is longer;
/// `v4/N` and `v6/N` name the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupPrefix {
    V4(u8),
    V6(u8),
}

impl FromStr for GroupPrefix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("'{text}' is not /N, v4/N (N ≤ 32) or v6/N (N ≤ 128)");
        let (family, length) = text.split_once('/').ok_or_else(bad)?;
        let length: u8 = length.parse().map_err(|_| bad())?;
        match family {
            "" if length <= 32 => Ok(Self::V4(length)),
            "" | "v6" if length <= 128 => Ok(Self::V6(length)),
            "v4" if length <= 32 => Ok(Self::V4(length)),
            _ => Err(bad()),
        }
    }
}

impl Grouping {
    pub fn from_prefixes(prefixes: &[GroupPrefix]) -> Self {
        let mut grouping = Self::default();
        for prefix in prefixes {
            match *prefix {
                GroupPrefix::V4(n) => grouping.v4 = n,
                GroupPrefix::V6(n) => grouping.v6 = n,
            }
        }
        grouping
    }

    /// The address or prefix `remote` is shown as: the address itself at full length, else
    /// the network with its length (`10.0.3.0/24`, `fd00:1::/64`).
    pub fn label(&self, remote: IpAddr) -> String {
        match remote {
            IpAddr::V4(a) if self.v4 < 32 => {
                let mask = u32::MAX.checked_shl(u32::from(32 - self.v4)).unwrap_or(0);
                format!("{}/{}", Ipv4Addr::from(u32::from(a) & mask), self.v4)
            }
            IpAddr::V6(a) if self.v6 < 128 => {
                let mask = u128::MAX.checked_shl(u32::from(128 - self.v6)).unwrap_or(0);
                format!("{}/{}", Ipv6Addr::from(u128::from(a) & mask), self.v6)
            }
            other => other.to_string(),
        }
    }
}

/// What `shaper top --port` shows for one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortView {
    pub schema: u32,
    /// The local port.
    pub port: u16,
    pub interval_seconds: f64,
    /// `null`, or the prefix lengths remotes are grouped by.
    pub group_v4: Option<u8>,
    pub group_v6: Option<u8>,
    /// The `TALKERS` map: capacity, live remotes (every port), and remotes evicted so far.
    pub capacity: u32,
    pub live: u64,
    pub evicted: u64,
    /// One row per (interface, direction, protocol, remote or prefix), busiest first.
    pub remotes: Vec<RemoteRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteRow {
    pub iface: String,
    pub direction: Direction,
    pub proto: Proto,
    /// The address, or the prefix with its length when grouped.
    pub remote: String,
    /// Remote addresses in this row (1 unless grouped).
    pub addresses: u64,
    /// Totals since each address was first seen (or last evicted).
    pub packets: u64,
    pub bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub would_drop_packets: u64,
    pub would_drop_bytes: u64,
    /// Over the interval.
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    pub bits_per_second: f64,
    pub dropped_packets_per_second: f64,
    pub would_drop_packets_per_second: f64,
    /// This row's part of the port's bytes per second in its direction (0 to 1; 0 when the
    /// port was idle).
    pub share: f64,
}

/// Directions by their index: `Direction` has no order.
type RowKey = (String, u32, Proto, String);

/// The view of `port` from two readings taken `seconds` apart.
pub fn view(
    port: u16,
    before: &TalkersReading,
    after: &TalkersReading,
    seconds: f64,
    grouping: Grouping,
) -> PortView {
    let key_of = |t: &Talker| (t.iface.clone(), t.direction.index(), t.proto, t.remote);
    let earlier: BTreeMap<_, &Talker> = before
        .talkers
        .iter()
        .filter(|t| t.port == port)
        .map(|t| (key_of(t), t))
        .collect();
    let mut rows: BTreeMap<RowKey, RemoteRow> = BTreeMap::new();
    let per_second = |delta: u64| {
        if seconds > 0.0 {
            delta as f64 / seconds
        } else {
            0.0
        }
    };
    for talker in after.talkers.iter().filter(|t| t.port == port) {
        let was = earlier.get(&key_of(talker));
        // A counter below its earlier value is a remote evicted and seen anew: all of it is new.
        let delta = |now: u64, then: fn(&Talker) -> u64| {
            was.map_or(now, |w| now.checked_sub(then(w)).unwrap_or(now))
        };
        let label = grouping.label(talker.remote);
        let row = rows
            .entry((
                talker.iface.clone(),
                talker.direction.index(),
                talker.proto,
                label.clone(),
            ))
            .or_insert_with(|| RemoteRow {
                iface: talker.iface.clone(),
                direction: talker.direction,
                proto: talker.proto,
                remote: label,
                addresses: 0,
                packets: 0,
                bytes: 0,
                dropped_packets: 0,
                dropped_bytes: 0,
                would_drop_packets: 0,
                would_drop_bytes: 0,
                packets_per_second: 0.0,
                bytes_per_second: 0.0,
                bits_per_second: 0.0,
                dropped_packets_per_second: 0.0,
                would_drop_packets_per_second: 0.0,
                share: 0.0,
            });
        row.addresses += 1;
        row.packets += talker.packets;
        row.bytes += talker.bytes;
        row.dropped_packets += talker.dropped_packets;
        row.dropped_bytes += talker.dropped_bytes;
        row.would_drop_packets += talker.would_drop_packets;
        row.would_drop_bytes += talker.would_drop_bytes;
        row.packets_per_second += per_second(delta(talker.packets, |t| t.packets));
        row.bytes_per_second += per_second(delta(talker.bytes, |t| t.bytes));
        row.dropped_packets_per_second +=
            per_second(delta(talker.dropped_packets, |t| t.dropped_packets));
        row.would_drop_packets_per_second +=
            per_second(delta(talker.would_drop_packets, |t| t.would_drop_packets));
    }
    let mut remotes: Vec<RemoteRow> = rows.into_values().collect();
    let mut port_rate: BTreeMap<u32, f64> = BTreeMap::new();
    for row in &remotes {
        *port_rate.entry(row.direction.index()).or_default() += row.bytes_per_second;
    }
    for row in &mut remotes {
        row.bits_per_second = row.bytes_per_second * 8.0;
        let total = port_rate
            .get(&row.direction.index())
            .copied()
            .unwrap_or(0.0);
        row.share = if total > 0.0 {
            row.bytes_per_second / total
        } else {
            0.0
        };
    }
    remotes.sort_by(|a, b| {
        b.bytes_per_second
            .total_cmp(&a.bytes_per_second)
            .then(b.bytes.cmp(&a.bytes))
            .then_with(|| a.remote.cmp(&b.remote))
    });
    PortView {
        schema: SCHEMA,
        port,
        interval_seconds: seconds,
        group_v4: (grouping.v4 < 32).then_some(grouping.v4),
        group_v6: (grouping.v6 < 128).then_some(grouping.v6),
        capacity: after.capacity,
        live: after.live,
        evicted: after.evicted,
        remotes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn talker(remote: &str, packets: u64, bytes: u64) -> Talker {
        Talker {
            iface: "eth0".into(),
            direction: Direction::Ingress,
            proto: Proto::Udp,
            port: 9090,
            remote: remote.parse().unwrap(),
            packets,
            bytes,
            dropped_packets: 0,
            dropped_bytes: 0,
            would_drop_packets: 0,
            would_drop_bytes: 0,
        }
    }

    fn reading(talkers: Vec<Talker>) -> TalkersReading {
        TalkersReading {
            live: talkers.len() as u64,
            talkers,
            capacity: 16384,
            inserted: 0,
            evicted: 0,
        }
    }

    #[test]
    fn group_prefixes_name_their_family() {
        assert_eq!("/24".parse(), Ok(GroupPrefix::V4(24)));
        assert_eq!("/64".parse(), Ok(GroupPrefix::V6(64)));
        assert_eq!("v6/16".parse(), Ok(GroupPrefix::V6(16)));
        assert!("/129".parse::<GroupPrefix>().is_err());
        assert!("v4/33".parse::<GroupPrefix>().is_err());
        assert!("24".parse::<GroupPrefix>().is_err());
    }

    #[test]
    fn grouping_masks_each_family_by_its_own_length() {
        let g = Grouping::from_prefixes(&[GroupPrefix::V4(24), GroupPrefix::V6(64)]);
        assert_eq!(g.label("10.1.2.3".parse().unwrap()), "10.1.2.0/24");
        assert_eq!(
            g.label("fd00:1:2:3:4::5".parse().unwrap()),
            "fd00:1:2:3::/64"
        );
        let none = Grouping::default();
        assert_eq!(none.label("10.1.2.3".parse().unwrap()), "10.1.2.3");
        let all = Grouping::from_prefixes(&[GroupPrefix::V4(0)]);
        assert_eq!(all.label("10.1.2.3".parse().unwrap()), "0.0.0.0/0");
    }

    #[test]
    fn busiest_first_with_exact_shares_and_groups_summed() {
        let before = reading(vec![talker("10.0.0.1", 0, 0), talker("10.0.0.2", 0, 0)]);
        let after = reading(vec![
            talker("10.0.0.1", 10, 1000),
            talker("10.0.0.2", 30, 3000),
            talker("10.0.1.9", 1, 100),
        ]);
        let v = view(9090, &before, &after, 2.0, Grouping::default());
        let order: Vec<_> = v.remotes.iter().map(|r| r.remote.as_str()).collect();
        assert_eq!(order, ["10.0.0.2", "10.0.0.1", "10.0.1.9"]);
        assert_eq!(v.remotes[0].bytes_per_second, 1500.0);
        assert_eq!(v.remotes[0].share, 3000.0 / 4100.0);
        let grouped = view(
            9090,
            &before,
            &after,
            2.0,
            Grouping::from_prefixes(&[GroupPrefix::V4(24)]),
        );
        assert_eq!(grouped.remotes.len(), 2);
        assert_eq!(grouped.remotes[0].remote, "10.0.0.0/24");
        assert_eq!(grouped.remotes[0].addresses, 2);
        assert_eq!(grouped.remotes[0].packets, 40);
    }
}
