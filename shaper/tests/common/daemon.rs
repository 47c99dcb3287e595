//! The real `shaper run` binary as a child process inside a test namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use shaper::{
    control::{self, Request, Response},
    policy::rules_in_force::RuleView,
    telemetry::counter_snapshot::Snapshot,
};

use super::netns::Namespace;

pub const SHAPER: &str = env!("CARGO_BIN_EXE_shaper");

/// A daemon that is killed (and its files removed) on drop if the test did not stop it.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `shaper run ARGS` in `ns` and waits until its control socket answers. Its state
    /// file lives in the daemon's own directory.
    pub fn start(ns: &Namespace, tag: &str, args: &[&str]) -> Self {
        let dir = Self::dir(tag);
        let state = dir.join("state.json");
        Self::start_with_state(ns, tag, args, &state)
    }

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shaper-test-{}-{tag}", std::process::id()))
    }

    /// As [`start`](Self::start), with the state file at `state` (which outlives the daemon).
    pub fn start_with_state(ns: &Namespace, tag: &str, args: &[&str], state: &Path) -> Self {
        let dir = Self::dir(tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let socket = dir.join("shaper.sock");
        let log = dir.join("daemon.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = ns
            .command(SHAPER)
            .arg("--socket")
            .arg(&socket)
            .arg("run")
            .arg("--state")
            .arg(state)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn shaper run");
        let mut daemon = Self {
            child: Some(child),
            dir,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if control::request(&daemon.socket, &Request::Stats).is_ok() {
                return daemon;
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
                "shaper run not ready after 15 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the CLI, `shaper --socket SOCKET ARGS`, against this daemon (from the test's own
    /// namespace: the control socket is a file, not bound to a network namespace).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(SHAPER)
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
    pub fn stop(mut self) -> (ExitStatus, String) {
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
        (status, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
