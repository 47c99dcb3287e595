//! A pinned datapath seen from outside any daemon: what `shaper status` shows of it, and what
//! `shaper down` removes.

use std::time::{SystemTime, UNIX_EPOCH};

use aya::programs::{
    ProgramInfo,
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::pid_lock::PidLock,
    datapath::{
        DatapathError, Result,
        attach::{self, AttachMode, Direction, Removed},
        interfaces, netlink,
        pins::PinDir,
    },
};

/// `shaper status --json`, schema version 1.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub schema_version: u32,
    /// This network namespace's pin directory.
    pub pin_dir: String,
    /// Whether anything is pinned there.
    pub pinned: bool,
    /// The pid of the daemon that owns the datapath, `None` when no daemon runs.
    pub daemon_pid: Option<String>,
    pub interfaces: Vec<InterfaceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// `tcx` or `clsact`; `None` when only the interface's directory is left.
    pub mode: Option<String>,
    /// Whether the interface exists in this namespace now.
    pub exists: bool,
    pub hooks: Vec<HookStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatus {
    pub direction: Direction,
    /// The program on the hook, if one of shaper's is attached there.
    pub program_id: Option<u32>,
    /// The program's tag (hex): the same for the same build of the program.
    pub program_tag: Option<String>,
    /// When the program was loaded, seconds since the Unix epoch.
    pub loaded_at_unix: Option<u64>,
}

/// What is pinned for this network namespace under `base`, and whether a daemon runs it.
pub fn status(pins: &PinDir) -> Result<Status> {
    let mut interfaces_status = Vec::new();
    for name in pins.ifaces()? {
        let mode = attach::pinned_mode(pins, &name);
        let ifindex = interfaces::index(&name).ok();
        let mut hooks = Vec::new();
        for direction in Direction::BOTH {
            let program_id = match mode {
                Some(AttachMode::Tcx) => tcx_program(pins, &name, direction),
                Some(AttachMode::Clsact) => ifindex
                    .and_then(|ifindex| clsact_program(ifindex, direction == Direction::Ingress)),
                None => None,
            };
            let info = program_id.and_then(program_info);
            hooks.push(HookStatus {
                direction,
                program_id,
                program_tag: info.as_ref().map(|i| format!("{:016x}", i.tag())),
                loaded_at_unix: info
                    .as_ref()
                    .and_then(ProgramInfo::loaded_at)
                    .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
            });
        }
        interfaces_status.push(InterfaceStatus {
            name,
            mode: mode.map(|m| m.name().to_owned()),
            exists: ifindex.is_some(),
            hooks,
        });
    }
    Ok(Status {
        schema_version: STATUS_SCHEMA_VERSION,
        pin_dir: pins.root().display().to_string(),
        pinned: pins.exists(),
        daemon_pid: PidLock::datapath_holder(pins)?,
        interfaces: interfaces_status,
    })
}

/// The program behind a pinned tcx link.
fn tcx_program(pins: &PinDir, iface: &str, direction: Direction) -> Option<u32> {
    let link = FdLink::from(PinnedLink::from_pin(pins.tcx_link(iface, direction)).ok()?);
    Some(link.info().ok()?.program_id())
}

/// A shaper program among the interface's clsact filters of one direction.
fn clsact_program(ifindex: u32, ingress: bool) -> Option<u32> {
    let ids = netlink::clsact_bpf_program_ids(ifindex, ingress).ok()?;
    ids.into_iter().find(|&id| {
        program_info(id).is_some_and(|info| {
            info.name_as_str()
                .is_some_and(|name| name.starts_with("shaper_"))
        })
    })
}

fn program_info(id: u32) -> Option<ProgramInfo> {
    loaded_programs()
        .filter_map(std::result::Result::ok)
        .find(|info| info.id() == id)
}

/// What `shaper down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Down {
    pub pin_dir: String,
    pub interfaces: Vec<Removed>,
    /// Whether the maps went too (all interfaces were taken down).
    pub removed_maps: bool,
}

/// Detaches and unpins the datapath a daemon left (all of it, or only `only` interfaces), and
/// removes any clsact qdisc shaper added. Refused while a daemon runs it: that daemon owns it
/// (stop it; without `--persist` it removes everything itself).
pub fn down(pins: &PinDir, only: &[String]) -> Result<Down> {
    // Held while taking things down, so no daemon starts adopting a half-removed datapath.
    let _lock = PidLock::acquire_datapath(pins).map_err(|e| match e {
        DatapathError::DatapathInUse { dir, pid } => DatapathError::DownWhileRunning { dir, pid },
        other => other,
    })?;
    let mut down = Down {
        pin_dir: pins.root().display().to_string(),
        ..Down::default()
    };
    for name in pins.ifaces()? {
        if only.is_empty() || only.contains(&name) {
            down.interfaces.push(attach::remove_pinned(pins, &name)?);
            // The HTB root of shape rules and the fq root of pace rules go with the datapath;
            // the kernel's default root comes back (see `shape_classes`, `pace_queues`).
            let name = std::slice::from_ref(&name);
            crate::datapath::shape_classes::release(name)?;
            crate::datapath::pace_queues::prune(&std::collections::BTreeSet::new(), name)?;
        }
    }
    if only.is_empty() && pins.exists() {
        pins.remove()?;
        down.removed_maps = true;
    }
    Ok(down)
}

/// Seconds since the Unix epoch, for text output of [`HookStatus::loaded_at_unix`].
pub fn age_seconds(loaded_at_unix: u64) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_secs().saturating_sub(loaded_at_unix))
}
