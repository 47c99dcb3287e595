//! The daemon: start-up, request handling and shutdown, and what it claims while it runs.
//!
//! The datapath lives in the kernel, not in the daemon: maps and attachments are pinned under
//! bpffs ([`crate::datapath::pins`]), so rules keep being enforced and counters keep counting
//! while no daemon runs (a crash, an upgrade, a service restart). A starting daemon adopts what
//! is pinned and swaps its own programs in behind each attachment.
//!
//! The start-up order is a correctness property, so it lives here, in one function
//! ([`Daemon::start`]), not in the CLI:
//! 1. the config file is read (a bad file is reported before anything else);
//! 2. privileges are checked, then the settings resolved (interfaces must exist);
//! 3. the state file and the namespace's pinned datapath are claimed for the daemon's life;
//! 4. the classifier is loaded against the pinned maps (checked layout by layout; new maps are
//!    pinned) and every interface registered in the slot it had;
//! 5. the rules are installed (from the state file or the config) — **before attaching**, so the
//!    first packet the programs see is already policed, and a pinned rule that is still in
//!    force keeps its bucket and counters;
//! 6. the programs are attached to every interface, or swapped in atomically behind the pinned
//!    attachments; interfaces pinned by an earlier run that are no longer named are detached;
//! 7. the metrics port is bound — after attaching, so a second daemon on the same interface is
//!    told that, with the holder's pid, rather than that the port is taken;
//! 8. the control socket is bound: from then on the CLI can reach the daemon;
//! 9. every capability serving no longer needs is dropped ([`capabilities`]).
//!
//! A failure at any step returns an error. Attachments this start made anew are detached again;
//! what it adopted stays as it was, so a failed upgrade leaves the old datapath in force.
//!
//! While it serves, SIGHUP and a change of the config file reload the file's rules
//! ([`config_watch`]).
//!
//! Stopping: SIGTERM or SIGINT detach everything and remove the pins (an operator's Ctrl-C stops
//! shaping), unless `--persist` (the service's mode), which leaves the datapath attached and
//! pinned for the next daemon. `shaper down` removes a datapath no daemon runs.

pub mod capabilities;
pub mod config_watch;
pub mod error;
mod health;

mod requests;
pub mod settings;
mod tracing;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use log::info;
use tokio::signal::unix::{SignalKind, signal};

pub use error::DaemonError;
pub use settings::{Flags, Settings};

use crate::{
    control::ControlSocket,
    datapath::{attach::AttachChoice, bpf_log, classifier::Classifier, pid_lock, pins::PinDir},
    error::{Error, Result, chain},
    policy::{config_file::Config, rules_in_force::Limits, watch_list::WatchList},
    telemetry::TelemetryError,
    telemetry::{
        listening_sockets::Owners,
        metrics::{self, Exporter, Format, Inventory, MetricsAddr},
    },
};

/// What the control socket and the metrics scrapes work on, behind one lock.
pub(crate) struct InForce {
    pub(crate) classifier: Classifier,
    pub(crate) limits: Limits,
    pub(crate) watches: WatchList,
    pub(crate) tracing: tracing::Tracing,
    /// Whether listening sockets are named with their processes (`--no-owner-names`).
    pub(crate) owners: Owners,
}

/// A started daemon: attached, with its rules installed and its sockets bound.
pub struct Daemon {
    in_force: Arc<Mutex<InForce>>,
    control: ControlSocket,
    metrics: Option<(tokio::net::TcpListener, metrics::Handlers)>,
    runtime: tokio::runtime::Runtime,
    /// Leave the datapath attached and pinned when stopped.
    persist: bool,
    /// The config file and what it held at start-up, to reload from.
    config: Option<(PathBuf, Config)>,
    /// SIGHUP, claimed at the start of [`Daemon::start`].
    sighup: tokio::signal::unix::Signal,
    /// The state file and the pinned datapath, held for the daemon's life: two daemons never
    /// save over each other's rules or reconcile each other's maps.
    _locks: [pid_lock::PidLock; 2],
}

impl Daemon {
    /// Starts a daemon from `shaper run`'s flags, in the order described in the module
    /// documentation.
    pub fn start(flags: Flags) -> Result<Self> {
        // SIGHUP is claimed before anything else: its default action ends the process, and a
        // service manager may send it (`systemctl reload`, ExecReload) as soon as it has
        // started the daemon, while loading still takes seconds (5 s in Debian 12's kernel
        // under emulation, where the package test's reload killed a starting daemon). One that
        // arrives now is kept and served as a reload once the daemon serves. It is also blocked
        // until then: a signal caught during BPF_PROG_LOAD makes the verifier give up with
        // EAGAIN (`bpf_check()` stops when `signal_pending()`), which failed the start.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let sighup = {
            let _entered = runtime.enter();
            signal(SignalKind::hangup())?
        };
        let _hangups_held = HangupsHeld::new();
        let config = settings::read_config(&flags)?;
        capabilities::check()?;
        // Before any lock, pin or attachment: a kernel below the floor is refused with nothing
        // left behind.
        crate::datapath::kernel_support::check()?;
        let reload_from = flags.config.clone().map(|path| (path, config.clone()));
        let settings = Settings::resolve(flags, config)?;

