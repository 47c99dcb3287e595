//! `--per-remote` rules in the real classifier, under BPF_PROG_TEST_RUN: each remote address
//! drains a bucket of its own, in exact frames, where a shared bucket lets the first sender
//! take the limit from the next; the LRU's evictions and the buckets a rule takes with it are
//! counted exactly.
//!
//! Real senders on a veth are in `shaping.rs`.

mod common;

use common::limits_fixture::LimitsFixture;
use common::packet::*;
use common::test_run;
use shaper::{
    Direction,
    policy::rule_table::{Action, DirSel, PortRange, ProtoSel, RuleKey, RuleSpec, Side},
};
use shaper_common::MAX_REMOTE_BUCKETS;

/// TC_ACT_SHOT.
const DROP: i32 = 2;
/// TC_ACT_UNSPEC: passed on.
const PASS: i32 = -1;

fn rule(port: u16, per_remote: bool) -> RuleSpec {
    RuleSpec {
        key: RuleKey {
            ports: PortRange::single(port),
            side: Side::Local,
            dir: DirSel::Both,
            proto: ProtoSel::Udp,
            iface: None,
        },
        // 1 byte per second: the time a test takes refills less than a byte.
        rate_bps: 8,
        burst_bytes: None,
        action: Action::Drop,
        ecn: false,
        per_remote,
        queue_bytes: None,
    }
}

/// A UDP datagram of 1,000 payload bytes from `remote` to local port `port` (ingress), or
/// from local port `port` to `remote` (egress).
fn frame(direction: Direction, remote: [u8; 4], port: u16) -> Vec<u8> {
    let mut ip = match direction {
        Direction::Ingress => ipv4(IPPROTO_UDP, &udp(40000, port, &[0; 1000])),
        Direction::Egress => ipv4(IPPROTO_UDP, &udp(port, 40000, &[0; 1000])),
    };
    // Source at byte 12, destination at byte 16 (RFC 791 section 3.1).
    let at = if direction == Direction::Ingress {
        12
    } else {
        16
    };
    ip[at..at + 4].copy_from_slice(&remote);
    ethernet(&[], ETH_P_IP, &ip)
}

fn ipv6_frame(remote_last: u8, port: u16) -> Vec<u8> {
    let mut ip = ipv6(IPPROTO_UDP, &udp(40000, port, &[0; 1000]));
    // The source address, bytes 8..24 (RFC 8200 section 3).
    ip[23] = remote_last;
    ethernet(&[], ETH_P_IPV6, &ip)
}

/// The remote buckets' (inserted, live, forgotten, evicted).
fn totals(s: &LimitsFixture) -> (u64, u64, u64, u64) {
    let buckets = s
        .classifier
        .remote_buckets()
        .expect("read the remote buckets");
    (
        buckets.inserted,
        buckets.live,
        buckets.forgotten,
        buckets.evicted,
    )
}

/// How many copies of `frame` pass before the first is dropped (at most 10,000).
fn passed_until_dropped(s: &mut LimitsFixture, direction: Direction, frame: &[u8]) -> u64 {
    for passed in 0..10_000 {
        match test_run::run(&mut s.classifier, direction, frame, None) {
            PASS => continue,
            DROP => return passed,
            other => panic!("unexpected verdict {other}"),
        }
    }
    panic!("10,000 frames passed an 8 bit/s rule: it does not drain");
}

