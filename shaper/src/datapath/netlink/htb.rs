//! The rtnetlink requests behind shape rules: the HTB root qdisc shaper installs on an
//! interface, one HTB class per shape rule with a bounded queue under it ([`class_queue`]), the
//! class's statistics, and what the root was before. Built on the exchange and the message
//! builder of [`netlink`](super), as the clsact requests are; the layouts are those of
//! include/uapi/linux/pkt_sched.h.

use std::{collections::BTreeMap, io, ops::ControlFlow};

use shaper_common::{SHAPE_HTB_MAJOR, shape_class_id};

use super::{
    attributes::{read_u32, string_value, walk_attributes},
    class_queue::{self, Kind, Leaf},
    constants::{
        NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_REPLACE, NLM_F_REQUEST, TC_H_ROOT,
        TCA_STATS_BASIC, TCA_STATS_PKT64, TCA_STATS_QUEUE, TCMSG_LEN,
    },
    exchange::{Reply, ack, talk},
    invalid,
    request::{Request, device_index},
};

/// The handle of shaper's HTB root, `5348:`.
pub const ROOT_HANDLE: u32 = SHAPE_HTB_MAJOR << 16;

// include/uapi/linux/pkt_sched.h, the TCA_HTB_* enum.
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_DIRECT_QLEN: u16 = 5;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`: net/sched/sch_htb.c `htb_init` refuses any other version.
const HTB_PROTOCOL_VERSION: u32 = 3;
/// tc's default `r2q`; only used by HTB to pick a quantum when none is given.
const HTB_RATE_TO_QUANTUM: u32 = 10;
/// Packets HTB's direct queue (the traffic of no shape rule) holds. Left out, HTB takes the
/// device's tx_queue_len and at least 2 (`htb_init`), which on a device with txqueuelen 0
/// would drop unshaped traffic after two packets; 1000 is pfifo_fast's usual depth.
const DIRECT_QUEUE_PACKETS: u32 = 1000;
/// include/uapi/linux/pkt_sched.h `enum tc_link_layer`: TC_LINKLAYER_ETHERNET. Not UNAWARE,
/// which makes `htb_change_class` look for the legacy rate table this request does not send.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// net/sched/sch_api.c: PSCHED_SHIFT; HTB's buffers are in ticks of 2^6 ns
/// (`PSCHED_TICKS2NS`).
const PSCHED_SHIFT: u32 = 6;

/// The root qdisc of an interface as rtnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootQdisc {
    /// TCA_KIND: `noqueue`, `pfifo_fast`, `mq`, `fq_codel`, `htb`, ...
    pub kind: String,
    /// tcm_handle: 0 for the default qdisc the kernel attached itself (net/sched/sch_generic.c
    /// `attach_default_qdiscs` creates it without a handle), `X:0` for one somebody added.
    pub handle: u32,
}

impl RootQdisc {
    /// Whether this is shaper's own HTB root (left by this daemon or an earlier one).
    pub fn is_shapers(&self) -> bool {
        self.kind == "htb" && self.handle == ROOT_HANDLE
    }

    /// Whether the kernel attached it by default: deleting whatever root replaced it brings an
    /// equivalent one back (`qdisc_graft` with no new qdisc ends in `dev_activate`, which calls
    /// `attach_default_qdiscs` when the root is the noop qdisc, net/sched/sch_generic.c).
    pub fn is_default(&self) -> bool {
        self.handle == 0
    }
}

impl std::fmt::Display for RootQdisc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:x}:", self.kind, self.handle >> 16)
    }
}

/// A shape rule's class as shaper sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassSpec {
    pub rule: u16,
    pub rate_bps: u64,
    pub burst_bytes: u64,
    pub queue_bytes: u64,
}

/// What one of shaper's classes reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Packets and bytes the class sent (each waited in the class's queue first).
    pub packets: u64,
    pub bytes: u64,
    /// What waits in its queue now.
    pub backlog_packets: u64,
    pub backlog_bytes: u64,
    /// Packets its queue dropped: had no room for (`cl->drops`, counted in `htb_enqueue`), or,
    /// read from the queue itself ([`Leaf::drops`]), dropped by CoDel.
    pub drops: u64,
    /// Packets its fq_codel queue marked CE instead of dropping them.
    pub marks: u64,
}

/// A class of shaper's root found on an interface: its rule id and statistics (its queue is
/// read with [`leaves`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub rule: u16,
    pub stats: ClassStats,
}

/// The root qdisc of `ifindex` (RTM_GETQDISC for parent TC_H_ROOT), `None` when the kernel
/// reports none: a device that is down has the builtin noop qdisc, which rtnetlink does not
/// show (net/sched/sch_api.c `tc_qdisc_dump_ignore`) and answers with EINVAL or ENOENT.
pub fn root_qdisc(ifindex: u32) -> io::Result<Option<RootQdisc>> {
    let request = Request::tc(device_index(ifindex)?, 0, TC_H_ROOT);
    // The answer to a qdisc "get" is a notification, sent to the asker only with NLM_F_ECHO
    // (net/sched/sch_api.c `tc_get_qdisc` → `qdisc_notify` → `rtnetlink_send(..., report)`);
    // without it the kernel answers nobody and the exchange would wait forever.
    let reply = talk(
        libc::RTM_GETQDISC,
        NLM_F_REQUEST | NLM_F_ECHO,
        &request,
        |reply| match reply {
            Reply::Message {
                kind: libc::RTM_NEWQDISC,
                payload,
            } => Ok(ControlFlow::Break(parse_qdisc(payload))),
            _ => Err(invalid("unexpected reply to RTM_GETQDISC")),
        },
    );
    match reply {
        Ok(root) => Ok(Some(root?)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A qdisc's kind and handle from an RTM_NEWQDISC payload (tcmsg, then attributes).
fn parse_qdisc(payload: &[u8]) -> io::Result<RootQdisc> {
    let handle = read_u32(payload, 8).ok_or_else(|| invalid("short RTM_NEWQDISC"))?;
    let attributes = payload.get(TCMSG_LEN..).unwrap_or_default();
    let kind = walk_attributes(attributes)
        .find(|&(kind, _)| kind == libc::TCA_KIND)
        .map(|(_, value)| String::from_utf8_lossy(string_value(value)).into_owned())
        .ok_or_else(|| invalid("RTM_NEWQDISC without TCA_KIND"))?;
    Ok(RootQdisc { kind, handle })
}

/// Makes shaper's HTB the root qdisc of `ifindex`, replacing the root there (`tc qdisc replace
/// dev X root handle 5348: htb`). No default class: traffic of no shape rule goes to HTB's
/// direct queue, which sends at the device's speed (`htb_classify` returns HTB_DIRECT when the
/// default class does not exist).
pub fn install_root(ifindex: u32) -> io::Result<()> {
    let mut request = Request::tc(device_index(ifindex)?, ROOT_HANDLE, TC_H_ROOT);
    let mut glob = Vec::with_capacity(20);
    // struct tc_htb_glob: version, rate2quantum, defcls (0: none), debug, direct_pkts.
    for word in [HTB_PROTOCOL_VERSION, HTB_RATE_TO_QUANTUM, 0, 0, 0] {
        glob.extend_from_slice(&word.to_ne_bytes());
    }
    request
        .put_str(libc::TCA_KIND, "htb")
        .nested(libc::TCA_OPTIONS, |options| {
            options
                .put(TCA_HTB_INIT, &glob)
                .put(TCA_HTB_DIRECT_QLEN, &DIRECT_QUEUE_PACKETS.to_ne_bytes());
        });
    ack(libc::RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, &request)
}

