//! The queue under each shape rule's HTB class (its leaf qdisc), and what those queues report.
//!
//! # Which queue
//! On egress the senders are local: a packet waiting in the class's queue stays charged to its
//! socket, and TCP's small-queues limit (net/ipv4/tcp_output.c `tcp_small_queue_check`) stops a
//! sender long before a bounded FIFO overflows. A bfifo of the rule's queue bytes is all it needs.
//!
//! On ingress (the classes on the IFB device) the senders are remote and learn of the queue only
//! by what it does to their packets: a FIFO tells them nothing until it overflows, so a
//! loss-based sender fills it, loses a burst of segments when it does, and meanwhile every packet
//! waits for the whole queue. There the queue is `fq_codel` with ECN: CoDel marks (an ECN sender)
//! or drops (any other) the packets of a flow whose packets waited longer than `target` for a
//! whole `interval` (20 ms and 100 ms here; net/sched/sch_fq_codel.c, include/net/codel_impl.h `codel_dequeue`), so a
//! sender slows while the queue is still short, and flows queue apart from each other. A kernel
//! without `sch_fq_codel` (this build machine's) gets the bfifo instead, said once in the log.

use std::{
    collections::BTreeMap,
    io,
    ops::ControlFlow,
    sync::atomic::{AtomicBool, Ordering},
};

use super::{
    attributes::{read_u32, string_value, walk_attributes},
    constants::{
        NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, TCA_STATS_APP, TCA_STATS_QUEUE,
        TCMSG_LEN,
    },
    exchange::{Reply, ack, talk},
    htb::ClassSpec,
    invalid,
    request::Request,
};

// include/uapi/linux/pkt_sched.h, the TCA_FQ_CODEL_* enum.
const TCA_FQ_CODEL_TARGET: u16 = 1;
const TCA_FQ_CODEL_LIMIT: u16 = 2;
const TCA_FQ_CODEL_INTERVAL: u16 = 3;
const TCA_FQ_CODEL_ECN: u16 = 4;
const TCA_FQ_CODEL_MEMORY_LIMIT: u16 = 9;

/// `struct tc_fq_codel_xstats.type` of a qdisc's (not a class's) statistics.
const TCA_FQ_CODEL_XSTATS_QDISC: u32 = 0;

/// CoDel's target and interval: 20 ms and 100 ms, where RFC 8289 (section 4.3) suggests 5 ms,
/// kept unless the rate is so low that a few full-size packets take longer than the target to
/// send. A classic sender backs off by 30% (CUBIC) at a mark, and the link stays busy through
/// that only if the queue held about 0.43 of the round trip's worth of rate: with 5 ms, one
/// CUBIC upload through an 8 Mbit/s rule at an 80 ms round trip reached 0.81 of the rate, with
/// 20 ms 0.93–0.96. The interval is how long the queue must stay above the target before the
/// first mark, so a longer one lets slow start overshoot further: with 200 ms that upload's RTT
/// p99 was 590–630 ms, with 100 ms 200–440 ms (`cargo xtask bench --scenario rtt`, kernel 7.2,
/// 2026-12-07).
const TARGET_US: u64 = 20_000;
const INTERVAL_US: u64 = 100_000;
/// The target is at least the time of this many bytes at the rate (three Ethernet frames):
/// below that, a packet's own wait behind the one being sent exceeds the target and CoDel would
/// mark every flow all the time.
const TARGET_FRAMES_BYTES: u64 = 3 * 1514;
/// fq_codel's own default packet limit (`fq_codel_init`); the byte bound is the memory limit.
const PACKET_LIMIT: u32 = 10_240;
/// fq_codel bounds the buffers' sizes (`skb->truesize`, `fq_codel_enqueue`), not the packets'
/// lengths: a full-size frame takes about twice its length in buffer on most drivers. The
/// memory limit is this many times the rule's queue bytes, so about as many packets fit as in
/// the bfifo of the same queue.
const TRUESIZE_PER_BYTE: u64 = 2;

/// The kind of queue under a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `bfifo`: tail drop at the rule's queue bytes.
    Fifo,
    /// `fq_codel` with ECN.
    FqCodel,
}

impl Kind {
    /// The qdisc's name (TCA_KIND).
    pub fn name(self) -> &'static str {
        match self {
            Self::Fifo => "bfifo",
            Self::FqCodel => "fq_codel",
        }
    }

    fn of(kind: &str) -> Option<Self> {
        [Self::Fifo, Self::FqCodel]
            .into_iter()
            .find(|k| k.name() == kind)
    }
}

/// A class's queue as the kernel reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leaf {
    pub handle: u32,
    /// `None` for a kind shaper does not make (somebody replaced it by hand).
    pub kind: Option<Kind>,
    /// Every packet the queue dropped: on overflow, and (fq_codel) by CoDel when it dequeues,
    /// which HTB's class never sees (`qdisc_tree_reduce_backlog` counts those in the root).
    pub drops: u64,
    /// Packets fq_codel marked CE instead of dropping (`ecn_mark`).
    pub marks: u64,
}