#[test]
fn each_remote_drains_a_bucket_of_its_own_in_exact_frames() {
    common::root_or_skip!();
    let mut s = LimitsFixture::load("per-remote-buckets", &["lo"]);
    let shared = s.set(rule(7800, false), "set the shared rule");
    let per_remote = s.set(rule(7801, true), "set the per-remote rule");
    assert!(per_remote.per_remote && !shared.per_remote);
    // Every bucket starts full: the burst holds this many whole frames.
    let wire = frame(Direction::Ingress, [10, 0, 0, 1], 7800).len() as u64;
    let burst_frames = shared.burst_bytes / wire;

    // The shared bucket: the first sender takes it all, the second gets nothing.
    let a = passed_until_dropped(
        &mut s,
        Direction::Ingress,
        &frame(Direction::Ingress, [10, 0, 0, 1], 7800),
    );
    let b = passed_until_dropped(
        &mut s,
        Direction::Ingress,
        &frame(Direction::Ingress, [10, 0, 0, 2], 7800),
    );
    assert_eq!((a, b), (burst_frames, 0), "one bucket for every sender");

    // Per remote: each sender (IPv4 or IPv6, ingress or egress) gets a whole burst, and a
    // drained sender stays drained while the next one passes.
    let senders = [
        (
            Direction::Ingress,
            frame(Direction::Ingress, [10, 0, 0, 1], 7801),
        ),
        (
            Direction::Ingress,
            frame(Direction::Ingress, [10, 0, 0, 2], 7801),
        ),
        (Direction::Ingress, ipv6_frame(7, 7801)),
        (
            Direction::Egress,
            frame(Direction::Egress, [10, 0, 0, 1], 7801),
        ),
    ];
    let mut passed = (0, 0);
    for (direction, sent) in &senders {
        // Each frame's wire bytes are charged: an IPv6 one is 20 bytes longer.
        let whole = per_remote.burst_bytes / sent.len() as u64;
        assert_eq!(
            passed_until_dropped(&mut s, *direction, sent),
            whole,
            "a whole burst for each remote and direction"
        );
        passed = (passed.0 + whole, passed.1 + whole * sent.len() as u64);
    }
    for (direction, sent) in &senders {
        assert_eq!(
            test_run::run(&mut s.classifier, *direction, sent, None),
            DROP
        );
    }
    let view = s.rule(per_remote.id);
    assert_eq!(
        (view.passed_packets, view.passed_bytes, view.dropped_packets),
        (passed.0, passed.1, 8),
        "one set of counters for the rule, every remote's packets in it"
    );
    assert_eq!(view.remote_buckets, 4);
    assert_eq!(totals(&s), (4, 4, 0, 0));

    // Without --per-remote the rule takes its buckets with it; with it again, each remote
    // starts full.
    let mut changed = rule(7801, false);
    changed.burst_bytes = Some(per_remote.burst_bytes);
    s.set(changed, "drop --per-remote");
    assert_eq!(
        totals(&s),
        (4, 0, 4, 0),
        "deleted with the flag, not evicted"
    );
    s.set(rule(7801, true), "--per-remote again");
    let again = frame(Direction::Ingress, [10, 0, 0, 1], 7801);
    assert_eq!(
        passed_until_dropped(&mut s, Direction::Ingress, &again),
        burst_frames
    );
}

/// A remote-port rule (say, on the DNS servers' port 53) shared one bucket between every
/// server: the first to answer a lot drained it for the others. Per remote, each has its own.
#[test]
fn a_remote_port_rule_keeps_a_bucket_per_remote_too() {
    common::root_or_skip!();
    let mut s = LimitsFixture::load("per-remote-remote-port", &["lo"]);
    let spec = RuleSpec {
        key: RuleKey {
            side: Side::Remote,
            ..rule(7803, true).key
        },
        ..rule(7803, true)
    };
    let view = s.set(spec, "set the remote-port rule");
    // Answers from remote port 7803 to a local port no rule names, from two servers.
    let answer = |server: [u8; 4]| {
        let mut ip = ipv4(IPPROTO_UDP, &udp(7803, 40000, &[0; 1000]));
        ip[12..16].copy_from_slice(&server);
        ethernet(&[], ETH_P_IP, &ip)
    };
    let whole = view.burst_bytes / answer([10, 0, 0, 1]).len() as u64;
    for server in [[10, 0, 0, 1], [10, 0, 0, 2]] {
        assert_eq!(
            passed_until_dropped(&mut s, Direction::Ingress, &answer(server)),
            whole,
            "each server drains a burst of its own"
        );
    }
    assert_eq!(s.rule(view.id).remote_buckets, 2);
}

#[test]
fn the_lru_evictions_are_counted_exactly() {
    common::root_or_skip!();
    let mut s = LimitsFixture::load("per-remote-evictions", &["lo"]);
    let mut spec = rule(7802, true);
    spec.rate_bps = 1_000_000_000;
    let id = s.set(spec, "set the rule").id;
    let remotes = MAX_REMOTE_BUCKETS + 2_000;
    for n in 0..remotes {
        let [_, hi, mid, lo] = n.to_be_bytes();
        let sent = frame(Direction::Ingress, [10, hi, mid, lo], 7802);
        assert_eq!(
            test_run::run(&mut s.classifier, Direction::Ingress, &sent, None),
            PASS
        );
    }
    let (inserted, live, forgotten, evicted) = totals(&s);
    println!("{remotes} remotes: {inserted} buckets inserted, {live} live, {evicted} evicted");
    assert_eq!(inserted, u64::from(remotes), "a bucket per new remote");
    assert!(live <= u64::from(MAX_REMOTE_BUCKETS), "{live} live");
    // The map is full: at least the remotes beyond its size were evicted, and every bucket
    // the program inserted is either in the map or counted as evicted.
    assert!(evicted >= 2_000, "{evicted} evicted");
    assert_eq!((forgotten, live + evicted), (0, inserted));
    assert_eq!(s.rule(id).passed_packets, u64::from(remotes));

    // Removing the rule deletes what is left, which is not an eviction.
    s.limits
        .remove(&mut s.classifier, &rule(7802, true).key)
        .expect("remove the rule");
    assert_eq!(totals(&s), (inserted, 0, live, evicted));
}