/// Deletes shaper's HTB root from `ifindex` (and every class and queue under it); the kernel
/// attaches its default root again. Naming the kind and handle makes the kernel refuse rather
/// than delete a root that is not shaper's (`tc_get_qdisc`).
pub fn delete_root(ifindex: u32) -> io::Result<()> {
    let mut request = Request::tc(device_index(ifindex)?, ROOT_HANDLE, TC_H_ROOT);
    request.put_str(libc::TCA_KIND, "htb");
    ack(libc::RTM_DELQDISC, 0, &request)
}

/// struct tc_ratespec for `bytes_per_sec` (saturated to u32; the 64-bit attribute carries more).
fn ratespec(bytes_per_sec: u64) -> [u8; 12] {
    let mut spec = [0u8; 12];
    // cell_log u8, linklayer u8, overhead u16, cell_align s16, mpu u16, rate u32.
    spec[1] = TC_LINKLAYER_ETHERNET;
    let rate = u32::try_from(bytes_per_sec).unwrap_or(u32::MAX);
    spec[8..12].copy_from_slice(&rate.to_ne_bytes());
    spec
}

/// The HTB burst of `bytes` at `bytes_per_sec` in psched ticks, as tc computes `buffer`
/// (`tc_calc_xmittime`): the time the burst takes at the rate.
fn buffer_ticks(bytes: u64, bytes_per_sec: u64) -> u32 {
    let ns = u128::from(bytes) * 1_000_000_000 / u128::from(bytes_per_sec.max(1));
    u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
}

