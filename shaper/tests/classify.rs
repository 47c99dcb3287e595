//! The real classifier, loaded into the kernel, run on hand-made packets with BPF_PROG_TEST_RUN.
//! Each test asserts the one counter that moved, by exactly how much, and that nothing else did;
//! all of them share one loaded classifier ([`test_run::shared_on_loopback`]), taking turns.
//! Loaded once: creating the maps and verifying both programs is nearly all of a test's time
//! (0.4 s here, 5 s in a TCG guest of the kernel matrix), and `run` reports what one frame
//! changed, so what earlier tests counted never shows.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use common::packet::*;
use common::test_run;
use shaper::{Classifier, Direction};

/// Counters by "direction/proto/port" or "direction/reason": (packets, bytes).
type Counts = BTreeMap<String, (u64, u64)>;

fn counts(classifier: &Classifier) -> Counts {
    let snapshot =
        shaper::telemetry::counter_snapshot::Snapshot::read(classifier).expect("snapshot");
    let ports = snapshot.ports.iter().map(|p| {
        (
            format!("{}/{}/{}", p.direction, p.proto, p.port),
            (p.packets, p.bytes),
        )
    });
    let reasons = snapshot.unclassified.iter().map(|u| {
        (
            format!("{}/{}", u.direction, u.reason),
            (u.packets, u.bytes),
        )
    });
    ports.chain(reasons).collect()
}

/// The counts after the last frame, which are the next frame's "before": every frame of this
/// binary goes through [`run`] on the one shared classifier, whose lock its caller holds, so
/// nothing else moves them. Taken at the start of a frame and put back at its end, so a test
/// that fails in between leaves none (the next frame reads afresh). It halves the reads: a
/// read scans 262,144 port counters, which in the kernel matrix's emulated guests took most of
/// this binary's time.
static AFTER_LAST_FRAME: Mutex<Option<Counts>> = Mutex::new(None);

/// Runs `frame` through the program of `direction` and returns what changed.
fn run(
    classifier: &mut Classifier,
    direction: Direction,
    frame: &[u8],
    ctx: Option<&[u8]>,
) -> Counts {
    let cached = AFTER_LAST_FRAME
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let before = cached.unwrap_or_else(|| counts(classifier));
    // The packet goes on untouched, whatever was parsed.
    assert_eq!(
        test_run::run(classifier, direction, frame, ctx),
        test_run::PASS,
        "classifier must pass every packet"
    );
    let after = counts(classifier);
    *AFTER_LAST_FRAME
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(after.clone());
    after
        .into_iter()
        .filter_map(|(key, (packets, bytes))| {
            let (p0, b0) = before.get(&key).copied().unwrap_or_default();
            (packets != p0 || bytes != b0).then(|| (key, (packets - p0, bytes - b0)))
        })
        .collect()
}

fn only(key: &str, packets: u64, bytes: usize) -> Counts {
    BTreeMap::from([(key.to_owned(), (packets, bytes as u64))])
}

macro_rules! kernel_test {
    ($name:ident, $body:expr) => {
        test_run::classifier_test!($name, test_run::shared_on_loopback(), $body);
    };
}

kernel_test!(
    ipv4_tcp_counts_destination_port_on_ingress_and_source_port_on_egress,
    |c| {
        let frame = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(IPPROTO_TCP, &tcp(40000, 443, b"hello")),
        );
        assert_eq!(
            run(c, Direction::Ingress, &frame, None),
            only("ingress/tcp/443", 1, frame.len())
        );
        assert_eq!(
            run(c, Direction::Egress, &frame, None),
            only("egress/tcp/40000", 1, frame.len())
        );
    }
);

kernel_test!(ipv4_udp_counts_under_its_port, |c| {
    let frame = ethernet(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &udp(5353, 53, &[7; 64])));
    assert_eq!(
        run(c, Direction::Ingress, &frame, None),
        only("ingress/udp/53", 1, frame.len())
    );
    assert_eq!(
        run(c, Direction::Egress, &frame, None),
        only("egress/udp/5353", 1, frame.len())
    );
});

kernel_test!(ipv4_options_are_skipped_using_ihl, |c| {
    // IHL 15: 40 bytes of options. Reading ports at a fixed offset of 20 would find option bytes.
    let frame = ethernet(
        &[],
        ETH_P_IP,
        &ipv4_with(15, 0, IPPROTO_UDP, &udp(1111, 2222, b"x")),
    );
    assert_eq!(
        run(c, Direction::Ingress, &frame, None),
        only("ingress/udp/2222", 1, frame.len())
    );
});

