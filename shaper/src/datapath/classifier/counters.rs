//! What the programs counted: per port, per rule, unclassified, and the TCP telemetry's
//! handshake tracker.

use aya::maps::{MapData, PerCpuArray};
use shaper_common::{Counter, PortVerdicts, RuleCounters, bucket_index, maps, unclassified_index};

use super::{Classifier, object_map};
use crate::{
    datapath::Result,
    datapath::attach::Direction,
    datapath::fragment_tracking,
    datapath::mapped_arrays::{COUNTER_WORDS, PortCounters},
    datapath::tcp_telemetry,
};

impl Classifier {
    /// The per-port counters, shared with whoever reads them (the metrics endpoint).
    pub fn port_counters(&self) -> PortCounters {
        self.ports.clone()
    }

    /// The counter of one (interface slot, direction, protocol, port).
    pub fn port_counter(&self, slot: u32, direction: Direction, proto: u32, port: u16) -> Counter {
        self.ports.read(slot, direction.index(), proto, port).seen
    }

    /// The dropped and would-drop counters of one (interface slot, direction, protocol, port).
    pub fn port_verdicts(
        &self,
        slot: u32,
        direction: Direction,
        proto: u32,
        port: u16,
    ) -> PortVerdicts {
        let reading = self.ports.read(slot, direction.index(), proto, port);
        PortVerdicts {
            dropped: reading.dropped,
            would_drop: reading.would_drop,
        }
    }

    /// The verdict counters of rule `id` in one direction.
    pub fn rule_counters(&self, id: u16, direction: Direction) -> RuleCounters {
        let word = bucket_index(u32::from(id), direction.index()) as usize
            * (size_of::<RuleCounters>() / 8);
        let at = |offset| {
            self.rule_counters
                .counter(word + offset * COUNTER_WORDS)
                .unwrap_or_default()
        };
        RuleCounters {
            passed: at(0),
            dropped: at(1),
            would_drop: at(2),
            marked: at(3),
        }
    }

    /// The unclassified counter of one (interface slot, direction, reason), summed over CPUs.
    pub fn unclassified_counter(
        &self,
        slot: u32,
        direction: Direction,
        reason: u32,
    ) -> Result<Counter> {
        let map: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(object_map(&self.ebpf, maps::UNCLASSIFIED)?)?;
        let per_cpu = map.get(&unclassified_index(slot, direction.index(), reason), 0)?;
        Ok(per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        }))
    }

    /// The fragment tracker's totals, and the datagrams it lost to LRU evictions.
    pub fn fragment_tracking(&self) -> Result<fragment_tracking::FragmentTracking> {
        fragment_tracking::tracking(&self.ebpf)
    }

    /// The handshake tracker's totals, and the samples it lost to LRU evictions.
    pub fn handshake_tracking(&self) -> Result<tcp_telemetry::HandshakeTracking> {
        tcp_telemetry::tracking(&self.ebpf)
    }

    /// One pass of `repair` over the handshake tracker and the `pending` counts (see
    /// [`PendingRepair`](tcp_telemetry::PendingRepair)).
    pub fn repair_pending(
        &mut self,
        repair: &mut tcp_telemetry::PendingRepair,
    ) -> Result<tcp_telemetry::Repaired> {
        repair.pass(&mut self.ebpf, self.capacity)
    }

    /// The (slot, local port, remote address) pairs of accepted handshakes the program
    /// remembers.
    pub fn accepted_remotes(&self) -> Result<Vec<shaper_common::RemoteKey>> {
        tcp_telemetry::remotes(&self.ebpf)
    }
}
