//! `shaper run`: the daemon.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use log::info;
use shaper::{
    AttachMode, Classifier,
    config::{self, AttachSel},
    control::{ControlSocket, Request, Response},
    iface,
    limits::{DEFAULT_STATE_FILE, Limits},
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
    attach: Option<AttachArg>,

    /// TOML file with the interfaces and the limit rules to start with (see shaper.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where the rules in force are saved, so a restarted daemon resumes them.
    #[arg(long, value_name = "FILE", env = "SHAPER_STATE", default_value = DEFAULT_STATE_FILE)]
    state: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttachArg {
    Auto,
    Tcx,
    Clsact,
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
    let attach = args.attach.unwrap_or(match config.attach {
        None | Some(AttachSel::Auto) => AttachArg::Auto,
        Some(AttachSel::Tcx) => AttachArg::Tcx,
        Some(AttachSel::Clsact) => AttachArg::Clsact,
    });
    let mode = match attach {
        AttachArg::Auto => AttachMode::auto(),
        AttachArg::Tcx => AttachMode::Tcx,
        AttachArg::Clsact => AttachMode::Clsact,
    };

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
    let daemon = Arc::new(Mutex::new(Daemon { classifier, limits }));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(serve(Arc::clone(&daemon), socket));

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

async fn serve(daemon: Arc<Mutex<Daemon>>, socket: &Path) -> anyhow::Result<()> {
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
        daemon.handle(request).unwrap_or_else(|e| Response::Error {
            message: e.to_string(),
        })
    };
    tokio::select! {
        served = control.serve(handle) => served?,
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
    Ok(())
}

impl Daemon {
    fn handle(&mut self, request: Request) -> shaper::Result<Response> {
        let Self { classifier, limits } = self;
        Ok(match request {
            Request::Stats => Response::Stats(classifier.snapshot()?),
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
