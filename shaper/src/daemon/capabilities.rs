//! The daemon's privileges: checked before it touches the kernel ([`check`]), so the operator
//! gets one clear message instead of an EPERM from deep inside a syscall; and cut, once it is
//! attached, to the few the running daemon still uses ([`drop_after_attach`]).
//!
//! After the cut the effective and permitted sets hold [`KEEP_AFTER_ATTACH`] and nothing else,
//! the inheritable and ambient sets are empty, the bounding set holds the same few, and
//! `no_new_privs` is set: neither an exec nor a set-uid binary gives a compromised daemon back
//! what it dropped. The uid stays 0, so the files it made as root (the state file, the locks,
//! the control socket, pins) stay its own without CAP_DAC_OVERRIDE or CAP_FOWNER.
//!
//! Capabilities belong to a thread, not a process: capset(2) and the prctl(2) calls change the
//! calling thread only. `Daemon::start` runs on one thread (tokio's current-thread runtime, no
//! blocking pool yet), and every thread spawned afterwards (the blocking pool that answers
//! scrapes) copies the sets of the thread that spawns it, so one cut covers the whole daemon.
//! A caller that already runs other threads (the library daemon inside a test) is warned that
//! they keep theirs.

use std::fmt;

use caps::{CapSet, Capability, CapsHashSet};
use log::{info, warn};

use crate::{
    daemon::DaemonError,
    datapath::kernel_support::status_field,
    error::{Result, chain},
    telemetry::listening_sockets::Owners,
};

const CAP_NET_ADMIN: u32 = Capability::CAP_NET_ADMIN as u32;
const CAP_SYS_ADMIN: u32 = Capability::CAP_SYS_ADMIN as u32;
const CAP_PERFMON: u32 = Capability::CAP_PERFMON as u32;
const CAP_BPF: u32 = Capability::CAP_BPF as u32;

/// A capability the running daemon keeps, and what breaks without it.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub cap: Capability,
    pub without_it: &'static str,
    /// Only for naming listening sockets' processes: dropped too with `--no-owner-names`.
    pub owner_names_only: bool,
}

/// What the running daemon still does that needs a capability, found on Linux 6.18 by dropping
/// each in turn and running every control request, a scrape and the shutdown in both attach
/// modes (docs/src/guide/security.md, *Privileges*). Everything else it does after attaching needs none: map lookups
/// and updates on fds it holds (no check since Linux 5.19, commit c8644cd0efe7), the mmapped
/// counters, rtnetlink GET requests (`rtnetlink_rcv_msg` asks CAP_NET_ADMIN of every other
/// kind), closing a tcx link, `/proc/net/*`, `/proc/PID/stat`, and its own root-owned files.
pub const KEEP_AFTER_ATTACH: [Keep; 3] = [
    // RTM_DELTFILTER and RTM_DELQDISC (net/core/rtnetlink.c `rtnetlink_rcv_msg`:
    // `netlink_net_capable(skb, CAP_NET_ADMIN)` for all but GET); BPF_PROG_QUERY
    // (kernel/bpf/syscall.c `bpf_prog_query`: `bpf_net_capable()`). Measured without it: clsact
    // shutdown fails with EPERM and leaves both filters and the qdisc; a tcx daemon's scrape
    // reports shaper_program_attached 0.
    Keep {
        cap: Capability::CAP_NET_ADMIN,
        without_it: "clsact filters stay behind at shutdown, and the tcx attach check fails",
        owner_names_only: false,
    },
    // readlink of /proc/PID/fd/N asks ptrace_may_access(PTRACE_MODE_READ_FSCREDS)
    // (fs/proc/base.c `proc_fd_access_allowed`). For a root process, uids match, but
    // security/commoncap.c `cap_ptrace_access_check` also wants its permitted set to be a subset
    // of our effective one, which after this cut it is not; for another uid, kernel/ptrace.c
    // `__ptrace_may_access` fails on the uid. Both fall back to CAP_SYS_PTRACE. Measured without
    // it: every socket of another process shows process "unknown".
    Keep {
        cap: Capability::CAP_SYS_PTRACE,
        without_it: "sockets of other processes show process \"unknown\"",
        owner_names_only: true,
    },
    // Another uid's /proc/PID/fd is its own, mode 0500 (fs/proc/fd.c `proc_fd_permission` ->
    // `generic_permission`): opening it needs CAP_DAC_READ_SEARCH, which CAP_SYS_PTRACE does not
    // imply. Measured without it: sockets of a `nobody` process show process "unknown".
    Keep {
        cap: Capability::CAP_DAC_READ_SEARCH,
        without_it: "sockets of other users' processes show process \"unknown\"",
        owner_names_only: true,
    },
];

