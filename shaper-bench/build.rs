//! Builds the benchmark-only eBPF programs (crate `shaper-bench-ebpf`) into OUT_DIR, the same way
//! `shaper` builds its classifier: they never enter the production object.

#[path = "../shaper/build/bpf_linker.rs"]
mod bpf_linker;
#[path = "../shaper/build/ebpf.rs"]
mod ebpf;

fn main() -> anyhow::Result<()> {
    ebpf::build("shaper-bench-ebpf", "../shaper-bench-ebpf", &["floor"])
}
