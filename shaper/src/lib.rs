//! shaper: an eBPF per-port traffic observer and policer for Linux tc hooks.
//!
//! The library holds everything but argument parsing, by concern, in layers that import only
//! downwards (checked by `tests/layers.rs`):
//! - [`types`]: plain types every layer speaks — port ranges, the keyword enums, the metrics
//!   address.
//! - [`datapath`]: what lives in the kernel and how userspace reaches it — loading the
//!   classifier and its maps, attaching it (tcx or clsact), the mmapped counters, rtnetlink,
//!   interfaces, and the kernel's clock.
//! - [`policy`]: what the operator asks for — rates and sizes, limit rules and how they
//!   resolve, the rules in force and their state file, the config file.
//! - [`telemetry`]: what the operator sees — counter snapshots (`shaper stats`), the model of
//!   `shaper top`, listening sockets, and the Prometheus metrics.
//! - [`control`]: the local socket between the CLI and the daemon.
//! - [`daemon`]: the daemon itself — start-up in the order that keeps the first packet
//!   policed, request handling, shutdown — and what it claims (interface and state-file locks,
//!   capabilities).

pub mod build_info;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod policy;
pub mod private_files;
pub mod telemetry;
pub mod types;

pub use datapath::{
    attach::{AttachMode, Direction},
    classifier::Classifier,
};
pub use error::{Error, Result};