/// The RTM_NEWTCLASS options of a class at `spec`'s rate, with ceil = rate: the class never
/// borrows, so its rate is a hard limit.
fn class_options(spec: &ClassSpec) -> Request {
    let bytes_per_sec = (spec.rate_bps / 8).max(1);
    let buffer = buffer_ticks(spec.burst_bytes, bytes_per_sec);
    // A quantum only matters between classes that borrow; shaper's never do. Given explicitly
    // so HTB does not warn about the one it would derive (`htb_change_class`).
    let quantum = u32::try_from((bytes_per_sec / 10).clamp(1600, 200_000)).unwrap_or(200_000);
    let mut opt = Vec::with_capacity(44);
    opt.extend_from_slice(&ratespec(bytes_per_sec)); // rate
    opt.extend_from_slice(&ratespec(bytes_per_sec)); // ceil
    // buffer, cbuffer, quantum, level, prio.
    for word in [buffer, buffer, quantum, 0, 0] {
        opt.extend_from_slice(&word.to_ne_bytes());
    }
    let mut options = Request::default();
    options.put(TCA_HTB_PARMS, &opt);
    if bytes_per_sec > u64::from(u32::MAX) {
        options
            .put(TCA_HTB_RATE64, &bytes_per_sec.to_ne_bytes())
            .put(TCA_HTB_CEIL64, &bytes_per_sec.to_ne_bytes());
    }
    options
}

/// Creates or changes shape rule `spec.rule`'s class on `ifindex`, and its queue
/// ([`class_queue::set`]: `leaf` is the queue it has, `queue` the kind a new one gets). Returns
/// the kind of queue the class has.
pub fn set_class(
    ifindex: u32,
    spec: &ClassSpec,
    leaf: Option<Leaf>,
    queue: Kind,
) -> io::Result<Kind> {
    let index = device_index(ifindex)?;
    let classid = shape_class_id(u32::from(spec.rule));
    let mut request = Request::tc(index, classid, ROOT_HANDLE);
    let options = class_options(spec);
    request
        .put_str(libc::TCA_KIND, "htb")
        .nested(libc::TCA_OPTIONS, |nested| nested.bytes = options.bytes);
    ack(libc::RTM_NEWTCLASS, NLM_F_CREATE, &request)?;
    class_queue::set(index, classid, spec, leaf, queue)
}

/// The queues under the classes of `ifindex`, by class id ([`class_queue::leaves`]).
pub fn leaves(ifindex: u32) -> io::Result<BTreeMap<u32, Leaf>> {
    class_queue::leaves(device_index(ifindex)?)
}

/// Deletes shape rule `rule`'s class (and its queue) from `ifindex`.
pub fn delete_class(ifindex: u32, rule: u16) -> io::Result<()> {
    let request = Request::tc(
        device_index(ifindex)?,
        shape_class_id(u32::from(rule)),
        ROOT_HANDLE,
    );
    ack(libc::RTM_DELTCLASS, 0, &request)
}

