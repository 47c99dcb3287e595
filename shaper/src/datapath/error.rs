//! The datapath's errors: what loading, pinning, attaching and reading the classifier, and
//! claiming what it needs (interfaces, bpffs, the pid locks), can run into.

use std::{io, path::PathBuf};

/// What went wrong on the kernel's side: the classifier, its maps and attachments, bpffs,
/// rtnetlink, the interfaces, and the locks that claim them. Each variant names what went
/// wrong and, where one exists, the fix. Like every layer's error, a variant shows its cause in
/// its message or returns it from `source()`, never both (see [`crate::error`]).
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("interface '{0}' does not exist (`ip -br link` lists the interfaces)")]
    InterfaceNotFound(String),

    #[error(
        "no --iface given and no default route to take the interface from; name one with --iface"
    )]
    NoDefaultRoute,

    #[error(
        "another shaper (pid {pid}) is already attached to {iface}; stop it before starting a second one"
    )]
    AlreadyAttached { iface: String, pid: String },

    /// The cause is shown, not returned as the source: the verifier's log follows it.
    #[error("the kernel verifier rejected program {program}: {error}\nverifier log:\n{log}")]
    Verifier {
        program: &'static str,
        error: io::Error,
        log: String,
    },

    #[error(
        "{kernel} is too old for shaper: it lacks {feature}, which exists from {since} and \
         shaper needs for {used_for}. The oldest kernel shaper is tested on is Debian 12's 6.1; \
         upgrade the kernel (on Debian 11, bullseye-backports has 6.1)"
    )]
    KernelTooOld {
        kernel: String,
        feature: &'static str,
        since: &'static str,
        used_for: &'static str,
    },

    #[error("tcx needs Linux >= 6.6 (this is {kernel}); use --attach clsact")]
    TcxUnsupported { kernel: String },

    #[error("attaching to {iface} {direction} ({mode}) failed")]
    Attach {
        iface: String,
        direction: &'static str,
        mode: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("adding the clsact qdisc to {iface} failed")]
    Clsact {
        iface: String,
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },

    #[error("asking the kernel what is attached to {iface} failed")]
    AttachQuery {
        iface: String,
        #[source]
        source: std::io::Error,
    },

    #[error("removing the clsact qdisc shaper added to {iface} failed")]
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

    #[error("{path}")]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("another shaper (pid {pid}) uses the state file {path}; give this one its own --state")]
    StateInUse { path: PathBuf, pid: String },

    #[error(
        "{path} is not on a BPF filesystem; mount one there (`mount -t bpf bpf {path}`) or give \
         --pin-dir a directory under /sys/fs/bpf"
    )]
    NotBpffs { path: PathBuf },

    #[error(
        "mounting bpffs at /sys/fs/bpf failed: {error}; mount it (`mount -t bpf bpf /sys/fs/bpf`)"
    )]
    BpffsMount { error: io::Error },

    #[error(
        "the pinned map {path} has {field} {pinned}, this shaper expects {expected}: it was made \
         by another version; `shaper down` resets the datapath (counters and the kernel's copy \
         of the rules go, the state file keeps the rules)"
    )]
    PinnedMapMismatch {
        path: PathBuf,
        field: &'static str,
        pinned: u32,
        expected: u32,
    },

    #[error(
        "the datapath pinned at {dir} has room for {capacity} interface(s), {requested} were \
         named; `shaper down` resets it (counters go, the state file keeps the rules)"
    )]
    PinnedTooSmall {
        dir: PathBuf,
        capacity: u32,
        requested: u32,
    },

    #[error(
        "another shaper (pid {pid}) is already attached to interfaces in this network namespace \
         and owns the datapath pinned at {dir}; one daemon attaches all of a namespace's \
         interfaces (repeat --iface)"
    )]
    DatapathInUse { dir: PathBuf, pid: String },

    #[error(
        "{iface} is attached with {pinned} by an earlier run, and {requested} was asked for; \
         `shaper down --iface {iface}` detaches it first (its counters go)"
    )]
    AttachModeConflict {
        iface: String,
        pinned: &'static str,
        requested: &'static str,
    },

    #[error(
        "a shaper daemon (pid {pid}) runs the datapath pinned at {dir}; stop it first (without \
         --persist it detaches and unpins everything itself; with --persist, `shaper down` \
         after it has stopped)"
    )]
    DownWhileRunning { dir: PathBuf, pid: String },

    #[error("pinning {path} failed: {reason}")]
    Pin { path: PathBuf, reason: String },

    #[error("the eBPF object could not be parsed: {reason}")]
    ObjectParse { reason: String },

    // aya's errors are large; boxed so every Result of this crate stays small.
    #[error(transparent)]
    Ebpf(Box<aya::EbpfError>),

    /// The [`aya::EbpfError`]s that show their inner error and also return it as the source,
    /// split into aya's words for them and that error: see `From<aya::EbpfError>`.
    #[error("{context}")]
    EbpfWrapper {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error(transparent)]
    Program(Box<aya::programs::ProgramError>),

    #[error(transparent)]
    Map(Box<aya::maps::MapError>),

    #[error(
        "{iface} has the root qdisc {root}, which shaper did not add and could not put back as \
         it was: a shape rule would replace it. Remove it (`tc qdisc del dev {iface} root`) or \
         shape on another interface"
    )]
    ShapeForeignRoot { iface: String, root: String },

    #[error(
        "{iface} has the root qdisc {root}, which shaper did not add and could not put back as \
         it was: a {action} rule would replace it. Remove it (`tc qdisc del dev {iface} root`) \
         or {action} on another interface"
    )]
    ForeignRoot {
        iface: String,
        root: String,
        action: &'static str,
    },

    #[error(
        "{iface} has shape rules, whose HTB is its root qdisc, and a pace rule needs `fq` there: \
         an interface has one root. Use one action for {iface}'s egress (or remove the shape \
         rules first)"
    )]
    PaceBesideShape { iface: String },

    #[error(
        "a pace rule needs the `fq` qdisc (sch_fq) as the root of {iface}, and this kernel \
         ({kernel}) has none, built in or as a module: build or install sch_fq, or use \
         `--action shape` (HTB) or `--action drop`"
    )]
    PaceNeedsFq { iface: String, kernel: String },

    #[error("{what} on {iface} failed")]
    Shape {
        iface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    UnsafeFile(#[from] crate::private_files::UnsafeFile),

    #[error(transparent)]
    Io(#[from] io::Error),

    #[error("reading the program's log lines (aya-log)")]
    BpfLog(#[from] aya_log::Error),

    #[error("'{0}' is not a log level: off, error, warn, info, debug or trace")]
    LogLevel(String),

    #[error(
        "bpf(2) was refused (EPERM) under a seccomp filter: a container runtime's \
         default profile allows bpf(2) only with CAP_SYS_ADMIN (podman's and CRI-O's do; \
         containerd >= 1.7 and Docker >= 23 allow it with CAP_BPF). Run with the profile made by \
         deploy/seccomp/shaper-profile.py (the guide's Kubernetes section, docs/src/guide/install.md)"
    )]
    SeccompRefusedBpf {
        #[source]
        source: Box<DatapathError>,
    },
}

impl DatapathError {
    /// An EPERM from bpf(2) in a process under a seccomp filter (`Seccomp: 2` in
    /// /proc/self/status) is the filter's, not the kernel's: the start-up check has already
    /// made sure the capabilities are held. Says so, instead of a bare "Operation not permitted".
    pub fn explain_seccomp(self) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&self);
        let mut eperm = false;
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<io::Error>() {
                eperm |= io.raw_os_error() == Some(libc::EPERM);
            }
            cause = error.source();
        }
        let filtered = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            super::kernel_support::status_field(&status, "Seccomp") == Some("2")
        });
        if eperm && filtered {
            Self::SeccompRefusedBpf {
                source: Box::new(self),
            }
        } else {
            self
        }
    }

    pub(crate) fn path(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Path { path, source }
    }
}

