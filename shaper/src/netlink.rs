//! The rtnetlink requests aya does not offer: deleting the clsact qdisc shaper added, so a
//! legacy-mode run leaves the interface as it found it, and reading an interface's GSO/GRO size
//! limits, which bound the largest skb its tc hooks can see.

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
pub(crate) fn parse_link_attributes(mut attributes: &[u8]) -> AggregateLimits {
    let mut limits = AggregateLimits::default();
    while let (Some(len), Some(kind)) = (read_u16(attributes, 0), read_u16(attributes, 2)) {
        let len = usize::from(len);
        if len < ATTRIBUTE_HEADER_LEN || len > attributes.len() {
            break;
        }
        let value = &attributes[ATTRIBUTE_HEADER_LEN..len];
        let value = <[u8; 4]>::try_from(value).ok().map(u32::from_ne_bytes);
        match kind & NLA_TYPE_MASK {
            IFLA_GSO_MAX_SIZE => limits.gso_max_size = value,
            IFLA_GRO_MAX_SIZE => limits.gro_max_size = value,
            IFLA_GSO_IPV4_MAX_SIZE => limits.gso_ipv4_max_size = value,
            IFLA_GRO_IPV4_MAX_SIZE => limits.gro_ipv4_max_size = value,
            _ => {}
        }
        // The last attribute may lack its alignment padding: nla_ok (include/net/netlink.h)
        // checks only the unpadded length against what remains.
        let next = len.next_multiple_of(ATTRIBUTE_ALIGN).min(attributes.len());
        attributes = &attributes[next..];
    }
    limits
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
}
