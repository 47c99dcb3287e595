//! Builds the eBPF object (crate `shaper-ebpf`) for the BPF target and leaves it in OUT_DIR,
//! where `src/classifier.rs` embeds it.

#[path = "build/bpf_linker.rs"]
#[allow(dead_code)]
mod bpf_linker;
#[path = "build/ebpf.rs"]
mod ebpf;

fn main() -> anyhow::Result<()> {
    ebpf::build("shaper-ebpf", "../shaper-ebpf")
}