impl From<aya::EbpfError> for DatapathError {
    fn from(e: aya::EbpfError) -> Self {
        // These four print `{context}: {inner}` and return the inner error as their source
        // (aya/src/bpf.rs), which would show it twice in a chain.
        let (context, source): (_, Box<dyn std::error::Error + Send + Sync>) = match e {
            aya::EbpfError::ParseError(e) => ("error parsing BPF object", Box::new(e)),
            aya::EbpfError::BtfError(e) => ("BTF error", Box::new(e)),
            aya::EbpfError::MapError(e) => ("map error", Box::new(e)),
            aya::EbpfError::ProgramError(e) => ("program error", Box::new(e)),
            e => return Self::Ebpf(Box::new(e)),
        };
        Self::EbpfWrapper { context, source }
    }
}

impl From<aya::programs::ProgramError> for DatapathError {
    fn from(e: aya::programs::ProgramError) -> Self {
        Self::Program(Box::new(e))
    }
}

impl From<aya::maps::MapError> for DatapathError {
    fn from(e: aya::maps::MapError) -> Self {
        Self::Map(Box::new(e))
    }
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;

    fn denied() -> io::Error {
        io::Error::from_raw_os_error(libc::EACCES)
    }

    #[test]
    fn aya_errors_show_each_cause_once() {
        let error = DatapathError::Attach {
            iface: "eth0".into(),
            direction: "ingress",
            mode: "tcx",
            source: Box::new(aya::programs::ProgramError::SyscallError(
                aya::sys::SyscallError {
                    call: "bpf_link_create",
                    io_error: denied(),
                },
            )),
        };
        assert_eq!(
            chain(&error),
            "attaching to eth0 ingress (tcx) failed: `bpf_link_create` failed: Permission denied \
             (os error 13)"
        );
        // aya's `map error: {0}` shows its inner error and returns it as the source too.
        let error =
            DatapathError::from(aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                name: "PORT_COUNTERS".into(),
                io_error: denied(),
            }));
        assert_eq!(
            chain(&error),
            "map error: failed to create map `PORT_COUNTERS`: Permission denied (os error 13)"
        );
    }

    #[test]
    fn the_verifier_error_shows_its_cause_before_the_log_and_once() {
        let error = DatapathError::Verifier {
            program: "shaper_ingress",
            error: denied(),
            log: "0: R1=ctx()".into(),
        };
        assert_eq!(
            chain(&error),
            "the kernel verifier rejected program shaper_ingress: Permission denied (os error \
             13)\nverifier log:\n0: R1=ctx()"
        );
    }
}
