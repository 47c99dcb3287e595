//! What `cargo xtask dist` builds, used as an operator would: the tarball unpacked into an
//! empty directory, its static binary running `shaper run` on a veth and holding a limit; the
//! Debian package installed with dpkg and purged without a trace.
//!
//! The artifacts come from `cargo xtask dist` (`.ci/run` runs it before the tests); without
//! them these tests skip outside CI and fail with CI=true.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    daemon::{Daemon, SHAPER},
    temp_dir::TempDir,
    traffic::{WIRE, receiver_on, sender_to, settled_count},
};
use shaper::{Direction, datapath::classifier::Proto};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `target/dist/` of the target directory this test was built in (CARGO_TARGET_DIR included):
/// the test binary's `CARGO_BIN_EXE_shaper` is `<target>/debug/shaper`.
fn dist_dir() -> PathBuf {
    Path::new(SHAPER)
        .parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .join("dist")
}

/// The artifact at `name` in the dist directory, or `None` (skip) when `cargo xtask dist` has
/// not run, which CI=true forbids.
fn artifact(test: &str, name: &str) -> Option<PathBuf> {
    let path = dist_dir().join(name);
    if path.is_file() {
        return Some(path);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !in_ci,
        "{test}: {} is missing; CI=true forbids skipping (.ci/run runs `cargo xtask dist` first)",
        path.display()
    );
    eprintln!(
        "{test}: skipped: {} is missing (run `cargo xtask dist`)",
        path.display()
    );
    None
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The limit: 8 Mbit/s = 1,000,000 wire bytes/s, with a burst of 196,608 bytes; offered three
/// times over for `SENDING`. The burst is the smallest the daemon accepts on a veth (three 64 KiB
/// GSO aggregates).
const LIMIT: &str = "8mbit";
const RATE_BYTES: u64 = 1_000_000;
const BURST: &str = "196608";
const BURST_BYTES: u64 = 196_608;
const OFFERED_BYTES: u64 = 3_000_000;
const SENDING: Duration = Duration::from_secs(3);
const PORT: u16 = 7301;

#[test]
fn the_tarballs_static_binary_runs_the_daemon_and_holds_a_limit() {
    let test = "the_tarballs_static_binary_runs_the_daemon_and_holds_a_limit";
    if !common::require_root(test) {
        return;
    }
    let name = format!("shaper-{VERSION}-x86_64-linux");
    let Some(tarball) = artifact(test, &format!("{name}.tar.gz")) else {
        return;
    };
    let unpacked = TempDir::new("tarball");
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked.0)
        .output()
        .expect("run tar");
    assert!(untar.status.success(), "{}", output_text(&untar));
    let binary = unpacked.0.join(&name).join("shaper");

    let ldd = Command::new("ldd").arg(&binary).output().expect("run ldd");
    let said = output_text(&ldd);
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "ldd {}: {said}",
        binary.display()
    );

    let pair = common::test_veth_pair!();
    let state = unpacked.0.join("state.json");
    let daemon = Daemon::start_program(&binary, &pair.a, "dt", &["--iface", &pair.a_if], &state);
    let set = Command::new(&binary)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["limit", "set", &PORT.to_string(), "--rate", LIMIT])
        .args(["--burst", BURST, "--proto", "udp", "--dir", "ingress"])
        .output()
        .expect("run the tarball's shaper limit set");
    assert!(set.status.success(), "{}", output_text(&set));

    let arrived = receiver_on(&pair, PORT);
    let started = Instant::now();
    let offered = sender_to(&pair, PORT, OFFERED_BYTES, SENDING)
        .wait()
        .expect("sender");
    let elapsed = started.elapsed();
    let stats = daemon.settled();
    let port = stats
        .port(&pair.a_if, Direction::Ingress, Proto::Udp, PORT)
        .cloned()
        .unwrap_or_else(|| panic!("no counters for udp/{PORT}: {stats:#?}"));
    let passed_bytes = (port.packets - port.dropped_packets) * WIRE;
    // The bucket's own bound: it can never pass more than its burst plus the rate over the
    // time the traffic took (measured from before the first datagram to after the last).
    let bound = BURST_BYTES + (RATE_BYTES as f64 * elapsed.as_secs_f64()) as u64;
    println!(
        "tarball binary: offered {offered} datagrams in {elapsed:.2?}, passed {passed_bytes} \
         wire bytes (bound {bound}), dropped {} datagrams",
        port.dropped_packets
    );
    assert_eq!(port.packets, offered, "the hook saw every datagram");
    assert!(passed_bytes <= bound, "{passed_bytes} > {bound}");
    // Offered three times the rate: about two thirds dropped; at least half is far from
    // anything an unenforced limit could produce.
    assert!(
        port.dropped_packets * 2 > offered,
        "the limit dropped too little: {port:?}"
    );
    assert_eq!(
        settled_count(&arrived),
        offered - port.dropped_packets,
        "what was not dropped arrived"
    );
    daemon.stop_ok();
}

/// Purges the package on drop, so a failing test leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "shaper"]).output();
    }
}

/// A directory moved out of the way, moved back on drop (after removing whatever took its
/// place).
struct SetAside {
    path: PathBuf,
    aside: Option<PathBuf>,
}