kernel_test!(ipv4_ihl_below_five_is_malformed, |c| {
    for ihl in [0, 4] {
        let frame = ethernet(
            &[],
            ETH_P_IP,
            &ipv4_with(ihl, 0, IPPROTO_UDP, &udp(1, 2, &[0; 40])),
        );
        assert_eq!(
            run(c, Direction::Ingress, &frame, None),
            only("ingress/malformed", 1, frame.len()),
            "ihl {ihl}"
        );
    }
});

kernel_test!(
    ipv4_later_fragments_count_under_their_first_fragments_port_and_orphans_as_fragment,
    |c| {
        const MORE_FRAGMENTS: u16 = 0x2000;
        // An identification no other test of this file uses: the fragment map is shared.
        const ID: u16 = 0x4101;
        let first = ethernet(
            &[],
            ETH_P_IP,
            &ipv4_fragment(ID, MORE_FRAGMENTS, IPPROTO_UDP, &udp(1000, 2000, &[0; 64])),
        );
        assert_eq!(
            run(c, Direction::Ingress, &first, None),
            only("ingress/udp/2000", 1, first.len())
        );
        // Offset 9 (72 bytes): payload only, which here happens to look like ports 7 -> 8; the
        // fragment counts under its first fragment's port, not under what it carries.
        let later = ethernet(
            &[],
            ETH_P_IP,
            &ipv4_fragment(ID, MORE_FRAGMENTS | 9, IPPROTO_UDP, &udp(7, 8, &[0; 64])),
        );
        assert_eq!(
            run(c, Direction::Ingress, &later, None),
            only("ingress/udp/2000", 1, later.len())
        );
        let last = ethernet(&[], ETH_P_IP, &ipv4_fragment(ID, 18, IPPROTO_UDP, &[0; 16]));
        assert_eq!(
            run(c, Direction::Ingress, &last, None),
            only("ingress/udp/2000", 1, last.len())
        );
        // The same datagram leaving: the first fragment's source port is the local one.
        assert_eq!(
            run(c, Direction::Egress, &last, None),
            only("egress/udp/1000", 1, last.len())
        );
        // Another identification, or another protocol with the same one, is another datagram,
        // whose first fragment was never seen: no ports.
        for orphan in [
            ipv4_fragment(ID + 1, 18, IPPROTO_UDP, &[0; 16]),
            ipv4_fragment(ID, 18, IPPROTO_TCP, &[0; 16]),
        ] {
            let orphan = ethernet(&[], ETH_P_IP, &orphan);
            assert_eq!(
                run(c, Direction::Ingress, &orphan, None),
                only("ingress/fragment", 1, orphan.len())
            );
        }
    }
);

kernel_test!(ipv6_extension_header_chain_is_walked_to_tcp, |c| {
    let mut chain = ipv6_ext(IPPROTO_ROUTING, 0); // Hop-by-Hop, 8 bytes
    chain.extend(ipv6_ext(IPPROTO_DSTOPTS, 2)); // Routing, 24 bytes
    chain.extend(ipv6_ext(IPPROTO_TCP, 1)); // Destination Options, 16 bytes
    chain.extend(tcp(50000, 8443, b"payload"));
    let frame = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_HOPOPTS, &chain));
    assert_eq!(
        run(c, Direction::Ingress, &frame, None),
        only("ingress/tcp/8443", 1, frame.len())
    );
    assert_eq!(
        run(c, Direction::Egress, &frame, None),
        only("egress/tcp/50000", 1, frame.len())
    );
});

