//! RTM_GETLINK: an interface's GSO/GRO size limits, which bound the largest skb its tc hooks
//! can see.

use std::{io, ops::ControlFlow};

use super::{
    attributes::{u32_value, walk_attributes},
    constants::{IFINFOMSG_LEN, NLM_F_REQUEST},
    exchange::{Reply, talk},
    invalid,
    request::{Request, device_index},
};

// include/uapi/linux/if_link.h, the IFLA_* enum. GSO_MAX_SIZE is 41 (40 is GSO_MAX_SEGS);
// GRO_MAX_SIZE came with Linux 5.19, the IPv4 pair with 6.3 (BIG TCP for IPv4). Each is a u32
// put by net/core/rtnetlink.c `rtnl_fill_ifinfo` on every RTM_NEWLINK of a kernel that has it.
// libc's enum stops at IFLA_ALLMULTI (61), so the IPv4 pair is defined here.
const _: () = assert!(libc::IFLA_GSO_MAX_SIZE == 41 && libc::IFLA_GRO_MAX_SIZE == 58);
const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;

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
/// `ENODEV`, as is an index no device can have (0, above INT_MAX).
pub fn link_aggregate_limits(ifindex: u32) -> io::Result<AggregateLimits> {
    let request = Request::link(device_index(ifindex)?, 0, 0);
    talk(libc::RTM_GETLINK, NLM_F_REQUEST, &request, link_reply)
}

/// The answer to RTM_GETLINK: one RTM_NEWLINK (nlmsghdr, ifinfomsg, attributes).
pub(super) fn link_reply(reply: Reply<'_>) -> io::Result<ControlFlow<AggregateLimits>> {
    match reply {
        Reply::Message {
            kind: libc::RTM_NEWLINK,
            payload,
        } => {
            // NLMSG_ALIGN(sizeof(struct ifinfomsg)) is 16: the attributes follow it directly.
            let attributes = payload
                .get(IFINFOMSG_LEN..)
                .ok_or_else(|| invalid("short RTM_NEWLINK"))?;
            Ok(ControlFlow::Break(parse_link_attributes(attributes)))
        }
        Reply::Ack => Err(invalid("netlink ack where RTM_NEWLINK was expected")),
        Reply::Message { .. } | Reply::Done => Err(invalid("unexpected netlink reply")),
    }
}

/// Walks the rtattrs of an RTM_NEWLINK and picks the GSO/GRO size limits. Never panics: the walk
/// stops at an attribute whose length is impossible, and a size attribute that is not exactly a
/// u32 counts as absent.
pub(super) fn parse_link_attributes(attributes: &[u8]) -> AggregateLimits {
    let mut limits = AggregateLimits::default();
    for (kind, value) in walk_attributes(attributes) {
        let value = u32_value(value);
        match kind {
            libc::IFLA_GSO_MAX_SIZE => limits.gso_max_size = value,
            libc::IFLA_GRO_MAX_SIZE => limits.gro_max_size = value,
            IFLA_GSO_IPV4_MAX_SIZE => limits.gso_ipv4_max_size = value,
            IFLA_GRO_IPV4_MAX_SIZE => limits.gro_ipv4_max_size = value,
            _ => {}
        }
    }
    limits
}

#[cfg(test)]
mod tests {
    use libc::{
        IFLA_GRO_MAX_SIZE, IFLA_GSO_MAX_SEGS, IFLA_GSO_MAX_SIZE, IFLA_IFNAME, IFLA_MTU,
        IFLA_TSO_MAX_SIZE,
    };

    use super::*;
    use crate::datapath::netlink::test_messages::{TEST, attribute, message, u32_attribute};

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

    /// The answer to RTM_GETLINK in one datagram, as `link_aggregate_limits` reads it.
    fn parse_link_reply(datagram: &[u8]) -> io::Result<AggregateLimits> {
        match TEST.walk(datagram, &mut link_reply)? {
            ControlFlow::Break(limits) => Ok(limits),
            ControlFlow::Continue(()) => Err(invalid("no RTM_NEWLINK in the reply")),
        }
    }

    #[test]
    fn newlink_reply_is_parsed_past_the_ifinfomsg() {
        let payload = [
            vec![0u8; IFINFOMSG_LEN],
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
