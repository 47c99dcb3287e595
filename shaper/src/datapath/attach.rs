//! Attaching the classifier to an interface's two hooks, and undoing exactly that.
//!
//! tcx (Linux >= 6.6) links belong to the process: the kernel detaches them when the daemon
//! exits, even on SIGKILL. Legacy clsact filters outlive their creator, so in that mode shaper
//! also removes stale filters of a previous run and deletes the clsact qdisc if it added it.

use std::fmt;

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::{
    daemon::pid_lock::PidLock,
    datapath::{netlink, tcx_query},
    error::{Error, Result, chain},
};

/// How the programs are attached to the tc hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// BPF links on the tcx hooks (Linux >= 6.6, commit e420bed02507 "bpf: Add fd-based tcx
    /// multi-prog infra with link support").
    Tcx,
    /// Direct-action cls_bpf filters under a clsact qdisc (any kernel shaper supports).
    Clsact,
}

impl AttachMode {
    /// tcx where the kernel has it, clsact otherwise.
    pub fn auto() -> Self {
        if tcx_supported() {
            Self::Tcx
        } else {
            Self::Clsact
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        }
    }
}

crate::policy::rule_table::keyword_enum!(
    /// How the operator asks for the programs to be attached (`--attach`, the config file's
    /// `attach`): a mode, or `auto` for the best one the running kernel has.
    AttachChoice {
        // No doc comments on the variants: clap would list them in `--attach`'s help.
        #[default]
        Auto => "auto",
        Tcx => "tcx",
        Clsact => "clsact",
    }
);

impl AttachChoice {
    /// The attach mode this selects on the running kernel.
    pub fn resolve(self) -> AttachMode {
        match self {
            Self::Auto => AttachMode::auto(),
            Self::Tcx => AttachMode::Tcx,
            Self::Clsact => AttachMode::Clsact,
        }
    }
}

