//! Keeps the `fq` root of every attached interface in step with the pace rules: shaper's pace
//! root (`5350:`) goes onto an interface with its first pace rule and comes off with its last.
//! Unlike shape, nothing is per rule here: the program writes each packet's departure time and
//! one `fq` holds every rule's packets until theirs.
//!
//! # What is put back
//! As for shape rules (see [`shape_classes`](super::shape_classes)): only a root the kernel
//! attached by default is replaced, and deleting shaper's root makes the kernel attach its
//! default again, so nothing needs to be remembered across restarts. One root per interface:
//! an interface cannot have shape rules (an HTB root) and pace rules (an `fq` root) at once.
//!
//! # Multi-queue devices
//! A device with more than one transmit queue gets an `mq` root with an `fq` under each queue:
//! each `fq` has its own lock, as the kernel's own default (`mq` over per-queue qdiscs) does, so
//! pacing, unlike HTB, costs a busy multi-queue NIC no shared lock. A rule's clock is one for
//! all queues (the program keeps it), so its rate holds across them.

use std::collections::BTreeSet;

use crate::datapath::{
    DatapathError, Result, interfaces, kernel_support,
    netlink::{
        fq,
        htb::{self, RootQdisc},
    },
    shape_classes::{self, failed},
};

/// The attached interfaces that need the pace root: each pace rule's own interface, or all of
/// them for a rule on every interface (`None`). Only attached interfaces are kept.
pub fn wanted(
    rule_ifaces: impl IntoIterator<Item = Option<String>>,
    ifaces: &[String],
) -> BTreeSet<String> {
    let mut wanted = BTreeSet::new();
    for iface in rule_ifaces {
        match iface {
            Some(name) if ifaces.contains(&name) => {
                wanted.insert(name);
            }
            Some(_) => {}
            None => wanted.extend(ifaces.iter().filter(|name| !name.is_empty()).cloned()),
        }
    }
    wanted
}

/// Whether `root` may be replaced by either of shaper's roots: the kernel's default, or one of
/// shaper's own (its HTB for shape rules, its `fq`/`mq` for pace rules).
pub fn replaceable(root: &RootQdisc) -> bool {
    root.is_default() || root.is_shapers() || fq::is_pace_root(root)
}

/// Checks, before anything changes, that every interface in `wanted` can have the pace root: no
/// shape rule wants its HTB there, and its root is the kernel's default or shaper's.
pub fn check(wanted: &BTreeSet<String>, shaped: &shape_classes::Wanted) -> Result<()> {
    for name in wanted {
        if shaped
            .get(name)
            .is_some_and(|device| !device.classes.is_empty() && device.ifb_of.is_none())
        {
            return Err(DatapathError::PaceBesideShape {
                iface: name.clone(),
            });
        }
        let ifindex = interfaces::index(name)?;
        if let Some(root) =
            htb::root_qdisc(ifindex).map_err(failed(name, "reading the root qdisc"))?
            && !replaceable(&root)
        {
            return Err(DatapathError::ForeignRoot {
                iface: name.clone(),
                root: root.to_string(),
                action: "pace",
            });
        }
    }
    Ok(())
}

/// Whether `name` has more than one transmit queue (`/sys/class/net/NAME/queues/tx-N`, one per
/// queue in use, net/core/net-sysfs.c `netdev_queue_update_kobjects`).
fn multiqueue(name: &str) -> bool {
    std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("tx-"))
                .count()
                > 1
        })
        .unwrap_or(false)
}

/// Installs the pace root on every interface of `wanted` that lacks it. Runs before the
/// classifier writes a pace rule, so no departure time is written before `fq` is there to keep
/// it (without `fq` a stamped packet would leave at once: the rate would not hold).
pub fn add(wanted: &BTreeSet<String>, shaped: &shape_classes::Wanted) -> Result<()> {
    check(wanted, shaped)?;
    for name in wanted {
        let ifindex = interfaces::index(name)?;
        let root = htb::root_qdisc(ifindex).map_err(failed(name, "reading the root qdisc"))?;
        if root.as_ref().is_some_and(fq::is_pace_root) {
            continue;
        }
        let multiqueue = multiqueue(name);
        fq::install_root(ifindex, multiqueue).map_err(|source| {
            if source.raw_os_error() == Some(libc::ENOENT) {
                DatapathError::PaceNeedsFq {
                    iface: name.clone(),
                    kernel: kernel_support::release(),
                }
            } else {
                failed(name, "installing the fq root qdisc")(source)
            }
        })?;
        let was = root.map_or_else(|| "none".to_owned(), |r| r.to_string());
        if multiqueue {
            log::info!(
                "{name}: root qdisc {was} replaced by shaper's mq 5350: with an fq per transmit \
                 queue for pace rules; the kernel's default comes back with the last pace rule"
            );
        } else {
            log::info!(
                "{name}: root qdisc {was} replaced by shaper's fq 5350: for pace rules; the \
                 kernel's default comes back with the last pace rule"
            );
        }
    }
    Ok(())
}

/// Removes the pace root from each of `ifaces` that has it and is not in `wanted` (the last
/// pace rule there is gone, or every one when `wanted` is empty): the kernel's default root
/// comes back. Returns the interfaces it was removed from.
pub fn prune(wanted: &BTreeSet<String>, ifaces: &[String]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in ifaces.iter().filter(|name| !wanted.contains(*name)) {
        let Ok(ifindex) = interfaces::index(name) else {
            continue;
        };
        let root = htb::root_qdisc(ifindex).map_err(failed(name, "reading the root qdisc"))?;
        let Some(root) = root.filter(fq::is_pace_root) else {
            continue;
        };
        fq::delete_root(ifindex, &root.kind).map_err(failed(name, "deleting the fq root qdisc"))?;
        let now = htb::root_qdisc(ifindex)
            .ok()
            .flatten()
            .map_or_else(|| "none (the device is down)".to_owned(), |r| r.to_string());
        log::info!(
            "{name}: shaper's pace root removed; the root qdisc is the kernel's default again: \
             {now}"
        );
        removed.push(name.clone());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_on_every_interface_wants_them_all_and_an_unattached_one_none() {
        let ifaces = ["eth0".to_owned(), "eth1".to_owned()];
        assert_eq!(
            wanted([Some("eth1".to_owned()), Some("wlan0".to_owned())], &ifaces),
            BTreeSet::from(["eth1".to_owned()])
        );
        assert_eq!(wanted([None], &ifaces).len(), 2);
        assert!(wanted([], &ifaces).is_empty());
    }

    #[test]
    fn only_the_kernels_default_and_shapers_own_roots_are_replaced() {
        let root = |kind: &str, handle| RootQdisc {
            kind: kind.to_owned(),
            handle,
        };
        assert!(replaceable(&root("noqueue", 0)));
        assert!(replaceable(&root("htb", htb::ROOT_HANDLE)));
        assert!(replaceable(&root("fq", fq::ROOT_HANDLE)));
        assert!(!replaceable(&root("fq", 0x0001_0000)));
        assert!(!replaceable(&root("htb", 0x0001_0000)));
    }
}