kernel_test!(
    ipv6_later_fragments_count_under_their_first_fragments_port_and_orphans_as_fragment,
    |c| {
        const ID: u32 = 0x6101_0001;
        // The first fragment as a sender fragments it: the Fragment header first, UDP behind.
        let mut first = ipv6_fragment_of(ID, IPPROTO_UDP, 0, true);
        first.extend(udp(3000, 4000, &[0; 48]));
        let first = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_FRAGMENT, &first));
        assert_eq!(
            run(c, Direction::Ingress, &first, None),
            only("ingress/udp/4000", 1, first.len())
        );
        // A later one, whatever headers precede its Fragment header.
        let mut later = ipv6_ext(IPPROTO_FRAGMENT, 0);
        later.extend(ipv6_fragment_of(ID, IPPROTO_UDP, 8, false));
        later.extend([0; 24]);
        let later = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_HOPOPTS, &later));
        assert_eq!(
            run(c, Direction::Ingress, &later, None),
            only("ingress/udp/4000", 1, later.len())
        );
        // A first fragment with a Destination Options header behind its Fragment header counts
        // under its port but is not remembered (the verifier's budget, see parse.rs): its later
        // fragments are unplaced.
        let mut deep_first = ipv6_fragment_of(ID + 3, IPPROTO_DSTOPTS, 0, true);
        deep_first.extend(ipv6_ext(IPPROTO_UDP, 0));
        deep_first.extend(udp(3000, 4002, &[0; 48]));
        let deep_first = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_FRAGMENT, &deep_first));
        assert_eq!(
            run(c, Direction::Ingress, &deep_first, None),
            only("ingress/udp/4002", 1, deep_first.len())
        );
        let mut deep_later = ipv6_fragment_of(ID + 3, IPPROTO_DSTOPTS, 8, false);
        deep_later.extend([0; 24]);
        let deep_later = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_FRAGMENT, &deep_later));
        assert_eq!(
            run(c, Direction::Ingress, &deep_later, None),
            only("ingress/fragment", 1, deep_later.len())
        );
        let mut orphan = ipv6_fragment_of(ID + 1, IPPROTO_UDP, 7, false);
        orphan.extend(udp(3000, 4000, &[0; 16]));
        let orphan = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_FRAGMENT, &orphan));
        assert_eq!(
            run(c, Direction::Ingress, &orphan, None),
            only("ingress/fragment", 1, orphan.len())
        );
        // An atomic fragment (offset 0, M clear) is a whole datagram: its ports, nothing kept
        // for a later fragment of the same identification.
        let mut atomic = ipv6_fragment_of(ID + 2, IPPROTO_UDP, 0, false);
        atomic.extend(udp(3000, 4001, &[0; 16]));
        let atomic = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_FRAGMENT, &atomic));
        assert_eq!(
            run(c, Direction::Ingress, &atomic, None),
            only("ingress/udp/4001", 1, atomic.len())
        );
        let mut after_atomic = ipv6_fragment_of(ID + 2, IPPROTO_UDP, 3, false);
        after_atomic.extend([0; 16]);
        let after_atomic = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_FRAGMENT, &after_atomic));
        assert_eq!(
            run(c, Direction::Ingress, &after_atomic, None),
            only("ingress/fragment", 1, after_atomic.len())
        );
    }
);

kernel_test!(ipv6_chain_as_long_as_the_walk_is_walked_to_its_end, |c| {
    // Exactly MAX_IPV6_EXT_HEADERS (8): the upper layer after them has its ports. The loop used
    // to give up after the eighth header without looking at what came next.
    let frame = udp_behind_dstopts(8);
    assert_eq!(
        run(c, Direction::Ingress, &frame, None),
        only("ingress/udp/2", 1, frame.len())
    );
    // Found: behind an 802.1Q tag, eight headers (AH, Destination Options, a first Fragment,
    // AH again) and UDP; it counted as `ipv6_ext_limit`.
    let found = from_hex(
        "0000000000000000000000008100000086dd63000000000033000000000000000000000000000000\
         0000000000000000000000000000000000003c01000000000000000000003c030000000000000000\
         000000000000000000000000000000000000000000003c000000000000002c010000000000000000\
         0000000000003c000000000000003c00000000000000330000000000000011060000000000000000\
         000000000000000000000000000000000000000000000000000000000000",
    );
    assert_eq!(
        run(c, Direction::Ingress, &found, None),
        only("ingress/udp/0", 1, found.len())
    );
});

kernel_test!(ipv6_chain_longer_than_the_walk_is_counted_as_such, |c| {
    let frame = udp_behind_dstopts(9);
    assert_eq!(
        run(c, Direction::Ingress, &frame, None),
        only("ingress/ipv6_ext_limit", 1, frame.len())
    );
});

kernel_test!(vlan_and_qinq_tags_are_skipped, |c| {
    let ip = ipv4(IPPROTO_UDP, &udp(6000, 7000, b"tagged"));
    let dot1q = ethernet(&[(ETH_P_8021Q, 100)], ETH_P_IP, &ip);
    assert_eq!(
        run(c, Direction::Ingress, &dot1q, None),
        only("ingress/udp/7000", 1, dot1q.len())
    );
    let qinq = ethernet(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 100)], ETH_P_IP, &ip);
    assert_eq!(
        run(c, Direction::Ingress, &qinq, None),
        only("ingress/udp/7000", 1, qinq.len())
    );
    let qinq6 = ethernet(
        &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 100)],
        ETH_P_IPV6,
        &ipv6(IPPROTO_TCP, &tcp(1, 22, b"")),
    );
    assert_eq!(
        run(c, Direction::Ingress, &qinq6, None),
        only("ingress/tcp/22", 1, qinq6.len())
    );
});

