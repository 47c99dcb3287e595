//! The daemon's answer to each control request.

use std::sync::Mutex;

use log::info;

use super::InForce;
use crate::{
    control::{Caller, Peer, Request, Response},
    daemon::DaemonError,
    error::{Result, chain},
    policy::rule_actor::Actor,
    telemetry::{counter_snapshot::Snapshot, exposure, listening_sockets},
};

/// Answers `request` from `caller`; an error becomes an error reply, and the daemon goes on
/// serving. Every change is logged with who asked for it.
pub(super) fn answer(in_force: &Mutex<InForce>, request: Request, caller: Caller) -> Response {
    let reply = match in_force.lock() {
        Ok(mut in_force) => in_force.answer(request, caller),
        Err(_) => Err(DaemonError::Poisoned.into()),
    };
    // The whole chain: the CLI has nothing else to print.
    reply.unwrap_or_else(|e| Response::Error { message: chain(&e) })
}

/// `by uid 0 (root), pid 4242 (shaper)` at the end of a change's log line.
#[derive(Clone, Copy)]
pub(super) struct By(Option<Peer>);

impl std::fmt::Display for By {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => write!(f, "by {peer}"),
            None => f.write_str("by an unknown peer"),
        }
    }
}

impl By {
    /// The rule's [`Actor`]: the same identity as the log line, acting now.
    fn actor(self) -> Actor {
        match self.0 {
            Some(peer) => Actor::now(Some(peer.uid), peer.user(), peer.pid, peer.command()),
            None => Actor::now(None, None, None, None),
        }
    }
}

impl InForce {
    fn answer(&mut self, request: Request, caller: Caller) -> Result<Response> {
        let by = By(caller.peer);
        let Self {
            classifier,
            limits,
            watches,
            tracing,
            owners,
        } = self;
        Ok(match request {
            Request::Stats => {
                let mut snapshot = Snapshot::read(classifier)?;
                snapshot.listening = listening_sockets::listeners(*owners);
                Response::Stats(snapshot)
            }
            Request::LimitSet { rule } => {
                let key = rule.key.to_string();
                let (rule, replaced) = limits.set(classifier, rule, by.actor())?;
                info!(
                    "limit set: {key}: rate {} burst {} {} ({by})",
                    rule.rate, rule.burst, rule.action
                );
                Response::RuleSet { rule, replaced }
            }
            Request::LimitRm { rule } => {
                let key = rule.to_string();
                let rule = limits.remove(classifier, &rule)?;
                info!("limit removed: {key} ({by})");
                Response::RuleRemoved { rule }
            }
            Request::LimitLs => Response::Rules {
                rules: limits.list(classifier),
            },
            Request::Exposure => Response::Exposure(exposure::gather(classifier, *owners)?),
            Request::Watch { watch } => {
                if watches.add(classifier, watch.clone())? {
                    info!("watching {watch} ({by})");
                }
                Response::Watches {
                    watches: watches.list(),
                }
            }
            Request::Unwatch { watch } => {
                watches.remove(classifier, &watch)?;
                info!("no longer watching {watch} ({by})");
                Response::Watches {
                    watches: watches.list(),
                }
            }
            Request::WatchLs => Response::Watches {
                watches: watches.list(),
            },
            Request::Talkers { port } => {
                Response::Talkers(crate::datapath::watched_ports::read(classifier, port)?)
            }
            Request::TraceOn { trace } => tracing.on(classifier, trace, caller.connection, by)?,
            Request::TraceOff { session } => {
                tracing.off(classifier, session, caller.connection, by)?
            }
            Request::LogLevel { level } => {
                let value = crate::datapath::bpf_log::parse_level(&level)?;
                crate::datapath::bpf_log::set_level(classifier, value)?;
                info!("program log level: {level} ({by})");
                Response::LogLevel { level }
            }
        })
    }
}
