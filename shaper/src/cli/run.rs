//! `shaper run`: the daemon.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use log::info;
use shaper::{
    AttachMode, Classifier,
    control::{ControlSocket, Request, Response},
    iface, privileges,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to (ingress and egress); repeat for several. Default: the interface
    /// of the default route.
    #[arg(long = "iface", value_name = "IFACE")]
    ifaces: Vec<String>,

    /// How to attach: tcx links (Linux >= 6.6), legacy clsact filters, or auto (tcx where the
    /// kernel has it).
    #[arg(long, value_enum, default_value_t = AttachArg::Auto)]
    attach: AttachArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttachArg {
    Auto,
    Tcx,
    Clsact,
}

pub fn run(args: RunArgs, socket: &Path) -> anyhow::Result<()> {
    privileges::check()?;
    let mut ifaces = args.ifaces;
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
    let mode = match args.attach {
        AttachArg::Auto => AttachMode::auto(),
        AttachArg::Tcx => AttachMode::Tcx,
        AttachArg::Clsact => AttachMode::Clsact,
    };

    let mut classifier = Classifier::load(ifaces.len() as u32)?;
    for name in &ifaces {
        classifier.attach(name, mode)?;
    }
    let classifier = Arc::new(Mutex::new(classifier));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(serve(Arc::clone(&classifier), socket));

    // Detach explicitly so a failure is reported (dropping would only log it).
    let detached = classifier
        .lock()
        .map_err(|_| anyhow::anyhow!("classifier lock poisoned"))?
        .detach_all();
    served?;
    detached.context("detaching on shutdown")?;
    info!("stopped; nothing left attached");
    Ok(())
}

async fn serve(classifier: Arc<Mutex<Classifier>>, socket: &Path) -> anyhow::Result<()> {
    let control = ControlSocket::bind(socket)?;
    info!("control socket {}", control.path().display());
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let handle = move |request: Request| -> Response {
        let Ok(classifier) = classifier.lock() else {
            return Response::Error {
                message: "internal error: classifier lock poisoned".into(),
            };
        };
        match request {
            Request::Stats => match classifier.snapshot() {
                Ok(snapshot) => Response::Stats(snapshot),
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
        }
    };
    tokio::select! {
        served = control.serve(handle) => served?,
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
    Ok(())
}