kernel_test!(packet_cut_at_each_header_boundary_is_truncated, |c| {
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, and (for an IPv4/IPv6
    // EtherType) frames too short for the IP header. Behind a VLAN tag the EtherType is 802.1Q,
    // so the kernel hands every cut to the program, as a real receive path can.
    let v4 = ethernet(
        &[(ETH_P_8021Q, 5)],
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, &tcp(1, 80, b"")),
    );
    let v6 = {
        let mut chain = ipv6_ext(IPPROTO_UDP, 0);
        chain.extend(udp(1, 53, b""));
        ethernet(
            &[(ETH_P_8021Q, 6)],
            ETH_P_IPV6,
            &ipv6(IPPROTO_HOPOPTS, &chain),
        )
    };
    let cuts = [
        (&v4, 14, "inside the VLAN tag"),
        (&v4, 18, "before the IPv4 header"),
        (&v4, 18 + 19, "inside the IPv4 header"),
        (&v4, 18 + 20, "before the TCP header"),
        (&v4, 18 + 20 + 19, "inside the TCP header"),
        (&v6, 18, "before the IPv6 header"),
        (&v6, 18 + 39, "inside the IPv6 header"),
        (&v6, 18 + 40 + 1, "inside the Hop-by-Hop header"),
        (&v6, 18 + 48 + 7, "inside the UDP header"),
    ];
    for (frame, len, place) in cuts {
        let cut = &frame[..len];
        assert_eq!(
            run(c, Direction::Ingress, cut, None),
            only("ingress/truncated", 1, len),
            "cut {place}"
        );
    }
    // Whole, both are classified.
    assert_eq!(
        run(c, Direction::Ingress, &v4, None),
        only("ingress/tcp/80", 1, v4.len())
    );
    assert_eq!(
        run(c, Direction::Ingress, &v6, None),
        only("ingress/udp/53", 1, v6.len())
    );
});

kernel_test!(non_ip_is_counted_under_its_reason, |c| {
    let arp = ethernet(&[], ETH_P_ARP, &[0; 28]);
    assert_eq!(
        run(c, Direction::Ingress, &arp, None),
        only("ingress/non_ip", 1, arp.len())
    );
    let tagged_arp = ethernet(&[(ETH_P_8021Q, 7)], ETH_P_ARP, &[0; 28]);
    assert_eq!(
        run(c, Direction::Egress, &tagged_arp, None),
        only("egress/non_ip", 1, tagged_arp.len())
    );
});

kernel_test!(icmp_and_other_l4_have_no_port, |c| {
    let ping = ethernet(&[], ETH_P_IP, &ipv4(IPPROTO_ICMP, &icmp_echo(8)));
    assert_eq!(
        run(c, Direction::Ingress, &ping, None),
        only("ingress/icmp", 1, ping.len())
    );
    let ping6 = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_ICMPV6, &icmp_echo(128)));
    assert_eq!(
        run(c, Direction::Egress, &ping6, None),
        only("egress/icmp", 1, ping6.len())
    );
    let gre = ethernet(&[], ETH_P_IP, &ipv4(IPPROTO_GRE, &[0; 24]));
    assert_eq!(
        run(c, Direction::Ingress, &gre, None),
        only("ingress/other_l4", 1, gre.len())
    );
});

kernel_test!(tcp_data_offset_below_five_is_malformed, |c| {
    let frame = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, &tcp_with(1, 80, 4, &[0; 8])),
    );
    assert_eq!(
        run(c, Direction::Ingress, &frame, None),
        only("ingress/malformed", 1, frame.len())
    );
});

