//! The testbed of shaper's kernel tests, bench and demo: throwaway network namespaces joined by
//! a veth pair ([`netns`]), the CPUs a thread may be pinned to ([`cpus`]), paced UDP senders
//! with counting receivers to run between them ([`traffic`]), and a namespace's TCP segment
//! counters ([`tcp_segments`]).
//!
//! No eBPF here, so `xtask` can use it before bpf-linker exists.

pub mod cpus;
pub mod netns;
pub mod tcp_segments;
pub mod traffic;
