//! TCP connection telemetry as userspace reads it: the per-port event counters and handshake
//! round-trip histograms (mmapable arrays, read from shared memory like the port counters), and
//! the totals of the handshake tracker.

use std::{
    collections::BTreeMap,
    os::fd::BorrowedFd,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use serde::{Deserialize, Serialize};
use shaper_common::{
    DIR_INGRESS, HANDSHAKE_ENTRIES, Handshake, HandshakeKey, HandshakeStats, REMOTE_ENTRIES,
    RTT_BUCKETS, RTT_HISTOGRAMS_PER_IFACE, RTT_SIDE_CLIENT, RTT_SIDE_SERVER, RemoteKey,
    RttHistogram, TCP_EVENTS_PER_IFACE, TcpEvents, handshake, maps, rtt_index, tcp_events_index,
};

use crate::datapath::{
    Result,
    classifier::{map_shared, object_map, object_map_mut},
    ktime,
    mapped_arrays::{ReadOnlyMapping, WritableMapping},
};

/// A port row's TCP events (see docs/src/guide/tcp.md for which port each counts
/// under) and its handshake round-trip histogram: client side on an ingress row, server side
/// on an egress row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCounts {
    pub syn: u64,
    pub synack: u64,
    pub rst: u64,
    pub fin: u64,
    pub probes: u64,
    /// Non-cumulative counts per bucket; bucket `i` ends at 2^(16+i) ns, the last is +Inf.
    pub rtt_buckets: Vec<u64>,
}

impl TcpCounts {
    pub fn new(events: &TcpEvents, histogram: &RttHistogram) -> Self {
        Self {
            syn: events.syn,
            synack: events.synack,
            rst: events.rst,
            fin: events.fin,
            probes: events.probes,
            rtt_buckets: histogram.buckets.to_vec(),
        }
    }
}

const EVENT_WORDS: usize = size_of::<TcpEvents>() / 8;
const RTT_WORDS: usize = size_of::<RttHistogram>() / 8;

/// The mapped `TCP_EVENTS` and `HANDSHAKE_RTT` arrays.
#[derive(Debug)]
pub struct TcpTelemetry {
    events: ReadOnlyMapping,
    rtt: ReadOnlyMapping,
}

impl TcpTelemetry {
    /// Maps both arrays of the loaded object, sized for `capacity` interfaces.
    pub(crate) fn map(ebpf: &Ebpf, capacity: u32) -> Result<Self> {
        let events = map_shared(ebpf, maps::TCP_EVENTS, |fd: BorrowedFd<'_>| {
            ReadOnlyMapping::new(
                fd,
                (capacity * TCP_EVENTS_PER_IFACE) as usize * size_of::<TcpEvents>(),
            )
        })?;
        let rtt = map_shared(ebpf, maps::HANDSHAKE_RTT, |fd: BorrowedFd<'_>| {
            ReadOnlyMapping::new(
                fd,
                (capacity * RTT_HISTOGRAMS_PER_IFACE) as usize * size_of::<RttHistogram>(),
            )
        })?;
        Ok(Self { events, rtt })
    }

    /// The events of (interface slot, direction index, port); zero outside the map. Each field
    /// is loaded atomically on its own.
    pub fn events(&self, slot: u32, direction: u32, port: u16) -> TcpEvents {
        let word = tcp_events_index(slot, direction, port) as usize * EVENT_WORDS;
        let load = |field: usize| self.events.load(word + field).unwrap_or(0);
        TcpEvents {
            syn: load(0),
            synack: load(1),
            rst: load(2),
            fin: load(3),
            probes: load(4),
            pending: load(5),
        }
    }

    /// The handshake round trips of (interface slot, side, port).
    pub fn histogram(&self, slot: u32, side: u32, port: u16) -> RttHistogram {
        let word = rtt_index(slot, side, port) as usize * RTT_WORDS;
        let mut histogram = RttHistogram::default();
        for (i, bucket) in histogram.buckets.iter_mut().enumerate() {
            *bucket = self.rtt.load(word + i).unwrap_or(0);
        }
        histogram.sum_ns = self.rtt.load(word + RTT_BUCKETS).unwrap_or(0);
        histogram
    }
}

