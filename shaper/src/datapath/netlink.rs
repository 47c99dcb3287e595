//! The rtnetlink requests aya does not offer: deleting the clsact qdisc shaper added, so a
//! legacy-mode run leaves the interface as it found it; listing the BPF programs attached under
//! clsact, so the daemon can tell whether its own is still there; and reading an interface's
//! GSO/GRO size limits, which bound the largest skb its tc hooks can see.
//!
//! Hand-written on libc, as aya's own netlink code is: netlink-packet-route would still need a
//! socket crate, rejects a whole message over one attribute it cannot decode (where this module
//! skips the attribute), and breaks its API every few 0.x releases; three fixed requests do not
//! pay for that.

use std::{
    io,
    mem::{align_of, size_of},
    ops::ControlFlow,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
};

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

const NLM_F_REQUEST: u16 = u16_of(libc::NLM_F_REQUEST);
const NLM_F_ACK: u16 = u16_of(libc::NLM_F_ACK);
const NLM_F_DUMP: u16 = u16_of(libc::NLM_F_DUMP);
const NLMSG_NOOP: u16 = u16_of(libc::NLMSG_NOOP);
const NLMSG_ERROR: u16 = u16_of(libc::NLMSG_ERROR);
const NLMSG_DONE: u16 = u16_of(libc::NLMSG_DONE);
const AF_NETLINK: libc::sa_family_t = u16_of(libc::AF_NETLINK);
const AF_UNSPEC: u8 = u8_of(libc::AF_UNSPEC);

// include/uapi/linux/netlink.h: NLMSG_HDRLEN is NLMSG_ALIGN(sizeof(struct nlmsghdr)), 16, and
// NLMSG_ALIGNTO 4; libc keeps both private, so they are pinned to its NLMSG_ALIGN here.
const HEADER_LEN: usize = size_of::<libc::nlmsghdr>();
const MESSAGE_ALIGN: usize = 4;
const _: () = assert!(HEADER_LEN == 16 && libc::NLMSG_ALIGN(HEADER_LEN) == 16);
const _: () = assert!(libc::NLMSG_ALIGN(1) == 4 && libc::NLMSG_ALIGN(5) == 8);
// include/uapi/linux/netlink.h: NLA_HDRLEN (which libc lacks) is the aligned struct nlattr,
// which rtattr (include/uapi/linux/rtnetlink.h) shares; NLA_ALIGNTO is RTA_ALIGNTO.
const ATTRIBUTE_HEADER_LEN: usize = size_of::<libc::nlattr>();
const ATTRIBUTE_ALIGN: usize = u16_of(libc::NLA_ALIGNTO) as usize;
const _: () = assert!(ATTRIBUTE_HEADER_LEN == 4 && ATTRIBUTE_ALIGN == 4);
const _: () = assert!(size_of::<libc::rtattr>() == ATTRIBUTE_HEADER_LEN);
/// The type bits of nla_type, without NLA_F_NESTED and NLA_F_NET_BYTEORDER (libc's
/// NLA_TYPE_MASK is the same mask as a negative c_int).
const ATTRIBUTE_TYPE_MASK: u16 = !u16_of(libc::NLA_F_NESTED | libc::NLA_F_NET_BYTEORDER);
// include/uapi/linux/netlink.h struct sockaddr_nl: family, pad, pid, groups.
const SOCKADDR_NL_LEN: libc::socklen_t = 12;
const _: () = assert!(size_of::<libc::sockaddr_nl>() == 12);

// include/uapi/linux/pkt_sched.h: the clsact qdisc sits at parent TC_H_CLSACT with handle ffff:0.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;

pub(crate) fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// `ifindex` as the kernel's int. net/core/dev.c `dev_index_reserve` hands out indexes in
/// 1..=INT_MAX. Outside it no device exists and a request would mislead (tcm_ifindex -1 is
/// TCM_IFINDEX_MAGIC_BLOCK, and RTM_GETLINK takes index 0 as "look up by name" and answers
/// EINVAL), so such an index is ENODEV without asking, as it is for a free one.
pub(crate) fn device_index(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex)
        .ok()
        .filter(|&index| index > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
}

/// A request as sent: its header, then a fixed body (include/uapi/linux/netlink.h: the payload
/// starts at NLMSG_HDRLEN).
#[repr(C)]
struct Request<B> {
    header: libc::nlmsghdr,
    body: B,
}

