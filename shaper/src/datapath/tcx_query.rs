//! Which programs a tcx hook runs, as program ids, asked with CAP_NET_ADMIN alone.
//!
//! aya's `SchedClassifier::query_tcx` turns every id BPF_PROG_QUERY returns into a
//! `ProgramInfo` through BPF_PROG_GET_FD_BY_ID, which needs CAP_SYS_ADMIN
//! (kernel/bpf/syscall.c `bpf_prog_get_fd_by_id`). The daemon drops that after attaching
//! (`daemon::capabilities`), and comparing ids needs no fd: its own program's id comes from
//! the fd it holds. BPF_PROG_QUERY itself asks only `bpf_net_capable()` (CAP_NET_ADMIN or
//! CAP_SYS_ADMIN) before `tcx_prog_query` (kernel/bpf/tcx.c).

use std::io;

/// BPF_PROG_QUERY and the two tcx attach types (include/uapi/linux/bpf.h).
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// A tcx hook holds at most this many programs (include/linux/bpf_mprog.h `BPF_MPROG_MAX`), so
/// one call with this many slots always gets them all.
const MPROG_MAX: usize = 64;

/// The `query` member of `union bpf_attr`, as BPF_PROG_QUERY reads and writes it.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}
const _: () = assert!(size_of::<ProgQuery>() == 64);

/// The ids of the programs on `ifindex`'s tcx ingress (or egress) hook, in run order.
/// `ENODEV` when the interface is gone.
pub(crate) fn program_ids(ifindex: u32, ingress: bool) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; MPROG_MAX];
    let mut query = ProgQuery {
        target_ifindex: ifindex,
        attach_type: if ingress {
            BPF_TCX_INGRESS
        } else {
            BPF_TCX_EGRESS
        },
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: MPROG_MAX as u32,
        ..ProgQuery::default()
    };
    // SAFETY: `query` is a valid BPF_PROG_QUERY attribute of the size passed; the kernel writes
    // at most `prog_cnt` ids into `ids`, which outlives the call, and the counts into `query`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut query as *mut ProgQuery,
            size_of::<ProgQuery>(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    let count = (query.prog_cnt as usize).min(MPROG_MAX);
    Ok(ids[..count].to_vec())
}
