//! The handshake tracker of the real classifier, run on hand-made segments with
//! BPF_PROG_TEST_RUN: which counter each flag moves, when a round trip is sampled, when it is
//! not, and what a full LRU loses.
//!
//! The tests share one loaded classifier ([`test_run::shared_on_loopback`]), taking turns:
//! loading it (creating the maps, verifying both programs) is nearly all of a test's time,
//! about 5 s in a TCG guest of the kernel matrix. So that what one test leaves in the maps
//! never shows in another, each test's server ports are its own (the per-port events and
//! histograms it reads, and the 4-tuples of its handshakes in the LRU), and the tracker's
//! totals, which count every port, are read as differences ([`tracking_since`]). The test that
//! fills the LRU loads a classifier of its own (see there).

mod common;

use common::packet::*;
use common::test_run;
use shaper::{
    Classifier, Direction,
    datapath::tcp_telemetry::{HandshakeTracking, PendingRepair, Repaired},
};
use shaper_common::{
    DIR_EGRESS, DIR_INGRESS, HANDSHAKE_ENTRIES, RTT_SIDE_CLIENT, RTT_SIDE_SERVER, TcpEvents,
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A TCP/IPv4 frame from `src` to `dst` with `flags`. `reply` swaps the IP addresses, so a
/// segment and its reply belong to the same 4-tuple seen from either end.
fn segment(src: u16, dst: u16, flags: u8, reply: bool) -> Vec<u8> {
    let mut tcp = tcp(src, dst, &[]);
    tcp[13] = flags;
    let mut ip = ipv4(IPPROTO_TCP, &tcp);
    if reply {
        let (a, b) = ip.split_at_mut(16);
        a[12..16].swap_with_slice(&mut b[..4]);
    }
    ethernet(&[], ETH_P_IP, &ip)
}

fn run(classifier: &mut Classifier, direction: Direction, frame: &[u8]) {
    test_run::passes(classifier, direction, frame);
}

fn events(classifier: &Classifier, direction: u32, port: u16) -> TcpEvents {
    classifier.port_counters().tcp().events(0, direction, port)
}

fn samples(classifier: &Classifier, side: u32, port: u16) -> u64 {
    let histogram = classifier.port_counters().tcp().histogram(0, side, port);
    histogram.buckets.iter().sum()
}

/// The tracker's totals: what it timed, measured and discarded, and the samples it lost, since
/// `before` (its totals when the test started); `in_flight` as it is now.
fn tracking_since(classifier: &Classifier, before: HandshakeTracking) -> HandshakeTracking {
    let now = classifier.handshake_tracking().expect("tracking");
    HandshakeTracking {
        timed: now.timed - before.timed,
        measured: now.measured - before.measured,
        discarded: now.discarded - before.discarded,
        in_flight: now.in_flight,
        lost: now.lost - before.lost,
    }
}

macro_rules! kernel_test {
    ($name:ident, $body:expr) => {
        test_run::classifier_test!($name, test_run::shared_on_loopback(), $body);
    };
}

kernel_test!(
    a_handshake_to_a_local_port_counts_each_flag_once_and_one_client_sample,
    |c| {
        let before = c.handshake_tracking().expect("tracking");
        run(c, Direction::Ingress, &segment(40000, 8443, SYN, false));
        run(c, Direction::Egress, &segment(8443, 40000, SYN | ACK, true));
        run(c, Direction::Ingress, &segment(40000, 8443, ACK, false));
        // Data and the close: ACKs after the handshake look nothing up and sample nothing.
        run(c, Direction::Ingress, &segment(40000, 8443, ACK, false));
        run(
            c,
            Direction::Ingress,
            &segment(40000, 8443, FIN | ACK, false),
        );
        run(c, Direction::Egress, &segment(8443, 40000, FIN | ACK, true));
        let ingress = events(c, DIR_INGRESS, 8443);
        let egress = events(c, DIR_EGRESS, 8443);
        assert_eq!(
            (ingress.syn, ingress.synack, ingress.fin, ingress.rst),
            (1, 0, 1, 0)
        );
        assert_eq!(
            (egress.syn, egress.synack, egress.fin, egress.rst),
            (0, 1, 1, 0)
        );
        assert_eq!(ingress.pending, 0, "the ACK ended the pending handshake");
        assert_eq!(samples(c, RTT_SIDE_CLIENT, 8443), 1);
        assert_eq!(samples(c, RTT_SIDE_SERVER, 40000), 0);
        let tracking = tracking_since(c, before);
        assert_eq!(
            (
                tracking.timed,
                tracking.measured,
                tracking.discarded,
                tracking.lost
            ),
            (1, 1, 0, 0)
        );
        // The client's ephemeral port has no events of its own.
        assert_eq!(events(c, DIR_INGRESS, 40000), TcpEvents::default());
    }
);

kernel_test!(a_retransmitted_synack_makes_no_sample, |c| {
    let before = c.handshake_tracking().expect("tracking");
    run(c, Direction::Ingress, &segment(40001, 8444, SYN, false));
    run(c, Direction::Egress, &segment(8444, 40001, SYN | ACK, true));
    run(c, Direction::Egress, &segment(8444, 40001, SYN | ACK, true));
    run(c, Direction::Ingress, &segment(40001, 8444, ACK, false));
    assert_eq!(events(c, DIR_EGRESS, 8444).synack, 2);
    assert_eq!(samples(c, RTT_SIDE_CLIENT, 8444), 0);
    let tracking = tracking_since(c, before);
    assert_eq!(
        (tracking.timed, tracking.measured, tracking.discarded),
        (1, 0, 1)
    );
    assert_eq!(events(c, DIR_INGRESS, 8444).pending, 0);
});

kernel_test!(a_syn_answered_by_a_reset_is_a_probe_of_the_port, |c| {
    run(c, Direction::Ingress, &segment(40002, 9999, SYN, false));
    run(c, Direction::Egress, &segment(9999, 40002, RST | ACK, true));
    let ingress = events(c, DIR_INGRESS, 9999);
    let egress = events(c, DIR_EGRESS, 9999);
    assert_eq!((ingress.syn, ingress.probes), (1, 1));
    assert_eq!((egress.rst, egress.synack), (1, 0));
    // A reset of an established connection is no probe.
    run(c, Direction::Egress, &segment(9999, 40003, RST | ACK, true));
    assert_eq!(events(c, DIR_INGRESS, 9999).probes, 1);
    assert_eq!(events(c, DIR_EGRESS, 9999).rst, 2);
});

kernel_test!(
    a_connection_this_host_opens_counts_under_the_servers_port_with_a_server_sample,
    |c| {
        run(c, Direction::Egress, &segment(40004, 5432, SYN, false));
        run(
            c,
            Direction::Ingress,
            &segment(5432, 40004, SYN | ACK, true),
        );
        run(c, Direction::Egress, &segment(40004, 5432, ACK, false));
        assert_eq!(events(c, DIR_EGRESS, 5432).syn, 1);
        assert_eq!(events(c, DIR_INGRESS, 5432).synack, 1);
        assert_eq!(samples(c, RTT_SIDE_SERVER, 5432), 1);
        assert_eq!(samples(c, RTT_SIDE_CLIENT, 40004), 0);
        // A retransmitted SYN: no sample from its SYN-ACK.
        run(c, Direction::Egress, &segment(40005, 5432, SYN, false));
        run(c, Direction::Egress, &segment(40005, 5432, SYN, false));
        run(
            c,
            Direction::Ingress,
            &segment(5432, 40005, SYN | ACK, true),
        );
        assert_eq!(events(c, DIR_EGRESS, 5432).syn, 3);
        assert_eq!(samples(c, RTT_SIDE_SERVER, 5432), 1);
    }
);

// On a classifier of its own: it fills the LRU (evicting whatever else it holds), and both the
// samples it counts as lost and the repair's passes (which walk every port) are the whole
// tracker's, so they are exact only on a tracker no other test has used.
test_run::classifier_test!(
    more_concurrent_handshakes_than_the_lru_holds_count_their_lost_samples,
    test_run::on_loopback(),
    |c| {
        // Each handshake's clock starts (SYN, SYN-ACK) before any ends: the oldest are evicted.
        let n = HANDSHAKE_ENTRIES + 4096;
        let remote = |i: u32| 1024 + i as u16;
        for i in 0..n {
            run(c, Direction::Ingress, &segment(remote(i), 8443, SYN, false));
            run(
                c,
                Direction::Egress,
                &segment(8443, remote(i), SYN | ACK, true),
            );
        }
        for i in 0..n {
            run(c, Direction::Ingress, &segment(remote(i), 8443, ACK, false));
        }
        let tracking = c.handshake_tracking().expect("tracking");
        let measured = samples(c, RTT_SIDE_CLIENT, 8443);
        assert_eq!(tracking.timed, u64::from(n));
        assert_eq!(tracking.measured, measured);
        assert_eq!(tracking.in_flight, 0);
        assert_eq!(tracking.measured + tracking.lost, u64::from(n));
        assert!(
            tracking.lost >= u64::from(n - HANDSHAKE_ENTRIES),
            "{tracking:?}"
        );
        assert!(tracking.measured > 0, "{tracking:?}");
        // The counters stay exact: every SYN and SYN-ACK counted.
        let counted = events(c, DIR_INGRESS, 8443);
        assert_eq!(counted.syn, u64::from(n));
        assert_eq!(
            c.port_counters().tcp().events(0, DIR_EGRESS, 8443).synack,
            u64::from(n)
        );
        // Each evicted handshake left the port's pending count raised: every later ACK to it
        // would look the LRU up. The repair takes them out once two passes agree.
        assert_eq!(counted.pending, tracking.lost);
        let mut repair = PendingRepair::new(PendingRepair::STALE_AFTER);
        let first = c.repair_pending(&mut repair).expect("first pass");
        assert_eq!(
            first,
            Repaired::default(),
            "an excess seen once is not trusted"
        );
        let second = c.repair_pending(&mut repair).expect("second pass");
        assert_eq!(
            second,
            Repaired {
                stale: 0,
                evicted: tracking.lost,
                ports: 1
            }
        );
        assert_eq!(events(c, DIR_INGRESS, 8443).pending, 0);
        assert_eq!(
            c.repair_pending(&mut repair).expect("third pass"),
            Repaired::default()
        );
    }
);

kernel_test!(
    a_handshake_whose_ack_never_comes_is_dropped_once_and_the_late_ack_counts_nothing,
    |c| {
        // The repair below removes every waiting handshake of every port: first those a failed
        // test may have left, so that it finds exactly this test's two.
        c.repair_pending(&mut PendingRepair::new(std::time::Duration::ZERO))
            .expect("clear what earlier tests left waiting");
        run(c, Direction::Ingress, &segment(40001, 8445, SYN, false));
        run(c, Direction::Egress, &segment(8445, 40001, SYN | ACK, true));
        run(c, Direction::Ingress, &segment(40002, 8445, SYN, false));
        run(c, Direction::Egress, &segment(8445, 40002, SYN | ACK, true));
        assert_eq!(events(c, DIR_INGRESS, 8445).pending, 2);
        // A repair that finds every waiting handshake stale (the daemon waits 75 s).
        let mut repair = PendingRepair::new(std::time::Duration::ZERO);
        assert_eq!(
            c.repair_pending(&mut repair).expect("pass"),
            Repaired {
                stale: 2,
                evicted: 0,
                ports: 0
            }
        );
        assert_eq!(events(c, DIR_INGRESS, 8445).pending, 0);
        // The late ACK and a late RST find nothing: no sample, and the count stays at zero
        // rather than going below it.
        run(c, Direction::Ingress, &segment(40001, 8445, ACK, false));
        run(c, Direction::Ingress, &segment(40002, 8445, RST, false));
        assert_eq!(events(c, DIR_INGRESS, 8445).pending, 0);
        assert_eq!(samples(c, RTT_SIDE_CLIENT, 8445), 0);
    }
);
