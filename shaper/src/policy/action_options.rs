//! The options that belong to some actions only: `--ecn` to `drop`, `--per-remote` to `drop` and
//! `observe`, `--queue` to `shape`. Checked
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
        "--per-remote (per_remote = true) applies to `drop` and `observe` rules: a `shape` rule \
         queues in one HTB class, which has one rate for every remote"
    )]
    PerRemoteNeedsBucket,
    #[error("--queue (queue = ...) applies to `shape` rules only, not to `{action}`")]
    QueueNeedsShape { action: Action },
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
        let problem = if spec.action == Action::Shape {
            Some("polices (drop, observe) and cannot shape: no HTB class is chosen for it")
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
            _ => "queues instead of dropping: the queue, not a mark, paces the sender",
        };
        return Err(ActionOptionError::EcnNeedsDrop {
            action: spec.action,
            why,
        });
    }
    if spec.per_remote && spec.action == Action::Shape {
        return Err(ActionOptionError::PerRemoteNeedsBucket);
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
    let queue_bytes = match spec.queue_bytes {
        None => default_queue(limit.rate_bps, aggregate).min(MAX_QUEUE_BYTES),
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
    };
    Ok(Limit {
        ecn: false,
        per_remote: false,
        queue_bytes,
        ..limit
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
        for action in [Action::Observe, Action::Shape] {
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
    fn queue_is_for_shape_rules_only() {
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
