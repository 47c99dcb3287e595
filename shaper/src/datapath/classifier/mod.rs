//! The loaded classifier: the eBPF object, its maps, and the interfaces it is attached to. Its
//! jobs live in one file each: [`load`] (creating or adopting the maps, verifying the
//! programs), [`attachment`] (interface slots and hooks), [`rules`] (limits, buckets and the rule
//! index the programs read) and [`counters`] (what the programs counted).

mod attachment;
mod counters;
mod load;
mod rules;

pub use load::{map_memory_bytes, sized_maps};

use std::{fmt, os::fd::AsFd as _};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use serde::{Deserialize, Serialize};
use shaper_common::{PROTO_TCP, PROTO_UDP, maps};

use crate::{
    datapath::attach::{AttachMode, Attachment, Direction},
    datapath::mapped_arrays::{PortCounters, ReadOnlyMapping, WritableMapping},
    datapath::pins::PinDir,
    datapath::{DatapathError, Result},
    error::chain,
};

/// The eBPF object built from `shaper-ebpf` by the build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shaper"));

/// A protocol counted per port, named as stats, `top` and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    // In the order of their names, so that sorting by protocol sorts by name.
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// The index used in the shared map layout (`shaper_common::PROTO_*`).
    pub fn index(self) -> u32 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The protocols counted per port.
pub const PROTOCOLS: [Proto; 2] = [Proto::Tcp, Proto::Udp];

/// A registered interface as this daemon knows it, without asking the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentInterface {
    pub slot: u32,
    pub name: String,
    pub ifindex: u32,
    /// How it is attached; `None` while it is only registered.
    pub mode: Option<AttachMode>,
}

/// A registered interface, and whether the programs are on it as the kernel reports now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceState {
    pub slot: u32,
    pub name: String,
    /// How the daemon attached it; `None` when it is only registered (tests).
    pub mode: Option<AttachMode>,
    /// Per direction, whether the program is attached there now.
    pub attached: Vec<(Direction, bool)>,
}

#[derive(Debug)]
struct Interface {
    name: String,
    ifindex: u32,
    attachment: Option<Attachment>,
    /// Registered by this daemon. A slot adopted from a pinned datapath that this daemon does
    /// not name keeps its place (slots are positions in the counter maps) but is not shown.
    current: bool,
}

/// The classifier, loaded into the kernel (verified) but attached nowhere until
/// [`Classifier::attach`]. Dropping it detaches everything it attached.
pub struct Classifier {
    ebpf: Ebpf,
    ports: PortCounters,
    rule_counters: ReadOnlyMapping,
    /// Written by userspace, read by the programs: see [`Classifier::paint_rule_index`].
    rule_index: WritableMapping,
    /// Written by userspace, read by the programs: see [`Classifier::paint_watched`].
    watched: WritableMapping,
    /// Interface slots, in slot order: the slot is the index into this vector.
    interfaces: Vec<Interface>,
    capacity: u32,
    /// Where the maps and attachments are pinned; `None` for a classifier that lives and dies
    /// with this process (the BPF_PROG_TEST_RUN tests).
    pins: Option<PinDir>,
    /// The maps were pinned by an earlier daemon: this one took its datapath over.
    adopted: bool,
    /// The daemon finished starting: from now on the datapath is in service.
    serving: bool,
    /// What loading each program cost the kernel.
    verified: Vec<VerifiedProgram>,
}

/// What the kernel reports of a program it verified and loaded: the budget the verifier's
/// complexity limit (1,000,000 processed instructions) and the oldest kernel's verifier are
/// measured against.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedProgram {
    pub program: &'static str,
    /// Instructions the verifier processed (`verified_insns` of bpf_prog_info, Linux >= 5.16);
    /// `None` where the kernel does not report it.
    pub verified_insns: Option<u32>,
    /// Size of the JIT-compiled program; `None` without the JIT or its report.
    pub jited_bytes: Option<u32>,
    /// Wall time of BPF_PROG_LOAD: verification, JIT and all.
    pub load_ms: f64,
}

impl VerifiedProgram {
    fn read(
        name: &'static str,
        program: &aya::programs::SchedClassifier,
        took: std::time::Duration,
    ) -> Self {
        let info = program.info().ok();
        Self {
            program: name,
            verified_insns: info.as_ref().and_then(|i| i.verified_instruction_count()),
            jited_bytes: info
                .as_ref()
                .map(|i| i.size_jitted())
                .filter(|&bytes| bytes > 0),
            load_ms: took.as_secs_f64() * 1000.0,
        }
    }
}

