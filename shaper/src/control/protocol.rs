//! The control protocol: what the CLI asks the daemon, and what it answers. One JSON object per
//! line each way; the wire format of each message is pinned by the tests below.

use serde::{Deserialize, Serialize};

use crate::{
    datapath::watched_ports::{TalkersReading, WatchSpec},
    policy::{
        rule_table::{DirSel, PortRange, RuleKey, RuleSpec, TraceVerdicts},
        rules_in_force::RuleView,
    },
    telemetry::{counter_snapshot::Snapshot, exposure::Exposure},
};

/// Where the daemon listens unless told otherwise (`--socket`, or `SHAPER_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/shaper/shaper.sock";

/// Requests are small; anything larger is a client bug or abuse and is refused unread.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every counter that has seen traffic.
    Stats,
    /// Add a rule, or replace the limit of the rule with the same key.
    LimitSet { rule: RuleSpec },
    /// Remove the rule with exactly this key.
    LimitRm { rule: RuleKey },
    /// Every rule with its counters.
    LimitLs,
    /// Listening ports, who can reach them and who did; probed closed ports.
    Exposure,
    /// Account these ports per remote address.
    Watch { watch: WatchSpec },
    /// Remove the watch with exactly this spec.
    Unwatch { watch: WatchSpec },
    /// Every watch.
    WatchLs,
    /// The per-remote counters of watched ports (of `port` only, if given).
    Talkers {
        #[serde(default)]
        port: Option<u16>,
    },
    /// Start tracing: the trace lasts as long as the connection that asked for it stays open,
    /// and the daemon ends it when the connection closes, however the client went away.
    TraceOn { trace: TraceSpec },
    /// End trace `session` (the daemon does so itself when the trace's connection closes).
    TraceOff { session: u64 },
    /// Set the level of the program's aya-log lines: off, error, warn, info, debug, trace.
    LogLevel { level: String },
}

/// What `shaper trace` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    pub ports: PortRange,
    #[serde(default)]
    pub dir: DirSel,
    #[serde(default)]
    pub verdict: TraceVerdicts,
    /// Events each CPU may send per second; the rest are counted as lost.
    pub per_cpu_per_second: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Stats(Snapshot),
    /// The rule as set; `replaced` when it existed (its counters are kept).
    RuleSet {
        rule: RuleView,
        replaced: bool,
    },
    /// The removed rule with its final counters.
    RuleRemoved {
        rule: RuleView,
    },
    Rules {
        rules: Vec<RuleView>,
    },
    Exposure(Exposure),
    Error {
        message: String,
    },
    /// The watches in force (after a `watch` or `unwatch`, or for `watch_ls`).
    Watches {
        watches: Vec<WatchSpec>,
    },
    Talkers(TalkersReading),
    /// A trace started: its events arrive in the ring buffer pinned at `events`, its lost
    /// events are counted in the per-CPU array pinned at `lost`. `interfaces` names the
    /// interface slots events carry.
    TraceOn {
        session: u64,
        events: std::path::PathBuf,
        lost: std::path::PathBuf,
        interfaces: Vec<String>,
    },
    TraceOff {
        session: u64,
    },
    /// The level of the program's log lines now in force.
    LogLevel {
        level: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_an_op_tag() {
        assert_eq!(
            serde_json::to_string(&Request::Stats).unwrap(),
            r#"{"op":"stats"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"stats"}"#).unwrap(),
            Request::Stats
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }

    #[test]
    fn the_exposure_request_is_one_more_op() {
        assert_eq!(
            serde_json::to_string(&Request::Exposure).unwrap(),
            r#"{"op":"exposure"}"#
        );
    }

    #[test]
    fn limit_requests_refuse_unknown_fields_and_bad_ports() {
        let ok = r#"{"op":"limit_set","rule":{"key":{"ports":"8000-8099","dir":"egress"},"rate_bps":8000000}}"#;
        match serde_json::from_str::<Request>(ok).unwrap() {
            Request::LimitSet { rule } => {
                assert_eq!(rule.key.ports.to_string(), "8000-8099");
                assert_eq!(rule.burst_bytes, None);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            // A misspelt burst must not silently become the default burst.
            r#"{"op":"limit_set","rule":{"key":{"ports":"80"},"rate_bps":8000000,"burts_bytes":1}}"#,
            r#"{"op":"limit_rm","rule":{"ports":"80","rate_bps":1}}"#,
            r#"{"op":"limit_rm","rule":{"ports":"90-80"}}"#,
            r#"{"op":"limit_rm","rule":{"ports":"80","dir":"up"}}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn watch_trace_and_log_requests_have_their_wire_format() {
        let watch = r#"{"op":"watch","watch":{"ports":"9000-9099","dir":"ingress"}}"#;
        match serde_json::from_str::<Request>(watch).unwrap() {
            Request::Watch { watch } => assert_eq!(watch.to_string(), "port 9000-9099 dir ingress"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"talkers"}"#).unwrap(),
            Request::Talkers { port: None }
        );
        let trace = r#"{"op":"trace_on","trace":{"ports":"7001","verdict":"would_drop","per_cpu_per_second":100}}"#;
        match serde_json::from_str::<Request>(trace).unwrap() {
            Request::TraceOn { trace } => {
                assert_eq!(trace.verdict, TraceVerdicts::WouldDrop);
                assert_eq!(trace.dir, DirSel::Both);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"op":"trace_on","trace":{"ports":"7001"}}"#,
            r#"{"op":"watch","watch":{"ports":"9090","iface":"eth0","side":"remote"}}"#,
            r#"{"op":"log_level"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
