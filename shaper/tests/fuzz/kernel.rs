//! The real classifier object, loaded into the kernel and run with BPF_PROG_TEST_RUN, and every
//! counter it keeps for the one interface the runs arrive on (loopback).

use std::fmt;

use aya::programs::{ProgramError, TestRun as _, TestRunOptions};
use shaper::{
    Classifier, Direction,
    datapath::{
        classifier::{PROTOCOLS, Proto},
        mapped_arrays::PortCounters,
    },
};
use shaper_common::{Counter, PORT_COUNTERS_PER_IFACE, PORTS, port_counter_index, reason};

use super::frames::Case;
use crate::common::packet::skb_context;

/// One counter the classifier keeps for an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Port {
        direction: Direction,
        proto: Proto,
        port: u16,
    },
    Reason {
        direction: Direction,
        reason: u32,
    },
}

impl Key {
    /// "tcp" or "truncated": the counter without direction and port.
    pub fn kind(&self) -> String {
        match self {
            Key::Port { proto, .. } => proto.name().to_owned(),
            Key::Reason { reason, .. } => reason::NAMES[*reason as usize].to_owned(),
        }
    }

    fn index(&self) -> usize {
        match *self {
            Key::Port {
                direction,
                proto,
                port,
            } => port_counter_index(0, direction.index(), proto.index(), port) as usize,
            Key::Reason { direction, reason } => {
                PORT_CELLS + (direction.index() * reason::COUNT + reason) as usize
            }
        }
    }

    fn at(index: usize) -> Self {
        let direction = |d: usize| Direction::BOTH[d];
        if index < PORT_CELLS {
            let (rest, port) = (index / PORTS as usize, index % PORTS as usize);
            let (direction_index, proto_index) = (rest / PROTOCOLS.len(), rest % PROTOCOLS.len());
            let proto = PROTOCOLS
                .into_iter()
                .find(|p| p.index() as usize == proto_index)
                .expect("a protocol index");
            Key::Port {
                direction: direction(direction_index),
                proto,
                port: port as u16,
            }
        } else {
            let index = index - PORT_CELLS;
            Key::Reason {
                direction: direction(index / reason::COUNT as usize),
                reason: (index % reason::COUNT as usize) as u32,
            }
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Port {
                direction,
                proto,
                port,
            } => write!(f, "{direction}/{proto}/{port}"),
            Key::Reason { direction, .. } => write!(f, "{direction}/{}", self.kind()),
        }
    }
}

/// Per-port counters of one interface: both directions, both protocols, every port.
const PORT_CELLS: usize = PORT_COUNTERS_PER_IFACE as usize;
const REASON_CELLS: usize = Direction::BOTH.len() * reason::COUNT as usize;

/// What a run moved: the counters that changed and by how much, in key order.
pub type Outcome = Vec<(Key, Counter)>;

/// Every counter of the interface, dense: port cells in map order, then the reasons.
#[derive(Clone, PartialEq, Eq)]
pub struct Counts(Vec<Counter>);

impl Counts {
    pub fn get(&self, key: Key) -> Counter {
        self.0[key.index()]
    }

    pub fn add(&mut self, outcome: &Outcome) {
        for (key, delta) in outcome {
            let cell = &mut self.0[key.index()];
            cell.packets += delta.packets;
            cell.bytes += delta.bytes;
        }
    }

    /// What moved since `before` (counters only grow).
    pub fn since(&self, before: &Counts) -> Outcome {
        self.0
            .iter()
            .zip(&before.0)
            .enumerate()
            .filter(|(_, (now, then))| now != then)
            .map(|(index, (now, then))| {
                (
                    Key::at(index),
                    Counter {
                        packets: now.packets.wrapping_sub(then.packets),
                        bytes: now.bytes.wrapping_sub(then.bytes),
                    },
                )
            })
            .collect()
    }

    pub fn total(&self) -> Counter {
        self.0.iter().fold(Counter::default(), |sum, c| Counter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        })
    }
}

