//! The systemd unit's own command lines, run for real. These machines have no systemd as PID 1,
//! so the test does what systemd would: it reads `deploy/systemd/shaper.service`, parses its
//! `ExecStart=` and `ExecReload=` lines as systemd does (systemd.service(5), "Command lines"),
//! and runs them in a test namespace on a veth, with the unit's paths moved into a temporary
//! directory and the tests' pin directory and socket appended. The daemon must attach, serve
//! the control socket and the metrics, reload its config on `ExecReload`, and, stopped with the
//! unit's `--persist`, leave the datapath in force (removed afterwards with `shaper down`).

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    daemon::{self, SHAPER},
    metrics::{get, samples},
    netns::VethPair,
};
use shaper::control::{self, Request, Response};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/systemd/shaper.service"
);

/// The value of the one `KEY=` line in the `[Service]` section, continuation lines joined.
fn service_setting(unit: &str, key: &str) -> String {
    let mut section = "";
    let mut found = Vec::new();
    let mut lines = unit.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if section != "[Service]" || name.trim() != key {
            continue;
        }
        let mut value = value.trim().to_owned();
        // A trailing backslash continues the value on the next line (systemd.syntax(7)).
        while let Some(stripped) = value.strip_suffix('\\') {
            value = format!(
                "{} {}",
                stripped.trim_end(),
                lines.next().unwrap_or("").trim()
            );
        }
        found.push(value);
    }
    assert_eq!(
        found.len(),
        1,
        "{key}= must appear once in [Service]: {found:?}"
    );
    found.remove(0)
}

/// A command line as systemd reads it: the special prefixes (`-`, `@`, `:`, `+`, `!`, `!!`)
/// stripped, then split into words with shell-like quoting. `@` would set argv[0] apart from
/// the program; this unit does not use it, and the test refuses it rather than run the wrong
/// thing.
fn command_words(line: &str) -> Result<Vec<String>, String> {
    let prefixes = line
        .find(|c: char| !matches!(c, '-' | '@' | ':' | '+' | '!'))
        .unwrap_or(line.len());
    if line[..prefixes].contains('@') {
        return Err(format!("the `@` prefix is not handled: {line}"));
    }
    shlex::split(&line[prefixes..]).ok_or_else(|| format!("unbalanced quoting: {line}"))
}

/// The unit's paths, moved below a directory of the test's own.
struct Relocated {
    root: PathBuf,
}

impl Relocated {
    fn new(tag: &str) -> Self {
        let root = std::env::temp_dir().join(format!("shaper-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["etc/shaper", "var/lib/shaper", "run/shaper"] {
            std::fs::create_dir_all(root.join(dir)).expect("relocated dir");
        }
        Self { root }
    }

    /// `word` with the unit's binary replaced by the built one and its directories moved.
    fn word(&self, word: &str) -> String {
        if word == "/usr/sbin/shaper" {
            return SHAPER.to_owned();
        }
        for dir in ["/etc/shaper", "/var/lib/shaper", "/run/shaper"] {
            if let Some(rest) = word.strip_prefix(dir)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{dir}{rest}", self.root.display());
            }
        }
        word.to_owned()
    }

    fn path(&self, unit_path: &str) -> PathBuf {
        PathBuf::from(self.word(unit_path))
    }
}

impl Drop for Relocated {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The daemon the unit started; killed, and its datapath taken down, on drop.
struct Service {
    child: Option<Child>,
    netns: String,
    pin_base: PathBuf,
    log: PathBuf,
}

impl Service {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        daemon::down(&self.netns, &self.pin_base);
    }
}

fn config(iface: &str, rate: &str) -> String {
    format!(
        "interfaces = [\"{iface}\"]\n\n[[limit]]\nport = 7501\nproto = \"udp\"\nrate = \"{rate}\"\n"
    )
}

fn rule_rate(socket: &Path) -> Option<u64> {
    match control::request(socket, &Request::LimitLs) {
        Ok(Response::Rules { rules }) => rules.first().map(|rule| rule.rate_bps),
        _ => None,
    }
}

