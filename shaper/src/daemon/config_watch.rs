//! Reloading the config file: on SIGHUP, and when the file changes.
//!
//! The file's *directory* is watched (inotify), not the file: an editor saves by writing a new
//! file and renaming it over the old one, and a Kubernetes ConfigMap volume updates by renaming
//! a new `..data_tmp` symlink over `..data`, which the config file (`shaper.toml ->
//! ..data/shaper.toml`) points through. A watch on the file itself would follow the old inode
//! and see only `IN_DELETE_SELF` or nothing at all (inotify(7), "Limitations and caveats").
//! Every change in the directory starts a quiet period ([`QUIET`]); when it ends the path is
//! resolved and read afresh, and reloaded only if its contents differ from the last loaded.
//! SIGHUP always reloads: it is how an operator asks to put the file's rules back (see
//! [`crate::policy::config_reload`]).
//!
//! A reload changes only the `[[limit]]` rules. A change of any other setting is logged as not
//! applied: the interfaces, the attach mode, the metrics address and the `persist` choice are
//! fixed at start-up (changing them would re-attach programs or rebind sockets a running
//! service relies on), `metrics_top_ports` sizes the exporter's selection at start-up, and the
//! `[[watch]]` tables are taken at start-up like the other settings (`shaper watch`/`unwatch`
//! change watches at run time).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use inotify::{Inotify, WatchMask};
use log::{error, info, warn};
use tokio::signal::unix::Signal;

use super::InForce;
use crate::{
    daemon::DaemonError,
    error::{Result, chain},
    policy::config_file::{self, Config},
};

/// How long the directory must stay quiet after a change before the file is read. Writers that
/// write in place emit a burst of `IN_MODIFY` events; a ConfigMap update is a few renames in a
/// row. 300 ms covers both and keeps a reload well within a second of the last write.
pub const QUIET: Duration = Duration::from_millis(300);

/// However busy the directory, the file is read at least this often while it changes.
const MOST_DELAY: Duration = Duration::from_secs(1);

/// The directory events that may change what the path resolves to or holds.
fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
}

/// Serves SIGHUP (the stream the daemon claimed at its start) and the watch until the daemon
/// stops. Without a config file, SIGHUP is answered with a log line (rather than the signal's
/// default, which would end the daemon).
pub(super) async fn serve(
    in_force: Arc<Mutex<InForce>>,
    config: Option<(PathBuf, Config)>,
    mut sighup: Signal,
) -> Result<()> {
    let Some((path, started_with)) = config else {
        loop {
            sighup.recv().await;
            info!("SIGHUP: no --config, nothing to reload");
        }
    };
    let mut watcher = Watcher::new(&path, &started_with);
    // The file may have changed between the start-up load and now.
    if watcher.changed() {
        watcher.reload(&in_force, "the file changed during start-up");
    }
    let mut events = watch_directory(&path);
    loop {
        tokio::select! {
            _ = sighup.recv() => {
                watcher.changed();
                watcher.reload(&in_force, "SIGHUP");
            }
            Some(()) = next_change(&mut events) => {
                if settle(&mut events, &mut sighup).await == Settled::Sighup {
                    watcher.changed();
                    watcher.reload(&in_force, "SIGHUP");
                } else if watcher.changed() {
                    watcher.reload(&in_force, "the file changed");
                }
            }
        }
    }
}

type Events = Option<inotify::EventStream<Vec<u8>>>;

/// An inotify stream of the changes in `path`'s directory; `None` (SIGHUP still works) when
/// inotify is not available.
fn watch_directory(path: &Path) -> Events {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let watched = Inotify::init().and_then(|inotify| {
        inotify.watches().add(dir, mask())?;
        inotify.into_event_stream(vec![0; 4096])
    });
    match watched {
        Ok(stream) => {
            info!(
                "watching {} for changes of {} (reload also on SIGHUP)",
                dir.display(),
                path.display()
            );
            Some(stream)
        }
        Err(e) => {
            warn!(
                "cannot watch {} ({e}): the config file is reloaded on SIGHUP only",
                dir.display()
            );
            None
        }
    }
}

/// The next change in the directory; never, once the watch is gone.
async fn next_change(events: &mut Events) -> Option<()> {
    let Some(stream) = events.as_mut() else {
        return std::future::pending().await;
    };
    match stream.next().await {
        Some(Ok(event)) => {
            if event.mask.contains(inotify::EventMask::IGNORED) {
                warn!("the config file's directory is gone: reload on SIGHUP only");
                *events = None;
            }
            Some(())
        }
        Some(Err(e)) => {
            warn!("watching the config file: {e}; reload on SIGHUP only");
            *events = None;
            None
        }
        None => {
            *events = None;
            None
        }
    }
}

