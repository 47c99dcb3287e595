//! Paced UDP traffic for the testbed: a [`Sender`] that offers a wire rate from one socket to one
//! address, and a [`Receiver`] that counts (and, if asked, timestamps) the datagrams arriving on
//! a socket. Each runs on its own thread, which ends by itself at its deadline; dropping either
//! stops it too, so an error or a failing test leaves no thread sending.
//!
//! Rates are in wire bytes, the Ethernet frame that shaper's tc hook charges: a datagram with a
//! `payload`-byte payload is `payload + HEADERS` bytes on the wire.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::cpus;

/// Ethernet (14), IPv4 without options (20) and UDP (8) headers: what a datagram adds to its
/// payload on the wire.
pub const HEADERS: usize = 42;
/// The default payload, which makes a 1000-byte frame: wire bytes per second are datagrams per
/// second × 1000.
pub const PAYLOAD: usize = 958;
/// The frame of a [`PAYLOAD`]-byte datagram.
pub const WIRE_BYTES: u64 = (PAYLOAD + HEADERS) as u64;
/// The largest payload of a UDP datagram over IPv4 (65,535 − 20 − 8).
pub const MAX_PAYLOAD: usize = 65_507;

/// A sender that fell behind (the machine was busy) catches up on at most this much of its
/// schedule and skips the rest, so a stall never turns into a burst far above the rate.
const MAX_BACKLOG: Duration = Duration::from_millis(100);
/// Datagrams sent back to back before the sender looks at its stop flag again (a sender asked
/// for more than one thread can send is always catching up).
const MAX_BURST: u32 = 64;
/// The longest a traffic thread goes without looking at its stop flag and deadline: the
/// receive timeout, and the longest sleep of a sender.
const POLL: Duration = Duration::from_millis(50);
/// The pause after a send the socket refused (a full buffer: ENOBUFS, EAGAIN).
const BACKOFF: Duration = Duration::from_micros(200);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a {0}-byte payload is more than a UDP datagram over IPv4 carries ({MAX_PAYLOAD})")]
    Payload(usize),
    #[error("{what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("starting a traffic thread: {0}")]
    Thread(#[source] io::Error),
    #[error("pinning the sender to CPU {cpu}: {source}")]
    Pin {
        cpu: usize,
        #[source]
        source: io::Error,
    },
    #[error("a traffic thread panicked")]
    Panicked,
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a [`Sender`] offers, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// The offered rate, in wire bytes per second.
    pub wire_bytes_per_sec: u64,
    /// The UDP payload of every datagram, at most [`MAX_PAYLOAD`].
    pub payload: usize,
    /// The sender ends by itself this long after it starts, whatever else happens.
    pub duration: Duration,
    /// The CPU to pin the sending thread to. veth hands a packet to its peer on the sending CPU
    /// (veth_xmit -> __netif_rx), so this also picks the CPU the receiving side's hook runs on.
    pub cpu: Option<usize>,
}

impl Pace {
    /// `wire_bytes_per_sec` in [`PAYLOAD`]-byte datagrams for at most `duration`, on any CPU.
    pub fn new(wire_bytes_per_sec: u64, duration: Duration) -> Self {
        Self {
            wire_bytes_per_sec,
            payload: PAYLOAD,
            duration,
            cpu: None,
        }
    }

    /// The wire bytes of one datagram.
    pub fn frame_bytes(&self) -> u64 {
        (self.payload + HEADERS) as u64
    }

    fn datagrams_per_sec(&self) -> f64 {
        self.wire_bytes_per_sec as f64 / self.frame_bytes() as f64
    }
}

/// The stop flag and the running count a traffic thread shares with its owner.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    count: AtomicU64,
}