kernel_test!(gso_aggregate_counts_its_segments_and_their_headers, |c| {
    // One skb standing for 3 TCP segments of 1000 bytes: on the wire each segment carries its own
    // Ethernet + IPv4 + TCP (with 12 option bytes) headers, 66 bytes. (BPF_PROG_TEST_RUN takes
    // at most about a page of data, so the aggregate is small.)
    let frame = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, &tcp_with(40000, 443, 8, &[0; 3000])),
    );
    let ctx = skb_context(3, 1000);
    let headers = 14 + 20 + 32;
    assert_eq!(frame.len(), headers + 3000);
    assert_eq!(
        run(c, Direction::Ingress, &frame, Some(&ctx)),
        only("ingress/tcp/443", 3, 3 * headers + 3000)
    );
    // UDP GSO repeats Ethernet + IPv6 + UDP.
    let frame = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(IPPROTO_UDP, &udp(9999, 4433, &[0; 3000])),
    );
    let ctx = skb_context(3, 1000);
    assert_eq!(
        run(c, Direction::Egress, &frame, Some(&ctx)),
        only("egress/udp/9999", 3, 3 * (14 + 40 + 8) + 3000)
    );
});

// Regression cases found by the differential fuzzer (`tests/classify_fuzz.rs`, `cargo xtask
// fuzz`): each hex frame is a minimised one as it printed it, run on the ingress program.

kernel_test!(tcp_segment_cut_inside_its_options_is_truncated, |c| {
    // Data offset 7 declares a 28-byte header; with only 20 to 27 of those bytes present the
    // kernel discards the segment (`tcp_v4_rcv()`: `pskb_may_pull(skb, th->doff * 4)`).
    let frame = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, &tcp_with(40000, 443, 7, b"")),
    );
    let options_start = ETH_HLEN + 20 + 20;
    for len in options_start..frame.len() {
        assert_eq!(
            run(c, Direction::Ingress, &frame[..len], None),
            only("ingress/truncated", 1, len),
            "{} of the 8 option bytes",
            len - options_start
        );
    }
    assert_eq!(
        run(c, Direction::Ingress, &frame, None),
        only("ingress/tcp/443", 1, frame.len())
    );
    // Found: data offset 14 (56 bytes), 20 present; it counted under tcp/0.
    let found = from_hex(
        "00000000000000000000000008004500000000000000000600000000000000000000000000000000000000\
         000000eb00000000000000",
    );
    assert_eq!(
        run(c, Direction::Ingress, &found, None),
        only("ingress/truncated", 1, found.len())
    );
});

kernel_test!(ipv4_packet_cut_inside_its_options_is_truncated, |c| {
    // Found: IHL 13 (52 bytes), cut after 20; protocol ICMPv6, which it counted as `icmp`.
    let found = from_hex("00000000000000000000000008004d00000000000000003a00000000000000000000");
    assert_eq!(
        run(c, Direction::Ingress, &found, None),
        only("ingress/truncated", 1, found.len())
    );
    // Found: behind an 802.1ad tag, IHL 11 (44 bytes), cut after 20, fragment offset 0x6b: it
    // counted as `fragment`. The kernel drops it before reassembly (`ip_rcv_core()`:
    // `pskb_may_pull(skb, iph->ihl*4)`).
    let found =
        from_hex("00000000000000000000000088a8000008004b0000000000006b000000000000000000000000");
    assert_eq!(
        run(c, Direction::Ingress, &found, None),
        only("ingress/truncated", 1, found.len())
    );
});

kernel_test!(ipv6_extension_header_cut_short_is_truncated, |c| {
    // Found: a Hop-by-Hop header of which 2 bytes are present (next header ESP): it counted as
    // `other_l4`.
    let found = from_hex(
        "00000000000000000000000086dd6b0000000000000000000000000000000000000000000000000000000000\
         000000000000000000003200",
    );
    assert_eq!(
        run(c, Direction::Ingress, &found, None),
        only("ingress/truncated", 1, found.len())
    );
    // A Destination Options header of 16 bytes before UDP, cut anywhere inside it.
    let mut chain = ipv6_ext(IPPROTO_UDP, 1);
    chain.extend(udp(1, 53, b""));
    let frame = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_DSTOPTS, &chain));
    for len in ETH_HLEN + 40 + 2..ETH_HLEN + 40 + 16 {
        assert_eq!(
            run(c, Direction::Ingress, &frame[..len], None),
            only("ingress/truncated", 1, len),
            "cut at {len}"
        );
    }
});

kernel_test!(icmp_cut_inside_its_header_is_truncated, |c| {
    let ping = ethernet(&[], ETH_P_IP, &ipv4(IPPROTO_ICMP, &icmp_echo(8)));
    let header_end = ETH_HLEN + 20 + 8;
    assert_eq!(
        run(c, Direction::Ingress, &ping[..header_end - 1], None),
        only("ingress/truncated", 1, header_end - 1)
    );
    assert_eq!(
        run(c, Direction::Ingress, &ping[..header_end], None),
        only("ingress/icmp", 1, header_end)
    );
});

