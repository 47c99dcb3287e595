//! The real daemon's control socket under abuse: 32 connections at once sending random,
//! truncated, oversized (> 64 KiB), fragmented, pipelined and half-closed requests, and requests
//! that parse but are refused, while one ordered client changes rules with valid
//! `limit set`/`limit rm` requests. The daemon must answer every complete line of every
//! connection as documented, never stop serving, and end with exactly the rules the ordered
//! client's changes leave, in order, as a model of them predicts; a restarted daemon resumes them.

mod common;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::Shutdown,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::daemon::Daemon;
use shaper::{
    control::{self, MAX_REQUEST_BYTES, Request, Response},
    policy::rule_table::{Action, DirSel, PortRange, ProtoSel, RuleKey, RuleSpec, Side},
};

/// Connections sending abuse at once.
const CHAOS_THREADS: usize = 32;
/// Changes the ordered client makes: all of them, or as many as fit in `CHANGES_TIME` but at
/// least `MIN_CHANGES` (the abuse slows the daemon down, more so on a busy machine).
const CHANGES: usize = 300;
const MIN_CHANGES: usize = 100;
const CHANGES_TIME: Duration = Duration::from_secs(12);
/// Ports the ordered client's rules are on; abuse that parses uses other ports.
const ORDERED_PORTS: std::ops::Range<u16> = 20_000..20_012;
const CHAOS_PORT: u16 = 40_000;
/// A burst every interface allows (at least three 64 KiB aggregates).
const BURST: u64 = 1 << 20;
/// How long any reply may take before the daemon counts as no longer serving.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// xorshift64*: the test prints its seed, so a failing run can be repeated with
/// `SHAPER_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[test]
fn abusive_connections_never_stop_the_daemon_and_rules_follow_the_valid_changes_in_order() {
    common::root_or_skip!();
    let seed = std::env::var("SHAPER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |d| d.as_nanos() as u64) | 1
        });
    eprintln!("seed {seed} (SHAPER_TEST_SEED={seed} repeats this run)");

    let ns = common::test_namespace!();
    let dir = std::env::temp_dir().join(format!("shaper-test-{}-cs-state", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("state dir");
    let state = dir.join("state.json");
    let args = ["--iface", "lo", "--metrics-addr", "off"];
    let daemon = Daemon::start_with_state(&ns, "cs", &args, &state);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let chaos: Vec<_> = (0..CHAOS_THREADS)
        .map(|i| {
            let (socket, stop, tally) = (daemon.socket.clone(), stop.clone(), tally.clone());
            let mut rng = Rng(seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1)) | 1);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    abuse(&socket, &mut rng, &tally);
                }
            })
        })
        .collect();

    let started = Instant::now();
    let (model, changes) = ordered_changes(&daemon.socket, &mut Rng(seed.rotate_left(17) | 1));
    let changes_took = started.elapsed();
    // Let the abuse go on a little past the last change, then end it.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for thread in chaos {
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!(
        "{changes} ordered changes in {changes_took:.1?} alongside {} abusive connections \
         ({} requests answered as errors, {} oversized, {} read-only answered, {} half-closed, \
         {} abandoned)",
        tally.connections.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.oversized.load(Ordering::Relaxed),
        tally.read_only.load(Ordering::Relaxed),
        tally.half_closed.load(Ordering::Relaxed),
        tally.abandoned.load(Ordering::Relaxed),
    );

    // Still serving, and the rules are exactly the modelled ones.
    let _ = daemon.stats();
    assert_rules_are(&daemon.rules(), &model, &daemon.log());
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let restarted = Daemon::start_with_state(&ns, "cs2", &args, &state);
    assert_rules_are(&restarted.rules(), &model, &restarted.log());
    restarted.stop_ok();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the abusive connections did, for the log.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    refused: AtomicU64,
    oversized: AtomicU64,
    read_only: AtomicU64,
    half_closed: AtomicU64,
    abandoned: AtomicU64,
}

/// What a line sent by an abusive connection must be answered with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// An error reply that starts with this.
    Error(&'static str),
    /// `stats` or `limit ls`.
    ReadOnly,
}