/// A set of capabilities as the kernel writes it in `/proc/PID/status`: bit N is capability N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapMask(pub u64);

impl CapMask {
    fn of(caps: impl IntoIterator<Item = Capability>) -> Self {
        Self(caps.into_iter().fold(0, |mask, cap| mask | cap.bitmask()))
    }

    fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bitmask() != 0
    }

    fn set(self) -> CapsHashSet {
        caps::all()
            .into_iter()
            .filter(|&c| self.contains(c))
            .collect()
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The capabilities' names, by number (`cap_N` for one this crate does not know).
    pub fn names(self) -> Vec<String> {
        (0..64)
            .filter(|bit| self.0 & (1 << bit) != 0)
            .map(|bit| {
                caps::all()
                    .into_iter()
                    .find(|c| u32::from(c.index()) == bit)
                    .map_or_else(|| format!("cap_{bit}"), |c| c.to_string())
            })
            .collect()
    }
}

/// `CAP_A, CAP_B` or `none`.
impl fmt::Display for CapMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&self.names().join(", "))
        }
    }
}

/// The thread's capabilities after [`drop_after_attach`], read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kept {
    pub effective: CapMask,
    pub permitted: CapMask,
    pub bounding: CapMask,
    /// Of [`KEEP_AFTER_ATTACH`], what the daemon did not hold to begin with.
    pub missing: CapMask,
    pub no_new_privs: bool,
    /// Threads other than the caller, which keep the sets they had.
    pub other_threads: usize,
}

/// Which step of the cut failed; the daemon goes on with what it has then.
#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities after attaching failed at {step}")]
pub struct NotDropped {
    step: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn step<E: std::error::Error + Send + Sync + 'static>(
    step: &'static str,
) -> impl Fn(E) -> NotDropped {
    move |error| NotDropped {
        step,
        source: Box::new(error),
    }
}

/// Of `keep`, what `permitted` holds (kept) and what it lacks (missing).
fn split(keep: CapMask, permitted: CapMask) -> (CapMask, CapMask) {
    (
        CapMask(keep.0 & permitted.0),
        CapMask(keep.0 & !permitted.0),
    )
}

