//! What the classifier writes into a packet, driven with BPF_PROG_TEST_RUN: the CE mark of a
//! `drop --ecn` rule (the IP header after the run) and the HTB class of a `shape` rule
//! (`skb->priority` in the context after the run).
//!
//! Rules are set through [`Limits`], the daemon's own path. The rate is 128 B/s, so the time the
//! test takes refills less than a frame and the thresholds are exact packet counts.
//!
//! The tests share one loaded classifier ([`SharedLimits`]), taking turns: loading it (creating
//! the maps, verifying both programs) is nearly all of a test's time, about 5 s in a TCG guest
//! of the kernel matrix. Each test starts with no rules and removes its own, even when it fails,
//! and sets its rules on a port of its own; a new rule starts with a full burst and zeroed
//! counters, so the thresholds and the rule counters stay exact. The `shape` test alone loads
//! its own (see there).

mod common;

use aya::programs::{TestRun as _, TestRunOptions};
use common::limits_fixture::{LimitsFixture as Setup, SharedLimits, test_actor};
use common::{netns::InNamespace as _, packet::*};
use shaper::{
    Classifier, Direction,
    policy::PolicyError,
    policy::action_options::ActionOptionError,
    policy::rule_table::{Action, DirSel, PortRange, ProtoSel, RuleKey, RuleSpec, Side},
};

/// TC_ACT_UNSPEC (pass on) and TC_ACT_SHOT.
const PASS: i32 = -1;
const DROP: i32 = 2;

const RATE_BPS: u64 = 1024; // 128 bytes per second
const BURST: u64 = 192 * 1024;
const FRAME_LEN: usize = 128;
const PACKETS_PER_BURST: u64 = BURST / FRAME_LEN as u64;
/// Packets that leave at least half the burst in the bucket: none of them is marked.
const UNMARKED: u64 = PACKETS_PER_BURST / 2;

/// ECN codepoints (RFC 3168): the low two bits of the IPv4 TOS / IPv6 traffic class.
const NOT_ECT: u8 = 0b00;
const ECT_1: u8 = 0b01;
const ECT_0: u8 = 0b10;
const CE: u8 = 0b11;

/// struct __sk_buff (include/uapi/linux/bpf.h): 192 bytes, `priority` at offset 32.
const SKB_CONTEXT_LEN: usize = 192;
const SKB_PRIORITY: usize = 32;

fn setup(test: &str) -> Option<SharedLimits> {
    SharedLimits::on_lo(test)
}

fn spec(port: u16, dir: DirSel, action: Action, ecn: bool) -> RuleSpec {
    RuleSpec {
        key: RuleKey {
            ports: PortRange::single(port),
            side: Side::Local,
            dir,
            proto: ProtoSel::Any,
            iface: None,
        },
        rate_bps: RATE_BPS,
        burst_bytes: Some(BURST),
        action,
        ecn,
        per_remote: false,
        queue_bytes: None,
    }
}

/// The RFC 1071 checksum of an IPv4 header (0 over a header whose checksum field is right).
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP-over-IPv4 frame of `FRAME_LEN` bytes to `dst` with the ECN codepoint `ecn` and a valid
/// header checksum.
fn ipv4_frame(dst: u16, ecn: u8) -> Vec<u8> {
    let payload = vec![0u8; FRAME_LEN - ETH_HLEN - 20 - 8];
    let mut frame = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, &udp(40000, dst, &payload)),
    );
    frame[ETH_HLEN + 1] = 0xB8 | ecn; // DSCP EF, so a mark that touched the DSCP would show
    let checksum = ipv4_checksum(&frame[ETH_HLEN..ETH_HLEN + 20]);
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&checksum.to_be_bytes());
    assert_eq!(ipv4_checksum(&frame[ETH_HLEN..ETH_HLEN + 20]), 0);
    assert_eq!(frame.len(), FRAME_LEN);
    frame
}

/// A UDP-over-IPv6 frame of `FRAME_LEN` bytes to `dst` with the ECN codepoint `ecn`.
fn ipv6_frame(dst: u16, ecn: u8) -> Vec<u8> {
    let payload = vec![0u8; FRAME_LEN - ETH_HLEN - 40 - 8];
    let mut frame = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(IPPROTO_UDP, &udp(40000, dst, &payload)),
    );
    // Traffic class = DSCP EF | ecn, split over the first two bytes of the header.
    let class = 0xB8 | ecn;
    frame[ETH_HLEN] = 0x60 | (class >> 4);
    frame[ETH_HLEN + 1] = class << 4;
    assert_eq!(frame.len(), FRAME_LEN);
    frame
}

fn ipv4_ecn(frame: &[u8]) -> u8 {
    frame[ETH_HLEN + 1] & 0b11
}

fn ipv6_ecn(frame: &[u8]) -> u8 {
    ((frame[ETH_HLEN] << 4) | (frame[ETH_HLEN + 1] >> 4)) & 0b11
}

struct Run {
    verdict: i32,
    frame: Vec<u8>,
    priority: u32,
}

fn run(classifier: &mut Classifier, direction: Direction, frame: &[u8]) -> Run {
    run_with_priority(classifier, direction, frame, 0)
}

