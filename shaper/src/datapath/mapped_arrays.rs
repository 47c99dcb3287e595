//! The classifier's mmapable maps, seen from userspace as shared memory.
//!
//! `PORT_COUNTERS` holds 262,144 entries per interface. Reading them one `BPF_MAP_LOOKUP_ELEM` at
//! a time costs a syscall each; the counter maps are `BPF_F_MMAPABLE` instead, so a full scan is
//! a read of shared memory (kernel/bpf/arraymap.c `array_map_mmap`). The rule index is mapped
//! writable the same way, so repainting 65,536 ports of a range is a memory write, not 65,536
//! `BPF_MAP_UPDATE_ELEM` calls.

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering},
    },
};

use shaper_common::{Counter, PORTS, PortVerdicts, port_counter_index};

use crate::datapath::tcp_telemetry::TcpTelemetry;

// Relaxed atomic loads are sound on read-only memory only for "sufficiently small" atomics, which
// std guarantees up to 8 bytes on 64-bit targets (std::sync::atomic, "Atomic accesses to
// read-only memory"); a 32-bit target may implement a 64-bit load with a compare-and-swap, which
// faults on a `PROT_READ` page.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("ReadOnlyMapping loads AtomicU64 from read-only memory: 64-bit targets only");

/// A shared mapping of the first `len` bytes of an mmapable array map: the mmap and munmap
/// behind [`ReadOnlyMapping`] and [`WritableMapping`], which decide what may be done with it.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    mapped_len: usize,
}

// SAFETY: the mapping belongs to no thread: it is unmapped only by `Drop`, from whichever thread
// owns the value last, and nothing else about it is thread-local.
unsafe impl Send for Mapping {}
// SAFETY: through `&Mapping` the memory is reached only as atomics (`words`, `halfwords`), so
// threads sharing it cannot race each other; the programs update it with BPF atomic adds (the
// counters) or only read it (the rule index).
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: impl AsFd, len: usize, protection: libc::c_int) -> io::Result<Self> {
        // SAFETY: sysconf only reads a system constant; it has no preconditions.
        let page = 4096usize.max(unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize);
        let mapped_len = len.div_ceil(page) * page;
        // SAFETY: a fresh mapping at an address the kernel picks (null hint), so no existing
        // memory is replaced; the fd is borrowed for the call only (the mapping keeps its own
        // reference to the map). The kernel refuses a length beyond the map or a map created
        // without BPF_F_MMAPABLE (kernel/bpf/arraymap.c `array_map_mmap`), checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                protection,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            base,
            len,
            mapped_len,
        })
    }

    /// The mapping as 64-bit words. The kernel updates counters with BPF atomic adds, so
    /// atomic loads of these naturally aligned words see whole values.
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: mmap succeeded for `len` bytes, so they are backed by the map, and stay mapped
        // until `Drop` (the slice borrows `self`); the base is page-aligned, so every word is
        // aligned for AtomicU64. Atomics are how memory the programs write concurrently may be
        // shared. On a `PROT_READ` mapping only loads may follow: `ReadOnlyMapping` offers
        // nothing else, and relaxed 8-byte loads are sound on read-only memory (see the
        // compile_error above).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast(), self.len / 8) }
    }

    /// The mapping as 16-bit cells.
    fn halfwords(&self) -> &[AtomicU16] {
        // SAFETY: as for `words`: `len` mapped bytes, alive as long as `self`, page-aligned base.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast(), self.len / 2) }
    }

    /// The mapping as byte cells.
    fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: as for `words`: `len` mapped bytes, alive as long as `self`; bytes need no
        // alignment.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `new` mapped; no slice into it outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped_len) };
    }
}

/// A `PROT_READ` mapping of an array the programs write (the counters). It only loads: a store
/// would fault on the read-only page, so there is no way to reach one.
///
/// ```compile_fail,E0599
/// # use std::sync::atomic::Ordering;
/// // Compiles for a `WritableMapping`; a read-only one hands out no cells to store to.
/// fn clear(mapping: &shaper::datapath::mapped_arrays::ReadOnlyMapping) {
///     mapping.halfwords()[0].store(0, Ordering::Relaxed);
/// }
/// ```
#[derive(Debug)]
pub struct ReadOnlyMapping(Mapping);

impl ReadOnlyMapping {
    /// Maps `len` bytes of the array behind `fd` for reading.
    pub fn new(fd: impl AsFd, len: usize) -> io::Result<Self> {
        Mapping::new(fd, len, libc::PROT_READ).map(Self)
    }

    /// The 64-bit word at index `word`, loaded atomically; `None` past the mapping.
    pub fn load(&self, word: usize) -> Option<u64> {
        Some(self.0.words().get(word)?.load(Ordering::Relaxed))
    }

    /// The `count` words from index `first`, for a scan; `None` if they pass the mapping's end.
    pub fn words(&self, first: usize, count: usize) -> Option<&[AtomicU64]> {
        self.0.words().get(first..first.checked_add(count)?)
    }

