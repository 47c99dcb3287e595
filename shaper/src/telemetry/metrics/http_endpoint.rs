//! The HTTP endpoint: `GET /metrics` (and `HEAD`), in the format the scraper asks for; and
//! `/healthz` and `/readyz` for probes (200 or 503 with a line saying why).

use std::{net::SocketAddr, os::fd::AsRawFd as _, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Request,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{
    Format,
    http_connections::{Bounds, Connections},
};
use crate::telemetry::TelemetryError;

/// Produces one scrape's body in a format, or a message saying why it cannot.
pub type ScrapeFn = dyn Fn(Format) -> Result<String, String> + Send + Sync;

/// What a probe asks: is the daemon alive (`/healthz`), is it doing its job (`/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Live,
    Ready,
}

/// Answers a probe: `Ok(body)` for 200, `Err(reason)` for 503.
pub type HealthFn = dyn Fn(Probe) -> Result<String, String> + Send + Sync;

/// What the endpoint serves, and within which bounds.
pub struct Handlers {
    pub scrape: Arc<ScrapeFn>,
    pub health: Arc<HealthFn>,
    pub bounds: Bounds,
}

/// Binds the metrics port, with a hint when another daemon has it.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, TelemetryError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|error| TelemetryError::MetricsBind {
            addr,
            hint: if error.kind() == std::io::ErrorKind::AddrInUse {
                " (another shaper daemon in this network namespace? give each its own \
                 --metrics-addr, or --metrics-addr off)"
            } else {
                ""
            },
            error,
        })?;
    // std listens with a backlog of 128. A burst of connections (a scrape storm, a reconnecting
    // fleet) beyond it while the accept loop catches up has its SYNs dropped, and each dropped
    // client, a probe included, retries only after the 1 s SYN timeout. The kernel caps the
    // backlog at net.core.somaxconn (4096 since Linux 5.4); listen(2) on a listening socket only
    // changes the backlog.
    // SAFETY: listen(2) on a socket this function owns; it touches no memory.
    if unsafe { libc::listen(listener.as_raw_fd(), METRICS_BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The metrics listener's accept queue (see [`bind`]).
const METRICS_BACKLOG: i32 = 4096;

/// Serves `/metrics` and the probes on `listener` until the future is dropped, within
/// `handlers.bounds` (see [`http_connections`](super::http_connections)). Scrapes and probes
/// run on tokio's blocking pool: they scan shared memory and procfs, which must not stall the
/// control socket served on the same runtime. At most `max_scrapes` scrapes run at once, so a
/// probe never waits behind a pile of them for a blocking thread.
pub async fn serve(listener: TcpListener, handlers: Handlers) -> std::io::Result<()> {
    let bounds = handlers.bounds;
    let router = router(handlers);
    let connections = Connections::new(bounds.max_connections);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .keep_alive(false);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE/ENFILE (descriptors ran out), ECONNABORTED: the listener is fine and
                // the daemon's other work goes on; try again shortly rather than spin.
                log::warn!("metrics endpoint: accept failed: {error}; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = connections.admit().await else {
            // Every open connection is answering a request: this one is closed unanswered.
            continue;
        };
        let connection = Arc::clone(&slot.connection);
        let router = router.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            connection.mark_busy();
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, request).await }
        });
        let served = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            tokio::select! {
                result = served => if let Err(error) = result {
                    log::debug!("metrics connection: {error}");
                },
                () = slot.connection.evicted() => {
                    log::debug!("metrics connection closed to make room for a newer one");
                }
                () = tokio::time::sleep(bounds.max_age) => {
                    log::debug!("metrics connection closed at its maximum age");
                }
            }
            drop(slot);
        });
    }
}

fn router(handlers: Handlers) -> Router {
    let Handlers {
        scrape,
        health,
        bounds,
    } = handlers;
    let scrapes = Arc::new(Semaphore::new(bounds.max_scrapes.max(1)));
    let metrics = move |headers: HeaderMap| {
        let scrape = Arc::clone(&scrape);
        let scrapes = Arc::clone(&scrapes);
        async move {
            let Ok(permit) = scrapes.try_acquire_owned() else {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    format!(
                        "{} scrapes are running, the most at once; try again\n",
                        bounds.max_scrapes
                    ),
                )
                    .into_response();
            };
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok());
            let format = Format::negotiate(accept);
            // The permit goes with the work: a scrape that outlives its request still counts.
            let work = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                scrape(format)
            });
            match tokio::time::timeout(bounds.request_timeout, work).await {
                Ok(Ok(Ok(body))) => {
                    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
                }
                Ok(Ok(Err(message))) => internal_error(message),
                Ok(Err(join)) => internal_error(format!("the scrape failed: {join}")),
                Err(_) => timed_out("scrape", bounds.request_timeout),
            }
        }
    };
    let probe = move |which: Probe| {
        let health = Arc::clone(&health);
        async move {
            // On the blocking pool too: the readiness check asks the kernel about every hook.
            let work = tokio::task::spawn_blocking(move || health(which));
            match tokio::time::timeout(bounds.request_timeout, work).await {
                Ok(Ok(Ok(body))) => (StatusCode::OK, body).into_response(),
                Ok(Ok(Err(reason))) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
                Ok(Err(join)) => internal_error(format!("the probe failed: {join}")),
                Err(_) => timed_out("probe", bounds.request_timeout),
            }
        }
    };
    let ready = probe.clone();
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(move || probe(Probe::Live)))
        .route("/readyz", get(move || ready(Probe::Ready)))
        .route(
            "/",
            get(|| async {
                "shaper: Prometheus metrics are at /metrics, probes at /healthz and /readyz\n"
            }),
        )
}

fn timed_out(what: &str, after: Duration) -> Response {
    log::warn!("metrics endpoint: a {what} took longer than {after:?}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the {what} took longer than {after:?}\n"),
    )
        .into_response()
}

fn internal_error(message: String) -> Response {
    log::warn!("metrics scrape failed: {message}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response()
}
