//! `shaper limit set|rm|ls`: change and list the running daemon's rules.

use std::{fmt::Write as _, path::Path};

use anyhow::bail;
use clap::{Args, Subcommand};
use shaper::{
    control::{self, Request, Response},
    policy::rates_and_sizes,
    policy::rule_table::{Action, DirSel, PortRange, ProtoSel, RuleKey, RuleSpec, Side},
    policy::rules_in_force::RuleView,
    types::ports::UNPLACED,
};

use super::keyword::keyword;

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Limit a port or port range; setting the same rule again replaces its limit and keeps
    /// its counters.
    Set(SetArgs),
    /// Remove the rule with exactly these ports, --dir, --proto, --iface and --remote.
    Rm(KeyArgs),
    /// List the rules with their passed, dropped and would-drop counters.
    Ls(LsArgs),
}

/// What names a rule.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// A port (9090) or an inclusive range (8000-8099) sharing one bucket; or `unplaced`: the
    /// packets no port was found for (later fragments whose first was not seen, IPv6 header
    /// chains over the limit, headers cut short), with --dir and --iface only.
    #[arg(value_name = "PORTS", value_parser = parse_ports)]
    ports: RulePorts,

    /// The hook direction(s); each direction has its own bucket.
    #[arg(long, value_parser = keyword::<DirSel>(), default_value_t = DirSel::Both)]
    dir: DirSel,

    #[arg(long, value_parser = keyword::<ProtoSel>(), default_value_t = ProtoSel::Any)]
    proto: ProtoSel,

    /// One interface the daemon is attached to; default: all of them.
    #[arg(long, value_name = "IFACE")]
    iface: Option<String>,

    /// The ports are the remote port (what this host sends to, or receives from, a remote
    /// service), not the local one.
    #[arg(long)]
    remote: bool,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    key: KeyArgs,

    /// Rate: kbit, mbit, gbit (bits/s) or B/s, KB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s; a bare
    /// number is bytes per second.
    #[arg(long, value_parser = parse_rate)]
    rate: u64,

    /// Bucket depth: B, KB, KiB, MB, MiB, GB, GiB. Default: 300 ms of the rate, and at least
    /// three times the largest GSO/GRO aggregate of the interfaces (192 KiB for 64 KiB ones).
    /// Not for `--action pace`, which spaces every packet.
    #[arg(long, value_parser = parse_size)]
    burst: Option<u64>,

    /// drop: police; observe: pass everything and count what drop would have dropped; shape:
    /// queue the rule's packets in an HTB class at the rate (ingress through an IFB device);
    /// pace (egress): give each packet a departure time at the rate, kept by an fq root.
    #[arg(long, value_parser = keyword::<Action>(), default_value_t = Action::Drop)]
    action: Action,

    /// With `--action drop`: mark ECN-capable packets CE while the bucket holds less than half
    /// the burst; only an empty bucket drops.
    #[arg(long)]
    ecn: bool,

    /// With `--action drop` or `observe`: a bucket per remote address (rate and burst as
    /// given) instead of one for the rule, so one sender cannot use up the limit for the others.
    #[arg(long)]
    per_remote: bool,

    /// With `--action shape`: the class's queue, as a size (B, KB, KiB, ...): a bfifo's limit on
    /// egress, the bound of an fq_codel queue's memory (twice this) on ingress. Default: 100 ms
    /// of the rate, at least eight of the largest GSO/GRO aggregate (512 KiB); at least two.
    /// With `--action pace`: what may be scheduled ahead (its time at the rate is the horizon,
    /// at most 10 s); the same default.
    #[arg(long, value_parser = parse_size)]
    queue: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON (schema in the docs' reference/json.md) instead of a table.
    #[arg(long)]
    json: bool,
}

/// What PORTS names.
#[derive(Debug, Clone, Copy)]
enum RulePorts {
    Range(PortRange),
    Unplaced,
}

fn parse_ports(text: &str) -> Result<RulePorts, String> {
    if text == UNPLACED {
        return Ok(RulePorts::Unplaced);
    }
    text.parse()
        .map(RulePorts::Range)
        .map_err(|e: shaper::policy::rule_table::PortRangeError| format!("{e}, or `{UNPLACED}`"))
}

