//! The token bucket in the real classifier, driven with BPF_PROG_TEST_RUN: each packet's verdict
//! is the program's return value, and the counters must agree with the verdicts to the packet.
//!
//! Rules are set through [`Limits`], the daemon's own path (validation, state file, map writes).
//! The rate is 128 B/s, so the time the test itself takes refills a negligible amount and the
//! burst and refill are exact packet counts.
//!
//! The tests share one loaded classifier ([`SharedLimits`]), taking turns: loading it (creating
//! the maps, verifying both programs) is nearly all of a test's time, about 5 s in a TCG guest
//! of the kernel matrix. Each test starts with no rules and removes its own, even when it fails;
//! a new rule gets a fresh id with zeroed counters and a full burst, so rule counters and
//! bursts are exact, while the port counters hold every earlier test's packets and are read as
//! differences ([`port_dropped_since`]).

mod common;

use std::time::Duration;

use common::limits_fixture::{LimitsFixture as Setup, SharedLimits, test_actor};
use common::packet::*;
use common::test_run;
use shaper::{
    Classifier, Direction,
    policy::rule_table::{Action, DirSel, PortRange, ProtoSel, RuleKey, RuleSpec, Side},
};

/// TC_ACT_UNSPEC (pass on) and TC_ACT_SHOT.
const PASS: i32 = -1;
const DROP: i32 = 2;

const RATE_BPS: u64 = 1024; // 128 bytes per second
/// 1 byte per second: a frame takes two minutes to refill.
const SLOW_BPS: u64 = 8;
const BURST: u64 = 192 * 1024;
const FRAME_LEN: usize = 128;

fn setup(test: &str) -> Option<SharedLimits> {
    SharedLimits::on_lo(test)
}

fn key(ports: &str) -> RuleKey {
    RuleKey {
        ports: ports.parse::<PortRange>().unwrap(),
        side: Side::Local,
        dir: DirSel::Both,
        proto: ProtoSel::Any,
        iface: None,
    }
}

fn spec(key: RuleKey, action: Action) -> RuleSpec {
    RuleSpec {
        key,
        rate_bps: RATE_BPS,
        burst_bytes: Some(BURST),
        action,
        ecn: false,
        per_remote: false,
        queue_bytes: None,
    }
}

/// A UDP frame of exactly `FRAME_LEN` bytes from `src` to `dst`.
fn udp_frame(src: u16, dst: u16) -> Vec<u8> {
    let payload = vec![0u8; FRAME_LEN - ETH_HLEN - 20 - 8];
    let frame = ethernet(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &udp(src, dst, &payload)));
    assert_eq!(frame.len(), FRAME_LEN);
    frame
}

fn verdict(classifier: &mut Classifier, direction: Direction, frame: &[u8]) -> i32 {
    test_run::run(classifier, direction, frame, None)
}

/// Runs `frame` until the first packet that does not get `PASS` (at most `limit` runs); returns
/// how many passed and the verdict that ended the run.
fn passes_until_limited(
    classifier: &mut Classifier,
    direction: Direction,
    frame: &[u8],
    limit: usize,
) -> (u64, i32) {
    for passed in 0..limit {
        let v = verdict(classifier, direction, frame);
        if v != PASS {
            return (passed as u64, v);
        }
    }
    (limit as u64, PASS)
}

/// Sends `frame` on ingress until the bucket refuses one (at most a burst and a few more).
fn drain_burst(classifier: &mut Classifier, frame: &[u8]) -> (u64, i32) {
    passes_until_limited(
        classifier,
        Direction::Ingress,
        frame,
        PACKETS_PER_BURST as usize + 10,
    )
}

fn port_dropped(setup: &Setup, direction: Direction, port: u16) -> (u64, u64) {
    let v = setup
        .classifier
        .port_verdicts(0, direction, shaper_common::PROTO_UDP, port);
    (v.dropped.packets, v.would_drop.packets)
}

/// The port's dropped and would-drop packets since `before` (its [`port_dropped`] at the start
/// of the test: the shared classifier's port counters hold the earlier tests' packets too).
fn port_dropped_since(
    setup: &Setup,
    direction: Direction,
    port: u16,
    before: (u64, u64),
) -> (u64, u64) {
    let (dropped, would_drop) = port_dropped(setup, direction, port);
    (dropped - before.0, would_drop - before.1)
}

const PACKETS_PER_BURST: u64 = BURST / FRAME_LEN as u64;

