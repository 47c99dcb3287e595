//! The fragment tracker's totals: how many fragmented datagrams the programs remembered, how
//! many later fragments found their first, and how many datagrams the LRU evicted.

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use serde::{Deserialize, Serialize};
use shaper_common::{FragmentKey, FragmentPorts, MAX_FRAGMENTED_DATAGRAMS, fragment_stat, maps};

use super::{Result, classifier::object_map};

/// What `FRAGMENTS` and `FRAGMENT_STATS` say, read together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentTracking {
    /// Datagrams the map can hold.
    pub capacity: u32,
    /// Datagrams in the map now.
    pub live: u64,
    /// Fragmented datagrams whose first fragment the programs inserted.
    pub tracked: u64,
    /// Later fragments counted (and charged) under their first fragment's port.
    pub placed: u64,
    /// Datagrams evicted to make room: `tracked − live`, userspace never deleting an entry. A
    /// later fragment of an evicted datagram counts as `fragment`, unplaced.
    pub evicted: u64,
}

/// Reads the tracker. The live entries are counted before the totals are read, so a datagram
/// arriving during the read can make `evicted` one too high for that reading, never too low;
/// on a quiet map it is exact.
pub(crate) fn tracking(ebpf: &Ebpf) -> Result<FragmentTracking> {
    let map: HashMap<&MapData, FragmentKey, FragmentPorts> =
        HashMap::try_from(object_map(ebpf, maps::FRAGMENTS)?)?;
    // Keys only: an entry evicted between two steps of the walk just ends it early or skips it.
    let live = map.keys().filter(Result::is_ok).count() as u64;
    let stats: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(object_map(ebpf, maps::FRAGMENT_STATS)?)?;
    let total = |stat| -> Result<u64> { Ok(stats.get(&stat, 0)?.iter().sum()) };
    let tracked = total(fragment_stat::INSERTED)?;
    Ok(FragmentTracking {
        capacity: MAX_FRAGMENTED_DATAGRAMS,
        live,
        tracked,
        placed: total(fragment_stat::PLACED)?,
        evicted: tracked.saturating_sub(live),
    })
}
