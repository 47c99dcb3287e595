//! The clsact qdisc and its BPF filters: deleting the clsact qdisc shaper added, so a
//! legacy-mode run leaves the interface as it found it, and listing the BPF programs attached
//! under it, so the daemon can tell whether its own is still there.

use std::{io, ops::ControlFlow};

use super::{
    attributes::{read_u32, string_value, u32_value, walk_attributes},
    constants::{
        NLM_F_DUMP, NLM_F_REQUEST, TC_H_CLSACT, TC_H_MAJ_MASK, TC_H_MIN_EGRESS, TC_H_MIN_INGRESS,
        TCM_IFINDEX_MAGIC_BLOCK, TCMSG_LEN,
    },
    exchange::{Reply, ack, talk},
    invalid,
    link::link_aggregate_limits,
    request::{Request, device_index},
};

/// include/uapi/linux/pkt_sched.h: clsact's own handle, ffff:0.
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
// include/uapi/linux/pkt_cls.h, the TCA_BPF_* enum: the id of an eBPF (not classic BPF) program,
// put by net/sched/cls_bpf.c `cls_bpf_dump_ebpf_info` inside TCA_OPTIONS. Not to be confused
// with TCA_CHAIN, also 11, which every filter message has at the top level.
const TCA_BPF_ID: u16 = 11;

/// Deletes the clsact qdisc of `ifindex` (and with it every filter under it). Naming the kind
/// makes the kernel refuse (EINVAL) rather than delete a plain ingress qdisc at the same parent
/// (net/sched/sch_api.c `tc_get_qdisc`). An index no device can have is ENODEV, as the kernel
/// answers for a missing one.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    ack(libc::RTM_DELQDISC, 0, &delete_clsact_request(ifindex)?)
}

/// RTM_DELQDISC's body for the clsact qdisc of `ifindex`: the tcmsg, then TCA_KIND.
fn delete_clsact_request(ifindex: u32) -> io::Result<Request> {
    let mut request = Request::tc(device_index(ifindex)?, CLSACT_HANDLE, TC_H_CLSACT);
    request.put_str(libc::TCA_KIND, "clsact");
    Ok(request)
}

/// The parent handle of clsact's `ingress` (true) or egress hook.
pub(super) fn hook_parent(ingress: bool) -> u32 {
    let hook = if ingress {
        TC_H_MIN_INGRESS
    } else {
        TC_H_MIN_EGRESS
    };
    (TC_H_CLSACT & TC_H_MAJ_MASK) | hook
}

/// The ids of the BPF programs attached as tc filters (cls_bpf) under the clsact qdisc of
/// `ifindex` on the `ingress` (true) or egress hook, in the order the kernel lists them.
///
/// Empty when the interface has no clsact qdisc or no bpf filter on that hook: the kernel's dump
/// (net/sched/cls_api.c `tc_dump_tfilter`) is a lone NLMSG_DONE without an error in both cases,
/// so they cannot be told apart here (for a detach check they mean the same). The dump is just
/// as empty for an ifindex with no device, so an empty one is followed by an RTM_GETLINK, which
/// makes a missing interface `ENODEV`, as is an index no device can have (0, above INT_MAX).
/// Classic BPF filters (`tc filter ... bpf bytecode`) have no program id and are left out; so
/// are filters the kernel reports under the other hook (see `bpf_program_id`).
///
/// Listing filters needs no privilege (RTM_GETTFILTER is a "get", which net/core/rtnetlink.c
/// `rtnetlink_rcv_msg` lets through without CAP_NET_ADMIN).
pub fn clsact_bpf_program_ids(ifindex: u32, ingress: bool) -> io::Result<Vec<u32>> {
    let parent = hook_parent(ingress);
    // tcm_info 0: every priority and protocol (`tcf_chain_dump` filters on a half of tcm_info
    // only when it is non-zero).
    let request = Request::tc(device_index(ifindex)?, 0, parent);
    let mut ids = Vec::new();
    talk(
        libc::RTM_GETTFILTER,
        NLM_F_REQUEST | NLM_F_DUMP,
        &request,
        |reply| filter_dump_reply(reply, parent, &mut ids),
    )?;
    if ids.is_empty() {
        // tc_dump_tfilter ends the dump quietly, not with ENODEV, when `__dev_get_by_index`
        // finds no device. RTM_GETLINK says ENODEV; its answer is otherwise not needed.
        link_aggregate_limits(ifindex)?;
    }
    Ok(ids)
}

