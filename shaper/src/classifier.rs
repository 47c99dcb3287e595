//! The loaded classifier: the eBPF object, its maps, and the interfaces it is attached to.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::ProgramError,
};
use shaper_common::{
    Counter, DIRECTIONS, MAX_IFACES, PORT_COUNTERS_PER_IFACE, PORTS, PROTO_TCP, PROTO_UDP, maps,
    port_counter_index, reason, unclassified_index,
};

use crate::{
    attach::{self, AttachMode, Attachment, Direction},
    counters::CounterArray,
    error::{Error, Result},
    iface,
    stats::{InterfaceInfo, PortStats, SCHEMA_VERSION, Snapshot, UnclassifiedStats},
};

/// The eBPF object built from `shaper-ebpf` by the build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shaper"));

const PROTOCOLS: [(u32, &str); 2] = [(PROTO_TCP, "tcp"), (PROTO_UDP, "udp")];

/// Bytes of BPF map memory that counting takes for `interfaces` interfaces on `cpus` CPUs
/// (values only; the kernel adds a page or so of bookkeeping per map).
pub fn map_memory_bytes(interfaces: u32, cpus: u32) -> u64 {
    let counter = size_of::<Counter>() as u64;
    let ports = u64::from(interfaces) * u64::from(PORT_COUNTERS_PER_IFACE) * counter;
    let unclassified =
        u64::from(interfaces) * u64::from(DIRECTIONS * reason::COUNT) * counter * u64::from(cpus);
    ports + unclassified
}

#[derive(Debug)]
struct Interface {
    name: String,
    ifindex: u32,
    attachment: Option<Attachment>,
}

/// The classifier, loaded into the kernel (verified) but attached nowhere until
/// [`Classifier::attach`]. Dropping it detaches everything it attached.
pub struct Classifier {
    ebpf: Ebpf,
    port_counters: CounterArray,
    /// Interface slots, in slot order: the slot is the index into this vector.
    interfaces: Vec<Interface>,
    capacity: u32,
}

