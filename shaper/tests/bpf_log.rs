//! The program's aya-log lines: the real classifier under BPF_PROG_TEST_RUN, a frame taking a
//! logged rare path, its line read back from the object's `AYA_LOGS` ring buffer.

mod common;

use std::sync::{Arc, Mutex};

use common::packet::*;
use common::test_run;
use shaper::{Classifier, Direction, datapath::bpf_log};
use shaper_common::{MAX_IPV6_EXT_HEADERS, log_level};

/// A logger that keeps every record it is given: (level, text).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(log::Level, String)>>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .expect("capture")
            .push((record.level(), record.args().to_string()));
    }

    fn flush(&self) {}
}

impl Captured {
    fn take(&self) -> Vec<(log::Level, String)> {
        std::mem::take(&mut *self.0.lock().expect("capture"))
    }
}

/// An IPv6 UDP frame behind one Destination Options header more than the walk takes.
fn over_the_walk() -> Vec<u8> {
    udp_behind_dstopts(MAX_IPV6_EXT_HEADERS as usize + 1)
}

fn run(classifier: &mut Classifier, frame: &[u8]) {
    test_run::passes(classifier, Direction::Ingress, frame);
}

#[test]
fn a_rare_path_logs_its_line_at_debug_and_nothing_at_info() {
    common::root_or_skip!();
    let mut classifier = test_run::on_loopback();
    let captured = Captured::default();
    let mut reader = bpf_log::reader(&mut classifier, captured.clone()).expect("AYA_LOGS");

    // Off (as loaded): nothing.
    run(&mut classifier, &over_the_walk());
    reader.flush();
    assert_eq!(captured.take(), []);

    bpf_log::set_level(&mut classifier, log_level::DEBUG).expect("set debug");
    run(&mut classifier, &over_the_walk());
    // (60: the ninth Destination Options header.) A common packet logs nothing, whatever the
    // level.
    run(
        &mut classifier,
        &ethernet(&[], ETH_P_IP, &ipv4(IPPROTO_UDP, &udp(1, 2, b"x"))),
    );
    reader.flush();
    let lines = captured.take();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].0, log::Level::Debug);
    assert_eq!(
        lines[0].1,
        format!(
            "IPv6 extension header chain longer than {MAX_IPV6_EXT_HEADERS}: next header 60 not \
             walked"
        )
    );

    bpf_log::set_level(&mut classifier, log_level::INFO).expect("set info");
    run(&mut classifier, &over_the_walk());
    reader.flush();
    assert_eq!(captured.take(), []);
}
