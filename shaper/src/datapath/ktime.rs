//! The kernel's clock as the classifier reads it, for userspace to stamp and read buckets with.

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`, which stamps the buckets
/// (kernel/bpf/helpers.c: `bpf_ktime_get_ns` returns `ktime_get_mono_fast_ns()`, the NMI-safe
/// reader of the same monotonic clock). It counts from boot, so a value of it says nothing about
/// how long anything has existed.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of `bpf_ktime_get_coarse_ns()`, which
/// stamps the buckets of slow-filling rules (see [`tick_ns`]): CLOCK_MONOTONIC as of the last
/// tick (kernel/time/timekeeping.c: both read the timekeeper's `tkr_mono` as of its last
/// update).
pub fn coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given by reference; both clocks
    // read here exist on every Linux this runs on (COARSE since 2.6.32), so the call cannot
    // fail and `now` is always initialised.
    unsafe { libc::clock_gettime(clock, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000) + now.tv_nsec as u64
}

/// The kernel's tick in nanoseconds: the resolution of CLOCK_MONOTONIC_COARSE, the clock of
/// `bpf_ktime_get_coarse_ns()` (kernel/time/posix-timers.c: `posix_get_coarse_res` reports
/// `LOW_RES_NSEC`, one jiffy: 4 ms at Debian's CONFIG_HZ_250). Read once per process; 0 if the
/// kernel does not say, and then no bucket uses the coarse clock.
pub fn tick_ns() -> u64 {
    static TICK_NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICK_NS.get_or_init(|| {
        let mut res = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_getres only writes the timespec it is given by reference.
        let status = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
        if status != 0 || res.tv_sec < 0 || res.tv_nsec < 0 {
            return 0;
        }
        (res.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(res.tv_nsec as u64)
    })
}
