//! The HTTP endpoint: `GET /metrics` (and `HEAD`), in the format the scraper asks for; and
//! `/healthz` and `/readyz` for probes (200 or 503 with a line saying why).

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use super::Format;

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

/// What the endpoint serves.
pub struct Handlers {
    pub scrape: Arc<ScrapeFn>,
    pub health: Arc<HealthFn>,
}

/// Serves `/metrics` on `listener` until the future is dropped. Each scrape runs on tokio's
/// blocking pool: it scans shared memory and procfs, which must not stall the control socket
/// served on the same runtime.
pub async fn serve(listener: TcpListener, handlers: Handlers) -> std::io::Result<()> {
    let Handlers { scrape, health } = handlers;
    let metrics = move |headers: HeaderMap| {
        let scrape = Arc::clone(&scrape);
        async move {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok());
            let format = Format::negotiate(accept);
            match tokio::task::spawn_blocking(move || scrape(format)).await {
                Ok(Ok(body)) => {
                    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
                }
                Ok(Err(message)) => internal_error(message),
                Err(join) => internal_error(format!("the scrape failed: {join}")),
            }
        }
    };
    let probe = move |which: Probe| {
        let health = Arc::clone(&health);
        async move {
            // On the blocking pool too: the readiness check asks the kernel about every hook.
            match tokio::task::spawn_blocking(move || health(which)).await {
                Ok(Ok(body)) => (StatusCode::OK, body).into_response(),
                Ok(Err(reason)) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
                Err(join) => internal_error(format!("the probe failed: {join}")),
            }
        }
    };
    let ready = probe.clone();
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(move || probe(Probe::Live)))
        .route("/readyz", get(move || ready(Probe::Ready)))
        .route(
            "/",
            get(|| async {
                "shaper: Prometheus metrics are at /metrics, probes at /healthz and /readyz\n"
            }),
        );
    axum::serve(listener, router).await
}

fn internal_error(message: String) -> Response {
    log::warn!("metrics scrape failed: {message}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response()
}
