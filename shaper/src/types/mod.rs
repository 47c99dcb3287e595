//! The bottom layer: plain types every other layer may use (see `tests/layers.rs`). Nothing here
//! touches the kernel or knows about rules, metrics or the daemon.

pub mod keywords;
pub mod metrics_addr;
pub mod ports;