/// [`run`] with `skb->priority` set to `priority` before the program sees the packet.
fn run_with_priority(
    classifier: &mut Classifier,
    direction: Direction,
    frame: &[u8],
    priority: u32,
) -> Run {
    let program = classifier.program_mut(direction).expect("program");
    let mut out = vec![0u8; frame.len() + 256];
    let mut context = vec![0u8; SKB_CONTEXT_LEN];
    let mut context_in = vec![0u8; SKB_CONTEXT_LEN];
    context_in[SKB_PRIORITY..SKB_PRIORITY + 4].copy_from_slice(&priority.to_ne_bytes());
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&context_in);
    opts.data_out = Some(&mut out);
    opts.ctx_out = Some(&mut context);
    let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
    let len = result.data_size_out as usize;
    out.truncate(len);
    let priority = u32::from_ne_bytes(
        context[SKB_PRIORITY..SKB_PRIORITY + 4]
            .try_into()
            .expect("4 bytes"),
    );
    Run {
        verdict: result.return_value as i32,
        frame: out,
        priority,
    }
}

/// Sends `frame` until the bucket drops it; returns the ECN codepoints of the passed packets,
/// in order, read with `ecn_of`.
fn codepoints_until_dropped(
    setup: &mut Setup,
    frame: &[u8],
    ecn_of: fn(&[u8]) -> u8,
    check: impl Fn(&[u8]),
) -> Vec<u8> {
    let mut codepoints = Vec::new();
    for _ in 0..PACKETS_PER_BURST + 10 {
        let r = run(&mut setup.classifier, Direction::Ingress, frame);
        if r.verdict == DROP {
            return codepoints;
        }
        assert_eq!(r.verdict, PASS);
        check(&r.frame);
        codepoints.push(ecn_of(&r.frame));
    }
    panic!("no drop after {} packets", codepoints.len());
}

/// The index of the first `CE` in `codepoints` and how many follow it, all CE.
fn first_mark(codepoints: &[u8], unmarked: u8) -> (usize, usize) {
    let first = codepoints
        .iter()
        .position(|&c| c == CE)
        .unwrap_or(codepoints.len());
    assert!(
        codepoints[..first].iter().all(|&c| c == unmarked),
        "{codepoints:?}"
    );
    assert!(
        codepoints[first..].iter().all(|&c| c == CE),
        "{codepoints:?}"
    );
    (first, codepoints.len() - first)
}

#[test]
fn an_ecn_rule_marks_ect_ipv4_below_half_the_burst_with_a_valid_checksum_and_drops_when_empty() {
    let Some(mut shared) = setup("ecn-v4") else {
        return;
    };
    let s = &mut *shared;
    let view = s.set(spec(9090, DirSel::Both, Action::Drop, true), "set");
    assert!(view.ecn);
    let frame = ipv4_frame(9090, ECT_0);
    let codepoints = codepoints_until_dropped(s, &frame, ipv4_ecn, |out| {
        assert_eq!(ipv4_checksum(&out[ETH_HLEN..ETH_HLEN + 20]), 0, "checksum");
        assert_eq!(out[ETH_HLEN + 1] & !0b11, 0xB8, "DSCP untouched");
    });
    let (first, marked) = first_mark(&codepoints, ECT_0);
    println!("ECT(0) over IPv4: {first} passed unmarked, {marked} marked CE, then dropped");
    assert_eq!(first as u64, UNMARKED);
    assert_eq!(marked as u64, PACKETS_PER_BURST - UNMARKED);
    let r = s.rule(view.id);
    assert_eq!(
        (r.passed_packets, r.marked_packets, r.dropped_packets),
        (PACKETS_PER_BURST, PACKETS_PER_BURST - UNMARKED, 1)
    );
    assert_eq!(
        r.marked_bytes,
        (PACKETS_PER_BURST - UNMARKED) * FRAME_LEN as u64
    );
}

#[test]
fn an_ecn_rule_marks_ect_1_ipv6_below_half_the_burst() {
    let Some(mut shared) = setup("ecn-v6") else {
        return;
    };
    let s = &mut *shared;
    let view = s.set(spec(9091, DirSel::Both, Action::Drop, true), "set");
    let frame = ipv6_frame(9091, ECT_1);
    let codepoints = codepoints_until_dropped(s, &frame, ipv6_ecn, |out| {
        assert_eq!(out[ETH_HLEN] >> 4, 6, "IP version untouched");
    });
    let (first, marked) = first_mark(&codepoints, ECT_1);
    assert_eq!(first as u64, UNMARKED);
    assert_eq!(marked as u64, PACKETS_PER_BURST - UNMARKED);
    assert_eq!(s.rule(view.id).marked_packets, PACKETS_PER_BURST - UNMARKED);
}

