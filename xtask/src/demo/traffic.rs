//! Bounded background UDP traffic: per port, a sender in the client namespace paced to a wire
//! rate and a receiver bound in the server namespace (so the port shows as listening, with this
//! process as its owner, and datagrams are consumed rather than answered with ICMP).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use shaper_testbed::netns::VethPair;

/// UDP payload that makes a 1000-byte frame (Ethernet 14 + IPv4 20 + UDP 8 = 42 bytes of
/// headers), so wire bytes per second are datagrams per second × 1000.
const PAYLOAD: usize = 958;
pub const FRAME_BYTES: u64 = 1000;

/// A sender that fell behind (the machine was busy) skips what it missed beyond this much
/// instead of bursting it out, so the offered rate never exceeds the configured one by much.
const MAX_BACKLOG: Duration = Duration::from_millis(100);

/// The threads of the traffic; stopped and joined on drop.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts traffic from the client to each of `ports` on the server at `wire_bytes_per_sec`
    /// each. Every thread also ends by itself after `bound`, should nothing stop it.
    pub fn start(
        pair: &VethPair,
        ports: &[u16],
        wire_bytes_per_sec: u64,
        bound: Duration,
    ) -> anyhow::Result<Self> {
        let mut traffic = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let end = Instant::now() + bound;
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
            traffic
                .threads
                .push(receive(receiver, end, Arc::clone(&traffic.stop))?);
            traffic.threads.push(send_paced(
                sender,
                server,
                wire_bytes_per_sec,
                end,
                Arc::clone(&traffic.stop),
            ));
        }
        Ok(traffic)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Reads and discards datagrams until `stop` or `end`.
fn receive(
    socket: UdpSocket,
    end: Instant,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    // The timeout lets the thread notice `stop` when no datagram comes.
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .context("setting a read timeout")?;
    Ok(thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            let _ = socket.recv(&mut buf);
        }
    }))
}

/// Sends `PAYLOAD`-byte datagrams to `to` at `wire_bytes_per_sec` until `stop` or `end`.
fn send_paced(
    socket: UdpSocket,
    to: SocketAddr,
    wire_bytes_per_sec: u64,
    end: Instant,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let payload = [0x5au8; PAYLOAD];
        let per_sec = wire_bytes_per_sec as f64 / FRAME_BYTES as f64;
        let max_backlog = (MAX_BACKLOG.as_secs_f64() * per_sec) as u64;
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            let due = (start.elapsed().as_secs_f64() * per_sec) as u64;
            sent = sent.max(due.saturating_sub(max_backlog));
            while sent < due {
                // A full socket buffer (ENOBUFS/EAGAIN) only means this datagram is not sent.
                if socket.send_to(&payload, to).is_err() {
                    break;
                }
                sent += 1;
            }
            thread::sleep(Duration::from_micros(500));
        }
    })
}
