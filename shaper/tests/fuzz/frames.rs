//! Seeded random frames with structure: Ethernet with 0-3 VLAN tags; IPv4 with random IHL,
//! options, flags and fragment offsets; IPv6 with random extension-header chains (Hop-by-Hop
//! first or not, Routing, Destination Options, Fragment first or later, AH, chains longer than
//! the classifier walks); TCP with random data offsets and options, UDP with random length
//! fields, ICMP, ICMPv6, GRE, SCTP, ESP, anything; non-IP. Then a random cut at any byte, random
//! byte flips and a random GSO context.
//!
//! Now and then a frame is a later fragment of the frame before it, when that one is a first
//! fragment: the same addresses and identification, a fragment offset, payload behind.
//!
//! Frame `i` of seed `s` depends on nothing but `(s, i)` (and, for a later fragment, frame
//! `i - 1`, itself made from `(s, i - 1)`), so a report's seed and index rebuild it exactly,
//! whatever ran before.

use shaper::Direction;

/// SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014): a
/// few lines, good enough statistically for choosing header fields, and the same sequence on
/// every platform and forever, which a crate's generator does not promise across versions.
pub struct Rng(u64);

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// The generator of frame `index` of run `seed`.
    pub fn for_frame(seed: u64, index: u64) -> Self {
        Self(mix(seed ^ mix(index.wrapping_add(GOLDEN_GAMMA))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0; Lemire's multiply-shift, bias below 2^-32 for our n).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// An index into `weights`, chosen with probability proportional to its weight.
    pub fn weighted(&mut self, weights: &[usize]) -> usize {
        let mut roll = self.below(weights.iter().sum());
        for (i, &w) in weights.iter().enumerate() {
            if roll < w {
                return i;
            }
            roll -= w;
        }
        weights.len() - 1
    }
}

/// One frame and how it is handed to the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub frame: Vec<u8>,
    pub direction: Direction,
    /// `__sk_buff.gso_segs`, sent through `ctx_in`; `None` sends no context (a plain skb).
    pub gso_segs: Option<u32>,
    /// Made as a later fragment of the frame before it.
    pub follows_previous: bool,
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ TPID: etherparse walks it as a VLAN tag, the kernel and the classifier
/// do not.
pub const ETH_P_QINQ_9100: u16 = 0x9100;
const ETH_P_LLDP: u16 = 0x88cc;
const ETH_P_MPLS: u16 = 0x8847;

const HOPOPTS: u8 = 0;
const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const GRE: u8 = 47;
const ESP: u8 = 50;
const AH: u8 = 51;
const ICMPV6: u8 = 58;
const NO_NEXT: u8 = 59;
const DSTOPTS: u8 = 60;
const SCTP: u8 = 132;

/// Frames stay below what BPF_PROG_TEST_RUN takes (`reference::MAX_TEST_RUN_DATA`).
const MAX_FRAME: usize = 3000;

/// Frame `index` of run `seed`.
pub fn case(seed: u64, index: u64) -> Case {
    let mut rng = Rng::for_frame(seed, index);
    // One frame in five tries to follow the one before: about a tenth of frames are IP first
    // fragments, so about 2% of frames are their later fragments.
    if index > 0
        && rng.chance(20)
        && let Some(frame) = later_fragment(&mut rng, &case(seed, index - 1).frame)
    {
        return Case {
            frame,
            direction: if rng.chance(50) {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            gso_segs: None,
            follows_previous: true,
        };
    }
    let mut frame = Vec::with_capacity(256);
    // Where the headers end as built: cuts and flips aim at the headers more than the payload.
    let header_end = ethernet(&mut rng, &mut frame);
    mutate(&mut rng, &mut frame, header_end);
    // Long chains and payloads can pass the limit: cut there, like a capture's snap length.
    frame.truncate(MAX_FRAME);
    let direction = if rng.chance(50) {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let gso_segs = match rng.weighted(&[85, 3, 12]) {
        0 => None,
        1 => Some(rng.range(0, 1) as u32),
        _ => Some(rng.range(2, 64) as u32),
    };
    Case {
        frame,
        direction,
        gso_segs,
        follows_previous: false,
    }
}

/// A later fragment of `first`, if it is an IPv4 first fragment (offset 0, MF) or an IPv6 one
/// whose Fragment header comes first (offset 0, M): its headers up to the fragment field, a
/// random offset (and MF/M), then random payload. Not mutated: the point is that it matches.
fn later_fragment(rng: &mut Rng, first: &[u8]) -> Option<Vec<u8>> {
    let mut ip = 12;
    let mut ether_type = u16::from_be_bytes([*first.get(12)?, *first.get(13)?]);
    while ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ip += 4;
        ether_type = u16::from_be_bytes([*first.get(ip)?, *first.get(ip + 1)?]);
    }
    ip += 2;
    let offset = rng.range(1, 0x1fff) as u16;
    let more = rng.chance(50);
    let (mut frame, field_at, field) = match ether_type {
        ETH_P_IP => {
            let ihl = usize::from(*first.get(ip)? & 0x0f) * 4;
            let frags = u16::from_be_bytes([*first.get(ip + 6)?, *first.get(ip + 7)?]);
            if frags & 0x3fff != 0x2000 || first.len() < ip + ihl.max(20) {
                return None;
            }
            let field = (frags & 0xc000) | u16::from(more) << 13 | offset;
            (first[..ip + ihl.max(20)].to_vec(), ip + 6, field)
        }
        ETH_P_IPV6 => {
            let frag = ip + 40;
            if *first.get(ip + 6)? != FRAGMENT || first.len() < frag + 8 {
                return None;
            }
            let field = u16::from_be_bytes([first[frag + 2], first[frag + 3]]);
            if field & 0xfff9 != 1 {
                return None;
            }
            let field = offset << 3 | u16::from(more);
            (first[..frag + 8].to_vec(), frag + 2, field)
        }
        _ => return None,
    };
    frame[field_at..field_at + 2].copy_from_slice(&field.to_be_bytes());
    let payload = rng.range(0, 1200);
    frame.extend(rng.bytes(payload));
    Some(frame)
}

fn ethernet(rng: &mut Rng, frame: &mut Vec<u8>) -> usize {
    frame.extend(rng.bytes(12));
    let tags = rng.weighted(&[50, 25, 20, 5]);
    for _ in 0..tags {
        let tpid = match rng.weighted(&[60, 35, 5]) {
            0 => ETH_P_8021Q,
            1 => ETH_P_8021AD,
            _ => ETH_P_QINQ_9100,
        };
        frame.extend(tpid.to_be_bytes());
        frame.extend(rng.u16().to_be_bytes());
    }
    match rng.weighted(&[45, 45, 10]) {
        0 => {
            frame.extend(ETH_P_IP.to_be_bytes());
            ipv4(rng, frame)
        }
        1 => {
            frame.extend(ETH_P_IPV6.to_be_bytes());
            ipv6(rng, frame)
        }
        _ => {
            let ether_type = match rng.below(4) {
                0 => ETH_P_ARP,
                1 => ETH_P_LLDP,
                2 => ETH_P_MPLS,
                _ => rng.u16(),
            };
            frame.extend(ether_type.to_be_bytes());
            let end = frame.len();
            let n = rng.range(0, 60);
            frame.extend(rng.bytes(n));
            end
        }
    }
}

/// An upper-layer protocol number, weighted towards those with ports.
fn upper_layer(rng: &mut Rng) -> u8 {
    match rng.weighted(&[35, 35, 6, 6, 4, 4, 3, 3, 4]) {
        0 => TCP,
        1 => UDP,
        2 => ICMP,
        3 => ICMPV6,
        4 => GRE,
        5 => SCTP,
        6 => ESP,
        7 => NO_NEXT,
        _ => rng.byte(),
    }
}

fn ipv4(rng: &mut Rng, frame: &mut Vec<u8>) -> usize {
    let start = frame.len();
    let version = if rng.chance(4) {
        rng.below(16) as u8
    } else {
        4
    };
    let ihl = match rng.weighted(&[80, 15, 5]) {
        0 => 5,
        1 => rng.range(6, 15),
        _ => rng.range(0, 4),
    };
    let proto = upper_layer(rng);
    frame.push((version << 4) | ihl as u8);
    frame.push(rng.byte()); // DSCP/ECN
    frame.extend([0, 0]); // total length, set below
    frame.extend(rng.bytes(2)); // identification
    let fragment: u16 = match rng.weighted(&[60, 15, 15, 10]) {
        0 => 0,
        1 => 0x4000,                                             // DF
        2 => 0x2000,                                             // MF, offset 0: a first fragment
        _ => (rng.u16() & 0xe000) | rng.range(1, 0x1fff) as u16, // a later one
    };
    frame.extend(fragment.to_be_bytes());
    frame.push(rng.byte()); // TTL
    frame.push(proto);
    frame.extend(rng.bytes(2)); // checksum: nobody checks it here
    frame.extend(rng.bytes(8)); // addresses
    let options = ihl.max(5) * 4 - 20;
    for _ in 0..options {
        // NOP and EOL are the options' own padding; the rest is noise.
        let option = match rng.below(3) {
            0 => 1,
            1 => 0,
            _ => rng.byte(),
        };
        frame.push(option);
    }
    let end = l4(rng, frame, proto);
    let total = if rng.chance(85) {
        (frame.len() - start) as u16
    } else {
        rng.u16()
    };
    frame[start + 2..start + 4].copy_from_slice(&total.to_be_bytes());
    end
}

fn ipv6(rng: &mut Rng, frame: &mut Vec<u8>) -> usize {
    let start = frame.len();
    let version = if rng.chance(4) {
        rng.below(16) as u8
    } else {
        6
    };
    frame.push((version << 4) | (rng.byte() & 0x0f));
    frame.extend(rng.bytes(3)); // traffic class, flow label
    frame.extend([0, 0]); // payload length, set below
    let next_at = frame.len();
    frame.push(0);
    frame.push(rng.byte()); // hop limit
    frame.extend(rng.bytes(32)); // addresses

    // The chain, longer than the classifier's walk of MAX_IPV6_EXT_HEADERS now and then.
    let headers = match rng.weighted(&[40, 20, 14, 10, 8, 5, 3]) {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => rng.range(3, 4),
        4 => rng.range(5, 7),
        5 => rng.range(8, 9),
        _ => rng.range(10, 14),
    };
    let mut next_at = next_at;
    for i in 0..headers {
        let kind = match rng.weighted(&[if i == 0 { 30 } else { 3 }, 15, 25, 15, 12]) {
            0 => HOPOPTS,
            1 => ROUTING,
            2 => DSTOPTS,
            3 => FRAGMENT,
            _ => AH,
        };
        frame[next_at] = kind;
        next_at = frame.len();
        frame.push(0);
        match kind {
            FRAGMENT => {
                frame.push(rng.byte()); // reserved
                let offset = if rng.chance(60) {
                    0
                } else {
                    rng.range(1, 0x1fff) as u16
                };
                let field = (offset << 3) | (rng.u16() & 0x7);
                frame.extend(field.to_be_bytes());
                frame.extend(rng.bytes(4)); // identification
            }
            AH => {
                // Payload Len in 4-octet units minus 2 (RFC 4302 section 2.2): 1 is the shortest
                // real header (12 bytes, no ICV), 0 declares less than the fixed fields.
                let len = match rng.weighted(&[85, 10, 5]) {
                    0 => rng.range(1, 6),
                    1 => 0,
                    _ => rng.range(7, 40),
                };
                frame.push(len as u8);
                frame.extend(rng.bytes((len + 2) * 4 - 2));
            }
            _ => {
                let len = if frame.len() < MAX_FRAME / 2 && rng.chance(3) {
                    rng.range(0, 255)
                } else {
                    rng.range(0, 3)
                };
                frame.push(len as u8);
                let body = (len + 1) * 8 - 2;
                if rng.chance(50) && body >= 2 {
                    // PadN over the whole body, as a real sender fills it.
                    frame.extend([1, (body - 2) as u8]);
                    frame.extend(std::iter::repeat_n(0, body - 2));
                } else {
                    frame.extend(rng.bytes(body));
                }
            }
        }
    }
    let proto = upper_layer(rng);
    frame[next_at] = proto;
    let end = l4(rng, frame, proto);
    let payload = if rng.chance(85) {
        (frame.len() - start - 40) as u16
    } else {
        rng.u16()
    };
    frame[start + 4..start + 6].copy_from_slice(&payload.to_be_bytes());
    end
}

/// Appends an L4 header and payload; returns where the header ends.
fn l4(rng: &mut Rng, frame: &mut Vec<u8>, proto: u8) -> usize {
    let port = |rng: &mut Rng| {
        if rng.chance(30) {
            rng.pick(&[22u16, 53, 80, 443, 8080, 9090, 0, 65535])
        } else {
            rng.u16()
        }
    };
    match proto {
        TCP => {
            let start = frame.len();
            frame.extend(port(rng).to_be_bytes());
            frame.extend(port(rng).to_be_bytes());
            frame.extend(rng.bytes(8)); // sequence and acknowledgment numbers
            let (data_offset, options) = match rng.weighted(&[70, 20, 10]) {
                // Consistent: the options fill exactly what the data offset declares.
                0 => {
                    let d = if rng.chance(50) { 5 } else { rng.range(6, 15) };
                    (d, (d - 5) * 4)
                }
                // Declared and present differ.
                1 => (rng.range(5, 15), rng.range(0, 40)),
                // Below the fixed header.
                _ => (rng.range(0, 4), rng.range(0, 8)),
            };
            frame.push(((data_offset as u8) << 4) | (rng.byte() & 0x0f));
            frame.push(rng.byte()); // flags
            frame.extend(rng.bytes(6)); // window, checksum, urgent pointer
            tcp_options(rng, frame, options);
            let end = start + data_offset.max(5) * 4;
            let payload = if rng.chance(90) {
                rng.range(0, 64)
            } else {
                rng.range(64, 1400)
            };
            frame.extend(rng.bytes(payload));
            end
        }
        UDP => {
            let start = frame.len();
            frame.extend(port(rng).to_be_bytes());
            frame.extend(port(rng).to_be_bytes());
            let payload = rng.range(0, 80);
            let length = match rng.weighted(&[70, 10, 10, 10]) {
                0 => (8 + payload) as u16,
                1 => 0,
                2 => rng.range(1, 7) as u16,
                _ => rng.u16(),
            };
            frame.extend(length.to_be_bytes());
            frame.extend(rng.bytes(2)); // checksum
            frame.extend(rng.bytes(payload));
            start + 8
        }
        ICMP | ICMPV6 => {
            let start = frame.len();
            let n = 8 + rng.range(0, 56);
            frame.extend(rng.bytes(n));
            start + 8
        }
        GRE => {
            let start = frame.len();
            let n = 4 * rng.range(1, 4);
            frame.extend(rng.bytes(n));
            start + n
        }
        SCTP => {
            // Common header (ports, verification tag, checksum), then a chunk.
            let start = frame.len();
            frame.extend(port(rng).to_be_bytes());
            frame.extend(port(rng).to_be_bytes());
            frame.extend(rng.bytes(8));
            let n = rng.range(4, 40);
            frame.extend(rng.bytes(n));
            start + 12
        }
        _ => {
            let start = frame.len();
            let n = rng.range(0, 40);
            frame.extend(rng.bytes(n));
            start + n.min(8)
        }
    }
}

/// `len` bytes of TCP options: real ones (MSS, window scale, SACK permitted, timestamps, NOP,
/// EOL) or noise, cut to fit.
fn tcp_options(rng: &mut Rng, frame: &mut Vec<u8>, len: usize) {
    let mut options = Vec::with_capacity(len);
    while options.len() < len {
        match rng.below(7) {
            0 => options.extend([2, 4, 0x05, 0xb4]),
            1 => options.extend([3, 3, rng.range(0, 14) as u8]),
            2 => options.extend([4, 2]),
            3 => {
                options.extend([8, 10]);
                options.extend(rng.bytes(8));
            }
            4 => options.push(1),
            5 => options.push(0),
            _ => options.push(rng.byte()),
        }
    }
    options.truncate(len);
    frame.extend(options);
}

/// Ethernet padding, a random cut, random byte flips: what a damaged or hostile frame looks like.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>, header_end: usize) {
    if frame.len() < 60 && rng.chance(20) {
        frame.resize(60, 0);
    }
    if rng.chance(35) {
        let cut = if rng.chance(75) {
            // Mostly around the headers, where the classifier decides.
            rng.range(14, header_end.clamp(14, frame.len()).min(frame.len()) + 4)
        } else if rng.chance(2) {
            rng.range(0, 13)
        } else {
            rng.range(0, frame.len())
        };
        frame.truncate(cut.min(frame.len()));
    }
    if rng.chance(20) && !frame.is_empty() {
        for _ in 0..rng.range(1, 3) {
            let at = if rng.chance(80) {
                rng.below(header_end.clamp(1, frame.len()))
            } else {
                rng.below(frame.len())
            };
            frame[at] = if rng.chance(50) {
                frame[at] ^ (1 << rng.below(8))
            } else {
                rng.byte()
            };
        }
    }
}
