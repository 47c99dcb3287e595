//! What the classifier must make of a frame, computed in userspace with etherparse.
//!
//! Each header is decoded by etherparse's own header slicers (`*HeaderSlice::from_slice`), which
//! check the header's length field against the bytes present: a header cut short is a `LenError`
//! (→ `truncated`), a header whose length field is below its fixed part is a content error
//! (→ `malformed`). The walk from one header to the next is written here, because in a few
//! places etherparse's packet-level semantics are not the kernel's, and shaper follows the
//! kernel. Each such place says so (**override**) with the kernel code it follows.
//!
//! The rule that holds everywhere: a packet counts under a port only if every header up to and
//! including its whole L4 header, as the headers' own length fields declare them, is present.
//! Otherwise it is `truncated` (the bytes end first) or `malformed` (a length field is below the
//! header's fixed size, or a header is where it may not be). The same goes for every reason
//! decided further in: an IPv4 fragment or an ICMP message counts as such only when its headers
//! up to there are whole.
//!
//! Not checked, by design (the classifier counts what is on the wire, cheaply):
//! - **The IP length fields** (IPv4 total length, IPv6 payload length) and UDP's length beyond
//!   its minimum. etherparse's `SlicedPacket` cuts the payload to them; the classifier reads
//!   the frame as far as it goes. The kernel drops an IP packet longer than its frame
//!   (`ip_rcv_core()`, `ipv6_rcv()`), but BIG TCP aggregates carry IPv4 total length 0
//!   (`iph_set_totlen()`, net/ipv4) and IPv6 payload length 0 once the jumbo option is stripped
//!   (`ipv6_gro_complete()`), Ethernet pads short frames, and a first fragment's UDP length is
//!   the whole datagram's. The per-segment accounting of GSO needs only where the headers end.
//! - **Checksums**: on egress, with checksum offload, the L4 checksum is not filled in yet
//!   (CHECKSUM_PARTIAL); the kernel verifies them after tc ingress.

use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice, err,
};
use shaper::datapath::classifier::Proto;
use shaper_common::{FragmentKey, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, reason};

/// The classification of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Counted under a port. `header_len` is where the L4 header ends, counted from the start of
    /// the frame: what each GSO segment repeats.
    Port {
        proto: Proto,
        src: u16,
        dst: u16,
        header_len: usize,
    },
    /// Counted under a [`reason`].
    Unclassified(u32),
}

use Class::Unclassified;

/// A fragment's datagram, keyed as the classifier's `FRAGMENTS` map keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A first fragment the classifier remembers the ports of, if it counts under a port: an
    /// IPv4 one, or an IPv6 one whose Fragment header is the first extension header with TCP
    /// or UDP right behind it (`shaper-ebpf/src/parse.rs` says why only those).
    First(FragmentKey),
    /// A later fragment: it takes a remembered first fragment's ports.
    Later(FragmentKey),
}

fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&v4);
    mapped
}

/// A header cut short, or a length field below the header's fixed size, in etherparse's terms.
fn len_error(_: err::LenError) -> Class {
    Unclassified(reason::TRUNCATED)
}

/// The frame's class as the frame alone decides it (a later fragment is `fragment`: what the
/// classifier remembers of first fragments is `Memory`'s, in `fuzz/mod.rs`), and its place
/// among fragments.
pub fn classify(frame: &[u8]) -> (Class, Option<Fragment>) {
    // BPF_PROG_TEST_RUN refuses frames shorter than this (see `refused`); a real hook never sees
    // one on an Ethernet device.
    let eth = match Ethernet2HeaderSlice::from_slice(frame) {
        Ok(eth) => eth,
        Err(e) => return (len_error(e), None),
    };
    let mut ether_type = eth.ether_type();
    let mut offset = eth.slice().len();
    // **Override**: etherparse also walks 0x9100 as a VLAN TPID, and up to three tags. The
    // kernel's `eth_type_vlan()` (include/linux/if_vlan.h) knows 802.1Q and 802.1ad only, and
    // the classifier walks MAX_VLAN_TAGS of them: behind a third tag, or a 0x9100 one, the
    // EtherType is not IP and the frame counts as `non_ip`.
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != EtherType::VLAN_TAGGED_FRAME && ether_type != EtherType::PROVIDER_BRIDGING
        {
            break;
        }
        let vlan = match SingleVlanHeaderSlice::from_slice(&frame[offset..]) {
            Ok(vlan) => vlan,
            Err(e) => return (len_error(e), None),
        };
        ether_type = vlan.ether_type();
        offset += vlan.slice().len();
    }
    match ether_type {
        EtherType::IPV4 => ipv4(frame, offset),
        EtherType::IPV6 => ipv6(frame, offset),
        _ => (Unclassified(reason::NON_IP), None),
    }
}

