//! The rtnetlink requests aya does not offer: deleting the clsact qdisc shaper added, so a
//! legacy-mode run leaves the interface as it found it; listing the BPF programs attached under
//! clsact, so the daemon can tell whether its own is still there; and reading an interface's
//! GSO/GRO size limits, which bound the largest skb its tc hooks can see.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

// include/uapi/linux/pkt_sched.h: the clsact qdisc sits at parent TC_H_CLSACT with handle ffff:0.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
// include/uapi/linux/rtnetlink.h
const RTM_DELQDISC: u16 = 37;
const TCA_KIND: u16 = 1;

#[repr(C)]
struct TcMsg {
    family: u8,
    pad1: u8,
    pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    tc: TcMsg,
    kind_len: u16,
    kind_type: u16,
    // "clsact\0" padded to the 4-byte attribute alignment.
    kind: [u8; 8],
}

/// Deletes the clsact qdisc of `ifindex` (and with it every filter under it). Naming the kind
/// makes the kernel refuse (EINVAL) rather than delete a plain ingress qdisc at the same parent
/// (net/sched/sch_api.c `tc_get_qdisc`).
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: RTM_DELQDISC,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        tc: TcMsg {
            family: libc::AF_UNSPEC as u8,
            pad1: 0,
            pad2: 0,
            ifindex: ifindex as i32,
            handle: CLSACT_HANDLE,
            parent: TC_H_CLSACT,
            info: 0,
        },
        kind_len: 4 + 7,
        kind_type: TCA_KIND,
        kind: *b"clsact\0\0",
    };

    let socket = send(&request)?;

    // The ack is an NLMSG_ERROR carrying 0 or a negative errno (include/uapi/linux/netlink.h).
    let mut reply = [0u8; 1024];
    // SAFETY: recv writes at most reply.len() bytes into the buffer.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let header_len = size_of::<libc::nlmsghdr>();
    if (received as usize) < header_len + 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink reply",
        ));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected netlink reply",
        ));
    }
    let errno = i32::from_ne_bytes([
        reply[header_len],
        reply[header_len + 1],
        reply[header_len + 2],
        reply[header_len + 3],
    ]);
    match errno {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(-errno)),
    }
}

/// Opens a NETLINK_ROUTE socket and sends `request`, one complete netlink message, to the kernel.
/// `T` must be a `repr(C)` value without padding whose first field is its `nlmsghdr`. rtnetlink
/// handles a request inside sendmsg(2) (net/core/rtnetlink.c `rtnetlink_rcv`), so the reply is
/// already queued on the returned socket.
fn send<T>(request: &T) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned (and closed) by OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;

    // SAFETY: `request` is a fully initialised repr(C) value of the length passed.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            (request as *const T).cast(),
            size_of::<T>(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Receives one netlink datagram whole, however large. With MSG_TRUNC a netlink recv returns the
/// datagram's full length, not what was copied (net/netlink/af_netlink.c `netlink_recvmsg`), so a
/// peek sizes the buffer: a fixed one would silently cut a longer reply and lose the attributes at
/// its end.
fn receive(socket: &OwnedFd) -> io::Result<Vec<u8>> {
    // SAFETY: with a zero length recv writes nothing into the (dangling but unused) buffer.
    let len = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            std::ptr::NonNull::<u8>::dangling().as_ptr().cast(),
            0,
            libc::MSG_PEEK | libc::MSG_TRUNC,
        )
    };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = vec![0u8; len as usize];
    // SAFETY: recv writes at most reply.len() bytes into the buffer.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    reply.truncate(received as usize);
    Ok(reply)
}

// include/uapi/linux/if_link.h, the IFLA_* enum. GSO_MAX_SIZE is 41 (40 is GSO_MAX_SEGS);
// GRO_MAX_SIZE came with Linux 5.19, the IPv4 pair with 6.3 (BIG TCP for IPv4). Each is a u32
// put by net/core/rtnetlink.c `rtnl_fill_ifinfo` on every RTM_NEWLINK of a kernel that has it.
const IFLA_GSO_MAX_SIZE: u16 = 41;
const IFLA_GRO_MAX_SIZE: u16 = 58;
const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;
// include/uapi/linux/netlink.h: the type bits of nla_type, without NLA_F_NESTED and
// NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3FFF;
// include/uapi/linux/netlink.h NLA_HDRLEN and NLA_ALIGNTO.
const ATTRIBUTE_HEADER_LEN: usize = 4;
const ATTRIBUTE_ALIGN: usize = 4;