/// The fixed part of a request after its nlmsghdr.
///
/// # Safety
/// An implementor is `#[repr(C)]` without padding (its size is asserted to be the sum of its
/// fields'), so every byte of a value is initialised and may be sent as it is.
unsafe trait Body: Sized {}

impl<B: Body> Request<B> {
    /// nlmsg_len: the whole request. Evaluated at build time for each body, which also checks
    /// that no padding sits between the header and the body.
    const LEN: u32 = {
        assert!(align_of::<B>() <= MESSAGE_ALIGN && size_of::<B>().is_multiple_of(MESSAGE_ALIGN));
        assert!(size_of::<Self>() == HEADER_LEN + size_of::<B>());
        assert!(size_of::<Self>() <= u32::MAX as usize);
        size_of::<Self>() as u32
    };
}

/// struct tcmsg (include/uapi/linux/rtnetlink.h), which libc lacks.
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

// 1 + 1 + 2 + 4 * 4 bytes of fields: no padding.
const _: () = assert!(size_of::<TcMsg>() == 20);
// SAFETY: repr(C), and its size is the sum of its fields' (asserted above).
unsafe impl Body for TcMsg {}

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

// 1 + 1 + 2 + 4 * 3 bytes of fields: no padding.
const _: () = assert!(size_of::<IfInfoMsg>() == 16);
// SAFETY: repr(C), and its size is the sum of its fields' (asserted above).
unsafe impl Body for IfInfoMsg {}

/// The body of RTM_DELQDISC for clsact: the tcmsg, then the TCA_KIND attribute.
#[repr(C)]
struct DeleteQdisc {
    tc: TcMsg,
    kind_header: libc::rtattr,
    kind: [u8; 8],
}

// 20 (tcmsg) + 4 (rtattr) + 8 ("clsact\0" padded to RTA_ALIGNTO): no padding.
const _: () = assert!(size_of::<DeleteQdisc>() == 32);
// SAFETY: repr(C), and its size is the sum of its fields' (asserted above).
unsafe impl Body for DeleteQdisc {}

/// The TCA_KIND value, NUL included as nla_put_string puts it, padded to the attribute alignment.
const CLSACT_KIND: [u8; 8] = *b"clsact\0\0";
/// rta_len counts the header and the value, not the padding.
const CLSACT_KIND_LEN: u16 = 4 + 7;
const _: () = assert!(CLSACT_KIND_LEN as usize == ATTRIBUTE_HEADER_LEN + b"clsact\0".len());

// nlmsghdr (16, include/uapi/linux/netlink.h) followed by each body.
const _: () = assert!(size_of::<Request<DeleteQdisc>>() == 48);
const _: () = assert!(size_of::<Request<IfInfoMsg>>() == 32);
const _: () = assert!(size_of::<Request<TcMsg>>() == 36);

/// Deletes the clsact qdisc of `ifindex` (and with it every filter under it). Naming the kind
/// makes the kernel refuse (EINVAL) rather than delete a plain ingress qdisc at the same parent
/// (net/sched/sch_api.c `tc_get_qdisc`). An index no device can have is ENODEV, as the kernel
/// answers for a missing one.
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let body = DeleteQdisc {
        tc: TcMsg {
            family: AF_UNSPEC,
            pad1: 0,
            pad2: 0,
            ifindex: device_index(ifindex)?,
            handle: CLSACT_HANDLE,
            parent: TC_H_CLSACT,
            info: 0,
        },
        kind_header: libc::rtattr {
            rta_len: CLSACT_KIND_LEN,
            rta_type: libc::TCA_KIND,
        },
        kind: CLSACT_KIND,
    };
    talk(
        libc::RTM_DELQDISC,
        NLM_F_REQUEST | NLM_F_ACK,
        body,
        acknowledged,
    )
}

/// The answer to a request sent with NLM_F_ACK and nothing else: the ack.
pub(crate) fn acknowledged(reply: Reply<'_>) -> io::Result<ControlFlow<()>> {
    match reply {
        Reply::Ack => Ok(ControlFlow::Break(())),
        Reply::Message { .. } | Reply::Done => Err(invalid("unexpected netlink reply")),
    }
}