impl Classifier {
    /// Loads both programs, with counter maps sized for `interfaces` interfaces.
    pub fn load(interfaces: u32) -> Result<Self> {
        if interfaces == 0 || interfaces > MAX_IFACES {
            return Err(Error::TooManyInterfaces {
                requested: interfaces as usize,
                max: MAX_IFACES,
            });
        }
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::PORT_COUNTERS, interfaces * PORT_COUNTERS_PER_IFACE)
            .map_max_entries(maps::UNCLASSIFIED, interfaces * DIRECTIONS * reason::COUNT)
            .load(OBJECT)?;
        for direction in Direction::BOTH {
            attach::program_mut(&mut ebpf, direction)?
                .load()
                .map_err(|e| match e {
                    ProgramError::LoadError {
                        io_error,
                        verifier_log,
                    } => Error::Verifier {
                        program: direction.program(),
                        source: io_error,
                        log: verifier_log.to_string(),
                    },
                    other => other.into(),
                })?;
        }
        let port_counters = match ebpf.map(maps::PORT_COUNTERS) {
            Some(Map::Array(data)) => {
                CounterArray::map(data.fd(), (interfaces * PORT_COUNTERS_PER_IFACE) as usize)?
            }
            _ => {
                return Err(Error::MissingInObject {
                    kind: "array map",
                    name: maps::PORT_COUNTERS,
                });
            }
        };
        Ok(Self {
            ebpf,
            port_counters,
            interfaces: Vec::new(),
            capacity: interfaces,
        })
    }

    /// Gives `iface` a counter slot, so the programs count its packets. [`attach`](Self::attach)
    /// does this itself; tests that run the programs with BPF_PROG_TEST_RUN (whose packets arrive
    /// on loopback) call it directly.
    pub fn register(&mut self, name: &str) -> Result<u32> {
        let ifindex = iface::index(name)?;
        if let Some(slot) = self.interfaces.iter().position(|i| i.ifindex == ifindex) {
            return Ok(slot as u32);
        }
        if self.interfaces.len() as u32 >= self.capacity {
            return Err(Error::TooManyInterfaces {
                requested: self.interfaces.len() + 1,
                max: self.capacity,
            });
        }
        let slot = self.interfaces.len() as u32;
        let mut slots: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(maps::IFACE_SLOTS).ok_or(
                Error::MissingInObject {
                    kind: "map",
                    name: maps::IFACE_SLOTS,
                },
            )?)?;
        slots.insert(ifindex, slot, 0)?;
        self.interfaces.push(Interface {
            name: name.to_owned(),
            ifindex,
            attachment: None,
        });
        Ok(slot)
    }

    /// Attaches both programs to the ingress and egress hooks of `name`.
    pub fn attach(&mut self, name: &str, mode: AttachMode) -> Result<()> {
        let slot = self.register(name)? as usize;
        let netns = iface::netns_inode()?;
        let ifindex = self.interfaces[slot].ifindex;
        let attachment = attach::attach(&mut self.ebpf, name, ifindex, netns, mode)?;
        self.interfaces[slot].attachment = Some(attachment);
        Ok(())
    }

    /// Detaches from every interface; reports the first failure after trying all.
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
        first_error.map_or(Ok(()), Err)
    }

    /// The program of one direction, for BPF_PROG_TEST_RUN.
    pub fn program_mut(
        &mut self,
        direction: Direction,
    ) -> Result<&mut aya::programs::SchedClassifier> {
        attach::program_mut(&mut self.ebpf, direction)
    }

    /// The counter of one (interface slot, direction, protocol, port).
    pub fn port_counter(&self, slot: u32, direction: Direction, proto: u32, port: u16) -> Counter {
        self.port_counters
            .get(port_counter_index(slot, direction.index(), proto, port) as usize)
            .unwrap_or_default()
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

    /// Every counter that has seen traffic.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut snapshot = Snapshot {
            schema_version: SCHEMA_VERSION,
            interfaces: Vec::new(),
            ports: Vec::new(),
            unclassified: Vec::new(),
        };
        for (slot, iface) in self.interfaces.iter().enumerate() {
            let slot = slot as u32;
            snapshot.interfaces.push(InterfaceInfo {
                name: iface.name.clone(),
                ifindex: iface.ifindex,
                attach: iface
                    .attachment
                    .as_ref()
                    .map_or("none", |a| a.mode.name())
                    .to_owned(),
            });
            for direction in Direction::BOTH {
                for (proto, proto_name) in PROTOCOLS {
                    for port in 0..PORTS {
                        let port = port as u16;
                        let counter = self.port_counter(slot, direction, proto, port);
                        if counter.packets != 0 {
                            snapshot.ports.push(PortStats {
                                iface: iface.name.clone(),
                                direction: direction.name().to_owned(),
                                proto: proto_name.to_owned(),
                                port,
                                packets: counter.packets,
                                bytes: counter.bytes,
                            });
                        }
                    }
                }
                for (reason, reason_name) in reason::NAMES.iter().enumerate() {
                    let counter = self.unclassified_counter(slot, direction, reason as u32)?;
                    if counter.packets != 0 {
                        snapshot.unclassified.push(UnclassifiedStats {
                            iface: iface.name.clone(),
                            direction: direction.name().to_owned(),
                            reason: (*reason_name).to_owned(),
                            packets: counter.packets,
                            bytes: counter.bytes,
                        });
                    }
                }
            }
        }
        Ok(snapshot)
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            log::warn!("detaching on shutdown: {e}");
        }
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

    #[test]
    fn map_memory_is_four_mib_per_interface_plus_a_little_per_cpu() {
        assert_eq!(map_memory_bytes(1, 1), 4 * 1024 * 1024 + 14 * 16);
        // Two interfaces on a 128-CPU host stay far below 64 MiB.
        assert!(map_memory_bytes(2, 128) < 9 * 1024 * 1024);
    }
}