/// One message of the reply to an RTM_GETTFILTER dump of `parent`: appends to `ids` the program
/// id of each bpf filter. The dump is RTM_NEWTFILTER messages (nlmsghdr, tcmsg, attributes)
/// ending in NLMSG_DONE; a request refused before any dumping comes back as NLMSG_ERROR instead.
pub(super) fn filter_dump_reply(
    reply: Reply<'_>,
    parent: u32,
    ids: &mut Vec<u32>,
) -> io::Result<ControlFlow<()>> {
    match reply {
        Reply::Message {
            kind: libc::RTM_NEWTFILTER,
            payload,
        } => {
            ids.extend(bpf_program_id(payload, parent));
            Ok(ControlFlow::Continue(()))
        }
        Reply::Done => Ok(ControlFlow::Break(())),
        Reply::Ack => Err(invalid("netlink ack where a filter dump was expected")),
        Reply::Message { .. } => Err(invalid("unexpected netlink message in a filter dump")),
    }
}

/// The program id of one RTM_NEWTFILTER (its payload: tcmsg, then attributes) from a dump of
/// `parent`, `None` unless it is a cls_bpf filter with an eBPF program under that hook.
///
/// Ahead of each priority's filters the dump sends a message for the priority itself
/// (`tcf_chain_dump` calls `tcf_fill_node` without a filter handle): it has TCA_KIND but no
/// TCA_OPTIONS. Classic BPF filters have options but TCA_BPF_OPS rather than an id
/// (net/sched/cls_bpf.c `cls_bpf_dump`).
///
/// The reply's tcm_parent is the block's classid, the parent its filters were added with
/// (net/sched/cls_api.c `tc_new_tfilter`, `tc_dump_tfilter`); clsact has a block per hook
/// (net/sched/sch_ingress.c `clsact_tcf_block`), so it always matches. It tells apart a plain
/// `ingress` qdisc in clsact's place, which hands its one block to either minor
/// (`ingress_find`, `ingress_tcf_block`) and would otherwise show its filters under egress too.
/// A shared block (`tc qdisc add ... ingress_block N clsact`) is reported by its index instead
/// (`tcf_fill_node`); the dump reached it through the hook asked for, so it counts.
fn bpf_program_id(payload: &[u8], parent: u32) -> Option<u32> {
    // struct tcmsg: family, padding, ifindex at 4, handle at 8, parent at 12, info at 16.
    let (ifindex, reported_parent) = (read_u32(payload, 4)?, read_u32(payload, 12)?);
    if ifindex != TCM_IFINDEX_MAGIC_BLOCK && reported_parent != parent {
        return None;
    }
    // NLMSG_ALIGN(sizeof(struct tcmsg)) is 20: the attributes follow it directly.
    let attributes = payload.get(TCMSG_LEN..)?;
    let mut is_bpf = false;
    let mut id = None;
    for (kind, value) in walk_attributes(attributes) {
        match kind {
            // nla_put_string puts the name with its NUL.
            libc::TCA_KIND => is_bpf = string_value(value) == b"bpf",
            libc::TCA_OPTIONS => {
                id = walk_attributes(value)
                    .find(|&(kind, _)| kind == TCA_BPF_ID)
                    .and_then(|(_, value)| u32_value(value));
            }
            _ => {}
        }
    }
    id.filter(|_| is_bpf)
}

#[cfg(test)]
mod tests {
    use libc::{TCA_CHAIN, TCA_KIND, TCA_OPTIONS};

    use super::*;
    use crate::datapath::netlink::{
        constants::MESSAGE_ALIGN,
        test_messages::{TEST, attribute, done, message, u32_attribute},
    };

