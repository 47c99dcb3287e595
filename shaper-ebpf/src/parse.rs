//! Packet parsing: from the Ethernet header to the L4 protocol and ports.
//!
//! The rule: a packet counts under a port only if every header up to and including its whole
//! L4 header, as the headers' own length fields declare them (IPv4 IHL, IPv6 extension header
//! lengths, TCP data offset), is present. Otherwise it is `truncated` (the bytes end first) or
//! `malformed` (a length field below the header's fixed size). This is the kernel's receive
//! path, which drops such packets before any socket sees them (`ip_rcv_core()`,
//! `tcp_v4_rcv()`, ...; each check below cites its own). The reasons further in (`fragment`,
//! `icmp`, `other_l4`) are decided on whole headers too. The IP length fields are not consulted:
//! BIG TCP aggregates carry 0 there, and Ethernet pads short frames.
//!
//! All reads use direct packet access with a bounds check the verifier can see ([`ptr_at`],
//! [`ensure_len`]). A header that lies beyond the linear part of a non-linear skb is pulled in
//! once and the parse retried (see [`parse`]).

use aya_ebpf::programs::TcContext;
use core::mem::size_of;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use shaper_common::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PROTO_TCP, PROTO_UDP, reason};

use crate::fragments::{self, Datagram};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// How much of a non-linear skb is pulled into the linear area when headers straddle it: the
/// longest header stack the parse accepts, so that an L4 header is found wherever the chain
/// puts it and no sender can hide a port behind long headers. Ethernet (14), two VLAN tags (8),
/// IPv6 (40), MAX_IPV6_EXT_HEADERS extension headers of at most 2,048 bytes each (an 8-bit
/// length in 8-octet units, plus the first 8; AH's is at most 1,028) and TCP with options (60).
/// Only a packet whose headers end beyond its linear data pays for the pull, and it pulls no
/// more than the packet holds; IPv4's headers end within 22 + 60 + 60 bytes.
const PULL_LEN: u32 = 14 + 8 + 40 + MAX_IPV6_EXT_HEADERS * 2048 + 60;

/// A TCP or UDP packet's protocol and ports.
pub struct Flow {
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// Bytes from the start of the frame to the end of the L4 header: what each GSO segment
    /// repeats on the wire.
    pub header_len: u32,
    /// TCP flags (byte 13 of the header); 0 for UDP.
    pub tcp_flags: u8,
    /// Where the IP header starts, for the handshake tracker's addresses.
    pub ip_offset: u32,
    pub ipv6: bool,
}

/// Parses the packet, pulling non-linear headers in once if the first attempt ran out of linear
/// data, and looks a fragment's datagram up (or remembers it). `Err` is a [`reason`] code.
///
/// The fragment map is reached from here, once, rather than from each of the two inlined
/// parses: on Debian 12's 6.1 the verifier then walks the fragment paths once for both.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Flow, u32> {
    match parse_headers(ctx)? {
        Parsed::Whole(flow) => Ok(flow),
        Parsed::First(flow, datagram) => {
            fragments::remember(ctx, flow.ip_offset as usize, datagram, &flow);
            Ok(flow)
        }
        Parsed::Later(datagram, ip_offset) => {
            fragments::recall(ctx, ip_offset as usize, datagram).ok_or(reason::FRAGMENT)
        }
    }
}

/// What the headers alone say.
enum Parsed {
    /// Not fragmented, an IPv6 atomic fragment (offset 0 and no more to come, which the kernel
    /// processes as a whole datagram: `ipv6_frag_rcv()`, net/ipv6/reassembly.c), or an IPv6
    /// first fragment that is not remembered (see [`ipv6`]).
    Whole(Flow),
    /// Offset 0 with more to come: it carries the L4 header, whose ports are remembered.
    First(Flow, Datagram),
    /// A later fragment, and where its IP header starts: payload where the ports would be.
    Later(Datagram, u32),
}

