//! One bulk TCP stream between the two ends of a veth pair, for a warm-up and a measuring
//! window: the goodput its reader saw over the window, and the segments its writer sent and
//! retransmitted meanwhile (`/proc/net/snmp` of the writer's namespace). Bounded in time: the
//! writer stops half a second after the window, the reader gives up after 2 s without data.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use super::netns::{InNamespace as _, Namespace, VethPair};

/// How long the stream runs before it is measured: TCP's slow start and the bucket's burst.
pub const WARMUP: Duration = Duration::from_secs(1);
/// How long it is measured.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Which end writes: the service in `a` (a download from `a`'s point of view) or the client in
/// `b` (an upload to `a`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    ServiceInA,
    ClientInB,
}

/// What one stream did over the window.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Bytes per second the reader received.
    pub goodput: f64,
    /// Segments the writer's namespace retransmitted (TcpRetransSegs) and sent (OutSegs).
    pub retransmitted: u64,
    pub sent: u64,
}

impl Bulk {
    /// Retransmitted segments as a share of those sent.
    pub fn retransmitted_share(&self) -> f64 {
        self.retransmitted as f64 / self.sent.max(1) as f64
    }
}

/// A stream to the service listening on `port` in `a`, from a client in `b`, written by `writer`.
pub fn stream(pair: &VethPair, port: u16, writer: Writer) -> Bulk {
    let listener = pair
        .a
        .within(|| TcpListener::bind((pair.a_addr, port)).expect("listen"));
    let client = pair.b.within(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from((pair.a_addr, port)),
            Duration::from_secs(5),
        )
        .expect("connect")
    });
    let (service, _) = listener.accept().expect("accept");
    let (mut sending, mut reader, writer_ns) = match writer {
        Writer::ServiceInA => (service, client, &pair.a),
        Writer::ClientInB => (client, service, &pair.b),
    };
    let (retransmitted0, sent0) = segments(writer_ns);
    let duration = WARMUP + WINDOW + Duration::from_millis(500);
    let writing = thread::spawn(move || {
        let chunk = vec![0x5au8; 64 * 1024];
        let start = Instant::now();
        while start.elapsed() < duration {
            if sending.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    reader
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut total, mut at_warmup) = (0u64, None);
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
        if at_warmup.is_none() && start.elapsed() >= WARMUP {
            at_warmup = Some((total, Instant::now()));
        }
        if start.elapsed() >= WARMUP + WINDOW {
            break;
        }
    }
    let (first, t0) = at_warmup.expect("data flowed past the warm-up");
    let goodput = (total - first) as f64 / t0.elapsed().as_secs_f64();
    let (retransmitted1, sent1) = segments(writer_ns);
    drop(reader);
    writing.join().expect("writer");
    Bulk {
        goodput,
        retransmitted: retransmitted1 - retransmitted0,
        sent: sent1 - sent0,
    }
}

/// TcpRetransSegs and OutSegs of `ns`.
fn segments(ns: &Namespace) -> (u64, u64) {
    let segments =
        shaper_testbed::tcp_segments::Segments::read(ns).unwrap_or_else(|e| panic!("{e}"));
    (segments.retransmitted, segments.sent)
}
