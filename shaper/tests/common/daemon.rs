//! The real `shaper run` binary as a child process inside a test namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use shaper::{
    control::{self, ControlError, Request, Response},
    policy::rules_in_force::RuleView,
    telemetry::counter_snapshot::Snapshot,
};

use serde_json::Value;

use super::netns::{Namespace, VethPair};

pub const SHAPER: &str = env!("CARGO_BIN_EXE_shaper");

/// How long `Daemon::start` waits for the control socket to answer.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Where the tests' daemons pin: a bpffs of their own, mounted once in the root mount
/// namespace. `ip netns exec` remounts /sys privately for the program it runs, so a bpffs the
/// daemon found (or mounted) at /sys/fs/bpf there would vanish with the daemon, and a restarted
/// daemon could adopt nothing; a mount made here is seen by every `ip netns exec` child.
pub const TEST_BPFFS: &str = "/run/shaper-test-bpffs";

/// This test process's pin base below [`TEST_BPFFS`] (each namespace gets its own directory
/// below it, by cookie), with bpffs mounted there first if it is not.
pub fn pin_base() -> PathBuf {
    static MOUNT: std::sync::Once = std::sync::Once::new();
    MOUNT.call_once(|| {
        std::fs::create_dir_all(TEST_BPFFS).expect("create the test bpffs mount point");
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .expect("read /proc/self/mounts")
            .lines()
            .any(|line| {
                let mut fields = line.split_whitespace();
                fields.nth(1) == Some(TEST_BPFFS) && fields.next() == Some("bpf")
            });
        if !mounted {
            let status = Command::new("mount")
                .args(["-t", "bpf", "bpf", TEST_BPFFS])
                .status()
                .expect("run mount");
            assert!(status.success(), "mount -t bpf bpf {TEST_BPFFS}: {status}");
        }
    });
    Path::new(TEST_BPFFS).join(std::process::id().to_string())
}

/// A daemon that is killed (and its files and pins removed) on drop if the test did not stop
/// it.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    /// The binary it runs, whose CLI [`cli`](Self::cli) talks to it with.
    program: PathBuf,
    dir: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    /// The namespace it runs in, for `shaper down` on drop.
    netns: String,
    pub pin_base: PathBuf,
}

impl Daemon {
    /// Starts `shaper run ARGS` in `ns` and waits until its control socket answers. Its state
    /// file lives in the daemon's own directory.
    pub fn start(ns: &Namespace, tag: &str, args: &[&str]) -> Self {
        let dir = Self::dir(tag);
        let state = dir.join("state.json");
        Self::start_with_state(ns, tag, args, &state)
    }