const MALFORMED: Expect = Expect::Error("malformed request: ");

/// One abusive connection, chosen at random. None of it may change a rule.
fn abuse(socket: &Path, rng: &mut Rng, tally: &Tally) {
    let Ok(stream) = UnixStream::connect(socket) else {
        panic!("connecting to the daemon failed: it stopped serving");
    };
    tally.connections.fetch_add(1, Ordering::Relaxed);
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    match rng.below(6) {
        // Several lines, pipelined in one write or dribbled out in fragments.
        0 | 1 => {
            let lines: Vec<(Vec<u8>, Expect)> = (0..1 + rng.below(6)).map(|_| line(rng)).collect();
            let bytes: Vec<u8> = lines.iter().flat_map(|(l, _)| l.clone()).collect();
            if rng.chance(50) {
                let _ = (&stream).write_all(&bytes);
            } else {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let (piece, tail) = rest.split_at((1 + rng.below(40) as usize).min(rest.len()));
                    let _ = (&stream).write_all(piece);
                    rest = tail;
                    if rng.chance(20) {
                        std::thread::sleep(Duration::from_millis(rng.below(30)));
                    }
                }
            }
            let mut reader = BufReader::new(&stream);
            for (_, expect) in &lines {
                check_reply(&read_reply(&mut reader), *expect, tally);
            }
        }
        // Over 64 KiB in one line: refused, then the daemon hangs up. Sometimes a valid
        // `limit set` padded with spaces, which must not be applied.
        2 => {
            let size = MAX_REQUEST_BYTES as usize + 1 + rng.below(64 * 1024) as usize;
            let mut bytes = if rng.chance(50) {
                let spec = spec(
                    key(CHAOS_PORT + rng.below(100) as u16),
                    8_000_000,
                    Some(BURST),
                );
                serde_json::to_vec(&Request::LimitSet { rule: spec }).unwrap()
            } else {
                Vec::new()
            };
            bytes.resize(size, if bytes.is_empty() { b'x' } else { b' ' });
            bytes.push(b'\n');
            // The daemon stops reading after 64 KiB + 1: the rest may fail to send.
            let _ = (&stream).write_all(&bytes);
            let mut reader = BufReader::new(&stream);
            check_reply(
                &read_reply(&mut reader),
                Expect::Error("request longer than 65536 bytes"),
                tally,
            );
            tally.oversized.fetch_add(1, Ordering::Relaxed);
            assert_hung_up(&mut reader);
        }
        // A truncated line, then the write side closed: the partial line is answered as
        // malformed, then the daemon ends the connection. Or nothing at all before closing.
        3 => {
            if rng.chance(80) {
                let (line, _) = truncated(rng);
                let _ = (&stream).write_all(&line);
                stream.shutdown(Shutdown::Write).unwrap();
                let mut reader = BufReader::new(&stream);
                check_reply(&read_reply(&mut reader), MALFORMED, tally);
                assert_hung_up(&mut reader);
            } else {
                stream.shutdown(Shutdown::Write).unwrap();
                assert_hung_up(&mut BufReader::new(&stream));
            }
            tally.half_closed.fetch_add(1, Ordering::Relaxed);
        }
        // Gone before the answer: requests sent, the connection dropped unread.
        4 => {
            let (line, _) = line(rng);
            let _ = (&stream).write_all(&line);
            if rng.chance(50) {
                let (partial, _) = truncated(rng);
                let _ = (&stream).write_all(&partial);
            }
            tally.abandoned.fetch_add(1, Ordering::Relaxed);
        }
        // Random bytes without a newline, half-closed: one malformed line.
        _ => {
            let len = 1 + rng.below(2000) as usize;
            let mut bytes = random_bytes(rng, len);
            bytes.retain(|&b| b != b'\n');
            // A line of whitespace is answered too ("EOF while parsing"); never a request.
            let _ = (&stream).write_all(&bytes);
            stream.shutdown(Shutdown::Write).unwrap();
            let mut reader = BufReader::new(&stream);
            if bytes.is_empty() {
                assert_hung_up(&mut reader);
            } else {
                check_reply(&read_reply(&mut reader), MALFORMED, tally);
                assert_hung_up(&mut reader);
            }
            tally.half_closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One complete line that changes nothing, and what it must be answered with.
fn line(rng: &mut Rng) -> (Vec<u8>, Expect) {
    let request = |r: &Request| {
        let mut bytes = serde_json::to_vec(r).unwrap();
        bytes.push(b'\n');
        bytes
    };
    let chaos_key = key(CHAOS_PORT + rng.below(100) as u16);
    match rng.below(9) {
        0 => {
            let len = rng.below(300) as usize;
            let mut bytes = random_bytes(rng, len);
            // Never valid JSON: the first byte cannot start a value.
            bytes.insert(0, b'#');
            bytes.retain(|&b| b != b'\n');
            bytes.push(b'\n');
            (bytes, MALFORMED)
        }
        1 => (request(&Request::Stats), Expect::ReadOnly),
        2 => (request(&Request::LimitLs), Expect::ReadOnly),
        // Parses, but each is refused by the daemon.
        3 => (
            request(&Request::LimitRm { rule: chaos_key }),
            Expect::Error("no rule "),
        ),
        4 => (
            request(&Request::LimitSet {
                rule: spec(chaos_key, 0, None),
            }),
            Expect::Error("rate: must be above zero"),
        ),
        5 => (
            request(&Request::LimitSet {
                rule: spec(chaos_key, 8_000_000, Some(1024)),
            }),
            Expect::Error("burst 1KiB: below the minimum"),
        ),
        6 => {
            let mut key = chaos_key;
            key.iface = Some("nosuch0".into());
            (
                request(&Request::LimitSet {
                    rule: spec(key, 8_000_000, None),
                }),
                Expect::Error("interface 'nosuch0' is not one the daemon is attached to"),
            )
        }
        // Well-formed JSON that is not a request: a misspelt field, a bad port range, an
        // unknown op.
        7 => {
            let text = *rng.pick(&[
                r#"{"op":"limit_set","rule":{"key":{"ports":"20000"},"rate_bps":8000000,"burts_bytes":1}}"#,
                r#"{"op":"limit_rm","rule":{"ports":"20001-20000"}}"#,
                r#"{"op":"limit_set","rule":{"key":{"ports":"20000","dir":"up"},"rate_bps":1}}"#,
                r#"{"op":"reboot"}"#,
                r#"{"op":"limit_set"}"#,
                r#"[]"#,
                r#""""#,
            ]);
            (format!("{text}\n").into_bytes(), MALFORMED)
        }
        // An empty line.
        _ => (b"\n".to_vec(), MALFORMED),
    }
}

/// A `limit set` of an ordered port cut short: never a whole request, whatever follows it.
fn truncated(rng: &mut Rng) -> (Vec<u8>, Expect) {
    let port = ORDERED_PORTS.start + rng.below(ORDERED_PORTS.len() as u64) as u16;
    let request = Request::LimitSet {
        rule: spec(key(port), 1_000_000, Some(BURST)),
    };
    let bytes = serde_json::to_vec(&request).unwrap();
    // Before the closing brace, so the object is never complete.
    let cut = 1 + rng.below(bytes.len() as u64 - 1) as usize;
    (bytes[..cut].to_vec(), MALFORMED)
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

fn read_reply(reader: &mut BufReader<&UnixStream>) -> Response {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => panic!("the daemon hung up before answering"),
        Ok(_) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}")),
        Err(e) => panic!("no reply within {REPLY_TIMEOUT:?}: {e}"),
    }
}

fn check_reply(reply: &Response, expect: Expect, tally: &Tally) {
    match (reply, expect) {
        (Response::Error { message }, Expect::Error(start)) => {
            assert!(message.starts_with(start), "expected {start:?}: {message}");
            tally.refused.fetch_add(1, Ordering::Relaxed);
        }
        (Response::Stats(_) | Response::Rules { .. }, Expect::ReadOnly) => {
            tally.read_only.fetch_add(1, Ordering::Relaxed);
        }
        _ => panic!("expected {expect:?}, got {reply:?}"),
    }
}

/// The daemon ends the connection: end of file (or a reset, when bytes it never read were left).
fn assert_hung_up(reader: &mut BufReader<&UnixStream>) {
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after the end: {rest:?}"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the daemon did not hang up: {e}"),
    }
}

