//! The library's error type, composed of the layers' own: each layer returns its errors
//! ([`DatapathError`], [`PolicyError`], [`TelemetryError`], [`ControlError`], [`DaemonError`]),
//! a higher layer's error wraps the lower ones it meets, and [`Error`] wraps them all for the
//! daemon, the CLI and what spans layers. Each variant names what went wrong and, where one
//! exists, the fix.
//!
//! A variant either shows its cause in its message or returns it from `source()`, never both, so
//! [`chain`] — how `shaper` prints an error, and how the daemon sends one to the CLI — shows each
//! cause once. The wrappers are `transparent` (they forward both `Display` and `source()`), so a
//! chain reads the same whichever layer's type carries the error. A message in a log or a reply
//! is the [`chain`], not the error's `Display`, which leaves the causes out.

use std::io;

use crate::{
    control::ControlError, daemon::DaemonError, datapath::DatapathError, policy::PolicyError,
    telemetry::TelemetryError,
};

/// Any of the layers' errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Datapath(#[from] DatapathError),

    #[error(transparent)]
    Policy(#[from] PolicyError),

    #[error(transparent)]
    Telemetry(#[from] TelemetryError),

    #[error(transparent)]
    Control(#[from] ControlError),

    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// An I/O error that no layer gave a context to is the daemon's: the layers below turn theirs
/// into their own errors. This keeps `?` on an [`io::Error`] working where the daemon and the CLI
/// return [`Error`].
impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Self::Daemon(DaemonError::Io(error))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error` and each of its causes, joined by ": ": what the operator reads, from `shaper` itself
/// or from the daemon through the control socket.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}
