//! The demo's child processes: the `shaper run` daemon, `shaper` CLI commands and `shaper top`.
//! Every long-lived child ends with the demo, whichever way the demo ends.

use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use shaper_testbed::netns::Namespace;

/// The release `shaper` binary and the daemon's control socket.
#[derive(Debug, Clone)]
pub struct Shaper {
    pub binary: PathBuf,
    pub socket: PathBuf,
}

impl Shaper {
    /// `shaper --socket SOCKET ARGS`, run from the caller's namespace: the control socket is a
    /// file, not bound to a network namespace.
    pub fn command(&self, args: &[impl AsRef<str>]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args.iter().map(AsRef::as_ref));
        cmd
    }

    /// The command line of [`command`](Self::command) as a user would type it.
    pub fn command_line(&self, args: &[impl AsRef<str>]) -> String {
        let mut words = vec![
            self.binary.display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
        ];
        words.extend(args.iter().map(|a| a.as_ref().to_owned()));
        words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the CLI with its output captured; an error carries its stderr.
    pub fn run(&self, args: &[impl AsRef<str>]) -> anyhow::Result<Output> {
        let output = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        if !output.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.command_line(args),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }
}

/// Quotes `word` for a POSIX shell when it holds anything beyond the usual path characters.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@%".contains(c));
    if plain {
        word.into()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Makes the child get `SIGTERM` when the demo dies without cleaning up (SIGKILL, a crash), so
/// no daemon keeps a namespace alive and no `shaper top` keeps the terminal in raw mode.
fn end_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (prctl, getppid, _exit). The death signal survives the exec of `ip` and of shaper (neither
    // is set-uid). It follows the forking *thread*: children are spawned from the main thread,
    // which lives until the demo ends.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: nobody would signal this child.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// A child process ended with `SIGTERM` (then `SIGKILL` after a grace period) on drop.
#[derive(Debug)]
pub struct Guarded {
    child: Option<Child>,
    grace: Duration,
}

impl Guarded {
    /// Spawns `cmd` so that it ends with the demo; `grace` is how long it gets to exit after
    /// `SIGTERM`.
    pub fn spawn(mut cmd: Command, grace: Duration) -> anyhow::Result<Self> {
        end_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        Ok(Self {
            child: Some(child),
            grace,
        })
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("the child was already stopped"),
        }
    }

    /// Sends `SIGTERM` and waits for the exit status, for at most the grace period; then
    /// `SIGKILL`, and an error saying so.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the child was already stopped");
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill(2) has no memory effects; the pid is our unreaped child's, so it cannot
        // have been reused.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + self.grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "pid {} ignored SIGTERM for {} s and was killed",
                    child.id(),
                    self.grace.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the child to exit by itself.
    pub fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        match self.child.take() {
            Some(mut child) => Ok(child.wait()?),
            None => bail!("the child was already stopped"),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.terminate()
        {
            eprintln!("xtask: {e}");
        }
    }
}

/// `shaper run` in the server namespace, with its state file, socket and log in `dir`.
#[derive(Debug)]
pub struct Daemon {
    process: Guarded,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on `iface` in `ns` and waits until its control socket answers.
    pub fn start(shaper: &Shaper, ns: &Namespace, iface: &str, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join("daemon.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = ns.command(&shaper.binary);
        cmd.arg("--socket")
            .arg(&shaper.socket)
            .arg("run")
            .arg("--state")
            .arg(dir.join("state.json"))
            .args(["--iface", iface])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            // Its own process group: a Ctrl-C on the terminal reaches the demo, which then
            // stops the daemon in order, rather than the daemon directly.
            .process_group(0);
        // Detaching and exiting takes well under a second.
        let mut daemon = Self {
            process: Guarded::spawn(cmd, Duration::from_secs(10))?,
            log,
        };
        // Loading and attaching the program takes about a second; 15 s means something is wrong.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if shaper.run(&["stats"]).is_ok() {
                return Ok(daemon);
            }
            if let Some(status) = daemon.process.try_wait()? {
                bail!("shaper run exited early ({status}):\n{}", daemon.log());
            }
            if Instant::now() >= deadline {
                bail!("shaper run not ready after 15 s:\n{}", daemon.log());
            }
            super::sleep(Duration::from_millis(100))?;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon with `SIGTERM`; an error if it does not exit cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.process.terminate()?;
        if !status.success() {
            bail!("shaper run exited with {status}:\n{}", self.log());
        }
        Ok(())
    }
}