fn key(port: u16) -> RuleKey {
    RuleKey::local(PortRange::single(port))
}

fn spec(key: RuleKey, rate_bps: u64, burst_bytes: Option<u64>) -> RuleSpec {
    RuleSpec {
        key,
        rate_bps,
        burst_bytes,
        action: Action::Drop,
        ecn: false,
        per_remote: false,
        queue_bytes: None,
    }
}

/// What the model holds per rule: rate, burst, action.
type Model = HashMap<RuleKey, (u64, u64, Action)>;

/// The ordered client: up to `CHANGES` valid `limit set`/`limit rm` requests, one connection
/// each as the CLI makes them, some of which the daemon must refuse. Every answer is checked
/// against the model as it goes; returns the model at the end and how many changes were made.
fn ordered_changes(socket: &Path, rng: &mut Rng) -> (Model, usize) {
    let mut model = Model::new();
    let deadline = Instant::now() + CHANGES_TIME;
    for change in 0..CHANGES {
        if change >= MIN_CHANGES && Instant::now() > deadline {
            return (model, change);
        }
        let port = ORDERED_PORTS.start + rng.below(ORDERED_PORTS.len() as u64) as u16;
        let key = RuleKey {
            ports: if rng.chance(20) {
                PortRange {
                    lo: port,
                    hi: port + 1 + rng.below(50) as u16,
                }
            } else {
                PortRange::single(port)
            },
            side: *rng.pick(&[Side::Local, Side::Remote]),
            dir: *rng.pick(&[DirSel::Both, DirSel::Ingress, DirSel::Egress]),
            proto: *rng.pick(&[ProtoSel::Any, ProtoSel::Tcp, ProtoSel::Udp]),
            iface: if rng.chance(20) {
                Some("lo".into())
            } else {
                None
            },
        };
        let rate_bps = 1_000 * (1 + rng.below(1_000_000));
        let burst = BURST + rng.below(1 << 20);
        let action = *rng.pick(&[Action::Drop, Action::Observe]);
        match rng.below(10) {
            // Remove a rule in force (or one that is not: refused).
            0..=2 => {
                let key = if rng.chance(80) && !model.is_empty() {
                    let keys: Vec<&RuleKey> = model.keys().collect();
                    (*rng.pick(&keys)).clone()
                } else {
                    key
                };
                let reply = control::request(socket, &Request::LimitRm { rule: key.clone() });
                match (model.remove(&key), reply) {
                    (Some(_), Ok(Response::RuleRemoved { rule })) => assert_eq!(rule.key(), key),
                    (None, Err(e)) => assert!(e.to_string().contains("no rule "), "{e}"),
                    (was, reply) => panic!("limit rm {key} (in force: {was:?}): {reply:?}"),
                }
            }
            // Refused: a burst below the minimum, or a rate above the maximum.
            3 => {
                let (rate, burst) = if rng.chance(50) {
                    (rate_bps, 1024)
                } else {
                    (2_000_000_000_000, burst)
                };
                let rule = RuleSpec {
                    key: key.clone(),
                    rate_bps: rate,
                    burst_bytes: Some(burst),
                    action,
                    ecn: false,
                    per_remote: false,
                    queue_bytes: None,
                };
                match control::request(socket, &Request::LimitSet { rule }) {
                    Err(e) => assert!(e.to_string().contains("daemon refused"), "{e}"),
                    Ok(reply) => panic!("limit set {key} rate {rate} burst {burst}: {reply:?}"),
                }
            }
            // Add, or replace the rule with the same key.
            _ => {
                let rule = RuleSpec {
                    key: key.clone(),
                    rate_bps,
                    burst_bytes: Some(burst),
                    action,
                    ecn: false,
                    per_remote: false,
                    queue_bytes: None,
                };
                let existed = model
                    .insert(key.clone(), (rate_bps, burst, action))
                    .is_some();
                match control::request(socket, &Request::LimitSet { rule }) {
                    Ok(Response::RuleSet { rule, replaced }) => {
                        assert_eq!(replaced, existed, "limit set {key}");
                        assert_eq!(rule.key(), key);
                        assert_eq!((rule.rate_bps, rule.burst_bytes), (rate_bps, burst));
                    }
                    other => panic!("limit set {key}: {other:?}"),
                }
            }
        }
    }
    (model, CHANGES)
}