/// The classes of shaper's root on `ifindex` (an RTM_GETTCLASS dump), with their statistics.
/// Empty when shaper's root is not there.
pub fn classes(ifindex: u32) -> io::Result<Vec<Class>> {
    let request = Request::tc(device_index(ifindex)?, 0, ROOT_HANDLE);
    let mut classes = Vec::new();
    let dumped = talk(
        libc::RTM_GETTCLASS,
        NLM_F_REQUEST | NLM_F_DUMP,
        &request,
        |reply| match reply {
            Reply::Message {
                kind: libc::RTM_NEWTCLASS,
                payload,
            } => {
                classes.extend(parse_class(payload));
                Ok(ControlFlow::Continue(()))
            }
            Reply::Done => Ok(ControlFlow::Break(())),
            _ => Err(invalid("unexpected reply in a class dump")),
        },
    );
    match dumped {
        Ok(()) => Ok(classes),
        // The dump of a device without that qdisc.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// One class of shaper's root from an RTM_NEWTCLASS payload: tcmsg (handle at 8), then
/// attributes with TCA_STATS2.
fn parse_class(payload: &[u8]) -> Option<Class> {
    let handle = read_u32(payload, 8)?;
    if handle >> 16 != SHAPE_HTB_MAJOR || handle & 0xFFFF == 0 {
        return None;
    }
    let mut stats = ClassStats::default();
    for (kind, value) in walk_attributes(payload.get(TCMSG_LEN..)?) {
        if kind == libc::TCA_STATS2 {
            stats = parse_stats(value);
        }
    }
    Some(Class {
        rule: u16::try_from(handle & 0xFFFF).ok()?,
        stats,
    })
}

/// TCA_STATS2's basic and queue statistics (include/uapi/linux/gen_stats.h).
fn parse_stats(nested: &[u8]) -> ClassStats {
    let mut stats = ClassStats::default();
    let mut packets64 = None;
    for (kind, value) in walk_attributes(nested) {
        match kind {
            // struct gnet_stats_basic: bytes u64, packets u32.
            TCA_STATS_BASIC => {
                if let Some(bytes) = value.get(0..8) {
                    stats.bytes = u64::from_ne_bytes(bytes.try_into().unwrap_or_default());
                }
                stats.packets = u64::from(read_u32(value, 8).unwrap_or(0));
            }
            // The whole packet count once it outgrows the u32 (`gnet_stats_copy_basic`).
            TCA_STATS_PKT64 => {
                packets64 = value
                    .get(0..8)
                    .and_then(|v| v.try_into().ok())
                    .map(u64::from_ne_bytes);
            }
            // struct gnet_stats_queue: qlen, backlog, drops, requeues, overlimits.
            TCA_STATS_QUEUE => {
                stats.backlog_packets = u64::from(read_u32(value, 0).unwrap_or(0));
                stats.backlog_bytes = u64::from(read_u32(value, 4).unwrap_or(0));
                stats.drops = u64::from(read_u32(value, 8).unwrap_or(0));
            }
            _ => {}
        }
    }
    if let Some(packets) = packets64 {
        stats.packets = packets;
    }
    stats
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_the_bursts_time_at_the_rate_in_64_ns_ticks() {
        // 125,000 bytes at 1,000,000 B/s take 125 ms = 1,953,125 ticks of 64 ns.
        assert_eq!(buffer_ticks(125_000, 1_000_000), 1_953_125);
        assert_eq!(buffer_ticks(u64::MAX, 1), u32::MAX);
    }

    #[test]
    fn rates_beyond_u32_bytes_use_the_64_bit_attributes() {
        let spec = ClassSpec {
            rule: 1,
            rate_bps: 100_000_000_000,
            burst_bytes: 1 << 20,
            queue_bytes: 1 << 20,
        };
        let options = class_options(&spec);
        let kinds: Vec<u16> = walk_attributes(&options.bytes).map(|(k, _)| k).collect();
        assert_eq!(kinds, [TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_HTB_CEIL64]);
        let slow = ClassSpec {
            rate_bps: 8_000_000,
            ..spec
        };
        let options = class_options(&slow);
        let (kind, parms) = walk_attributes(&options.bytes).next().unwrap();
        assert_eq!((kind, parms.len()), (TCA_HTB_PARMS, 44));
        assert_eq!(read_u32(parms, 8), Some(1_000_000));
        assert_eq!(read_u32(parms, 20), Some(1_000_000));
    }

    #[test]
    fn classes_of_other_qdiscs_and_the_root_itself_are_not_shapers() {
        let mut payload = Request::tc(1, 0x0001_0005, ROOT_HANDLE).bytes;
        assert_eq!(parse_class(&payload), None);
        payload[8..12].copy_from_slice(&ROOT_HANDLE.to_ne_bytes());
        assert_eq!(parse_class(&payload), None);
        payload[8..12].copy_from_slice(&shape_class_id(7).to_ne_bytes());
        assert_eq!(parse_class(&payload).map(|c| c.rule), Some(7));
    }
}