fn tcx_supported() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Hook direction, with the names used in output and the program attached to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Self; 2] = [Self::Ingress, Self::Egress];

    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    /// The index used in the shared map layout (`shaper_common::DIR_*`).
    pub fn index(self) -> u32 {
        match self {
            Self::Ingress => shaper_common::DIR_INGRESS,
            Self::Egress => shaper_common::DIR_EGRESS,
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            Self::Ingress => shaper_common::programs::INGRESS,
            Self::Egress => shaper_common::programs::EGRESS,
        }
    }

    fn tc_attach_type(self) -> TcAttachType {
        match self {
            Self::Ingress => TcAttachType::Ingress,
            Self::Egress => TcAttachType::Egress,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What one interface's attachment created; undone by [`detach`].
#[derive(Debug)]
pub struct Attachment {
    pub mode: AttachMode,
    links: Vec<(Direction, SchedClassifierLinkId)>,
    added_clsact: bool,
    _lock: PidLock,
}

pub(crate) fn program_mut(ebpf: &mut Ebpf, direction: Direction) -> Result<&mut SchedClassifier> {
    let name = direction.program();
    let program = ebpf.program_mut(name).ok_or(Error::MissingInObject {
        kind: "program",
        name,
    })?;
    Ok(program.try_into()?)
}

/// Attaches both programs to `iface`. On error, whatever was attached is detached again.
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    ifindex: u32,
    netns: u64,
    mode: AttachMode,
) -> Result<Attachment> {
    if mode == AttachMode::Tcx && !tcx_supported() {
        let kernel = KernelVersion::current().map_or_else(|e| e.to_string(), |v| format!("{v:?}"));
        return Err(Error::TcxUnsupported { kernel });
    }
    let lock = PidLock::acquire(iface, netns)?;
    let added_clsact = match mode {
        AttachMode::Tcx => false,
        AttachMode::Clsact => prepare_clsact(iface)?,
    };
    let mut attachment = Attachment {
        mode,
        links: Vec::new(),
        added_clsact,
        _lock: lock,
    };
    for direction in Direction::BOTH {
        let options = match mode {
            AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
            AttachMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
        };
        let attached = program_mut(ebpf, direction)?.attach_with_options(
            iface,
            direction.tc_attach_type(),
            options,
        );
        match attached {
            Ok(link) => attachment.links.push((direction, link)),
            Err(source) => {
                let error = Error::Attach {
                    iface: iface.to_owned(),
                    direction: direction.name(),
                    mode: mode.name(),
                    source: Box::new(source),
                };
                if let Err(cleanup) = detach(ebpf, iface, ifindex, attachment) {
                    warn!(
                        "{iface}: undoing a partial attach failed: {}",
                        chain(&cleanup)
                    );
                }
                return Err(error);
            }
        }
    }
    info!("{iface}: attached to ingress and egress ({})", mode.name());
    Ok(attachment)
}

/// Ensures a clsact qdisc exists and holds no stale shaper filter. Returns whether it was added.
fn prepare_clsact(iface: &str) -> Result<bool> {
    let failed = |source| Error::Clsact {
        iface: iface.to_owned(),
        source: Box::new(source),
    };
    let added = match tc::qdisc_add_clsact(iface) {
        Ok(()) => true,
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(TcError::IoError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(source) => return Err(failed(source)),
    };
    if !added {
        // The interface lock is ours, so a shaper filter already here was left by a daemon that
        // did not exit cleanly (SIGKILL, crash): cls_bpf filters do not die with their creator.
        for direction in Direction::BOTH {
            match tc::qdisc_detach_program(iface, direction.tc_attach_type(), direction.program()) {
                Ok(()) => warn!(
                    "{iface}: removed a stale shaper filter on {} left by an earlier run",
                    direction.name()
                ),
                Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(failed(source)),
            }
        }
    }
    Ok(added)
}

/// Detaches both programs from the interface and removes a clsact qdisc that shaper added.
pub(crate) fn detach(
    ebpf: &mut Ebpf,
    iface: &str,
    ifindex: u32,
    attachment: Attachment,
) -> Result<()> {
    let Attachment {
        mode,
        links,
        added_clsact,
        _lock,
    } = attachment;
    let mut first_error = None;
    for (direction, link) in links {
        let detached = program_mut(ebpf, direction).and_then(|p| Ok(p.detach(link)?));
        if let Err(e) = detached {
            // Someone removed it already (`tc filter del`, `tc qdisc del ... clsact`, a deleted
            // interface): what detaching is for has happened; say so instead of failing.
            if matches!(
                attached_now(ebpf, iface, ifindex, mode, direction),
                Ok(false)
            ) {
                warn!(
                    "{iface}: the {} program was already detached by someone else ({})",
                    direction.name(),
                    chain(&e)
                );
            } else {
                first_error.get_or_insert(e);
            }
        }
    }
    // Only clsact mode ever adds the qdisc.
    let removed = if added_clsact {
        netlink::delete_clsact(ifindex)
    } else {
        Ok(())
    };
    // The interface may be gone already (a deleted veth takes its qdiscs with it: ENODEV), or
    // someone deleted the qdisc (`tc qdisc del ... clsact`): the kernel then finds no clsact at
    // that parent and refuses the named delete with EINVAL (net/sched/sch_api.c `tc_get_qdisc`),
    // ENOENT on kernels that report the missing qdisc itself.
    if let Err(source) = removed
        && !matches!(
            source.raw_os_error(),
            Some(libc::ENODEV | libc::EINVAL | libc::ENOENT)
        )
    {
        first_error.get_or_insert(Error::ClsactRemove {
            iface: iface.to_owned(),
            source,
        });
    }
    match first_error {
        None => {
            info!("{iface}: detached");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// Whether `direction`'s program of this object is attached to the interface right now, as the
/// kernel reports it, not as the daemon remembers it: `tc filter del` or `tc qdisc del ... clsact`
/// by someone else, or a deleted interface, must show. tcx links are listed with BPF_PROG_QUERY
/// (kernel/bpf/tcx.c `tcx_prog_query`); legacy cls_bpf filters only over rtnetlink.
pub(crate) fn attached_now(
    ebpf: &Ebpf,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
    direction: Direction,
) -> Result<bool> {
    let name = direction.program();
    let program: &SchedClassifier = ebpf
        .program(name)
        .ok_or(Error::MissingInObject {
            kind: "program",
            name,
        })?
        .try_into()?;
    let ours = program.info()?.id();
    match mode {
        // Ids only: aya's query_tcx needs CAP_SYS_ADMIN, which the daemon has dropped by now.
        AttachMode::Tcx => match tcx_query::program_ids(ifindex, direction == Direction::Ingress) {
            Ok(ids) => Ok(ids.contains(&ours)),
            // The interface is gone (or renamed): nothing of ours can be attached to it.
            Err(_) if crate::datapath::interfaces::index(iface).is_err() => Ok(false),
            Err(source) => Err(Error::AttachQuery {
                iface: iface.to_owned(),
                source,
            }),
        },
        AttachMode::Clsact => {
            match netlink::clsact_bpf_program_ids(ifindex, direction == Direction::Ingress) {
                Ok(ids) => Ok(ids.contains(&ours)),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
                Err(source) => Err(Error::AttachQuery {
                    iface: iface.to_owned(),
                    source,
                }),
            }
        }
    }
}
