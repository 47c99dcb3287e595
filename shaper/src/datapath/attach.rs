//! Attaching the classifier to an interface's two hooks, and undoing exactly that.
//!
//! tcx (Linux >= 6.6) links belong to the process: the kernel detaches them when the daemon
//! exits, even on SIGKILL. Legacy clsact filters outlive their creator, so in that mode shaper
//! also removes stale filters of a previous run and deletes the clsact qdisc if it added it.

use std::fmt;

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, Link as _, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
    util::KernelVersion,
};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::pid_lock::PidLock,
    datapath::{DatapathError, Result},
    datapath::{netlink, pins::PinDir, tcx_query},
    error::chain,
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

crate::types::keywords::keyword_enum!(
    /// How the operator asks for the programs to be attached (`--attach`, the config file's
    /// `attach`): a mode, or `auto` for the best one the running kernel has.
    AttachChoice {
        // No doc comments on the variants: `--attach`'s help would list them.
        Auto => "auto" (default),
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

/// shaper's cls_bpf filters sit at this priority and handle on both clsact hooks, so a new
/// daemon replaces its predecessor's filter in place: RTM_NEWTFILTER without NLM_F_EXCL for an
/// existing (priority, handle) makes `cls_bpf_change` (net/sched/cls_bpf.c) swap the program
/// under the same handle, and no packet meets the hook without one. A fixed low number runs
/// before filters of the default priority (49152 and down) that others add.
const CLSACT_PRIORITY: u16 = 0x5348;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);

/// What one interface's attachment holds; undone by [`detach`], or left in place by
/// [`release`].
#[derive(Debug)]
pub struct Attachment {
    pub mode: AttachMode,
    /// Taken out of the program, so dropping the program does not detach them.
    links: Vec<(Direction, SchedClassifierLink)>,
    added_clsact: bool,
    pins: Option<PinDir>,
    iface: String,
    _lock: PidLock,
}

pub(crate) fn program_mut(ebpf: &mut Ebpf, direction: Direction) -> Result<&mut SchedClassifier> {
    let name = direction.program();
    let program = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingInObject {
            kind: "program",
            name,
        })?;
    Ok(program.try_into()?)
}

/// How `iface` is attached in the datapath pinned at `pins`, if it is.
pub(crate) fn pinned_mode(pins: &PinDir, iface: &str) -> Option<AttachMode> {
    if Direction::BOTH
        .iter()
        .any(|&d| pins.tcx_link(iface, d).exists())
    {
        Some(AttachMode::Tcx)
    } else if pins.clsact(iface).exists() {
        Some(AttachMode::Clsact)
    } else {
        None
    }
}

/// Attaches both programs to `iface`; with `pins`, replaces what an earlier daemon pinned there
/// in place (the old program runs until the new one takes its place, atomically) and pins what
/// it creates. On error, whatever this call attached anew is detached again.
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    ifindex: u32,
    netns: u64,
    mode: AttachMode,
    pins: Option<&PinDir>,
) -> Result<Attachment> {
    if mode == AttachMode::Tcx && !tcx_supported() {
        let kernel = KernelVersion::current().map_or_else(|e| e.to_string(), |v| format!("{v:?}"));
        return Err(DatapathError::TcxUnsupported { kernel });
    }
    let lock = PidLock::acquire(iface, netns)?;
    let pinned = pins.and_then(|p| pinned_mode(p, iface));
    if let Some(pinned) = pinned
        && pinned != mode
    {
        return Err(DatapathError::AttachModeConflict {
            iface: iface.to_owned(),
            pinned: pinned.name(),
            requested: mode.name(),
        });
    }
    if let Some(pins) = pins {
        pins.create_iface(iface)?;
    }
    let added_clsact = match mode {
        AttachMode::Tcx => false,
        AttachMode::Clsact => {
            let added = ensure_clsact(iface, pinned.is_none())?;
            let marked = pins.is_some_and(|p| p.clsact_qdisc_added(iface).exists());
            if let Some(pins) = pins {
                let dir = if added {
                    pins.clsact_qdisc_added(iface)
                } else {
                    pins.clsact(iface)
                };
                std::fs::create_dir_all(&dir).map_err(DatapathError::path(&dir))?;
            }
            added || marked
        }
    };
    let mut attachment = Attachment {
        mode,
        links: Vec::new(),
        added_clsact,
        pins: pins.cloned(),
        iface: iface.to_owned(),
        _lock: lock,
    };
    for direction in Direction::BOTH {
        match attach_one(ebpf, iface, direction, mode, pins, pinned.is_some()) {
            Ok(link) => attachment.links.push((direction, link)),
            Err(error) => {
                // A hook this call replaced in place keeps the new program: the datapath stays
                // whole. Only what is new here is undone.
                if pinned.is_none()
                    && let Err(cleanup) = detach(ebpf, iface, ifindex, attachment)
                {
                    warn!(
                        "{iface}: undoing a partial attach failed: {}",
                        chain(&cleanup)
                    );
                }
                return Err(error);
            }
        }
    }
    match pinned {
        Some(_) => info!(
            "{iface}: took over ingress and egress from the pinned datapath ({})",
            mode.name()
        ),
        None => info!("{iface}: attached to ingress and egress ({})", mode.name()),
    }
    Ok(attachment)
}