fn parse_rate(text: &str) -> Result<u64, String> {
    rates_and_sizes::parse_rate(text).map_err(|e| e.to_string())
}

fn parse_size(text: &str) -> Result<u64, String> {
    rates_and_sizes::parse_size(text).map_err(|e| e.to_string())
}

impl KeyArgs {
    fn key(self) -> anyhow::Result<RuleKey> {
        let ports = match self.ports {
            RulePorts::Range(ports) => ports,
            RulePorts::Unplaced => {
                if self.remote {
                    bail!("`unplaced` names no port, local or remote: drop --remote");
                }
                if self.proto != ProtoSel::Any {
                    bail!(
                        "`unplaced` takes no --proto: its packets may be TCP, UDP or not yet known"
                    );
                }
                return Ok(RuleKey::unplaced(self.dir, self.iface));
            }
        };
        Ok(RuleKey {
            ports,
            side: if self.remote {
                Side::Remote
            } else {
                Side::Local
            },
            dir: self.dir,
            proto: self.proto,
            iface: self.iface,
        })
    }
}

pub fn limit(command: LimitCommand, socket: &Path) -> anyhow::Result<()> {
    match command {
        LimitCommand::Set(args) => {
            let rule = RuleSpec {
                key: args.key.key()?,
                rate_bps: args.rate,
                burst_bytes: args.burst,
                action: args.action,
                ecn: args.ecn,
                per_remote: args.per_remote,
                queue_bytes: args.queue,
            };
            match control::request(socket, &Request::LimitSet { rule })? {
                Response::RuleSet { rule, replaced } => {
                    let what = if replaced {
                        "replaced (counters kept)"
                    } else {
                        "added"
                    };
                    println!("rule {} {what}: {}", rule.id, describe(&rule));
                }
                other => bail!("unexpected reply from the daemon: {other:?}"),
            }
        }
        LimitCommand::Rm(args) => {
            match control::request(socket, &Request::LimitRm { rule: args.key()? })? {
                Response::RuleRemoved { rule } => {
                    println!(
                        "rule {} removed: {} (passed {} packets, dropped {}, would-drop {})",
                        rule.id,
                        describe(&rule),
                        rule.passed_packets,
                        rule.dropped_packets,
                        rule.would_drop_packets
                    );
                }
                other => bail!("unexpected reply from the daemon: {other:?}"),
            }
        }
        LimitCommand::Ls(args) => match control::request(socket, &Request::LimitLs)? {
            Response::Rules { rules } => {
                if args.json {
                    let listing = serde_json::json!({ "schema_version": 1, "rules": rules });
                    println!("{}", serde_json::to_string_pretty(&listing)?);
                } else {
                    print!("{}", table(&rules));
                }
            }
            other => bail!("unexpected reply from the daemon: {other:?}"),
        },
    }
    Ok(())
}

fn describe(rule: &RuleView) -> String {
    if rule.side == Side::Unplaced {
        return format!(
            "unplaced dir {} iface {}: rate {} burst {} {}",
            rule.dir,
            rule.iface.as_deref().unwrap_or("all"),
            rule.rate,
            rule.burst,
            rule.action
        );
    }
    format!(
        "{}{} dir {} proto {} iface {}: rate {} burst {} {}{}",
        match rule.side {
            Side::Remote => "remote ",
            Side::Local | Side::Unplaced => "",
        },
        rule.ports,
        rule.dir,
        rule.proto,
        rule.iface.as_deref().unwrap_or("all"),
        rule.rate,
        rule.burst,
        rule.action,
        if rule.per_remote { " per remote" } else { "" }
    )
}

