//! One request and its reply: the request goes out with a fresh sequence number on a socket of
//! its own, and every message of the reply that answers it is handed to the request's handler,
//! NLMSG_NOOP, NLMSG_ERROR and NLMSG_DONE handled the same way for every request.

use std::{
    io,
    ops::ControlFlow,
    sync::atomic::{AtomicU32, Ordering},
};

use super::{
    attributes::{read_i32, read_u16, read_u32},
    constants::{
        HEADER_LEN, MESSAGE_ALIGN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    },
    invalid,
    request::Request,
    socket::Socket,
};

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
pub(super) struct Exchange {
    pub(super) seq: u32,
    pub(super) port: u32,
}

/// The sequence number of the next request. Each request has a socket of its own, so this only
/// makes a stray message stand out.
static NEXT_SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// Sends one request (`kind`, `flags`, then `request`) to rtnetlink and feeds every message of its
/// reply to `handle` until `handle` breaks with the answer: the one path every request here
/// takes. The reply may span datagrams (a dump arrives as several: the kernel fills the next
/// each time the reader drains the socket, net/netlink/af_netlink.c `netlink_recvmsg` calls
/// `netlink_dump`). A kernel errno is the error, with the kernel's code; a malformed reply is
/// `InvalidData`.
pub(super) fn talk<T>(
    kind: u16,
    flags: u16,
    request: &Request,
    mut handle: impl FnMut(Reply<'_>) -> io::Result<ControlFlow<T>>,
) -> io::Result<T> {
    let socket = Socket::open()?;
    let seq = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    socket.send(&request.with_header(kind, flags, seq)?)?;
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

/// Sends a request that changes something (`flags` on top of NLM_F_REQUEST | NLM_F_ACK) and
/// waits for the kernel's ack.
pub(super) fn ack(kind: u16, flags: u16, request: &Request) -> io::Result<()> {
    talk(
        kind,
        NLM_F_REQUEST | NLM_F_ACK | flags,
        request,
        acknowledged,
    )
}

/// The answer to a request sent with NLM_F_ACK and nothing else: the ack.
pub(super) fn acknowledged(reply: Reply<'_>) -> io::Result<ControlFlow<()>> {
    match reply {
        Reply::Ack => Ok(ControlFlow::Break(())),
        Reply::Message { .. } | Reply::Done => Err(invalid("unexpected netlink reply")),
    }
}

impl Exchange {
    /// Feeds the messages of one datagram that answer this exchange to `handle`, until it
    /// breaks; `Continue` when the reply goes on in the next datagram. Handles NLMSG_NOOP,
    /// NLMSG_ERROR and NLMSG_DONE for every request. Never panics: a malformed datagram is
    /// `InvalidData`.
    pub(super) fn walk<T>(
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
struct Received<'a> {
    kind: u16,
    seq: u32,
    port: u32,
    payload: &'a [u8],
}

/// The messages packed in `datagram`, each checked as NLMSG_OK (include/uapi/linux/netlink.h)
/// would: a whole header, an nlmsg_len of at least the header and within what remains. The
/// first one that fails is an `InvalidData` error and ends the walk. Never panics.
fn messages(mut datagram: &[u8]) -> impl Iterator<Item = io::Result<Received<'_>>> {
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
fn next_message(datagram: &[u8]) -> io::Result<(Received<'_>, usize)> {
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
    let message = Received {
        kind,
        seq,
        port,
        payload,
    };
    Ok((message, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::netlink::test_messages::{TEST, done, error_message, message, message_to};

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
        let err = replies(&error_message(-libc::ENOENT)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        // The messages before it were handed on; the error ends the reply.
        let datagram = [message(libc::RTM_NEWLINK, &[]), error_message(-libc::EPERM)].concat();
        assert_eq!(
            replies(&datagram).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        // Not an errno: positive, or one that has no negation.
        for errno in [libc::ENOENT, i32::MIN] {
            let err = replies(&error_message(errno)).unwrap_err();
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
        let (flow, seen) = replies(&error_message(0)).unwrap();
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
}
