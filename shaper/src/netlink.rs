//! The one rtnetlink request aya does not offer: deleting the clsact qdisc shaper added, so a
//! legacy-mode run leaves the interface as it found it.

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
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

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
