//! Traffic between the bench's namespaces: iperf3 for bulk throughput and packet rates, TCP
//! writers and counting readers, and the testbed's paced UDP senders and counting receivers set
//! up for the accuracy and control scenarios (which need exact windows and per-datagram arrival
//! times). Every sender and receiver stops by itself at its deadline; dropping one stops it too,
//! and so does Ctrl-C: the TCP threads watch the flag, and a scenario that sees it drops its UDP
//! ones.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use shaper_testbed::traffic::{Pace, ReceiveOptions, Receiver, Sender};

use crate::sys::{Namespace, check_interrupt, interrupted, run};

/// Longest any sender or receiver runs, whatever its caller asked: a bound on every loop.
const MAX_RUN: Duration = Duration::from_secs(60);

/// How often blocked socket calls wake up to look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A flag shared with worker threads, with the threads to join when it is raised.
struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn spawn(&mut self, f: impl FnOnce(&AtomicBool) + Send + 'static) {
        let stop = Arc::clone(&self.stop);
        let deadline = Instant::now() + MAX_RUN;
        self.threads.push(std::thread::spawn(move || {
            // The worker sees the flag raised by its owner, by Ctrl-C, or at the deadline.
            let watch = Arc::clone(&stop);
            let guard = std::thread::spawn(move || {
                while !watch.load(Ordering::Relaxed) {
                    if interrupted() || Instant::now() >= deadline {
                        watch.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(POLL);
                }
            });
            f(&stop);
            stop.store(true, Ordering::Relaxed);
            let _ = guard.join();
        }));
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A receiver with a large buffer (SO_RCVBUFFORCE: root may exceed rmem_max), so its scheduling
/// delays do not turn into drops the limiter did not make; with each datagram's arrival time if
/// `record_arrivals`.
pub fn udp_sink(socket: UdpSocket, record_arrivals: bool) -> anyhow::Result<Receiver> {
    let options = ReceiveOptions {
        record_arrivals,
        buffer_bytes: Some(32 << 20),
        ..ReceiveOptions::new(MAX_RUN)
    };
    Ok(Receiver::start(socket, options)?)
}

/// A sender of `payload`-byte datagrams at `wire_bytes_per_sec` (as fast as it can when that is
/// more than one thread can send).
pub fn udp_source(
    socket: UdpSocket,
    to: SocketAddr,
    payload: usize,
    wire_bytes_per_sec: u64,
) -> anyhow::Result<Sender> {
    let pace = Pace {
        payload,
        ..Pace::new(wire_bytes_per_sec, MAX_RUN)
    };
    Ok(Sender::start(socket, to, pace)?)
}

/// Counts the bytes arriving on `streams` TCP connections accepted from `listener`.
pub struct TcpSink {
    bytes: Arc<AtomicU64>,
    workers: Workers,
}

impl TcpSink {
    pub fn start(listener: TcpListener, streams: usize) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let bytes = Arc::new(AtomicU64::new(0));
        let mut workers = Workers::new();
        let count = Arc::clone(&bytes);
        workers.spawn(move |stop| {
            let mut readers = Vec::new();
            while readers.len() < streams && !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => readers.push(stream),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => return,
                }
            }
            read_all(readers, stop, &count);
        });
        Ok(Self { bytes, workers })
    }

    /// Counts the bytes arriving on already connected `streams` (the client ends of a
    /// download).
    pub fn from_streams(streams: Vec<TcpStream>) -> Self {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut workers = Workers::new();
        let count = Arc::clone(&bytes);
        workers.spawn(move |stop| read_all(streams, stop, &count));
        Self { bytes, workers }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.workers.stop();
    }
}

/// Reads every stream on its own thread until `stop`, adding what arrives to `count`.
fn read_all(streams: Vec<TcpStream>, stop: &AtomicBool, count: &AtomicU64) {
    std::thread::scope(|scope| {
        for mut stream in streams {
            scope.spawn(move || {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(POLL));
                let mut buf = vec![0u8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match stream.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            count.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
}

/// Writes as fast as TCP lets it on each stream until stopped.
pub struct TcpSources {
    workers: Workers,
}

impl TcpSources {
    pub fn start(streams: Vec<TcpStream>) -> anyhow::Result<Self> {
        let mut workers = Workers::new();
        for mut stream in streams {
            stream.set_write_timeout(Some(POLL))?;
            workers.spawn(move |stop| {
                let buf = vec![0x5au8; 128 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match stream.write(&buf) {
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        Ok(Self { workers })
    }

    pub fn stop(mut self) {
        self.workers.stop();
    }
}

/// `iperf3 -s` in a namespace, killed on drop.
pub struct Iperf3Server {
    child: Child,
}

impl Iperf3Server {
    pub fn start(ns: &Namespace, addr: Ipv4Addr, port: u16) -> anyhow::Result<Self> {
        let child = ns
            .command("iperf3")
            .args(["-s", "-B", &addr.to_string(), "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 (apt-get install iperf3)")?;
        let server = Self { child };
        let deadline = Instant::now() + Duration::from_secs(5);
        let listening = format!("{addr}:{port}");
        loop {
            check_interrupt()?;
            let sockets = run(ns.command("ss").args(["-Hltn"]))?;
            if sockets.contains(&listening) {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                bail!("iperf3 -s is not listening on {listening} after 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `iperf3 -c ADDR -p PORT -J ARGS` in `ns` (bounded by iperf3's own `-t`); its JSON.
pub fn iperf3_client(
    ns: &Namespace,
    addr: Ipv4Addr,
    port: u16,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let output = ns
        .command("iperf3")
        .args(["-c", &addr.to_string(), "-p", &port.to_string(), "-J"])
        .args(args)
        .output()
        .context("running iperf3")?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "iperf3 {args:?}: not JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(error) = json.get("error") {
        bail!("iperf3 {args:?}: {error}");
    }
    Ok(json)
}

/// A number at `pointer` (e.g. `/end/sum_received/bits_per_second`) in iperf3's JSON.
pub fn field(json: &serde_json::Value, pointer: &str) -> anyhow::Result<f64> {
    json.pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("iperf3 JSON has no number at {pointer}"))
}
