//! The running kernel as the datapath meets it: what loading costs its verifier, and the floor.
//!
//! These run on the build machine and on every kernel of the VM test bed (`cargo xtask vm`),
//! which reads the `verifier-stats:` lines into the book's kernel table (docs/src/guide/prerequisites.md).

mod common;

use std::time::{Duration, Instant};

use common::netns::InNamespace as _;
use shaper::datapath::{classifier::Classifier, kernel_support};

#[test]
fn both_programs_verify_and_report_what_the_verifier_processed() {
    common::root_or_skip!();
    if kernel_support::check().is_err() {
        eprintln!("below the floor: the refusal test covers this kernel");
        return;
    }
    let classifier = Classifier::load(1).unwrap_or_else(|e| panic!("{}", shaper::error::chain(&e)));
    let verified = classifier.verified();
    assert_eq!(verified.len(), 2, "{verified:?}");
    for program in verified {
        // One line per program for `cargo xtask vm`, which collects them per kernel.
        println!(
            "verifier-stats: {}",
            serde_json::to_string(program).expect("serialize")
        );
        // verified_insns exists from Linux 5.16 (commit aba64c7da983), below every kernel
        // that passes the floor check; the verifier gives up at 1,000,000.
        let insns = program.verified_insns.expect("verified_insns reported");
        assert!(insns > 100 && insns < 1_000_000, "{program:?}");
        assert!(program.load_ms > 0.0, "{program:?}");
    }
}

/// On a kernel below the floor (Debian 11's 5.10 in the test bed), `shaper run` names the kernel
/// and the missing feature within a second and leaves nothing pinned or attached; on any other
/// kernel the same start succeeds.
#[test]
fn below_the_floor_the_start_is_refused_at_once_naming_the_kernel_and_the_missing_feature() {
    let pair = common::test_veth_pair!();
    let pin_base = common::daemon::pin_base();
    let socket = std::env::temp_dir().join(format!("shaper-test-{}-k.sock", std::process::id()));
    let state = std::env::temp_dir().join(format!("shaper-test-{}-k.json", std::process::id()));
    match kernel_support::check() {
        Ok(()) => {
            let daemon = common::daemon::Daemon::on(&pair, &[]);
            let (status, log) = daemon.stop();
            assert!(status.success(), "{log}");
            println!(
                "kernel {} is above the floor: the daemon started",
                kernel_support::release()
            );
        }
        Err(expected) => {
            let started = Instant::now();
            let output = pair
                .a
                .command(common::daemon::SHAPER)
                .arg("--socket")
                .arg(&socket)
                .args(["run", "--metrics-addr", "off", "--iface", &pair.a_if])
                .arg("--state")
                .arg(&state)
                .arg("--pin-dir")
                .arg(&pin_base)
                .output()
                .expect("run shaper");
            let took = started.elapsed();
            let stderr = String::from_utf8_lossy(&output.stderr);
            println!("refused in {} ms: {stderr}", took.as_millis());
            assert!(!output.status.success(), "{stderr}");
            assert!(took < Duration::from_secs(1), "took {took:?}: {stderr}");
            assert!(stderr.contains(&kernel_support::release()), "{stderr}");
            assert!(stderr.contains(&expected.to_string()), "{stderr}");
            // Nothing pinned, no qdisc, no filter, no socket.
            let pinned: Vec<_> = std::fs::read_dir(&pin_base)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(pinned.is_empty(), "{pinned:?}");
            let qdiscs = pair.a.tc(&["qdisc", "show", "dev", &pair.a_if]);
            assert!(!qdiscs.contains("clsact"), "{qdiscs}");
            assert!(!socket.exists());
        }
    }
    let _ = std::fs::remove_file(&state);
}
