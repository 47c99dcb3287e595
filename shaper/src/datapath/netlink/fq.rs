//! The rtnetlink requests behind pace rules: the `fq` root qdisc shaper installs on an
//! interface (under an `mq` root, one `fq` per transmit queue, when the interface had a
//! multi-queue root), and its removal. `fq` holds each packet until the departure time the
//! program wrote into `skb->tstamp` (net/sched/sch_fq.c `fq_enqueue`). The layouts are those of
//! include/uapi/linux/pkt_sched.h.

use std::{io, ops::ControlFlow};

use shaper_common::PACE_ROOT_MAJOR;

use super::{
    attributes::read_u32,
    constants::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, TC_H_ROOT},
    exchange::{Reply, ack, talk},
    htb::RootQdisc,
    invalid,
    request::{Request, device_index},
};

/// The handle of shaper's pace root, `5350:` (an `fq`, or the `mq` above the `fq`s).
pub const ROOT_HANDLE: u32 = PACE_ROOT_MAJOR << 16;

// include/uapi/linux/pkt_sched.h, the TCA_FQ_* enum.
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;

/// Packets one `fq` holds, in all and per flow. `fq`'s defaults (10,000 and 100) are sized for
/// TCP's own pacing, where a socket keeps a few packets in the qdisc (TCP small queues); a pace
/// rule holds a whole queue's worth of one flow until its departure: a 512 KiB queue is 360
/// packets of 1,448 bytes. The horizon, not these, bounds what waits; they only have to be out
/// of its way for packets of ordinary sizes (65,536 of 1,500 bytes is 98 MB).
const PACKET_LIMIT: u32 = 65_536;

/// Whether `root` is shaper's pace root (left by this daemon or an earlier one).
pub fn is_pace_root(root: &RootQdisc) -> bool {
    root.handle == ROOT_HANDLE && (root.kind == "fq" || root.kind == "mq")
}

/// The RTM_NEWQDISC request for an `fq` at `parent` with handle `handle` (0: the kernel picks).
fn fq_request(index: i32, handle: u32, parent: u32) -> Request {
    let mut request = Request::tc(index, handle, parent);
    request
        .put_str(libc::TCA_KIND, "fq")
        .nested(libc::TCA_OPTIONS, |options| {
            options
                .put(TCA_FQ_PLIMIT, &PACKET_LIMIT.to_ne_bytes())
                .put(TCA_FQ_FLOW_PLIMIT, &PACKET_LIMIT.to_ne_bytes());
        });
    request
}

/// Makes shaper's pace root the root qdisc of `ifindex`, replacing the root there: a plain `fq`
/// (`tc qdisc replace dev X root handle 5350: fq ...`), or with `multiqueue` an `mq` whose every
/// transmit queue gets an `fq`, so CPUs sending on different queues share no qdisc lock.
///
/// ENOENT means the kernel has no `fq` (net/sched/sch_api.c `qdisc_create`: no such kind, even
/// after `request_module("sch_fq")`).
pub fn install_root(ifindex: u32, multiqueue: bool) -> io::Result<()> {
    let index = device_index(ifindex)?;
    if !multiqueue {
        return ack(
            libc::RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_REPLACE,
            &fq_request(index, ROOT_HANDLE, TC_H_ROOT),
        );
    }
    let mut request = Request::tc(index, ROOT_HANDLE, TC_H_ROOT);
    request.put_str(libc::TCA_KIND, "mq");
    ack(libc::RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, &request)?;
    let queues = mq_queues(index)?;
    for queue in queues {
        let grafted = ack(
            libc::RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_REPLACE,
            &fq_request(index, 0, queue),
        );
        if let Err(e) = grafted {
            // Leave no half-made root: the kernel's default comes back.
            let _ = delete_root(ifindex, "mq");
            return Err(e);
        }
    }
    Ok(())
}

/// The classes of shaper's `mq` root on the device: one per transmit queue (`5350:1`,
/// `5350:2`, ...; net/sched/sch_mq.c `mq_walk`).
fn mq_queues(index: i32) -> io::Result<Vec<u32>> {
    let request = Request::tc(index, 0, ROOT_HANDLE);
    let mut queues = Vec::new();
    talk(
        libc::RTM_GETTCLASS,
        NLM_F_REQUEST | NLM_F_DUMP,
        &request,
        |reply| match reply {
            Reply::Message {
                kind: libc::RTM_NEWTCLASS,
                payload,
            } => {
                queues.extend(
                    read_u32(payload, 8)
                        .filter(|handle| handle >> 16 == PACE_ROOT_MAJOR && handle & 0xFFFF != 0),
                );
                Ok(ControlFlow::Continue(()))
            }
            Reply::Done => Ok(ControlFlow::Break(())),
            _ => Err(invalid("unexpected reply in a class dump")),
        },
    )?;
    Ok(queues)
}

/// Deletes shaper's pace root of kind `kind` from `ifindex` (and the `fq`s under an `mq`); the
/// kernel attaches its default root again. Naming kind and handle makes the kernel refuse
/// rather than delete a root that is not shaper's.
pub fn delete_root(ifindex: u32, kind: &str) -> io::Result<()> {
    let mut request = Request::tc(device_index(ifindex)?, ROOT_HANDLE, TC_H_ROOT);
    request.put_str(libc::TCA_KIND, kind);
    ack(libc::RTM_DELQDISC, 0, &request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::netlink::{attributes::walk_attributes, constants::TCMSG_LEN};

    #[test]
    fn only_fq_or_mq_with_shapers_handle_is_the_pace_root() {
        let root = |kind: &str, handle| RootQdisc {
            kind: kind.to_owned(),
            handle,
        };
        assert!(is_pace_root(&root("fq", ROOT_HANDLE)));
        assert!(is_pace_root(&root("mq", ROOT_HANDLE)));
        assert!(!is_pace_root(&root("fq", 0)));
        assert!(!is_pace_root(&root("htb", ROOT_HANDLE)));
    }

    #[test]
    fn the_fq_request_raises_both_packet_limits() {
        let request = fq_request(3, ROOT_HANDLE, TC_H_ROOT);
        let options = walk_attributes(&request.bytes[TCMSG_LEN..])
            .find(|&(kind, _)| kind & !(libc::NLA_F_NESTED as u16) == libc::TCA_OPTIONS)
            .map(|(_, value)| value)
            .expect("TCA_OPTIONS");
        let limits: Vec<(u16, Option<u32>)> = walk_attributes(options)
            .map(|(kind, value)| (kind, read_u32(value, 0)))
            .collect();
        assert_eq!(
            limits,
            [
                (TCA_FQ_PLIMIT, Some(PACKET_LIMIT)),
                (TCA_FQ_FLOW_PLIMIT, Some(PACKET_LIMIT))
            ]
        );
    }
}
