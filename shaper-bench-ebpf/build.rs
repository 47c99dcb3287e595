fn main() {
    // Relink when the bpf-linker on PATH changes (see shaper-ebpf/build.rs).
    println!("cargo:rerun-if-env-changed=PATH");
}