/// CoDel's target and interval for a class of `rate_bps`, in microseconds.
pub fn codel_times_us(rate_bps: u64) -> (u32, u32) {
    let frames_us = TARGET_FRAMES_BYTES * 8 * 1_000_000 / rate_bps.max(1);
    let target = TARGET_US.max(frames_us);
    // The interval stays five times the target.
    let interval = INTERVAL_US.max(5 * target);
    let clamp = |us: u64| u32::try_from(us).unwrap_or(u32::MAX);
    (clamp(target), clamp(interval))
}

/// The options of a class's queue of `kind` for `spec`.
fn options(kind: Kind, spec: &ClassSpec) -> Request {
    let mut options = Request::default();
    let queue = u32::try_from(spec.queue_bytes).unwrap_or(u32::MAX);
    match kind {
        // struct tc_fifo_qopt: the limit, in bytes for bfifo.
        Kind::Fifo => options.bytes = queue.to_ne_bytes().to_vec(),
        Kind::FqCodel => {
            let (target, interval) = codel_times_us(spec.rate_bps);
            let memory = u32::try_from(spec.queue_bytes.saturating_mul(TRUESIZE_PER_BYTE))
                .unwrap_or(u32::MAX);
            options
                .put(TCA_FQ_CODEL_TARGET, &target.to_ne_bytes())
                .put(TCA_FQ_CODEL_INTERVAL, &interval.to_ne_bytes())
                .put(TCA_FQ_CODEL_LIMIT, &PACKET_LIMIT.to_ne_bytes())
                .put(TCA_FQ_CODEL_MEMORY_LIMIT, &memory.to_ne_bytes())
                .put(TCA_FQ_CODEL_ECN, &1u32.to_ne_bytes());
        }
    }
    options
}

fn request(index: i32, handle: u32, classid: u32, kind: Kind, spec: &ClassSpec) -> Request {
    let options = options(kind, spec);
    let mut request = Request::tc(index, handle, classid);
    request.put_str(libc::TCA_KIND, kind.name());
    match kind {
        // bfifo's options are the bare struct, not nested attributes (`fifo_init`).
        Kind::Fifo => request.put(libc::TCA_OPTIONS, &options.bytes),
        Kind::FqCodel => request.nested(libc::TCA_OPTIONS, |nested| nested.bytes = options.bytes),
    };
    request
}

/// Gives class `classid` its queue for `spec`. An existing queue (`leaf`) of a kind shaper makes
/// is changed in place, whatever its kind (`tc_modify_qdisc` → `qdisc_change`), so the packets
/// waiting in it are kept; a queue made by an earlier version, or where the kernel had no
/// fq_codel, stays a bfifo until its rule is removed. A new one is `wanted`, replacing the pfifo
/// HTB gave the class (`htb_change_class` makes it with handle 0, which `tc_modify_qdisc`
/// takes for a default); where the kernel has no `sch_fq_codel` (ENOENT from `qdisc_create`,
/// even after `request_module`), a bfifo. Returns the kind the queue has.
pub fn set(
    index: i32,
    classid: u32,
    spec: &ClassSpec,
    leaf: Option<Leaf>,
    wanted: Kind,
) -> io::Result<Kind> {
    if let Some(Leaf {
        handle,
        kind: Some(kind),
        ..
    }) = leaf.filter(|leaf| leaf.handle != 0)
    {
        ack(
            libc::RTM_NEWQDISC,
            0,
            &request(index, handle, classid, kind, spec),
        )?;
        return Ok(kind);
    }
    let create = |kind| {
        ack(
            libc::RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_EXCL,
            &request(index, 0, classid, kind, spec),
        )
    };
    match (wanted, create(wanted)) {
        (_, Ok(())) => Ok(wanted),
        (Kind::FqCodel, Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "this kernel has no fq_codel qdisc (sch_fq_codel): ingress shape rules \
                     queue in a bfifo of their queue bytes instead, which remote senders only \
                     notice when it overflows"
                );
            }
            create(Kind::Fifo)?;
            Ok(Kind::Fifo)
        }
        (_, Err(e)) => Err(e),
    }
}

/// The qdiscs of device `index` under a class (parent not the root), by parent class id: one
/// RTM_GETQDISC dump, read for the device (the kernel dumps every device's qdiscs;
/// net/sched/sch_api.c `tc_dump_qdisc`).
pub fn leaves(index: i32) -> io::Result<BTreeMap<u32, Leaf>> {
    let request = Request::tc(index, 0, 0);
    let mut leaves = BTreeMap::new();
    talk(
        libc::RTM_GETQDISC,
        NLM_F_REQUEST | NLM_F_DUMP,
        &request,
        |reply| match reply {
            Reply::Message {
                kind: libc::RTM_NEWQDISC,
                payload,
            } => {
                if let Some((parent, leaf)) = parse_leaf(payload, index) {
                    leaves.insert(parent, leaf);
                }
                Ok(ControlFlow::Continue(()))
            }
            Reply::Done => Ok(ControlFlow::Break(())),
            _ => Err(invalid("unexpected reply in a qdisc dump")),
        },
    )?;
    Ok(leaves)
}