impl SetAside {
    fn new(path: &Path) -> Self {
        let aside = path.with_extension(format!("dist-test-{}", std::process::id()));
        let moved = path.exists().then(|| {
            std::fs::rename(path, &aside)
                .unwrap_or_else(|e| panic!("moving {} aside: {e}", path.display()));
            aside
        });
        Self {
            path: path.to_owned(),
            aside: moved,
        }
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        if let Some(aside) = &self.aside {
            let _ = std::fs::remove_dir_all(&self.path);
            if let Err(e) = std::fs::rename(aside, &self.path) {
                eprintln!(
                    "putting {} back from {}: {e}",
                    self.path.display(),
                    aside.display()
                );
            }
        }
    }
}

/// Paths the package or its maintainer scripts create outside shared directories, each gone
/// after a purge: the files dpkg tracks, the enablement symlink deb-systemd-helper makes (it
/// does so without systemd running), its state, and the state directory.
fn package_paths(deb: &Path) -> Vec<PathBuf> {
    let listing = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .output()
        .expect("run dpkg-deb");
    assert!(listing.status.success(), "{}", output_text(&listing));
    let names = Command::new("tar")
        .arg("-t")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut tar| {
            use std::io::Write as _;
            tar.stdin
                .take()
                .expect("stdin")
                .write_all(&listing.stdout)?;
            tar.wait_with_output()
        })
        .expect("run tar -t");
    let mut paths: Vec<PathBuf> = String::from_utf8_lossy(&names.stdout)
        .lines()
        .filter(|name| !name.ends_with('/'))
        .map(|name| Path::new("/").join(name.trim_start_matches("./")))
        .collect();
    paths.extend(
        [
            "/etc/shaper",
            "/var/lib/shaper",
            "/usr/share/doc/shaper",
            "/etc/systemd/system/multi-user.target.wants/shaper.service",
            "/var/lib/systemd/deb-systemd-helper-enabled/shaper.service.dsh-also",
            "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/shaper.service",
        ]
        .map(PathBuf::from),
    );
    paths
}

#[test]
fn the_deb_installs_runs_and_purges_without_a_trace() {
    let test = "the_deb_installs_runs_and_purges_without_a_trace";
    if !common::require_root(test) {
        return;
    }
    let Some(deb) = artifact(test, &format!("shaper_{VERSION}-1_amd64.deb")) else {
        return;
    };
    let installed_before = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "shaper"])
        .output()
        .expect("run dpkg-query");
    let status = String::from_utf8_lossy(&installed_before.stdout);
    assert!(
        !status.contains("installed") || status.contains("not-installed"),
        "a shaper package is installed on this machine ({status}); this test would replace it"
    );
    // A daemon run outside the package (its default --state) may have left /var/lib/shaper,
    // which the purge removes with everything in it: set it aside and put it back afterwards.
    let state_dir = Path::new("/var/lib/shaper");
    let _set_aside = SetAside::new(state_dir);
    let paths = package_paths(&deb);
    for path in &paths {
        assert!(
            !path.exists(),
            "{} exists before the install",
            path.display()
        );
    }

    let guard = Installed;
    let install = Command::new("dpkg")
        .arg("--install")
        .arg(&deb)
        .output()
        .expect("run dpkg");
    assert!(install.status.success(), "{}", output_text(&install));
    let version = Command::new("/usr/sbin/shaper")
        .arg("--version")
        .output()
        .expect("run /usr/sbin/shaper");
    let said = String::from_utf8_lossy(&version.stdout);
    assert!(
        said.starts_with(&format!("shaper {VERSION} (commit ")),
        "{said}"
    );
    assert!(Path::new("/var/lib/shaper").is_dir());
    // Enabled on install, even with no systemd running to start it.
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/shaper.service").is_symlink(),
        "not enabled"
    );
    let conffiles = std::fs::read_to_string("/var/lib/dpkg/info/shaper.conffiles")
        .expect("the package's conffiles");
    assert_eq!(conffiles, "/etc/shaper/shaper.toml\n");

    // An upgrade (here: the same package again, which runs the upgrade path of the scripts)
    // keeps an administrator's edit of the conffile without asking.
    let edit = "\n# edited by the administrator\n";
    let config = Path::new("/etc/shaper/shaper.toml");
    let mut edited = std::fs::read_to_string(config).expect("read the installed config");
    edited.push_str(edit);
    std::fs::write(config, &edited).expect("edit the installed config");
    let again = Command::new("dpkg")
        .arg("--install")
        .arg(&deb)
        .output()
        .expect("run dpkg");
    assert!(again.status.success(), "{}", output_text(&again));
    assert_eq!(
        std::fs::read_to_string(config).expect("read the config"),
        edited,
        "the upgrade replaced the administrator's config"
    );

    let purge = Command::new("dpkg")
        .args(["--purge", "shaper"])
        .output()
        .expect("run dpkg --purge");
    assert!(purge.status.success(), "{}", output_text(&purge));
    drop(guard);
    let left: Vec<_> = paths
        .iter()
        .filter(|path| path.exists() || path.is_symlink())
        .collect();
    assert!(left.is_empty(), "left after the purge: {left:?}");
}