    #[test]
    fn the_delete_request_is_a_tcmsg_then_the_kind_with_its_nul() {
        let request = delete_clsact_request(7).unwrap();
        let mut expected = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        for word in [7u32, CLSACT_HANDLE, TC_H_CLSACT, 0] {
            expected.extend_from_slice(&word.to_ne_bytes());
        }
        // rta_len 11: the header and "clsact\0", not the padding to 12.
        expected.extend_from_slice(&11u16.to_ne_bytes());
        expected.extend_from_slice(&libc::TCA_KIND.to_ne_bytes());
        expected.extend_from_slice(b"clsact\0\0");
        assert_eq!(request.bytes, expected);
        assert_eq!(request.bytes.len(), 32);
    }

    #[test]
    fn indexes_no_device_can_have_are_enodev_without_a_request() {
        for ifindex in [0, i32::MAX as u32 + 1, u32::MAX] {
            assert_eq!(
                device_index(ifindex).unwrap_err().raw_os_error(),
                Some(libc::ENODEV)
            );
            let err = link_aggregate_limits(ifindex).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{ifindex}: {err}");
            let err = delete_clsact(ifindex).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{ifindex}: {err}");
        }
        assert_eq!(device_index(1).unwrap(), 1);
        assert_eq!(device_index(i32::MAX as u32).unwrap(), i32::MAX);
    }

    // include/uapi/linux/pkt_cls.h (not in libc): attributes the kernel puts around the id.
    const TCA_BPF_OPS_LEN: u16 = 4;
    const TCA_BPF_OPS: u16 = 5;
    const TCA_BPF_NAME: u16 = 7;
    const TCA_BPF_FLAGS: u16 = 8;
    const TCA_BPF_FLAGS_GEN: u16 = 9;
    const TCA_BPF_TAG: u16 = 10;
    const INGRESS: u32 = 0xFFFF_FFF2;
    const EGRESS: u32 = 0xFFFF_FFF3;

    /// An RTM_NEWTFILTER as tcf_fill_node builds it: tcmsg, TCA_KIND, TCA_CHAIN, then
    /// TCA_OPTIONS when `options` is given (a filter, not a priority's header message).
    fn filter_message(ifindex: u32, parent: u32, kind: &[u8], options: Option<&[u8]>) -> Vec<u8> {
        let tcmsg = [
            &[0u8; 4][..],
            &ifindex.to_ne_bytes(),
            &1u32.to_ne_bytes(),
            &parent.to_ne_bytes(),
            &0xC000_0300u32.to_ne_bytes(),
        ]
        .concat();
        let mut payload = [
            tcmsg,
            attribute(TCA_KIND, kind),
            u32_attribute(TCA_CHAIN, 0),
        ]
        .concat();
        if let Some(options) = options {
            // With NLA_F_NESTED, which the walk must ignore (cls_bpf puts it without).
            payload.extend(attribute(TCA_OPTIONS | 0x8000, options));
        }
        message(libc::RTM_NEWTFILTER, &payload)
    }

    /// TCA_OPTIONS of an eBPF cls_bpf filter, laid out as cls_bpf_dump puts it.
    fn bpf_options(id: u32) -> Vec<u8> {
        [
            attribute(TCA_BPF_NAME, b"shaper_ingress\0"),
            u32_attribute(TCA_BPF_ID, id),
            attribute(TCA_BPF_TAG, &[0x3e; 8]),
            u32_attribute(TCA_BPF_FLAGS, 1),
            u32_attribute(TCA_BPF_FLAGS_GEN, 8),
        ]
        .concat()
    }

    fn bpf_filter(parent: u32, id: u32) -> Vec<u8> {
        filter_message(3, parent, b"bpf\0", Some(&bpf_options(id)))
    }

    fn priority_header(parent: u32, kind: &[u8]) -> Vec<u8> {
        filter_message(3, parent, kind, None)
    }