fn status_json(pair: &VethPair, pin_base: &Path) -> serde_json::Value {
    let output = daemon::Daemon::in_netns(
        &pair.a.name,
        &["status", "--json", "--pin-dir", &pin_base.to_string_lossy()],
    );
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

#[test]
fn the_units_exec_start_attaches_serves_reloads_on_exec_reload_and_persists() {
    common::root_or_skip!();
    let unit = std::fs::read_to_string(UNIT).expect("read the unit file");
    let start = command_words(&service_setting(&unit, "ExecStart")).expect("ExecStart");
    let reload = command_words(&service_setting(&unit, "ExecReload")).expect("ExecReload");
    assert_eq!(start[0], "/usr/sbin/shaper", "{start:?}");
    assert!(start.contains(&"--persist".to_owned()), "{start:?}");

    let pair = common::test_veth_pair!();
    let dirs = Relocated::new("su");
    // The unit's config is a symlink to a file elsewhere, so an edit of that file makes no
    // event in the watched directory: the reload seen below is ExecReload's, not the watch's.
    let config_path = dirs.path("/etc/shaper/shaper.toml");
    let real_config = dirs.root.join("elsewhere.toml");
    std::fs::write(&real_config, config(&pair.a_if, "2mbit")).expect("write the config");
    std::os::unix::fs::symlink(&real_config, &config_path).expect("symlink the config");
    let socket = dirs.root.join("shaper.sock");
    let log = dirs.root.join("daemon.log");
    let pin_base = daemon::pin_base();

    // The unit's words, relocated, then what the test environment needs on top.
    let words: Vec<String> = start.iter().map(|word| dirs.word(word)).collect();
    let child = pair
        .a
        .command(&words[0])
        .args(&words[1..])
        .arg("--socket")
        .arg(&socket)
        .arg("--pin-dir")
        .arg(&pin_base)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("run the unit's ExecStart");
    let mut service = Service {
        child: Some(child),
        netns: pair.a.name.clone(),
        pin_base: pin_base.clone(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while rule_rate(&socket).is_none() {
        if let Some(status) = service
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("ExecStart exited early ({status}):\n{}", service.log());
        }
        assert!(
            Instant::now() < deadline,
            "no control socket:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rule_rate(&socket), Some(2_000_000));
    assert!(
        dirs.path("/var/lib/shaper/state.json").is_file(),
        "the state file is in the unit's state directory"
    );

    let status = status_json(&pair, &pin_base);
    assert_eq!(
        status["interfaces"][0]["name"],
        pair.a_if.as_str(),
        "{status}"
    );
    let metrics_addr: SocketAddr = "127.0.0.1:19350".parse().unwrap();
    let response = get(&pair.a, metrics_addr, "/metrics", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let got = samples(&response.body);
    for direction in ["ingress", "egress"] {
        let series = format!(
            "shaper_program_attached{{iface=\"{}\",direction=\"{direction}\",mode=\"tcx\"}}",
            pair.a_if
        );
        assert_eq!(got.get(&series), Some(&1.0), "{}", response.body);
    }

    // ExecReload, with $MAINPID as systemd sets it.
    let pid = service.child.as_ref().expect("running").id().to_string();
    std::fs::write(&real_config, config(&pair.a_if, "4mbit")).expect("rewrite the config");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        rule_rate(&socket),
        Some(2_000_000),
        "reloaded without ExecReload"
    );
    let reload: Vec<String> = reload
        .iter()
        .map(|word| word.replace("$MAINPID", &pid).replace("${MAINPID}", &pid))
        .collect();
    let signalled = Instant::now();
    let ran = Command::new(&reload[0])
        .args(&reload[1..])
        .status()
        .expect("run the unit's ExecReload");
    assert!(ran.success(), "ExecReload: {ran}");
    while rule_rate(&socket) != Some(4_000_000) {
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "ExecReload did not reload:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "ExecReload: the new rate in force after {} ms",
        signalled.elapsed().as_millis()
    );
    assert!(service.log().contains("(SIGHUP)"), "{}", service.log());

    // systemd stops a service with SIGTERM; the unit's --persist leaves the datapath in force.
    let mut child = service.child.take().expect("running");
    // SAFETY: kill(2) touches no memory of ours; the child is not reaped, so the pid is its own.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exit = child.wait().expect("wait for the daemon");
    assert!(exit.success(), "{exit}\n{}", service.log());
    assert!(
        service
            .log()
            .contains("stays attached and pinned (--persist)"),
        "{}",
        service.log()
    );
    let status = status_json(&pair, &pin_base);
    assert_eq!(status["pinned"], true, "{status}");
    assert_eq!(status["daemon_pid"], serde_json::Value::Null, "{status}");
    // Drop runs `shaper down`; check that it leaves nothing.
    drop(service);
    assert_eq!(status_json(&pair, &pin_base)["pinned"], false);
}

#[test]
fn command_lines_are_read_as_systemd_reads_them() {
    assert_eq!(
        command_words("-+/usr/sbin/shaper run --config '/etc/shaper/a b.toml' \"--persist\""),
        Ok(vec![
            "/usr/sbin/shaper",
            "run",
            "--config",
            "/etc/shaper/a b.toml",
            "--persist"
        ]
        .into_iter()
        .map(String::from)
        .collect())
    );
    let unit = "[Unit]\nExecStart=/not/this\n[Service]\n# ExecStart=/nor/this\nExecStart=/bin/x \\\n  --flag\n";
    assert_eq!(service_setting(unit, "ExecStart"), "/bin/x --flag");
    assert!(command_words("@/bin/x argv0").is_err());
    assert!(command_words("/bin/x 'unbalanced").is_err());
}