#[test]
fn a_bursts_worth_passes_then_the_next_packet_is_dropped_and_counted() {
    let Some(mut shared) = setup("burst_then_drop") else {
        return;
    };
    let s = &mut *shared;
    let port_before = port_dropped(s, Direction::Ingress, 9090);
    let rule_view = s.set(spec(key("9090"), Action::Drop), "set");
    let frame = udp_frame(40000, 9090);
    let (passed, ended) = drain_burst(&mut s.classifier, &frame);
    assert_eq!(passed, PACKETS_PER_BURST, "exactly one burst passes");
    assert_eq!(ended, DROP);
    let r = s.rule(rule_view.id);
    assert_eq!(
        (
            r.passed_packets,
            r.passed_bytes,
            r.dropped_packets,
            r.dropped_bytes
        ),
        (PACKETS_PER_BURST, BURST, 1, FRAME_LEN as u64)
    );
    assert_eq!(r.would_drop_packets, 0);
    assert_eq!(
        port_dropped_since(s, Direction::Ingress, 9090, port_before),
        (1, 0)
    );
    // The other direction has its own bucket: egress from local port 9090 still passes.
    let reply = udp_frame(9090, 40000);
    assert_eq!(verdict(&mut s.classifier, Direction::Egress, &reply), PASS);
    // Another port has no rule.
    assert_eq!(
        verdict(&mut s.classifier, Direction::Ingress, &udp_frame(1, 9091)),
        PASS
    );
}

/// Seconds since boot (`/proc/uptime`'s first field), rounded up.
fn uptime_secs() -> u64 {
    let uptime = std::fs::read_to_string("/proc/uptime").expect("read /proc/uptime");
    let secs: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("/proc/uptime: {uptime:?}"));
    secs.ceil() as u64
}

/// A bucket is full when its rule is installed, however long the machine has been up: the
/// rule's fill time (burst / rate) is made twice the current uptime, so a bucket that filled
/// only with the time since boot would hold half a burst at most.
#[test]
fn a_new_rule_whose_fill_time_exceeds_the_uptime_starts_with_a_full_burst() {
    let Some(mut shared) = setup("full_from_boot") else {
        return;
    };
    let s = &mut *shared;
    // 1 byte per second, so the bytes of burst are its fill time in seconds; the test's own
    // run time (seconds) refills less than one frame.
    let rate_bps = 8;
    let frames = (2 * uptime_secs()).max(BURST).div_ceil(FRAME_LEN as u64);
    let burst = frames * FRAME_LEN as u64;
    let rule_spec = RuleSpec {
        burst_bytes: Some(burst),
        rate_bps,
        ..spec(key("9090"), Action::Drop)
    };
    s.set(rule_spec, "set");
    let frame = udp_frame(40000, 9090);
    let (passed, ended) = passes_until_limited(
        &mut s.classifier,
        Direction::Ingress,
        &frame,
        frames as usize + 10,
    );
    println!(
        "uptime {} s, fill time {burst} s: {passed} of {frames} frames passed",
        uptime_secs()
    );
    assert_eq!((passed, ended), (frames, DROP), "exactly one burst passes");
}

#[test]
fn after_a_known_interval_the_refill_passes_exactly_its_worth() {
    let Some(mut shared) = setup("refill") else {
        return;
    };
    let s = &mut *shared;
    s.set(spec(key("9090"), Action::Drop), "set");
    let frame = udp_frame(40000, 9090);
    let (passed, _) = drain_burst(&mut s.classifier, &frame);
    assert_eq!(passed, PACKETS_PER_BURST);
    // 2.5 s at 128 B/s refills 320 bytes: two 128-byte frames, with half a frame of slack for
    // the time the test itself takes.
    std::thread::sleep(Duration::from_millis(2500));
    let (passed, ended) = passes_until_limited(&mut s.classifier, Direction::Ingress, &frame, 10);
    assert_eq!((passed, ended), (2, DROP));
}

