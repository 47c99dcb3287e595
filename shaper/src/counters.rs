//! Reading the classifier's counters from userspace.
//!
//! `PORT_COUNTERS` holds 262,144 entries per interface. Reading them one `BPF_MAP_LOOKUP_ELEM` at
//! a time costs a syscall each; the map is `BPF_F_MMAPABLE` instead, so a full scan is a read of
//! shared memory (kernel/bpf/arraymap.c `array_map_mmap`).

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
    ptr::NonNull,
};

use shaper_common::Counter;

/// A read-only mapping of an mmapable array of [`Counter`].
#[derive(Debug)]
pub struct CounterArray {
    base: NonNull<Counter>,
    entries: usize,
    mapped_len: usize,
}

// SAFETY: the mapping is shared, read-only memory; every read goes through atomic loads.
unsafe impl Send for CounterArray {}
unsafe impl Sync for CounterArray {}

impl CounterArray {
    /// Maps the first `entries` values of the array map behind `fd`.
    pub fn map(fd: impl AsFd, entries: usize) -> io::Result<Self> {
        let page = 4096usize.max(unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize);
        let mapped_len = (entries * size_of::<Counter>()).div_ceil(page) * page;
        // SAFETY: a fresh shared read-only mapping of a BPF map fd; the kernel checks that the
        // length fits the map and that it was created mmapable.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<Counter>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            base,
            entries,
            mapped_len,
        })
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The counter at `index`. Each field is read atomically; the pair is not a single snapshot
    /// (a packet may land between the two loads), which no consumer of monotonic counters needs.
    pub fn get(&self, index: usize) -> Option<Counter> {
        if index >= self.entries {
            return None;
        }
        // SAFETY: index is in bounds of the mapping; the kernel writes these u64s with atomic
        // instructions, so atomic loads of naturally aligned u64s see whole values.
        unsafe {
            let entry = self.base.as_ptr().add(index);
            let packets = std::sync::atomic::AtomicU64::from_ptr(&raw mut (*entry).packets);
            let bytes = std::sync::atomic::AtomicU64::from_ptr(&raw mut (*entry).bytes);
            Some(Counter {
                packets: packets.load(std::sync::atomic::Ordering::Relaxed),
                bytes: bytes.load(std::sync::atomic::Ordering::Relaxed),
            })
        }
    }
}

impl Drop for CounterArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped_len) };
    }
}
