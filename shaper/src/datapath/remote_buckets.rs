//! The buckets of `--per-remote` rules (`REMOTE_BUCKETS`, an LRU hash the programs fill): how
//! many each rule holds, how many the LRU evicted, and deleting a rule's buckets when the rule
//! is removed or loses `--per-remote`.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues},
};
use serde::{Deserialize, Serialize};
use shaper_common::{BucketState, MAX_REMOTE_BUCKETS, RemoteBucketKey, maps, remote_bucket_stat};

use super::{
    Result,
    classifier::{object_map, object_map_mut},
};

/// What `REMOTE_BUCKETS` and `REMOTE_BUCKET_STATS` say, read together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteBuckets {
    /// Buckets the map can hold, every rule and direction together.
    pub capacity: u32,
    /// Buckets in the map now.
    pub live: u64,
    /// Buckets the programs inserted: one per (rule, direction, remote address) they met
    /// without a bucket.
    pub inserted: u64,
    /// Buckets deleted with their rule (removed, or no longer `--per-remote`).
    pub forgotten: u64,
    /// Buckets the LRU evicted to make room: `inserted − forgotten − live`. An evicted remote
    /// that comes back starts with a full bucket.
    pub evicted: u64,
}

/// Reads the buckets. The live ones are counted before the totals are read, so a bucket
/// inserted during the read can make `evicted` one too high for that reading, never too low;
/// on a quiet map it is exact.
pub(crate) fn reading(ebpf: &Ebpf) -> Result<RemoteBuckets> {
    let map: HashMap<&MapData, RemoteBucketKey, BucketState> =
        HashMap::try_from(object_map(ebpf, maps::REMOTE_BUCKETS)?)?;
    // Keys only: an entry evicted between two steps of the walk just ends it early or skips it.
    let live = map.keys().filter(std::result::Result::is_ok).count() as u64;
    let stats: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(object_map(ebpf, maps::REMOTE_BUCKET_STATS)?)?;
    let total = |stat| -> Result<u64> { Ok(stats.get(&stat, 0)?.iter().sum()) };
    let inserted = total(remote_bucket_stat::INSERTED)?;
    let forgotten = total(remote_bucket_stat::FORGOTTEN)?;
    Ok(RemoteBuckets {
        capacity: MAX_REMOTE_BUCKETS,
        live,
        inserted,
        forgotten,
        evicted: inserted.saturating_sub(forgotten).saturating_sub(live),
    })
}

/// Every bucket in the map now, with its state as the programs last left it, grouped by rule
/// id. An entry evicted during the walk is skipped.
pub(crate) fn by_rule(ebpf: &Ebpf) -> Result<BTreeMap<u16, Vec<(RemoteBucketKey, BucketState)>>> {
    let map: HashMap<&MapData, RemoteBucketKey, BucketState> =
        HashMap::try_from(object_map(ebpf, maps::REMOTE_BUCKETS)?)?;
    let mut rules: BTreeMap<u16, Vec<(RemoteBucketKey, BucketState)>> = BTreeMap::new();
    for (key, state) in map.iter().filter_map(std::result::Result::ok) {
        rules.entry(key.rule).or_default().push((key, state));
    }
    Ok(rules)
}

/// Deletes every bucket of rule `id` and adds them to the forgotten total; returns how many.
/// Called once the programs no longer charge them (the rule's limit no longer has
/// `--per-remote`, or no port names the rule), so none comes back behind the walk. A packet
/// already past its rule lookup may still insert one; it is then evicted in time like any
/// other, and counted as such.
pub(crate) fn forget(ebpf: &mut Ebpf, id: u16) -> Result<u64> {
    let mut map: HashMap<&mut MapData, RemoteBucketKey, BucketState> =
        HashMap::try_from(object_map_mut(ebpf, maps::REMOTE_BUCKETS)?)?;
    let doomed: Vec<RemoteBucketKey> = map
        .keys()
        .filter_map(std::result::Result::ok)
        .filter(|key| key.rule == id)
        .collect();
    let mut deleted = 0;
    for key in &doomed {
        // Already gone (evicted since the walk) is fine: the eviction counts it.
        if map.remove(key).is_ok() {
            deleted += 1;
        }
    }
    if deleted == 0 {
        return Ok(0);
    }
    let mut stats: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(object_map_mut(ebpf, maps::REMOTE_BUCKET_STATS)?)?;
    // The programs never write this entry; userspace keeps its total in CPU 0's copy (the
    // others stay 0), so the sum over CPUs that readers take is the total.
    let mut values: Vec<u64> = stats
        .get(&remote_bucket_stat::FORGOTTEN, 0)?
        .iter()
        .copied()
        .collect();
    if let Some(first) = values.first_mut() {
        *first += deleted;
    }
    stats.set(
        remote_bucket_stat::FORGOTTEN,
        PerCpuValues::try_from(values)?,
        0,
    )?;
    Ok(deleted)
}