/// Attaches (or swaps in) one direction's program and takes the link out of the program.
fn attach_one(
    ebpf: &mut Ebpf,
    iface: &str,
    direction: Direction,
    mode: AttachMode,
    pins: Option<&PinDir>,
    adopting: bool,
) -> Result<SchedClassifierLink> {
    let failed = |source: ProgramError| DatapathError::Attach {
        iface: iface.to_owned(),
        direction: direction.name(),
        mode: mode.name(),
        source: Box::new(source),
    };
    let program = program_mut(ebpf, direction)?;
    let attach_type = direction.tc_attach_type();
    match mode {
        AttachMode::Tcx => {
            let pin = pins.map(|p| p.tcx_link(iface, direction));
            let link_failed = |path: &std::path::Path| {
                let path = path.to_owned();
                move |e: aya::programs::links::LinkError| DatapathError::Pin {
                    path,
                    reason: e.to_string(),
                }
            };
            if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
                // BPF_LINK_UPDATE: the kernel swaps the program behind the link under rtnl
                // (kernel/bpf/tcx.c `tcx_link_update`); the hook is never empty.
                let pinned = PinnedLink::from_pin(pin).map_err(link_failed(pin))?;
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(link_failed(pin))?;
                match program.attach_to_link(link) {
                    Ok(id) => return program.take_link(id).map_err(failed),
                    // The link's device is gone (ENOLINK: the interface was deleted, perhaps
                    // recreated under the same name): nothing is attached through it any
                    // more. Its pin goes and a new link is made below.
                    Err(e) => {
                        warn!(
                            "{iface}: the pinned {} link is defunct, attaching anew ({})",
                            direction.name(),
                            chain(&DatapathError::from(e))
                        );
                        std::fs::remove_file(pin).map_err(DatapathError::path(pin))?;
                    }
                }
            }
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            let id = program
                .attach_with_options(iface, attach_type, options)
                .map_err(failed)?;
            let link = program.take_link(id).map_err(failed)?;
            let Some(pin) = pin else {
                return Ok(link);
            };
            let fd_link = FdLink::try_from(link).map_err(link_failed(&pin))?;
            let pinned = fd_link.pin(&pin).map_err(|e| DatapathError::Pin {
                path: pin.clone(),
                reason: e.to_string(),
            })?;
            SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(link_failed(&pin))
        }
        AttachMode::Clsact => {
            if adopting {
                // RTM_NEWTFILTER without NLM_F_CREATE|NLM_F_EXCL replaces the filter an earlier
                // daemon left at shaper's priority and handle; if someone deleted it, the
                // kernel refuses (ENOENT) and it is created below.
                let link = SchedClassifierLink::attached(
                    iface,
                    attach_type,
                    CLSACT_PRIORITY,
                    CLSACT_HANDLE,
                    None,
                )?;
                match program.attach_to_link(link) {
                    Ok(id) => return program.take_link(id).map_err(failed),
                    Err(e) => warn!(
                        "{iface}: no pinned clsact filter on {} to replace, creating one ({})",
                        direction.name(),
                        chain(&DatapathError::from(e))
                    ),
                }
            }
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: CLSACT_PRIORITY,
                handle: CLSACT_HANDLE,
                ..NlOptions::default()
            });
            let id = program
                .attach_with_options(iface, attach_type, options)
                .map_err(failed)?;
            program.take_link(id).map_err(failed)
        }
    }
}

