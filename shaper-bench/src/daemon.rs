//! The real `shaper run` in a bench namespace, and its CLI. Stopped (SIGTERM, then SIGKILL) and
//! its files removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use shaper::control::{self, Request};

use crate::sys::{Namespace, TempDir, check_interrupt};

pub struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    dir: TempDir,
    socket: PathBuf,
    /// From spawning until the control socket answered.
    pub start_time: Duration,
}

impl Daemon {
    /// `shaper run --iface IFACE` in `ns`, with `config` (TOML) if given; waits (at most two
    /// minutes) until its control socket answers.
    pub fn start(
        bin: &Path,
        ns: &Namespace,
        iface: &str,
        tag: &str,
        config: Option<&str>,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new(tag)?;
        let socket = dir.path().join("shaper.sock");
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let mut cmd = ns.command(bin);
        cmd.arg("--socket")
            .arg(&socket)
            .args(["run", "--iface", iface, "--state"])
            .arg(dir.path().join("state.json"));
        if let Some(config) = config {
            let path = dir.path().join("shaper.toml");
            std::fs::write(&path, config)?;
            cmd.arg("--config").arg(path);
        }
        let started = Instant::now();
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut daemon = Self {
            child: Some(child),
            bin: bin.to_owned(),
            dir,
            socket,
            start_time: Duration::ZERO,
        };
        let deadline = started + Duration::from_secs(120);
        loop {
            check_interrupt()?;
            // `stats`, not `limit ls`: with 65,535 rules the listing is a 25 MB reply whose
            // buffers would stay in the daemon's RSS and inflate the memory figure.
            if control::request(&daemon.socket, &Request::Stats).is_ok() {
                daemon.start_time = started.elapsed();
                return Ok(daemon);
            }
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("shaper run exited ({status}): {}", daemon.log());
            }
            if Instant::now() >= deadline {
                bail!("shaper run not ready after 120 s: {}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("daemon not running")
    }

    /// Runs `shaper --socket S ARGS` and returns its wall time, start to exit.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let output = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running the shaper CLI")?;
        let took = started.elapsed();
        if !output.status.success() {
            bail!(
                "shaper {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(took)
    }

    /// Resident memory, from /proc/PID/status.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .context("no VmRSS in /proc/PID/status")
    }

    /// The BPF maps the daemon holds, from its file descriptors: (map id, memlock bytes) as
    /// /proc/PID/fdinfo reports them.
    pub fn maps(&self) -> anyhow::Result<Vec<(u32, u64)>> {
        let pid = self.pid()?;
        let mut maps = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let entry = entry?;
            let is_map = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-map");
            if !is_map {
                continue;
            }
            let fd = entry.file_name();
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
                maps.push((id as u32, memlock));
            }
        }
        maps.sort_unstable();
        maps.dedup();
        Ok(maps)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs the binary).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
