//! A UDP flood at twelve times a 1 MB/s limit on one port, and the check of a whole run against
//! the limit: what the restart and upgrade tests drive while one daemon hands the datapath to
//! the next.

use std::time::{Duration, Instant};

use super::{
    netns::VethPair,
    traffic::{self, WIRE, receiver_on, sender_to},
};

/// The flooded port.
pub const PORT: u16 = 7301;
/// 1 MB/s with a 256 KiB burst, as in the restart issue's measurement.
pub const LIMIT: &str = "8mbit";
pub const RATE: f64 = 1_000_000.0;
pub const BURST: &str = "256KiB";
pub const BURST_BYTES: f64 = 262_144.0;
/// Offered: twelve times the limit.
const OFFERED: u64 = 12_000_000;
/// Received over a whole run may exceed rate × time + burst by this much (timing at the edges).
const SLACK: f64 = 0.02;
/// The longest a flood runs if its test never stops it (it fails first).
pub const FLOOD_BOUND: Duration = Duration::from_secs(60);

/// The CLI's arguments that set the flooded port's limit (UDP, both directions).
pub const LIMIT_ARGS: [&str; 9] = [
    "limit", "set", "7301", "--rate", LIMIT, "--burst", BURST, "--proto", "udp",
];

/// The flood and what arrived of it, from the moment it started.
pub struct Flood {
    pub receiver: traffic::Receiver,
    sender: traffic::Sender,
    start: Instant,
}

impl Flood {
    /// Floods [`PORT`] on the pair's side `a` from side `b` for at most `duration`.
    pub fn start(pair: &VethPair, duration: Duration) -> Self {
        let receiver = receiver_on(pair, PORT);
        let sender = sender_to(pair, PORT, OFFERED, duration);
        Self {
            receiver,
            sender,
            start: Instant::now(),
        }
    }

    /// Stops the flood now and checks the whole run against the limit: at most rate × time +
    /// burst (+2%) arrived, and the flood really was >= 10× the limit. Stopped, not awaited: a
    /// slow machine (the VM test bed emulates its CPUs) takes seconds to start a daemon, and
    /// the flood must still be running when the new one has taken over. Returns the bytes
    /// beyond rate × time + burst (0 when within).
    pub fn finish(self, what: &str) -> f64 {
        let Self {
            receiver,
            sender,
            start,
        } = self;
        let offered = sender.finish().expect("sender");
        let elapsed = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(200));
        let received = (receiver.count() * WIRE) as f64;
        let allowed = RATE * elapsed + BURST_BYTES;
        let offered_rate = (offered * WIRE) as f64 / elapsed;
        let beyond = (received - allowed).max(0.0);
        println!(
            "{what}: received {received:.0} B in {elapsed:.2} s (allowed {allowed:.0} B: rate x \
             time + burst), {beyond:.0} B beyond the limit; offered {:.1}x the limit",
            offered_rate / RATE
        );
        assert!(
            offered_rate >= 10.0 * RATE * 0.9,
            "{what}: the flood reached only {offered_rate:.0} B/s"
        );
        assert!(
            received <= allowed * (1.0 + SLACK),
            "{what}: {received} B arrived, more than rate x time + burst = {allowed}"
        );
        assert!(
            received >= RATE * elapsed * 0.8,
            "{what}: only {received} B arrived: the port was blocked, not policed"
        );
        beyond
    }
}
