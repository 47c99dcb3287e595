//! The options that belong to some actions only: `--ecn` to `drop`, `--per-remote` to `drop` and
//! `observe`, `--queue` to `shape` and `pace`, `--burst` to all but `pace`. Checked
//! here, once for the CLI, the config file, the control socket and the state file, so a bad
//! combination gets the same clear error wherever it comes from.

use crate::{
    datapath::kernel_support,
    policy::{
        rates_and_sizes,
        rule_table::{Action, DirSel, Limit, PortRange, ProtoSel, RuleSpec, Side},
    },
};

/// How long a shape rule's default queue may make a packet wait at the rule's rate: bounded, so
/// shaping never turns into seconds of bufferbloat.
pub const DEFAULT_QUEUE_MS: u64 = 100;

/// The smallest queue a shape rule may have where the largest aggregate the hooks see is
/// `aggregate` bytes: two of them. HTB and its bfifo leaf take a GSO aggregate whole
/// (`qdisc_pkt_len` is its wire length, net/core/dev.c `qdisc_pkt_len_init`), so a smaller
/// queue would drop every aggregate that arrives while another waits.
pub fn min_queue(aggregate: u64) -> u64 {
    2 * aggregate
}

/// Aggregates the default queue holds at least. A remote TCP sender's segments reach an ingress
/// shape rule as 64 KiB GSO aggregates (veth passes TSO skbs whole), and a full queue drops a
/// whole one, ~44 segments. Measured through an ingress shape rule of 8 Mbit/s (a single TCP
/// upload, 5 s): a 128 KiB queue (100 ms, 2 aggregates) made the sender retransmit 29% of its
/// segments, 256 KiB 10%, 512 KiB and 2 MiB none.
pub const DEFAULT_QUEUE_AGGREGATES: u64 = 8;

/// The queue a shape rule gets when none is given: `DEFAULT_QUEUE_MS` of the rate, at least
/// [`DEFAULT_QUEUE_AGGREGATES`] of the largest aggregate (which at low rates is longer than
/// `DEFAULT_QUEUE_MS`: 512 KiB is 0.5 s at 8 Mbit/s).
pub fn default_queue(rate_bps: u64, aggregate: u64) -> u64 {
    ((rate_bps / 8).saturating_mul(DEFAULT_QUEUE_MS) / 1000)
        .max(DEFAULT_QUEUE_AGGREGATES * aggregate)
}

/// The largest queue a shape rule may have: bfifo's limit is a u32 (`struct tc_fifo_qopt`).
pub const MAX_QUEUE_BYTES: u64 = u32::MAX as u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionOptionError {
    #[error("--ecn (ecn = true) applies to `drop` rules only: an `{action}` rule {why}")]
    EcnNeedsDrop { action: Action, why: &'static str },
    #[error("an `unplaced` rule governs the packets no port was found for, so it {problem}")]
    Unplaced { problem: &'static str },
    #[error(
        "--per-remote (per_remote = true) applies to `drop` and `observe` rules: a `shape` or \
         `pace` rule queues at one rate for every remote"
    )]
    PerRemoteNeedsBucket,
    #[error("--queue (queue = ...) applies to `shape` and `pace` rules only, not to `{action}`")]
    QueueNeedsShape { action: Action },
    #[error(
        "a `pace` rule applies to egress only (--dir egress): it sets each packet's departure \
         time, which only a queue on the way out (the `fq` root shaper installs) can keep; \
         police ingress with `--action drop`, or queue it with `--action shape`"
    )]
    PaceNeedsEgress,
    #[error(
        "--burst (burst = ...) does not apply to a `pace` rule: it spaces every packet at the \
         rate, from the first; --queue sets how much may wait"
    )]
    PaceTakesNoBurst,
    #[error(
        "queue {value}: {seconds} s at the rate; a `pace` rule's packets may be scheduled at \
         most {max_seconds} s ahead (`fq` drops beyond its 10 s horizon): at most {max}"
    )]
    PaceQueueBeyondHorizon {
        value: String,
        seconds: String,
        max_seconds: u64,
        max: String,
    },
    #[error(
        "queue {value}: below the minimum {min}: the hooks can see aggregates (GSO/GRO) of \
         {aggregate} bytes, which a queue takes whole"
    )]
    QueueTooSmall {
        value: String,
        min: String,
        aggregate: u64,
    },
    #[error("queue {value}: above the largest queue a rule may have, {max}")]
    QueueTooLarge { value: String, max: String },
    #[error(
        "an ingress `shape` rule needs Linux >= 6.5, and this is {kernel}: before 6.5 the \
         kernel drops every packet the program redirects to the IFB device that queues them \
         (see the guide's *Supported kernels*, docs/src/guide/prerequisites.md). Shape egress \
         only (--dir egress), or police ingress with `--action drop` (with --ecn for ECN-capable TCP)"
    )]
    IngressShapeNeedsKernel { kernel: String },
}

