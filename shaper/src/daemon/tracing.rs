//! The daemon's side of `shaper trace`: one trace at a time, switched on for the life of the
//! control connection that asked for it (see `control::socket`), switched off when it closes,
//! at start-up (a daemon that died mid-trace left its switches in the pinned map) and on stop.

use log::info;
use shaper_common::{TraceConfig, VERDICT_DROP, VERDICT_PASS, VERDICT_WOULD_DROP, maps};

use crate::{
    control::{Response, protocol::TraceSpec},
    datapath::{classifier::Classifier, trace_switch},
    error::Result,
    policy::PolicyError,
    policy::rule_table::TraceVerdicts,
};

/// Which trace runs, if any.
#[derive(Debug, Default)]
pub(crate) struct Tracing {
    current: Option<Session>,
    next: u64,
}

/// A running trace and the control connection it belongs to.
#[derive(Debug, Clone, Copy)]
struct Session {
    id: u64,
    connection: u64,
}

/// Clears every trace switch.
pub(crate) fn switch_off(classifier: &mut Classifier) -> Result<()> {
    trace_switch::set(classifier, None, TraceConfig::default())?;
    Ok(())
}

impl Tracing {
    /// Starts a trace of `spec` on `classifier` for control connection `connection`, refused
    /// while another runs; `by` (who asked) ends the log line.
    pub(super) fn on(
        &mut self,
        classifier: &mut Classifier,
        spec: TraceSpec,
        connection: u64,
        by: impl std::fmt::Display,
    ) -> Result<Response> {
        if let Some(Session { id: session, .. }) = self.current {
            return Err(PolicyError::Watch(format!(
                "trace {session} is running; one trace at a time (its events share one ring \
                 buffer)"
            ))
            .into());
        }
        let pins = classifier.pins().ok_or_else(|| {
            PolicyError::Watch("this datapath is not pinned: no ring buffer to read".to_owned())
        })?;
        let (events, lost) = (pins.map(maps::TRACE_EVENTS), pins.map(maps::TRACE_LOST));
        let verdicts = match spec.verdict {
            TraceVerdicts::All => 1 << VERDICT_PASS | 1 << VERDICT_DROP | 1 << VERDICT_WOULD_DROP,
            TraceVerdicts::Drop => 1 << VERDICT_DROP,
            TraceVerdicts::WouldDrop => 1 << VERDICT_WOULD_DROP,
        };
        let config = TraceConfig {
            verdicts,
            per_cpu_per_second: spec.per_cpu_per_second,
        };
        trace_switch::set(classifier, Some((spec.ports, spec.dir)), config)?;
        self.next += 1;
        let session = self.next;
        self.current = Some(Session {
            id: session,
            connection,
        });
        info!(
            "trace {session} on: port {} dir {} verdict {} ({by})",
            spec.ports, spec.dir, spec.verdict
        );
        Ok(Response::TraceOn {
            session,
            events,
            lost,
            interfaces: classifier.interface_names(),
        })
    }

    /// Ends trace `session` if it is the one running (a stale id changes nothing). Only the
    /// connection that started it may: ids are sequential, so any client could guess another's.
    pub(super) fn off(
        &mut self,
        classifier: &mut Classifier,
        session: u64,
        connection: u64,
        by: impl std::fmt::Display,
    ) -> Result<Response> {
        match self.current {
            Some(running) if running.id == session && running.connection != connection => {
                return Err(PolicyError::Watch(format!(
                    "trace {session} belongs to another control connection; it ends when that \
                     connection closes (its `shaper trace` exits)"
                ))
                .into());
            }
            Some(running) if running.id == session => {
                switch_off(classifier)?;
                self.current = None;
                info!("trace {session} off ({by})");
            }
            _ => {}
        }
        Ok(Response::TraceOff { session })
    }
}