fn table(rules: &[RuleView]) -> String {
    if rules.is_empty() {
        return "no rules; add one with `shaper limit set PORT --rate RATE`\n".into();
    }
    let mut out = String::new();
    let row = |out: &mut String, cells: [&str; 16]| {
        let _ = writeln!(
            out,
            "{:>4} {:<11} {:<8} {:<7} {:<5} {:<10} {:>9} {:>9} {:<7} {:>12} {:>12} {:>12} {:>14} {:<7} {:<12} {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9],
            cells[10],
            cells[11],
            cells[12],
            cells[13],
            cells[14],
            cells[15]
        );
    };
    row(
        &mut out,
        [
            "ID",
            "PORTS",
            "SIDE",
            "DIR",
            "PROTO",
            "IFACE",
            "RATE",
            "BURST",
            "ACTION",
            "PASSED",
            "DROPPED",
            "WOULD-DROP",
            "PASSED-BYTES",
            "ORIGIN",
            "SET-BY",
            "SET-AT",
        ],
    );
    for r in rules {
        // Config rules, and runtime rules saved before actors were recorded, have none.
        let (set_by, set_at) = match &r.set_by {
            Some(actor) => (actor.who(), actor.at.as_str()),
            None => ("-".to_owned(), "-"),
        };
        row(
            &mut out,
            [
                &r.id.to_string(),
                &r.target(),
                r.side.name(),
                r.dir.name(),
                r.proto.name(),
                r.iface.as_deref().unwrap_or("all"),
                &r.rate,
                &r.burst,
                r.action.name(),
                &r.passed_packets.to_string(),
                &r.dropped_packets.to_string(),
                &r.would_drop_packets.to_string(),
                &r.passed_bytes.to_string(),
                r.origin.name(),
                &set_by,
                set_at,
            ],
        );
    }
    out.push_str(&queueing_lines(rules));
    out
}

/// A line under the table for each shape or pace rule (its queue), each `--ecn` rule (its marks) and
/// each `--per-remote` rule (its buckets): figures the other rules do not have.
fn queueing_lines(rules: &[RuleView]) -> String {
    let mut out = String::new();
    for r in rules {
        if r.action == Action::Pace {
            let _ = writeln!(
                out,
                "rule {} pace: sent {} packets ({} bytes) at their departure times, beyond the \
                 horizon {} dropped; scheduled ahead {} bytes of {} (delay {:.1} ms)",
                r.id,
                r.passed_packets,
                r.passed_bytes,
                r.dropped_packets,
                r.backlog_bytes,
                r.queue_bytes,
                queue_delay_ms(r.backlog_bytes, r.rate_bps),
            );
        }
        if r.action == Action::Shape {
            let _ = writeln!(
                out,
                "rule {} shape: queued {} packets ({} bytes), marked CE {}, dropped {} (queue \
                 overflow or CoDel); backlog {} packets / {} bytes of {} (delay {:.1} ms)",
                r.id,
                r.queued_packets,
                r.queued_bytes,
                r.marked_packets,
                r.dropped_packets,
                r.backlog_packets,
                r.backlog_bytes,
                r.queue_bytes,
                queue_delay_ms(r.backlog_bytes, r.rate_bps),
            );
        }
        if r.ecn {
            let _ = writeln!(
                out,
                "rule {} ecn: marked CE {} packets ({} bytes)",
                r.id, r.marked_packets, r.marked_bytes
            );
        }
        if r.per_remote {
            let _ = writeln!(
                out,
                "rule {} per-remote: a bucket of {} at {} for each remote address; {} held now",
                r.id, r.burst, r.rate, r.remote_buckets
            );
        }
    }
    out
}

