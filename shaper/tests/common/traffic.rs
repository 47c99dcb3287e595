//! The tests' side of `shaper_testbed::traffic`: UDP senders and counting receivers that panic
//! with the reason if they cannot start. Both stop when dropped, so a failing test leaves no
//! thread sending.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use shaper_testbed::traffic::{self, Pace, ReceiveOptions};

use super::netns::{InNamespace as _, VethPair};
pub use shaper_testbed::traffic::{Receiver, Sender};

/// The UDP payload of the tests' datagrams, and the frame it makes: wire bytes per second are
/// datagrams per second × 1000.
pub const PAYLOAD: usize = traffic::PAYLOAD;
pub const WIRE: u64 = traffic::WIRE_BYTES;

/// A rate measurement: the first second (buckets draining their burst, senders settling) is not
/// counted, the next five are.
pub const WARMUP: Duration = Duration::from_secs(1);
pub const WINDOW: Duration = Duration::from_secs(5);

/// Wire bytes per second received between `WARMUP` and `WARMUP + WINDOW` after `start`.
pub fn measured_rate(receiver: &Receiver, start: Instant) -> f64 {
    sleep_until(start + WARMUP);
    let (first, t0) = (receiver.count(), Instant::now());
    sleep_until(start + WARMUP + WINDOW);
    let (last, t1) = (receiver.count(), Instant::now());
    ((last - first) * WIRE) as f64 / (t1 - t0).as_secs_f64()
}

pub fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// The longest a receiver counts, dropped or not: longer than any test runs.
const RECEIVE_BOUND: Duration = Duration::from_secs(300);

/// A receive buffer for 16 seconds of the tests' usual 1,000 datagrams per second (each
/// 1,000-byte datagram takes about 2 KiB of buffer, its truesize). With the default (rmem_default,
/// 208 KiB: about a tenth of a second), a receiver thread the scheduler kept off the CPU that
/// long lost datagrams in its socket that the tests' exact counts then missed (2 of 6,499, on a
/// busy two-core machine).
const RECEIVE_BUFFER: usize = 32 << 20;

/// Counts the datagrams arriving on `socket` until dropped.
pub fn receiver(socket: UdpSocket) -> Receiver {
    let mut options = ReceiveOptions::new(RECEIVE_BOUND);
    options.buffer_bytes = Some(RECEIVE_BUFFER);
    Receiver::start(socket, options).unwrap_or_else(|e| panic!("starting a receiver: {e}"))
}

/// The receiver's count once nothing more arrives, for the exact counts after the senders have
/// finished: the last datagrams may still wait in the socket (or in an HTB queue draining at
/// its rate) for a receiver thread not yet run. Settled = unchanged for 300 ms; 10 s at most.
pub fn settled_count(receiver: &Receiver) -> u64 {
    const QUIET: Duration = Duration::from_millis(300);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (receiver.count(), Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = receiver.count();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= QUIET {
            break;
        }
    }
    last
}

/// Counts the datagrams arriving on `port` of the pair's side `a`, the side the daemon watches.
pub fn receiver_on(pair: &VethPair, port: u16) -> Receiver {
    receiver(pair.a.within(|| {
        UdpSocket::bind((pair.a_addr, port)).unwrap_or_else(|e| panic!("binding :{port}: {e}"))
    }))
}

/// [`sender`] from the pair's side `b` to `port` on side `a`.
pub fn sender_to(pair: &VethPair, port: u16, bytes_per_sec: u64, duration: Duration) -> Sender {
    let socket = pair.b.within(|| {
        UdpSocket::bind((pair.b_addr, 0)).unwrap_or_else(|e| panic!("binding a sender: {e}"))
    });
    sender(
        socket,
        SocketAddr::from((pair.a_addr, port)),
        bytes_per_sec,
        duration,
    )
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
