//! The daemon's capabilities after attaching: exactly the documented set on every thread of the
//! real `shaper run`, and everything the running daemon does still works with it — `stats`
//! naming the owners of sockets held by a root process and by another user's process, `limit
//! set|ls|rm`, a scrape with its attach check, and a clean SIGTERM that leaves nothing attached
//! — once with tcx and once with clsact.

mod common;

use std::{
    net::{SocketAddr, TcpListener},
    os::{fd::OwnedFd, unix::process::CommandExt as _},
    process::{Child, Command, Stdio},
};

use aya::programs::{SchedClassifier, TcAttachType};
use common::{
    daemon::Daemon,
    metrics::{get, samples, series},
    netns::{InNamespace as _, VethPair, veth_pair},
};
use shaper::{
    daemon::capabilities::{keep_mask, kept_after_attach, status_mask},
    datapath::classifier::Proto,
    telemetry::listening_sockets::Owners,
};

/// The guide's page that quotes both masks (docs/src/guide/security.md, *Privileges*).
const SECURITY_PAGE: &str = include_str!("../../docs/src/guide/security.md");

/// `CapEff` of the daemon after attaching, as measured and quoted in the guide's *Privileges*.
const KEPT_MASK: u64 = 0x0000_0000_0008_1004;

/// `CapEff` with `--no-owner-names`: CAP_NET_ADMIN alone.
const KEPT_MASK_UNNAMED: u64 = 0x0000_0000_0000_1000;

/// Debian's `nobody`.
const NOBODY: u32 = 65534;

#[test]
fn tcx_daemon_keeps_only_the_documented_capabilities_and_still_does_its_job() {
    common::root_or_skip!();
    keeps_only_the_documented_set("tcx", "pt");
}

#[test]
fn clsact_daemon_keeps_only_the_documented_capabilities_and_still_does_its_job() {
    common::root_or_skip!();
    keeps_only_the_documented_set("clsact", "pc");
}