fn assert_rules_are(rules: &[shaper::policy::rules_in_force::RuleView], model: &Model, log: &str) {
    let found: Model = rules
        .iter()
        .map(|r| (r.key(), (r.rate_bps, r.burst_bytes, r.action)))
        .collect();
    assert_eq!(
        found.len(),
        rules.len(),
        "two rules with one key: {rules:#?}"
    );
    if &found != model {
        let missing: Vec<_> = model
            .iter()
            .filter(|(k, v)| found.get(*k) != Some(v))
            .collect();
        let extra: Vec<_> = found
            .iter()
            .filter(|(k, v)| model.get(*k) != Some(v))
            .collect();
        panic!(
            "rules differ from the model\nmissing or different: {missing:#?}\nextra: {extra:#?}\n{log}"
        );
    }
}

/// Every change names who made it, as the kernel reports the connecting process (SO_PEERCRED):
/// the CLI's `limit set`, `limit rm` and `watch` lines end with its uid, user and pid.
#[test]
fn each_change_is_logged_with_the_peer_that_asked_for_it() {
    common::root_or_skip!();
    let ns = common::test_namespace!();
    let daemon = Daemon::start(&ns, "cp", &["--iface", "lo", "--metrics-addr", "off"]);
    daemon.cli_ok(&["limit", "set", "9091", "--rate", "10mbit"]);
    daemon.cli_ok(&["watch", "9091"]);
    daemon.cli_ok(&["limit", "rm", "9091"]);
    let log = daemon.log();
    for change in ["limit set: ", "watching ", "limit removed: "] {
        let line = log
            .lines()
            .find(|line| line.contains(change))
            .unwrap_or_else(|| panic!("no {change:?} line:\n{log}"));
        // The CLI ran as root; its pid is its own, its command `shaper`.
        assert!(line.contains("(by uid 0 (root), pid "), "{line}");
        assert!(line.ends_with(" (shaper))"), "{line}");
    }
}