/// Which clock a bucket reads, seen in the stamp a packet leaves in it: a rule whose fill time
/// spans 20 ticks or more is stamped with the last tick's time, exactly what userspace reads
/// from CLOCK_MONOTONIC_COARSE (`ktime::coarse_ns`: both read the timekeeper's `tkr_mono` as
/// of its last update, kernel/time/timekeeping.c); a rule that fills faster with the precise
/// clock, after it.
#[test]
fn a_bucket_reads_the_tick_only_when_its_fill_time_spans_twenty_ticks() {
    let Some(mut shared) = setup("clocks") else {
        return;
    };
    let s = &mut *shared;
    let tick_ns = shaper::datapath::ktime::tick_ns();
    assert!(tick_ns > 0, "the kernel reports its tick");
    // 128 B/s with 192 KiB fills in 1,536 s; 10 Gbit/s with 192 KiB in 157 µs.
    let coarse = s.set(spec(key("9090"), Action::Drop), "set the slow rule");
    let precise = s.set(
        RuleSpec {
            rate_bps: 10_000_000_000,
            ..spec(key("9091"), Action::Drop)
        },
        "set the fast rule",
    );
    // Both buckets were stamped when they were written, with the precise clock: a coarse
    // clock moves past that stamp (and so moves the stamp) at the next tick.
    std::thread::sleep(Duration::from_nanos(3 * tick_ns));
    for _ in 0..100 {
        let before = shaper::datapath::ktime::coarse_ns();
        assert_eq!(
            verdict(
                &mut s.classifier,
                Direction::Ingress,
                &udp_frame(40000, 9090)
            ),
            PASS
        );
        assert_eq!(
            verdict(
                &mut s.classifier,
                Direction::Ingress,
                &udp_frame(40000, 9091)
            ),
            PASS
        );
        if shaper::datapath::ktime::coarse_ns() != before {
            // A tick fell between the two readings: the stamps could be either tick's.
            continue;
        }
        let stamp = |id| {
            s.classifier
                .bucket(id, Direction::Ingress)
                .expect("read the bucket")
                .stamp_ns
        };
        assert_eq!(
            stamp(coarse.id),
            before,
            "the slow rule's bucket is stamped with the last tick"
        );
        let precise_stamp = stamp(precise.id);
        assert!(
            precise_stamp > before && precise_stamp <= shaper::datapath::ktime::monotonic_ns(),
            "the fast rule's bucket is stamped after the last tick: {precise_stamp} vs {before}"
        );
        return;
    }
    panic!("a tick fell between every pair of readings in 100 attempts");
}

#[test]
fn an_observe_rule_passes_everything_and_counts_would_drops() {
    let Some(mut shared) = setup("observe") else {
        return;
    };
    let s = &mut *shared;
    let port_before = port_dropped(s, Direction::Ingress, 9090);
    let rule_view = s.set(spec(key("9090"), Action::Observe), "set");
    let frame = udp_frame(40000, 9090);
    let extra = 5;
    for _ in 0..PACKETS_PER_BURST + extra {
        assert_eq!(verdict(&mut s.classifier, Direction::Ingress, &frame), PASS);
    }
    let r = s.rule(rule_view.id);
    assert_eq!(
        (
            r.passed_packets,
            r.dropped_packets,
            r.would_drop_packets,
            r.would_drop_bytes
        ),
        (PACKETS_PER_BURST, 0, extra, extra * FRAME_LEN as u64)
    );
    assert_eq!(
        port_dropped_since(s, Direction::Ingress, 9090, port_before),
        (0, extra)
    );
}

#[test]
fn a_single_port_rule_governs_its_port_inside_a_range_rule() {
    let Some(mut shared) = setup("precedence") else {
        return;
    };
    let s = &mut *shared;
    let range = s.set(spec(key("9000-9999"), Action::Drop), "set range");
    let single = s.set(spec(key("9090"), Action::Observe), "set single");
    assert_eq!(
        verdict(&mut s.classifier, Direction::Ingress, &udp_frame(1, 9090)),
        PASS
    );
    assert_eq!(
        verdict(&mut s.classifier, Direction::Ingress, &udp_frame(1, 9091)),
        PASS
    );
    assert_eq!(
        verdict(&mut s.classifier, Direction::Ingress, &udp_frame(1, 9999)),
        PASS
    );
    assert_eq!(s.rule(single.id).passed_packets, 1);
    assert_eq!(
        s.rule(range.id).passed_packets,
        2,
        "9091 and 9999 share the range's bucket"
    );
}