#[inline(always)]
fn parse_headers(ctx: &TcContext) -> Result<Parsed, u32> {
    match parse_linear(ctx) {
        Err(reason::TRUNCATED) if ctx.len() as usize > ctx.data_end() - ctx.data() => {
            // bpf_skb_pull_data() makes the first `len` bytes linear (include/uapi/linux/bpf.h);
            // it invalidates packet pointers, and parse_linear re-reads data/data_end.
            let want = if ctx.len() < PULL_LEN {
                ctx.len()
            } else {
                PULL_LEN
            };
            if ctx.pull_data(want).is_err() {
                return Err(reason::TRUNCATED);
            }
            crate::rare_log::pulled(ctx, want);
            parse_linear(ctx)
        }
        other => other,
    }
}

/// Returns a pointer to a `T` at `offset` in the packet, or `TRUNCATED` if the linear data ends
/// before it. The pointer is valid for reads of `size_of::<T>()` bytes until a helper that moves
/// packet data (`pull_data`) is called; it may be unaligned. Must stay inlined: the verifier
/// only accepts packet pointers whose bound check it sees in the same function ("pointer
/// arithmetic on pkt_end prohibited" otherwise).
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(reason::TRUNCATED);
    }
    Ok((start + offset) as *const T)
}

/// `TRUNCATED` unless the linear data holds the packet's first `end` bytes: where a header's
/// length field says it ends. Inlined like [`ptr_at`], for the verifier.
#[inline(always)]
fn ensure_len(ctx: &TcContext, end: usize) -> Result<(), u32> {
    if ctx.data() + end > ctx.data_end() {
        return Err(reason::TRUNCATED);
    }
    Ok(())
}

#[inline(always)]
fn parse_linear(ctx: &TcContext) -> Result<Parsed, u32> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies in the linear data (and the verifier checks
    // the access again). `ether_type` is a u16, and nothing promises that skb->data is 2-byte
    // aligned, so it is read unaligned; `&raw const` makes no reference.
    let mut ether_type = u16::from_be(unsafe { (&raw const (*eth).ether_type).read_unaligned() });
    let mut offset = EthHdr::LEN;
    // In-packet tags (802.1Q, and 802.1ad outer tags for QinQ). A tag that the NIC or veth
    // offloaded lives in skb metadata (`vlan_present`/`vlan_tci`) and is not in the data.
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan = ptr_at::<VlanHdr>(ctx, offset)?;
        // SAFETY: as for the Ethernet header: in bounds by ptr_at, read unaligned.
        ether_type = u16::from_be(unsafe { (&raw const (*vlan).ether_type).read_unaligned() });
        offset += VlanHdr::LEN;
    }
    let over_ipv6 = ether_type == ETH_P_IPV6;
    let (l4_proto, l4_offset, fragment) = match ether_type {
        ETH_P_IP => ipv4(ctx, offset)?,
        ETH_P_IPV6 => ipv6(ctx, offset)?,
        _ => return Err(reason::NON_IP),
    };
    if let Fragment::Later(datagram) = fragment {
        return Ok(Parsed::Later(datagram, offset as u32));
    }
    let mut flow = l4(ctx, l4_proto, l4_offset, over_ipv6)?;
    flow.ip_offset = offset as u32;
    flow.ipv6 = over_ipv6;
    Ok(match fragment {
        Fragment::First(datagram) => Parsed::First(flow, datagram),
        _ => Parsed::Whole(flow),
    })
}

/// Where a packet stands in its datagram's fragmentation, as its IP headers say.
enum Fragment {
    /// See [`Parsed::Whole`].
    None,
    First(Datagram),
    Later(Datagram),
}