fn ipv4(frame: &[u8], offset: usize) -> (Class, Option<Fragment>) {
    // Ipv4HeaderSlice checks, in the kernel's order (`ip_rcv_core()`, net/ipv4/ip_input.c): 20
    // bytes present, version 4 and IHL >= 5 (`inhdr_error`), then IHL * 4 bytes present
    // (`pskb_may_pull(skb, iph->ihl*4)`). A cut inside the options is `truncated` even for a
    // later fragment, which does not need them: the kernel drops it before reassembly.
    let ip = match Ipv4HeaderSlice::from_slice(&frame[offset..]) {
        Ok(ip) => ip,
        Err(err::ipv4::HeaderSliceError::Len(e)) => return (len_error(e), None),
        Err(err::ipv4::HeaderSliceError::Content(_)) => {
            return (Unclassified(reason::MALFORMED), None);
        }
    };
    // The kernel's reassembly tells datagrams apart by addresses, identification and protocol
    // (`ip4_frag_match()`, net/ipv4/ip_fragment.c), and so does the classifier.
    let key = FragmentKey {
        src: v4_mapped(ip.source()),
        dst: v4_mapped(ip.destination()),
        id: u32::from(ip.identification()),
        ip_proto: ip.protocol().0,
        family: 4,
        _pad: [0; 2],
    };
    // **Override**: etherparse's `Ipv4Slice` stops at any fragment, first ones too (MF set,
    // offset 0). A first fragment carries the L4 header and counts under its port
    // (docs/src/guide/counting.md, *Fragments*); only an offset other than 0 means payload where the ports would be.
    if ip.fragments_offset().value() != 0 {
        return (Unclassified(reason::FRAGMENT), Some(Fragment::Later(key)));
    }
    let first = ip.more_fragments().then_some(Fragment::First(key));
    // **Override**: etherparse's `Ipv4Slice` walks an IPv4 AH header (proto 51) to what it
    // protects. In IPv4, AH is a protocol of its own (net/ipv4/ah4.c, reached through xfrm), not
    // a chain the classifier walks: `other_l4`, like ESP.
    (
        l4(frame, offset + ip.slice().len(), ip.protocol(), false),
        first,
    )
}

