//! `cargo xtask demo`: a one-command tour. Two throwaway network namespaces joined by a veth
//! pair, the daemon on one end, paced UDP traffic to two ports from the other, `shaper top` on
//! the terminal, and a limit on one of the ports after a few seconds. Everything it creates is
//! removed when top quits, at the time bound, on Ctrl-C/SIGTERM or on an error.
//!
//! `--ci` runs the same setup without the TUI: it samples both ports' rates with
//! `shaper top --once --json` before and after the limit and checks that the limited port fell
//! to the limit while the other kept its rate.

mod process;
mod sample;
mod traffic;

use std::{
    fs,
    os::unix::{
        fs::DirBuilderExt as _,
        net::{SocketAddr, UnixListener},
    },
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use process::{Daemon, Guarded, Shaper};
use sample::{Row, Sample};
use shaper_testbed::netns::{PairNames, VethPair};
use traffic::Traffic;

/// Every namespace the demo creates starts with this, so a leftover is easy to find.
const NS_PREFIX: &str = "shaper-demo-";
const SERVER_NS: &str = "shaper-demo-server";
const CLIENT_NS: &str = "shaper-demo-client";
/// At most 10 characters: the width of top's interface column.
const SERVER_IF: &str = "demo-srv";
const CLIENT_IF: &str = "demo-client";

/// The port that keeps its rate and the port that gets the limit.
const FREE_PORT: u16 = 8080;
const LIMITED_PORT: u16 = 9090;
/// Offered load per port, in wire bytes per second (16 Mbit/s).
const OFFERED_BYTES_PER_SEC: u64 = 2_000_000;
/// The limit, as given to `shaper limit set` and in bits per second (`rate_bps` of a rule).
const LIMIT: &str = "4mbit";
const LIMIT_BITS_PER_SEC: u64 = 4_000_000;

/// Interactive: time to read the plan before top takes the screen, and when the limit is set
/// after top opened (long enough to see both ports at the full rate first).
const READ_PAUSE: Duration = Duration::from_secs(3);
const LIMIT_AFTER: Duration = Duration::from_secs(10);
/// The shortest `--duration` that shows the limit working for a few seconds.
pub const MIN_DURATION_SECS: u64 = 15;

/// `--ci`: traffic runs this long before the first sample (sockets, first packets); each sample
/// covers `SAMPLE_SECS`; the second starts `SETTLE` after the limit was set, when the burst the
/// bucket starts with (~0.2 MB, drained at 1.5 MB/s) is long gone.
const WARMUP: Duration = Duration::from_secs(1);
const SAMPLE_SECS: u64 = 2;
const SETTLE: Duration = Duration::from_secs(2);
/// `--ci` checks: the limited port within ±10% of the limit, the free port above 90% of its
/// earlier rate, and the traffic before the limit at least twice the limit (or the fall would
/// prove nothing).
const LIMIT_TOLERANCE: f64 = 0.10;
const FREE_MIN_RATIO: f64 = 0.90;
const MIN_OVERLOAD: f64 = 2.0;

#[derive(Debug)]
pub struct Options {
    pub ci: bool,
    pub duration: Duration,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask demo needs root: it creates network namespaces and loads eBPF \
             (sudo cargo xtask demo)"
        );
    }
    catch_signals()?;
    crate::bootstrap::run()?;
    crate::check(crate::cargo().args(["build", "--release", "--package", "shaper"]))?;
    check_interrupted()?;

    let setup = Setup::create()?;
    if options.ci {
        let measured = measure(&setup);
        let teardown = setup.teardown();
        let measured = measured?;
        let verdict = measured.report();
        teardown?;
        verdict
    } else {
        let shown = show(&setup, options.duration);
        let teardown = setup.teardown();
        shown?;
        teardown
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C, SIGTERM and a closed terminal (SIGHUP) end the demo through its normal teardown
/// instead of killing it with the namespaces and the daemon still there.
fn catch_signals() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous =
            unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            bail!(
                "installing a handler for signal {signal}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// Sleeps for `duration`, returning early with an error when the demo is interrupted.
fn sleep(duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Everything the demo runs or creates. Fields drop in declaration order, which is the order of
/// teardown: traffic, daemon, namespaces, files, and last the claim on the demo.
struct Setup {
    traffic: Traffic,
    daemon: Daemon,
    pair: VethPair,
    dir: TempDir,
    shaper: Shaper,
    _claim: UnixListener,
}

impl Setup {
    fn create() -> anyhow::Result<Self> {
        let claim = claim_the_demo()?;
        let dir = TempDir::create(std::env::temp_dir().join("shaper-demo"))?;
        let shaper = Shaper {
            binary: crate::release_binary("shaper")?,
            socket: dir.path.join("shaper.sock"),
        };
        // The daemon and the services on `a`, the senders on `b`.
        let names = PairNames {
            a: SERVER_NS,
            b: CLIENT_NS,
            a_if: SERVER_IF,
            b_if: CLIENT_IF,
        };
        let pair = VethPair::create(names, 0)?;
        eprintln!(
            "xtask: namespaces {SERVER_NS} ({SERVER_IF}, {}) and {CLIENT_NS} ({CLIENT_IF}, {})",
            pair.a_addr, pair.b_addr
        );
        let daemon = Daemon::start(&shaper, &pair.a, SERVER_IF, &dir.path)?;
        eprintln!(
            "xtask: shaper run --iface {SERVER_IF} in {SERVER_NS}, control socket {}",
            shaper.socket.display()
        );
        check_interrupted()?;
        // The traffic outlives the longest demo by a minute at most, whatever happens to it.
        let bound = Duration::from_secs(crate::MAX_DEMO_SECS + 60);
        let traffic = Traffic::start(
            &pair,
            &[FREE_PORT, LIMITED_PORT],
            OFFERED_BYTES_PER_SEC,
            bound,
        )?;
        eprintln!(
            "xtask: UDP from {} to {}:{FREE_PORT} and :{LIMITED_PORT}, {} each",
            pair.b_addr,
            pair.a_addr,
            rate(OFFERED_BYTES_PER_SEC as f64)
        );
        Ok(Self {
            traffic,
            daemon,
            pair,
            dir,
            shaper,
            _claim: claim,
        })
    }

    /// Stops and removes everything in order and checks that no demo namespace remains.
    fn teardown(self) -> anyhow::Result<()> {
        let Self {
            traffic,
            daemon,
            pair,
            dir,
            shaper: _,
            _claim,
        } = self;
        drop(traffic);
        let daemon = daemon.stop();
        drop(pair);
        let dir_path = dir.path.clone();
        drop(dir);
        daemon?;
        let left = shaper_testbed::netns::namespaces_named(NS_PREFIX)?;
        if !left.is_empty() {
            bail!("namespaces left behind: {}", left.join(", "));
        }
        if dir_path.exists() {
            bail!("{} left behind", dir_path.display());
        }
        eprintln!(
            "xtask: removed the traffic, the daemon, namespaces {SERVER_NS} and {CLIENT_NS}, and {}",
            dir_path.display()
        );
        Ok(())
    }

    /// `limit set 9090 --rate 4mbit`
    fn limit_args() -> Vec<String> {
        ["limit", "set", &LIMITED_PORT.to_string(), "--rate", LIMIT]
            .map(str::to_owned)
            .to_vec()
    }
}

/// One demo at a time: the namespace names are fixed, and a second demo would remove the first
/// one's as leftovers. The claim is an abstract Unix socket, which the kernel releases when the
/// process exits, however it exits, and which leaves no file behind.
fn claim_the_demo() -> anyhow::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let address = SocketAddr::from_abstract_name(b"shaper-demo")?;
    UnixListener::bind_addr(&address).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow!("another `cargo xtask demo` is running on this machine; wait for it to end")
        }
        _ => anyhow!("claiming the demo (abstract socket @shaper-demo): {e}"),
    })
}