/// A thread sending datagrams from a socket to one address at a [`Pace`]. It ends at the pace's
/// duration, on [`finish`](Self::finish), or when dropped.
#[derive(Debug)]
pub struct Sender {
    shared: Arc<Shared>,
    frame_bytes: u64,
    started: Instant,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    /// Starts sending; returns once the thread is pinned (if asked) and its clock has started.
    pub fn start(socket: UdpSocket, to: SocketAddr, pace: Pace) -> Result<Self> {
        if pace.payload > MAX_PAYLOAD {
            return Err(Error::Payload(pace.payload));
        }
        let shared = Arc::new(Shared::default());
        let (ready, started) = mpsc::sync_channel(1);
        let thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("paced-sender".into())
                .spawn(move || {
                    if let Some(cpu) = pace.cpu
                        && let Err(source) = cpus::pin_current_thread(cpu)
                    {
                        let _ = ready.send(Err(Error::Pin { cpu, source }));
                        return;
                    }
                    let started = Instant::now();
                    let _ = ready.send(Ok(started));
                    send_paced(&socket, to, &pace, started, &shared);
                })
                .map_err(Error::Thread)?
        };
        let started = started.recv().unwrap_or(Err(Error::Panicked));
        match started {
            Ok(started) => Ok(Self {
                shared,
                frame_bytes: pace.frame_bytes(),
                started,
                thread: Some(thread),
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// The rate actually offered since the start, in wire bytes per second: below the pace when
    /// one thread cannot send that fast, or the socket refused datagrams.
    pub fn offered_bytes_per_sec(&self) -> f64 {
        (self.sent() * self.frame_bytes) as f64 / self.started.elapsed().as_secs_f64()
    }

    /// Waits for the sender to reach the end of its duration; the datagrams it sent.
    pub fn wait(mut self) -> Result<u64> {
        self.join()
    }

    /// Stops the sender now; the datagrams it sent.
    pub fn finish(mut self) -> Result<u64> {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(&mut self) -> Result<u64> {
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| Error::Panicked)?;
        }
        Ok(self.sent())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.join();
    }
}

/// The sender's loop: keeps the datagrams sent level with the time since `started` × the rate,
/// until stopped or `pace.duration` is over.
fn send_paced(socket: &UdpSocket, to: SocketAddr, pace: &Pace, started: Instant, shared: &Shared) {
    let per_sec = pace.datagrams_per_sec();
    let max_backlog = (MAX_BACKLOG.as_secs_f64() * per_sec) as u64;
    let payload = vec![0x5au8; pace.payload];
    // Of the datagrams due so far, `paced` are done with: sent, or skipped after a stall.
    let (mut paced, mut sent) = (0u64, 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        let Some(left) = pace.duration.checked_sub(elapsed).filter(|d| !d.is_zero()) else {
            break;
        };
        let due = (elapsed.as_secs_f64() * per_sec) as u64;
        paced = paced.max(due.saturating_sub(max_backlog));
        let (mut burst, mut refused) = (0, false);
        while paced < due && burst < MAX_BURST {
            // A full socket buffer only means this datagram is not sent yet.
            if socket.send_to(&payload, to).is_err() {
                refused = true;
                break;
            }
            paced += 1;
            sent += 1;
            burst += 1;
        }
        shared.count.store(sent, Ordering::Relaxed);
        let pause = if refused {
            BACKOFF
        } else if paced < due {
            continue;
        } else {
            // Level with the schedule: sleep until the next datagram is due (never, at rate 0).
            Duration::try_from_secs_f64((paced + 1) as f64 / per_sec)
                .unwrap_or(pace.duration)
                .saturating_sub(started.elapsed())
        };
        thread::sleep(pause.min(POLL).min(left));
    }
}

/// How a [`Receiver`] receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// The receiver ends by itself this long after it starts, whatever else happens.
    pub duration: Duration,
    /// Records each datagram's arrival time, for [`Receiver::finish`].
    pub record_arrivals: bool,
    /// A receive buffer of this size (SO_RCVBUFFORCE, which needs CAP_NET_ADMIN and may exceed
    /// net.core.rmem_max), so the receiver's scheduling delays are not taken for drops.
    pub buffer_bytes: Option<usize>,
}

impl ReceiveOptions {
    /// Counts only, for at most `duration`, with the socket's own buffer.
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            record_arrivals: false,
            buffer_bytes: None,
        }
    }
}

/// What a [`Receiver`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub count: u64,
    /// The arrival times, in order, if [`ReceiveOptions::record_arrivals`]; else empty.
    pub arrivals: Vec<Instant>,
}

/// A thread counting the datagrams that arrive on a socket. It ends at its duration, on
/// [`finish`](Self::finish), or when dropped.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Vec<Instant>>>,
}