/// Bytes of map memory the TCP telemetry takes for `interfaces` interfaces (values and keys;
/// the LRU's elements also carry the kernel's `struct htab_elem`, 64 bytes as `bpftool` reports).
pub fn map_memory_bytes(interfaces: u32) -> u64 {
    let interfaces = u64::from(interfaces);
    let events = interfaces * u64::from(TCP_EVENTS_PER_IFACE) * size_of::<TcpEvents>() as u64;
    let rtt = interfaces * u64::from(RTT_HISTOGRAMS_PER_IFACE) * size_of::<RttHistogram>() as u64;
    let element = size_of::<HandshakeKey>() + size_of::<Handshake>() + 64;
    let tracker = u64::from(HANDSHAKE_ENTRIES) * element.next_multiple_of(8) as u64;
    let remotes =
        u64::from(REMOTE_ENTRIES) * (size_of::<RemoteKey>() + size_of::<u64>() + 64) as u64;
    events + rtt + tracker + remotes + size_of::<HandshakeStats>() as u64
}

/// The (interface slot, local port, remote address) of every handshake the `REMOTES` LRU
/// remembers (at most `REMOTE_ENTRIES`).
pub(crate) fn remotes(ebpf: &Ebpf) -> Result<Vec<RemoteKey>> {
    let remotes: HashMap<&MapData, RemoteKey, u64> =
        HashMap::try_from(object_map(ebpf, maps::REMOTES)?)?;
    // A walk that loses its place starts again from the first key (see `tracking`): bounded to
    // the map's size; the caller counts distinct pairs, so repeats do not matter.
    Ok(remotes
        .keys()
        .take(REMOTE_ENTRIES as usize)
        .map_while(|key| key.ok())
        .collect())
}

impl TcpTelemetry {
    /// The events and round trips of a port's row (client side on ingress, server side on
    /// egress); `None` when it has counted nothing.
    pub fn counts(&self, slot: u32, direction: u32, port: u16) -> Option<TcpCounts> {
        let events = self.events(slot, direction, port);
        let side = if direction == DIR_INGRESS {
            RTT_SIDE_CLIENT
        } else {
            RTT_SIDE_SERVER
        };
        let histogram = self.histogram(slot, side, port);
        let quiet = TcpEvents {
            pending: events.pending,
            ..TcpEvents::default()
        };
        (events != quiet || histogram.buckets.iter().any(|&b| b != 0))
            .then(|| TcpCounts::new(&events, &histogram))
    }
}

/// What the handshake tracker did since the datapath was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeTracking {
    /// Handshakes whose clock started (a SYN-ACK sent after a tracked SYN, or a SYN sent).
    pub timed: u64,
    /// Samples in the histograms.
    pub measured: u64,
    /// Ended without a sample by a retransmission or a reset.
    pub discarded: u64,
    /// Timed and still waiting for their reply in the LRU.
    pub in_flight: u64,
    /// Timed handshakes the LRU evicted before their reply: samples lost. Counted as
    /// `timed - measured - discarded - in_flight` (see [`tracking`] for the order of reads).
    pub lost: u64,
}

/// Reads the tracker's totals and counts its timed entries (at most `HANDSHAKE_ENTRIES` keys).
pub(crate) fn tracking(ebpf: &Ebpf) -> Result<HandshakeTracking> {
    let stats: Array<&MapData, HandshakeStats> =
        Array::try_from(object_map(ebpf, maps::HANDSHAKE_STATS)?)?;
    // Timed handshakes are read before the walk and their outcomes after it, so a handshake
    // that starts or ends during the walk can only make `lost` err low this time (a later
    // scrape then shows more, as a counter may), never high (a later scrape would show less).
    let before = stats.get(&0, 0)?;
    let handshakes: HashMap<&MapData, HandshakeKey, Handshake> =
        HashMap::try_from(object_map(ebpf, maps::HANDSHAKES)?)?;
    // Entries come and go during the walk: when the key the walk stands on is gone, the kernel
    // starts again from the first (`htab_map_get_next_key()`, kernel/bpf/hashtab.c), so a key
    // may be counted twice (`lost` errs low) and the walk is bounded to the map's size.
    let in_flight = handshakes
        .iter()
        .take(HANDSHAKE_ENTRIES as usize)
        .map_while(|entry| entry.ok())
        .filter(|(_, h)| h.state == handshake::SYNACK_SENT || h.state == handshake::SYN_SENT)
        .count() as u64;
    let after = stats.get(&0, 0)?;
    Ok(HandshakeTracking {
        timed: after.timed,
        measured: after.measured,
        discarded: after.discarded,
        in_flight,
        lost: before
            .timed
            .saturating_sub(after.measured + after.discarded + in_flight),
    })
}

