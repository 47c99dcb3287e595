//! The HTTP endpoint: `GET /metrics` (and `HEAD`), in the format the scraper asks for.

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

/// Serves `/metrics` on `listener` until the future is dropped. Each scrape runs on tokio's
/// blocking pool: it scans shared memory and procfs, which must not stall the control socket
/// served on the same runtime.
pub async fn serve(listener: TcpListener, scrape: Arc<ScrapeFn>) -> std::io::Result<()> {
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
    let router = Router::new().route("/metrics", get(metrics)).route(
        "/",
        get(|| async { "shaper: Prometheus metrics are at /metrics\n" }),
    );
    axum::serve(listener, router).await
}

fn internal_error(message: String) -> Response {
    log::warn!("metrics scrape failed: {message}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response()
}