impl Receiver {
    pub fn start(socket: UdpSocket, options: ReceiveOptions) -> Result<Self> {
        // The timeout lets the thread see the stop flag and its deadline when nothing arrives.
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|source| Error::Socket {
                what: "setting a receive timeout",
                source,
            })?;
        if let Some(bytes) = options.buffer_bytes {
            force_receive_buffer(&socket, bytes)?;
        }
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            let end = Instant::now() + options.duration;
            thread::Builder::new()
                .name("udp-receiver".into())
                .spawn(move || {
                    let mut arrivals = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < end {
                        if socket.recv(&mut buf).is_ok() {
                            shared.count.fetch_add(1, Ordering::Relaxed);
                            if options.record_arrivals {
                                arrivals.push(Instant::now());
                            }
                        }
                    }
                    arrivals
                })
                .map_err(Error::Thread)?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Datagrams received so far.
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Stops receiving; what was received.
    pub fn finish(mut self) -> Result<Received> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let arrivals = match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| Error::Panicked)?,
            None => Vec::new(),
        };
        Ok(Received {
            count: self.count(),
            arrivals,
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SO_RCVBUFFORCE: a receive buffer of `bytes` whatever net.core.rmem_max says (the kernel caps
/// the value at INT_MAX / 2, and doubles it for its own bookkeeping).
fn force_receive_buffer(socket: &UdpSocket, bytes: usize) -> Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `value` for the given length and nothing else; the fd is open
    // for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::Socket {
            what: "SO_RCVBUFFORCE",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").expect("bind")
    }

    fn receiver(options: ReceiveOptions) -> (Receiver, SocketAddr) {
        let socket = loopback();
        let addr = socket.local_addr().expect("local address");
        (Receiver::start(socket, options).expect("receiver"), addr)
    }

    #[test]
    fn a_sender_offers_its_rate_until_its_duration_and_the_receiver_counts_every_datagram() {
        let (receiver, to) = receiver(ReceiveOptions::new(Duration::from_secs(10)));
        // 500 datagrams/s of 1000 wire bytes for 400 ms: 200 due by the end.
        let pace = Pace::new(500 * WIRE_BYTES, Duration::from_millis(400));
        let started = Instant::now();
        let sent = Sender::start(loopback(), to, pace)
            .expect("sender")
            .wait()
            .expect("wait");
        let took = started.elapsed();
        assert!((180..=200).contains(&sent), "sent {sent}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let deadline = Instant::now() + Duration::from_secs(2);
        while receiver.count() < sent && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(receiver.finish().expect("finish").count, sent);
    }

    #[test]
    fn finish_and_drop_stop_a_long_sender_at_once_and_report_the_offered_rate() {
        let (_receiver, to) = receiver(ReceiveOptions::new(Duration::from_secs(10)));
        let pace = Pace {
            payload: 1472,
            ..Pace::new(1_000_000, Duration::from_secs(60))
        };
        let sender = Sender::start(loopback(), to, pace).expect("sender");
        thread::sleep(Duration::from_millis(300));
        let offered = sender.offered_bytes_per_sec();
        assert!((0.7..1.05).contains(&(offered / 1e6)), "offered {offered}");
        let stopping = Instant::now();
        let sent = sender.finish().expect("finish");
        assert!(sent > 0);
        drop(Sender::start(loopback(), to, pace).expect("sender"));
        assert!(stopping.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_receiver_records_arrivals_in_order_and_ends_at_its_duration() {
        let options = ReceiveOptions {
            record_arrivals: true,
            ..ReceiveOptions::new(Duration::from_millis(300))
        };
        let (receiver, to) = receiver(options);
        let socket = loopback();
        for _ in 0..3 {
            socket.send_to(b"x", to).expect("send");
        }
        thread::sleep(Duration::from_millis(400));
        socket.send_to(b"late", to).expect("send");
        thread::sleep(Duration::from_millis(100));
        let received = receiver.finish().expect("finish");
        assert_eq!(received.count, 3);
        assert_eq!(received.arrivals.len(), 3);
        assert!(received.arrivals.is_sorted());
    }

    #[test]
    fn an_impossible_payload_or_cpu_fails_at_start() {
        let to = SocketAddr::from(([127, 0, 0, 1], 9));
        let pace = Pace::new(1000, Duration::from_secs(1));
        let too_big = Pace {
            payload: MAX_PAYLOAD + 1,
            ..pace
        };
        assert!(matches!(
            Sender::start(loopback(), to, too_big),
            Err(Error::Payload(_))
        ));
        // No CPU has a number beyond CPU_SETSIZE.
        let nowhere = Pace {
            cpu: Some(libc::CPU_SETSIZE as usize),
            ..pace
        };
        assert!(matches!(
            Sender::start(loopback(), to, nowhere),
            Err(Error::Pin { .. })
        ));
    }
}