fn ipv6(frame: &[u8], offset: usize) -> (Class, Option<Fragment>) {
    let ip = match Ipv6HeaderSlice::from_slice(&frame[offset..]) {
        Ok(ip) => ip,
        Err(err::ipv6::HeaderSliceError::Len(e)) => return (len_error(e), None),
        Err(err::ipv6::HeaderSliceError::Content(_)) => {
            return (Unclassified(reason::MALFORMED), None);
        }
    };
    // Source, destination and the Fragment header's identification (`ip6frag_key`,
    // include/net/ipv6_frag.h).
    let key = |id| FragmentKey {
        src: ip.source(),
        dst: ip.destination(),
        id,
        ip_proto: 0,
        family: 6,
        _pad: [0; 2],
    };
    let mut first = None;
    let mut next = ip.next_header();
    let mut offset = offset + ip.slice().len();
    // **Override**: etherparse's `Ipv6ExtensionsSlice` knows more extension headers (Mobility,
    // HIP, Shim6, the experimental ones) and no limit. The classifier walks the kernel's
    // `ipv6_ext_hdr()` set (include/net/ipv6.h: Hop-by-Hop, Routing, Fragment, AH, Destination
    // Options; "no next header" ends the chain and is `other_l4`), at most
    // MAX_IPV6_EXT_HEADERS of them; an extension header after those is `ipv6_ext_limit`.
    for walked in 0..=MAX_IPV6_EXT_HEADERS {
        let extension = matches!(
            next,
            IpNumber::IPV6_HEADER_HOP_BY_HOP
                | IpNumber::IPV6_ROUTE_HEADER
                | IpNumber::IPV6_DESTINATION_OPTIONS
                | IpNumber::AUTHENTICATION_HEADER
                | IpNumber::IPV6_FRAGMENTATION_HEADER
        );
        if !extension {
            return (l4(frame, offset, next, true), first);
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            return (Unclassified(reason::IPV6_EXT_LIMIT), None);
        }
        let rest = &frame[offset..];
        let (nh, len) = match next {
            // Hop-by-Hop only right after the IPv6 header (RFC 8200 section 4.1): etherparse
            // refuses it elsewhere, and so does the kernel, which has no handler for next
            // header 0 in `ip6_protocol_deliver_rcu()` (net/ipv6/ip6_input.c: ICMPv6 parameter
            // problem, SKB_DROP_REASON_IP_NOPROTO). `malformed`.
            IpNumber::IPV6_HEADER_HOP_BY_HOP if walked > 0 => {
                return (Unclassified(reason::MALFORMED), None);
            }
            IpNumber::AUTHENTICATION_HEADER => match IpAuthHeaderSlice::from_slice(rest) {
                // AH's length is in 4-octet units plus 2 (RFC 4302 section 2.2); etherparse
                // wants the 12 fixed bytes first, then a Payload Len of at least 1, as
                // `ah6_input()` does (`pskb_may_pull(skb, sizeof(struct ip_auth_hdr))`, then a
                // length that fits an ICV, net/ipv6/ah6.c).
                Ok(ah) => (ah.next_header(), ah.slice().len()),
                Err(err::ip_auth::HeaderSliceError::Len(e)) => return (len_error(e), None),
                Err(err::ip_auth::HeaderSliceError::Content(_)) => {
                    return (Unclassified(reason::MALFORMED), None);
                }
            },
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                match Ipv6FragmentHeaderSlice::from_slice(rest) {
                    Ok(frag) if frag.fragment_offset().value() != 0 => {
                        let later = Fragment::Later(key(frag.identification()));
                        return (Unclassified(reason::FRAGMENT), Some(later));
                    }
                    // Offset 0: a first fragment, or an atomic one (M clear), which the kernel
                    // processes as unfragmented (`ipv6_frag_rcv()`, net/ipv6/reassembly.c).
                    Ok(frag) => {
                        if frag.more_fragments()
                            && walked == 0
                            && matches!(frag.next_header(), IpNumber::TCP | IpNumber::UDP)
                        {
                            first = Some(Fragment::First(key(frag.identification())));
                        }
                        (frag.next_header(), frag.slice().len())
                    }
                    Err(e) => return (len_error(e), None),
                }
            }
            // Hop-by-Hop (first), Routing, Destination Options: (Hdr Ext Len + 1) * 8 bytes.
            _ => match Ipv6RawExtHeaderSlice::from_slice(rest) {
                Ok(ext) => (ext.next_header(), ext.slice().len()),
                Err(e) => return (len_error(e), None),
            },
        };
        next = nh;
        offset += len;
    }
    unreachable!("the walk returns by MAX_IPV6_EXT_HEADERS + 1 headers")
}

