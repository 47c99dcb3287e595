//! The loaded classifier: the eBPF object, its maps, and the interfaces it is attached to.

use std::{fmt, os::fd::AsFd as _, sync::atomic::Ordering};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::ProgramError,
};
use serde::{Deserialize, Serialize};
use shaper_common::{
    BucketState, Counter, DIRECTIONS, MAX_IFACES, MAX_RULES, NO_RULE, PORT_COUNTERS_PER_IFACE,
    PORTS, PROTO_TCP, PROTO_UDP, PortVerdicts, RTT_HISTOGRAMS_PER_IFACE, RULE_INDEX_ROWS_PER_IFACE,
    RuleConfig, RuleCounters, RuleIndexRow, SIDE_LOCAL, TCP_EVENTS_PER_IFACE, WATCH_ROWS_PER_IFACE,
    WatchRow, bucket_index, maps, reason, rule_index_row, unclassified_index,
};

use crate::{
    datapath::attach::{self, AttachMode, Attachment, Direction},
    datapath::interfaces,
    datapath::ktime,
    datapath::mapped_arrays::{COUNTER_WORDS, PortCounters, ReadOnlyMapping, WritableMapping},
    datapath::pins::{MapLayout, PinDir},
    datapath::tcp_telemetry::{self, TcpTelemetry},
    error::{Error, Result, chain},
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
            return Err(Error::TooManyInterfaces {
                requested: interfaces as usize,
                max: MAX_IFACES,
            });
        }
        raise_memlock_limit();
        let mut capacity = interfaces;
        if let Some(pins) = pins {
            pins.create()?;
            capacity = pinned_capacity(pins, interfaces)?;
            check_pinned_layouts(pins, capacity)?;
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
            .map_err(|e| Error::from(e).explain_seccomp())?;
        let mut verified = Vec::new();
        for direction in Direction::BOTH {
            let program = attach::program_mut(&mut ebpf, direction)?;
            let started = std::time::Instant::now();
            program.load().map_err(|e| match e {
                ProgramError::LoadError {
                    io_error,
                    verifier_log,
                } => Error::Verifier {
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
    /// each interface keeps its counters. Slots are handed out from 0 without gaps, so the
    /// pinned ones are the first few.
    fn adopt_slots(&mut self) -> Result<()> {
        let slots: HashMap<&MapData, u32, u32> = HashMap::try_from(
            self.ebpf
                .map(maps::IFACE_SLOTS)
                .ok_or(Error::MissingInObject {
                    kind: "map",
                    name: maps::IFACE_SLOTS,
                })?,
        )?;
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
        Ok(())
    }

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

    /// How `iface` is attached in the pinned datapath this classifier adopted, if it is.
    pub fn pinned_mode(&self, iface: &str) -> Option<AttachMode> {
        attach::pinned_mode(self.pins.as_ref()?, iface)
    }

    /// Gives `iface` a counter slot, so the programs count its packets. [`attach`](Self::attach)
    /// does this itself; tests that run the programs with BPF_PROG_TEST_RUN (whose packets arrive
    /// on loopback) call it directly.
    pub fn register(&mut self, name: &str) -> Result<u32> {
        let ifindex = interfaces::index(name)?;
        if let Some(slot) = self.interfaces.iter().position(|i| i.ifindex == ifindex) {
            let iface = &mut self.interfaces[slot];
            iface.current = true;
            iface.name = name.to_owned();
            return Ok(slot as u32);
        }
        // An adopted slot whose interface no longer exists (deleted, or recreated with a new
        // index, as container runtimes do) is handed to the newcomer once the map is full: a
        // pinned datapath cannot grow.
        let stale = self
            .interfaces
            .iter()
            .position(|i| !i.current && interfaces::name(i.ifindex).is_none());
        let slot = match stale {
            _ if (self.interfaces.len() as u32) < self.capacity => self.interfaces.len(),
            Some(slot) => slot,
            None => {
                return Err(Error::TooManyInterfaces {
                    requested: self.interfaces.len() + 1,
                    max: self.capacity,
                });
            }
        };
        let mut slots: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(maps::IFACE_SLOTS).ok_or(
                Error::MissingInObject {
                    kind: "map",
                    name: maps::IFACE_SLOTS,
                },
            )?)?;
        let interface = Interface {
            name: name.to_owned(),
            ifindex,
            attachment: None,
            current: true,
        };
        if slot < self.interfaces.len() {
            let _ = slots.remove(&self.interfaces[slot].ifindex);
            slots.insert(ifindex, slot as u32, 0)?;
            self.interfaces[slot] = interface;
        } else {
            slots.insert(ifindex, slot as u32, 0)?;
            self.interfaces.push(interface);
        }
        Ok(slot as u32)
    }

    /// Attaches both programs to the ingress and egress hooks of `name`.
    pub fn attach(&mut self, name: &str, mode: AttachMode) -> Result<()> {
        let slot = self.register(name)? as usize;
        let netns = interfaces::netns_inode()?;
        let ifindex = self.interfaces[slot].ifindex;
        let attachment = attach::attach(
            &mut self.ebpf,
            name,
            ifindex,
            netns,
            mode,
            self.pins.as_ref(),
        )?;
        self.interfaces[slot].attachment = Some(attachment);
        Ok(())
    }

    /// Detaches from every interface and removes the pins, maps included: the datapath is gone
    /// and the next daemon starts afresh. Reports the first failure after trying all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first_error = None;
        for iface in &mut self.interfaces {
            let Some(attachment) = iface.attachment.take() else {
                continue;
            };
            if let Err(e) = attach::detach(&mut self.ebpf, &iface.name, iface.ifindex, attachment) {
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_none()
            && let Some(pins) = &self.pins
            && let Err(e) = pins.remove()
        {
            first_error = Some(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Leaves every attachment and pin in place for the next daemon to adopt: the programs keep
    /// counting and policing with the pinned maps while no daemon runs.
    pub fn release_all(&mut self) {
        for iface in &mut self.interfaces {
            if let Some(attachment) = iface.attachment.take() {
                attach::release(attachment);
            }
        }
    }

    /// Detaches and unpins an interface an earlier daemon attached that this one does not name
    /// (it was removed from the configuration), and frees its slot.
    pub fn drop_pinned_interface(&mut self, iface: &str) -> Result<()> {
        let Some(pins) = self.pins.clone() else {
            return Ok(());
        };
        attach::remove_pinned(&pins, iface)?;
        if let Some(slot) = self
            .interfaces
            .iter()
            .position(|i| !i.current && i.name == iface)
        {
            let ifindex = self.interfaces[slot].ifindex;
            let mut slots: HashMap<&mut MapData, u32, u32> =
                HashMap::try_from(map_mut(&mut self.ebpf, maps::IFACE_SLOTS)?)?;
            // Only the last slot can go without leaving a gap; an inner one stays reserved.
            if slot + 1 == self.interfaces.len() {
                let _ = slots.remove(&ifindex);
                self.interfaces.pop();
            }
        }
        Ok(())
    }

    /// The program of one direction, for BPF_PROG_TEST_RUN.
    pub fn program_mut(
        &mut self,
        direction: Direction,
    ) -> Result<&mut aya::programs::SchedClassifier> {
        attach::program_mut(&mut self.ebpf, direction)
    }

    /// Points the ingress shape rules of interface `name` at IFB device `ifb` (0: none, they
    /// pass unshaped). An interface this daemon does not name has nothing to point.
    pub fn set_shape_ifb(&mut self, name: &str, ifb: u32) -> Result<()> {
        let Some(slot) = self
            .interfaces
            .iter()
            .position(|i| i.current && i.name == name)
        else {
            return Ok(());
        };
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(map_mut(&mut self.ebpf, maps::SHAPE_IFB)?)?;
        map.set(slot as u32, ifb, 0)?;
        Ok(())
    }

    /// Names of the registered interfaces, in slot order; an adopted slot this daemon does not
    /// use is named "", which no interface-specific rule matches.
    /// The interfaces this daemon registered, by slot, with how each is attached.
    pub fn current_interfaces(&self) -> Vec<CurrentInterface> {
        self.interfaces
            .iter()
            .enumerate()
            .filter(|(_, iface)| iface.current)
            .map(|(slot, iface)| CurrentInterface {
                slot: slot as u32,
                name: iface.name.clone(),
                ifindex: iface.ifindex,
                mode: iface.attachment.as_ref().map(|a| a.mode),
            })
            .collect()
    }

    pub fn interface_names(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .map(|i| {
                if i.current {
                    i.name.clone()
                } else {
                    String::new()
                }
            })
            .collect()
    }

    /// The handshake tracker's totals, and the samples it lost to LRU evictions.
    pub fn handshake_tracking(&self) -> Result<crate::datapath::tcp_telemetry::HandshakeTracking> {
        crate::datapath::tcp_telemetry::tracking(&self.ebpf)
    }

    /// One pass of `repair` over the handshake tracker and the `pending` counts (see
    /// [`PendingRepair`](crate::datapath::tcp_telemetry::PendingRepair)).
    pub fn repair_pending(
        &mut self,
        repair: &mut crate::datapath::tcp_telemetry::PendingRepair,
    ) -> Result<crate::datapath::tcp_telemetry::Repaired> {
        repair.pass(&mut self.ebpf, self.capacity)
    }

    /// The (slot, local port, remote address) pairs of accepted handshakes the program
    /// remembers.
    pub fn accepted_remotes(&self) -> Result<Vec<shaper_common::RemoteKey>> {
        crate::datapath::tcp_telemetry::remotes(&self.ebpf)
    }

    /// Whether the interface slot is one this daemon registered (not an adopted leftover).
    pub fn slot_is_current(&self, slot: u32) -> bool {
        self.interfaces
            .get(slot as usize)
            .is_some_and(|i| i.current)
    }

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

    /// Writes the limit of rule `id`. For a `fresh` id (a new rule) its buckets are filled (a
    /// whole burst, stamped now) and its counters zeroed first, so a new rule starts full
    /// whatever the uptime and nothing of an earlier rule with the same id carries over;
    /// replacing a rule's limit keeps both. The buckets are written before the limit: until the
    /// program finds a rate it passes the rule's packets uncharged, so no packet meets the old
    /// bucket under the new limit. The program picks the new limit up on its next packet.
    pub fn write_rule(&mut self, id: u16, config: &RuleConfig, fresh: bool) -> Result<()> {
        let id = u32::from(id);
        if fresh {
            let mut buckets: Array<&mut MapData, BucketState> =
                Array::try_from(map_mut(&mut self.ebpf, maps::BUCKETS)?)?;
            let full = BucketState::full(config.burst_nanobits, ktime::monotonic_ns());
            for direction in Direction::BOTH {
                buckets.set(bucket_index(id, direction.index()), full, 0)?;
            }
            let mut counters: Array<&mut MapData, RuleCounters> =
                Array::try_from(map_mut(&mut self.ebpf, maps::RULE_COUNTERS)?)?;
            for direction in Direction::BOTH {
                counters.set(
                    bucket_index(id, direction.index()),
                    RuleCounters::default(),
                    0,
                )?;
            }
        }
        let mut rules: Array<&mut MapData, RuleConfig> =
            Array::try_from(map_mut(&mut self.ebpf, maps::RULES)?)?;
        rules.set(id, *config, 0)?;
        Ok(())
    }

    /// Every rule id with a limit in the `RULES` map, with that limit: what the programs
    /// enforce now (after an adoption, what the earlier daemon left).
    pub fn live_rules(&self) -> Result<Vec<(u16, RuleConfig)>> {
        let rules: Array<&MapData, RuleConfig> =
            Array::try_from(self.ebpf.map(maps::RULES).ok_or(Error::MissingInObject {
                kind: "map",
                name: maps::RULES,
            })?)?;
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
            Array::try_from(self.ebpf.map(maps::RULES).ok_or(Error::MissingInObject {
                kind: "map",
                name: maps::RULES,
            })?)?;
        Ok(rules.get(&u32::from(id), 0)?)
    }

    /// Clears rule `id`'s limit: a packet that still finds the id passes uncharged.
    pub fn clear_rule(&mut self, id: u16) -> Result<()> {
        self.write_rule(id, &RuleConfig::default(), false)
    }

    /// Makes the rule index equal to `index` (as [`crate::policy::rule_table::RuleTable::resolve`] builds it
    /// for [`interface_names`](Self::interface_names)), writing only the ports that change.
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
            Array::try_from(self.ebpf.map(maps::BUCKETS).ok_or(Error::MissingInObject {
                kind: "map",
                name: maps::BUCKETS,
            })?)?;
        Ok(buckets.get(&bucket_index(u32::from(id), direction.index()), 0)?)
    }

    /// Every registered interface, with its attachment checked against the kernel. A check
    /// that fails (the kernel refuses the query) is logged and reported as not attached: a
    /// program that cannot be seen cannot be vouched for.
    pub fn interface_states(&self) -> Vec<InterfaceState> {
        let mut states = Vec::with_capacity(self.interfaces.len());
        for (slot, iface) in self.interfaces.iter().enumerate() {
            if !iface.current {
                continue;
            }
            let mode = iface.attachment.as_ref().map(|a| a.mode);
            let attached = Direction::BOTH
                .into_iter()
                .map(|direction| {
                    let Some(mode) = mode else {
                        return (direction, false);
                    };
                    let now = attach::attached_now(
                        &self.ebpf,
                        &iface.name,
                        iface.ifindex,
                        mode,
                        direction,
                    )
                    .unwrap_or_else(|e| {
                        log::warn!("{} {}: {}", iface.name, direction.name(), chain(&e));
                        false
                    });
                    (direction, now)
                })
                .collect();
            states.push(InterfaceState {
                slot: slot as u32,
                name: iface.name.clone(),
                mode,
                attached,
            });
        }
        states
    }

    /// The unclassified counter of one (interface slot, direction, reason), summed over CPUs.
    pub fn unclassified_counter(
        &self,
        slot: u32,
        direction: Direction,
        reason: u32,
    ) -> Result<Counter> {
        let map: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map(maps::UNCLASSIFIED).ok_or(
                Error::MissingInObject {
                    kind: "map",
                    name: maps::UNCLASSIFIED,
                },
            )?)?;
        let per_cpu = map.get(&unclassified_index(slot, direction.index(), reason), 0)?;
        Ok(per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        }))
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

/// The maps whose size depends on the number of interface slots, with that size.
fn sized_maps(capacity: u32) -> [(&'static str, u32); 7] {
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
        return Err(Error::PinnedTooSmall {
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
/// pinned at a map's path without comparing, so the check is ours.
fn check_pinned_layouts(pins: &PinDir, capacity: u32) -> Result<()> {
    let object = aya_obj::Object::parse(OBJECT).map_err(|e| Error::ObjectParse {
        reason: e.to_string(),
    })?;
    let sized = sized_maps(capacity);
    for name in maps::ALL {
        let Some(definition) = object.maps.get(name) else {
            return Err(Error::MissingInObject { kind: "map", name });
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
        if let Some(pinned) = MapLayout::of_pin(&path)?
            && let Some((field, pinned, expected)) = expected.difference(&pinned)
        {
            return Err(Error::PinnedMapMismatch {
                path,
                field,
                pinned,
                expected,
            });
        }
    }
    Ok(())
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or(Error::MissingInObject { kind: "map", name })
}

/// Maps the mmapable array `name` of the loaded object with `map`.
pub(crate) fn map_shared<T>(
    ebpf: &Ebpf,
    name: &'static str,
    map: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<T>,
) -> Result<T> {
    match ebpf.map(name) {
        Some(Map::Array(data)) => Ok(map(data.fd().as_fd())?),
        _ => Err(Error::MissingInObject {
            kind: "array map",
            name,
        }),
    }
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