/// Cuts the calling thread's capabilities to [`KEEP_AFTER_ATTACH`] (those of them it holds and
/// `owners` needs), as described in the module documentation, and logs what it kept.
pub fn drop_after_attach(owners: Owners) -> std::result::Result<Kept, NotDropped> {
    let keep = keep_mask(owners);
    let permitted = CapMask::of(caps::read(None, CapSet::Permitted).map_err(step("capget"))?);
    let (kept, missing) = split(keep, permitted);

    // Needs no privilege; from here on no exec can grant any (security/commoncap.c
    // cap_bprm_creds_from_file intersects the new permitted set with the old one).
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(step("PR_SET_NO_NEW_PRIVS")(std::io::Error::last_os_error()));
    }
    // PR_CAPBSET_DROP needs CAP_SETPCAP, dropped just below. A daemon started with only the
    // capabilities `check` asks for lacks it and keeps its bounding set: no_new_privs still
    // stops an exec from raising anything.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(step("capget"))? {
        let bounding = caps::read(None, CapSet::Bounding).map_err(step("PR_CAPBSET_READ"))?;
        for cap in bounding.into_iter().filter(|&c| !kept.contains(c)) {
            caps::drop(None, CapSet::Bounding, cap).map_err(step("PR_CAPBSET_DROP"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(step("PR_CAP_AMBIENT_CLEAR_ALL"))?;
    caps::clear(None, CapSet::Inheritable).map_err(step("capset inheritable"))?;
    // Effective first: the kernel refuses a permitted set smaller than the effective one.
    caps::set(None, CapSet::Effective, &kept.set()).map_err(step("capset effective"))?;
    caps::set(None, CapSet::Permitted, &kept.set()).map_err(step("capset permitted"))?;

    let now = current(missing).map_err(step("reading the sets back"))?;
    info!(
        "capabilities after attach: {} (CapEff {:016x})",
        now.effective, now.effective.0
    );
    for keep in kept_after_attach(owners).filter(|k| missing.contains(k.cap)) {
        info!(
            "{} was not held from the start: {}",
            keep.cap, keep.without_it
        );
    }
    if now.other_threads > 0 {
        warn!(
            "{} other threads of this process keep their capabilities (capset changes only the \
             calling thread)",
            now.other_threads
        );
    }
    Ok(now)
}

/// For a daemon whose cut failed: warns, and says what it runs on with instead. Start-up goes
/// on: the cut is hardening, not a condition of serving.
pub fn warn_not_dropped(error: NotDropped) -> Kept {
    let now = current(CapMask::default());
    match &now {
        Ok(now) => warn!(
            "{}; the daemon runs on with {} (CapEff {:016x})",
            chain(&error),
            now.effective,
            now.effective.0
        ),
        Err(_) => warn!("{}; the daemon runs on with what it has", chain(&error)),
    }
    now.unwrap_or_default()
}

/// Of [`KEEP_AFTER_ATTACH`], what a daemon naming listeners' owners or not (`owners`) keeps.
pub fn kept_after_attach(owners: Owners) -> impl Iterator<Item = &'static Keep> {
    KEEP_AFTER_ATTACH
        .iter()
        .filter(move |k| owners == Owners::Named || !k.owner_names_only)
}

/// [`kept_after_attach`] as a mask: what `CapEff`, `CapPrm` and `CapBnd` of a daemon started
/// as root show after the cut.
pub fn keep_mask(owners: Owners) -> CapMask {
    CapMask::of(kept_after_attach(owners).map(|k| k.cap))
}

/// The calling thread's sets, from `/proc/thread-self/status` (the kernel's own rendering, so
/// what the log says is what `grep Cap /proc/PID/status` shows).
fn current(missing: CapMask) -> std::io::Result<Kept> {
    let thread = std::fs::read_to_string("/proc/thread-self/status")?;
    let process = std::fs::read_to_string("/proc/self/status")?;
    let field = |name| {
        status_mask(&thread, name)
            .ok_or_else(|| std::io::Error::other(format!("no {name} in /proc/thread-self/status")))
    };
    Ok(Kept {
        effective: CapMask(field("CapEff")?),
        permitted: CapMask(field("CapPrm")?),
        bounding: CapMask(field("CapBnd")?),
        missing,
        no_new_privs: status_field(&thread, "NoNewPrivs") == Some("1"),
        other_threads: status_field(&process, "Threads")
            .and_then(|n| n.parse::<usize>().ok())
            .map_or(0, |n| n.saturating_sub(1)),
    })
}

/// Capabilities that are missing from an effective set (the `CapEff` mask of
/// `/proc/self/status`) to start the daemon. Attaching tc programs needs CAP_NET_ADMIN; loading
/// them needs CAP_BPF (Linux >= 5.8) and CAP_PERFMON, or CAP_SYS_ADMIN for both. CAP_PERFMON
/// because the classifier adds variable offsets to packet pointers, which the verifier allows
/// only to a loader that may bypass its Spectre v1 sanitation (kernel/bpf/verifier.c
/// `sanitize_ptr_alu`, `bypass_spec_v1` = `perfmon_capable()`); without it the load fails with
/// "pointer arithmetic with it prohibited for !root" (measured on Linux 6.18).
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Parses a capability mask (`CapInh`, `CapPrm`, `CapEff`, `CapBnd`, `CapAmb`) of
/// `/proc/<pid>/status`.
pub fn status_mask(status: &str, field: &str) -> Option<u64> {
    u64::from_str_radix(status_field(status, field)?, 16).ok()
}

/// Parses the `CapEff:` line of `/proc/<pid>/status`.
pub fn effective_capabilities(status: &str) -> Option<u64> {
    status_mask(status, "CapEff")
}

/// Fails with [`DaemonError::NotPrivileged`] unless this process can load and attach the
/// classifier.
pub fn check() -> Result<(), DaemonError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let effective = effective_capabilities(&status).unwrap_or(0);
    let missing = missing_capabilities(effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::NotPrivileged {
            missing: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing_capabilities(0x000001ffffffffff).is_empty());
    }

    #[test]
    fn unprivileged_user_misses_all_three() {
        assert_eq!(
            missing_capabilities(0),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn cap_sys_admin_stands_in_for_cap_bpf_and_cap_perfmon() {
        let effective = (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN);
        assert!(missing_capabilities(effective).is_empty());
    }

    #[test]
    fn cap_bpf_and_net_admin_without_perfmon_are_not_enough() {
        let effective = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN);
        assert_eq!(missing_capabilities(effective), ["CAP_PERFMON"]);
        assert_eq!(
            missing_capabilities(1 << CAP_BPF),
            ["CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn reads_capeff_from_proc_status() {
        let status = "Name:\tshaper\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status), Some(0x000001ffffffffff));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }

    #[test]
    fn reads_each_mask_by_its_exact_field_name() {
        let status = "CapInh:\t0000000000000000\nCapPrm:\t0000000000081004\n\
                      CapEff:\t0000000000081004\nCapBnd:\t000001ffffffffff\nCapAmb:\tzz\n\
                      NoNewPrivs:\t1\n";
        assert_eq!(status_mask(status, "CapPrm"), Some(0x81004));
        assert_eq!(status_mask(status, "CapBnd"), Some(0x1ff_ffff_ffff));
        assert_eq!(status_mask(status, "CapInh"), Some(0));
        // Not hex, and a prefix of a field name, are no mask.
        assert_eq!(status_mask(status, "CapAmb"), None);
        assert_eq!(status_mask(status, "Cap"), None);
        assert_eq!(status_field(status, "NoNewPrivs"), Some("1"));
    }

    /// docs/src/guide/security.md quotes this mask as the measured `CapEff`.
    #[test]
    fn the_kept_set_is_net_admin_sys_ptrace_and_dac_read_search() {
        assert_eq!(keep_mask(Owners::Named), CapMask(0x0000_0000_0008_1004));
        assert_eq!(
            keep_mask(Owners::Named).to_string(),
            "CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_SYS_PTRACE"
        );
        // --no-owner-names: CAP_NET_ADMIN alone.
        assert_eq!(keep_mask(Owners::Unnamed), CapMask(0x1000));
    }

    #[test]
    fn names_come_in_bit_order_and_unknown_bits_by_number() {
        assert_eq!(CapMask(0).to_string(), "none");
        assert_eq!(
            CapMask((1 << 39) | (1 << 38) | 1).names(),
            ["CAP_CHOWN", "CAP_PERFMON", "CAP_BPF"]
        );
        assert_eq!(CapMask(1 << 63).names(), ["cap_63"]);
    }

    #[test]
    fn keeps_only_what_it_holds_and_names_the_rest_missing() {
        let keep = keep_mask(Owners::Named);
        // Root: everything held, nothing missing.
        assert_eq!(split(keep, CapMask(0x1ff_ffff_ffff)), (keep, CapMask(0)));
        // Started with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN only.
        let started = CapMask::of([
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
            Capability::CAP_NET_ADMIN,
        ]);
        assert_eq!(
            split(keep, started),
            (
                CapMask::of([Capability::CAP_NET_ADMIN]),
                CapMask::of([Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH])
            )
        );
    }
}
