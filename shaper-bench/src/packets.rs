//! The frames of the per-packet scenarios, byte by byte (checksums are not checked at tc).

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_HOPOPTS: u8 = 0;

/// The remote (source) port of every frame; the local port is the destination (ingress).
const SRC_PORT: u16 = 40000;

fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0xc6, 0x12, 0, 0x01, 0x02, 0, 0xc6, 0x12, 0, 0x02];
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A 64-byte IPv4 UDP frame (14 Ethernet + 20 IPv4 + 8 UDP + 22 payload) to `port`.
pub fn ipv4_udp_64(port: u16) -> Vec<u8> {
    let payload = [0x5a; 22];
    let udp_len = (8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0, 0, 64, IPPROTO_UDP, 0, 0]);
    ip.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
    ip.extend_from_slice(&SRC_PORT.to_be_bytes());
    ip.extend_from_slice(&port.to_be_bytes());
    ip.extend_from_slice(&udp_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&payload);
    ethernet(ETH_P_IP, &ip)
}

/// An IPv6 TCP segment (ACK, no payload) to `port` behind a Hop-by-Hop and a Destination
/// Options header, 8 bytes each: 14 + 40 + 8 + 8 + 20 = 90 bytes.
pub fn ipv6_tcp_two_ext(port: u16) -> Vec<u8> {
    // Next header, length 0 (8 bytes), then one PadN option filling the remaining 6 bytes.
    let ext = |next: u8| [next, 0, 1, 4, 0, 0, 0, 0];
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&SRC_PORT.to_be_bytes());
    tcp.extend_from_slice(&port.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 4, 5 << 4, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    let mut payload = Vec::new();
    payload.extend_from_slice(&ext(IPPROTO_DSTOPTS));
    payload.extend_from_slice(&ext(IPPROTO_TCP));
    payload.extend_from_slice(&tcp);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[IPPROTO_HOPOPTS, 64]);
    ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip.extend_from_slice(&payload);
    ethernet(ETH_P_IPV6, &ip)
}

/// An IPv4 TCP SYN (no options) to `port`: 14 + 20 + 20 = 54 bytes. Repeated, the first run
/// records the handshake and every later one finds it: the cost of a SYN to a port that
/// already has one in flight (a retransmission), which is the path's lookup and counts.
pub fn ipv4_tcp_syn(port: u16) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0, 0, 64, IPPROTO_TCP, 0, 0];
    ip.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
    ip.extend_from_slice(&SRC_PORT.to_be_bytes());
    ip.extend_from_slice(&port.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 5 << 4, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    ethernet(ETH_P_IP, &ip)
}

/// The first fragment of an IPv4 UDP datagram to `port`, identification `port`: 14 + 20 + 8 +
/// 22 = 64 bytes. Sent once, it makes the classifier remember the datagram's ports.
pub fn ipv4_udp_first_fragment(port: u16) -> Vec<u8> {
    let mut frame = ipv4_udp_64(port);
    frame[18..20].copy_from_slice(&port.to_be_bytes());
    frame[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
    frame
}

/// A later fragment (the last, at offset 24 bytes) of the datagram of
/// [`ipv4_udp_first_fragment`]: 14 + 20 + 30 = 64 bytes, no UDP header. Its ports are the
/// first fragment's, found in the classifier's fragment map; without a first fragment it is an
/// orphan (`ipv4_orphan_fragment`).
pub fn ipv4_udp_later_fragment(port: u16) -> Vec<u8> {
    let mut frame = ipv4_udp_64(port);
    frame[18..20].copy_from_slice(&port.to_be_bytes());
    frame[20..22].copy_from_slice(&3u16.to_be_bytes()); // offset 3 x 8 bytes, no MF
    frame[34..].fill(0x5a);
    frame
}

/// A later fragment whose first never came (an identification no first fragment has).
pub fn ipv4_orphan_fragment() -> Vec<u8> {
    let mut frame = ipv4_udp_later_fragment(0);
    frame[18..20].copy_from_slice(&0xfffeu16.to_be_bytes());
    frame
}

/// A non-IP frame: an ARP request, padded to the 60-byte Ethernet minimum.
pub fn arp() -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&[0x02, 0, 0xc6, 0x12, 0, 0x02, 198, 18, 0, 2]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    arp.resize(46, 0);
    ethernet(ETH_P_ARP, &arp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_sizes_and_ports_the_report_names() {
        let udp = ipv4_udp_64(7001);
        assert_eq!(udp.len(), 64);
        assert_eq!(&udp[36..38], &7001u16.to_be_bytes(), "UDP destination port");
        let tcp = ipv6_tcp_two_ext(7002);
        assert_eq!(tcp.len(), 90);
        assert_eq!(tcp[20], IPPROTO_HOPOPTS);
        assert_eq!(
            tcp[54], IPPROTO_DSTOPTS,
            "Hop-by-Hop points at Destination Options"
        );
        assert_eq!(tcp[62], IPPROTO_TCP, "Destination Options points at TCP");
        assert_eq!(&tcp[72..74], &7002u16.to_be_bytes(), "TCP destination port");
        assert_eq!(arp().len(), 60);
        let (first, later) = (ipv4_udp_first_fragment(7001), ipv4_udp_later_fragment(7001));
        assert_eq!((first.len(), later.len()), (64, 64));
        assert_eq!(
            &first[18..20],
            &later[18..20],
            "one datagram's identification"
        );
        assert_eq!(&first[20..22], &[0x20, 0], "MF, offset 0");
        assert_eq!(&later[20..22], &[0, 3], "offset 24 bytes");
    }
}
