fn main() {
    // The BPF target links with whichever `bpf-linker` is first on PATH (shaper's build script
    // puts the cached one there); relink when that changes.
    println!("cargo:rerun-if-env-changed=PATH");
}