/// `TC_ACT_UNSPEC`: with no rule installed the classifier passes everything.
pub const PASS: i32 = -1;

pub struct Kernel {
    classifier: Classifier,
    ports: PortCounters,
}

impl Kernel {
    /// Loads and verifies the classifier and registers loopback, where BPF_PROG_TEST_RUN's
    /// packets arrive (`bpf_prog_test_run_skb()` uses the namespace's loopback device).
    pub fn load() -> Self {
        let mut classifier = Classifier::load(1).expect("load and verify the classifier");
        classifier.register("lo").expect("register lo");
        let ports = classifier.port_counters();
        Self { classifier, ports }
    }

    /// Runs one frame through the program of its direction; returns the program's verdict, or
    /// the error of a frame BPF_PROG_TEST_RUN refused.
    pub fn send(&mut self, case: &Case) -> Result<i32, ProgramError> {
        let ctx = case.gso_segs.map(|segs| skb_context(segs, 1000));
        let program = self
            .classifier
            .program_mut(case.direction)
            .expect("both programs are loaded");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&case.frame);
        opts.ctx_in = ctx.as_deref();
        program.test_run(opts).map(|r| r.return_value as i32)
    }

    /// One counter, read alone: a port's from the mmapped array, a reason's summed over CPUs.
    pub fn get(&self, key: Key) -> Counter {
        match key {
            Key::Port {
                direction,
                proto,
                port,
            } => {
                self.ports
                    .read(0, direction.index(), proto.index(), port)
                    .seen
            }
            Key::Reason { direction, reason } => self
                .classifier
                .unclassified_counter(0, direction, reason)
                .expect("read an unclassified counter"),
        }
    }

    /// Every counter at once.
    pub fn counts(&self) -> Counts {
        let mut cells = Vec::with_capacity(PORT_CELLS + REASON_CELLS);
        for direction in Direction::BOTH {
            for proto in PROTOCOLS {
                for port in 0..=u16::MAX {
                    cells.push(
                        self.ports
                            .read(0, direction.index(), proto.index(), port)
                            .seen,
                    );
                }
            }
        }
        for direction in Direction::BOTH {
            for reason in 0..reason::COUNT {
                cells.push(self.get(Key::Reason { direction, reason }));
            }
        }
        debug_assert!(
            (0..PORT_CELLS)
                .step_by(4099)
                .all(|i| matches!(Key::at(i), Key::Port { .. }) && Key::at(i).index() == i)
        );
        Counts(cells)
    }

    /// Runs one frame and reads what it moved: `None` if BPF_PROG_TEST_RUN refused it, else the
    /// verdict and the outcome. For reports and minimising, not the hot path: it reads, before
    /// and after, every reason and, in both directions and for both protocols, every port the
    /// frame could name (each 16-bit value at each offset) — a few thousand counters instead of
    /// 262,158. A count elsewhere is still caught, by the full comparison after each batch.
    pub fn observe(&mut self, case: &Case) -> Option<(i32, Outcome)> {
        let mut ports: Vec<u16> = case
            .frame
            .windows(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let mut keys = Vec::with_capacity(REASON_CELLS + 4 * ports.len());
        for direction in Direction::BOTH {
            for reason in 0..reason::COUNT {
                keys.push(Key::Reason { direction, reason });
            }
            for proto in PROTOCOLS {
                keys.extend(ports.iter().map(|&port| Key::Port {
                    direction,
                    proto,
                    port,
                }));
            }
        }
        let before: Vec<Counter> = keys.iter().map(|&k| self.get(k)).collect();
        let verdict = self.send(case).ok()?;
        let outcome = keys
            .iter()
            .zip(before)
            .filter_map(|(&key, then)| {
                let now = self.get(key);
                (now != then).then(|| {
                    (
                        key,
                        Counter {
                            packets: now.packets - then.packets,
                            bytes: now.bytes - then.bytes,
                        },
                    )
                })
            })
            .collect();
        Some((verdict, outcome))
    }
}
