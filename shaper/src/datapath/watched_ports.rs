//! Watched ports: which local ports the programs account per remote address, and what they
//! counted there (`shaper watch`, `shaper top --port`).
//!
//! The switches live in `WATCHED`, one byte per (interface slot, direction, protocol, port),
//! painted through mmap like the rule index: a watch costs an unwatched port nothing but the
//! lookup of its row. The counts live in the `TALKERS` LRU hash (see `shaper-ebpf/src/talkers.rs`
//! for why shared and LRU), read here one element at a time.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::atomic::Ordering,
};

use aya::maps::{HashMap, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use shaper_common::{
    DIRECTIONS, MAX_TALKERS, PORTS, PROTOS, TalkerCounters, TalkerKey, WATCH_ROWS_PER_IFACE,
    WATCH_TALKERS, WatchRow, maps, watch_row,
};

use crate::{
    Direction,
    datapath::Result,
    datapath::classifier::{Classifier, PROTOCOLS, Proto, object_map},
    types::{keywords::DirSel, ports::PortRange},
};

/// Bytes of map memory the watched ports and the trace take: the switches of `interfaces`
/// interfaces, the LRU of [`MAX_TALKERS`] remotes, each counted at 24 B key + 48 B value + about
/// 100 B of the kernel's hash element and LRU node (kernel/bpf/hashtab.c `struct htab_elem`,
/// rounded up), and the trace's ring buffer.
pub fn map_memory_bytes(interfaces: u64) -> u64 {
    let switches = interfaces * u64::from(WATCH_ROWS_PER_IFACE) * size_of::<WatchRow>() as u64;
    switches
        + u64::from(MAX_TALKERS) * TALKER_ENTRY_BYTES
        + u64::from(shaper_common::TRACE_RING_BYTES)
}

/// What one `TALKERS` element takes, as estimated in [`map_memory_bytes`].
pub const TALKER_ENTRY_BYTES: u64 = 24 + 48 + 100;

/// One watch: local ports whose remotes are accounted, in one or both directions, on one or
/// every interface. Both protocols are watched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSpec {
    pub ports: PortRange,
    #[serde(default)]
    pub dir: DirSel,
    /// The interface, or `None` for every interface.
    #[serde(default)]
    pub iface: Option<String>,
}

impl std::fmt::Display for WatchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "port {} dir {}", self.ports, self.dir)?;
        if let Some(iface) = &self.iface {
            write!(f, " iface {iface}")?;
        }
        Ok(())
    }
}

/// Makes the switches equal to what `watches` ask for on the classifier's interfaces; returns
/// the number of cells written. Each cell is one byte store, which the program reads whole.
pub fn paint(classifier: &Classifier, watches: &[WatchSpec]) -> usize {
    let names = classifier.interface_names();
    let cells = classifier.watched_cells();
    let mut written = 0;
    for (slot, name) in names.iter().enumerate() {
        for direction in 0..DIRECTIONS {
            for port in 0..PORTS {
                let port = port as u16;
                let wanted = !name.is_empty()
                    && watches.iter().any(|w| {
                        w.ports.contains(port)
                            && w.dir.directions().contains(&direction)
                            && w.iface.as_ref().is_none_or(|i| i == name)
                    });
                for proto in 0..PROTOS {
                    let row = watch_row(slot as u32, direction, proto) as usize;
                    let Some(cell) = cells.get(row * PORTS as usize + usize::from(port)) else {
                        continue;
                    };
                    let old = cell.load(Ordering::Relaxed);
                    let new = if wanted {
                        old | WATCH_TALKERS
                    } else {
                        old & !WATCH_TALKERS
                    };
                    if new != old {
                        cell.store(new, Ordering::Relaxed);
                        written += 1;
                    }
                }
            }
        }
    }
    written
}

/// What one remote address exchanged with one watched local port, as the programs counted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Talker {
    pub iface: String,
    pub direction: Direction,
    pub proto: Proto,
    /// The local port.
    pub port: u16,
    /// The remote address (IPv4 shown as IPv4).
    pub remote: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub would_drop_packets: u64,
    pub would_drop_bytes: u64,
}