/// How long `backlog_bytes` take to leave at `rate_bps`: the delay a packet joining the queue
/// now waits.
pub fn queue_delay_ms(backlog_bytes: u64, rate_bps: u64) -> f64 {
    if rate_bps == 0 {
        return 0.0;
    }
    backlog_bytes as f64 * 8.0 * 1000.0 / rate_bps as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ports: &str, side: Side, iface: Option<&str>, action: Action) -> RuleView {
        RuleView {
            id: 3,
            ports: ports.parse().unwrap(),
            side,
            dir: DirSel::Egress,
            proto: ProtoSel::Udp,
            iface: iface.map(Into::into),
            rate_bps: 8_000_000,
            rate: "8mbit".into(),
            burst_bytes: 300_000,
            burst: "300KB".into(),
            action,
            passed_packets: 10,
            passed_bytes: 15_000,
            dropped_packets: 2,
            dropped_bytes: 3_000,
            would_drop_packets: 1,
            would_drop_bytes: 1_500,
            ingress_bucket_bytes: 0,
            egress_bucket_bytes: 0,
            origin: shaper::policy::config_reload::Origin::Runtime,
            ecn: false,
            per_remote: false,
            remote_buckets: 0,
            marked_packets: 0,
            marked_bytes: 0,
            queue_bytes: 0,
            queued_packets: 0,
            queued_bytes: 0,
            backlog_packets: 0,
            backlog_bytes: 0,
            set_by: None,
        }
    }

    #[test]
    fn shape_ecn_and_per_remote_rules_get_a_line_under_the_table() {
        let shaped = RuleView {
            queued_packets: 6611,
            queued_bytes: 6_611_000,
            backlog_packets: 73,
            backlog_bytes: 73_000,
            queue_bytes: 131_072,
            ..view("7201", Side::Local, None, Action::Shape)
        };
        let marking = RuleView {
            ecn: true,
            per_remote: true,
            remote_buckets: 12,
            marked_packets: 768,
            marked_bytes: 98_304,
            ..view("7202", Side::Local, None, Action::Drop)
        };
        let plain = view("7203", Side::Local, None, Action::Drop);
        assert_eq!(
            queueing_lines(&[shaped, marking, plain]),
            "rule 3 shape: queued 6611 packets (6611000 bytes), marked CE 0, dropped 2 (queue \
             overflow or CoDel); backlog 73 packets / 73000 bytes of 131072 (delay 73.0 ms)\n\
             rule 3 ecn: marked CE 768 packets (98304 bytes)\n\
             rule 3 per-remote: a bucket of 300KB at 8mbit for each remote address; 12 held now\n"
        );
    }

    /// What `limit set` and `limit rm` print after "rule N added: ".
    #[test]
    fn a_rule_is_described_as_before() {
        assert_eq!(
            describe(&view("443", Side::Remote, None, Action::Observe)),
            "remote 443 dir egress proto udp iface all: rate 8mbit burst 300KB observe"
        );
        assert_eq!(
            describe(&view("8000-8099", Side::Local, Some("eth0"), Action::Drop)),
            "8000-8099 dir egress proto udp iface eth0: rate 8mbit burst 300KB drop"
        );
        let per_remote = RuleView {
            per_remote: true,
            ..view("53", Side::Remote, None, Action::Drop)
        };
        assert_eq!(
            describe(&per_remote),
            "remote 53 dir egress proto udp iface all: rate 8mbit burst 300KB drop per remote"
        );
    }

    #[test]
    fn the_table_has_a_row_per_rule() {
        let set = RuleView {
            set_by: Some(shaper::policy::rule_actor::Actor {
                uid: Some(1000),
                user: Some("alice".into()),
                pid: Some(4242),
                command: Some("shaper".into()),
                at: "2026-12-06T06:40:00Z".into(),
            }),
            ..view("443", Side::Remote, None, Action::Observe)
        };
        let unplaced = RuleView {
            proto: ProtoSel::Any,
            ..view("0-65535", Side::Unplaced, None, Action::Drop)
        };
        let table = table(&[set, view("80", Side::Local, None, Action::Drop), unplaced]);
        assert_eq!(
            table,
            "  ID PORTS       SIDE     DIR     PROTO IFACE           RATE     BURST ACTION        PASSED      DROPPED   WOULD-DROP   PASSED-BYTES ORIGIN  SET-BY       SET-AT\n\
             \x20  3 443         remote   egress  udp   all            8mbit     300KB observe           10            2            1          15000 runtime alice        2026-12-06T06:40:00Z\n\
             \x20  3 80          local    egress  udp   all            8mbit     300KB drop              10            2            1          15000 runtime -            -\n\
             \x20  3 unplaced    unplaced egress  any   all            8mbit     300KB drop              10            2            1          15000 runtime -            -\n"
        );
        assert_eq!(
            describe(&view("0-65535", Side::Unplaced, None, Action::Drop)),
            "unplaced dir egress iface all: rate 8mbit burst 300KB drop"
        );
    }
}