#[test]
fn an_ecn_rule_never_marks_not_ect_packets_and_drops_them_only_when_empty() {
    let Some(mut shared) = setup("ecn-not-ect") else {
        return;
    };
    let s = &mut *shared;
    let view = s.set(spec(9092, DirSel::Both, Action::Drop, true), "set");
    for frame in [ipv4_frame(9092, NOT_ECT), ipv6_frame(9092, NOT_ECT)] {
        let codepoints = codepoints_until_dropped(s, &frame, |f| f[ETH_HLEN + 1], |_| {});
        // The whole byte after the run equals the byte before it: nothing was marked.
        assert!(codepoints.iter().all(|&b| b == frame[ETH_HLEN + 1]));
        // The first frame kind emptied the bucket; the second is dropped at once.
        let r = s.rule(view.id);
        assert_eq!(r.marked_packets, 0);
        assert_eq!(r.passed_packets, PACKETS_PER_BURST);
    }
}

#[test]
fn a_drop_rule_without_ecn_never_marks() {
    let Some(mut shared) = setup("no-ecn") else {
        return;
    };
    let s = &mut *shared;
    let view = s.set(spec(9093, DirSel::Both, Action::Drop, false), "set");
    let frame = ipv4_frame(9093, ECT_0);
    let codepoints = codepoints_until_dropped(s, &frame, ipv4_ecn, |_| {});
    assert_eq!(codepoints.len() as u64, PACKETS_PER_BURST);
    assert!(codepoints.iter().all(|&c| c == ECT_0));
    assert_eq!(s.rule(view.id).marked_packets, 0);
}

#[test]
fn a_shape_rule_names_its_htb_class_in_skb_priority_on_egress_and_never_drops() {
    common::root_or_skip!();
    // In a namespace of its own, with a classifier of its own: a shape rule puts shaper's HTB
    // root on every interface registered, which must be this test's veth end and the `lo` of
    // its namespace (where it looks with `tc`), not the `lo` the shared classifier was
    // registered on, that of the namespace the tests run in.
    let pair = common::test_veth_pair!();
    let iface = pair.a_if.clone();
    pair.a.within(|| {
        // BPF_PROG_TEST_RUN runs a packet on the namespace's loopback device.
        let mut s = Setup::load("marks-shape", &[&iface, "lo"]);
        let view = s.set(spec(9094, DirSel::Egress, Action::Shape, false), "set");
        // Egress: the local port is the source port.
        let payload = vec![0u8; FRAME_LEN - ETH_HLEN - 20 - 8];
        let frame = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, &udp(9094, 40000, &payload)),
        );
        let class = shaper_common::shape_class_id(u32::from(view.id));
        assert_eq!(class >> 16, 0x5348);
        for dev in ["lo", iface.as_str()] {
            let classes = tc(&["class", "show", "dev", dev]);
            assert!(
                classes.contains(&format!("class htb 5348:{:x} root", view.id)),
                "{dev}: {classes}"
            );
        }
        // Twice a burst: the bucket plays no part, every packet passes into the class.
        for _ in 0..2 * PACKETS_PER_BURST {
            let r = run(&mut s.classifier, Direction::Egress, &frame);
            assert_eq!((r.verdict, r.priority), (PASS, class));
        }
        let r = s.rule(view.id);
        assert_eq!(
            (r.passed_packets, r.dropped_packets),
            (2 * PACKETS_PER_BURST, 0)
        );
        // Another port's packet keeps its priority, but for a class of shaper's left by the
        // ingress of a forwarded packet, which is cleared.
        let other = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, &udp(9095, 40000, &payload)),
        );
        for (before, after) in [(0, 0), (6, 6), (0x0001_0005, 0x0001_0005), (class, 0)] {
            let r = run_with_priority(&mut s.classifier, Direction::Egress, &other, before);
            assert_eq!(
                (r.verdict, r.priority),
                (PASS, after),
                "priority {before:#x}"
            );
        }
        s.limits
            .remove(&mut s.classifier, &view.key())
            .expect("remove");
        for dev in ["lo", iface.as_str()] {
            let qdiscs = tc(&["qdisc", "show", "dev", dev, "root"]);
            assert!(qdiscs.contains("noqueue 0: root"), "{dev}: {qdiscs}");
        }
    });
}

#[test]
fn bad_combinations_of_action_and_options_are_refused() {
    let Some(mut shared) = setup("shape-refused") else {
        return;
    };
    let s = &mut *shared;
    let refusal =
        |s: &mut Setup, spec: RuleSpec| match s.limits.set(&mut s.classifier, spec, test_actor()) {
            Err(PolicyError::ActionOption(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        };
    assert!(matches!(
        refusal(s, spec(9096, DirSel::Both, Action::Observe, true)),
        ActionOptionError::EcnNeedsDrop { .. }
    ));
    let queue_on_drop = RuleSpec {
        queue_bytes: Some(1 << 20),
        ..spec(9096, DirSel::Both, Action::Drop, false)
    };
    assert!(matches!(
        refusal(s, queue_on_drop),
        ActionOptionError::QueueNeedsShape { .. }
    ));
    assert!(s.limits.list(&s.classifier).is_empty());
}

/// `tc ARGS` in the calling thread's namespace; its stdout.
fn tc(args: &[&str]) -> String {
    let output = std::process::Command::new("tc")
        .args(args)
        .output()
        .expect("run tc");
    assert!(output.status.success(), "tc {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
