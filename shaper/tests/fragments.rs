//! Fragments in the real classifier, under BPF_PROG_TEST_RUN: a datagram's later fragments are
//! charged to its first fragment's rule in exact bytes, an orphan is not, and the fragment
//! tracker's evictions are counted as the kernel makes them.
//!
//! Traffic the kernel fragments itself, through a rule on a veth, is in `shaping.rs`.

mod common;

use common::limits_fixture::LimitsFixture;
use common::packet::*;
use common::test_run;
use shaper::{
    Direction,
    policy::rule_table::{Action, DirSel, ProtoSel, RuleKey, RuleSpec, Side},
};
use shaper_common::{MAX_FRAGMENTED_DATAGRAMS, PROTO_UDP, reason};

const MORE_FRAGMENTS: u16 = 0x2000;
/// TC_ACT_SHOT.
const DROP: i32 = 2;

/// A UDP rule on local port `port` that nothing in these tests can exhaust.
fn generous_rule(port: u16) -> RuleSpec {
    RuleSpec {
        key: RuleKey {
            ports: shaper::policy::rule_table::PortRange::single(port),
            side: Side::Local,
            dir: DirSel::Both,
            proto: ProtoSel::Udp,
            iface: None,
        },
        rate_bps: 1_000_000_000,
        burst_bytes: Some(64 * 1024 * 1024),
        action: Action::Drop,
        ecn: false,
        per_remote: false,
        queue_bytes: None,
    }
}

/// The three fragments of one IPv4 UDP datagram to `port`: the first carries the UDP header.
fn ipv4_datagram(id: u16, port: u16) -> [Vec<u8>; 3] {
    [
        ipv4_fragment(
            id,
            MORE_FRAGMENTS,
            IPPROTO_UDP,
            &udp(40000, port, &[1; 1192]),
        ),
        ipv4_fragment(id, MORE_FRAGMENTS | 150, IPPROTO_UDP, &[2; 1200]),
        ipv4_fragment(id, 300, IPPROTO_UDP, &[3; 400]),
    ]
    .map(|ip| ethernet(&[], ETH_P_IP, &ip))
}

fn ipv6_datagram(id: u32, port: u16) -> [Vec<u8>; 2] {
    let mut first = ipv6_fragment_of(id, IPPROTO_UDP, 0, true);
    first.extend(udp(40000, port, &[1; 1192]));
    let mut last = ipv6_fragment_of(id, IPPROTO_UDP, 150, false);
    last.extend([2; 600]);
    [first, last].map(|ip| ethernet(&[], ETH_P_IPV6, &ipv6(IPPROTO_FRAGMENT, &ip)))
}

fn fragment_counter(s: &LimitsFixture) -> u64 {
    s.classifier
        .unclassified_counter(0, Direction::Ingress, reason::FRAGMENT)
        .expect("read the fragment counter")
        .packets
}

#[test]
fn later_fragments_are_charged_to_their_first_fragments_rule_in_exact_bytes() {
    common::root_or_skip!();
    let mut s = LimitsFixture::load("fragments-charged", &["lo"]);
    let rule = s.set(generous_rule(7700), "set the rule").id;

    let mut wire = 0u64;
    let mut frames = 0u64;
    for fragment in ipv4_datagram(0x0a01, 7700) {
        test_run::passes(&mut s.classifier, Direction::Ingress, &fragment);
        wire += fragment.len() as u64;
        frames += 1;
    }
    for fragment in ipv6_datagram(0x0a02_0001, 7700) {
        test_run::passes(&mut s.classifier, Direction::Ingress, &fragment);
        wire += fragment.len() as u64;
        frames += 1;
    }
    let view = s.rule(rule);
    assert_eq!(
        (view.passed_packets, view.passed_bytes),
        (frames, wire),
        "every fragment, first or later, is charged to the port's rule"
    );
    let port = s
        .classifier
        .port_counter(0, Direction::Ingress, PROTO_UDP, 7700);
    assert_eq!((port.packets, port.bytes), (frames, wire));
    assert_eq!(fragment_counter(&s), 0, "nothing was unplaced");

    // Later fragments whose first never came: unplaced, and charged to nothing.
    let [_, orphan, last] = ipv4_datagram(0x0a03, 7700);
    test_run::passes(&mut s.classifier, Direction::Ingress, &orphan);
    test_run::passes(&mut s.classifier, Direction::Ingress, &last);
    assert_eq!(fragment_counter(&s), 2);
    assert_eq!(s.rule(rule).passed_packets, frames);

    let tracking = s.classifier.fragment_tracking().expect("read the tracker");
    assert_eq!(
        (
            tracking.tracked,
            tracking.placed,
            tracking.live,
            tracking.evicted
        ),
        (2, 3, 2, 0),
        "two datagrams remembered, three later fragments placed through them"
    );
}

#[test]
fn a_drained_bucket_drops_later_fragments_as_it_drops_first_ones() {
    common::root_or_skip!();
    let mut s = LimitsFixture::load("fragments-dropped", &["lo"]);
    let mut spec = generous_rule(7701);
    // 1 byte per second: the time the test takes refills next to nothing.
    spec.rate_bps = 8;
    spec.burst_bytes = None;
    let rule = s.set(spec, "set the rule").id;
    // Drain the burst with small whole datagrams until one is dropped: less than 100 bytes of
    // tokens are left, less than any fragment below.
    let small = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, &udp(40000, 7701, &[0; 58])),
    );
    let drained = (0..1_000_000)
        .map(|_| test_run::run(&mut s.classifier, Direction::Ingress, &small, None))
        .any(|verdict| verdict == DROP);
    assert!(drained, "the burst ran out");
    let before = s.rule(rule);

    let fragments = ipv4_datagram(0x0b01, 7701);
    for fragment in &fragments {
        assert_eq!(
            test_run::run(&mut s.classifier, Direction::Ingress, fragment, None),
            DROP,
            "each fragment, first or later, is charged to the rule and finds no tokens"
        );
    }
    let after = s.rule(rule);
    assert_eq!(
        (
            after.dropped_packets - before.dropped_packets,
            after.dropped_bytes - before.dropped_bytes,
            after.passed_packets - before.passed_packets,
        ),
        (3, fragments.iter().map(|f| f.len() as u64).sum(), 0)
    );
}

