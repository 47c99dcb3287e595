//! The library's error type: each variant names what went wrong and, where one exists, the fix.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface '{0}' does not exist (`ip -br link` lists the interfaces)")]
    InterfaceNotFound(String),

    #[error(
        "no --iface given and no default route to take the interface from; name one with --iface"
    )]
    NoDefaultRoute,

    #[error(
        "shaper needs root, or the capabilities {missing}; run it as root (for example with sudo)"
    )]
    NotPrivileged { missing: String },

    #[error(
        "another shaper (pid {pid}) is already attached to {iface}; stop it before starting a second one"
    )]
    AlreadyAttached { iface: String, pid: String },

    #[error("the kernel verifier rejected program {program}: {source}\nverifier log:\n{log}")]
    Verifier {
        program: &'static str,
        source: io::Error,
        log: String,
    },

    #[error("tcx needs Linux >= 6.6 (this is {kernel}); use --attach clsact")]
    TcxUnsupported { kernel: String },

    #[error("attaching to {iface} {direction} ({mode}) failed: {source}")]
    Attach {
        iface: String,
        direction: &'static str,
        mode: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("adding the clsact qdisc to {iface} failed: {source}")]
    Clsact {
        iface: String,
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },

    #[error("asking the kernel what is attached to {iface} failed: {source}")]
    AttachQuery {
        iface: String,
        #[source]
        source: std::io::Error,
    },

    #[error("removing the clsact qdisc shaper added to {iface} failed: {source}")]
    ClsactRemove {
        iface: String,
        #[source]
        source: io::Error,
    },

    #[error("at most {max} interfaces can be attached at once, {requested} were named")]
    TooManyInterfaces { requested: usize, max: u32 },

    #[error("the eBPF object has no {kind} named {name}; was it built from this source tree?")]
    MissingInObject {
        kind: &'static str,
        name: &'static str,
    },

    #[error("{path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "the shaper daemon is not running (nothing listens on {path}); start it with `sudo shaper run`"
    )]
    DaemonNotRunning { path: PathBuf },

    #[error("permission denied on {path}: the control socket is root-only; run this as root")]
    ControlPermission { path: PathBuf },

    #[error(
        "another shaper daemon already serves {path}; stop it or give this one another --socket"
    )]
    SocketInUse { path: PathBuf },

    #[error("the daemon's reply could not be read: {0}")]
    BadReply(#[source] serde_json::Error),

    #[error("the daemon refused the request: {0}")]
    Refused(String),

    #[error(transparent)]
    Limit(#[from] crate::policy::rule_table::LimitError),

    #[error("config rule {rule}: {source}")]
    ConfigRule {
        rule: String,
        #[source]
        source: Box<Error>,
    },

    #[error("no rule {key}{others}")]
    NoSuchRule { key: String, others: String },

    #[error("another shaper (pid {pid}) uses the state file {path}; give this one its own --state")]
    StateInUse { path: PathBuf, pid: String },

    #[error("state file {path}: {reason}; move it away to start from the config file's rules")]
    State { path: PathBuf, reason: String },

    #[error(transparent)]
    Config(#[from] crate::policy::config_file::ConfigError),

    #[error("cannot serve metrics on {addr}: {error}{hint}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        hint: &'static str,
        error: io::Error,
    },

    #[error("metrics endpoint: {error}")]
    MetricsServe { error: io::Error },

    #[error("detaching on shutdown")]
    Detach(#[source] Box<Error>),

    #[error("internal error: daemon lock poisoned")]
    Poisoned,

    // aya's errors are large; boxed so every Result of this crate stays small.
    #[error(transparent)]
    Ebpf(Box<aya::EbpfError>),

    #[error(transparent)]
    Program(Box<aya::programs::ProgramError>),

    #[error(transparent)]
    Map(Box<aya::maps::MapError>),

    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<aya::EbpfError> for Error {
    fn from(e: aya::EbpfError) -> Self {
        Self::Ebpf(Box::new(e))
    }
}

impl From<aya::programs::ProgramError> for Error {
    fn from(e: aya::programs::ProgramError) -> Self {
        Self::Program(Box::new(e))
    }
}

impl From<aya::maps::MapError> for Error {
    fn from(e: aya::maps::MapError) -> Self {
        Self::Map(Box::new(e))
    }
}

impl Error {
    pub(crate) fn path(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Path { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
