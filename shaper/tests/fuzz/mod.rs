//! The differential fuzzer of the classifier: seeded random frames ([`frames`]) run through the
//! real program with BPF_PROG_TEST_RUN ([`kernel`]), each frame's counters compared with what
//! etherparse says they must be ([`reference`]), disagreements minimised ([`shrink`]).
//!
//! It lives among shaper's integration tests because it needs the library (`Classifier`) and
//! is a test: `tests/classify_fuzz.rs` runs a bounded number of frames in every `cargo xtask
//! test`, and `cargo xtask fuzz` runs the same test binary, built in release, for as many frames
//! as asked. etherparse stays a dev-dependency: the daemon never builds it.
//!
//! Checking is two-level, so that it costs little per frame:
//! - per frame, the one counter the reference names must have moved by exactly the frame's
//!   packets (its GSO segments) and bytes (wire bytes) — a read of mmapped memory for a port, a
//!   per-CPU map lookup for a reason;
//! - per batch, every counter of the interface (all ports, both protocols and directions, every
//!   reason) must equal the model built from the reference: nothing counted twice, nothing lost,
//!   nothing anywhere else. If a batch fails that, it is replayed frame by frame to find who.

pub mod frames;
pub mod kernel;
pub mod reference;
pub mod shrink;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    time::Instant,
};

use shaper::datapath::classifier::Proto;
use shaper_common::{Counter, FragmentKey};

use frames::Case;
use kernel::{Kernel, Key, Outcome, PASS};
use reference::{Class, Fragment};

/// The reference's model of the classifier's `FRAGMENTS` map: the ports of every first
/// fragment sent that the classifier remembers. Nothing is ever evicted from it: a later
/// fragment either follows the frame just before it (see `frames`), whose entry the LRU has
/// just inserted, or has random addresses and identification no earlier frame shares.
#[derive(Debug, Default)]
pub struct Memory(HashMap<FragmentKey, (Proto, u16, u16)>);

impl Memory {
    /// What sending `case` taught the classifier: a first fragment counted under its ports is
    /// remembered for its datagram's later fragments.
    pub fn learn(&mut self, case: &Case) {
        if reference::refused(&case.frame) {
            return;
        }
        if let (
            Class::Port {
                proto, src, dst, ..
            },
            Some(Fragment::First(key)),
        ) = reference::classify(&case.frame)
        {
            self.0.insert(key, (proto, src, dst));
        }
    }

    /// The frame's class once fragment tracking is applied: a later fragment of a remembered
    /// datagram counts under its first fragment's ports, as one segment of no repeated headers.
    pub fn classify(&self, frame: &[u8]) -> Class {
        match reference::classify(frame) {
            (_, Some(Fragment::Later(key))) if self.0.contains_key(&key) => {
                let (proto, src, dst) = self.0[&key];
                Class::Port {
                    proto,
                    src,
                    dst,
                    header_len: 0,
                }
            }
            (class, _) => class,
        }
    }
}

pub struct Options {
    pub seed: u64,
    pub frames: u64,
    /// Frames between two full reads of the counters.
    pub batch: u64,
    /// Distinct disagreements to minimise and print in full.
    pub reports: usize,
    /// Stop after this many disagreeing frames: each costs two full reads of the counters.
    pub max_disagreements: usize,
}

impl Options {
    pub fn new(seed: u64, frames: u64) -> Self {
        Self {
            seed,
            frames,
            batch: 8192,
            reports: 16,
            max_disagreements: 1000,
        }
    }
}

/// What the counters must show after `case`, given what `memory` says the classifier remembers
/// of first fragments: one counter, moved by the frame's segments and bytes; nothing for a frame
/// BPF_PROG_TEST_RUN refuses.
pub fn expected(case: &Case, memory: &Memory) -> Outcome {
    if reference::refused(&case.frame) {
        return Vec::new();
    }
    let direction = case.direction;
    // `count::observe`: a GSO skb (gso_segs > 1) counts as its segments, anything else as one.
    let segments = case.gso_segs.filter(|&s| s > 1).unwrap_or(1) as u64;
    let len = case.frame.len() as u64;
    let (key, bytes) = match memory.classify(&case.frame) {
        Class::Port {
            proto,
            src,
            dst,
            header_len,
        } => {
            let port = if direction == shaper::Direction::Ingress {
                dst
            } else {
                src
            };
            // Every segment after the first repeats the headers on the wire
            // (`qdisc_pkt_len_init()`, net/core/dev.c).
            let bytes = len + (segments - 1) * header_len as u64;
            (
                Key::Port {
                    direction,
                    proto,
                    port,
                },
                bytes,
            )
        }
        // Unclassified aggregates count their segments but the skb's bytes (`count::observe`).
        Class::Unclassified(reason) => (Key::Reason { direction, reason }, len),
    };
    vec![(
        key,
        Counter {
            packets: segments,
            bytes,
        },
    )]
}