        let state_lock = pid_lock::PidLock::acquire_state(&settings.state)?;
        let pins = PinDir::for_current_netns(&settings.pin_dir)?;
        let datapath_lock = pid_lock::PidLock::acquire_datapath(&pins)?;
        let mut classifier = Classifier::load_pinned(settings.ifaces.len() as u32, &pins)?;
        if classifier.adopted() {
            info!("adopting the datapath pinned at {}", pins.root().display());
        }
        for name in &settings.ifaces {
            classifier.register(name)?;
        }
        let limits = Limits::start(&mut classifier, settings.config_rules, &settings.state)?;
        let watches = WatchList::start(&classifier, settings.config_watches, &settings.state)?;
        tracing::switch_off(&mut classifier)?;
        bpf_log::set_level(&mut classifier, settings.bpf_log)?;
        let log_reader = bpf_log::reader(&mut classifier, bpf_log::DaemonLog)?;
        for name in &settings.ifaces {
            // `auto` takes an interface over in the mode it is pinned with; an explicit mode
            // that differs is refused by attach, with the fix.
            let mode = match (settings.attach, classifier.pinned_mode(name)) {
                (AttachChoice::Auto, Some(pinned)) => pinned,
                _ => settings.mode,
            };
            classifier.attach(name, mode)?;
        }
        for name in pins.ifaces()? {
            if !settings.ifaces.contains(&name) {
                classifier.drop_pinned_interface(&name)?;
                info!("{name}: detached; it was pinned by an earlier run but is not named now");
            }
        }
        let metrics_listener = match settings.metrics_addr {
            MetricsAddr::Off => None,
            MetricsAddr::At(addr) => Some(metrics::bind(addr)?),
        };

        // Tokio's sockets register with the runtime they are made in.
        let _entered = runtime.enter();
        runtime.spawn(bpf_log::follow(log_reader)?);
        let exporter = Exporter::resume(
            classifier.port_counters(),
            settings.metrics_top_ports,
            &settings.state,
            classifier
                .datapath_id()
                .unwrap_or_else(metrics::unpinned_datapath_id),
        )
        .with_owners(settings.owners);
        let in_force = Arc::new(Mutex::new(InForce {
            classifier,
            limits,
            watches,
            tracing: tracing::Tracing::default(),
            owners: settings.owners,
        }));
        let metrics = match metrics_listener {
            None => None,
            Some(listener) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                info!("metrics at http://{}/metrics", listener.local_addr()?);
                let handlers = metrics::Handlers {
                    scrape: scrape_fn(
                        Arc::clone(&in_force),
                        exporter,
                        settings.metrics_top_remotes,
                    ),
                    health: health::probe_fn(Arc::clone(&in_force)),
                    bounds: metrics::HttpBounds {
                        max_connections: settings.metrics_max_connections,
                        ..metrics::HttpBounds::default()
                    },
                };
                Some((listener, handlers))
            }
        };
        let control = ControlSocket::bind(&settings.socket, settings.socket_group.as_ref())?;
        match &settings.socket_group {
            Some(group) => info!(
                "control socket {} (root and group {}, gid {})",
                control.path().display(),
                group.name,
                group.gid
            ),
            None => info!("control socket {} (root only)", control.path().display()),
        }
        in_force
            .lock()
            .map_err(|_| DaemonError::Poisoned)?
            .classifier
            .mark_serving();
        drop(_entered);
        capabilities::drop_after_attach(settings.owners)
            .unwrap_or_else(capabilities::warn_not_dropped);
        Ok(Self {
            in_force,
            control,
            metrics,
            runtime,
            persist: settings.persist,
            config: reload_from,
            sighup,
            _locks: [state_lock, datapath_lock],
        })
    }

    /// The control socket the CLI talks to.
    pub fn control_socket(&self) -> &Path {
        self.control.path()
    }

    /// Where `/metrics` is served, unless metrics are off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves until SIGTERM or SIGINT, then detaches everything it attached.
    pub fn run(self) -> Result<()> {
        let signals = async {
            let mut sigterm = signal(SignalKind::terminate())?;
            let mut sigint = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = sigterm.recv() => info!("SIGTERM: shutting down"),
                _ = sigint.recv() => info!("SIGINT: shutting down"),
            }
            Ok::<_, Error>(())
        };
        self.run_until(signals)
    }

    /// Serves until `shutdown` completes (or fails), then detaches everything it attached. A
    /// detach that fails is reported after a serving error, never instead of it.
    pub fn run_until(self, shutdown: impl Future<Output = Result<()>>) -> Result<()> {
        let Self {
            in_force,
            control,
            metrics,
            runtime,
            persist,
            config,
            sighup,
            _locks,
        } = self;
        let served = runtime.block_on(serve(
            Arc::clone(&in_force),
            &control,
            metrics,
            (config, sighup),
            shutdown,
        ));
        drop(control);
        let mut in_force = in_force.lock().map_err(|_| DaemonError::Poisoned)?;
        // No trace outlives the daemon that reads it.
        if let Err(e) = tracing::switch_off(&mut in_force.classifier) {
            log::warn!("switching the trace off: {}", chain(&e));
        }
        if persist {
            in_force.classifier.release_all();
            served?;
            info!("stopped; the datapath stays attached and pinned (--persist)");
            return Ok(());
        }
        // Shaper's HTB and fq roots go first, while the classifier still names the interfaces; the
        // kernel's default roots come back.
        let in_force = &mut *in_force;
        if let Err(e) = in_force.limits.release_shaping(&in_force.classifier) {
            log::warn!(
                "removing shaper's HTB and fq root qdiscs: {}",
                crate::error::chain(&e)
            );
        }
        // Detach explicitly so a failure is reported (dropping would only log it).
        let detached = in_force.classifier.detach_all();
        served?;
        detached.map_err(|error| DaemonError::Detach(Box::new(error)))?;
        info!("stopped; nothing left attached or pinned");
        Ok(())
    }
}

