//! Fragments: a datagram's later fragments take the ports of its first.
//!
//! Only a datagram's first fragment carries the L4 header. Counting the others as portless
//! would let a sender multiply any limit by its fragment count (the first fragment carries 8
//! bytes of UDP header, the rest travel free), so the first fragment's ports are remembered in
//! `FRAGMENTS`, keyed as the kernel's reassembly keys a datagram, and a later fragment that
//! finds them is counted and charged under the same port, and so the same rule, as its first.
//! A later fragment that finds nothing (it overtook its first, the first was lost or evicted,
//! or a sender never sent one) stays `fragment`: unplaced.
//!
//! Nothing is deleted when a datagram's last fragment passes: a duplicate or retransmitted
//! fragment then still finds its ports, and evictions can be counted exactly without the
//! program seeing them, as for `TALKERS`: evicted = inserted − live. A new datagram that
//! reuses an identification (IPv4's is 16 bits) overwrites the entry at its first fragment.
//!
//! Both paths are subprograms, not inlined: only fragments reach them, and the 40-byte key
//! stays out of the common path's stack frame (the verifier adds the frames of a call chain
//! against one 512-byte limit, and the watched path's chain is already the deepest).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use shaper_common::{FragmentKey, FragmentPorts, MAX_FRAGMENTED_DATAGRAMS, fragment_stat};

use crate::parse::{self, Flow};

/// First fragments' ports by datagram. One shared LRU hash: an entry is written once per
/// datagram and read by its later fragments, on whichever CPU they arrive.
#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Per CPU: datagrams inserted into `FRAGMENTS`, and later fragments placed through it.
#[map]
static FRAGMENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(fragment_stat::COUNT, 0);

/// The datagram a fragment belongs to, packed into one scalar for the subprograms (which take
/// at most five arguments, all in registers): the identification in the low 32 bits, the IPv4
/// protocol (0 for IPv6) in bits 32-39, bit 40 for IPv6.
#[derive(Clone, Copy)]
pub struct Datagram(pub u64);

impl Datagram {
    const IPV6: u64 = 1 << 40;

    #[inline(always)]
    pub fn ipv4(id: u16, ip_proto: u8) -> Self {
        Self((ip_proto as u64) << 32 | id as u64)
    }

    #[inline(always)]
    pub fn ipv6(id: u32) -> Self {
        Self(Self::IPV6 | id as u64)
    }
}

/// Remembers a first fragment's ports for its datagram's later fragments.
#[inline(always)]
pub fn remember(ctx: &TcContext, ip_offset: usize, datagram: Datagram, flow: &Flow) {
    let ports = (flow.proto as u64) << 32 | (flow.src_port as u64) << 16 | flow.dst_port as u64;
    remember_ports(ctx, ip_offset as u64, datagram.0, ports);
}

/// The flow of a later fragment whose first fragment was seen, or `None`.
#[inline(always)]
pub fn recall(ctx: &TcContext, ip_offset: usize, datagram: Datagram) -> Option<Flow> {
    let found = recall_ports(ctx, ip_offset as u64, datagram.0);
    if found == 0 {
        return None;
    }
    Some(Flow {
        proto: ((found >> 32) & 0xff) as u32,
        src_port: (found >> 16) as u16,
        dst_port: found as u16,
        // Fragments are never GSO aggregates (one segment each), so what a segment repeats on
        // the wire does not matter.
        header_len: 0,
        // No TCP header in a later fragment: the handshake tracker ignores a segment without
        // flags.
        tcp_flags: 0,
        ip_offset: ip_offset as u32,
        ipv6: datagram.0 & Datagram::IPV6 != 0,
    })
}

#[inline(never)]
fn remember_ports(ctx: &TcContext, ip_offset: u64, datagram: u64, ports: u64) {
    let Some(key) = key(ctx, ip_offset, datagram) else {
        return;
    };
    let value = FragmentPorts {
        src_port: (ports >> 16) as u16,
        dst_port: ports as u16,
        proto: ((ports >> 32) & 0xff) as u32,
    };
    if FRAGMENTS.insert(key, value, BPF_NOEXIST.into()).is_ok() {
        bump(fragment_stat::INSERTED);
    } else {
        // The datagram is known already: a duplicated first fragment, the same one parsed
        // again after a pull, or a new datagram reusing the identification. Its ports are this
        // fragment's from now on.
        let _ = FRAGMENTS.insert(key, value, 0);
    }
}

/// `proto << 32 | src_port << 16 | dst_port | 1 << 63`, or 0 if the datagram is not known.
#[inline(never)]
fn recall_ports(ctx: &TcContext, ip_offset: u64, datagram: u64) -> u64 {
    let Some(key) = key(ctx, ip_offset, datagram) else {
        return 0;
    };
    // SAFETY: aya's caveat is that an LRU element may be recycled under a reader; the value is
    // copied at once, and a recycled element yields another datagram's ports for this one
    // fragment, the cost of an LRU.
    let Some(&ports) = (unsafe { FRAGMENTS.get(key) }) else {
        return 0;
    };
    bump(fragment_stat::PLACED);
    1 << 63
        | (ports.proto as u64 & 0xff) << 32
        | (ports.src_port as u64) << 16
        | ports.dst_port as u64
}

/// The key of the fragment's datagram, its addresses read from the IP header at `ip_offset`.
///
/// Read with `bpf_skb_load_bytes` rather than through packet pointers: a subprogram that only
/// read `data` and `data_end` would get them as arguments from LLVM (which promotes the
/// context's fields), and the verifier refuses the arithmetic LLVM then does on them ("pointer
/// arithmetic with <<= operator prohibited"). The helper takes the context itself.
#[inline(always)]
fn key(ctx: &TcContext, ip_offset: u64, datagram: u64) -> Option<FragmentKey> {
    // The IP header starts after the Ethernet header and at most two VLAN tags (22 bytes).
    let ip = (ip_offset & 0x3f) as usize;
    let (src, dst, family) = if datagram & Datagram::IPV6 != 0 {
        // Source at byte 8, destination at byte 24 of the fixed header (RFC 8200 section 3).
        let src = ctx.load::<[u8; 16]>(ip + 8).ok()?;
        let dst = ctx.load::<[u8; 16]>(ip + 24).ok()?;
        (src, dst, 6)
    } else {
        // Source at byte 12, destination at byte 16 (RFC 791 section 3.1).
        let addrs = ctx.load::<[u8; 8]>(ip + 12).ok()?;
        (
            parse::v4_mapped([addrs[0], addrs[1], addrs[2], addrs[3]]),
            parse::v4_mapped([addrs[4], addrs[5], addrs[6], addrs[7]]),
            4,
        )
    };
    Some(FragmentKey {
        src,
        dst,
        id: datagram as u32,
        ip_proto: (datagram >> 32) as u8,
        family,
        _pad: [0; 2],
    })
}

#[inline(always)]
fn bump(stat: u32) {
    if let Some(count) = FRAGMENT_STATS.get_ptr_mut(stat) {
        // SAFETY: this CPU's copy of a per-CPU element (non-null, index checked by the lookup);
        // tc programs run with migration disabled, so no other writer races this add.
        unsafe { *count += 1 };
    }
}