/// One frame on which the program and the reference disagree.
#[derive(Debug, Clone)]
pub struct Disagreement {
    pub index: u64,
    pub case: Case,
    pub expected: Outcome,
    pub observed: Outcome,
    pub verdict: i32,
}

impl Disagreement {
    pub fn disagrees(&self) -> bool {
        self.expected != self.observed || self.verdict != PASS
    }

    /// The kind of disagreement, without ports and byte counts: what minimising keeps.
    pub fn signature(&self) -> String {
        signature(self)
    }
}

fn kinds(outcome: &Outcome) -> String {
    if outcome.is_empty() {
        return "nothing".to_owned();
    }
    let kinds: Vec<String> = outcome.iter().map(|(k, _)| k.kind()).collect();
    kinds.join(" + ")
}

pub fn signature(d: &Disagreement) -> String {
    let mut s = format!(
        "expected {}, counted {}",
        kinds(&d.expected),
        kinds(&d.observed)
    );
    if kinds(&d.expected) == kinds(&d.observed) {
        let keys = |o: &Outcome| o.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        let counters = |o: &Outcome| o.iter().map(|(_, c)| *c).collect::<Vec<_>>();
        let same_direction = |a: &Key, b: &Key| match (a, b) {
            (Key::Port { direction: x, .. }, Key::Port { direction: y, .. })
            | (Key::Reason { direction: x, .. }, Key::Reason { direction: y, .. }) => x == y,
            _ => false,
        };
        if !keys(&d.expected)
            .iter()
            .zip(&keys(&d.observed))
            .all(|(a, b)| same_direction(a, b))
        {
            s.push_str(" (the other direction)");
        } else if keys(&d.expected) != keys(&d.observed) {
            s.push_str(" (another port)");
        } else if counters(&d.expected) != counters(&d.observed) {
            s.push_str(" (other packets or bytes)");
        }
    }
    if d.verdict == REFUSED {
        s.push_str(" (BPF_PROG_TEST_RUN refused the frame)");
    } else if d.verdict != PASS {
        let _ = write!(s, ", verdict {}", d.verdict);
    }
    s
}

/// The "verdict" of a frame BPF_PROG_TEST_RUN refused: the program never ran.
const REFUSED: i32 = i32::MIN;

fn describe(outcome: &Outcome) -> String {
    if outcome.is_empty() {
        return "nothing".to_owned();
    }
    let parts: Vec<String> = outcome
        .iter()
        .map(|(k, c)| format!("{k} {} packets {} bytes", c.packets, c.bytes))
        .collect();
    parts.join(", ")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  frame #{} ({} bytes, {}, gso_segs {:?}): {}",
            self.index,
            self.case.frame.len(),
            self.case.direction,
            self.case.gso_segs,
            hex(&self.case.frame)
        )?;
        writeln!(f, "    expected: {}", describe(&self.expected))?;
        write!(f, "    counted:  {}", describe(&self.observed))?;
        if self.verdict == REFUSED {
            write!(f, " (BPF_PROG_TEST_RUN refused it)")?;
        } else if self.verdict != PASS {
            write!(f, " (verdict {})", self.verdict)?;
        }
        Ok(())
    }
}

/// The run's result.
pub struct Summary {
    pub seed: u64,
    pub frames: u64,
    pub refused: u64,
    pub seconds: f64,
    /// Summed over every counter of the interface: what moved, and what the reference said.
    pub counted: Counter,
    pub expected: Counter,
    /// Frames per expected counter kind: what the generator covered.
    pub coverage: BTreeMap<String, u64>,
    /// Later fragments the reference expects under their first fragment's port.
    pub placed_fragments: u64,
    /// Disagreeing frames per signature.
    pub disagreements: BTreeMap<String, u64>,
    /// The first of each signature, as found and minimised.
    pub reports: Vec<(Disagreement, Disagreement)>,
    pub stopped_early: bool,
}

impl Summary {
    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.seconds
    }

    pub fn disagreeing_frames(&self) -> u64 {
        self.disagreements.values().sum()
    }

    pub fn print(&self) {
        println!(
            "fuzz: seed {:#x}: {} frames in {:.2} s, {:.0} frames/s; {} refused by \
             BPF_PROG_TEST_RUN, as predicted",
            self.seed,
            self.frames,
            self.seconds,
            self.frames_per_second(),
            self.refused
        );
        println!(
            "fuzz: all counters moved by {} packets / {} bytes; the reference: {} packets / {} \
             bytes",
            self.counted.packets, self.counted.bytes, self.expected.packets, self.expected.bytes
        );
        let coverage: Vec<String> = self
            .coverage
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("fuzz: frames by expected counter: {}", coverage.join(", "));
        println!(
            "fuzz: {} later fragments expected under their first fragment's port",
            self.placed_fragments
        );
        if self.disagreements.is_empty() {
            println!("fuzz: no disagreement");
            return;
        }
        println!(
            "fuzz: {} disagreeing frames{}:",
            self.disagreeing_frames(),
            if self.stopped_early {
                " (stopped early)"
            } else {
                ""
            }
        );
        for (signature, n) in &self.disagreements {
            println!("  {n:>8}  {signature}");
        }
        for (found, minimised) in &self.reports {
            println!("fuzz: {} (seed {:#x})", found.signature(), self.seed);
            println!("{found}");
            println!("  minimised:");
            println!("{minimised}");
        }
    }
}