/// One message of the kernel's reply, as a request's handler sees it. NLMSG_NOOP never reaches
/// it; an NLMSG_ERROR with an errno or an NLMSG_DONE with one is the request's error instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    /// Any other message: its type and what follows its header.
    Message { kind: u16, payload: &'a [u8] },
    /// NLMSG_ERROR with error 0 (include/uapi/linux/netlink.h `struct nlmsgerr`).
    Ack,
    /// NLMSG_DONE, the end of a dump.
    Done,
}

/// Where the replies to one request go: the kernel answers with the request's sequence number,
/// addressed to the port that sent it (net/netlink/af_netlink.c `netlink_ack`,
/// `netlink_dump`). Another message on the socket is not an answer and is skipped.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    seq: u32,
    port: u32,
}

/// The sequence number of the next request. Each request has a socket of its own, so this only
/// makes a stray message stand out.
static NEXT_SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// Sends one request (`kind`, `flags`, then `body`) to rtnetlink and feeds every message of its
/// reply to `handle` until `handle` breaks with the answer: the one path every request here
/// takes. The reply may span datagrams (a dump arrives as several: the kernel fills the next
/// each time the reader drains the socket, net/netlink/af_netlink.c `netlink_recvmsg` calls
/// `netlink_dump`). A kernel errno is the error, with the kernel's code; a malformed reply is
/// `InvalidData`.
fn talk<B: Body, T>(
    kind: u16,
    flags: u16,
    body: B,
    mut handle: impl FnMut(Reply<'_>) -> io::Result<ControlFlow<T>>,
) -> io::Result<T> {
    let socket = Socket::open()?;
    let seq = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: Request::<B>::LEN,
            nlmsg_type: kind,
            nlmsg_flags: flags,
            nlmsg_seq: seq,
            nlmsg_pid: 0,
        },
        body,
    };
    socket.send(&request)?;
    let exchange = Exchange {
        seq,
        port: socket.port,
    };
    loop {
        // rtnetlink handles a request inside sendmsg(2) (net/core/rtnetlink.c `rtnetlink_rcv`),
        // so the first datagram of the reply is already queued.
        let Some(datagram) = socket.receive()? else {
            continue;
        };
        if let ControlFlow::Break(answer) = exchange.walk(&datagram, &mut handle)? {
            return Ok(answer);
        }
    }
}

