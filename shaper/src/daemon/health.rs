//! The daemon's answers to `/healthz` and `/readyz` (served beside `/metrics`), for a service
//! manager or a Kubernetes probe.
//!
//! - **Live**: the runtime that serves the control socket answered the request (the HTTP
//!   endpoint runs on that same single thread) and the daemon's state lock can be taken within
//!   [`LOCK_WAIT`]: a daemon wedged behind its lock answers no control request either.
//! - **Ready**: every interface the daemon runs has its program attached on both hooks, as the
//!   kernel says now (the same check as `shaper_program_attached`), and every rule in force has
//!   its limit in the kernel's rule map. A live daemon that is not ready (an interface deleted
//!   and re-created, its attachment gone) is worth a look, not a restart.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use super::InForce;
use crate::{
    daemon::DaemonError,
    error::chain,
    telemetry::metrics::{HealthFn, Probe},
};

/// How long a liveness probe waits for the state lock. A scrape or a control request holds it
/// for milliseconds; seconds mean something is stuck.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The probe function the HTTP endpoint calls (on tokio's blocking pool).
pub(crate) fn probe_fn(in_force: Arc<Mutex<InForce>>) -> Arc<HealthFn> {
    Arc::new(move |probe| match probe {
        Probe::Live => live(&in_force),
        Probe::Ready => ready(&in_force),
    })
}

fn live(in_force: &Mutex<InForce>) -> Result<String, String> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match in_force.try_lock() {
            Ok(_) => return Ok("ok: serving\n".into()),
            Err(std::sync::TryLockError::Poisoned(_)) => {
                return Err(format!("{}\n", DaemonError::Poisoned));
            }
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(format!(
                    "the daemon's state has been locked for over {} s\n",
                    LOCK_WAIT.as_secs()
                ));
            }
        }
    }
}

fn ready(in_force: &Mutex<InForce>) -> Result<String, String> {
    let in_force = in_force
        .lock()
        .map_err(|_| format!("{}\n", DaemonError::Poisoned))?;
    let mut problems = Vec::new();
    let interfaces = in_force.classifier.interface_states();
    if interfaces.is_empty() {
        problems.push("no interface attached".to_owned());
    }
    for iface in &interfaces {
        for (direction, attached) in &iface.attached {
            if !attached {
                problems.push(format!("{} {}: not attached", iface.name, direction.name()));
            }
        }
    }
    let rules = in_force.limits.rules();
    for rule in &rules {
        match in_force.classifier.rule_limit(rule.id) {
            Ok(config) if config.rate_bps != 0 => {}
            Ok(_) => problems.push(format!("rule {}: not in the kernel's rule map", rule.id)),
            Err(error) => problems.push(format!("rule {}: {}", rule.id, chain(&error))),
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "ok: {} interface(s) attached, {} rule(s) installed\n",
            interfaces.len(),
            rules.len()
        ))
    } else {
        Err(problems.join("\n") + "\n")
    }
}