/// Runs `options.frames` frames of `options.seed` through a freshly loaded classifier.
pub fn run(options: &Options) -> Summary {
    let mut kernel = Kernel::load();
    let mut memory = Memory::default();
    let start = kernel.counts();
    let mut model = start.clone();
    let mut summary = Summary {
        seed: options.seed,
        frames: 0,
        refused: 0,
        seconds: 0.0,
        counted: Counter::default(),
        expected: Counter::default(),
        coverage: BTreeMap::new(),
        placed_fragments: 0,
        disagreements: BTreeMap::new(),
        reports: Vec::new(),
        stopped_early: false,
    };
    let mut disagreements = Vec::new();
    let began = Instant::now();
    let mut index = 0;
    'batches: while index < options.frames {
        let end = options.frames.min(index + options.batch);
        let mut batch = Vec::with_capacity((end - index) as usize);
        for i in index..end {
            let case = frames::case(options.seed, i);
            let expected = expected(&case, &memory);
            if case.follows_previous && matches!(memory.classify(&case.frame), Class::Port { .. }) {
                summary.placed_fragments += 1;
            }
            for (key, delta) in &expected {
                *summary.coverage.entry(key.kind()).or_default() += 1;
                summary.expected.packets += delta.packets;
                summary.expected.bytes += delta.bytes;
            }
            summary.frames += 1;
            let verdict = match kernel.send(&case) {
                Ok(verdict) => {
                    memory.learn(&case);
                    verdict
                }
                Err(_) => {
                    summary.refused += 1;
                    if !reference::refused(&case.frame) {
                        // Refused but not predicted: the program never ran, nothing moved.
                        disagreements.push(Disagreement {
                            index: i,
                            case,
                            expected,
                            observed: Vec::new(),
                            verdict: REFUSED,
                        });
                    }
                    continue;
                }
            };
            let as_expected = verdict == PASS
                && expected
                    .iter()
                    .all(|&(key, delta)| kernel.get(key) == plus(model.get(key), delta));
            if as_expected {
                model.add(&expected);
                batch.push((i, case));
                continue;
            }
            // Replay the frame alone to see what it moves; the first run moved the same.
            let (verdict, observed) = kernel.observe(&case).unwrap_or((REFUSED, Vec::new()));
            model.add(&observed);
            model.add(&observed);
            disagreements.push(Disagreement {
                index: i,
                case,
                expected,
                observed,
                verdict,
            });
            if disagreements.len() >= options.max_disagreements {
                summary.stopped_early = true;
                break 'batches;
            }
        }
        let actual = kernel.counts();
        if actual != model {
            // Something moved that no per-frame check looked at: replay the batch frame by
            // frame to find which frames.
            let before_replay = disagreements.len();
            for (i, case) in batch {
                let expected = expected(&case, &memory);
                if let Some((verdict, observed)) = kernel.observe(&case) {
                    let d = Disagreement {
                        index: i,
                        case,
                        expected,
                        observed,
                        verdict,
                    };
                    if d.disagrees() {
                        disagreements.push(d);
                    }
                }
            }
            let found = kernel.counts();
            assert!(
                disagreements.len() > before_replay,
                "counters moved that no frame of the batch explains: {:?}",
                actual
                    .since(&model)
                    .into_iter()
                    .take(10)
                    .collect::<Vec<_>>()
            );
            model = found;
        }
        index = end;
    }
    summary.seconds = began.elapsed().as_secs_f64();
    let end = kernel.counts();
    summary.counted = minus(end.total(), start.total());
    for d in &disagreements {
        *summary.disagreements.entry(d.signature()).or_default() += 1;
    }
    // The first of each kind, minimised (after the clock stopped: minimising replays frames).
    let mut seen = Vec::new();
    for d in disagreements {
        let signature = d.signature();
        if seen.contains(&signature) || summary.reports.len() >= options.reports {
            continue;
        }
        seen.push(signature);
        let minimised = shrink::minimise(&mut kernel, &mut memory, &d);
        summary.reports.push((d, minimised));
    }
    summary
}

fn plus(a: Counter, b: Counter) -> Counter {
    Counter {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}

fn minus(a: Counter, b: Counter) -> Counter {
    Counter {
        packets: a.packets - b.packets,
        bytes: a.bytes - b.bytes,
    }
}