/// [`talk`] for a request whose body is only known at run time (a tcmsg followed by attributes
/// built by the caller, as the qdisc and class requests of `htb` are): the same exchange, the
/// same reply handling. `body` is what follows the nlmsghdr.
pub(crate) fn talk_bytes<T>(
    kind: u16,
    flags: u16,
    body: &[u8],
    mut handle: impl FnMut(Reply<'_>) -> io::Result<ControlFlow<T>>,
) -> io::Result<T> {
    let socket = Socket::open()?;
    let seq = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let len =
        u32::try_from(HEADER_LEN + body.len()).map_err(|_| invalid("netlink request too long"))?;
    let mut request = Vec::with_capacity(HEADER_LEN + body.len());
    // struct nlmsghdr: len, type, flags, seq, pid (0: the kernel fills in the sender's port).
    request.extend_from_slice(&len.to_ne_bytes());
    request.extend_from_slice(&kind.to_ne_bytes());
    request.extend_from_slice(&flags.to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(body);
    socket.send_bytes(&request)?;
    let exchange = Exchange {
        seq,
        port: socket.port,
    };
    loop {
        let Some(datagram) = socket.receive()? else {
            continue;
        };
        if let ControlFlow::Break(answer) = exchange.walk(&datagram, &mut handle)? {
            return Ok(answer);
        }
    }
}

impl Exchange {
    /// Feeds the messages of one datagram that answer this exchange to `handle`, until it
    /// breaks; `Continue` when the reply goes on in the next datagram. Handles NLMSG_NOOP,
    /// NLMSG_ERROR and NLMSG_DONE for every request. Never panics: a malformed datagram is
    /// `InvalidData`.
    fn walk<T>(
        self,
        datagram: &[u8],
        handle: &mut impl FnMut(Reply<'_>) -> io::Result<ControlFlow<T>>,
    ) -> io::Result<ControlFlow<T>> {
        if datagram.is_empty() {
            // Every datagram of a reply holds a message; waiting for the rest of a reply after
            // an empty one could wait forever.
            return Err(invalid("empty netlink datagram"));
        }
        for message in messages(datagram) {
            let message = message?;
            if message.seq != self.seq || message.port != self.port {
                continue;
            }
            let reply = match message.kind {
                NLMSG_NOOP => continue,
                NLMSG_ERROR => match read_i32(message.payload, 0) {
                    Some(0) => Reply::Ack,
                    Some(errno) => return Err(kernel_error(errno)),
                    None => return Err(invalid("short netlink error")),
                },
                // net/netlink/af_netlink.c `netlink_dump_done` puts the dump callback's return
                // value here: negative if the dump failed, e.g. EMSGSIZE for an entry too big
                // for any datagram. One without its int is taken as the end.
                NLMSG_DONE => match read_i32(message.payload, 0) {
                    Some(errno) if errno < 0 => return Err(kernel_error(errno)),
                    _ => Reply::Done,
                },
                kind => Reply::Message {
                    kind,
                    payload: message.payload,
                },
            };
            if let ControlFlow::Break(answer) = handle(reply)? {
                return Ok(ControlFlow::Break(answer));
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// The error a netlink errno (negative, include/uapi/linux/netlink.h `struct nlmsgerr`) stands
/// for; any other value is a malformed reply.
fn kernel_error(errno: i32) -> io::Error {
    match errno.checked_neg() {
        Some(code) if code > 0 => io::Error::from_raw_os_error(code),
        _ => invalid("netlink error without a negative errno"),
    }
}

/// One message of a datagram: its header's fields and what follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message<'a> {
    kind: u16,
    seq: u32,
    port: u32,
    payload: &'a [u8],
}

/// The messages packed in `datagram`, each checked as NLMSG_OK (include/uapi/linux/netlink.h)
/// would: a whole header, an nlmsg_len of at least the header and within what remains. The
/// first one that fails is an `InvalidData` error and ends the walk. Never panics.
fn messages(mut datagram: &[u8]) -> impl Iterator<Item = io::Result<Message<'_>>> {
    std::iter::from_fn(move || {
        if datagram.is_empty() {
            return None;
        }
        let message = next_message(datagram);
        datagram = match message {
            // NLMSG_ALIGN: the next message starts at the aligned length; the last one may lack
            // its padding.
            Ok((_, len)) => datagram
                .get(len.next_multiple_of(MESSAGE_ALIGN)..)
                .unwrap_or_default(),
            Err(_) => &[],
        };
        Some(message.map(|(message, _)| message))
    })
}

/// The first message of `datagram` and its length.
fn next_message(datagram: &[u8]) -> io::Result<(Message<'_>, usize)> {
    // struct nlmsghdr: len at 0, type at 4, flags at 6, seq at 8, pid at 12.
    let (Some(len), Some(kind), Some(seq), Some(port)) = (
        read_u32(datagram, 0),
        read_u16(datagram, 4),
        read_u32(datagram, 8),
        read_u32(datagram, 12),
    ) else {
        return Err(invalid("short netlink message"));
    };
    let bad_length = || invalid("netlink message with a bad length");
    let len = usize::try_from(len).map_err(|_| bad_length())?;
    let payload = datagram.get(HEADER_LEN..len).ok_or_else(bad_length)?;
    let message = Message {
        kind,
        seq,
        port,
        payload,
    };
    Ok((message, len))
}

/// A NETLINK_ROUTE socket for one exchange, and the port id the kernel bound it to.
struct Socket {
    fd: OwnedFd,
    port: u32,
}

/// A sockaddr_nl for `port` (0 is the kernel).
fn netlink_address(port: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is integers only (and libc's private padding), for which all-zero
    // bytes are a valid value.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = AF_NETLINK;
    address.nl_pid = port;
    address
}

/// Runs a syscall that returns a length or -1 with errno, again if a signal interrupted it.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        if let Ok(len) = usize::try_from(call()) {
            return Ok(len);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers.
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
        // SAFETY: `fd` was just opened and nothing else owns it; OwnedFd closes it once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // rtnetlink answers inside sendmsg(2), so a reply that has not come within this long
        // never will (a request the kernel answers nobody, say): an error, not a hang.
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a timeval of the length passed, read during the call only.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        // Port 0 asks the kernel for a free one (net/netlink/af_netlink.c `netlink_bind` calls
        // `netlink_autobind`); getsockname says which, for telling our replies apart.
        let mut address = netlink_address(0);
        // SAFETY: `address` is a sockaddr_nl of the length passed, read during the call only.
        let bound =
            unsafe { libc::bind(fd.as_raw_fd(), (&raw const address).cast(), SOCKADDR_NL_LEN) };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut len = SOCKADDR_NL_LEN;
        // SAFETY: getsockname writes at most `len` bytes into `address`, which has that many,
        // and stores the address's real length in `len`; both outlive the call.
        let named =
            unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut address).cast(), &raw mut len) };
        if named < 0 {
            return Err(io::Error::last_os_error());
        }
        if len != SOCKADDR_NL_LEN || address.nl_family != AF_NETLINK {
            return Err(invalid("netlink socket with a foreign address"));
        }
        Ok(Self {
            fd,
            port: address.nl_pid,
        })
    }

    fn send<B: Body>(&self, request: &Request<B>) -> io::Result<()> {
        let kernel = netlink_address(0);
        let len = size_of::<Request<B>>();
        let sent = retry(|| {
            // SAFETY: `request` is a header and a `Body` with no padding between or inside them
            // (Body's contract and `Request::LEN`'s assertions), so all `len` bytes are
            // initialised; `kernel` is a sockaddr_nl of the length passed. sendto reads both
            // during the call only.
            unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    (&raw const *request).cast(),
                    len,
                    0,
                    (&raw const kernel).cast(),
                    SOCKADDR_NL_LEN,
                )
            }
        })?;
        // A netlink datagram is sent whole or not at all.
        if sent != len {
            return Err(invalid("netlink request sent in part"));
        }
        Ok(())
    }

    /// Sends a request already laid out as bytes (header and body).
    fn send_bytes(&self, request: &[u8]) -> io::Result<()> {
        let kernel = netlink_address(0);
        let sent = retry(|| {
            // SAFETY: `request` is an initialised byte slice of the length passed; `kernel` is a
            // sockaddr_nl of the length passed. sendto reads both during the call only.
            unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                    (&raw const kernel).cast(),
                    SOCKADDR_NL_LEN,
                )
            }
        })?;
        if sent != request.len() {
            return Err(invalid("netlink request sent in part"));
        }
        Ok(())
    }

    /// Receives one datagram whole, however large; `None` for one the kernel did not send
    /// (another process may write to our port), which is no part of the reply. With MSG_TRUNC
    /// a netlink recv returns the datagram's full length, not what was copied
    /// (net/netlink/af_netlink.c `netlink_recvmsg`), so a peek sizes the buffer: a fixed one
    /// would cut a longer reply and lose the messages at its end.
    fn receive(&self) -> io::Result<Option<Vec<u8>>> {
        let fd = self.fd.as_raw_fd();
        let len = retry(|| {
            // SAFETY: with a zero length recv writes nothing into the (dangling but unused)
            // buffer.
            unsafe {
                libc::recv(
                    fd,
                    std::ptr::NonNull::<u8>::dangling().as_ptr().cast(),
                    0,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            }
        })?;
        let mut datagram = vec![0u8; len];
        let mut sender = netlink_address(0);
        let mut sender_len = SOCKADDR_NL_LEN;
        let received = retry(|| {
            // SAFETY: recvfrom writes at most `datagram.len()` bytes into `datagram` and at
            // most `sender_len` bytes into `sender`, which has that many, then stores the
            // sender's real length in `sender_len`; all outlive the call.
            unsafe {
                libc::recvfrom(
                    fd,
                    datagram.as_mut_ptr().cast(),
                    datagram.len(),
                    libc::MSG_TRUNC,
                    (&raw mut sender).cast(),
                    &raw mut sender_len,
                )
            }
        })?;
        // Only this thread reads the socket, so the datagram is the one peeked; whatever did not
        // fit would be lost.
        if received > datagram.len() {
            return Err(invalid("truncated netlink reply"));
        }
        datagram.truncate(received);
        if sender_len != SOCKADDR_NL_LEN || sender.nl_pid != 0 {
            return Ok(None);
        }
        Ok(Some(datagram))
    }
}

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
    let body = IfInfoMsg {
        family: AF_UNSPEC,
        pad: 0,
        kind: 0,
        index: device_index(ifindex)?,
        flags: 0,
        change: 0,
    };
    talk(libc::RTM_GETLINK, NLM_F_REQUEST, body, link_reply)
}

