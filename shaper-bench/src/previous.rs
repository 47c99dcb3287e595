//! The previous release's eBPF object (issue 27): loaded beside this build's so the per-packet
//! scenario can run the same frames through both, alternated in one process, and a regression
//! shows as a ratio.
//!
//! The object is the one the previous release's own build embedded (`cargo xtask bench` finds
//! it through the upgrade test's build of that release, cached by commit). Its maps are sized
//! as this build sizes them (`Classifier`'s `sized_maps`: unchanged since 0.1.0) and written
//! through this build's shared types, whose layouts the maps shared with the previous release
//! keep — what `cargo xtask upgrade-test` proves, when this build adopts that release's pinned
//! maps. Only what the measured paths read is written: the loopback device's interface slot
//! (test-run packets arrive on it), and one rule on one port.

use std::path::Path;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::SchedClassifier,
};
use shaper::Direction;
use shaper_common::{
    BucketState, DIR_INGRESS, PROTO_TCP, PROTO_UDP, RuleConfig, RuleIndexRow, SIDE_LOCAL,
    bucket_index, maps, rule_index_row,
};

/// The loopback device's index in every namespace (net/core/dev.c gives the first device of a
/// namespace index 1), and the slot the previous object gets for it.
const LOOPBACK_IFINDEX: u32 = 1;

pub struct Previous {
    ebpf: Ebpf,
    /// Who it is, for the report: the release's commit.
    pub commit: String,
}

impl Previous {
    /// Loads (and verifies) the object at `path`, built from `commit`, with `lo` in slot 0.
    pub fn load(path: &Path, commit: &str) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut loader = EbpfLoader::new();
        for (name, entries) in shaper::datapath::classifier::sized_maps(1) {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader
            .load(&bytes)
            .with_context(|| format!("loading the previous release's object {}", path.display()))?;
        for direction in Direction::BOTH {
            let program: &mut SchedClassifier = ebpf
                .program_mut(direction.program())
                .with_context(|| format!("the previous object has no {}", direction.program()))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("verifying the previous {}", direction.program()))?;
        }
        let mut slots: HashMap<&mut MapData, u32, u32> = HashMap::try_from(
            ebpf.map_mut(maps::IFACE_SLOTS)
                .context("the previous object has no IFACE_SLOTS")?,
        )?;
        slots.insert(LOOPBACK_IFINDEX, 0, 0)?;
        // A release with the array of small ifindexes reads the slot from it (slot + 1).
        if let Some(map) = ebpf.map_mut(maps::IFACE_SLOT_BY_IFINDEX) {
            let mut direct: Array<&mut MapData, u32> = Array::try_from(map)?;
            direct.set(LOOPBACK_IFINDEX, 1, 0)?;
        }
        Ok(Self {
            ebpf,
            commit: commit.to_owned(),
        })
    }

    /// Puts rule `id` with `config` (a full bucket) on local TCP and UDP port `port`, ingress.
    pub fn limit(&mut self, id: u16, port: u16, config: RuleConfig) -> anyhow::Result<()> {
        let mut buckets: Array<&mut MapData, BucketState> =
            Array::try_from(self.ebpf.map_mut(maps::BUCKETS).context("BUCKETS")?)?;
        let full = BucketState::full(
            config.burst_nanobits,
            shaper::datapath::ktime::monotonic_ns(),
        );
        buckets.set(bucket_index(u32::from(id), DIR_INGRESS), full, 0)?;
        let mut rules: Array<&mut MapData, RuleConfig> =
            Array::try_from(self.ebpf.map_mut(maps::RULES).context("RULES")?)?;
        rules.set(u32::from(id), config, 0)?;
        let mut index: Array<&mut MapData, RuleIndexRow> =
            Array::try_from(self.ebpf.map_mut(maps::RULE_INDEX).context("RULE_INDEX")?)?;
        for proto in [PROTO_TCP, PROTO_UDP] {
            let row_at = rule_index_row(0, DIR_INGRESS, proto, SIDE_LOCAL);
            let mut row = index.get(&row_at, 0)?;
            row[usize::from(port)] = id;
            index.set(row_at, row, 0)?;
        }
        Ok(())
    }

    pub fn program(&self, direction: Direction) -> anyhow::Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(direction.program())
            .with_context(|| format!("the previous {}", direction.program()))?
            .try_into()?)
    }
}
