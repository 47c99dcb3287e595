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
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
};

use shaper_common::{Counter, PORTS, PortVerdicts, port_counter_index};

/// A shared mapping of the first `len` bytes of an mmapable array map.
#[derive(Debug)]
pub struct SharedArray {
    base: NonNull<u8>,
    len: usize,
    mapped_len: usize,
}

// SAFETY: the mapping is shared memory that every access reads or writes with atomics.
unsafe impl Send for SharedArray {}
unsafe impl Sync for SharedArray {}

impl SharedArray {
    /// Maps `len` bytes of the array behind `fd` for reading.
    pub fn read_only(fd: impl AsFd, len: usize) -> io::Result<Self> {
        Self::map(fd, len, libc::PROT_READ)
    }

    /// Maps `len` bytes of the array behind `fd` for reading and writing. The kernel refuses
    /// (EPERM) for a map the program may only read (`BPF_F_RDONLY_PROG`) — not our case.
    pub fn read_write(fd: impl AsFd, len: usize) -> io::Result<Self> {
        Self::map(fd, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn map(fd: impl AsFd, len: usize, protection: libc::c_int) -> io::Result<Self> {
        let page = 4096usize.max(unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize);
        let mapped_len = len.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks that the length fits
        // the map and that it was created mmapable.
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
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned, `len` bytes long and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast(), self.len / 8) }
    }

    /// The mapping as 16-bit cells (the rule index).
    pub fn halfwords(&self) -> &[AtomicU16] {
        // SAFETY: as for `words`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast(), self.len / 2) }
    }

    /// The [`Counter`] starting at 64-bit word `word`. Each field is read atomically; the pair
    /// is not a single snapshot (a packet may land between the two loads), which no consumer of
    /// monotonic counters needs.
    pub fn counter(&self, word: usize) -> Option<Counter> {
        let words = self.words();
        Some(Counter {
            packets: words.get(word)?.load(Ordering::Relaxed),
            bytes: words.get(word + 1)?.load(Ordering::Relaxed),
        })
    }
}

impl Drop for SharedArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped_len) };
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
    seen: Arc<SharedArray>,
    verdicts: Arc<SharedArray>,
}

impl PortCounters {
    pub(crate) fn new(seen: SharedArray, verdicts: SharedArray) -> Self {
        Self {
            seen: Arc::new(seen),
            verdicts: Arc::new(verdicts),
        }
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
        let words = self.seen.words();
        for port in 0..PORTS as usize {
            let index = first + port;
            let packets = words
                .get(index * COUNTER_WORDS)
                .map_or(0, |w| w.load(Ordering::Relaxed));
            if packets != 0 {
                visit(port as u16, self.read_index(index));
            }
        }
    }
}