/// Every remote in `TALKERS` (of `port` only, if given), and how honest the numbers are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TalkersReading {
    pub talkers: Vec<Talker>,
    /// Remotes the map can hold.
    pub capacity: u32,
    /// Remotes in the map now, of every port.
    pub live: u64,
    /// Remotes the programs ever inserted into this datapath's map.
    pub inserted: u64,
    /// Remotes evicted to make room (inserted − live: userspace never deletes an entry). Their
    /// counts are gone; everything still listed is exact.
    pub evicted: u64,
}

/// Reads the `TALKERS` map. The live entries are counted before the inserts are read, so a
/// remote arriving during the read can make `evicted` one too high for that reading, never
/// too low; on a quiet map it is exact.
pub fn read(classifier: &Classifier, port: Option<u16>) -> Result<TalkersReading> {
    let ebpf = classifier.ebpf();
    let map = object_map(ebpf, maps::TALKERS)?;
    let talkers_map: HashMap<&MapData, TalkerKey, TalkerCounters> = HashMap::try_from(map)?;
    let names = classifier.interface_names();
    let mut talkers = Vec::new();
    let mut live = 0u64;
    for entry in talkers_map.iter() {
        // An element evicted between finding its key and reading it is skipped, like one that
        // left before the read began.
        let Ok((key, counters)) = entry else {
            continue;
        };
        live += 1;
        if port.is_some_and(|p| p != key.port) {
            continue;
        }
        let (Some(direction), Some(&proto)) = (
            Direction::BOTH.get(usize::from(key.direction)),
            PROTOCOLS.get(usize::from(key.proto)),
        ) else {
            continue;
        };
        talkers.push(Talker {
            iface: names
                .get(usize::from(key.slot))
                .cloned()
                .unwrap_or_default(),
            direction: *direction,
            proto,
            port: key.port,
            remote: remote_addr(key.addr),
            packets: counters.seen.packets,
            bytes: counters.seen.bytes,
            dropped_packets: counters.dropped.packets,
            dropped_bytes: counters.dropped.bytes,
            would_drop_packets: counters.would_drop.packets,
            would_drop_bytes: counters.would_drop.bytes,
        });
    }
    let inserts = object_map(ebpf, maps::TALKER_INSERTS)?;
    let inserts: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(inserts)?;
    let inserted: u64 = inserts.get(&0, 0)?.iter().sum();
    Ok(TalkersReading {
        talkers,
        capacity: MAX_TALKERS,
        live,
        inserted,
        evicted: inserted.saturating_sub(live),
    })
}

/// The key's address as the operator knows it: IPv4-mapped addresses as IPv4.
fn remote_addr(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_read_as_ipv4_and_others_as_ipv6() {
        let mut v4 = [0u8; 16];
        v4[10] = 0xff;
        v4[11] = 0xff;
        v4[12..].copy_from_slice(&[10, 0, 0, 7]);
        assert_eq!(remote_addr(v4), "10.0.0.7".parse::<IpAddr>().unwrap());
        let v6: Ipv6Addr = "fd00::7".parse().unwrap();
        assert_eq!(remote_addr(v6.octets()), IpAddr::V6(v6));
    }

    #[test]
    fn watch_specs_default_to_both_directions_every_interface_and_refuse_typos() {
        let spec: WatchSpec = serde_json::from_str(r#"{"ports":"9090"}"#).unwrap();
        assert_eq!(spec.dir, DirSel::Both);
        assert_eq!(spec.iface, None);
        assert_eq!(spec.to_string(), "port 9090 dir both");
        assert!(serde_json::from_str::<WatchSpec>(r#"{"ports":"9090","dri":"ingress"}"#).is_err());
    }

    #[test]
    fn talker_memory_is_switches_per_interface_plus_the_lru() {
        assert_eq!(
            map_memory_bytes(2) - map_memory_bytes(1),
            4 * 64 * 1024,
            "256 KiB of switches per interface"
        );
        assert_eq!(map_memory_bytes(0), 16_384 * 172 + 512 * 1024);
    }
}
