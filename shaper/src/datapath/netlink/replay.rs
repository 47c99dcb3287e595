//! The exchange without its socket, for the fuzz target `netlink_reply`.

use std::{io, ops::ControlFlow};

use super::{
    attributes::read_u32,
    clsact::{filter_dump_reply, hook_parent},
    exchange::{Exchange, Reply, acknowledged},
    link::{AggregateLimits, link_reply},
};

/// What each request's handler makes of one reply (see [`replay`]): its answer, `None` where
/// the reply would go on past the last datagram, or the error.
#[doc(hidden)]
#[derive(Debug)]
pub struct Replayed {
    pub ack: io::Result<Option<()>>,
    pub link: io::Result<Option<AggregateLimits>>,
    pub filter_ids: io::Result<Option<Vec<u32>>>,
}

/// For the fuzz target `netlink_reply` (`shaper::fuzz`): `datagrams` as the reply to each kind
/// of request netlink sends (an ack, RTM_GETLINK, a filter dump of the `ingress` or egress hook),
/// walked as [`talk`](super::exchange::talk) walks them, for the exchange the first message
/// names. Only the socket is left out.
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
    let parent = hook_parent(ingress);
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
