//! Empty library target: it exists so `shaper` can name this crate as a build-dependency (cargo
//! then rebuilds the object when it changes). The programs are the binary target, `src/main.rs`.
#![no_std]
