//! Loading the classifier: creating its maps (or adopting those an earlier daemon pinned, once
//! their layouts are checked), verifying both programs, and mapping the arrays userspace reads
//! and writes in place.

use aya::{
    EbpfLoader,
    maps::{HashMap, MapData},
    programs::ProgramError,
};
use shaper_common::{
    BucketState, Counter, DIRECTIONS, MAX_IFACES, MAX_RULES, PORT_COUNTERS_PER_IFACE, PortVerdicts,
    RTT_HISTOGRAMS_PER_IFACE, RULE_INDEX_ROWS_PER_IFACE, RuleConfig, RuleCounters, RuleIndexRow,
    TCP_EVENTS_PER_IFACE, WATCH_ROWS_PER_IFACE, WatchRow, maps, reason,
};

use super::{Classifier, Interface, OBJECT, VerifiedProgram, map_shared, object_map};
use crate::{
    datapath::attach::{self, Direction},
    datapath::interfaces,
    datapath::mapped_arrays::{PortCounters, ReadOnlyMapping, WritableMapping},
    datapath::pins::{MapLayout, PinDir},
    datapath::tcp_telemetry::{self, TcpTelemetry},
    datapath::{DatapathError, Result},
    error::chain,
};

/// Bytes of BPF map memory the classifier takes for `interfaces` interfaces on `cpus` CPUs
/// (values only; the kernel adds a page or so of bookkeeping per map): per interface 4 MiB of
/// port counters, 8 MiB of per-port verdict counters, 1 MiB of rule index, 6 MiB of TCP event
/// counters and 20 MiB of handshake round-trip histograms, plus the per-CPU unclassified
/// counters and the fixed-size rule maps (12 MiB for 65,536 rule ids) and handshake tracker.
pub fn map_memory_bytes(interfaces: u32, cpus: u32) -> u64 {
    let tcp = tcp_telemetry::map_memory_bytes(interfaces);
    let interfaces = u64::from(interfaces);
    let counter = size_of::<Counter>() as u64;
    let port_entries = interfaces * u64::from(PORT_COUNTERS_PER_IFACE);
    let ports = port_entries * (counter + size_of::<PortVerdicts>() as u64);
    let index =
        interfaces * u64::from(RULE_INDEX_ROWS_PER_IFACE) * size_of::<RuleIndexRow>() as u64;
    let unclassified =
        interfaces * u64::from(DIRECTIONS * reason::COUNT) * counter * u64::from(cpus);
    let rules = u64::from(MAX_RULES)
        * (size_of::<RuleConfig>() as u64
            + u64::from(DIRECTIONS)
                * (size_of::<BucketState>() + size_of::<RuleCounters>()) as u64);
    ports
        + index
        + unclassified
        + rules
        + tcp
        + crate::datapath::watched_ports::map_memory_bytes(interfaces)
}

impl Classifier {
    /// Loads both programs, with counter maps sized for `interfaces` interfaces, unpinned: the
    /// maps and attachments go with this process.
    pub fn load(interfaces: u32) -> Result<Self> {
        Self::load_with(interfaces, None)
    }

    /// Loads both programs against the maps pinned in `pins`, adopting an earlier daemon's
    /// datapath (its rules, buckets and counters carry on), or pins new maps there. A pinned
    /// map is used only if it has exactly the layout this build's programs expect; otherwise
    /// loading fails and names `shaper down`, which resets the datapath.
    pub fn load_pinned(interfaces: u32, pins: &PinDir) -> Result<Self> {
        Self::load_with(interfaces, Some(pins))
    }

    fn load_with(interfaces: u32, pins: Option<&PinDir>) -> Result<Self> {
        let adopting = pins.is_some_and(|p| p.map(maps::PORT_COUNTERS).exists());
        // This start makes the pin directory: nothing in it is anybody else's.
        let fresh = pins.is_some_and(|p| !p.root().exists());
        let loaded = Self::load_or_adopt(interfaces, pins, adopting);
        // aya pins each map as it creates it, before any program is verified: a refusal by the
        // verifier (or any later error) would leave a fresh start's maps pinned, and `shaper
        // status` would report a datapath that never ran. A directory that was there before
        // (an earlier daemon's, or a foreign map in the way) is left as it was.
        if loaded.is_err()
            && fresh
            && let Some(pins) = pins
            && let Err(e) = pins.remove()
        {
            log::warn!("removing the pins of a failed start: {}", chain(&e));
        }
        loaded
    }

