//! Empty library target, so `shaper-bench` can name this crate as a build-dependency (cargo then
//! rebuilds the object when it changes). The program is the binary target, `src/main.rs`.
#![no_std]