/// struct ifinfomsg (include/uapi/linux/rtnetlink.h). libc's has a private padding field, so it
/// cannot be built with a struct literal.
#[repr(C)]
struct IfInfoMsg {
    family: u8,
    pad: u8,
    kind: u16,
    index: i32,
    flags: u32,
    change: u32,
}

#[repr(C)]
struct LinkRequest {
    header: libc::nlmsghdr,
    info: IfInfoMsg,
}

/// The GSO/GRO size limits of one interface, in bytes, as the kernel reports them. `None` is an
/// attribute this kernel does not have (see the IFLA_* constants above for which came when).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregateLimits {
    /// Largest GSO skb the stack builds for the device (IPv6, and IPv4 before Linux 6.3).
    pub gso_max_size: Option<u32>,
    /// Largest skb GRO builds from the device's receive path (IPv6, and IPv4 before Linux 6.3).
    pub gro_max_size: Option<u32>,
    /// Largest IPv4 GSO skb (BIG TCP for IPv4, Linux 6.3).
    pub gso_ipv4_max_size: Option<u32>,
    /// Largest IPv4 GRO skb (BIG TCP for IPv4, Linux 6.3).
    pub gro_ipv4_max_size: Option<u32>,
}

impl AggregateLimits {
    /// The largest of the limits the kernel reported, `None` if it reported none.
    pub fn largest(&self) -> Option<u32> {
        [
            self.gso_max_size,
            self.gro_max_size,
            self.gso_ipv4_max_size,
            self.gro_ipv4_max_size,
        ]
        .into_iter()
        .flatten()
        .max()
    }
}

/// The largest GSO/GRO sizes the kernel reports for `ifindex` (RTM_GETLINK), in bytes.
/// Reading a link needs no privilege (net/core/rtnetlink.c registers RTM_GETLINK without a
/// CAP_NET_ADMIN check), so this works in an unprivileged process too. A missing interface is
/// `ENODEV`.
pub fn link_aggregate_limits(ifindex: u32) -> io::Result<AggregateLimits> {
    let request = LinkRequest {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<LinkRequest>() as u32,
            nlmsg_type: libc::RTM_GETLINK,
            nlmsg_flags: libc::NLM_F_REQUEST as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        info: IfInfoMsg {
            family: libc::AF_UNSPEC as u8,
            pad: 0,
            kind: 0,
            index: ifindex as i32,
            flags: 0,
            change: 0,
        },
    };
    let socket = send(&request)?;
    parse_link_reply(&receive(&socket)?)
}

/// Parses the reply to RTM_GETLINK: one RTM_NEWLINK (nlmsghdr, ifinfomsg, attributes) or an
/// NLMSG_ERROR carrying a negative errno (include/uapi/linux/netlink.h `struct nlmsgerr`).
fn parse_link_reply(reply: &[u8]) -> io::Result<AggregateLimits> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let header_len = size_of::<libc::nlmsghdr>();
    let (Some(len), Some(kind)) = (read_u32(reply, 0), read_u16(reply, 4)) else {
        return Err(invalid("short netlink reply"));
    };
    let message = usize::try_from(len)
        .ok()
        .filter(|&len| len >= header_len)
        .and_then(|len| reply.get(..len))
        .ok_or_else(|| invalid("netlink reply with a bad length"))?;
    let payload = &message[header_len..];
    if kind == libc::NLMSG_ERROR as u16 {
        return match read_u32(payload, 0).map(|errno| errno as i32) {
            Some(0) => Err(invalid("netlink ack where RTM_NEWLINK was expected")),
            Some(errno) => Err(io::Error::from_raw_os_error(errno.wrapping_neg())),
            None => Err(invalid("short netlink error")),
        };
    }
    if kind != libc::RTM_NEWLINK {
        return Err(invalid("unexpected netlink reply"));
    }
    // NLMSG_ALIGN(sizeof(struct ifinfomsg)) is 16: the attributes follow it directly.
    let attributes = payload
        .get(size_of::<IfInfoMsg>()..)
        .ok_or_else(|| invalid("short RTM_NEWLINK"))?;
    Ok(parse_link_attributes(attributes))
}

