//! The real `shaper run` given a state file or a config file that is truncated, corrupted, or
//! from a newer schema: it must refuse to start with a message naming the file, change neither
//! file by a byte, attach nothing, and leave the good state to be resumed by the next start.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use common::{
    daemon::{Daemon, SHAPER},
    netns::InNamespace as _,
};
use shaper_testbed::netns::Namespace;

/// A namespace with a daemon's saved state in it: one rule, on port 9090.
struct Sandbox {
    ns: Namespace,
    dir: PathBuf,
    state: PathBuf,
    saved: Vec<u8>,
}

const ARGS: [&str; 4] = ["--iface", "lo", "--metrics-addr", "off"];

impl Sandbox {
    fn new(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let ns = Namespace::create(&format!("shaper-test-{id}-{tag}")).expect("test namespace");
        let dir =
            std::env::temp_dir().join(format!("shaper-test-{}-{tag}-files", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let state = dir.join("state.json");
        let daemon = Daemon::start_with_state(&ns, tag, &ARGS, &state);
        daemon.cli_ok(&["limit", "set", "9090", "--rate", "10mbit"]);
        let (status, log) = daemon.stop();
        assert!(status.success(), "{log}");
        let saved = std::fs::read(&state).expect("saved state");
        Self {
            ns,
            dir,
            state,
            saved,
        }
    }

    /// `shaper run ARGS EXTRA`, which must exit by itself (a daemon that started is killed and
    /// the test fails); its status and stderr.
    fn run_refused(&self, extra: &[&Path]) -> (ExitStatus, String) {
        let mut child = self
            .ns
            .command(SHAPER)
            .arg("--socket")
            .arg(self.dir.join("shaper.sock"))
            .arg("run")
            .args(ARGS)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shaper run");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().expect("output");
                panic!(
                    "shaper run {extra:?} started instead of refusing:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = child.wait_with_output().expect("output");
        (status, String::from_utf8_lossy(&output.stderr).into_owned())
    }

    /// No program is attached to lo in the sandbox.
    fn assert_nothing_attached(&self) {
        let programs = self.ns.within(|| {
            [TcAttachType::Ingress, TcAttachType::Egress].map(|hook| {
                SchedClassifier::query_tcx("lo", hook)
                    .expect("query tcx")
                    .1
                    .len()
            })
        });
        assert_eq!(programs, [0, 0], "programs left on lo");
        let qdiscs = self.ns.tc(&["qdisc", "show", "dev", "lo"]);
        assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    }

    /// The saved state still resumes: the rule on 9090 is back.
    fn assert_state_resumes(&self, tag: &str) {
        assert_eq!(std::fs::read(&self.state).unwrap(), self.saved);
        let daemon = Daemon::start_with_state(&self.ns, tag, &ARGS, &self.state);
        let rules = daemon.rules();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].ports.to_string(), "9090");
        daemon.stop_ok();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `bytes` with the first `from` replaced by `to`.
fn replaced(bytes: &[u8], from: &str, to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in {:?}", String::from_utf8_lossy(bytes)));
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

#[test]
fn a_truncated_corrupted_or_newer_state_file_is_refused_by_name_and_left_as_it_was() {
    common::root_or_skip!();
    let sandbox = Sandbox::new("rs");
    let saved = &sandbox.saved;
    let last_brace = saved
        .iter()
        .rposition(|&b| b == b'}')
        .expect("a JSON object");
    let cases: [(&str, Vec<u8>, &str); 8] = [
        ("half", saved[..saved.len() / 2].to_vec(), "truncated (it ends in the middle"),
        ("no-last-brace", saved[..last_brace].to_vec(), "truncated (it ends in the middle"),
        ("empty", Vec::new(), ": empty;"),
        ("not-utf8", replaced(saved, "9090", b"\xff090"), "not a valid version 1 state file"),
        ("garbage", b"\x7fELF\x02\x01\x01\0garbage".to_vec(), "not a shaper state file"),
        ("bad-rule", replaced(saved, "\"9090\"", b"\"90-80\""), "not a valid version 1 state file"),
        ("newer", replaced(saved, "\"version\": 1", b"\"version\": 2"), "version 2, written by a newer shaper"),
        (
            "newer-format",
            br#"{"version": 3, "interfaces": {"lo": {"rules": [{"port": 9090, "rate": "10mbit"}]}}}"#
                .to_vec(),
            "version 3, written by a newer shaper",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = sandbox.dir.join(format!("{name}.json"));
        std::fs::write(&path, &bytes).unwrap();
        let (status, stderr) = sandbox.run_refused(&[Path::new("--state"), &path]);
        assert!(!status.success(), "{name}: {stderr}");
        let head = format!("shaper: state file {}: ", path.display());
        assert!(stderr.contains(&head), "{name}: {stderr}");
        assert!(stderr.contains(reason), "{name}: {stderr}");
        assert!(
            stderr.contains("move it away to start from the config file's rules"),
            "{name}: {stderr}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: the file changed"
        );
        sandbox.assert_nothing_attached();
    }
    sandbox.assert_state_resumes("rs2");
}

#[test]
fn a_truncated_corrupted_or_newer_config_is_refused_by_name_and_changes_nothing() {
    common::root_or_skip!();
    let sandbox = Sandbox::new("rc");
    let example = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaper.toml")).unwrap();
    let good = b"[[limit]]\nport = 9090\nrate = \"10mbit\"\n";
    // Inside the first rule's rate (not a comment: a file cut in a comment is a valid file).
    let rate = b"\nrate = \"10mbit\"";
    let cut = example
        .windows(rate.len())
        .position(|w| w == rate)
        .expect("the example's first rate")
        + rate.len()
        - 4;
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("cut-in-a-string", example[..cut].to_vec(), ": line "),
        (
            "cut-in-a-header",
            b"[[limit]]\nport = 9090\nrate = 1\n[[lim".to_vec(),
            "line 4",
        ),
        (
            "not-utf8",
            replaced(good, "9090", b"\xff090"),
            "cannot read config file",
        ),
        (
            "garbage",
            b"\x7fELF\x02\x01\x01\0garbage".to_vec(),
            ": line 1, column ",
        ),
        (
            "newer-top-key",
            [b"schema_version = 2\n".as_slice(), good].concat(),
            "`schema_version`",
        ),
        (
            "newer-rule-key",
            [good.as_slice(), b"shape = \"fq\"\n"].concat(),
            "`shape`",
        ),
    ];
    let state_dir_before = listing(&sandbox.dir);
    for (name, bytes, detail) in cases {
        let path = sandbox.dir.join(format!("{name}.toml"));
        std::fs::write(&path, &bytes).unwrap();
        let (status, stderr) = sandbox.run_refused(&[
            Path::new("--state"),
            &sandbox.state,
            Path::new("--config"),
            &path,
        ]);
        assert!(!status.success(), "{name}: {stderr}");
        let named = stderr.contains(&format!("shaper: {}: ", path.display()))
            || stderr.contains(&format!("cannot read config file {}", path.display()));
        assert!(named, "{name}: {stderr}");
        assert!(stderr.contains(detail), "{name}: {stderr}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: the config changed"
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            listing(&sandbox.dir),
            state_dir_before,
            "{name}: files changed"
        );
        sandbox.assert_nothing_attached();
    }
    sandbox.assert_state_resumes("rc2");
}

/// What a root daemon writes cannot be redirected: a symlink planted at the state file's lock
/// or at the socket path stops the start, a regular file at the socket path is not deleted, a
/// link at the old fixed temporary name of the state file is never written through, and a
/// config or state directory others may write to is refused by name. Every link's target keeps
/// its bytes.
#[test]
fn links_planted_where_the_daemon_writes_are_refused_and_never_followed() {
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    common::root_or_skip!();
    let sandbox = Sandbox::new("ln");
    let precious = sandbox.dir.join("precious");
    std::fs::write(&precious, b"keep").unwrap();
    let state_args = [Path::new("--state"), &sandbox.state];

    let lock = sandbox.dir.join("state.json.lock");
    symlink(&precious, &lock).unwrap();
    let (status, stderr) = sandbox.run_refused(&state_args);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is a symbolic link", lock.display())),
        "{stderr}"
    );
    std::fs::remove_file(&lock).unwrap();

    let socket = sandbox.dir.join("shaper.sock");
    symlink(&precious, &socket).unwrap();
    let (status, stderr) = sandbox.run_refused(&state_args);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, b"not a socket").unwrap();
    let (status, stderr) = sandbox.run_refused(&state_args);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("is a regular file, not a socket"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
    std::fs::remove_file(&socket).unwrap();
    sandbox.assert_nothing_attached();

    let config = sandbox.dir.join("shared.toml");
    std::fs::write(&config, b"[[limit]]\nport = 9090\nrate = \"10mbit\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (status, stderr) =
        sandbox.run_refused(&[state_args[0], state_args[1], Path::new("--config"), &config]);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is writable by everyone", config.display())),
        "{stderr}"
    );
    std::fs::remove_file(&config).unwrap();

    let open_dir = sandbox.dir.join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let open_state = open_dir.join("state.json");
    let (status, stderr) = sandbox.run_refused(&[Path::new("--state"), &open_state]);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is writable by everyone", open_dir.display())),
        "{stderr}"
    );
    assert!(!open_state.exists());
    sandbox.assert_nothing_attached();

    // The fixed temporary name of earlier versions, a link: a rule change saves the state
    // without writing through it.
    let old_tmp = sandbox.dir.join("state.json.tmp");
    symlink(&precious, &old_tmp).unwrap();
    let daemon = Daemon::start_with_state(&sandbox.ns, "ln2", &ARGS, &sandbox.state);
    daemon.cli_ok(&["limit", "set", "9091", "--rate", "10mbit"]);
    daemon.stop_ok();
    let saved = std::fs::read_to_string(&sandbox.state).unwrap();
    assert!(saved.contains("9091"), "{saved}");
    assert!(
        std::fs::symlink_metadata(&old_tmp)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
}

/// Every file of `dir` with its contents.
fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let contents = std::fs::read(&path).unwrap_or_default();
            (path, contents)
        })
        .collect();
    files.sort();
    files
}

