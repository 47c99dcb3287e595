//! Traffic between the bench's namespaces: iperf3 for bulk throughput and packet rates, and
//! small paced senders and counting receivers for the accuracy and control scenarios (which
//! need exact windows and per-datagram arrival times). Every sender and receiver stops by
//! itself at its deadline; dropping one stops it too.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::sys::{Namespace, check_interrupt, interrupted, run};

/// Longest any sender or receiver runs, whatever its caller asked: a bound on every loop.
const MAX_RUN: Duration = Duration::from_secs(60);

/// How often blocked socket calls wake up to look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A flag shared with worker threads, with the threads to join when it is raised.
struct Workers<T> {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<T>>,
}

impl<T> Workers<T> {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn spawn(&mut self, f: impl FnOnce(&AtomicBool) -> T + Send + 'static)
    where
        T: Send + 'static,
    {
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
            let out = f(&stop);
            stop.store(true, Ordering::Relaxed);
            let _ = guard.join();
            out
        }));
    }

    fn stop(&mut self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

impl<T> Drop for Workers<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Gives a socket a large receive buffer (SO_RCVBUFFORCE: root may exceed rmem_max), so the
/// receiver's scheduling delays do not turn into drops the limiter did not make.
fn large_receive_buffer(fd: i32) {
    let bytes: libc::c_int = 32 << 20;
    // SAFETY: setsockopt reads `bytes` for the given length; a failure only leaves the default.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Counts the datagrams arriving on a socket, optionally with each one's arrival time.
pub struct UdpSink {
    received: Arc<AtomicU64>,
    workers: Workers<Vec<Instant>>,
}

impl UdpSink {
    pub fn start(socket: UdpSocket, record_times: bool) -> anyhow::Result<Self> {
        socket.set_read_timeout(Some(POLL))?;
        large_receive_buffer(socket.as_raw_fd());
        let received = Arc::new(AtomicU64::new(0));
        let mut workers = Workers::new();
        let count = Arc::clone(&received);
        workers.spawn(move |stop| {
            let mut times = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                    if record_times {
                        times.push(Instant::now());
                    }
                }
            }
            times
        });
        Ok(Self { received, workers })
    }

    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops receiving; the arrival times, if recorded.
    pub fn finish(mut self) -> Vec<Instant> {
        self.workers.stop().into_iter().next().unwrap_or_default()
    }
}

/// Sends `payload`-byte datagrams to `to` at `per_sec` datagrams per second (as fast as it can
/// when that is more than one thread can send) until stopped.
pub struct UdpSource {
    sent: Arc<AtomicU64>,
    started: Instant,
    workers: Workers<()>,
}

impl UdpSource {
    pub fn start(socket: UdpSocket, to: SocketAddr, payload: usize, per_sec: f64) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let mut workers = Workers::new();
        let count = Arc::clone(&sent);
        let started = Instant::now();
        workers.spawn(move |stop| {
            let data = vec![0x5au8; payload];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * per_sec) as u64;
                // Catch up in bursts of at most 64, so the stop flag is seen promptly.
                let mut burst = 0;
                while sent < due && burst < 64 {
                    // A full socket buffer (ENOBUFS) only means this datagram is not sent.
                    if socket.send_to(&data, to).is_err() {
                        break;
                    }
                    sent += 1;
                    burst += 1;
                }
                count.store(sent, Ordering::Relaxed);
                if sent >= due {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Self {
            sent,
            started,
            workers,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Datagrams per second sent so far.
    pub fn rate(&self) -> f64 {
        self.sent() as f64 / self.started.elapsed().as_secs_f64()
    }

    pub fn stop(mut self) {
        self.workers.stop();
    }
}

/// Counts the bytes arriving on `streams` TCP connections accepted from `listener`.
pub struct TcpSink {
    bytes: Arc<AtomicU64>,
    workers: Workers<()>,
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
            std::thread::scope(|scope| {
                for mut stream in readers {
                    let count = &count;
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
                                    if matches!(
                                        e.kind(),
                                        ErrorKind::WouldBlock | ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            });
        });
        Ok(Self { bytes, workers })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.workers.stop();
    }
}

/// Writes as fast as TCP lets it on each stream until stopped.
pub struct TcpSources {
    workers: Workers<()>,
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
