//! Telemetry's errors: serving the metrics, and what reading the datapath for them runs into.

use std::io;

use crate::datapath::DatapathError;

/// What went wrong showing the operator the traffic: binding or serving the metrics endpoint;
/// or the datapath's error, met while reading what a snapshot or scrape shows. Like every
/// layer's error, a variant shows its cause in its message or returns it from `source()`, never
/// both (see [`crate::error`]).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot serve metrics on {addr}: {error}{hint}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        hint: &'static str,
        error: io::Error,
    },

    #[error("metrics endpoint: {error}")]
    MetricsServe { error: io::Error },

    #[error(transparent)]
    Io(#[from] io::Error),

    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

pub type Result<T, E = TelemetryError> = std::result::Result<T, E>;
