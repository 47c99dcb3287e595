//! shaper: an eBPF per-port traffic observer (and, later, shaper) for Linux tc hooks.
//!
//! The library holds everything but argument parsing: loading and attaching the classifier
//! ([`classifier`], [`attach`]), reading its counters ([`counters`], [`stats`]) and the local
//! control socket through which the CLI talks to the daemon ([`control`]).

pub mod attach;
pub mod classifier;
pub mod clock;
pub mod config;
pub mod control;
pub mod counters;
pub mod error;
pub mod iface;
pub mod limits;
pub mod listening;
pub mod lock;
pub mod metrics;
#[expect(
    clippy::undocumented_unsafe_blocks,
    reason = "netlink.rs is being rewritten on another branch; drop this once its unsafe blocks \
              (two in `send`) say why they are sound"
)]
mod netlink;
pub mod privileges;
pub mod rules;
pub mod stats;
pub mod top;
pub mod units;

pub use attach::{AttachMode, Direction};
pub use classifier::Classifier;
pub use error::{Error, Result};