/// Keeps each port's ingress `pending` count (the handshakes waiting for an ACK, which decides
/// whether the program looks an ACK up in the `HANDSHAKES` LRU) equal to what the LRU holds.
/// Two things raise it for good otherwise: a handshake whose ACK never comes (the client gave
/// up) and one the LRU evicts to make room. Either would send every later ACK to that port down
/// the slow path. One [`pass`](Self::pass), every few seconds:
/// - removes `SYNACK_SENT` entries older than `stale_after` and takes each out of `pending`
///   (the program does the same when an ACK or a RST removes one; whoever removes the entry
///   counts it, so never twice);
/// - finds ports whose `pending` is above their `SYNACK_SENT` entries: evictions. The excess
///   is subtracted once two passes in a row saw it (the smaller of the two): a handshake that
///   starts or ends during a walk of the LRU looks like an excess once, never twice.
#[derive(Debug)]
pub struct PendingRepair {
    stale_after: Duration,
    /// Each (slot, port)'s excess in the previous pass.
    excess: BTreeMap<(u32, u16), u64>,
}

/// What a [`PendingRepair::pass`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Handshakes removed because their ACK did not come within `stale_after`.
    pub stale: u64,
    /// Counts subtracted for handshakes the LRU evicted.
    pub evicted: u64,
    /// Ports whose count was lowered.
    pub ports: usize,
}

impl PendingRepair {
    /// How long a SYN-ACK may wait for its ACK: Linux retransmits it for about 63 s with the
    /// default `tcp_synack_retries` of 5 (1 + 2 + 4 + 8 + 16 + 32 s), then drops the request.
    pub const STALE_AFTER: Duration = Duration::from_secs(75);

    pub fn new(stale_after: Duration) -> Self {
        Self {
            stale_after,
            excess: BTreeMap::new(),
        }
    }

    /// One pass over the LRU and the ingress counts of `capacity` interface slots.
    pub(crate) fn pass(&mut self, ebpf: &mut Ebpf, capacity: u32) -> Result<Repaired> {
        let rows = (capacity * TCP_EVENTS_PER_IFACE) as usize;
        let events = map_shared(ebpf, maps::TCP_EVENTS, |fd: BorrowedFd<'_>| {
            WritableMapping::new(fd, rows * size_of::<TcpEvents>())
        })?;
        let pending_word = |slot: u32, port: u16| {
            let row = tcp_events_index(slot, DIR_INGRESS, port) as usize;
            events.words().get(row * EVENT_WORDS + PENDING_WORD)
        };
        let mut handshakes: HashMap<&mut MapData, HandshakeKey, Handshake> =
            HashMap::try_from(object_map_mut(ebpf, maps::HANDSHAKES)?)?;
        // Bounded to the map's size: a walk that loses its place starts again (see `tracking`).
        let entries: Vec<(HandshakeKey, Handshake)> = handshakes
            .iter()
            .take(HANDSHAKE_ENTRIES as usize)
            .map_while(|entry| entry.ok())
            .filter(|(_, h)| h.state == handshake::SYNACK_SENT)
            .collect();
        let now = ktime::monotonic_ns();
        let stale_ns = u64::try_from(self.stale_after.as_nanos()).unwrap_or(u64::MAX);
        let mut repaired = Repaired::default();
        let mut waiting: BTreeMap<(u32, u16), u64> = BTreeMap::new();
        for (key, entry) in entries {
            if now.saturating_sub(entry.stamp_ns) >= stale_ns {
                // Gone already (its ACK came, or the LRU took it): not ours to count.
                if handshakes.remove(&key).is_ok() {
                    if let Some(word) = pending_word(key.slot, key.local_port) {
                        subtract(word, 1);
                    }
                    repaired.stale += 1;
                }
            } else {
                *waiting.entry((key.slot, key.local_port)).or_default() += 1;
            }
        }
        let mut excess = BTreeMap::new();
        for slot in 0..capacity {
            for port in 0..=u16::MAX {
                let Some(word) = pending_word(slot, port) else {
                    continue;
                };
                let count = word.load(Ordering::Relaxed);
                let held = waiting.get(&(slot, port)).copied().unwrap_or(0);
                // A count above what waits, or one that went below zero (wrapped): too high.
                if count == 0 || (count <= held && count <= i64::MAX as u64) {
                    continue;
                }
                let now_excess = count.wrapping_sub(held);
                if let Some(&before) = self.excess.get(&(slot, port)) {
                    let by = before.min(now_excess);
                    subtract(word, by);
                    repaired.evicted = repaired.evicted.wrapping_add(by);
                    repaired.ports += 1;
                } else {
                    excess.insert((slot, port), now_excess);
                }
            }
        }
        self.excess = excess;
        Ok(repaired)
    }
}

/// Word of [`TcpEvents`] that holds `pending`.
const PENDING_WORD: usize = std::mem::offset_of!(TcpEvents, pending) / 8;

/// Takes `by` from a count the program adds to with atomic adds: a compare-and-swap, so an
/// add or a subtraction by the program in between is never lost.
fn subtract(word: &AtomicU64, by: u64) {
    let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
        Some(count.wrapping_sub(by))
    });
}