    /// Whether a filter dump goes on after the datagram just walked.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Dump {
        More,
        Done,
    }

    /// One datagram of a filter dump of `parent`, as `clsact_bpf_program_ids` reads it.
    fn dump(datagram: &[u8], parent: u32) -> io::Result<(Dump, Vec<u32>)> {
        let mut ids = Vec::new();
        let flow = TEST.walk(datagram, &mut |reply| {
            filter_dump_reply(reply, parent, &mut ids)
        })?;
        let dump = match flow {
            ControlFlow::Continue(()) => Dump::More,
            ControlFlow::Break(()) => Dump::Done,
        };
        Ok((dump, ids))
    }

    #[test]
    fn filter_dump_lists_bpf_ids_in_order_and_skips_other_messages() {
        let u32_options = [u32_attribute(1, 0x800), attribute(2, &[0; 20])].concat();
        let datagram = [
            priority_header(INGRESS, b"bpf\0"),
            bpf_filter(INGRESS, 1727),
            bpf_filter(INGRESS, 1800),
            priority_header(INGRESS, b"u32\0"),
            filter_message(3, INGRESS, b"u32\0", Some(&u32_options)),
            priority_header(INGRESS, b"bpf\0"),
            bpf_filter(INGRESS, 12),
        ]
        .concat();
        assert_eq!(
            dump(&datagram, INGRESS).unwrap(),
            (Dump::More, vec![1727, 1800, 12])
        );
        assert_eq!(dump(&done(0), INGRESS).unwrap(), (Dump::Done, vec![]));
    }

    #[test]
    fn done_after_filters_in_one_datagram_ends_the_dump() {
        let datagram = [bpf_filter(EGRESS, 7), done(0)].concat();
        assert_eq!(dump(&datagram, EGRESS).unwrap(), (Dump::Done, vec![7]));
    }

    #[test]
    fn classic_bpf_and_other_kinds_have_no_program_id() {
        let classic = [
            u32_attribute(TCA_BPF_OPS_LEN, 1),
            attribute(TCA_BPF_OPS, &[6, 0, 0, 0, 0, 0, 0, 0]),
            u32_attribute(TCA_BPF_FLAGS_GEN, 8),
        ]
        .concat();
        // Attribute 11 is TCA_BPF_ID only inside a bpf filter's options.
        let not_bpf = u32_attribute(TCA_BPF_ID, 99);
        let datagram = [
            filter_message(3, INGRESS, b"bpf\0", Some(&classic)),
            filter_message(3, INGRESS, b"bpfx\0", Some(&not_bpf)),
            filter_message(3, INGRESS, b"flower\0", Some(&not_bpf)),
            filter_message(3, INGRESS, b"bpf\0", Some(&attribute(TCA_BPF_ID, &[1, 0]))),
        ]
        .concat();
        assert_eq!(dump(&datagram, INGRESS).unwrap(), (Dump::More, vec![]));
    }

    #[test]
    fn kind_without_its_nul_is_still_bpf() {
        let datagram = filter_message(3, INGRESS, b"bpf", Some(&bpf_options(5)));
        assert_eq!(dump(&datagram, INGRESS).unwrap().1, vec![5]);
    }

    #[test]
    fn filters_reported_under_the_other_hook_are_not_listed() {
        // A plain ingress qdisc answers an egress dump with its ingress block (classid fff2).
        let datagram = [bpf_filter(INGRESS, 1), bpf_filter(EGRESS, 2)].concat();
        assert_eq!(dump(&datagram, EGRESS).unwrap().1, vec![2]);
        assert_eq!(dump(&datagram, INGRESS).unwrap().1, vec![1]);
    }

    #[test]
    fn filters_of_a_shared_block_are_listed() {
        // tcm_ifindex TCM_IFINDEX_MAGIC_BLOCK, tcm_parent the block index (22).
        let options = bpf_options(1727);
        let datagram = filter_message(TCM_IFINDEX_MAGIC_BLOCK, 22, b"bpf\0", Some(&options));
        assert_eq!(dump(&datagram, INGRESS).unwrap().1, vec![1727]);
    }

    #[test]
    fn dump_errors_are_the_kernels_errno() {
        let err = dump(&done(-libc::EMSGSIZE), INGRESS).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        let refused = message(libc::NLMSG_ERROR as u16, &(-libc::EPERM).to_ne_bytes());
        let err = dump(&[bpf_filter(INGRESS, 1), refused].concat(), INGRESS).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // An NLMSG_DONE without its int is taken as the end, not as an error.
        assert_eq!(
            dump(&message(libc::NLMSG_DONE as u16, &[]), INGRESS)
                .unwrap()
                .0,
            Dump::Done
        );
    }

    #[test]
    fn noop_messages_are_skipped() {
        let datagram = [
            message(libc::NLMSG_NOOP as u16, &[]),
            bpf_filter(INGRESS, 3),
        ]
        .concat();
        assert_eq!(dump(&datagram, INGRESS).unwrap(), (Dump::More, vec![3]));
    }

    #[test]
    fn malformed_filter_dumps_are_errors_not_panics() {
        let parts = [
            priority_header(INGRESS, b"bpf\0"),
            bpf_filter(INGRESS, 1727),
            done(0),
        ];
        let whole = parts.concat();
        let first = parts[0].len();
        // Every prefix: one that ends between messages is a dump still going on, any other cuts a
        // message and is an error (an empty one too: it would never reach NLMSG_DONE).
        for cut in 0..whole.len() {
            let boundary = cut == first || cut == first + parts[1].len();
            assert_eq!(
                dump(&whole[..cut], INGRESS).is_ok(),
                boundary,
                "cut at {cut}"
            );
        }
        assert_eq!(dump(&whole, INGRESS).unwrap(), (Dump::Done, vec![1727]));
        let mut lying = whole.clone();
        lying[..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(dump(&lying, INGRESS).is_err());
        lying[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(dump(&lying, INGRESS).is_err());
        let ack = message(libc::NLMSG_ERROR as u16, &0i32.to_ne_bytes());
        assert!(dump(&ack, INGRESS).is_err());
        assert!(dump(&message(libc::NLMSG_ERROR as u16, &[]), INGRESS).is_err());
        assert!(dump(&message(libc::RTM_NEWLINK, &[0; 16]), INGRESS).is_err());
    }

    #[test]
    fn truncated_filter_messages_yield_no_id() {
        // A message whose own length cuts its tcmsg or its options short has no id (TCA_OPTIONS
        // comes last, so any cut reaches it); the messages after it still read.
        let filter = bpf_filter(INGRESS, 9);
        let header_len = size_of::<libc::nlmsghdr>();
        for len in header_len..filter.len() {
            let mut cut = filter[..len].to_vec();
            cut[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            cut.resize(len.next_multiple_of(MESSAGE_ALIGN), 0);
            let datagram = [cut, bpf_filter(INGRESS, 10)].concat();
            assert_eq!(dump(&datagram, INGRESS).unwrap().1, [10], "cut at {len}");
        }
        // Options whose first attribute claims more than it has.
        let broken = [
            [200u16.to_ne_bytes(), TCA_BPF_ID.to_ne_bytes()].concat(),
            5u32.to_ne_bytes().to_vec(),
        ]
        .concat();
        let datagram = filter_message(3, INGRESS, b"bpf\0", Some(&broken));
        assert_eq!(dump(&datagram, INGRESS).unwrap().1, Vec::<u32>::new());
    }

    #[test]
    fn filter_dump_of_loopback_is_read_to_its_end() {
        // Unprivileged: RTM_GETTFILTER needs no capability. Whatever lo has attached, the real
        // kernel reply must parse.
        // SAFETY: if_nametoindex reads a NUL-terminated string and touches nothing else.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(lo, 0, "no lo in this network namespace");
        for ingress in [true, false] {
            clsact_bpf_program_ids(lo, ingress).unwrap();
        }
    }

    #[test]
    fn filter_dump_of_a_missing_interface_is_enodev() {
        // tc_dump_tfilter itself answers an empty dump; the RTM_GETLINK after it says ENODEV.
        // 0 and u32::MAX (TCM_IFINDEX_MAGIC_BLOCK as an int) are refused before any request.
        for ifindex in [i32::MAX as u32, 0, i32::MAX as u32 + 1, u32::MAX] {
            let err = clsact_bpf_program_ids(ifindex, true).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{ifindex}: {err}");
        }
    }
}
