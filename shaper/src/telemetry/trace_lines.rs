//! What `shaper trace` prints for each event of the ring buffer: one JSON object per line
//! (`--json`), or one line of text.

use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use shaper_common::{NO_RULE, TraceEvent, VERDICT_DROP, VERDICT_WOULD_DROP};

use crate::{
    Direction,
    datapath::classifier::{PROTOCOLS, Proto},
};

/// One traced packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLine {
    /// When the hook saw it, nanoseconds since the Unix epoch (from the kernel's monotonic
    /// stamp, moved onto the wall clock when printed).
    pub time_unix_ns: u64,
    pub iface: String,
    pub direction: Direction,
    pub proto: Proto,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// Wire bytes of every segment.
    pub bytes: u64,
    pub segments: u32,
    /// `pass`, `drop` or `would-drop`.
    pub verdict: String,
    /// The governing rule's id, `null` without one.
    pub rule: Option<u16>,
    /// Bytes in the rule's bucket after the packet, `null` without a rule.
    pub bucket_bytes: Option<u64>,
}

impl TraceLine {
    /// The line of `event`; `interfaces` names the slots (from the daemon), and
    /// `monotonic_to_unix_ns` is added to the kernel's stamp. `None` for an event that names
    /// no direction or protocol the program has.
    pub fn new(
        event: &TraceEvent,
        interfaces: &[String],
        monotonic_to_unix_ns: i128,
    ) -> Option<Self> {
        let direction = *Direction::BOTH.get(usize::from(event.direction))?;
        let proto = *PROTOCOLS.get(usize::from(event.proto))?;
        let v6 = Ipv6Addr::from(event.remote);
        let remote = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
        let rule = (event.rule != NO_RULE).then_some(event.rule);
        Some(Self {
            time_unix_ns: (i128::from(event.time_ns) + monotonic_to_unix_ns).max(0) as u64,
            iface: interfaces
                .get(event.slot as usize)
                .cloned()
                .unwrap_or_default(),
            direction,
            proto,
            local_port: event.local_port,
            remote,
            remote_port: event.remote_port,
            bytes: event.bytes,
            segments: event.segments,
            verdict: match event.verdict {
                VERDICT_DROP => "drop",
                VERDICT_WOULD_DROP => "would-drop",
                _ => "pass",
            }
            .to_owned(),
            rule,
            // A `--per-remote` rule's packet: its remote's bucket is not read.
            bucket_bytes: rule
                .map(|_| event.bucket_bytes)
                .filter(|&bytes| bytes != shaper_common::NO_BUCKET_BYTES),
        })
    }

    /// `12:34:56.789012 eth0 ingress udp 9090 <- 10.0.0.7:41234 1042 B 1 seg pass rule 3
    /// bucket 180000 B` (UTC).
    pub fn text(&self) -> String {
        let seconds = self.time_unix_ns / 1_000_000_000;
        let micros = self.time_unix_ns % 1_000_000_000 / 1000;
        let day = seconds % 86_400;
        let arrow = if self.direction == Direction::Ingress {
            "<-"
        } else {
            "->"
        };
        let remote = match self.remote {
            IpAddr::V4(a) => format!("{a}:{}", self.remote_port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.remote_port),
        };
        let mut line = format!(
            "{:02}:{:02}:{:02}.{micros:06} {} {} {} {} {arrow} {remote} {} B {} seg {}",
            day / 3600,
            day % 3600 / 60,
            day % 60,
            self.iface,
            self.direction.name(),
            self.proto,
            self.local_port,
            self.bytes,
            self.segments,
            self.verdict
        );
        if let (Some(rule), Some(bucket)) = (self.rule, self.bucket_bytes) {
            line.push_str(&format!(" rule {rule} bucket {bucket} B"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_as_its_line() {
        let mut remote = [0u8; 16];
        remote[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 7]);
        let event = TraceEvent {
            time_ns: 5_000_000_000,
            bytes: 1042,
            bucket_bytes: 180_000,
            remote,
            slot: 0,
            segments: 1,
            local_port: 9090,
            remote_port: 41234,
            rule: 3,
            direction: 0,
            proto: 1,
            verdict: VERDICT_DROP,
            _pad: [0; 7],
        };
        // 1970-01-01 12:34:56.789012 once moved onto the wall clock.
        let offset = 45_296_789_012_000i128 - 5_000_000_000;
        let line = TraceLine::new(&event, &["eth0".to_owned()], offset).unwrap();
        assert_eq!(
            line.text(),
            "12:34:56.789012 eth0 ingress udp 9090 <- 10.0.0.7:41234 1042 B 1 seg drop rule 3 \
             bucket 180000 B"
        );
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["remote"], "10.0.0.7");
        assert_eq!(json["verdict"], "drop");
        assert_eq!(json["rule"], 3);
    }
}