/// A qdisc of device `index` from an RTM_NEWQDISC payload (tcmsg: ifindex at 4, handle at 8,
/// parent at 12), with its parent; `None` for another device's or a root.
fn parse_leaf(payload: &[u8], index: i32) -> Option<(u32, Leaf)> {
    let ifindex = read_u32(payload, 4)?;
    let handle = read_u32(payload, 8)?;
    let parent = read_u32(payload, 12)?;
    if i32::try_from(ifindex).ok()? != index || parent >> 16 == 0xFFFF {
        return None;
    }
    let mut leaf = Leaf {
        handle,
        ..Leaf::default()
    };
    for (kind, value) in walk_attributes(payload.get(TCMSG_LEN..)?) {
        match kind {
            libc::TCA_KIND => {
                leaf.kind = std::str::from_utf8(string_value(value))
                    .ok()
                    .and_then(Kind::of);
            }
            libc::TCA_STATS2 => {
                for (stat, value) in walk_attributes(value) {
                    match stat {
                        // struct gnet_stats_queue: qlen, backlog, drops, requeues, overlimits.
                        TCA_STATS_QUEUE => {
                            leaf.drops = read_u32(value, 8).map_or(0, u64::from);
                        }
                        // struct tc_fq_codel_xstats: type, then tc_fq_codel_qd_stats:
                        // maxpacket, drop_overlimit, ecn_mark, ...
                        TCA_STATS_APP if read_u32(value, 0) == Some(TCA_FQ_CODEL_XSTATS_QDISC) => {
                            leaf.marks = read_u32(value, 12).map_or(0, u64::from);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((parent, leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codel_keeps_its_usual_times_unless_three_frames_take_longer_at_the_rate() {
        assert_eq!(codel_times_us(8_000_000), (20_000, 100_000));
        assert_eq!(codel_times_us(10_000_000_000), (20_000, 100_000));
        // 1 Mbit/s: three 1,514-byte frames take 36.3 ms.
        assert_eq!(codel_times_us(1_000_000), (36_336, 181_680));
        assert_eq!(
            codel_times_us(0),
            (u32::MAX, u32::MAX),
            "clamped, not wrapped"
        );
    }

    #[test]
    fn the_fq_codel_request_asks_for_ecn_and_bounds_memory_at_twice_the_queue() {
        let spec = ClassSpec {
            rule: 3,
            rate_bps: 8_000_000,
            burst_bytes: 30_000,
            queue_bytes: 512 * 1024,
        };
        let options = options(Kind::FqCodel, &spec);
        let attributes: BTreeMap<u16, u32> = walk_attributes(&options.bytes)
            .map(|(kind, value)| (kind, read_u32(value, 0).expect("u32")))
            .collect();
        assert_eq!(
            attributes,
            BTreeMap::from([
                (TCA_FQ_CODEL_TARGET, 20_000),
                (TCA_FQ_CODEL_LIMIT, PACKET_LIMIT),
                (TCA_FQ_CODEL_INTERVAL, 100_000),
                (TCA_FQ_CODEL_ECN, 1),
                (TCA_FQ_CODEL_MEMORY_LIMIT, 1024 * 1024),
            ])
        );
        assert_eq!(
            options_of_fifo(&spec),
            (512u32 * 1024).to_ne_bytes().to_vec()
        );
    }

    fn options_of_fifo(spec: &ClassSpec) -> Vec<u8> {
        options(Kind::Fifo, spec).bytes
    }

    #[test]
    fn a_dumped_leaf_gives_its_kind_drops_and_marks_and_other_devices_are_skipped() {
        let mut payload = vec![0u8; TCMSG_LEN];
        payload[4..8].copy_from_slice(&7u32.to_ne_bytes());
        payload[8..12].copy_from_slice(&0x8001_0000u32.to_ne_bytes());
        payload[12..16].copy_from_slice(&0x5348_0003u32.to_ne_bytes());
        let mut attributes = Request::default();
        attributes.put_str(libc::TCA_KIND, "fq_codel");
        let mut queue = vec![0u8; 20];
        queue[8..12].copy_from_slice(&17u32.to_ne_bytes());
        let mut xstats = vec![0u8; 40];
        xstats[12..16].copy_from_slice(&42u32.to_ne_bytes());
        attributes.nested(libc::TCA_STATS2, |stats| {
            stats
                .put(TCA_STATS_QUEUE, &queue)
                .put(TCA_STATS_APP, &xstats);
        });
        payload.extend_from_slice(&attributes.bytes);
        assert_eq!(
            parse_leaf(&payload, 7),
            Some((
                0x5348_0003,
                Leaf {
                    handle: 0x8001_0000,
                    kind: Some(Kind::FqCodel),
                    drops: 17,
                    marks: 42,
                }
            ))
        );
        assert_eq!(parse_leaf(&payload, 8), None);
        payload[12..16].copy_from_slice(&0xFFFF_FFFFu32.to_ne_bytes());
        assert_eq!(parse_leaf(&payload, 7), None, "a root is no class's queue");
    }
}