/// The source (`source` true) or destination address of a packet [`parse`] accepted, IPv4
/// mapped into IPv6 (`::ffff:a.b.c.d`). The Ethernet and VLAN headers are walked again rather
/// than the IP header's offset kept from the parse: only watched and traced packets need it,
/// and carrying it through the common path cost every packet (see `talkers`). `None` if the
/// linear data no longer holds it, which cannot happen after a successful parse.
#[inline(always)]
pub fn address(ctx: &TcContext, source: bool) -> Option<[u8; 16]> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok()?;
    // SAFETY: as in `parse_linear`: in bounds by ptr_at, read unaligned.
    let mut ether_type = u16::from_be(unsafe { (&raw const (*eth).ether_type).read_unaligned() });
    let mut l3 = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan = ptr_at::<VlanHdr>(ctx, l3).ok()?;
        // SAFETY: as for the Ethernet header.
        ether_type = u16::from_be(unsafe { (&raw const (*vlan).ether_type).read_unaligned() });
        l3 += VlanHdr::LEN;
    }
    if ether_type == ETH_P_IPV6 {
        // Source at byte 8, destination at byte 24 of the fixed header (RFC 8200 section 3).
        let at = if source { l3 + 8 } else { l3 + 24 };
        let addr = ptr_at::<[u8; 16]>(ctx, at).ok()?;
        // SAFETY: ptr_at checked all 16 bytes lie in the linear data; a byte array.
        Some(unsafe { addr.read_unaligned() })
    } else {
        // Source at byte 12, destination at byte 16 (RFC 791 section 3.1).
        let at = if source { l3 + 12 } else { l3 + 16 };
        let addr = ptr_at::<[u8; 4]>(ctx, at).ok()?;
        // SAFETY: ptr_at checked all 4 bytes lie in the linear data; a byte array.
        Some(v4_mapped(unsafe { addr.read_unaligned() }))
    }
}

/// An IPv4 address as IPv6 sees it, `::ffff:a.b.c.d` (RFC 4291 section 2.5.5.2): how talkers,
/// the trace and the handshake tracker key IPv4 peers.
#[inline(always)]
pub fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Returns the L4 protocol, where its header starts and the packet's place among fragments.
#[inline(always)]
fn ipv4(ctx: &TcContext, offset: usize) -> Result<(u8, usize, Fragment), u32> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, offset)?;
    // SAFETY: ptr_at checked that the header lies in the linear data; its fields are bytes and
    // byte arrays (alignment 1), so any address will do.
    let vihl = unsafe { (*ip).vihl };
    if vihl >> 4 != 4 {
        return Err(reason::MALFORMED);
    }
    // IHL counts 32-bit words; below 5 the header would be shorter than its fixed part (RFC 791).
    let ihl = (vihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(reason::MALFORMED);
    }
    // The options too: the kernel drops a packet cut inside them before reassembly
    // (`ip_rcv_core()`, net/ipv4/ip_input.c: `pskb_may_pull(skb, iph->ihl*4)`), so this comes
    // before the fragment check.
    let l4_offset = offset + ihl * 4;
    ensure_len(ctx, l4_offset)?;
    // A fragment offset other than 0 means this fragment starts past the L4 header: whatever is
    // where ports would be is payload. The first fragment (offset 0, MF set) has the header.
    // SAFETY: in bounds by ptr_at above; byte arrays and a byte.
    let (frags, id, proto) = unsafe { (u16::from_be_bytes((*ip).frags), (*ip).id, (*ip).proto) };
    let fragment = if frags & 0x3fff == 0 {
        Fragment::None
    } else if frags & 0x1fff != 0 {
        Fragment::Later(Datagram::ipv4(u16::from_be_bytes(id), proto))
    } else {
        Fragment::First(Datagram::ipv4(u16::from_be_bytes(id), proto))
    };
    Ok((proto, l4_offset, fragment))
}