/// A directory for the daemon's state file, control socket and log; removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        // Left by a killed demo; the claim guarantees no running demo uses it.
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("xtask: removing {}: {e}", self.path.display());
        }
    }
}

/// Why `shaper top` ended.
enum Ending {
    Quit,
    TimeBound,
    Interrupted,
    LimitFailed(anyhow::Error),
}

/// The interactive tour: `shaper top` on the terminal, the limit set after `LIMIT_AFTER`.
fn show(setup: &Setup, duration: Duration) -> anyhow::Result<()> {
    let limit = setup.shaper.command_line(&Setup::limit_args());
    // top owns the screen once it opens, so the plan comes first (and again afterwards).
    println!();
    println!(
        "Ports {FREE_PORT} and {LIMITED_PORT} each receive {} of UDP.",
        rate(OFFERED_BYTES_PER_SEC as f64)
    );
    println!(
        "{} s after shaper top opens, the demo runs:\n\n    {limit}\n",
        LIMIT_AFTER.as_secs()
    );
    println!(
        "and port {LIMITED_PORT} falls to {} while {FREE_PORT} keeps its rate.",
        rate(LIMIT_BITS_PER_SEC as f64 / 8.0)
    );
    println!(
        "q quits shaper top; the demo ends by itself after {} s and removes everything.",
        duration.as_secs()
    );
    println!("Opening shaper top in {} s...", READ_PAUSE.as_secs());
    sleep(READ_PAUSE)?;
    // Keys typed during the build (a `q`, an Enter) would reach top as its first keys and could
    // quit it at once: discard them. Not a terminal (EBADF/ENOTTY): nothing to discard.
    // SAFETY: tcflush only acts on the fd; stdin stays open.
    unsafe { libc::tcflush(libc::STDIN_FILENO, libc::TCIFLUSH) };

    let opened = Instant::now();
    // top gets the terminal; on SIGTERM it restores it before exiting.
    let mut top = Guarded::spawn(setup.shaper.command(&["top"]), Duration::from_secs(5))?;
    let mut applied = None;
    let ending = loop {
        if let Some(status) = top.try_wait()? {
            if !status.success() {
                bail!("shaper top exited with {status}");
            }
            break Ending::Quit;
        }
        let elapsed = opened.elapsed();
        if INTERRUPTED.load(Ordering::Relaxed) {
            break Ending::Interrupted;
        }
        if elapsed >= duration {
            break Ending::TimeBound;
        }
        if applied.is_none() && elapsed >= LIMIT_AFTER {
            // Output captured: anything printed now would scribble over top's screen.
            match setup.shaper.run(&Setup::limit_args()) {
                Ok(output) => applied = Some((elapsed, output)),
                Err(e) => break Ending::LimitFailed(e),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let top_ran = opened.elapsed();
    // After a quit the process has exited; otherwise this sends SIGTERM.
    let stopped = match ending {
        Ending::Quit => top.wait().map(|_| ()),
        _ => top.terminate().map(|_| ()),
    };

    println!();
    match &ending {
        Ending::Quit => println!("shaper top quit after {:.0} s.", top_ran.as_secs_f64()),
        Ending::TimeBound => println!(
            "The demo's time bound of {} s is reached.",
            duration.as_secs()
        ),
        Ending::Interrupted => {}
        Ending::LimitFailed(_) => {}
    }
    match &applied {
        Some((at, output)) => {
            println!(
                "At {:.1} s the demo ran:\n\n    {limit}\n",
                at.as_secs_f64()
            );
            let said = String::from_utf8_lossy(&output.stdout);
            for line in said.lines() {
                println!("    {line}");
            }
        }
        None => println!(
            "The limit was not set (it is set {} s after top opens):\n\n    {limit}\n",
            LIMIT_AFTER.as_secs()
        ),
    }
    match ending {
        Ending::LimitFailed(e) => Err(e.context("setting the demo's limit")),
        Ending::Interrupted => stopped.and_then(|()| check_interrupted()),
        Ending::Quit | Ending::TimeBound => stopped,
    }
}

/// Both ports' rows before and after the limit (`--ci`).
struct Measured {
    limit_command: String,
    before: Sample,
    after: Sample,
}

fn measure(setup: &Setup) -> anyhow::Result<Measured> {
    sleep(WARMUP)?;
    let before = Sample::take(&setup.shaper, SAMPLE_SECS)?;
    let limit_command = setup.shaper.command_line(&Setup::limit_args());
    let output = setup.shaper.run(&Setup::limit_args())?;
    eprintln!(
        "xtask: {limit_command}\n{}",
        String::from_utf8_lossy(&output.stdout).trim_end()
    );
    sleep(SETTLE)?;
    let after = Sample::take(&setup.shaper, SAMPLE_SECS)?;
    Ok(Measured {
        limit_command,
        before,
        after,
    })
}

impl Measured {
    /// Prints the before/after table and the checks; an error names every check that failed.
    fn report(&self) -> anyhow::Result<()> {
        let rows = |port| -> anyhow::Result<(&Row, &Row)> {
            Ok((
                self.before.udp_ingress(SERVER_IF, port)?,
                self.after.udp_ingress(SERVER_IF, port)?,
            ))
        };
        let (free_before, free_after) = rows(FREE_PORT)?;
        let (limited_before, limited_after) = rows(LIMITED_PORT)?;

        println!();
        println!(
            "UDP into {SERVER_IF}, wire rates from `shaper top --once --json`, sampled over \
             {:.2} s before and {:.2} s after\n  {}",
            self.before.interval_seconds, self.after.interval_seconds, self.limit_command
        );
        println!(
            "{:<6} {:>28} {:>28} {:>10}  rule after",
            "port", "before", "after", "drops/s"
        );
        for (port, before, after) in [
            (FREE_PORT, free_before, free_after),
            (LIMITED_PORT, limited_before, limited_after),
        ] {
            println!(
                "{port:<6} {:>28} {:>28} {:>10.0}  {}",
                rate(before.bytes_per_second),
                rate(after.bytes_per_second),
                after.dropped_packets_per_second,
                match &after.rule {
                    Some(r) => format!(
                        "{} {} ({} bit/s), burst {} B",
                        r.ports, r.action, r.rate_bps, r.burst_bytes
                    ),
                    None => "none".into(),
                }
            );
        }
        println!();

        let limit = LIMIT_BITS_PER_SEC as f64 / 8.0;
        let mut failed = Vec::new();
        let mut check = |ok: bool, what: String| {
            println!("{} {what}", if ok { "ok:    " } else { "FAILED:" });
            if !ok {
                failed.push(what);
            }
        };
        let overload = limited_before.bytes_per_second / limit;
        check(
            overload >= MIN_OVERLOAD,
            format!(
                "before the limit, port {LIMITED_PORT} carried {overload:.2} times the limit \
                 (at least {MIN_OVERLOAD})"
            ),
        );
        let held = limited_after.bytes_per_second / limit;
        check(
            (held - 1.0).abs() <= LIMIT_TOLERANCE,
            format!(
                "after the limit, port {LIMITED_PORT} carried {held:.3} times the limit \
                 (within {:.2}..{:.2})",
                1.0 - LIMIT_TOLERANCE,
                1.0 + LIMIT_TOLERANCE
            ),
        );
        let kept = free_after.bytes_per_second / free_before.bytes_per_second;
        check(
            kept > FREE_MIN_RATIO,
            format!("port {FREE_PORT} kept {kept:.3} of its rate (more than {FREE_MIN_RATIO})"),
        );
        let rule_shown = limited_after
            .rule
            .as_ref()
            .is_some_and(|r| r.rate_bps == LIMIT_BITS_PER_SEC)
            && free_after.rule.is_none();
        check(
            rule_shown,
            format!(
                "top shows the rule of {LIMIT_BITS_PER_SEC} bit/s on port {LIMITED_PORT} \
                 and none on {FREE_PORT}"
            ),
        );
        if !failed.is_empty() {
            bail!("the demo's checks failed: {}", failed.join("; "));
        }
        Ok(())
    }
}

/// `16.00 Mbit/s (2000000 B/s)`
fn rate(bytes_per_sec: f64) -> String {
    format!(
        "{:.2} Mbit/s ({bytes_per_sec:.0} B/s)",
        bytes_per_sec * 8.0 / 1e6
    )
}
