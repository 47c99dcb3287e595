//! What the running kernel must have for the datapath, asked of the kernel itself before
//! anything is pinned or attached.
//!
//! Each feature is probed, not inferred from the version: distributions backport, and a probe
//! answers for the kernel that runs. The versions in the messages say where mainline got each
//! feature, so an operator knows what to upgrade to. Below these the daemon refuses to start;
//! attach modes and other optional features degrade on their own (tcx falls back to clsact).

use std::{ffi::CStr, io};

use crate::datapath::{DatapathError, Result};

/// A feature the datapath cannot do without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// What it is, as an operator would search for it.
    pub name: &'static str,
    /// The mainline release that added it, and the commit.
    pub since: &'static str,
    /// What shaper needs it for.
    pub used_for: &'static str,
}

/// BPF_ATOMIC with BPF_FETCH and BPF_CMPXCHG (commits 5ca419f2864a and 5ffa25502b5a, Linux
/// 5.12): before them BPF_ATOMIC was BPF_XADD, an add that returns nothing.
pub const BPF_ATOMIC_CMPXCHG: Feature = Feature {
    name: "BPF atomic compare-and-exchange (BPF_CMPXCHG)",
    since: "Linux 5.12 (commit 5ffa25502b5a)",
    used_for: "the token buckets, shared by every CPU without a lock",
};

/// getsockopt(SO_NETNS_COOKIE) (commit e8b9eab99232, Linux 5.14).
pub const SO_NETNS_COOKIE: Feature = Feature {
    name: "the network namespace cookie (SO_NETNS_COOKIE)",
    since: "Linux 5.14 (commit e8b9eab99232)",
    used_for: "the pin directory of each network namespace",
};

/// The first feature the running kernel lacks, with the running kernel's release.
pub fn check() -> Result<()> {
    let missing = [
        (BPF_ATOMIC_CMPXCHG, has_bpf_cmpxchg()),
        (SO_NETNS_COOKIE, has_netns_cookie()),
    ]
    .into_iter()
    .find_map(|(feature, present)| (!present).then_some(feature));
    match missing {
        None => Ok(()),
        Some(feature) => Err(DatapathError::KernelTooOld {
            kernel: release(),
            feature: feature.name,
            since: feature.since,
            used_for: feature.used_for,
        }),
    }
}

/// Whether a tc program's `bpf_redirect()` to an IFB device delivers: the kernel marks the
/// packet redirected only from Linux 6.5 (`__bpf_tx_skb()` calls
/// `skb_set_redirected_noclear()`: "bpf: Set skb redirect and from_ingress info in
/// __bpf_tx_skb", bpf-next, April 2023), and `ifb_xmit()` (drivers/net/ifb.c) frees every
/// packet that is not marked. Seen in the VM test bed on Debian 12's 6.1: the IFB's HTB queued
/// every packet of an ingress shape rule and not one arrived. No probe short of sending a
/// packet through an IFB tells, so this one goes by the version.
pub fn redirect_to_ifb_delivers() -> bool {
    static DELIVERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DELIVERS.get_or_init(|| {
        use aya::util::KernelVersion;
        // A kernel whose version cannot be read is taken to be a current one.
        KernelVersion::current().map_or(true, |v| v >= KernelVersion::new(6, 5, 0))
    })
}

/// `uname -r`.
pub fn release() -> String {
    // SAFETY: an all-zero utsname is a valid value for uname(2) to fill.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname(2) writes into `uts`, which is a properly sized utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "an unknown kernel".into();
    }
    // SAFETY: the kernel NUL-terminates `release` within its 65 bytes.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    format!("Linux {}", release.to_string_lossy())
}

fn has_netns_cookie() -> bool {
    match super::pins::netns_cookie() {
        Ok(_) => true,
        // ENOPROTOOPT: sock_getsockopt() does not know the option.
        Err(DatapathError::Io(e)) => e.raw_os_error() != Some(libc::ENOPROTOOPT),
        Err(_) => true,
    }
}

/// Loads a four-instruction socket filter that does a cmpxchg on its stack. A kernel without
/// the instruction refuses it with EINVAL (`check_atomic()` in kernel/bpf/verifier.c knows
/// only BPF_ADD there). Any other failure (no privilege, a seccomp filter) does not tell, so it
/// counts as present and the program's own load reports what is wrong.
fn has_bpf_cmpxchg() -> bool {
    let program = [
        // r0 = 0
        insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0),
        // *(u64 *)(r10 - 8) = r0
        insn(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),
        // r1 = 1
        insn(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 1),
        // r0 = cmpxchg((u64 *)(r10 - 8), r0, r1)
        insn(BPF_STX | BPF_ATOMIC | BPF_DW, 10, 1, -8, BPF_CMPXCHG),
        // r0 = 0; exit
        insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0),
        insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    ];
    match load_socket_filter(&program) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() != Some(libc::EINVAL),
    }
}

// Instruction encoding (include/uapi/linux/bpf.h, bpf_common.h).
const BPF_ALU64: u8 = 0x07;
const BPF_STX: u8 = 0x03;
const BPF_JMP: u8 = 0x05;
const BPF_MOV: u8 = 0xb0;
const BPF_K: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_ATOMIC: u8 = 0xc0;
const BPF_DW: u8 = 0x18;
const BPF_EXIT: u8 = 0x90;
const BPF_CMPXCHG: i32 = 0xf0 | 0x01;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one (little-endian bitfields).
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The head of `union bpf_attr` for BPF_PROG_LOAD, up to `license`; the kernel zero-fills what
/// a shorter attribute leaves out (`bpf_check_uarg_tail_zero()`).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
}

fn load_socket_filter(program: &[Insn]) -> io::Result<()> {
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
    };
    // SAFETY: bpf(2) reads `size_of::<ProgLoadAttr>()` bytes of `attr`, whose pointers (the
    // instructions, the licence string) are valid for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful BPF_PROG_LOAD returns a new fd that nothing else owns; closing it
    // frees the program.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// The value of field `name` of a `/proc/<pid>/status` text, trimmed: the capability masks
/// the daemon checks, and `Seccomp`, which tells a filter's EPERM from the kernel's
/// ([`DatapathError::explain_seccomp`]).
pub(crate) fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_pack_registers_as_the_kernel_reads_them() {
        let cmpxchg = insn(BPF_STX | BPF_ATOMIC | BPF_DW, 10, 1, -8, BPF_CMPXCHG);
        assert_eq!(cmpxchg.code, 0xdb);
        assert_eq!(cmpxchg.regs, 0x1a);
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(size_of::<ProgLoadAttr>(), 24);
    }

    #[test]
    fn the_release_names_linux() {
        assert!(release().starts_with("Linux "));
    }
}