#[test]
fn a_remote_rule_matches_the_remote_port_and_a_local_rule_takes_precedence() {
    let Some(mut shared) = setup("remote") else {
        return;
    };
    let s = &mut *shared;
    let remote = RuleKey {
        side: Side::Remote,
        dir: DirSel::Egress,
        ..key("443")
    };
    let remote_rule = s.set(spec(remote, Action::Drop), "set remote");
    // Egress from local 40000 to remote 443: the remote rule.
    assert_eq!(
        verdict(&mut s.classifier, Direction::Egress, &udp_frame(40000, 443)),
        PASS
    );
    assert_eq!(s.rule(remote_rule.id).passed_packets, 1);
    // Ingress *to* local 443 is not the remote port 443.
    assert_eq!(
        verdict(
            &mut s.classifier,
            Direction::Ingress,
            &udp_frame(40000, 443)
        ),
        PASS
    );
    assert_eq!(s.rule(remote_rule.id).passed_packets, 1);
    // A rule on the local port wins over the remote one.
    let local = s.set(spec(key("40000"), Action::Drop), "set local");
    verdict(&mut s.classifier, Direction::Egress, &udp_frame(40000, 443));
    assert_eq!(s.rule(remote_rule.id).passed_packets, 1);
    assert_eq!(s.rule(local.id).passed_packets, 1);
}

#[test]
fn replacing_a_rule_keeps_its_counters_and_removing_it_passes_the_port_again() {
    let Some(mut shared) = setup("replace_rm") else {
        return;
    };
    let s = &mut *shared;
    let port_before = port_dropped(s, Direction::Ingress, 9090);
    // 1 and then 2 bytes a second: nothing refills a 128-byte frame in the time the test takes,
    // however slow the machine (under TCG a replacement alone took over the half second that
    // 256 B/s needs to refill one).
    let slow = |rate_bps| RuleSpec {
        rate_bps,
        ..spec(key("9090"), Action::Drop)
    };
    let (first, replaced) = s
        .limits
        .set(&mut s.classifier, slow(SLOW_BPS), test_actor())
        .expect("set");
    assert!(!replaced);
    let frame = udp_frame(40000, 9090);
    let (passed, _) = drain_burst(&mut s.classifier, &frame);
    assert_eq!(passed, PACKETS_PER_BURST);
    let (second, replaced) = s
        .limits
        .set(&mut s.classifier, slow(2 * SLOW_BPS), test_actor())
        .expect("replace");
    assert!(replaced);
    assert_eq!(second.id, first.id);
    assert_eq!(second.rate_bps, 2 * SLOW_BPS);
    assert_eq!(
        (second.passed_packets, second.dropped_packets),
        (PACKETS_PER_BURST, 1),
        "replacing keeps the counters"
    );
    // The bucket is kept too: still empty, so the next packet is dropped.
    assert_eq!(verdict(&mut s.classifier, Direction::Ingress, &frame), DROP);

    let removed = s
        .limits
        .remove(&mut s.classifier, &key("9090"))
        .expect("rm");
    assert_eq!(removed.dropped_packets, 2);
    for _ in 0..10 {
        assert_eq!(verdict(&mut s.classifier, Direction::Ingress, &frame), PASS);
    }
    // The port's own counters never went backwards and still hold the drops.
    assert_eq!(
        port_dropped_since(s, Direction::Ingress, 9090, port_before),
        (2, 0)
    );
    assert!(s.limits.list(&s.classifier).is_empty());
    let missing = s
        .limits
        .remove(&mut s.classifier, &key("9090"))
        .unwrap_err();
    assert!(missing.to_string().contains("no rule 9090"), "{missing}");
}

#[test]
fn a_refused_rule_changes_nothing() {
    let Some(mut shared) = setup("refused") else {
        return;
    };
    let s = &mut *shared;
    let kept = s.set(spec(key("9090"), Action::Drop), "set");
    let before = s.limits.list(&s.classifier);
    let saved = std::fs::read_to_string(&s.state).expect("state file");
    // lo hands the hooks 64 KiB aggregates, so 64 KiB is below the 192 KiB minimum.
    let too_small = RuleSpec {
        burst_bytes: Some(64 * 1024),
        ..spec(key("9090"), Action::Observe)
    };
    let err = s
        .limits
        .set(&mut s.classifier, too_small, test_actor())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("burst 64KiB") && err.contains("192KiB"),
        "{err}"
    );
    let other_iface = RuleKey {
        iface: Some("eth-not-attached".into()),
        ..key("9090")
    };
    let err = s
        .limits
        .set(
            &mut s.classifier,
            spec(other_iface, Action::Drop),
            test_actor(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("eth-not-attached") && err.contains("lo"),
        "{err}"
    );
    assert_eq!(s.limits.list(&s.classifier), before);
    assert_eq!(
        std::fs::read_to_string(&s.state).expect("state file"),
        saved
    );
    assert_eq!(s.rule(kept.id).action, Action::Drop);
}
