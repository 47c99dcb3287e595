//! Checks, before touching the kernel, that the process may load and attach BPF programs, so the
//! operator gets one clear message instead of an EPERM from deep inside a syscall.

use crate::error::{Error, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Capabilities that are missing from an effective set (the `CapEff` mask of
/// `/proc/self/status`). Attaching tc programs needs CAP_NET_ADMIN; loading them needs CAP_BPF
/// (Linux >= 5.8) or, before it existed, CAP_SYS_ADMIN, which still implies it.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Parses the `CapEff:` line of `/proc/<pid>/status`.
pub fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Fails with [`Error::NotPrivileged`] unless this process can load and attach the classifier.
pub fn check() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let effective = effective_capabilities(&status).unwrap_or(0);
    let missing = missing_capabilities(effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NotPrivileged {
            missing: missing.join(" and "),
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
    fn unprivileged_user_misses_both() {
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_NET_ADMIN"]);
    }

    #[test]
    fn cap_sys_admin_stands_in_for_cap_bpf() {
        let effective = (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN);
        assert!(missing_capabilities(effective).is_empty());
    }

    #[test]
    fn cap_bpf_without_net_admin_is_not_enough() {
        assert_eq!(missing_capabilities(1 << CAP_BPF), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn reads_capeff_from_proc_status() {
        let status = "Name:\tshaper\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status), Some(0x000001ffffffffff));
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }
}