kernel_test!(udp_length_below_its_header_is_malformed, |c| {
    // Found: IPv4 UDP with length 0; it counted under udp/0. `__udp4_lib_rcv()` drops a length
    // below 8 (`short_packet`).
    let found = from_hex(
        "000000000000000000000000080045000000000000000011000000000000000000000000000000000000",
    );
    assert_eq!(
        run(c, Direction::Ingress, &found, None),
        only("ingress/malformed", 1, found.len())
    );
    let with_length = |ether_type: u16, ip: fn(u8, &[u8]) -> Vec<u8>, length: u16| {
        let mut datagram = udp(5353, 53, &[0; 8]);
        datagram[4..6].copy_from_slice(&length.to_be_bytes());
        ethernet(&[], ether_type, &ip(IPPROTO_UDP, &datagram))
    };
    for length in 1..8 {
        for frame in [
            with_length(ETH_P_IP, ipv4, length),
            with_length(ETH_P_IPV6, ipv6, length),
        ] {
            assert_eq!(
                run(c, Direction::Ingress, &frame, None),
                only("ingress/malformed", 1, frame.len()),
                "length {length}"
            );
        }
    }
    // Over IPv6, 0 means a jumbo payload (`__udp6_lib_rcv()`, RFC 2675): counted.
    let jumbo = with_length(ETH_P_IPV6, ipv6, 0);
    assert_eq!(
        run(c, Direction::Ingress, &jumbo, None),
        only("ingress/udp/53", 1, jumbo.len())
    );
    // A length beyond the frame is a first fragment's, or a GSO aggregate's: counted.
    let long = with_length(ETH_P_IP, ipv4, 9000);
    assert_eq!(
        run(c, Direction::Ingress, &long, None),
        only("ingress/udp/53", 1, long.len())
    );
});

kernel_test!(
    ipv6_authentication_header_is_walked_by_its_own_length_rule,
    |c| {
        // AH's length is (Payload Len + 2) * 4 bytes: Payload Len 4 is 24 bytes.
        let mut chain = vec![IPPROTO_UDP, 4];
        chain.resize(24, 0xa5);
        chain.extend(udp(1, 4500, b"esp-in-udp"));
        let frame = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_AH, &chain));
        assert_eq!(
            run(c, Direction::Ingress, &frame, None),
            only("ingress/udp/4500", 1, frame.len())
        );
        // Payload Len 0 declares 8 bytes, less than AH's 12 fixed ones: `ah6_input()` drops it.
        let mut chain = vec![IPPROTO_UDP, 0];
        chain.resize(12, 0xa5);
        chain.extend(udp(1, 4500, b"esp-in-udp"));
        let frame = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_AH, &chain));
        assert_eq!(
            run(c, Direction::Ingress, &frame, None),
            only("ingress/malformed", 1, frame.len())
        );
    }
);

kernel_test!(hop_by_hop_header_anywhere_but_first_is_malformed, |c| {
    // RFC 8200 section 4.1; the kernel has no handler for next header 0 past the first
    // (`ip6_protocol_deliver_rcu()`) and drops the packet.
    let mut chain = ipv6_ext(IPPROTO_HOPOPTS, 0); // Destination Options, then Hop-by-Hop
    chain.extend(ipv6_ext(IPPROTO_UDP, 0));
    chain.extend(udp(1, 53, b""));
    let frame = ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_DSTOPTS, &chain));
    assert_eq!(
        run(c, Direction::Ingress, &frame, None),
        only("ingress/malformed", 1, frame.len())
    );
    // Found: behind two tags, Hop-by-Hop twice, the second cut after 2 bytes; it counted as
    // `other_l4` (next header ESP).
    let found = from_hex(
        "00000000000000000000000088a800008100000086dd630000000000000000000000000000000000\
         0000000000000000000000000000000000000000000000000000000000003200",
    );
    assert_eq!(
        run(c, Direction::Ingress, &found, None),
        only("ingress/malformed", 1, found.len())
    );
    // Found: AH (12 bytes), then Hop-by-Hop headers, then what looked like a later fragment;
    // it counted as `fragment`.
    let found = from_hex(
        "00000000000000000000000086dd6600000000003300000000000000000000000000000000000000\
         00000000000000000000000000000001000000000000000000000000000000000000000000000000\
         0000000000000000000000000000000000002c000000000000000000003800000000",
    );
    assert_eq!(
        run(c, Direction::Ingress, &found, None),
        only("ingress/malformed", 1, found.len())
    );
});