/// A pin directory the daemon did not make: it adopts whatever maps and links it finds there, so
/// one another user owns or may write to is refused before anything is loaded or attached.
#[test]
fn a_pin_directory_others_own_or_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    common::root_or_skip!();
    /// Removes the planted pin directories, even when an assertion fails.
    struct Planted(Vec<PathBuf>);
    impl Drop for Planted {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    let sandbox = Sandbox::new("pin");
    let base = common::daemon::pin_base();
    let foreign = base.with_file_name(format!("{}-foreign", std::process::id()));
    let open = base.with_file_name(format!("{}-open", std::process::id()));
    let _planted = Planted(vec![foreign.clone(), open.clone()]);
    for dir in [&foreign, &open] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (dir, expected) in [
        (&foreign, "is owned by uid 65534, not by this daemon"),
        (&open, "is writable by everyone"),
    ] {
        let (status, stderr) = sandbox.run_refused(&[
            Path::new("--state"),
            &sandbox.state,
            Path::new("--pin-dir"),
            dir,
        ]);
        assert!(!status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("{} {expected}", dir.display())),
            "{stderr}"
        );
        sandbox.assert_nothing_attached();
        // Nothing was pinned below it.
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "{}",
            dir.display()
        );
    }
    sandbox.assert_state_resumes("pin2");
}
