//! Top talkers: per remote address accounting for the local ports userspace watches.
//!
//! A port that is not watched costs one `WATCHED` lookup and a byte test. A watched port's
//! packet reads its remote address and adds to that address's entry in `TALKERS`, a shared LRU
//! hash updated with atomic adds, like `PORT_COUNTERS`.
//!
//! Why one shared LRU hash rather than a per-CPU one: a per-CPU LRU hash keeps a value per CPU
//! for every key (48 bytes × CPUs per remote), and userspace would sum them on every read; a
//! shared one keeps 48 bytes per remote whatever the CPU count, and BPF atomic adds lose no
//! update between CPUs. The common LRU list (no `BPF_F_NO_COMMON_LRU`) evicts the least
//! recently used remote of the whole map, not of one CPU's share.
//!
//! Evictions are counted exactly without the program seeing them: every insert of a new key
//! bumps `TALKER_INSERTS` (per CPU, so lock-free), and a key leaves the map only by eviction or
//! by userspace deleting it, which userspace counts itself. Evicted = inserted − deleted − live.
//! A bump "when the insert finds the map full" would not do: the LRU hash evicts to refill a
//! CPU's free list before the map is full (kernel/bpf/bpf_lru_list.c
//! `bpf_common_lru_pop_free` shrinks the list `LOCAL_FREE_TARGET` nodes at a time), and
//! `bpf_map_update_elem` says nothing about it.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use shaper_common::{
    Counter, DIR_INGRESS, MAX_TALKERS, TalkerCounters, TalkerKey, WATCH_ROWS_PER_IFACE,
    WATCH_TALKERS, WatchRow, watch_row,
};

use crate::{atomic::add_counter, count, limit::Verdict, parse};

/// Per (interface slot, direction, protocol): a byte of switches per local port
/// ([`WATCH_TALKERS`]). Painted by userspace through mmap; sized at load time for the
/// interfaces attached, like `RULE_INDEX`.
#[map]
static WATCHED: Array<WatchRow> = Array::with_max_entries(WATCH_ROWS_PER_IFACE, BPF_F_MMAPABLE);

/// Counters per (interface, direction, protocol, local port, remote address) of watched ports.
#[map]
static TALKERS: LruHashMap<TalkerKey, TalkerCounters> =
    LruHashMap::with_max_entries(MAX_TALKERS, 0);

/// Keys inserted into `TALKERS`, per CPU: see the module documentation for what it counts.
#[map]
static TALKER_INSERTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Adds a counted packet and its verdict to its remote address's entry, if its local port is
/// watched; hands it to the trace if its port is traced. Both switches are bits of the one
/// `WATCHED` byte, so an unwatched, untraced port pays one lookup for both.
#[inline(always)]
pub fn account(ctx: &TcContext, packet: &count::Packet, direction: u32, verdict: &Verdict) {
    let Some(row) = WATCHED.get(watch_row(packet.slot, direction, packet.proto)) else {
        return;
    };
    let cell = row[packet.local_port as usize];
    if cell == 0 {
        return;
    }
    // Packed into scalars: a subprogram takes at most five arguments in registers, and passing
    // `packet` by reference would make the common path keep it in memory for this rare call.
    let segments = if packet.segments < u32::MAX as u64 {
        packet.segments
    } else {
        u32::MAX as u64
    };
    let ports = segments << 32 | (packet.local_port as u64) << 16 | packet.remote_port as u64;
    let what = (cell as u64) << 32
        | (verdict.code() as u64) << 24
        | (direction as u64) << 16
        | (packet.proto as u64) << 8
        | packet.slot as u64;
    watched(ctx, packet.bytes, ports, what);
}

/// The part of [`account`] only watched or traced ports reach. Not inlined: kept out of the
/// common path, whose code and registers stay as they were without it (inlined, it cost the
/// unlimited path about 10%; see the book's *Performance*,
/// docs/src/contributing/benchmarks.md).
#[inline(never)]
fn watched(ctx: &TcContext, bytes: u64, ports: u64, what: u64) {
    let packet = &count::Packet {
        slot: (what & 0xff) as u32,
        proto: ((what >> 8) & 0xff) as u32,
        local_port: (ports >> 16) as u16,
        remote_port: ports as u16,
        counter_index: 0,
        segments: ports >> 32,
        bytes,
    };
    let direction = ((what >> 16) & 0xff) as u32;
    let verdict = &Verdict::from_code(((what >> 24) & 0xff) as u8);
    let cell = (what >> 32) as u8;
    crate::trace::record(ctx, packet, direction, verdict, cell);
    if cell & WATCH_TALKERS == 0 {
        return;
    }
    // The remote is the source of what arrives and the destination of what leaves.
    let Some(addr) = parse::address(ctx, direction == DIR_INGRESS) else {
        return;
    };
    let key = TalkerKey {
        addr,
        port: packet.local_port,
        slot: packet.slot as u8,
        direction: direction as u8,
        proto: packet.proto as u8,
        _pad: [0; 3],
    };
    let this = Counter {
        packets: packet.segments,
        bytes: packet.bytes,
    };
    if let Some(entry) = TALKERS.get_ptr_mut(key) {
        // SAFETY: a pointer to the value of a live LRU hash element. Should the element be
        // evicted and recycled under this add (another CPU inserting while the map is full),
        // the add lands in the recycled element: the cost of an LRU, bounded to this packet.
        unsafe { add(entry, verdict, &this) };
        return;
    }
    let mut fresh = TalkerCounters {
        seen: this,
        ..TalkerCounters::default()
    };
    match verdict {
        Verdict::Pass | Verdict::Redirect(_) => {}
        Verdict::Drop => fresh.dropped = this,
        Verdict::WouldDrop => fresh.would_drop = this,
    }
    if TALKERS.insert(key, fresh, BPF_NOEXIST.into()).is_ok() {
        if let Some(inserts) = TALKER_INSERTS.get_ptr_mut(0) {
            // SAFETY: this CPU's copy of the single per-CPU element; tc programs run with
            // migration disabled, so no other writer races this add.
            unsafe { *inserts += 1 };
        }
        return;
    }
    // Another CPU inserted the same key between the lookup and the insert: add to its entry.
    if let Some(entry) = TALKERS.get_ptr_mut(key) {
        // SAFETY: as for the first lookup.
        unsafe { add(entry, verdict, &this) };
    }
}

/// # Safety
///
/// `entry` points to a live `TalkerCounters` map value.
#[inline(always)]
unsafe fn add(entry: *mut TalkerCounters, verdict: &Verdict, this: &Counter) {
    // SAFETY: the caller vouches for `entry`; `&raw mut` makes no references.
    unsafe {
        add_counter(&raw mut (*entry).seen, this.packets, this.bytes);
        match verdict {
            Verdict::Pass | Verdict::Redirect(_) => {}
            Verdict::Drop => add_counter(&raw mut (*entry).dropped, this.packets, this.bytes),
            Verdict::WouldDrop => {
                add_counter(&raw mut (*entry).would_drop, this.packets, this.bytes)
            }
        }
    }
}