/// Walks the rtattrs of an RTM_NEWLINK and picks the GSO/GRO size limits. Never panics: the walk
/// stops at an attribute whose length is impossible, and a size attribute that is not exactly a
/// u32 counts as absent.
pub(crate) fn parse_link_attributes(attributes: &[u8]) -> AggregateLimits {
    let mut limits = AggregateLimits::default();
    for (kind, value) in walk_attributes(attributes) {
        let value = u32_value(value);
        match kind {
            IFLA_GSO_MAX_SIZE => limits.gso_max_size = value,
            IFLA_GRO_MAX_SIZE => limits.gro_max_size = value,
            IFLA_GSO_IPV4_MAX_SIZE => limits.gso_ipv4_max_size = value,
            IFLA_GRO_IPV4_MAX_SIZE => limits.gro_ipv4_max_size = value,
            _ => {}
        }
    }
    limits
}

/// The attributes (struct nlattr, which rtattr shares) packed in `bytes`, as their type without
/// the flag bits and their value. Never panics: the walk ends at the first attribute whose length
/// is impossible, as nla_ok (include/net/netlink.h) would.
fn walk_attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let (len, kind) = (usize::from(read_u16(bytes, 0)?), read_u16(bytes, 2)?);
        if len < ATTRIBUTE_HEADER_LEN || len > bytes.len() {
            bytes = &[];
            return None;
        }
        let value = &bytes[ATTRIBUTE_HEADER_LEN..len];
        // The last attribute may lack its alignment padding: nla_ok checks only the unpadded
        // length against what remains.
        let next = len.next_multiple_of(ATTRIBUTE_ALIGN).min(bytes.len());
        bytes = &bytes[next..];
        Some((kind & NLA_TYPE_MASK, value))
    })
}

/// An attribute value that is exactly a u32 (nla_put_u32), `None` for any other length.
fn u32_value(value: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(value).ok().map(u32::from_ne_bytes)
}

// include/uapi/linux/pkt_sched.h: clsact's two hooks are the minor numbers of its parent handle,
// as `tc filter add dev X ingress|egress` spells them (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_*)).
const TC_H_MIN_INGRESS: u32 = 0xFFF2;
const TC_H_MIN_EGRESS: u32 = 0xFFF3;
const TC_H_MAJ_MASK: u32 = 0xFFFF_0000;
// include/uapi/linux/rtnetlink.h: the tcm_ifindex of a filter in a shared block, whose tcm_parent
// then holds the block's index (tcm_block_index).
const TCM_IFINDEX_MAGIC_BLOCK: u32 = 0xFFFF_FFFF;
// include/uapi/linux/rtnetlink.h, the TCA_* enum.
const TCA_OPTIONS: u16 = 2;
// include/uapi/linux/pkt_cls.h, the TCA_BPF_* enum: the id of an eBPF (not classic BPF) program,
// put by net/sched/cls_bpf.c `cls_bpf_dump_ebpf_info` inside TCA_OPTIONS. Not to be confused
// with TCA_CHAIN, also 11, which every filter message has at the top level.
const TCA_BPF_ID: u16 = 11;
// include/uapi/linux/netlink.h NLMSG_ALIGNTO.
const MESSAGE_ALIGN: usize = 4;