/// Adds a spec's action options to its validated `limit`, or says why they do not fit.
pub fn apply(spec: &RuleSpec, limit: Limit, aggregate: u64) -> Result<Limit, ActionOptionError> {
    if spec.key.side == Side::Unplaced {
        let problem = if matches!(spec.action, Action::Shape | Action::Pace) {
            Some("polices (drop, observe) and cannot shape or pace: it has no queue")
        } else if spec.ecn {
            Some("takes no --ecn: it polices with drops")
        } else if spec.per_remote {
            Some("takes no --per-remote: it has one bucket for every packet it governs")
        } else if spec.key.proto != ProtoSel::Any {
            Some("takes no --proto: its packets may be TCP, UDP or not yet known")
        } else if spec.key.ports != PortRange::ALL {
            Some("names no ports")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ActionOptionError::Unplaced { problem });
        }
    }
    if spec.ecn && spec.action != Action::Drop {
        let why = match spec.action {
            Action::Observe => "never drops, so it has no congestion to signal",
            Action::Pace => "delays instead of dropping: the departure times pace the sender",
            _ => "queues instead of dropping: the queue, not a mark, paces the sender",
        };
        return Err(ActionOptionError::EcnNeedsDrop {
            action: spec.action,
            why,
        });
    }
    if spec.per_remote && matches!(spec.action, Action::Shape | Action::Pace) {
        return Err(ActionOptionError::PerRemoteNeedsBucket);
    }
    if spec.action == Action::Pace {
        return pace(spec, limit, aggregate);
    }
    if spec.action != Action::Shape {
        if spec.queue_bytes.is_some() {
            return Err(ActionOptionError::QueueNeedsShape {
                action: spec.action,
            });
        }
        return Ok(Limit {
            ecn: spec.ecn,
            per_remote: spec.per_remote,
            queue_bytes: 0,
            ..limit
        });
    }
    if spec.key.dir != DirSel::Egress && !kernel_support::redirect_to_ifb_delivers() {
        return Err(ActionOptionError::IngressShapeNeedsKernel {
            kernel: kernel_support::release(),
        });
    }
    let queue_bytes = queue_bytes(spec, limit.rate_bps, aggregate)?;
    Ok(Limit {
        ecn: false,
        per_remote: false,
        queue_bytes,
        ..limit
    })
}

/// A `pace` rule's limit: egress only, no burst, a queue that `fq` can hold (its horizon,
/// [`shaper_common::pace::horizon_ns`], is the queue's time at the rate).
fn pace(spec: &RuleSpec, limit: Limit, aggregate: u64) -> Result<Limit, ActionOptionError> {
    if spec.key.dir != DirSel::Egress {
        return Err(ActionOptionError::PaceNeedsEgress);
    }
    if spec.burst_bytes.is_some() {
        return Err(ActionOptionError::PaceTakesNoBurst);
    }
    let max_seconds = shaper_common::pace::MAX_HORIZON_NS / 1_000_000_000;
    let max = (limit.rate_bps / 8).saturating_mul(max_seconds);
    let queue_bytes = match spec.queue_bytes {
        // The default queue, where its time at the rate is beyond fq's horizon (below 420
        // kbit/s for 512 KiB), is cut to the horizon: explicit queues that long are refused.
        None => queue_bytes(spec, limit.rate_bps, aggregate)?.min(max),
        Some(queue) if queue > max => {
            return Err(ActionOptionError::PaceQueueBeyondHorizon {
                value: rates_and_sizes::format_size(queue),
                seconds: format!("{:.1}", queue as f64 * 8.0 / limit.rate_bps.max(1) as f64),
                max_seconds,
                max: rates_and_sizes::format_size(max),
            });
        }
        Some(_) => queue_bytes(spec, limit.rate_bps, aggregate)?,
    };
    Ok(Limit {
        burst_bytes: 0,
        ecn: false,
        per_remote: false,
        queue_bytes,
        ..limit
    })
}