/// Walks the IPv6 extension-header chain (RFC 8200 section 4) with a bounded loop and returns
/// the upper-layer protocol, where its header starts and the packet's place among fragments
/// (a later fragment's Fragment header ends the walk: what follows is payload).
#[inline(always)]
fn ipv6(ctx: &TcContext, offset: usize) -> Result<(u8, usize, Fragment), u32> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, offset)?;
    // SAFETY: ptr_at checked that the header lies in the linear data; its fields are bytes and
    // byte arrays (alignment 1), so any address will do.
    if unsafe { (*ip).vcf[0] } >> 4 != 6 {
        return Err(reason::MALFORMED);
    }
    // SAFETY: in bounds by ptr_at above; a byte.
    let mut next = unsafe { (*ip).next_hdr };
    let mut offset = offset + Ipv6Hdr::LEN;
    for walked in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-Hop only right after the IPv6 header (RFC 8200 section 4.1). Elsewhere the
            // kernel finds no handler for next header 0 and drops the packet
            // (`ip6_protocol_deliver_rcu()`, net/ipv6/ip6_input.c: ICMPv6 parameter problem).
            IPPROTO_HOPOPTS if walked > 0 => return Err(reason::MALFORMED),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // Next Header, then Hdr Ext Len in 8-octet units not counting the first 8.
                let ext = ptr_at::<[u8; 2]>(ctx, offset)?;
                // SAFETY: ptr_at checked both bytes lie in the linear data.
                let (nh, len) = unsafe { ((*ext)[0], (*ext)[1]) };
                next = nh;
                offset += (len as usize + 1) * 8;
                // The whole header, as the kernel pulls it before it looks at the next
                // (`ipv6_parse_hopopts()`, `ipv6_rthdr_rcv()`, `ipv6_destopt_rcv()`,
                // net/ipv6/exthdrs.c: `pskb_may_pull(skb, ... + ((hdrlen + 1) << 3))`).
                ensure_len(ctx, offset)?;
            }
            IPPROTO_AH => {
                // AH's Payload Len is in 4-octet units minus 2 (RFC 4302 section 2.2). Its 12
                // fixed bytes (next header, length, reserved, SPI, sequence number) come
                // first, and a Payload Len of 0 (8 bytes) is shorter than them: the kernel pulls
                // those 12 and drops a length that fits no ICV (`ah6_input()`, net/ipv6/ah6.c).
                let ext = ptr_at::<[u8; 12]>(ctx, offset)?;
                // SAFETY: ptr_at checked all 12 bytes lie in the linear data.
                let (nh, len) = unsafe { ((*ext)[0], (*ext)[1]) };
                if len == 0 {
                    return Err(reason::MALFORMED);
                }
                next = nh;
                offset += (len as usize + 2) * 4;
                ensure_len(ctx, offset)?;
            }
            IPPROTO_FRAGMENT => {
                let frag = ptr_at::<[u8; 8]>(ctx, offset)?;
                // SAFETY: ptr_at checked all 8 bytes lie in the linear data.
                let (nh, off_hi, off_lo) = unsafe { ((*frag)[0], (*frag)[2], (*frag)[3]) };
                // SAFETY: as above; bytes 4..8 are the Identification.
                let id =
                    u32::from_be_bytes(unsafe { [(*frag)[4], (*frag)[5], (*frag)[6], (*frag)[7]] });
                // The top 13 bits of bytes 2..4 are the fragment offset, the lowest bit M
                // (more fragments) (RFC 8200 section 4.5).
                let field = u16::from_be_bytes([off_hi, off_lo]);
                let datagram = Datagram::ipv6(id);
                if field & 0xfff8 != 0 {
                    return Ok((nh, offset + 8, Fragment::Later(datagram)));
                }
                // Offset 0 with M set: a first fragment. It is remembered when its Fragment
                // header comes first and its L4 header right after it, as a sender puts it when
                // it fragments a datagram without Hop-by-Hop or Routing headers (the Fragment
                // header ends the unfragmentable part, RFC 8200 section 4.5). Anywhere else it
                // is walked on and counted, but not remembered, and its later fragments count as
                // `fragment`. Remembering it from further in the chain multiplied the states the
                // verifier walks the chain in, because chains with and without a first fragment
                // no longer prune each other: on 6.18, 126,000 instructions became 380,000 to
                // past the limit of 1,000,000, against 140,000 with this restriction (the
                // figures per kernel: docs/src/contributing/vm.md, *Verifier budget*).
                if field & 1 != 0 && walked == 0 && (nh == IPPROTO_TCP || nh == IPPROTO_UDP) {
                    return Ok((nh, offset + 8, Fragment::First(datagram)));
                }
                next = nh;
                offset += 8;
            }
            _ => return Ok((next, offset, Fragment::None)),
        }
    }
    // MAX_IPV6_EXT_HEADERS walked: only another extension header is one too many.
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            crate::rare_log::ipv6_chain_over_limit(ctx, next);
            Err(reason::IPV6_EXT_LIMIT)
        }
        _ => Ok((next, offset, Fragment::None)),
    }
}

