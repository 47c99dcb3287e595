//! The daemon's own errors; what it meets in the layers below comes as theirs, in
//! [`crate::error::Error`].

use std::io;

use crate::datapath::DatapathError;

/// What went wrong in the daemon itself: missing privileges, a lock poisoned by a panic, the
/// detach on shutdown. Like every layer's error, a variant shows its cause in its message or
/// returns it from `source()`, never both (see [`crate::error`]).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "shaper needs root, or the capabilities {missing}; run it as root (for example with sudo)"
    )]
    NotPrivileged { missing: String },

    #[error("detaching on shutdown")]
    Detach(#[source] Box<DatapathError>),

    #[error("internal error: daemon lock poisoned")]
    Poisoned,

    #[error(transparent)]
    Io(#[from] io::Error),
}
