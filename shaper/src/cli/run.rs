//! `shaper run`: the daemon.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::Args;
use log::info;
use shaper::{
    Classifier,
    attach::AttachChoice,
    config,
    control::{ControlSocket, Request, Response},
    error::chain,
    iface,
    limits::{DEFAULT_STATE_FILE, Limits},
    metrics::{self, Exporter, Format, Inventory, MetricsAddr},
    privileges,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to (ingress and egress); repeat for several. Default: the config
    /// file's `interfaces`, else the interface of the default route.
    #[arg(long = "iface", value_name = "IFACE")]
    ifaces: Vec<String>,

    /// How to attach: tcx links (Linux >= 6.6), legacy clsact filters, or auto (tcx where the
    /// kernel has it). Default: the config file's `attach`, else auto.
    #[arg(long, value_enum)]
    attach: Option<AttachChoice>,

    /// TOML file with the interfaces and the limit rules to start with (see shaper.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where the rules in force are saved, so a restarted daemon resumes them.
    #[arg(long, value_name = "FILE", env = "SHAPER_STATE", default_value = DEFAULT_STATE_FILE)]
    state: PathBuf,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, or `off`. Default: the config
    /// file's `metrics_addr`, else 127.0.0.1:19350 (loopback only; use 0.0.0.0:19350 or
    /// [::]:19350 for a Prometheus on another host).
    #[arg(long, value_name = "ADDR:PORT|off")]
    metrics_addr: Option<MetricsAddr>,

    /// Ports, beyond those named by a single-port rule or listened on, that get their own
    /// metrics series: the busiest by bytes. The rest are summed under port="other". Default:
    /// the config file's `metrics_top_ports`, else 100.
    #[arg(long, value_name = "N")]
    metrics_top_ports: Option<usize>,
}

/// The daemon's state behind the control socket.
struct Daemon {
    classifier: Classifier,
    limits: Limits,
}

pub fn run(args: RunArgs, socket: &Path) -> anyhow::Result<()> {
    // A bad config file is reported before anything else, privileges included.
    let config = match &args.config {
        Some(path) => config::load(path)?,
        None => config::Config::default(),
    };
    privileges::check()?;
    let mut ifaces = args.ifaces;
    if ifaces.is_empty() {
        ifaces = config.interfaces.clone();
    }
    if ifaces.is_empty() {
        let default = iface::default_route_interface()?;
        info!("no --iface given: using {default}, the interface of the default route");
        ifaces.push(default);
    }
    // Naming an interface twice means it once; keep the first mention's order.
    let mut seen = std::collections::HashSet::new();
    ifaces.retain(|name| seen.insert(name.clone()));
    // Fail on a missing interface before loading anything.
    for name in &ifaces {
        iface::index(name)?;
    }
    let mode = args
        .attach
        .or(config.attach)
        .unwrap_or(AttachChoice::Auto)
        .resolve();

    let metrics_addr = args
        .metrics_addr
        .or(config.metrics_addr)
        .unwrap_or(MetricsAddr::At(metrics::DEFAULT_ADDR));
    let top_ports = args
        .metrics_top_ports
        .or(config.metrics_top_ports)
        .unwrap_or(metrics::DEFAULT_TOP_PORTS);
    // Claimed before anything is read from or written to it, for the daemon's whole life.
    let _state_lock = shaper::lock::PidLock::acquire_state(&args.state)?;
    let mut classifier = Classifier::load(ifaces.len() as u32)?;
    // Register every interface and install the rules before attaching, so the first packet
    // the programs see is already policed.
    for name in &ifaces {
        classifier.register(name)?;
    }
    let limits = Limits::start(&mut classifier, config.limits, &args.state)?;
    for name in &ifaces {
        classifier.attach(name, mode)?;
    }
    // Bound after attaching, so that a second daemon on the same interface is told that (with
    // the holder's pid) rather than that the port is taken; if the port is taken, returning
    // drops the classifier, which detaches again.
    let metrics_listener = match metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::At(addr) => {
            let listener = std::net::TcpListener::bind(addr).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (another shaper daemon in this network namespace? give each its own \
                     --metrics-addr, or --metrics-addr off)"
                } else {
                    ""
                };
                anyhow::anyhow!("cannot serve metrics on {addr}: {e}{hint}")
            })?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
    };
    let exporter = Exporter::new(classifier.port_counters(), top_ports);
    let daemon = Arc::new(Mutex::new(Daemon { classifier, limits }));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = match metrics_listener {
        None => None,
        Some(listener) => {
            let listener =
                runtime.block_on(async { tokio::net::TcpListener::from_std(listener) })?;
            info!("metrics at http://{}/metrics", listener.local_addr()?);
            Some((listener, scrape_fn(Arc::clone(&daemon), exporter)))
        }
    };
    let served = runtime.block_on(serve(Arc::clone(&daemon), socket, metrics));

    // Detach explicitly so a failure is reported (dropping would only log it).
    let detached = daemon
        .lock()
        .map_err(|_| anyhow::anyhow!("daemon lock poisoned"))?
        .classifier
        .detach_all();
    served?;
    detached.context("detaching on shutdown")?;
    info!("stopped; nothing left attached");
    Ok(())
}

/// One scrape: the inventory under the daemon's lock, the port scan without it.
fn scrape_fn(daemon: Arc<Mutex<Daemon>>, exporter: Exporter) -> Arc<metrics::ScrapeFn> {
    Arc::new(move |format: Format| {
        let started = std::time::Instant::now();
        let inventory = {
            let daemon = daemon
                .lock()
                .map_err(|_| "internal error: daemon lock poisoned".to_owned())?;
            Inventory::gather(&daemon.classifier, &daemon.limits).map_err(|e| chain(&e))?
        };
        Ok(exporter.render(inventory, started, format))
    })
}

async fn serve(
    daemon: Arc<Mutex<Daemon>>,
    socket: &Path,
    metrics: Option<(tokio::net::TcpListener, Arc<metrics::ScrapeFn>)>,
) -> anyhow::Result<()> {
    let control = ControlSocket::bind(socket)?;
    info!("control socket {}", control.path().display());
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let handle = move |request: Request| -> Response {
        let Ok(mut daemon) = daemon.lock() else {
            return Response::Error {
                message: "internal error: daemon lock poisoned".into(),
            };
        };
        // The whole chain: the CLI has nothing else to print.
        daemon
            .handle(request)
            .unwrap_or_else(|e| Response::Error { message: chain(&e) })
    };
    let metrics = async move {
        match metrics {
            Some((listener, scrape)) => metrics::serve(listener, scrape).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = control.serve(handle) => served?,
        served = metrics => served.context("metrics endpoint")?,
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
    Ok(())
}

impl Daemon {
    fn handle(&mut self, request: Request) -> shaper::Result<Response> {
        let Self { classifier, limits } = self;
        Ok(match request {
            Request::Stats => {
                let mut snapshot = classifier.snapshot()?;
                snapshot.listening = shaper::listening::listeners();
                Response::Stats(snapshot)
            }
            Request::LimitSet { rule } => {
                let key = rule.key.to_string();
                let (rule, replaced) = limits.set(classifier, rule)?;
                info!(
                    "limit set: {key}: rate {} burst {} {}",
                    rule.rate, rule.burst, rule.action
                );
                Response::RuleSet { rule, replaced }
            }
            Request::LimitRm { rule } => {
                let key = rule.to_string();
                let rule = limits.remove(classifier, &rule)?;
                info!("limit removed: {key}");
                Response::RuleRemoved { rule }
            }
            Request::LimitLs => Response::Rules {
                rules: limits.list(classifier),
            },
        })
    }
}
