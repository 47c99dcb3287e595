//! The benchmark's floor: a tc classifier that returns at once. BPF_PROG_TEST_RUN of it costs
//! what every run costs whatever the program (the test-run loop, the context, the call), so the
//! shaper's figures are read against it. Benchmark-only: built by `shaper-bench`, never shipped.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

#[classifier]
pub fn bench_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
