//! The datapath: the classifier in the kernel and every way userspace reaches it.

pub mod attach;
pub mod bpf_log;
pub mod classifier;
pub mod error;
pub mod fragment_tracking;
pub mod interfaces;
pub mod kernel_support;
pub mod ktime;
pub mod mapped_arrays;
pub(crate) mod netlink;
pub mod pace_queues;
pub mod pid_lock;
pub mod pinned_datapath;
pub mod pins;
pub mod remote_buckets;
pub mod shape_classes;
pub mod tcp_telemetry;
pub(crate) mod tcx_query;
pub mod trace_switch;
pub mod watched_ports;

pub use error::{DatapathError, Result};