    /// The [`Counter`] starting at 64-bit word `word`. Each field is read atomically; the pair
    /// is not a single snapshot (a packet may land between the two loads), which no consumer of
    /// monotonic counters needs.
    pub fn counter(&self, word: usize) -> Option<Counter> {
        Some(Counter {
            packets: self.load(word)?,
            bytes: self.load(word + 1)?,
        })
    }
}

/// A `PROT_READ | PROT_WRITE` mapping of an array userspace writes and the programs read (the
/// rule index).
#[derive(Debug)]
pub struct WritableMapping(Mapping);

impl WritableMapping {
    /// Maps `len` bytes of the array behind `fd` for reading and writing. The kernel refuses
    /// (EPERM) for a map the program may only read (`BPF_F_RDONLY_PROG`) — not our case.
    pub fn new(fd: impl AsFd, len: usize) -> io::Result<Self> {
        Mapping::new(fd, len, libc::PROT_READ | libc::PROT_WRITE).map(Self)
    }

    /// The mapping as 16-bit cells (the rule index). A program reads a cell with one aligned
    /// 16-bit load, so it sees either the old or the new value of a store, never a torn one.
    pub fn halfwords(&self) -> &[AtomicU16] {
        self.0.halfwords()
    }

    /// The mapping as byte cells (the watched ports' switches).
    pub fn bytes(&self) -> &[AtomicU8] {
        self.0.bytes()
    }

    /// The mapping as 64-bit words (the `pending` counts the program adds to atomically).
    pub fn words(&self) -> &[AtomicU64] {
        self.0.words()
    }
}

/// 64-bit words in one [`Counter`].
pub(crate) const COUNTER_WORDS: usize = size_of::<Counter>() / 8;
const VERDICT_WORDS: usize = size_of::<PortVerdicts>() / 8;

/// What the hook counted for one (interface, direction, protocol, port).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortReading {
    /// Every packet seen, passed or not.
    pub seen: Counter,
    /// The part of `seen` a `drop` rule dropped.
    pub dropped: Counter,
    /// The part of `seen` an `observe` rule passed but would have dropped.
    pub would_drop: Counter,
}

/// The per-port counter maps (`PORT_COUNTERS`, `PORT_VERDICTS`), shared: a clone reads the same
/// memory, so the metrics endpoint scans them without taking the daemon's lock.
#[derive(Debug, Clone)]
pub struct PortCounters {
    seen: Arc<ReadOnlyMapping>,
    verdicts: Arc<ReadOnlyMapping>,
    tcp: Arc<TcpTelemetry>,
}

impl PortCounters {
    pub(crate) fn new(seen: ReadOnlyMapping, verdicts: ReadOnlyMapping, tcp: TcpTelemetry) -> Self {
        Self {
            seen: Arc::new(seen),
            verdicts: Arc::new(verdicts),
            tcp: Arc::new(tcp),
        }
    }

    /// The TCP event counters and handshake histograms, mapped the same way.
    pub fn tcp(&self) -> &TcpTelemetry {
        &self.tcp
    }

    /// The counters of one (interface slot, direction index, protocol, port); zero outside the
    /// maps.
    pub fn read(&self, slot: u32, direction: u32, proto: u32, port: u16) -> PortReading {
        let index = port_counter_index(slot, direction, proto, port) as usize;
        self.read_index(index)
    }

    fn read_index(&self, index: usize) -> PortReading {
        let verdict = index * VERDICT_WORDS;
        PortReading {
            seen: self.seen.counter(index * COUNTER_WORDS).unwrap_or_default(),
            dropped: self.verdicts.counter(verdict).unwrap_or_default(),
            would_drop: self
                .verdicts
                .counter(verdict + COUNTER_WORDS)
                .unwrap_or_default(),
        }
    }

    /// Calls `visit(port, reading)` for every port of (slot, direction, protocol) that has seen a
    /// packet, in port order. One pass over 65,536 packet counters in shared memory; the
    /// verdicts are read only for ports that have traffic.
    pub fn for_each_active(
        &self,
        slot: u32,
        direction: u32,
        proto: u32,
        mut visit: impl FnMut(u16, PortReading),
    ) {
        let first = port_counter_index(slot, direction, proto, 0) as usize;
        // One slice for the whole pass rather than a bounds-checked lookup per port: every
        // scrape, `top` refresh and `stats` makes this pass, 65,536 ports at a time.
        let Some(words) = self
            .seen
            .words(first * COUNTER_WORDS, PORTS as usize * COUNTER_WORDS)
        else {
            return;
        };
        for (port, counter) in words.chunks_exact(COUNTER_WORDS).enumerate() {
            if counter[0].load(Ordering::Relaxed) != 0 {
                visit(port as u16, self.read_index(first + port));
            }
        }
    }
}
