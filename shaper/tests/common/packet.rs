//! Hand-made frames, byte by byte, so a test states exactly what the classifier sees.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// An Ethernet frame: fixed MACs, then `vlans` tags (outer first: (TPID, VLAN id)), then the
/// payload's EtherType and bytes.
pub fn ethernet(vlans: &[(u16, u16)], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for &(tpid, vid) in vlans {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 header of `ihl` words (options are NOPs) with the given fragment field (flags and
/// offset as on the wire), followed by `payload`.
pub fn ipv4_with(ihl: u8, frag_field: u16, proto: u8, payload: &[u8]) -> Vec<u8> {
    let header_len = usize::from(ihl.max(5)) * 4;
    let total = (header_len + payload.len()) as u16;
    let mut ip = vec![0x40 | ihl, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34]);
    ip.extend_from_slice(&frag_field.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
    ip.resize(header_len, 1); // IPOPT_NOP
    ip.extend_from_slice(payload);
    ip
}

/// [`ipv4_with`] (IHL 5) with its Identification set: a fragment of datagram `id`.
pub fn ipv4_fragment(id: u16, frag_field: u16, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = ipv4_with(5, frag_field, proto, payload);
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip
}

pub fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_with(5, 0, proto, payload)
}

/// An IPv6 header whose Next Header is `next`, followed by `payload` (extension headers included).
pub fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next, 64]);
    ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip.extend_from_slice(payload);
    ip
}

/// A Hop-by-Hop, Routing or Destination Options header of `8 * (len_units + 1)` bytes.
pub fn ipv6_ext(next: u8, len_units: u8) -> Vec<u8> {
    let mut ext = vec![next, len_units];
    ext.resize(8 * (usize::from(len_units) + 1), 0);
    if ext.len() >= 4 {
        // A PadN option filling the rest, as a real sender would.
        ext[2] = 1;
        ext[3] = (ext.len() - 4) as u8;
    }
    ext
}

/// An IPv6 Fragment header of datagram `id`: `offset_units` in 8-octet units, and the M flag.
pub fn ipv6_fragment_of(id: u32, next: u8, offset_units: u16, more: bool) -> Vec<u8> {
    let field = (offset_units << 3) | u16::from(more);
    let mut ext = vec![next, 0];
    ext.extend_from_slice(&field.to_be_bytes());
    ext.extend_from_slice(&id.to_be_bytes());
    ext
}

/// A TCP header of `data_offset` words (options are NOPs) followed by `payload`.
pub fn tcp_with(src: u16, dst: u16, data_offset: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&src.to_be_bytes());
    tcp.extend_from_slice(&dst.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    tcp.extend_from_slice(&[data_offset << 4, 0x10]); // ACK
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    tcp.resize(usize::from(data_offset.max(5)) * 4, 1);
    tcp.extend_from_slice(payload);
    tcp
}

pub fn tcp(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    tcp_with(src, dst, 5, payload)
}

pub fn udp(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.to_be_bytes());
    udp.extend_from_slice(&dst.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    udp
}

/// An ICMP echo request (v4 or v6, same layout for this purpose).
pub fn icmp_echo(kind: u8) -> Vec<u8> {
    vec![kind, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g']
}

/// `__sk_buff` as BPF_PROG_TEST_RUN takes it in `ctx_in` (include/uapi/linux/bpf.h), with only
/// the GSO fields set: the kernel rejects a context with fields it does not let tests set.
pub fn skb_context(gso_segs: u32, gso_size: u32) -> Vec<u8> {
    const SIZE: usize = 192;
    const GSO_SEGS: usize = 164;
    const GSO_SIZE: usize = 176;
    let mut ctx = vec![0u8; SIZE];
    ctx[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    ctx
}

/// A frame written as hex, as the fuzzer (`tests/fuzz`) prints it; whitespace is ignored, so a
/// long frame can be split over lines.
pub fn from_hex(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "an odd number of hex digits"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII");
            u8::from_str_radix(pair, 16).unwrap_or_else(|e| panic!("{pair:?}: {e}"))
        })
        .collect()
}

/// An IPv6 frame whose UDP datagram (port 1 to 2) sits behind `headers` Destination Options
/// headers.
pub fn udp_behind_dstopts(headers: usize) -> Vec<u8> {
    let mut chain = Vec::new();
    for _ in 0..headers {
        chain.extend(ipv6_ext(IPPROTO_DSTOPTS, 0));
    }
    // The last header's Next Header byte names UDP.
    let last = chain.len() - 8;
    chain[last] = IPPROTO_UDP;
    chain.extend(udp(1, 2, b"x"));
    ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_DSTOPTS, &chain))
}