/// Ensures a clsact qdisc exists. On a fresh start (`clean`), also removes shaper filters an
/// unpinned earlier run left at other priorities. Returns whether it added the qdisc.
fn ensure_clsact(iface: &str, clean: bool) -> Result<bool> {
    let failed = |source| DatapathError::Clsact {
        iface: iface.to_owned(),
        source: Box::new(source),
    };
    let added = match tc::qdisc_add_clsact(iface) {
        Ok(()) => true,
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(TcError::IoError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(source) => return Err(failed(source)),
    };
    if !added && clean {
        // The interface lock is ours and nothing is pinned, so a shaper filter already here was
        // left by a daemon that did not exit cleanly and pinned nothing (a version before
        // pinning): cls_bpf filters do not die with their creator.
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

/// Leaves the attachment in the kernel: pinned tcx links stay attached through their pins, and
/// clsact filters outlive their creator anyway. The interface lock goes with this process.
pub(crate) fn release(attachment: Attachment) {
    let Attachment { links, iface, .. } = attachment;
    for (_, link) in links {
        // Dropping a netlink link would delete the filter (aya detaches on drop); forgetting it
        // leaks nothing, it is plain data. Dropping an fd link only closes our descriptor.
        std::mem::forget(link);
    }
    info!("{iface}: left attached and pinned for the next daemon");
}

/// Detaches both programs from the interface, removes a clsact qdisc that shaper added, and
/// the interface's pins.
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
        pins,
        iface: _,
        _lock,
    } = attachment;
    let mut first_error = None;
    if let Some(pins) = &pins {
        // Unpinned first: a tcx link lives while a pin or an fd holds it.
        for direction in Direction::BOTH {
            let pin = pins.tcx_link(iface, direction);
            if let Err(e) = std::fs::remove_file(&pin)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                first_error.get_or_insert(DatapathError::path(&pin)(e));
            }
        }
    }
    for (direction, link) in links {
        if let Err(e) = link.detach() {
            let e = DatapathError::from(e);
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
    if let Err(e) = remove_clsact_qdisc(iface, ifindex, added_clsact) {
        first_error.get_or_insert(e);
    }
    if let Some(pins) = &pins
        && let Err(e) = pins.remove_iface(iface)
    {
        first_error.get_or_insert(e);
    }
    match first_error {
        None => {
            info!("{iface}: detached");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// Removes the clsact qdisc if shaper added it (only clsact mode ever adds one).
fn remove_clsact_qdisc(iface: &str, ifindex: u32, added: bool) -> Result<()> {
    if !added {
        return Ok(());
    }
    // The interface may be gone already (a deleted veth takes its qdiscs with it: ENODEV), or
    // someone deleted the qdisc (`tc qdisc del ... clsact`): the kernel then finds no clsact at
    // that parent and refuses the named delete with EINVAL (net/sched/sch_api.c `tc_get_qdisc`),
    // ENOENT on kernels that report the missing qdisc itself.
    match netlink::delete_clsact(ifindex) {
        Err(source)
            if !matches!(
                source.raw_os_error(),
                Some(libc::ENODEV | libc::EINVAL | libc::ENOENT)
            ) =>
        {
            Err(DatapathError::ClsactRemove {
                iface: iface.to_owned(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// What [`remove_pinned`] took away from one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub iface: String,
    /// `tcx` links or `clsact` filters, per direction.
    pub detached: Vec<String>,
    pub removed_qdisc: bool,
}

/// Detaches and unpins what a daemon left pinned on `iface`, without its programs at hand
/// (`shaper down`, or an interface a new daemon no longer names).
pub fn remove_pinned(pins: &PinDir, iface: &str) -> Result<Removed> {
    let mut removed = Removed {
        iface: iface.to_owned(),
        ..Removed::default()
    };
    let ifindex = crate::datapath::interfaces::index(iface).ok();
    for direction in Direction::BOTH {
        let pin = pins.tcx_link(iface, direction);
        if pin.exists() {
            // Unpinning drops the last reference once our fd closes: the link is released
            // and the program detached (kernel/bpf/syscall.c `bpf_link_put`).
            std::fs::remove_file(&pin).map_err(DatapathError::path(&pin))?;
            removed.detached.push(format!("tcx {}", direction.name()));
        }
    }
    if pins.clsact(iface).exists() {
        if let Some(_ifindex) = ifindex {
            for direction in Direction::BOTH {
                let link = SchedClassifierLink::attached(
                    iface,
                    direction.tc_attach_type(),
                    CLSACT_PRIORITY,
                    CLSACT_HANDLE,
                    None,
                )?;
                match link.detach() {
                    Ok(()) => removed
                        .detached
                        .push(format!("clsact {}", direction.name())),
                    // Already gone (filter or qdisc deleted by hand).
                    Err(e) => warn!(
                        "{iface}: no clsact filter to remove on {}: {}",
                        direction.name(),
                        chain(&DatapathError::from(e))
                    ),
                }
            }
        }
        let added = pins.clsact_qdisc_added(iface).exists();
        if let Some(ifindex) = ifindex
            && added
        {
            remove_clsact_qdisc(iface, ifindex, true)?;
            removed.removed_qdisc = true;
        }
    }
    pins.remove_iface(iface)?;
    Ok(removed)
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
        .ok_or(DatapathError::MissingInObject {
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
            Err(source) => Err(DatapathError::AttachQuery {
                iface: iface.to_owned(),
                source,
            }),
        },
        AttachMode::Clsact => {
            match netlink::clsact_bpf_program_ids(ifindex, direction == Direction::Ingress) {
                Ok(ids) => Ok(ids.contains(&ours)),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
                Err(source) => Err(DatapathError::AttachQuery {
                    iface: iface.to_owned(),
                    source,
                }),
            }
        }
    }
}
