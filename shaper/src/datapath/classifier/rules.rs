//! The rules as the programs read them: each rule's limit and buckets, and the rule index that
//! maps (interface, direction, protocol, port) to a rule. Written in place while the programs
//! run, in an order that never shows a packet half of a change.

use std::sync::atomic::Ordering;

use aya::maps::{Array, MapData};
use shaper_common::{
    ACTION_PACE, BucketState, NO_RULE, PORTS, RULE_FLAG_PER_REMOTE, RuleConfig, RuleCounters,
    SIDE_LOCAL, bucket_index, maps, rule_index_row,
};

use super::{Classifier, object_map, object_map_mut};
use crate::{
    datapath::Result, datapath::attach::Direction, datapath::ktime, datapath::remote_buckets,
};

impl Classifier {
    /// Writes the limit of rule `id`. For a `fresh` id (a new rule) its buckets are filled (a
    /// whole burst, stamped now) and its counters zeroed first, so a new rule starts full
    /// whatever the uptime and nothing of an earlier rule with the same id carries over;
    /// replacing a rule's limit keeps both. The buckets are written before the limit: until the
    /// program finds a rate it passes the rule's packets uncharged, so no packet meets the old
    /// bucket under the new limit. The program picks the new limit up on its next packet.
    ///
    /// A limit that loses `--per-remote` (or is cleared) takes the rule's remote buckets with
    /// it, once the programs no longer charge them.
    pub fn write_rule(&mut self, id: u16, config: &RuleConfig, fresh: bool) -> Result<()> {
        let rule = id;
        let id = u32::from(id);
        let before = Array::<&MapData, RuleConfig>::try_from(object_map(&self.ebpf, maps::RULES)?)?
            .get(&id, 0)?;
        // A pace rule keeps a clock where the others keep tokens: a rule that becomes or stops
        // being a pace rule starts afresh there (full, stamped now), as a new rule does.
        let paced = |config: &RuleConfig| config.action == ACTION_PACE;
        if fresh || paced(&before) != paced(config) {
            let mut buckets: Array<&mut MapData, BucketState> =
                Array::try_from(object_map_mut(&mut self.ebpf, maps::BUCKETS)?)?;
            let full = BucketState::full(config.burst_nanobits, ktime::monotonic_ns());
            for direction in Direction::BOTH {
                buckets.set(bucket_index(id, direction.index()), full, 0)?;
            }
        }
        if fresh {
            let mut counters: Array<&mut MapData, RuleCounters> =
                Array::try_from(object_map_mut(&mut self.ebpf, maps::RULE_COUNTERS)?)?;
            for direction in Direction::BOTH {
                counters.set(
                    bucket_index(id, direction.index()),
                    RuleCounters::default(),
                    0,
                )?;
            }
        }
        let mut rules: Array<&mut MapData, RuleConfig> =
            Array::try_from(object_map_mut(&mut self.ebpf, maps::RULES)?)?;
        rules.set(id, *config, 0)?;
        if before.flags & RULE_FLAG_PER_REMOTE != 0 && config.flags & RULE_FLAG_PER_REMOTE == 0 {
            let forgotten = remote_buckets::forget(&mut self.ebpf, rule)?;
            log::debug!("rule {rule}: {forgotten} remote bucket(s) deleted");
        }
        Ok(())
    }

    /// The totals of the `--per-remote` buckets: live, inserted, deleted, evicted.
    pub fn remote_buckets(&self) -> Result<remote_buckets::RemoteBuckets> {
        remote_buckets::reading(&self.ebpf)
    }

    /// Every `--per-remote` bucket as the programs last left it, by rule id.
    pub fn remote_buckets_by_rule(
        &self,
    ) -> Result<std::collections::BTreeMap<u16, Vec<(shaper_common::RemoteBucketKey, BucketState)>>>
    {
        remote_buckets::by_rule(&self.ebpf)
    }

    /// Every rule id with a limit in the `RULES` map, with that limit: what the programs
    /// enforce now (after an adoption, what the earlier daemon left).
    pub fn live_rules(&self) -> Result<Vec<(u16, RuleConfig)>> {
        let rules: Array<&MapData, RuleConfig> =
            Array::try_from(object_map(&self.ebpf, maps::RULES)?)?;
        let mut live = Vec::new();
        for (id, config) in rules.iter().enumerate() {
            let config = config?;
            if config.rate_bps != 0 {
                live.push((id as u16, config));
            }
        }
        Ok(live)
    }

    /// Rule `id`'s limit as the programs read it (a zero rate: no limit installed).
    pub fn rule_limit(&self, id: u16) -> Result<RuleConfig> {
        let rules: Array<&MapData, RuleConfig> =
            Array::try_from(object_map(&self.ebpf, maps::RULES)?)?;
        Ok(rules.get(&u32::from(id), 0)?)
    }

    /// Clears rule `id`'s limit: a packet that still finds the id passes uncharged.
    pub fn clear_rule(&mut self, id: u16) -> Result<()> {
        self.write_rule(id, &RuleConfig::default(), false)
    }

    /// Makes the rule index equal to `index` (as the policy layer's rule table resolves it for
    /// [`interface_names`](Self::interface_names)), writing only the ports that change.
    /// Each port's cell is one aligned 16-bit store, so the program sees either the old or the
    /// new rule for a port, never a torn id. Returns the number of ports written.
    pub fn paint_rule_index(&self, index: &[u16]) -> usize {
        let cells = self.rule_index.halfwords();
        let mut written = 0;
        for (cell, &id) in cells.iter().zip(index) {
            if cell.load(Ordering::Relaxed) != id {
                cell.store(id, Ordering::Relaxed);
                written += 1;
            }
        }
        written
    }

    /// Makes `UNPLACED_RULES` equal to `index` (the `unplaced` rule id of each interface slot
    /// and direction, as the policy layer resolves it), writing only the entries that change.
    /// Each entry is one map update, a single aligned store the program reads whole.
    pub fn paint_unplaced(&mut self, index: &[u16]) -> Result<usize> {
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(object_map_mut(&mut self.ebpf, maps::UNPLACED_RULES)?)?;
        let mut written = 0;
        for (at, &id) in index.iter().enumerate() {
            let at = at as u32;
            if map.get(&at, 0)? != u32::from(id) {
                map.set(at, u32::from(id), 0)?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// The id of the rule in force on local port `port` of (slot, direction, protocol), from the
    /// rule index the programs read.
    pub fn local_rule(
        &self,
        slot: u32,
        direction: Direction,
        proto: u32,
        port: u16,
    ) -> Option<u16> {
        let row = rule_index_row(slot, direction.index(), proto, SIDE_LOCAL) as usize;
        let cell = self
            .rule_index
            .halfwords()
            .get(row * PORTS as usize + usize::from(port))?;
        Some(cell.load(Ordering::Relaxed)).filter(|&id| id != NO_RULE)
    }

    /// The bucket of rule `id` in one direction, as the programs last left it.
    pub fn bucket(&self, id: u16, direction: Direction) -> Result<BucketState> {
        let buckets: Array<&MapData, BucketState> =
            Array::try_from(object_map(&self.ebpf, maps::BUCKETS)?)?;
        Ok(buckets.get(&bucket_index(u32::from(id), direction.index()), 0)?)
    }
}
