//! The tests' side of `shaper_testbed::traffic`: UDP senders and counting receivers that panic
//! with the reason if they cannot start. Both stop when dropped, so a failing test leaves no
//! thread sending.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use shaper_testbed::traffic::{self, Pace, ReceiveOptions};
pub use shaper_testbed::traffic::{Receiver, Sender};

/// The UDP payload of the tests' datagrams, and the frame it makes: wire bytes per second are
/// datagrams per second × 1000.
pub const PAYLOAD: usize = traffic::PAYLOAD;
pub const WIRE: u64 = traffic::WIRE_BYTES;

/// The longest a receiver counts, dropped or not: longer than any test runs.
const RECEIVE_BOUND: Duration = Duration::from_secs(300);

/// Counts the datagrams arriving on `socket` until dropped.
pub fn receiver(socket: UdpSocket) -> Receiver {
    Receiver::start(socket, ReceiveOptions::new(RECEIVE_BOUND))
        .unwrap_or_else(|e| panic!("starting a receiver: {e}"))
}

/// Sends `PAYLOAD`-byte datagrams to `to` at `bytes_per_sec` wire bytes for `duration` (or until
/// dropped or finished).
pub fn sender(socket: UdpSocket, to: SocketAddr, bytes_per_sec: u64, duration: Duration) -> Sender {
    start_sender(socket, to, Pace::new(bytes_per_sec, duration))
}

/// A [`sender`] whose thread is pinned to `cpu`.
pub fn pinned_sender(
    socket: UdpSocket,
    to: SocketAddr,
    bytes_per_sec: u64,
    duration: Duration,
    cpu: usize,
) -> Sender {
    let pace = Pace {
        cpu: Some(cpu),
        ..Pace::new(bytes_per_sec, duration)
    };
    start_sender(socket, to, pace)
}

fn start_sender(socket: UdpSocket, to: SocketAddr, pace: Pace) -> Sender {
    Sender::start(socket, to, pace).unwrap_or_else(|e| panic!("starting a sender to {to}: {e}"))
}