/// A gid no test machine needs to have a name for: `--socket-group` takes numbers too.
const SOCKET_GID: u32 = 4242;

/// Debian's `nobody`.
const NOBODY: u32 = 65534;

/// With `--socket-group`, the socket is the group's too (0660): `nobody` outside it is refused
/// by the kernel with a message that says who is admitted; `nobody` in it changes a limit, the
/// daemon's log line names that user, and `limit ls` shows who set the rule and when. A trace
/// belongs to the connection that started it: another connection cannot end it.
#[test]
fn the_socket_group_may_change_limits_others_are_refused_and_the_actor_is_shown() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    common::root_or_skip!();
    let ns = common::test_namespace!();
    let gid = SOCKET_GID.to_string();
    let daemon = Daemon::start(
        &ns,
        "sg",
        &[
            "--iface",
            "lo",
            "--metrics-addr",
            "off",
            "--socket-group",
            &gid,
        ],
    );
    let meta = std::fs::metadata(&daemon.socket).expect("socket");
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, SOCKET_GID));
    // Everything on the way must be reachable by `nobody`: the socket's directory and a copy of
    // the CLI outside the build tree (which may sit under a 0700 home).
    let dir = daemon.socket.parent().expect("socket dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = BinCopy::new("sg");

    let refused = bin.run_as(
        NOBODY,
        &[],
        &daemon.socket,
        &["limit", "set", "9092", "--rate", "10mbit"],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("permission denied on the control socket")
            && stderr.contains(&format!("root and members of group gid {SOCKET_GID}")),
        "{stderr}"
    );

    let member = bin.run_as(
        NOBODY,
        &[SOCKET_GID],
        &daemon.socket,
        &["limit", "set", "9093", "--rate", "10mbit"],
    );
    assert!(
        member.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&member.stderr),
        daemon.log()
    );
    let log = daemon.log();
    let line = log
        .lines()
        .find(|line| line.contains("limit set: 9093"))
        .unwrap_or_else(|| panic!("no limit set line:\n{log}"));
    assert!(line.contains("(by uid 65534 (nobody), pid "), "{line}");
    assert!(
        !log.contains("9092"),
        "the refused change reached the daemon:\n{log}"
    );

    // Root sets one too; `limit ls` names each rule's actor.
    daemon.cli_ok(&["limit", "set", "9094", "--rate", "10mbit"]);
    let rules = daemon.rules();
    let actor = |port: u16| {
        let rule = rules
            .iter()
            .find(|r| r.ports.lo == port)
            .unwrap_or_else(|| panic!("rule {port}: {rules:?}"));
        rule.set_by.clone().expect("an actor")
    };
    let (by_nobody, by_root) = (actor(9093), actor(9094));
    assert_eq!(
        (by_nobody.uid, by_nobody.user.as_deref()),
        (Some(NOBODY), Some("nobody"))
    );
    assert_eq!(by_nobody.command.as_deref(), Some("shaper"));
    assert_eq!(
        (by_root.uid, by_root.user.as_deref()),
        (Some(0), Some("root"))
    );
    assert!(
        by_nobody.at.ends_with('Z') && by_nobody.at <= by_root.at,
        "{by_nobody:?} {by_root:?}"
    );
    let table = daemon.cli_ok(&["limit", "ls"]);
    let row = table
        .lines()
        .find(|line| line.contains(" 9093 "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains(&format!("nobody       {}", by_nobody.at)),
        "{table}"
    );

    // A trace belongs to its connection.
    use shaper::control::protocol::TraceSpec;
    let (reply, held) = control::request_held(
        &daemon.socket,
        &Request::TraceOn {
            trace: TraceSpec {
                ports: PortRange::single(9093),
                dir: DirSel::Both,
                verdict: Default::default(),
                per_cpu_per_second: 100,
            },
        },
    )
    .expect("trace on");
    let Response::TraceOn { session, .. } = reply else {
        panic!("{reply:?}");
    };
    let stolen = control::request(&daemon.socket, &Request::TraceOff { session })
        .expect_err("another connection ended the trace");
    assert!(
        stolen
            .to_string()
            .contains("belongs to another control connection"),
        "{stolen}"
    );
    drop(held);
    // The daemon ends the trace when its connection closes; then a new one may start.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = control::request_held(
            &daemon.socket,
            &Request::TraceOn {
                trace: TraceSpec {
                    ports: PortRange::single(9094),
                    dir: DirSel::Both,
                    verdict: Default::default(),
                    per_cpu_per_second: 100,
                },
            },
        );
        match again {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("is running"), "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the trace outlived its connection: {e}"),
        }
    }
    daemon.stop_ok();
}

/// The CLI copied to a directory everyone may read, removed on drop.
struct BinCopy {
    dir: std::path::PathBuf,
}

impl BinCopy {
    fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("shaper-test-{}-{tag}-bin", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bin dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::copy(common::daemon::SHAPER, dir.join("shaper")).expect("copy the CLI");
        std::fs::set_permissions(dir.join("shaper"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Self { dir }
    }

    /// `shaper --socket SOCKET ARGS` as `uid` (its gid the same) with supplementary `groups`.
    fn run_as(
        &self,
        uid: u32,
        groups: &[u32],
        socket: &Path,
        args: &[&str],
    ) -> std::process::Output {
        use std::os::unix::process::CommandExt as _;
        let groups = groups.to_vec();
        let mut command = std::process::Command::new(self.dir.join("shaper"));
        command.arg("--socket").arg(socket).args(args);
        // std applies `uid`/`gid` after clearing the supplementary groups, so the whole change
        // of identity happens here, in the child between fork and exec.
        // SAFETY: setgroups, setgid and setuid are async-signal-safe and touch only `groups`,
        // which the closure owns.
        unsafe {
            command.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.output().expect("run the CLI as another user")
    }
}

impl Drop for BinCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