#[test]
fn evictions_are_the_datagrams_whose_later_fragments_no_longer_find_their_first() {
    common::root_or_skip!();
    let mut s = LimitsFixture::load("fragments-evicted", &["lo"]);
    // More datagrams than the tracker holds, each a first fragment now and a later one after.
    let datagrams = MAX_FRAGMENTED_DATAGRAMS + 512;
    let datagram = |n: u32| -> [Vec<u8>; 2] { ipv6_datagram(0x0c00_0000 + n, 7702) };
    for n in 0..datagrams {
        let [first, _] = datagram(n);
        test_run::passes(&mut s.classifier, Direction::Ingress, &first);
    }
    let before = s.classifier.fragment_tracking().expect("read the tracker");
    assert_eq!(before.tracked, u64::from(datagrams));
    assert!(before.live <= u64::from(MAX_FRAGMENTED_DATAGRAMS));
    assert!(
        before.evicted >= 512,
        "at least the datagrams beyond the capacity were evicted: {before:?}"
    );
    // Lookups insert nothing, so the map stays as it is while the later fragments arrive.
    for n in 0..datagrams {
        let [_, later] = datagram(n);
        test_run::passes(&mut s.classifier, Direction::Ingress, &later);
    }
    let after = s.classifier.fragment_tracking().expect("read the tracker");
    assert_eq!(
        after.placed, before.live,
        "exactly the datagrams still in the tracker placed their later fragment"
    );
    assert_eq!(
        fragment_counter(&s),
        before.evicted,
        "exactly the evicted ones were unplaced"
    );
}

/// An `unplaced` rule of 8 bit/s (1 byte a second) and the smallest burst: the packets no port
/// was found for drain it at once.
fn unplaced_rule(s: &mut LimitsFixture, action: Action) -> u16 {
    let spec = RuleSpec {
        key: RuleKey::unplaced(DirSel::Ingress, None),
        rate_bps: 8,
        burst_bytes: None,
        action,
        ecn: false,
        per_remote: false,
        queue_bytes: None,
    };
    s.set(spec, "set the unplaced rule").id
}

/// A later fragment of a datagram nobody saw the first fragment of, 1,234 bytes on the wire.
fn orphan(id: u16) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &ipv4_fragment(id, MORE_FRAGMENTS | 150, IPPROTO_UDP, &[0; 1200]),
    )
}

#[test]
fn without_an_unplaced_rule_packets_without_ports_pass_and_with_one_they_are_charged() {
    common::root_or_skip!();
    let mut s = LimitsFixture::load("fragments-unplaced", &["lo"]);
    // No rule: a burst's worth and more of orphans pass.
    for id in 0..200 {
        test_run::passes(&mut s.classifier, Direction::Ingress, &orphan(id));
    }
    let rule = unplaced_rule(&mut s, Action::Drop);
    let burst = s.rule(rule).burst_bytes;
    // Orphans, and IPv6 chains longer than the walk, are charged to it until its burst is
    // spent, then dropped; what passed is the burst at most.
    let over_limit = udp_behind_dstopts(9);
    let (mut passed, mut dropped) = (0u64, 0u64);
    for n in 0..400u16 {
        let frame = if n % 2 == 0 {
            orphan(n)
        } else {
            over_limit.clone()
        };
        match test_run::run(&mut s.classifier, Direction::Ingress, &frame, None) {
            test_run::PASS => passed += frame.len() as u64,
            DROP => dropped += frame.len() as u64,
            other => panic!("verdict {other}"),
        }
    }
    let view = s.rule(rule);
    assert_eq!((view.passed_bytes, view.dropped_bytes), (passed, dropped));
    assert!(
        passed <= burst,
        "passed {passed} bytes, more than the burst {burst}"
    );
    assert!(dropped > 0, "the burst ran out");
    // Packets with ports, and portless ones the rule does not govern (ICMP, non-IP), are not
    // its business; nor is egress.
    let udp = ethernet(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &udp(1, 7703, &[0; 64])));
    let icmp = ethernet(&[], ETH_P_IP, &ipv4(IPPROTO_ICMP, &icmp_echo(8)));
    test_run::passes(&mut s.classifier, Direction::Ingress, &udp);
    test_run::passes(&mut s.classifier, Direction::Ingress, &icmp);
    test_run::passes(&mut s.classifier, Direction::Egress, &orphan(1));
    let after = s.rule(rule);
    assert_eq!(after.passed_packets + after.dropped_packets, 400);
}

#[test]
fn an_observe_rule_for_unplaced_packets_passes_them_and_counts_what_it_would_drop() {
    common::root_or_skip!();
    let mut s = LimitsFixture::load("fragments-unplaced-observe", &["lo"]);
    let rule = unplaced_rule(&mut s, Action::Observe);
    for id in 0..400 {
        test_run::passes(&mut s.classifier, Direction::Ingress, &orphan(id));
    }
    let view = s.rule(rule);
    assert_eq!(view.passed_packets + view.would_drop_packets, 400);
    assert!(view.would_drop_packets > 0);
    assert_eq!(view.dropped_packets, 0);
}