/// How waiting for a quiet directory ended.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    Quiet,
    /// SIGHUP came first: it reloads at once, whatever the file holds.
    Sighup,
}

/// Waits until the directory has been quiet for [`QUIET`], or [`MOST_DELAY`] has passed, or
/// SIGHUP comes.
async fn settle(events: &mut Events, sighup: &mut tokio::signal::unix::Signal) -> Settled {
    let deadline = tokio::time::Instant::now() + MOST_DELAY;
    loop {
        let quiet_until = (tokio::time::Instant::now() + QUIET).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(quiet_until) => return Settled::Quiet,
            _ = sighup.recv() => return Settled::Sighup,
            change = next_change(events) => if change.is_none() { return Settled::Quiet },
        }
    }
}

/// The config file, what it held when last loaded, and the settings the daemon started with.
struct Watcher {
    path: PathBuf,
    started_with: Config,
    /// The contents last loaded or tried (a refused file is not retried until it changes).
    last: Option<Vec<u8>>,
}

impl Watcher {
    fn new(path: &Path, started_with: &Config) -> Self {
        // The bytes now stand for the start-up load when they parse to what it loaded.
        let now = std::fs::read(path).ok();
        let same = now.as_deref().is_some_and(|bytes| {
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| config_file::parse(text, &path.display().to_string()).ok())
                .is_some_and(|config| config == *started_with)
        });
        Self {
            path: path.to_owned(),
            started_with: started_with.clone(),
            last: if same { now } else { None },
        }
    }

    /// Whether the file (resolved afresh) holds other bytes than last time; remembers them.
    fn changed(&mut self) -> bool {
        let now = std::fs::read(&self.path).ok();
        if now.is_some() && now == self.last {
            return false;
        }
        self.last = now;
        true
    }

    fn reload(&self, in_force: &Mutex<InForce>, why: &str) {
        let path = self.path.display();
        // Read and parsed before the lock: the control socket and scrapes wait only for the
        // map writes.
        let loaded = config_file::load(&self.path);
        let mut in_force = match in_force.lock() {
            Ok(in_force) => in_force,
            Err(_) => {
                error!("reload of {path}: {}", DaemonError::Poisoned);
                return;
            }
        };
        let InForce {
            classifier, limits, ..
        } = &mut *in_force;
        let config = match loaded {
            Ok(config) => config,
            Err(e) => {
                limits.reload_failed();
                error!(
                    "reload of {path} ({why}) refused, the rules in force stay: {}",
                    chain(&e)
                );
                return;
            }
        };
        for change in self.not_applied(&config) {
            warn!("reload of {path}: {change} not applied; it takes effect at the next start");
        }
        match limits.reload(classifier, config.limits) {
            Ok(summary) => info!("reloaded {path} ({why}): {summary}"),
            Err(e) => error!(
                "reload of {path} ({why}) refused, the rules in force stay: {}",
                chain(&e)
            ),
        }
    }

    /// The settings other than the rules that differ from the file the daemon started with.
    fn not_applied(&self, config: &Config) -> Vec<String> {
        let was = &self.started_with;
        let mut changes = Vec::new();
        let mut note = |name: &str, changed: bool, from: String, to: String| {
            if changed {
                changes.push(format!("`{name}` changed from {from} to {to}:"));
            }
        };
        note(
            "interfaces",
            config.interfaces != was.interfaces,
            format!("{:?}", was.interfaces),
            format!("{:?}", config.interfaces),
        );
        note(
            "attach",
            config.attach != was.attach,
            show(&was.attach),
            show(&config.attach),
        );
        note(
            "metrics_addr",
            config.metrics_addr != was.metrics_addr,
            show(&was.metrics_addr),
            show(&config.metrics_addr),
        );
        note(
            "metrics_top_ports",
            config.metrics_top_ports != was.metrics_top_ports,
            show(&was.metrics_top_ports),
            show(&config.metrics_top_ports),
        );
        note(
            "persist",
            config.persist != was.persist,
            show(&was.persist),
            show(&config.persist),
        );
        // Watches are resumed from their own saved list at start-up (see `policy::watch_list`);
        // between starts they change with `shaper watch`/`unwatch`.
        let watches = |list: &[crate::datapath::watched_ports::WatchSpec]| {
            let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
            format!("[{}]", shown.join(", "))
        };
        note(
            "[[watch]]",
            config.watches != was.watches,
            watches(&was.watches),
            watches(&config.watches),
        );
        changes
    }
}

fn show<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "(not set)".to_owned(), ToString::to_string)
}