#[repr(C)]
struct FilterDumpRequest {
    header: libc::nlmsghdr,
    tc: TcMsg,
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
    let hook = if ingress {
        TC_H_MIN_INGRESS
    } else {
        TC_H_MIN_EGRESS
    };
    let parent = (TC_H_CLSACT & TC_H_MAJ_MASK) | hook;
    // net/core/dev.c `dev_index_reserve` hands out indexes in 1..=INT_MAX. Outside it a request
    // would mislead: tcm_ifindex -1 is TCM_IFINDEX_MAGIC_BLOCK, and RTM_GETLINK takes index 0
    // as "look up by name" and answers EINVAL.
    let ifindex = i32::try_from(ifindex)
        .ok()
        .filter(|&index| index > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
    let request = FilterDumpRequest {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<FilterDumpRequest>() as u32,
            nlmsg_type: libc::RTM_GETTFILTER,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        tc: TcMsg {
            family: libc::AF_UNSPEC as u8,
            pad1: 0,
            pad2: 0,
            ifindex,
            handle: 0,
            parent,
            // Every priority and protocol: `tcf_chain_dump` filters on a half of tcm_info only
            // when it is non-zero.
            info: 0,
        },
    };
    let socket = send(&request)?;
    let mut ids = Vec::new();
    // A dump arrives as several datagrams: the kernel fills the next one each time the reader
    // drains the socket (net/netlink/af_netlink.c `netlink_recvmsg` calls `netlink_dump`).
    while parse_filter_dump(&receive(&socket)?, parent, &mut ids)? == Dump::More {}
    if ids.is_empty() {
        // tc_dump_tfilter ends the dump quietly, not with ENODEV, when `__dev_get_by_index`
        // finds no device. RTM_GETLINK says ENODEV; its answer is otherwise not needed.
        link_aggregate_limits(ifindex as u32)?;
    }
    Ok(ids)
}

/// Whether a filter dump goes on after the datagram just parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dump {
    More,
    Done,
}