/// The answer to RTM_GETLINK: one RTM_NEWLINK (nlmsghdr, ifinfomsg, attributes).
fn link_reply(reply: Reply<'_>) -> io::Result<ControlFlow<AggregateLimits>> {
    match reply {
        Reply::Message {
            kind: libc::RTM_NEWLINK,
            payload,
        } => {
            // NLMSG_ALIGN(sizeof(struct ifinfomsg)) is 16: the attributes follow it directly.
            let attributes = payload
                .get(size_of::<IfInfoMsg>()..)
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
pub(crate) fn parse_link_attributes(attributes: &[u8]) -> AggregateLimits {
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

/// The attributes (struct nlattr, which rtattr shares) packed in `bytes`, as their type without
/// the flag bits and their value. Never panics: the walk ends at the first attribute whose length
/// is impossible, as nla_ok (include/net/netlink.h) would.
pub(crate) fn walk_attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let (len, kind) = (usize::from(read_u16(bytes, 0)?), read_u16(bytes, 2)?);
        let Some(value) = bytes.get(ATTRIBUTE_HEADER_LEN..len) else {
            bytes = &[];
            return None;
        };
        // The last attribute may lack its alignment padding: nla_ok checks only the unpadded
        // length against what remains.
        bytes = bytes
            .get(len.next_multiple_of(ATTRIBUTE_ALIGN)..)
            .unwrap_or_default();
        Some((kind & ATTRIBUTE_TYPE_MASK, value))
    })
}

/// An attribute value that is exactly a u32 (nla_put_u32), `None` for any other length.
pub(crate) fn u32_value(value: &[u8]) -> Option<u32> {
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
// include/uapi/linux/pkt_cls.h, the TCA_BPF_* enum: the id of an eBPF (not classic BPF) program,
// put by net/sched/cls_bpf.c `cls_bpf_dump_ebpf_info` inside TCA_OPTIONS. Not to be confused
// with TCA_CHAIN, also 11, which every filter message has at the top level.
const TCA_BPF_ID: u16 = 11;

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
    let body = TcMsg {
        family: AF_UNSPEC,
        pad1: 0,
        pad2: 0,
        ifindex: device_index(ifindex)?,
        handle: 0,
        parent,
        // Every priority and protocol: `tcf_chain_dump` filters on a half of tcm_info only
        // when it is non-zero.
        info: 0,
    };
    let mut ids = Vec::new();
    talk(
        libc::RTM_GETTFILTER,
        NLM_F_REQUEST | NLM_F_DUMP,
        body,
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
fn filter_dump_reply(
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
    let attributes = payload.get(size_of::<TcMsg>()..)?;
    let mut is_bpf = false;
    let mut id = None;
    for (kind, value) in walk_attributes(attributes) {
        match kind {
            // nla_put_string puts the name with its NUL.
            libc::TCA_KIND => is_bpf = value.strip_suffix(b"\0").unwrap_or(value) == b"bpf",
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

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let bytes = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let bytes = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    let bytes = bytes.get(at..at.checked_add(4)?)?;
    Some(i32::from_ne_bytes(bytes.try_into().ok()?))
}

/// What each request's handler makes of one reply (see [`replay`]): its answer, `None` where
/// the reply would go on past the last datagram, or the error.
#[doc(hidden)]
#[derive(Debug)]
pub struct Replayed {
    pub ack: io::Result<Option<()>>,
    pub link: io::Result<Option<AggregateLimits>>,
    pub filter_ids: io::Result<Option<Vec<u32>>>,
}

/// For the fuzz target `netlink_reply` (`shaper::fuzz`): `datagrams` as the reply to each request
/// this module sends (an ack, RTM_GETLINK, a filter dump of the `ingress` or egress hook), walked
/// as `talk` walks them, for the exchange the first message names. Only the socket is left out.
#[doc(hidden)]
pub fn replay(datagrams: &[&[u8]], ingress: bool) -> Replayed {
    fn run<T>(
        exchange: Exchange,
        datagrams: &[&[u8]],
        mut handle: impl FnMut(Reply<'_>) -> io::Result<ControlFlow<T>>,
    ) -> io::Result<Option<T>> {
        for datagram in datagrams {
            if let ControlFlow::Break(answer) = exchange.walk(datagram, &mut handle)? {
                return Ok(Some(answer));
            }
        }
        Ok(None)
    }
    let first = datagrams.first().copied().unwrap_or_default();
    let exchange = Exchange {
        seq: read_u32(first, 8).unwrap_or(0),
        port: read_u32(first, 12).unwrap_or(0),
    };
    let hook = if ingress {
        TC_H_MIN_INGRESS
    } else {
        TC_H_MIN_EGRESS
    };
    let parent = (TC_H_CLSACT & TC_H_MAJ_MASK) | hook;
    let mut ids = Vec::new();
    let filters = run(exchange, datagrams, |reply| {
        filter_dump_reply(reply, parent, &mut ids)
    });
    Replayed {
        ack: run(exchange, datagrams, acknowledged),
        link: run(exchange, datagrams, link_reply),
        filter_ids: filters.map(|done| done.map(|()| ids)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libc::{
        IFLA_GRO_MAX_SIZE, IFLA_GSO_MAX_SEGS, IFLA_GSO_MAX_SIZE, IFLA_IFNAME, IFLA_MTU,
        IFLA_TSO_MAX_SIZE, TCA_CHAIN, TCA_KIND, TCA_OPTIONS,
    };

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

    /// The exchange the test messages answer: sequence 1, port 0.
    const TEST: Exchange = Exchange { seq: 1, port: 0 };

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        message_to(TEST, kind, payload)
    }

    fn message_to(exchange: Exchange, kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (size_of::<libc::nlmsghdr>() + payload.len()) as u32;
        let mut bytes = [
            &len.to_ne_bytes()[..],
            &kind.to_ne_bytes(),
            &0u16.to_ne_bytes(),
            &exchange.seq.to_ne_bytes(),
            &exchange.port.to_ne_bytes(),
        ]
        .concat();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// The answer to RTM_GETLINK in one datagram, as `link_aggregate_limits` reads it.
    fn parse_link_reply(datagram: &[u8]) -> io::Result<AggregateLimits> {
        match TEST.walk(datagram, &mut link_reply)? {
            ControlFlow::Break(limits) => Ok(limits),
            ControlFlow::Continue(()) => Err(invalid("no RTM_NEWLINK in the reply")),
        }
    }

    /// What `walk` hands on from one datagram (as Debug text), stopping at NLMSG_DONE.
    fn replies(datagram: &[u8]) -> io::Result<(ControlFlow<()>, Vec<String>)> {
        let mut seen = Vec::new();
        let flow = TEST.walk(datagram, &mut |reply| {
            seen.push(format!("{reply:?}"));
            Ok(match reply {
                Reply::Done => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
        })?;
        Ok((flow, seen))
    }

    fn ack(errno: i32) -> Vec<u8> {
        message(libc::NLMSG_ERROR as u16, &errno.to_ne_bytes())
    }

    #[test]
    fn walker_refuses_a_truncated_header() {
        let whole = message(libc::RTM_NEWLINK, &[0; 16]);
        for cut in 1..HEADER_LEN {
            let err = replies(&whole[..cut]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "cut at {cut}");
            assert_eq!(err.to_string(), "short netlink message", "cut at {cut}");
        }
        assert_eq!(
            replies(&[]).unwrap_err().to_string(),
            "empty netlink datagram"
        );
    }

    #[test]
    fn walker_refuses_a_length_shorter_than_the_header() {
        for len in [0u32, 1, 4, 15] {
            let mut bytes = message(libc::RTM_NEWLINK, &[0; 16]);
            bytes[..4].copy_from_slice(&len.to_ne_bytes());
            let err = replies(&bytes).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "len {len}");
            assert_eq!(err.to_string(), "netlink message with a bad length");
        }
        // Exactly the header is a message without payload.
        let (_, seen) = replies(&message(libc::RTM_NEWLINK, &[])).unwrap();
        assert_eq!(
            seen,
            [format!(
                "{:?}",
                Reply::Message {
                    kind: libc::RTM_NEWLINK,
                    payload: &[]
                }
            )]
        );
    }

    #[test]
    fn walker_refuses_a_length_beyond_the_datagram() {
        let first = message(libc::RTM_NEWLINK, &[0; 16]);
        for len in [first.len() as u32 + 1, 4096, u32::MAX] {
            let mut bytes = first.clone();
            bytes[..4].copy_from_slice(&len.to_ne_bytes());
            let err = replies(&bytes).unwrap_err();
            assert_eq!(
                err.to_string(),
                "netlink message with a bad length",
                "len {len}"
            );
        }
        // A later message's length is checked against what remains after the earlier ones.
        let mut second = message(libc::RTM_NEWLINK, &[0; 4]);
        second[..4].copy_from_slice(&24u32.to_ne_bytes());
        assert!(replies(&[first, second].concat()).is_err());
    }

    #[test]
    fn walker_turns_an_error_message_into_the_kernels_errno() {
        let err = replies(&ack(-libc::ENOENT)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        // The messages before it were handed on; the error ends the reply.
        let datagram = [message(libc::RTM_NEWLINK, &[]), ack(-libc::EPERM)].concat();
        assert_eq!(
            replies(&datagram).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        // Not an errno: positive, or one that has no negation.
        for errno in [libc::ENOENT, i32::MIN] {
            let err = replies(&ack(errno)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "errno {errno}");
        }
        assert_eq!(
            replies(&message(libc::NLMSG_ERROR as u16, &[0; 3]))
                .unwrap_err()
                .to_string(),
            "short netlink error"
        );
    }

    #[test]
    fn walker_hands_on_error_zero_as_an_ack() {
        let (flow, seen) = replies(&ack(0)).unwrap();
        assert_eq!(
            (flow, seen),
            (ControlFlow::Continue(()), vec!["Ack".to_owned()])
        );
        // An ack carries the request's header after the errno; it is not read.
        let mut full = 0i32.to_ne_bytes().to_vec();
        full.extend(message(libc::RTM_DELQDISC, &[0; 32]));
        let datagram = message(libc::NLMSG_ERROR as u16, &full);
        assert_eq!(
            TEST.walk(&datagram, &mut acknowledged).unwrap(),
            ControlFlow::Break(())
        );
        // Anything else is not the answer to a request that asked for an ack only.
        let other = message(libc::RTM_NEWQDISC, &[0; 20]);
        assert_eq!(
            TEST.walk(&other, &mut acknowledged)
                .unwrap_err()
                .to_string(),
            "unexpected netlink reply"
        );
        assert!(TEST.walk(&done(0), &mut acknowledged).is_err());
    }

    #[test]
    fn multi_datagram_dump_goes_on_until_its_done() {
        let newlink = |index: u8| message(libc::RTM_NEWLINK, &[index; 16]);
        let datagrams = [
            [
                newlink(1),
                message(libc::NLMSG_NOOP as u16, &[]),
                newlink(2),
            ]
            .concat(),
            newlink(3),
            // Nothing after NLMSG_DONE is read.
            [newlink(4), done(0), newlink(5)].concat(),
        ];
        let mut kinds = Vec::new();
        let mut flows = Vec::new();
        for datagram in &datagrams {
            flows.push(
                TEST.walk(datagram, &mut |reply| {
                    Ok(match reply {
                        Reply::Message { payload, .. } => {
                            kinds.push(payload[0]);
                            ControlFlow::Continue(())
                        }
                        Reply::Done => ControlFlow::Break(()),
                        Reply::Ack => unreachable!(),
                    })
                })
                .unwrap(),
            );
        }
        assert_eq!(kinds, [1, 2, 3, 4]);
        assert_eq!(
            flows,
            [
                ControlFlow::Continue(()),
                ControlFlow::Continue(()),
                ControlFlow::Break(())
            ]
        );
    }

    #[test]
    fn messages_of_another_exchange_are_skipped() {
        let stray = [
            Exchange { seq: 2, port: 0 },
            Exchange { seq: 1, port: 4242 },
        ]
        .map(|other| {
            [
                message_to(
                    other,
                    libc::NLMSG_ERROR as u16,
                    &(-libc::EPERM).to_ne_bytes(),
                ),
                message_to(other, libc::NLMSG_DONE as u16, &0i32.to_ne_bytes()),
            ]
            .concat()
        })
        .concat();
        let (flow, seen) =
            replies(&[stray.clone(), message(libc::RTM_NEWLINK, &[])].concat()).unwrap();
        assert_eq!(flow, ControlFlow::Continue(()));
        assert_eq!(seen.len(), 1);
        let (flow, _) = replies(&[stray, done(0)].concat()).unwrap();
        assert_eq!(flow, ControlFlow::Break(()));
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

    fn done(errno: i32) -> Vec<u8> {
        message(libc::NLMSG_DONE as u16, &errno.to_ne_bytes())
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