fn l4(frame: &[u8], offset: usize, proto: IpNumber, ipv6: bool) -> Class {
    let rest = &frame[offset..];
    match proto {
        // TcpHeaderSlice: 20 bytes present, data offset >= 5, then data offset * 4 bytes
        // present. The kernel's order (`tcp_v4_rcv()`, `tcp_v6_rcv()`): `pskb_may_pull(skb,
        // sizeof(struct tcphdr))`, `th->doff < sizeof(struct tcphdr) / 4` is `bad_packet`,
        // then `pskb_may_pull(skb, th->doff * 4)`.
        IpNumber::TCP => match TcpHeaderSlice::from_slice(rest) {
            Ok(tcp) => Class::Port {
                proto: Proto::Tcp,
                src: tcp.source_port(),
                dst: tcp.destination_port(),
                header_len: offset + tcp.slice().len(),
            },
            Err(err::tcp::HeaderSliceError::Len(e)) => len_error(e),
            Err(err::tcp::HeaderSliceError::Content(_)) => Unclassified(reason::MALFORMED),
        },
        IpNumber::UDP => match UdpHeaderSlice::from_slice(rest) {
            Ok(udp) => {
                // **Override**: etherparse's `UdpSlice` takes length 0 over either IP version
                // (falling back to the slice) and refuses a length beyond the bytes present.
                // The kernel: `ulen < sizeof(*uh)` is `short_packet` over IPv4
                // (`__udp4_lib_rcv()`, net/ipv4/udp.c); over IPv6 0 first means "jumbo payload,
                // the rest of the packet" (`__udp6_lib_rcv()`, net/ipv6/udp.c, RFC 2675
                // section 4). A length beyond the bytes present is not the header's problem:
                // a first fragment's UDP length is the whole datagram's.
                let length = udp.length();
                if length < 8 && !(ipv6 && length == 0) {
                    return Unclassified(reason::MALFORMED);
                }
                Class::Port {
                    proto: Proto::Udp,
                    src: udp.source_port(),
                    dst: udp.destination_port(),
                    header_len: offset + udp.slice().len(),
                }
            }
            Err(e) => len_error(e),
        },
        // **Override**: `Icmpv4Slice` also wants a timestamp message's exact length; the kernel
        // pulls the 8-byte header only (`icmp_rcv()`: `pskb_pull(skb, sizeof(*icmph))`;
        // `icmpv6_rcv()`: `pskb_pull(skb, sizeof(*hdr))`). Both numbers count as `icmp` whichever
        // IP version carries them, as etherparse's `SlicedPacket` and the classifier do.
        IpNumber::ICMP | IpNumber::IPV6_ICMP => {
            if rest.len() < etherparse::Icmpv4Header::MIN_LEN {
                Unclassified(reason::TRUNCATED)
            } else {
                Unclassified(reason::ICMP)
            }
        }
        _ => Unclassified(reason::OTHER_L4),
    }
}

/// The most data BPF_PROG_TEST_RUN puts in an skb: a page less the headroom (`NET_SKB_PAD` 64,
/// `NET_IP_ALIGN` 0 on x86) and the aligned `struct skb_shared_info` (320), as
/// `bpf_prog_test_run_skb()` passes them to `bpf_test_init()` (net/bpf/test_run.c). Measured
/// on this kernel: 3,712 runs, 3,713 is EINVAL.
pub const MAX_TEST_RUN_DATA: usize = 4096 - 64 - 320;

/// Whether BPF_PROG_TEST_RUN refuses the frame (EINVAL) before the program runs: shorter than
/// an Ethernet header or longer than [`MAX_TEST_RUN_DATA`], or, for an IPv4 or IPv6 EtherType
/// right after the MACs, too short for the IP header (measured on 6.18; a real hook never sees
/// such a frame, since the stack refuses it earlier).
pub fn refused(frame: &[u8]) -> bool {
    const ETH_HLEN: usize = 14;
    if frame.len() < ETH_HLEN || frame.len() > MAX_TEST_RUN_DATA {
        return true;
    }
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    match EtherType(ether_type) {
        EtherType::IPV4 => frame.len() < ETH_HLEN + 20,
        EtherType::IPV6 => frame.len() < ETH_HLEN + 40,
        _ => false,
    }
}