fn keeps_only_the_documented_set(mode: &str, tag: &str) {
    assert_eq!(
        keep_mask(Owners::Named).0,
        KEPT_MASK,
        "docs/src/guide/security.md quotes {KEPT_MASK:#x}"
    );
    for mask in [KEPT_MASK, KEPT_MASK_UNNAMED] {
        assert!(
            SECURITY_PAGE.contains(&format!("CapEff {mask:016x}")),
            "docs/src/guide/security.md no longer quotes CapEff {mask:016x}"
        );
    }
    let pair = veth_pair(tag);
    // Sockets the daemon did not open and the test does not hold: owned by a root process (with
    // every capability, so reading its fds needs CAP_SYS_PTRACE) and by `nobody` (whose
    // /proc/PID/fd needs CAP_DAC_READ_SEARCH as well).
    let root_held = Holder::spawn(&pair, None);
    let nobody_held = Holder::spawn(&pair, Some(NOBODY));
    let daemon = Daemon::start(&pair.a, tag, &["--iface", &pair.a_if, "--attach", mode]);
    assert_every_thread_holds_exactly(daemon.pid(), Owners::Named, "after start-up");

    let listening = daemon.stats().listening;
    for holder in [&root_held, &nobody_held] {
        assert!(
            listening
                .iter()
                .any(|l| l.proto == Proto::Tcp && l.port == holder.port && l.process == "sleep"),
            "{mode}: the owner of port {} (uid {}) was not found: {listening:?}\n{}",
            holder.port,
            holder.uid,
            daemon.log()
        );
    }

    daemon.cli_ok(&["limit", "set", "9090", "--rate", "10mbit"]);
    let rules = daemon.rules();
    assert_eq!(rules.len(), 1, "{mode}: {rules:?}");
    assert!(daemon.cli_ok(&["limit", "ls"]).contains("9090"));
    daemon.cli_ok(&["limit", "rm", "9090"]);
    assert!(daemon.rules().is_empty(), "{mode}: limit rm left a rule");

    let metrics: SocketAddr = "127.0.0.1:19350".parse().unwrap();
    let response = get(&pair.a, metrics, "/metrics", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let got = samples(&response.body);
    for direction in ["ingress", "egress"] {
        let labels = [
            ("iface", pair.a_if.as_str()),
            ("direction", direction),
            ("mode", mode),
        ];
        assert_eq!(
            got.get(&series("shaper_program_attached", &labels)),
            Some(&1.0),
            "{mode}: the scrape's attach check failed:\n{}",
            daemon.log()
        );
    }
    for holder in [&root_held, &nobody_held] {
        let port = holder.port.to_string();
        let labels = [
            ("proto", "tcp"),
            ("port", &port),
            ("process", "sleep"),
            ("scope", "any"),
        ];
        assert_eq!(
            got.get(&series("shaper_port_listening", &labels)),
            Some(&1.0),
            "{mode}: uid {}",
            holder.uid
        );
    }
    // The scrape ran on a thread of tokio's blocking pool, started after the cut.
    assert_every_thread_holds_exactly(daemon.pid(), Owners::Named, "after a scrape");

    let (status, log) = daemon.stop();
    assert!(status.success(), "{mode}: exit {status}:\n{log}");
    assert!(
        log.contains(
            "capabilities after attach: CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_SYS_PTRACE \
             (CapEff 0000000000081004)"
        ),
        "{log}"
    );
    assert!(!log.contains("WARN"), "{mode}: {log}");
    assert_nothing_attached(&pair, mode);
}

/// With `--no-owner-names` the daemon keeps CAP_NET_ADMIN alone, names no socket's process,
/// and still changes limits, serves scrapes and detaches its clsact filters when it stops.
#[test]
fn without_owner_names_the_daemon_keeps_cap_net_admin_alone() {
    common::root_or_skip!();
    assert_eq!(keep_mask(Owners::Unnamed).0, KEPT_MASK_UNNAMED);
    let pair = common::test_veth_pair!();
    let root_held = Holder::spawn(&pair, None);
    let daemon = Daemon::start(
        &pair.a,
        "pu",
        &[
            "--iface",
            &pair.a_if,
            "--attach",
            "clsact",
            "--no-owner-names",
        ],
    );
    assert_every_thread_holds_exactly(daemon.pid(), Owners::Unnamed, "after start-up");
    let listening = daemon.stats().listening;
    assert!(
        listening
            .iter()
            .any(|l| l.port == root_held.port && l.process == "unknown"),
        "{listening:?}"
    );
    assert!(
        listening.iter().all(|l| l.process == "unknown"),
        "a process was named: {listening:?}"
    );
    daemon.cli_ok(&["limit", "set", "9090", "--rate", "10mbit"]);
    assert_eq!(daemon.rules().len(), 1);
    let metrics: SocketAddr = "127.0.0.1:19350".parse().unwrap();
    let response = get(&pair.a, metrics, "/metrics", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let port = root_held.port.to_string();
    let labels = [
        ("proto", "tcp"),
        ("port", port.as_str()),
        ("process", "unknown"),
        ("scope", "any"),
    ];
    assert_eq!(
        samples(&response.body).get(&series("shaper_port_listening", &labels)),
        Some(&1.0)
    );
    assert_every_thread_holds_exactly(daemon.pid(), Owners::Unnamed, "after a scrape");
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("capabilities after attach: CAP_NET_ADMIN (CapEff 0000000000001000)"),
        "{log}"
    );
    assert!(!log.contains("WARN"), "{log}");
    assert_nothing_attached(&pair, "clsact");
}

/// `CapEff`, `CapPrm` and `CapBnd` of every thread are exactly what a daemon naming `owners`
/// keeps ([`KEPT_MASK`] or [`KEPT_MASK_UNNAMED`]); nothing is inheritable or ambient, and
/// no_new_privs is set.
fn assert_every_thread_holds_exactly(pid: u32, owners: Owners, when: &str) {
    let expected = match owners {
        Owners::Named => KEPT_MASK,
        Owners::Unnamed => KEPT_MASK_UNNAMED,
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("daemon's tasks");
    let mut threads = 0;
    for task in tasks {
        let path = task.expect("task").path().join("status");
        let status = std::fs::read_to_string(&path).expect("task status");
        let mask = |field| status_mask(&status, field).unwrap_or_else(|| panic!("{field}"));
        for field in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                mask(field),
                expected,
                "{when}: {field} of {} is {:#x}, not {expected:#x} ({})",
                path.display(),
                mask(field),
                kept_after_attach(owners)
                    .map(|k| k.cap.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        assert_eq!(mask("CapInh"), 0, "{when}: {}", path.display());
        assert_eq!(mask("CapAmb"), 0, "{when}: {}", path.display());
        assert!(
            status.lines().any(|l| l == "NoNewPrivs:\t1"),
            "{when}: {}",
            path.display()
        );
        threads += 1;
    }
    assert!(threads >= 1);
}

/// `sleep` holding a listening TCP socket in namespace `a` as its stdin: a process other than
/// the daemon and the test owns it. Killed on drop.
struct Holder {
    child: Child,
    port: u16,
    uid: u32,
}

impl Holder {
    fn spawn(pair: &VethPair, uid: Option<u32>) -> Self {
        let listener = pair
            .a
            .within(|| TcpListener::bind("0.0.0.0:0").expect("bind"));
        let port = listener.local_addr().expect("local addr").port();
        let mut command = Command::new("sleep");
        command
            .arg("120")
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::null());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let child = command.spawn().expect("spawn sleep");
        Self {
            child,
            port,
            uid: uid.unwrap_or(0),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_nothing_attached(pair: &VethPair, mode: &str) {
    let iface = pair.a_if.clone();
    let tcx = pair.a.within(|| {
        [TcAttachType::Ingress, TcAttachType::Egress].map(|hook| {
            SchedClassifier::query_tcx(&iface, hook)
                .expect("query tcx")
                .1
                .len()
        })
    });
    assert_eq!(tcx, [0, 0], "{mode}: tcx programs left on {iface}");
    for hook in ["ingress", "egress"] {
        let filters = pair.a.tc(&["filter", "show", "dev", &iface, hook]);
        assert!(
            filters.is_empty(),
            "{mode}: {hook} filters left:\n{filters}"
        );
    }
    let qdiscs = pair.a.tc(&["qdisc", "show", "dev", &iface]);
    assert!(
        !qdiscs.contains("clsact"),
        "{mode}: clsact qdisc left on {iface}:\n{qdiscs}"
    );
}
