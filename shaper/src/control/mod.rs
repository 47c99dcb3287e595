//! The local control socket between the CLI and the daemon.
//!
//! A Unix stream socket, mode 0600 (root only) or 0660 with `--socket-group` ([`access`]),
//! carrying one JSON object per line each way: a
//! [`Request`], then its [`Response`] ([`protocol`]). A connection may send several requests. A
//! request longer than [`MAX_REQUEST_BYTES`] or that does not parse gets an error reply; the
//! daemon keeps serving ([`socket`]).

pub mod access;
pub mod error;
pub mod peer;
pub mod protocol;
pub mod socket;

pub use error::{ControlError, Result};
pub use peer::Peer;
pub use protocol::{DEFAULT_SOCKET, MAX_REQUEST_BYTES, Request, Response};
pub use socket::{Caller, ControlSocket, request, request_held};