/// Parses one datagram of the reply to an RTM_GETTFILTER dump of `parent` and appends to `ids`
/// the program id of each bpf filter in it. A datagram holds RTM_NEWTFILTER messages (nlmsghdr,
/// tcmsg, attributes), the last one NLMSG_DONE; a request refused before any dumping comes back
/// as NLMSG_ERROR instead. Never panics: a malformed datagram is `InvalidData`.
fn parse_filter_dump(mut datagram: &[u8], parent: u32, ids: &mut Vec<u32>) -> io::Result<Dump> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let header_len = size_of::<libc::nlmsghdr>();
    if datagram.is_empty() {
        // Every datagram of a dump holds a message; waiting for NLMSG_DONE after an empty one
        // could wait forever.
        return Err(invalid("empty netlink datagram"));
    }
    while !datagram.is_empty() {
        let (Some(len), Some(kind)) = (read_u32(datagram, 0), read_u16(datagram, 4)) else {
            return Err(invalid("short netlink message"));
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len >= header_len && len <= datagram.len())
            .ok_or_else(|| invalid("netlink message with a bad length"))?;
        let payload = &datagram[header_len..len];
        match kind {
            libc::RTM_NEWTFILTER => ids.extend(bpf_program_id(payload, parent)),
            kind if kind == libc::NLMSG_DONE as u16 => {
                // net/netlink/af_netlink.c `netlink_dump_done` puts the dump callback's return
                // value here: negative if tc_dump_tfilter failed, e.g. EMSGSIZE for a filter
                // too big for any datagram.
                return match read_u32(payload, 0).map(|errno| errno as i32) {
                    Some(errno) if errno < 0 => {
                        Err(io::Error::from_raw_os_error(errno.wrapping_neg()))
                    }
                    _ => Ok(Dump::Done),
                };
            }
            kind if kind == libc::NLMSG_ERROR as u16 => {
                return match read_u32(payload, 0).map(|errno| errno as i32) {
                    Some(0) => Err(invalid("netlink ack where a filter dump was expected")),
                    Some(errno) => Err(io::Error::from_raw_os_error(errno.wrapping_neg())),
                    None => Err(invalid("short netlink error")),
                };
            }
            kind if kind == libc::NLMSG_NOOP as u16 => {}
            _ => return Err(invalid("unexpected netlink message in a filter dump")),
        }
        let next = len.next_multiple_of(MESSAGE_ALIGN).min(datagram.len());
        datagram = &datagram[next..];
    }
    Ok(Dump::More)
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
    let attributes = payload.get(size_of::<TcMsg>()..)?;
    let mut is_bpf = false;
    let mut id = None;
    for (kind, value) in walk_attributes(attributes) {
        match kind {
            // nla_put_string puts the name with its NUL.
            TCA_KIND => is_bpf = value.strip_suffix(b"\0").unwrap_or(value) == b"bpf",
            TCA_OPTIONS => {
                id = walk_attributes(value)
                    .find(|&(kind, _)| kind == TCA_BPF_ID)
                    .and_then(|(_, value)| u32_value(value));
            }
            _ => {}
        }
    }
    id.filter(|_| is_bpf)
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let bytes = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let bytes = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rtattr as the kernel lays it out: header, value, padding to 4 bytes.
    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = (ATTRIBUTE_HEADER_LEN + value.len()) as u16;
        let mut bytes = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        bytes.extend_from_slice(value);
        bytes.resize(bytes.len().next_multiple_of(ATTRIBUTE_ALIGN), 0);
        bytes
    }

    fn u32_attribute(kind: u16, value: u32) -> Vec<u8> {
        attribute(kind, &value.to_ne_bytes())
    }

    const IFLA_IFNAME: u16 = 3;
    const IFLA_MTU: u16 = 4;
    const IFLA_GSO_MAX_SEGS: u16 = 40;
    const IFLA_TSO_MAX_SIZE: u16 = 59;

    #[test]
    fn all_four_limits_are_read_among_other_attributes() {
        let bytes = [
            attribute(IFLA_IFNAME, b"eth0\0"),
            u32_attribute(IFLA_MTU, 1500),
            u32_attribute(IFLA_GSO_MAX_SEGS, 65535),
            u32_attribute(IFLA_GSO_MAX_SIZE, 65536),
            u32_attribute(IFLA_GRO_MAX_SIZE, 185_000),
            u32_attribute(IFLA_TSO_MAX_SIZE, 524_280),
            u32_attribute(IFLA_GSO_IPV4_MAX_SIZE, 131_072),
            u32_attribute(IFLA_GRO_IPV4_MAX_SIZE, 65536),
        ]
        .concat();
        let limits = parse_link_attributes(&bytes);
        assert_eq!(
            limits,
            AggregateLimits {
                gso_max_size: Some(65536),
                gro_max_size: Some(185_000),
                gso_ipv4_max_size: Some(131_072),
                gro_ipv4_max_size: Some(65536),
            }
        );
        assert_eq!(limits.largest(), Some(185_000));
    }

    #[test]
    fn attributes_an_older_kernel_lacks_are_none() {
        // Linux 5.15: GSO_MAX_SIZE only.
        let bytes = [
            u32_attribute(IFLA_MTU, 1500),
            u32_attribute(IFLA_GSO_MAX_SIZE, 65536),
        ]
        .concat();
        let limits = parse_link_attributes(&bytes);
        assert_eq!(
            limits,
            AggregateLimits {
                gso_max_size: Some(65536),
                ..AggregateLimits::default()
            }
        );
        assert_eq!(limits.largest(), Some(65536));
        assert_eq!(parse_link_attributes(&[]).largest(), None);
    }

    #[test]
    fn type_flag_bits_are_ignored() {
        let bytes = u32_attribute(IFLA_GRO_MAX_SIZE | 0x8000, 65536);
        assert_eq!(parse_link_attributes(&bytes).gro_max_size, Some(65536));
    }

    #[test]
    fn size_attribute_of_the_wrong_length_counts_as_absent() {
        let bytes = [
            attribute(IFLA_GSO_MAX_SIZE, &[0, 0]),
            attribute(IFLA_GRO_MAX_SIZE, &[0; 8]),
            u32_attribute(IFLA_GSO_IPV4_MAX_SIZE, 65536),
        ]
        .concat();
        assert_eq!(
            parse_link_attributes(&bytes),
            AggregateLimits {
                gso_ipv4_max_size: Some(65536),
                ..AggregateLimits::default()
            }
        );
    }

    #[test]
    fn truncated_attributes_stop_the_walk_without_panicking() {
        let whole = [
            u32_attribute(IFLA_GSO_MAX_SIZE, 65536),
            u32_attribute(IFLA_GRO_MAX_SIZE, 65536),
        ]
        .concat();
        // Every prefix: a cut header, a cut value, a missing attribute.
        for cut in 0..whole.len() {
            let limits = parse_link_attributes(&whole[..cut]);
            let first_complete = cut >= 8;
            assert_eq!(
                limits.gso_max_size.is_some(),
                first_complete,
                "cut at {cut}"
            );
            assert_eq!(limits.gro_max_size, None, "cut at {cut}");
        }
        assert_eq!(parse_link_attributes(&whole).gro_max_size, Some(65536));
    }

    #[test]
    fn impossible_attribute_lengths_stop_the_walk() {
        for len in [0u16, 1, 3, 200, u16::MAX] {
            let mut bytes = [len.to_ne_bytes(), IFLA_GSO_MAX_SIZE.to_ne_bytes()].concat();
            bytes.extend_from_slice(&65536u32.to_ne_bytes());
            bytes.extend(u32_attribute(IFLA_GRO_MAX_SIZE, 65536));
            assert_eq!(
                parse_link_attributes(&bytes),
                AggregateLimits::default(),
                "len {len}"
            );
        }
    }

    #[test]
    fn last_attribute_without_its_padding_ends_the_walk_cleanly() {
        // An attribute's length excludes its padding, which the last one may lack.
        let bytes = [
            u32_attribute(IFLA_GSO_MAX_SIZE, 65536),
            attribute(IFLA_IFNAME, b"lo\0"),
        ]
        .concat();
        let unpadded = &bytes[..bytes.len() - 1];
        assert_eq!(parse_link_attributes(unpadded).gso_max_size, Some(65536));
    }

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (size_of::<libc::nlmsghdr>() + payload.len()) as u32;
        let mut bytes = [
            &len.to_ne_bytes()[..],
            &kind.to_ne_bytes(),
            &0u16.to_ne_bytes(),
            &1u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        ]
        .concat();
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn newlink_reply_is_parsed_past_the_ifinfomsg() {
        let payload = [
            vec![0u8; size_of::<IfInfoMsg>()],
            u32_attribute(IFLA_GSO_MAX_SIZE, 65536),
        ]
        .concat();
        let reply = message(libc::RTM_NEWLINK, &payload);
        assert_eq!(parse_link_reply(&reply).unwrap().gso_max_size, Some(65536));
    }

    #[test]
    fn error_reply_is_the_kernels_errno() {
        let payload = (-libc::ENODEV).to_ne_bytes();
        let err = parse_link_reply(&message(libc::NLMSG_ERROR as u16, &payload)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = message(libc::RTM_NEWLINK, &[0u8; 16]);
        for cut in 0..good.len() {
            assert!(parse_link_reply(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = good.clone();
        lying[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_link_reply(&lying).is_err());
        assert!(parse_link_reply(&message(libc::NLMSG_ERROR as u16, &[])).is_err());
        assert!(parse_link_reply(&message(libc::NLMSG_ERROR as u16, &[0; 4])).is_err());
        assert!(parse_link_reply(&message(libc::RTM_NEWADDR, &[0; 16])).is_err());
    }

    #[test]
    fn loopback_reports_at_least_the_legacy_gso_size() {
        // Unprivileged: RTM_GETLINK needs no capability.
        // SAFETY: if_nametoindex reads a NUL-terminated string and touches nothing else.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(lo, 0, "no lo in this network namespace");
        let limits = link_aggregate_limits(lo).unwrap();
        assert!(limits.gso_max_size.is_some(), "{limits:?}");
        assert!(limits.largest().unwrap() >= 65536, "{limits:?}");
    }

    #[test]
    fn missing_interface_is_enodev() {
        // ifindex is an int; the largest one is never handed out on a test machine.
        let err = link_aggregate_limits(i32::MAX as u32).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    }

    // include/uapi/linux/rtnetlink.h and pkt_cls.h: attributes the kernel puts around the id.
    const TCA_CHAIN: u16 = 11;
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

    fn done(errno: i32) -> Vec<u8> {
        message(libc::NLMSG_DONE as u16, &errno.to_ne_bytes())
    }

    fn dump(datagram: &[u8], parent: u32) -> io::Result<(Dump, Vec<u32>)> {
        let mut ids = Vec::new();
        parse_filter_dump(datagram, parent, &mut ids).map(|dump| (dump, ids))
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
