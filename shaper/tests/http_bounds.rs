//! The metrics endpoint under abuse, for real: a daemon holding 65,535 rules (the largest
//! scrape there is) on a veth between throwaway namespaces, 2,000 idle TCP connections and 200
//! concurrent scrapes thrown at it while a prober asks `/healthz` ten times a second. The probe
//! must answer within a second throughout, the daemon must keep no more connections than its
//! cap, close the idle ones by itself, stay the same process and still answer `limit ls`.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use common::{
    daemon::Daemon,
    metrics::{DAEMON_ADDR, get},
    netns::InNamespace as _,
};

const CAP: usize = 256;
const IDLE: usize = 2_000;
const SCRAPERS: usize = 200;
const RULES: u32 = 65_535;

/// Socket descriptors the process `pid` holds.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The test process may hold the idle connections and the scrapers' at once.
fn raise_descriptor_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = wanted.max(limit.rlim_cur);
        limit.rlim_max = limit.rlim_max.max(limit.rlim_cur);
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
            0,
            "raise RLIMIT_NOFILE to {wanted} (as root)"
        );
    }
}

#[test]
fn idle_connections_and_a_scrape_storm_never_keep_the_probe_out() {
    common::root_or_skip!();
    raise_descriptor_limit(8_192);
    let pair = common::test_veth_pair!();
    let config_dir =
        std::env::temp_dir().join(format!("shaper-test-{}-hb-config", std::process::id()));
    let _ = std::fs::remove_dir_all(&config_dir);
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let config = config_dir.join("shaper.toml");
    let mut text = String::with_capacity(RULES as usize * 60);
    for port in 1..=RULES {
        text.push_str(&format!(
            "[[limit]]\nport = {port}\nrate = \"1gbit\"\naction = \"observe\"\n"
        ));
    }
    std::fs::write(&config, text).expect("write config");
    let started = Instant::now();
    let daemon = Daemon::start(
        &pair.a,
        "hb",
        &[
            "--iface",
            &pair.a_if,
            "--config",
            &config.to_string_lossy(),
            "--metrics-max-connections",
            &CAP.to_string(),
        ],
    );
    let _ = std::fs::remove_dir_all(&config_dir);
    println!(
        "daemon with {RULES} rules answering after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pid = daemon.pid();
    let baseline = sockets_of(pid);
    let one_scrape = Instant::now();
    let scrape = get(&pair.a, DAEMON_ADDR, "/metrics", None);
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    println!(
        "one scrape alone: {:.2} s, {} bytes",
        one_scrape.elapsed().as_secs_f64(),
        scrape.body.len()
    );

    let done = AtomicBool::new(false);
    let (probes, scrapes, most_sockets, idle_closed) = thread::scope(|scope| {
        // The prober: /healthz ten times a second until the storm is over.
        let prober = scope.spawn(|| {
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let answer = get(&pair.a, DAEMON_ADDR, "/healthz", None);
                latencies.push((asked.elapsed(), answer.status));
                thread::sleep(Duration::from_millis(100));
            }
            latencies
        });
        // The daemon's sockets, sampled every 20 ms.
        let sampler = scope.spawn(|| {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(sockets_of(pid));
                thread::sleep(Duration::from_millis(20));
            }
            most
        });
        // 2,000 connections that never send a byte.
        let idle: Vec<TcpStream> = pair.a.within(|| {
            (0..IDLE)
                .map(|_| {
                    TcpStream::connect_timeout(&DAEMON_ADDR, Duration::from_secs(5))
                        .expect("connect an idle client")
                })
                .collect()
        });
        // 200 scrapes at once.
        let scrapers: Vec<_> = (0..SCRAPERS)
            .map(|_| scope.spawn(|| get(&pair.a, DAEMON_ADDR, "/metrics", None).status))
            .collect();
        let scrapes: Vec<u16> = scrapers
            .into_iter()
            .map(|s| s.join().expect("scraper"))
            .collect();
        // The idle clients are closed by the daemon: evicted at the cap or at the 5 s header
        // timeout. Each read sees the end (or a reset) within 10 s.
        let waited = Instant::now();
        let idle_closed = idle
            .into_iter()
            .filter(|stream| {
                let left = Duration::from_secs(10).saturating_sub(waited.elapsed());
                stream
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .expect("timeout");
                let mut byte = [0u8; 1];
                matches!((&*stream).read(&mut byte), Ok(0))
                    || matches!((&*stream).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            })
            .count();
        done.store(true, Ordering::Relaxed);
        (
            prober.join().expect("prober"),
            scrapes,
            sampler.join().expect("sampler"),
            idle_closed,
        )
    });

    let mut took: Vec<Duration> = probes.iter().map(|(took, _)| *took).collect();
    took.sort();
    let worst = took.last().copied().unwrap_or_default();
    let median = took.get(took.len() / 2).copied().unwrap_or_default();
    let ok = scrapes.iter().filter(|&&s| s == 200).count();
    let busy = scrapes.iter().filter(|&&s| s == 503).count();
    println!(
        "{} probes, median {:.1} ms, worst {:.0} ms; scrapes: {ok} answered, {busy} told to \
         retry (503); daemon sockets: {baseline} before, at most {most_sockets} during (cap \
         {CAP}); idle clients closed by the daemon: {idle_closed} of {IDLE}",
        probes.len(),
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    assert!(
        probes.iter().all(|(_, status)| *status == 200),
        "{probes:?}"
    );
    assert!(worst < Duration::from_secs(1), "worst probe {worst:?}");
    assert!(probes.len() >= 10, "the storm lasted at least a second");
    assert_eq!(ok + busy, SCRAPERS, "every scrape is answered: {scrapes:?}");
    assert!(ok >= 1, "some scrapes are served");
    // The cap, plus the one connection being admitted while an evicted one closes.
    assert!(
        most_sockets <= baseline + CAP + 1,
        "{most_sockets} sockets, over {baseline} + the cap of {CAP} + 1"
    );
    assert_eq!(idle_closed, IDLE, "every idle client was closed");

    // Still the same daemon, still serving.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(daemon.pid(), pid);
    let listed = daemon.cli_ok(&["limit", "ls", "--json"]);
    assert!(listed.contains("\"ports\": \"65535\"") || listed.contains("\"ports\":\"65535\""));
    let live = get(&pair.a, DAEMON_ADDR, "/healthz", None);
    assert_eq!(live.status, 200, "{}", live.body);
    let log = daemon.log();
    assert!(
        log.contains("closing the oldest ones that have sent no request"),
        "{log}"
    );
}

/// A client that sends half a request head and stops is cut off by the header timeout; one
/// that sends a whole request on a fresh connection is answered once and closed (no
/// keep-alive).
#[test]
fn a_stalled_request_is_cut_off_and_each_connection_serves_one_request() {
    let pair = common::test_veth_pair!();
    let daemon = Daemon::on(&pair, &[]);
    let (stalled_for, second) = pair.a.within(|| {
        let mut stalled = TcpStream::connect(DAEMON_ADDR).expect("connect");
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .expect("half a head");
        stalled
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = stalled.read_to_end(&mut rest);
        let stalled_for = started.elapsed();

        let mut client = TcpStream::connect(DAEMON_ADDR).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        client
            .write_all(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .expect("two requests");
        let mut answers = String::new();
        let _ = client.read_to_string(&mut answers);
        (stalled_for, answers)
    });
    println!("a half-sent head was cut off after {stalled_for:?}");
    assert!(
        stalled_for >= Duration::from_secs(4) && stalled_for < Duration::from_secs(10),
        "{stalled_for:?}"
    );
    assert_eq!(second.matches("HTTP/1.1 200").count(), 1, "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    drop(daemon);
}
