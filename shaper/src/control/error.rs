//! The control socket's errors, at the CLI's end and at the daemon's.

use std::{io, path::PathBuf};

/// What went wrong between the CLI and the daemon: no daemon, no permission, a socket path
/// that is taken or not a socket, a group that does not exist, a reply that does not parse, a
/// request the daemon refused (its message is the daemon's error chain). Like every layer's
/// error, a variant shows its cause in its message or returns it from `source()`, never both
/// (see [`crate::error`]).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the shaper daemon is not running (nothing listens on {path}); start it with `sudo shaper run`"
    )]
    DaemonNotRunning { path: PathBuf },

    #[error("permission denied on the control socket {path}: {admitted}")]
    ControlPermission { path: PathBuf, admitted: String },

    #[error(
        "socket group {name}: no such group; create it (`addgroup --system {name}`) or name \
         another with --socket-group / socket_group"
    )]
    UnknownGroup { name: String },

    #[error(
        "giving the control socket {path} to group {group}: {error} (the daemon must be in the \
         group, e.g. the unit's SupplementaryGroups=, or hold CAP_CHOWN at start-up)"
    )]
    SocketGroup {
        path: PathBuf,
        group: String,
        #[source]
        error: io::Error,
    },

    #[error(
        "another shaper daemon already serves {path}; stop it or give this one another --socket"
    )]
    SocketInUse { path: PathBuf },

    #[error(
        "--socket {path} is {kind}, not a socket: shaper replaces only a socket a stopped daemon \
         left; choose another path or remove it"
    )]
    NotASocket { path: PathBuf, kind: &'static str },

    #[error("the daemon's reply could not be read")]
    BadReply(#[source] serde_json::Error),

    #[error("the daemon refused the request: {0}")]
    Refused(String),

    #[error("{path}")]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    UnsafeFile(#[from] crate::private_files::UnsafeFile),

    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ControlError {
    pub(crate) fn path(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Path { path, source }
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;