/// One scrape: the inventory under the daemon's lock, the port scan without it.
fn scrape_fn(
    in_force: Arc<Mutex<InForce>>,
    exporter: Exporter,
    top_remotes: usize,
) -> Arc<metrics::ScrapeFn> {
    Arc::new(move |format: Format| {
        let started = Instant::now();
        let inventory = {
            let in_force = in_force
                .lock()
                .map_err(|_| DaemonError::Poisoned.to_string())?;
            let mut inventory =
                Inventory::gather(&in_force.classifier, &in_force.limits).map_err(|e| chain(&e))?;
            if top_remotes > 0 {
                let reading = crate::datapath::watched_ports::read(&in_force.classifier, None)
                    .map_err(|e| chain(&e))?;
                inventory.remotes = metrics::remote_series::top_remotes(
                    &reading,
                    &in_force.watches.list(),
                    top_remotes,
                );
            }
            inventory
        };
        Ok(exporter.render(inventory, started, format))
    })
}

async fn serve(
    in_force: Arc<Mutex<InForce>>,
    control: &ControlSocket,
    metrics: Option<(tokio::net::TcpListener, metrics::Handlers)>,
    (config, sighup): (Option<(PathBuf, Config)>, tokio::signal::unix::Signal),
    shutdown: impl Future<Output = Result<()>>,
) -> Result<()> {
    let reloads = config_watch::serve(Arc::clone(&in_force), config, sighup);
    let repairs = pending_repairs(Arc::clone(&in_force));
    let handle = move |request, caller| requests::answer(&in_force, request, caller);
    let metrics = async move {
        match metrics {
            Some((listener, handlers)) => metrics::serve(listener, handlers).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = control.serve(handle) => served.map_err(Error::from),
        served = metrics => served.map_err(|error| TelemetryError::MetricsServe { error }.into()),
        stopped = shutdown => stopped,
        reloaded = reloads => reloaded,
        never = repairs => never,
    }
}

/// How often the handshake tracker's `pending` counts are checked against what it holds.
const PENDING_REPAIR_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Every [`PENDING_REPAIR_PERIOD`], one pass of the `pending` repair (see
/// [`PendingRepair`](crate::datapath::tcp_telemetry::PendingRepair)) on the blocking pool: it
/// walks the handshake LRU with a syscall per entry. Never returns.
async fn pending_repairs(in_force: Arc<Mutex<InForce>>) -> Result<()> {
    use crate::datapath::tcp_telemetry::{PendingRepair, Repaired};
    let repair = Arc::new(Mutex::new(PendingRepair::new(PendingRepair::STALE_AFTER)));
    let mut ticks = tokio::time::interval(PENDING_REPAIR_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let (in_force, repair) = (Arc::clone(&in_force), Arc::clone(&repair));
        let pass = tokio::task::spawn_blocking(move || {
            let mut repair = repair.lock().map_err(|_| DaemonError::Poisoned)?;
            let mut in_force = in_force.lock().map_err(|_| DaemonError::Poisoned)?;
            Ok::<_, Error>(in_force.classifier.repair_pending(&mut repair)?)
        })
        .await;
        match pass {
            Ok(Ok(repaired)) if repaired != Repaired::default() => info!(
                "handshake tracker: {} handshake(s) whose ACK never came removed, {} the LRU \
                 evicted taken out of the pending counts of {} port(s)",
                repaired.stale, repaired.evicted, repaired.ports
            ),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => log::warn!("handshake tracker repair: {}", chain(&error)),
            Err(join) => log::warn!("handshake tracker repair: {join}"),
        }
    }
}

/// SIGHUP blocked in this thread while it lives: a hang-up stays pending, interrupts no system
/// call, and is delivered (to the handler claimed before) when it is dropped.
struct HangupsHeld(libc::sigset_t);

impl HangupsHeld {
    fn new() -> Self {
        // SAFETY: sigemptyset/sigaddset fill the set we own; pthread_sigmask changes only this
        // thread's mask, with valid pointers to that set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Self(set)
        }
    }
}

impl Drop for HangupsHeld {
    fn drop(&mut self) {
        // SAFETY: as in `new`, unblocking the same set.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &self.0, std::ptr::null_mut()) };
    }
}