/// The queue of a `shape` or `pace` rule: the one given, within bounds, or the default.
fn queue_bytes(spec: &RuleSpec, rate_bps: u64, aggregate: u64) -> Result<u64, ActionOptionError> {
    Ok(match spec.queue_bytes {
        None => default_queue(rate_bps, aggregate).min(MAX_QUEUE_BYTES),
        Some(queue) if queue < min_queue(aggregate) => {
            return Err(ActionOptionError::QueueTooSmall {
                value: rates_and_sizes::format_size(queue),
                min: rates_and_sizes::format_size(min_queue(aggregate)),
                aggregate,
            });
        }
        Some(queue) if queue > MAX_QUEUE_BYTES => {
            return Err(ActionOptionError::QueueTooLarge {
                value: rates_and_sizes::format_size(queue),
                max: rates_and_sizes::format_size(MAX_QUEUE_BYTES),
            });
        }
        Some(queue) => queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rule_table::{DirSel, PortRange, RuleKey, make_limit};

    fn spec(action: Action, dir: DirSel, ecn: bool, queue: Option<u64>) -> RuleSpec {
        RuleSpec {
            key: RuleKey {
                dir,
                ..RuleKey::local(PortRange::single(80))
            },
            rate_bps: 8_000_000,
            burst_bytes: None,
            action,
            ecn,
            per_remote: false,
            queue_bytes: queue,
        }
    }

    fn check(spec: &RuleSpec) -> Result<Limit, ActionOptionError> {
        let limit = make_limit(spec.rate_bps, None, spec.action, 65536, "").unwrap();
        apply(spec, limit, 65536)
    }

    #[test]
    fn an_unplaced_rule_polices_and_takes_no_ports_protocol_ecn_or_shaping() {
        let limit = Limit {
            rate_bps: 1000,
            burst_bytes: 1 << 20,
            action: Action::Drop,
            ecn: false,
            per_remote: false,
            queue_bytes: 0,
        };
        let spec = |change: fn(&mut RuleSpec)| {
            let mut spec = RuleSpec {
                key: crate::policy::rule_table::RuleKey::unplaced(DirSel::Both, None),
                rate_bps: 1000,
                burst_bytes: None,
                action: Action::Drop,
                ecn: false,
                per_remote: false,
                queue_bytes: None,
            };
            change(&mut spec);
            apply(&spec, limit, 65536)
        };
        assert!(spec(|_| ()).is_ok());
        assert!(spec(|s| s.action = Action::Observe).is_ok());
        for refused in [
            spec(|s| s.action = Action::Shape),
            spec(|s| s.ecn = true),
            spec(|s| s.per_remote = true),
            spec(|s| s.key.proto = ProtoSel::Udp),
            spec(|s| s.key.ports = PortRange::single(53)),
        ] {
            let error = refused.unwrap_err();
            assert!(
                matches!(error, ActionOptionError::Unplaced { .. }),
                "{error}"
            );
            assert!(error.to_string().starts_with("an `unplaced` rule governs"));
        }
    }

    #[test]
    fn ecn_is_for_drop_rules_only() {
        assert!(
            check(&spec(Action::Drop, DirSel::Both, true, None))
                .unwrap()
                .ecn
        );
        for action in [Action::Observe, Action::Shape, Action::Pace] {
            let error = check(&spec(action, DirSel::Egress, true, None)).unwrap_err();
            assert!(
                matches!(error, ActionOptionError::EcnNeedsDrop { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn per_remote_is_for_drop_and_observe_rules() {
        for action in [Action::Drop, Action::Observe] {
            let mut asked = spec(action, DirSel::Both, false, None);
            asked.per_remote = true;
            assert!(check(&asked).unwrap().per_remote);
        }
        let mut shape = spec(Action::Shape, DirSel::Egress, false, None);
        shape.per_remote = true;
        assert_eq!(
            check(&shape).unwrap_err(),
            ActionOptionError::PerRemoteNeedsBucket
        );
        let mut unplaced = spec(Action::Drop, DirSel::Both, false, None);
        unplaced.key = RuleKey::unplaced(DirSel::Both, None);
        unplaced.per_remote = true;
        let error = check(&unplaced).unwrap_err();
        assert!(error.to_string().contains("no --per-remote"), "{error}");
    }

    #[test]
    fn a_pace_rule_is_egress_only_without_burst_or_per_remote_and_its_queue_is_its_horizon() {
        for dir in [DirSel::Both, DirSel::Ingress] {
            assert_eq!(
                check(&spec(Action::Pace, dir, false, None)).unwrap_err(),
                ActionOptionError::PaceNeedsEgress
            );
        }
        let mut burst = spec(Action::Pace, DirSel::Egress, false, None);
        burst.burst_bytes = Some(1 << 20);
        assert_eq!(
            check(&burst).unwrap_err(),
            ActionOptionError::PaceTakesNoBurst
        );
        let mut per_remote = spec(Action::Pace, DirSel::Egress, false, None);
        per_remote.per_remote = true;
        assert_eq!(
            check(&per_remote).unwrap_err(),
            ActionOptionError::PerRemoteNeedsBucket
        );
        let error = check(&spec(Action::Pace, DirSel::Egress, true, None)).unwrap_err();
        assert!(
            error.to_string().contains("delays instead of dropping"),
            "{error}"
        );
        // 8 Mbit/s: the default queue is shape's, 8 aggregates (512 KiB), and no burst.
        let limit = check(&spec(Action::Pace, DirSel::Egress, false, None)).unwrap();
        assert_eq!((limit.queue_bytes, limit.burst_bytes), (512 * 1024, 0));
        assert_eq!(limit.config().fill_ns, 524_288_000, "512 KiB at 1 MB/s");
        // 10 s at 8 Mbit/s is 10 MB: a larger queue is beyond fq's horizon.
        assert!(check(&spec(Action::Pace, DirSel::Egress, false, Some(10_000_000))).is_ok());
        let error =
            check(&spec(Action::Pace, DirSel::Egress, false, Some(10_000_001))).unwrap_err();
        assert!(
            matches!(error, ActionOptionError::PaceQueueBeyondHorizon { .. }),
            "{error}"
        );
        // At 256 kbit/s the default queue (16 s) is cut to the horizon.
        let mut slow = spec(Action::Pace, DirSel::Egress, false, None);
        slow.rate_bps = 256_000;
        let limit = check(&slow).unwrap();
        assert_eq!(limit.queue_bytes, 320_000);
        assert_eq!(limit.config().fill_ns, shaper_common::pace::MAX_HORIZON_NS);
    }

    #[test]
    fn queue_is_for_shape_and_pace_rules_only() {
        let error = check(&spec(Action::Drop, DirSel::Both, false, Some(1 << 20))).unwrap_err();
        assert_eq!(
            error,
            ActionOptionError::QueueNeedsShape {
                action: Action::Drop
            }
        );
    }

    #[test]
    fn default_queue_is_100_ms_of_the_rate_and_at_least_eight_aggregates() {
        // 8 Mbit/s is 1 MB/s: 100 ms is 100 KB, below eight 64 KiB aggregates.
        let limit = check(&spec(Action::Shape, DirSel::Egress, false, None)).unwrap();
        assert_eq!(limit.queue_bytes, 8 * 65536);
        assert_eq!(default_queue(800_000_000, 65536), 10_000_000);
    }

    #[test]
    fn a_queue_below_two_aggregates_is_refused() {
        let error = check(&spec(Action::Shape, DirSel::Egress, false, Some(65536))).unwrap_err();
        assert!(
            matches!(error, ActionOptionError::QueueTooSmall { .. }),
            "{error}"
        );
        let ok = check(&spec(Action::Shape, DirSel::Egress, false, Some(1 << 20))).unwrap();
        assert_eq!(ok.queue_bytes, 1 << 20);
    }
}
