//! The daemon: start-up, request handling and shutdown, and what it claims while it runs.
//!
//! The start-up order is a correctness property, so it lives here, in one function
//! ([`Daemon::start`]), not in the CLI:
//! 1. the config file is read (a bad file is reported before anything else);
//! 2. privileges are checked, then the settings resolved (interfaces must exist);
//! 3. the state file is claimed for the daemon's whole life;
//! 4. the classifier is loaded and every interface registered;
//! 5. the rules are installed (from the state file or the config) — **before attaching**, so the
//!    first packet the programs see is already policed;
//! 6. the programs are attached to every interface;
//! 7. the metrics port is bound — after attaching, so a second daemon on the same interface is
//!    told that, with the holder's pid, rather than that the port is taken;
//! 8. the control socket is bound: from then on the CLI can reach the daemon.
//!
//! A failure at any step returns an error; what was attached is detached again by dropping the
//! classifier.

pub mod capabilities;
pub mod pid_lock;
mod requests;
pub mod settings;

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use log::info;
use tokio::signal::unix::{SignalKind, signal};

pub use settings::{Flags, Settings};

use crate::{
    control::ControlSocket,
    datapath::classifier::Classifier,
    error::{Error, Result, chain},
    policy::rules_in_force::Limits,
    telemetry::metrics::{self, Exporter, Format, Inventory, MetricsAddr},
};

/// What the control socket and the metrics scrapes work on, behind one lock.
pub(crate) struct InForce {
    pub(crate) classifier: Classifier,
    pub(crate) limits: Limits,
}

/// A started daemon: attached, with its rules installed and its sockets bound.
pub struct Daemon {
    in_force: Arc<Mutex<InForce>>,
    control: ControlSocket,
    metrics: Option<(tokio::net::TcpListener, Arc<metrics::ScrapeFn>)>,
    runtime: tokio::runtime::Runtime,
    /// Held for the daemon's life: two daemons never save over each other's rules.
    _state_lock: pid_lock::PidLock,
}

impl Daemon {
    /// Starts a daemon from `shaper run`'s flags, in the order described in the module
    /// documentation.
    pub fn start(flags: Flags) -> Result<Self> {
        let config = settings::read_config(&flags)?;
        capabilities::check()?;
        let settings = Settings::resolve(flags, config)?;

        let state_lock = pid_lock::PidLock::acquire_state(&settings.state)?;
        let mut classifier = Classifier::load(settings.ifaces.len() as u32)?;
        for name in &settings.ifaces {
            classifier.register(name)?;
        }
        let limits = Limits::start(&mut classifier, settings.config_rules, &settings.state)?;
        for name in &settings.ifaces {
            classifier.attach(name, settings.mode)?;
        }
        let metrics_listener = match settings.metrics_addr {
            MetricsAddr::Off => None,
            MetricsAddr::At(addr) => Some(bind_metrics(addr)?),
        };

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Tokio's sockets register with the runtime they are made in.
        let _entered = runtime.enter();
        let exporter = Exporter::resume(
            classifier.port_counters(),
            settings.metrics_top_ports,
            &settings.state,
            metrics::unpinned_datapath_id(),
        );
        let in_force = Arc::new(Mutex::new(InForce { classifier, limits }));
        let metrics = match metrics_listener {
            None => None,
            Some(listener) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                info!("metrics at http://{}/metrics", listener.local_addr()?);
                Some((listener, scrape_fn(Arc::clone(&in_force), exporter)))
            }
        };
        let control = ControlSocket::bind(&settings.socket)?;
        info!("control socket {}", control.path().display());
        drop(_entered);
        Ok(Self {
            in_force,
            control,
            metrics,
            runtime,
            _state_lock: state_lock,
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
            _state_lock,
        } = self;
        let served = runtime.block_on(serve(Arc::clone(&in_force), &control, metrics, shutdown));
        drop(control);
        // Detach explicitly so a failure is reported (dropping would only log it).
        let detached = in_force
            .lock()
            .map_err(|_| Error::Poisoned)?
            .classifier
            .detach_all();
        served?;
        detached.map_err(|error| Error::Detach(Box::new(error)))?;
        info!("stopped; nothing left attached");
        Ok(())
    }
}

/// Binds the metrics port, with a hint when another daemon has it.
fn bind_metrics(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|error| Error::MetricsBind {
        addr,
        hint: if error.kind() == std::io::ErrorKind::AddrInUse {
            " (another shaper daemon in this network namespace? give each its own \
             --metrics-addr, or --metrics-addr off)"
        } else {
            ""
        },
        error,
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// One scrape: the inventory under the daemon's lock, the port scan without it.
fn scrape_fn(in_force: Arc<Mutex<InForce>>, exporter: Exporter) -> Arc<metrics::ScrapeFn> {
    Arc::new(move |format: Format| {
        let started = Instant::now();
        let inventory = {
            let in_force = in_force.lock().map_err(|_| Error::Poisoned.to_string())?;
            Inventory::gather(&in_force.classifier, &in_force.limits).map_err(|e| chain(&e))?
        };
        Ok(exporter.render(inventory, started, format))
    })
}

async fn serve(
    in_force: Arc<Mutex<InForce>>,
    control: &ControlSocket,
    metrics: Option<(tokio::net::TcpListener, Arc<metrics::ScrapeFn>)>,
    shutdown: impl Future<Output = Result<()>>,
) -> Result<()> {
    let handle = move |request| requests::answer(&in_force, request);
    let metrics = async move {
        match metrics {
            Some((listener, scrape)) => metrics::serve(listener, scrape).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = control.serve(handle) => served,
        served = metrics => served.map_err(|error| Error::MetricsServe { error }),
        stopped = shutdown => stopped,
    }
}
