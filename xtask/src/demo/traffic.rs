//! Bounded background UDP traffic: per port, a paced sender in the client namespace and a
//! counting receiver bound in the server namespace (so the port shows as listening, with this
//! process as its owner, and datagrams are consumed rather than answered with ICMP).

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::Context as _;

use shaper_testbed::{
    netns::VethPair,
    traffic::{Pace, ReceiveOptions, Receiver, Sender},
};

/// The senders and receivers of the traffic; stopped on drop, senders first (fields drop in
/// declaration order).
#[derive(Debug)]
pub struct Traffic {
    _senders: Vec<Sender>,
    _receivers: Vec<Receiver>,
}

impl Traffic {
    /// Starts traffic from the client to each of `ports` on the server at `wire_bytes_per_sec`
    /// each, in 1000-byte frames. Every sender and receiver also ends by itself after `bound`,
    /// should nothing stop it.
    pub fn start(
        pair: &VethPair,
        ports: &[u16],
        wire_bytes_per_sec: u64,
        bound: Duration,
    ) -> anyhow::Result<Self> {
        let (mut senders, mut receivers) = (Vec::new(), Vec::new());
        for &port in ports {
            let server = SocketAddr::from((pair.a_addr, port));
            let receiver = pair
                .a
                .enter(|| UdpSocket::bind(server))?
                .with_context(|| format!("binding {server} in {}", pair.a.name))?;
            let sender = pair
                .b
                .enter(|| UdpSocket::bind((pair.b_addr, 0)))?
                .with_context(|| format!("binding a sender in {}", pair.b.name))?;
            receivers.push(Receiver::start(receiver, ReceiveOptions::new(bound))?);
            let pace = Pace::new(wire_bytes_per_sec, bound);
            senders.push(Sender::start(sender, server, pace)?);
        }
        Ok(Self {
            _senders: senders,
            _receivers: receivers,
        })
    }
}
