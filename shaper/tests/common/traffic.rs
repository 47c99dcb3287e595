//! UDP traffic for the kernel tests: paced senders and counting receivers, bounded in time.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// UDP payload that makes a 1000-byte frame (Ethernet 14 + IPv4 20 + UDP 8 = 42 bytes of
/// headers), so wire bytes per second are datagrams per second × 1000.
pub const PAYLOAD: usize = 958;
pub const WIRE: u64 = 1000;

/// Counts the datagrams arriving on a socket until dropped.
pub struct Receiver {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start(socket: UdpSocket) -> Self {
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self {
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `PAYLOAD`-byte datagrams to `to` at `bytes_per_sec` wire bytes for `duration` (or
/// until `stop`), from a thread pinned to `cpu` if given. Returns the thread; it yields the
/// number of datagrams sent.
pub fn send_paced(
    socket: UdpSocket,
    to: SocketAddr,
    bytes_per_sec: u64,
    duration: Duration,
    cpu: Option<usize>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        if let Some(cpu) = cpu {
            shaper_testbed::cpus::pin_current_thread(cpu)
                .unwrap_or_else(|e| panic!("pin to CPU {cpu}: {e}"));
        }
        let payload = [0x5au8; PAYLOAD];
        let per_sec = (bytes_per_sec / WIRE) as f64;
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let elapsed = start.elapsed();
            if elapsed >= duration {
                break;
            }
            let due = (elapsed.as_secs_f64() * per_sec) as u64;
            while sent < due {
                // A full socket buffer (ENOBUFS/EAGAIN) just means this datagram is not sent.
                if socket.send_to(&payload, to).is_ok() {
                    sent += 1;
                } else {
                    break;
                }
            }
            thread::sleep(Duration::from_micros(500));
        }
        sent
    })
}

/// A [`send_paced`] sender that stops when dropped, so a failing test leaves no thread sending.
pub struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Sender {
    pub fn start(socket: UdpSocket, to: SocketAddr, bytes_per_sec: u64, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = send_paced(socket, to, bytes_per_sec, limit, None, Arc::clone(&stop));
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the sender; the number of datagrams it sent.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |thread| thread.join().expect("sender thread"))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
