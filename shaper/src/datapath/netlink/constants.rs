//! The one set of netlink constants every request here uses: libc's `c_int` values narrowed to
//! the widths the messages hold, the lengths and alignments of include/uapi/linux/netlink.h, and
//! the tc handles of include/uapi/linux/pkt_sched.h. Constants of one request family (TCA_HTB_*,
//! TCA_BPF_ID, IFLA_INFO_KIND, ...) stay in that family's file.

use std::mem::size_of;

/// libc spells netlink's message types, flags and address families as `c_int`; the messages
/// hold them as u16 (or u8). Used for constants only, so a value that does not fit fails the
/// build rather than a request.
const fn u16_of(value: libc::c_int) -> u16 {
    assert!(value >= 0 && value <= u16::MAX as libc::c_int);
    value as u16
}

const fn u8_of(value: libc::c_int) -> u8 {
    assert!(value >= 0 && value <= u8::MAX as libc::c_int);
    value as u8
}

pub(super) const NLM_F_REQUEST: u16 = u16_of(libc::NLM_F_REQUEST);
pub(super) const NLM_F_ACK: u16 = u16_of(libc::NLM_F_ACK);
pub(super) const NLM_F_DUMP: u16 = u16_of(libc::NLM_F_DUMP);
pub(super) const NLM_F_ECHO: u16 = u16_of(libc::NLM_F_ECHO);
pub(super) const NLM_F_CREATE: u16 = u16_of(libc::NLM_F_CREATE);
pub(super) const NLM_F_EXCL: u16 = u16_of(libc::NLM_F_EXCL);
pub(super) const NLM_F_REPLACE: u16 = u16_of(libc::NLM_F_REPLACE);
pub(super) const NLMSG_NOOP: u16 = u16_of(libc::NLMSG_NOOP);
pub(super) const NLMSG_ERROR: u16 = u16_of(libc::NLMSG_ERROR);
pub(super) const NLMSG_DONE: u16 = u16_of(libc::NLMSG_DONE);
pub(super) const AF_NETLINK: libc::sa_family_t = u16_of(libc::AF_NETLINK);
pub(super) const AF_UNSPEC: u8 = u8_of(libc::AF_UNSPEC);
/// include/uapi/linux/if.h: IFF_UP, as ifinfomsg's ifi_flags and ifi_change hold it.
pub(super) const IFF_UP: u32 = libc::IFF_UP as u32;
const _: () = assert!(libc::IFF_UP > 0);

// include/uapi/linux/netlink.h: NLMSG_HDRLEN is NLMSG_ALIGN(sizeof(struct nlmsghdr)), 16, and
// NLMSG_ALIGNTO 4; libc keeps both private, so they are pinned to its NLMSG_ALIGN here.
pub(super) const HEADER_LEN: usize = size_of::<libc::nlmsghdr>();
pub(super) const MESSAGE_ALIGN: usize = 4;
const _: () = assert!(HEADER_LEN == 16 && libc::NLMSG_ALIGN(HEADER_LEN) == 16);
const _: () = assert!(libc::NLMSG_ALIGN(1) == 4 && libc::NLMSG_ALIGN(5) == 8);
// include/uapi/linux/netlink.h: NLA_HDRLEN (which libc lacks) is the aligned struct nlattr,
// which rtattr (include/uapi/linux/rtnetlink.h) shares; NLA_ALIGNTO is RTA_ALIGNTO.
pub(super) const ATTRIBUTE_HEADER_LEN: usize = size_of::<libc::nlattr>();
pub(super) const ATTRIBUTE_ALIGN: usize = u16_of(libc::NLA_ALIGNTO) as usize;
const _: () = assert!(ATTRIBUTE_HEADER_LEN == 4 && ATTRIBUTE_ALIGN == 4);
const _: () = assert!(size_of::<libc::rtattr>() == ATTRIBUTE_HEADER_LEN);
/// The type bits of nla_type, without NLA_F_NESTED and NLA_F_NET_BYTEORDER (libc's
/// NLA_TYPE_MASK is the same mask as a negative c_int).
pub(super) const ATTRIBUTE_TYPE_MASK: u16 = !u16_of(libc::NLA_F_NESTED | libc::NLA_F_NET_BYTEORDER);
// include/uapi/linux/netlink.h struct sockaddr_nl: family, pad, pid, groups.
pub(super) const SOCKADDR_NL_LEN: libc::socklen_t = 12;
const _: () = assert!(size_of::<libc::sockaddr_nl>() == 12);
/// Marks an attribute whose value is attributes (include/uapi/linux/netlink.h).
pub(super) const NLA_F_NESTED: u16 = u16_of(libc::NLA_F_NESTED);

/// include/uapi/linux/rtnetlink.h: struct tcmsg (family, 3 bytes of padding, ifindex, handle,
/// parent, info), which libc lacks; NLMSG_ALIGN of it is itself, so attributes follow at once.
pub(super) const TCMSG_LEN: usize = 20;
/// include/uapi/linux/rtnetlink.h: struct ifinfomsg (family, padding, type, index, flags,
/// change); libc's has a private field, so only its size is taken.
pub(super) const IFINFOMSG_LEN: usize = 16;
const _: () = assert!(size_of::<libc::ifinfomsg>() == IFINFOMSG_LEN);

// include/uapi/linux/gen_stats.h, the TCA_STATS_* enum inside a qdisc's or class's TCA_STATS2.
pub(super) const TCA_STATS_BASIC: u16 = 1;
pub(super) const TCA_STATS_QUEUE: u16 = 3;
pub(super) const TCA_STATS_APP: u16 = 4;
pub(super) const TCA_STATS_PKT64: u16 = 8;

/// include/uapi/linux/pkt_sched.h: the parent of a device's root qdisc.
pub(super) const TC_H_ROOT: u32 = 0xFFFF_FFFF;
// include/uapi/linux/pkt_sched.h: the clsact qdisc sits at parent TC_H_CLSACT with handle ffff:0.
pub(super) const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
// include/uapi/linux/pkt_sched.h: clsact's two hooks are the minor numbers of its parent handle,
// as `tc filter add dev X ingress|egress` spells them (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_*)).
pub(super) const TC_H_MIN_INGRESS: u32 = 0xFFF2;
pub(super) const TC_H_MIN_EGRESS: u32 = 0xFFF3;
pub(super) const TC_H_MAJ_MASK: u32 = 0xFFFF_0000;
// include/uapi/linux/rtnetlink.h: the tcm_ifindex of a filter in a shared block, whose tcm_parent
// then holds the block's index (tcm_block_index).
pub(super) const TCM_IFINDEX_MAGIC_BLOCK: u32 = 0xFFFF_FFFF;