    fn load_or_adopt(interfaces: u32, pins: Option<&PinDir>, adopted: bool) -> Result<Self> {
        if interfaces == 0 || interfaces > MAX_IFACES {
            return Err(DatapathError::TooManyInterfaces {
                requested: interfaces as usize,
                max: MAX_IFACES,
            });
        }
        raise_memlock_limit();
        let mut capacity = interfaces;
        if let Some(pins) = pins {
            pins.create()?;
            capacity = pinned_capacity(pins, interfaces)?;
            let added = check_pinned_layouts(pins, capacity)?;
            if adopted && !added.is_empty() {
                // An earlier release's datapath: the maps added since are made now, beside
                // the ones it shares with this build.
                log::info!(
                    "the pinned datapath lacks {} map(s) of this build (an earlier release's \
                     pins): creating {}",
                    added.len(),
                    added.join(", ")
                );
            }
        }
        let port_entries = capacity * PORT_COUNTERS_PER_IFACE;
        let index_rows = capacity * RULE_INDEX_ROWS_PER_IFACE;
        let mut loader = EbpfLoader::new();
        for (name, entries) in sized_maps(capacity) {
            loader.map_max_entries(name, entries);
        }
        if let Some(pins) = pins {
            for name in maps::ALL {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| DatapathError::from(e).explain_seccomp())?;
        let mut verified = Vec::new();
        for direction in Direction::BOTH {
            let program = attach::program_mut(&mut ebpf, direction)?;
            let started = std::time::Instant::now();
            program.load().map_err(|e| match e {
                ProgramError::LoadError {
                    io_error,
                    verifier_log,
                } => DatapathError::Verifier {
                    program: direction.program(),
                    error: io_error,
                    log: verifier_log.to_string(),
                },
                other => other.into(),
            })?;
            let stats = VerifiedProgram::read(direction.program(), program, started.elapsed());
            log::info!("{stats}");
            verified.push(stats);
        }
        let port_entries = port_entries as usize;
        let port_counters = map_shared(&ebpf, maps::PORT_COUNTERS, |fd| {
            ReadOnlyMapping::new(fd, port_entries * size_of::<Counter>())
        })?;
        let port_verdicts = map_shared(&ebpf, maps::PORT_VERDICTS, |fd| {
            ReadOnlyMapping::new(fd, port_entries * size_of::<PortVerdicts>())
        })?;
        let rule_counters = map_shared(&ebpf, maps::RULE_COUNTERS, |fd| {
            ReadOnlyMapping::new(
                fd,
                (MAX_RULES * DIRECTIONS) as usize * size_of::<RuleCounters>(),
            )
        })?;
        let rule_index = map_shared(&ebpf, maps::RULE_INDEX, |fd| {
            WritableMapping::new(fd, index_rows as usize * size_of::<RuleIndexRow>())
        })?;
        let tcp = TcpTelemetry::map(&ebpf, capacity)?;
        let watched = map_shared(&ebpf, maps::WATCHED, |fd| {
            WritableMapping::new(
                fd,
                (capacity * WATCH_ROWS_PER_IFACE) as usize * size_of::<WatchRow>(),
            )
        })?;
        let mut classifier = Self {
            ebpf,
            ports: PortCounters::new(port_counters, port_verdicts, tcp),
            rule_counters,
            rule_index,
            watched,
            interfaces: Vec::new(),
            capacity,
            pins: pins.cloned(),
            adopted,
            serving: false,
            verified,
        };
        classifier.adopt_slots()?;
        Ok(classifier)
    }

    /// Takes over the interface slots an earlier daemon left in the pinned `IFACE_SLOTS`, so
    /// each interface keeps its counters, and writes them into `IFACE_SLOT_BY_IFINDEX` again.
    /// Slots are handed out from 0 without gaps, so the pinned ones are the first few.
    fn adopt_slots(&mut self) -> Result<()> {
        let slots: HashMap<&MapData, u32, u32> =
            HashMap::try_from(object_map(&self.ebpf, maps::IFACE_SLOTS)?)?;
        let mut pinned: Vec<(u32, u32)> = slots.iter().collect::<Result<_, _>>()?;
        pinned.sort_by_key(|&(_, slot)| slot);
        for (ifindex, slot) in pinned {
            if slot != self.interfaces.len() as u32 || slot >= self.capacity {
                log::warn!(
                    "pinned interface slots are not contiguous at {slot}; ignoring the rest"
                );
                break;
            }
            self.interfaces.push(Interface {
                name: interfaces::name(ifindex).unwrap_or_default(),
                ifindex,
                attachment: None,
                current: false,
            });
        }
        self.sync_direct_slots()
    }
}

/// The maps whose size depends on the number of interface slots, with that size.
pub fn sized_maps(capacity: u32) -> [(&'static str, u32); 7] {
    let port_entries = capacity * PORT_COUNTERS_PER_IFACE;
    [
        (maps::PORT_COUNTERS, port_entries),
        (maps::PORT_VERDICTS, port_entries),
        (maps::RULE_INDEX, capacity * RULE_INDEX_ROWS_PER_IFACE),
        (maps::UNCLASSIFIED, capacity * DIRECTIONS * reason::COUNT),
        (maps::TCP_EVENTS, capacity * TCP_EVENTS_PER_IFACE),
        (maps::HANDSHAKE_RTT, capacity * RTT_HISTOGRAMS_PER_IFACE),
        (maps::WATCHED, capacity * WATCH_ROWS_PER_IFACE),
    ]
}

/// The interface capacity to load with: a pinned datapath keeps the size it was made with
/// (its maps cannot grow in place), as long as that fits the interfaces asked for.
fn pinned_capacity(pins: &PinDir, requested: u32) -> Result<u32> {
    let Some(pinned) = MapLayout::of_pin(&pins.map(maps::PORT_COUNTERS))? else {
        return Ok(requested);
    };
    let capacity = pinned.max_entries / PORT_COUNTERS_PER_IFACE;
    if capacity < requested {
        return Err(DatapathError::PinnedTooSmall {
            dir: pins.root().to_owned(),
            capacity,
            requested,
        });
    }
    Ok(capacity.min(MAX_IFACES))
}

/// Refuses a pinned map whose layout differs from what this build's programs expect (another
/// version of shaper, or someone else's map under our name): reusing it would make the programs
/// and userspace read its values as something they are not. aya itself reuses whatever is
/// pinned at a map's path without comparing, so the check is ours. Returns the maps not
/// pinned at all, which loading creates: for an adopted datapath, those added since the
/// release that pinned it.
fn check_pinned_layouts(pins: &PinDir, capacity: u32) -> Result<Vec<&'static str>> {
    let object = aya_obj::Object::parse(OBJECT).map_err(|e| DatapathError::ObjectParse {
        reason: e.to_string(),
    })?;
    let sized = sized_maps(capacity);
    let mut missing = Vec::new();
    for name in maps::ALL {
        let Some(definition) = object.maps.get(name) else {
            return Err(DatapathError::MissingInObject { kind: "map", name });
        };
        let expected = MapLayout {
            map_type: definition.map_type(),
            key_size: definition.key_size(),
            value_size: definition.value_size(),
            max_entries: sized
                .iter()
                .find(|(sized, _)| *sized == name)
                .map_or(definition.max_entries(), |&(_, entries)| entries),
            flags: definition.map_flags(),
        };
        let path = pins.map(name);
        let Some(pinned) = MapLayout::of_pin(&path)? else {
            missing.push(name);
            continue;
        };
        if let Some((field, pinned, expected)) = expected.difference(&pinned) {
            return Err(DatapathError::PinnedMapMismatch {
                path,
                field,
                pinned,
                expected,
            });
        }
    }
    Ok(missing)
}

/// Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK (memcg accounting replaced it in
/// commit 97306be45fbe "Merge branch 'switch to memcg-based memory accounting'"); the default 8 MiB
/// is less than one interface's counters.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "raising RLIMIT_MEMLOCK failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_memory_is_39_mib_per_interface_twelve_for_the_rules_and_a_little_per_cpu() {
        // 65,536 rule ids × (32 B limit + 2 directions × (16 B bucket + 64 B counters)).
        let rules = 65536 * (32 + 2 * (16 + 64));
        assert_eq!(rules, 12 * 1024 * 1024);
        // The handshake tracker: 16,384 entries of 40 B key + 16 B value + 64 B of the kernel's
        // element header (`struct htab_elem`, kernel/bpf/hashtab.c; bpftool reports 1,966,976 B
        // for the map), plus the 32 B tracker totals.
        let tracker = 16384 * (40 + 16 + 64) + 32;
        // The remotes of `exposure`: 32,768 × (24 B key + 8 B value + 64 B) = 3 MiB.
        let remotes = 3 * 1024 * 1024;
        // The watched ports' switches (256 KiB per interface) and the top talkers' LRU.
        let watch = crate::datapath::watched_ports::map_memory_bytes(1);
        assert_eq!(
            map_memory_bytes(1, 1),
            (13 + 6 + 20) * 1024 * 1024 + 14 * 16 + rules + tracker + remotes + watch
        );
        // One interface on a 128-CPU host stays below the 64 MiB budget.
        assert!(map_memory_bytes(1, 128) < 64 * 1024 * 1024);
    }
}