/// A port from its two header bytes (network order), with a bound every supported verifier sees.
///
/// The byte swap compiles to BPF_END, which the verifiers of Debian 12's 6.1 and 13's 6.12 do
/// not track: `check_alu_op()` (kernel/bpf/verifier.c) marks its result an unknown 64-bit
/// scalar, and every map index made from the port is then refused ("math between map_value
/// pointer and register with unbounded min value is not allowed"). Masking the swapped value
/// gives it back its 16-bit bound; `black_box` hides from LLVM that the swap already zero-extends,
/// so the mask is not optimised away. Newer verifiers track the swap and the mask costs one
/// instruction (and the spill and fill of `black_box`).
#[inline(always)]
fn port(bytes: [u8; 2]) -> u16 {
    let swapped = u64::from(u16::from_be_bytes(bytes));
    (core::hint::black_box(swapped) & 0xffff) as u16
}

#[inline(always)]
fn l4(ctx: &TcContext, proto: u8, offset: usize, over_ipv6: bool) -> Result<Flow, u32> {
    match proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(ctx, offset)?;
            // SAFETY: ptr_at checked the fixed header lies in the linear data; byte arrays.
            let (source, dest) = unsafe { ((*tcp).source, (*tcp).dest) };
            // Data offset: the high nibble of byte 12, in 32-bit words (RFC 9293 section 3.1).
            // SAFETY: byte 12 of the 20 bytes ptr_at checked.
            let data_offset = unsafe { *(tcp as *const u8).add(12) } >> 4;
            if data_offset < 5 {
                return Err(reason::MALFORMED);
            }
            // The options too: the kernel discards a segment cut inside them (`tcp_v4_rcv()`,
            // `tcp_v6_rcv()`: `pskb_may_pull(skb, th->doff * 4)`), and `header_len` is what
            // every GSO segment repeats on the wire.
            let header_len = offset + data_offset as usize * 4;
            ensure_len(ctx, header_len)?;
            // SAFETY: byte 13 of the 20 bytes ptr_at checked.
            let tcp_flags = unsafe { *(tcp as *const u8).add(13) };
            Ok(Flow {
                proto: PROTO_TCP,
                src_port: port(source),
                dst_port: port(dest),
                header_len: header_len as u32,
                tcp_flags,
                ip_offset: 0,
                ipv6: false,
            })
        }
        IPPROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(ctx, offset)?;
            // SAFETY: ptr_at checked the header lies in the linear data; byte arrays.
            let (src, dst, len) = unsafe { ((*udp).src, (*udp).dst, (*udp).len) };
            // A length below the 8-byte header is `short_packet` to the kernel
            // (`__udp4_lib_rcv()`, net/ipv4/udp.c), except 0 over IPv6, which means a jumbo
            // payload, the rest of the packet (`__udp6_lib_rcv()`, net/ipv6/udp.c; RFC 2675
            // section 4). A length beyond the bytes present is not checked: a first fragment's
            // UDP length is the whole datagram's.
            let len = u16::from_be_bytes(len);
            if len < UdpHdr::LEN as u16 && !(over_ipv6 && len == 0) {
                return Err(reason::MALFORMED);
            }
            Ok(Flow {
                proto: PROTO_UDP,
                src_port: port(src),
                dst_port: port(dst),
                header_len: (offset + UdpHdr::LEN) as u32,
                tcp_flags: 0,
                ip_offset: 0,
                ipv6: false,
            })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // The 8-byte header (type, code, checksum, 4 bytes of the message), which the
            // kernel pulls first (`icmp_rcv()`, `icmpv6_rcv()`).
            ptr_at::<[u8; 8]>(ctx, offset)?;
            Err(reason::ICMP)
        }
        _ => Err(reason::OTHER_L4),
    }
}