impl fmt::Display for VerifiedProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: loaded in {:.1} ms", self.program, self.load_ms)?;
        if let Some(insns) = self.verified_insns {
            write!(f, ", {insns} instructions processed by the verifier")?;
        }
        if let Some(bytes) = self.jited_bytes {
            write!(f, ", {bytes} bytes of JIT code")?;
        }
        Ok(())
    }
}

impl Classifier {
    /// What the kernel reported of each program it loaded.
    pub fn verified(&self) -> &[VerifiedProgram] {
        &self.verified
    }

    /// Whether the maps were pinned by an earlier daemon, whose datapath this one took over.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Marks the datapath as in service: dropped without an explicit stop from now on (a
    /// panic), it stays attached and pinned instead of being taken down.
    pub fn mark_serving(&mut self) {
        self.serving = true;
    }

    /// What identifies this datapath for as long as its counters live, `None` unpinned (they
    /// die with the process): the boot, the pin directory and the pinned counter map's id. Map
    /// ids are not reused while the machine is up, so a datapath made anew after `shaper down`
    /// has another identity even at the same path.
    pub fn datapath_id(&self) -> Option<String> {
        let pins = self.pins.as_ref()?;
        let map: &MapData = match self.ebpf.map(maps::PORT_COUNTERS)? {
            Map::Array(data) => data,
            _ => return None,
        };
        let id = map.info().ok()?.id();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        Some(format!(
            "pinned {} {} map {id}",
            boot.trim(),
            pins.root().display()
        ))
    }

    /// Where this classifier's maps and attachments are pinned, if they are.
    pub fn pins(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// The watched ports' switches, one byte per (slot, direction, protocol, port) as
    /// `shaper_common::watch_row` lays them out: see [`crate::datapath::watched_ports`].
    pub(crate) fn watched_cells(&self) -> &[std::sync::atomic::AtomicU8] {
        self.watched.bytes()
    }

    /// The loaded object, for the modules that read its other maps.
    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object, for the modules that write its other maps.
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

impl Drop for Classifier {
    /// Without an explicit stop ([`Classifier::detach_all`] or [`Classifier::release_all`]):
    /// a start-up that failed, or a panic. A pinned datapath that was adopted, or that served
    /// once the daemon was up, stays in force, as after a crash; one this start made anew and
    /// never served is taken down again, so a failed first start leaves nothing behind.
    fn drop(&mut self) {
        if self.pins.is_some() && (self.adopted || self.serving) {
            self.release_all();
        } else if let Err(e) = self.detach_all() {
            log::warn!("detaching on shutdown: {}", chain(&e));
        }
    }
}

/// The map `name` of the loaded object; its absence means an object built from another source
/// tree, which the error says.
pub(crate) fn object_map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Map> {
    ebpf.map(name)
        .ok_or(DatapathError::MissingInObject { kind: "map", name })
}

/// [`object_map`], to write.
pub(crate) fn object_map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or(DatapathError::MissingInObject { kind: "map", name })
}

/// Maps the mmapable array `name` of the loaded object with `map`.
pub(crate) fn map_shared<T>(
    ebpf: &Ebpf,
    name: &'static str,
    map: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<T>,
) -> Result<T> {
    match ebpf.map(name) {
        Some(Map::Array(data)) => Ok(map(data.fd().as_fd())?),
        _ => Err(DatapathError::MissingInObject {
            kind: "array map",
            name,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stats, `top` and metrics spell directions and protocols as their names.
    #[test]
    fn directions_and_protocols_serialize_as_their_names() {
        for proto in PROTOCOLS {
            let json = serde_json::to_string(&proto).unwrap();
            assert_eq!(json, format!("\"{proto}\""));
            assert_eq!(serde_json::from_str::<Proto>(&json).unwrap(), proto);
        }
        for direction in Direction::BOTH {
            let json = serde_json::to_string(&direction).unwrap();
            assert_eq!(json, format!("\"{}\"", direction.name()));
            assert_eq!(serde_json::from_str::<Direction>(&json).unwrap(), direction);
        }
        assert_eq!(
            format!("{:<8}|{:>4}", Direction::Egress, Proto::Tcp),
            "egress  | tcp"
        );
    }
}