    /// The common start: `shaper run --iface A EXTRA` in the pair's namespace `a`, named after
    /// its interface (unique per test, see `veth_pair_named`).
    pub fn on(pair: &VethPair, extra: &[&str]) -> Self {
        let mut args = vec!["--iface", pair.a_if.as_str()];
        args.extend_from_slice(extra);
        Self::start(&pair.a, &pair.a_if, &args)
    }

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shaper-test-{}-{tag}", std::process::id()))
    }

    /// As [`start`](Self::start), with the state file at `state` (which outlives the daemon).
    pub fn start_with_state(ns: &Namespace, tag: &str, args: &[&str], state: &Path) -> Self {
        Self::start_program(Path::new(SHAPER), ns, tag, args, state)
    }

    /// As [`start_with_state`](Self::start_with_state), running the binary `program` (a
    /// packaged one) rather than the one cargo built.
    pub fn start_program(
        program: &Path,
        ns: &Namespace,
        tag: &str,
        args: &[&str],
        state: &Path,
    ) -> Self {
        Self::start_sending(program, ns, tag, args, state, None)
    }

    /// As [`on`](Self::on), sending the starting daemon SIGHUP every 20 ms from `after` its
    /// spawn until it answers, as a service manager's reload may (`systemctl reload` right
    /// after `start`).
    pub fn on_hung_up_while_starting(pair: &VethPair, after: Duration) -> Self {
        let tag = pair.a_if.as_str();
        let state = Self::dir(tag).join("state.json");
        let args = ["--iface", pair.a_if.as_str()];
        Self::start_sending(Path::new(SHAPER), &pair.a, tag, &args, &state, Some(after))
    }

    fn start_sending(
        program: &Path,
        ns: &Namespace,
        tag: &str,
        args: &[&str],
        state: &Path,
        hangups_after: Option<Duration>,
    ) -> Self {
        let spawned = Instant::now();
        let mut hangups = 0u32;
        let mut daemon = Self::spawn(program, ns, tag, args, state);
        // A bound for a hung start, not a timing target: under the VM test bed's emulated CPU
        // a start on Debian 12's 6.1 (two programs through its verifier, the attach) took 9 s
        // of a 15 s bound, which a busier host then crossed.
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            // A reply this build cannot read still means the daemon answers: another release's
            // (the upgrade test's previous one) may say more or less than this one's types.
            if matches!(
                control::request(&daemon.socket, &Request::Stats),
                Ok(_) | Err(ControlError::BadReply(_))
            ) {
                if hangups_after.is_some() {
                    println!("sent {hangups} SIGHUPs while the daemon started");
                }
                return daemon;
            }
            if hangups_after.is_some_and(|after| spawned.elapsed() >= after) {
                // SAFETY: kill(2) on the child's pid, which is ours until we reap it.
                unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
                hangups += 1;
            }
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("shaper run exited early ({status}):\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "shaper run not ready after {} s:\n{}",
                READY_WITHIN.as_secs(),
                daemon.log()
            );
            let pause = if hangups_after.is_some() { 20 } else { 50 };
            std::thread::sleep(Duration::from_millis(pause));
        }
    }

    /// Starts `program run ARGS` as [`start_program`](Self::start_program) does and kills it
    /// with SIGKILL as soon as its log has a line containing `step` (polled every millisecond,
    /// so it dies a moment after that step): a crash in the middle of a start. Returns the log.
    pub fn killed_at_step(
        program: &Path,
        ns: &Namespace,
        tag: &str,
        args: &[&str],
        state: &Path,
        step: &str,
    ) -> String {
        let mut daemon = Self::spawn(program, ns, tag, args, state);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if daemon.log().contains(step) {
                let mut child = daemon.child.take().expect("running");
                let _ = child.kill();
                let _ = child.wait();
                // Its pins stay for the next daemon: nothing of them is taken down on drop.
                daemon.pin_base = PathBuf::new();
                return daemon.log();
            }
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "shaper run exited ({status}) before {step:?}:\n{}",
                    daemon.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "shaper run did not log {step:?} within {} s:\n{}",
                READY_WITHIN.as_secs(),
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `program --socket S run --state STATE --pin-dir BASE ARGS` in `ns`, its stderr the log in
    /// the daemon's own directory; not waited for.
    fn spawn(program: &Path, ns: &Namespace, tag: &str, args: &[&str], state: &Path) -> Self {
        let dir = Self::dir(tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let socket = dir.join("shaper.sock");
        let log = dir.join("daemon.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let pin_base = pin_base();
        let child = ns
            .command(program)
            .arg("--socket")
            .arg(&socket)
            .arg("run")
            .arg("--state")
            .arg(state)
            .arg("--pin-dir")
            .arg(&pin_base)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn shaper run");
        Self {
            child: Some(child),
            program: program.to_owned(),
            dir,
            socket,
            log,
            netns: ns.name.clone(),
            pin_base,
        }
    }

    /// Runs the CLI of the daemon's own binary, `shaper --socket SOCKET ARGS`, against this
    /// daemon (from the test's own namespace: the control socket is a file, not bound to a
    /// network namespace).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.program)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run the shaper CLI")
    }

    /// Runs the CLI and asserts it succeeded; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "shaper {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The rules in force, from the control socket.
    pub fn rules(&self) -> Vec<RuleView> {
        match control::request(&self.socket, &Request::LimitLs) {
            Ok(Response::Rules { rules }) => rules,
            other => panic!("limit ls: {other:?}\n{}", self.log()),
        }
    }

    /// The daemon's pid (`ip netns exec` execs the binary, so it is shaper's own).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stats(&self) -> Snapshot {
        match control::request(&self.socket, &Request::Stats) {
            Ok(Response::Stats(snapshot)) => snapshot,
            other => panic!("stats: {other:?}\n{}", self.log()),
        }
    }

    /// Polls until `done(snapshot)` holds, for at most `timeout`; returns the last snapshot.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = self.stats();
            if done(&snapshot) || Instant::now() >= deadline {
                return snapshot;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until two snapshots 300 ms apart are equal (traffic has drained).
    pub fn settled(&self) -> Snapshot {
        let mut last = self.stats();
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.stats();
            if now == last {
                return now;
            }
            last = now;
        }
        panic!("counters still moving after 9 s");
    }

    /// SIGTERM, then waits (at most 10 s) for the exit status and returns it with the log.
    /// What the daemon leaves pinned (with `--persist`) stays for the test to look at; the next
    /// daemon in the namespace, or `down`, removes it.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let pin_base = std::mem::take(&mut self.pin_base);
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) touches no memory of ours, and the child is not reaped yet (no wait has
        // returned its status), so its pid cannot belong to another process. `ip netns exec` execs
        // the binary, so the pid is shaper's own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("shaper run ignored SIGTERM for 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Empty unless the daemon left its datapath pinned (`--persist`): the base goes with the
        // last pins.
        let _ = std::fs::remove_dir(&pin_base);
        (status, self.log())
    }

    /// [`stop`](Self::stop), and the daemon must have exited successfully (its log otherwise).
    /// Returns the log.
    pub fn stop_ok(self) -> String {
        let (status, log) = self.stop();
        assert!(status.success(), "{log}");
        log
    }
}

impl Daemon {
    /// SIGKILL, as a crash: nothing of the daemon's own shutdown runs; its pins stay.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Drop now removes the files but must not take the datapath down: the test goes on
        // with it.
        self.pin_base = PathBuf::new();
    }

    /// `shaper ARGS` run inside the daemon's namespace (for `status` and `down`, which act on
    /// the namespace's pinned datapath).
    pub fn in_netns(netns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", netns, SHAPER])
            .args(args)
            .output()
            .expect("run shaper in the namespace")
    }
}

/// `shaper down` for `netns`'s datapath under `pin_base`: what a test leaves pinned goes, even
/// when it fails.
pub fn down(netns: &str, pin_base: &Path) {
    let base = pin_base.to_string_lossy();
    let _ = Daemon::in_netns(netns, &["down", "--pin-dir", &base]);
    let _ = std::fs::remove_dir(pin_base);
}

/// `shaper status --json` in the daemon's namespace.
pub fn status(pair: &VethPair, pin_base: &Path) -> Value {
    let output = Daemon::in_netns(
        &pair.a.name,
        &["status", "--json", "--pin-dir", &pin_base.to_string_lossy()],
    );
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

/// The programs on the first interface's hooks (each hook must hold one).
pub fn program_ids(status: &Value) -> Vec<u64> {
    status["interfaces"][0]["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .map(|hook| {
            hook["program_id"]
                .as_u64()
                .expect("a program on every hook")
        })
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.pin_base.as_os_str().is_empty() {
            down(&self.netns, &self.pin_base);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
