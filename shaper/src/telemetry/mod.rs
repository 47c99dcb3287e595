//! Telemetry: what the operator sees of the traffic — counter snapshots, `shaper top`'s rates,
//! listening sockets and the Prometheus metrics.

pub mod counter_snapshot;
pub mod error;
pub mod exposure;
pub mod listening_sockets;
pub mod metrics;
pub mod talkers_view;
pub mod tcp_counts;
pub mod top_view;
pub mod trace_lines;

pub use error::{Result, TelemetryError};
