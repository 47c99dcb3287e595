//! Keeps the HTB classes of every attached interface in step with the shape rules: shaper's HTB
//! root goes onto an interface with its first shape rule and comes off with its last, one class
//! per shape rule in between.
//!
//! # What is put back
//! shaper only replaces a root qdisc the kernel attached by default (handle 0: `noqueue` on a
//! veth, `pfifo_fast`, `fq_codel` or `mq` on a NIC), and refuses a rule that would replace one
//! somebody added (`tc qdisc add dev X root ...`), whose options it could not restore exactly.
//! Deleting shaper's root then makes the kernel attach its default again
//! (net/sched/sch_generic.c `dev_activate` → `attach_default_qdiscs`): the same kind, with the
//! current `net.core.default_qdisc`. Nothing needs to be remembered, so a restarted daemon, or
//! `shaper down`, restores an interface as well as the daemon that took it over.
//!
//! # Multi-queue devices
//! A NIC's default root is `mq`, one qdisc per transmit queue, each with its own lock. HTB is a
//! single qdisc: every CPU sending on the device takes its one lock (net/core/dev.c
//! `__dev_xmit_skb`). That costs throughput on a busy multi-queue NIC, for every packet, shaped
//! or not; the daemon says so when it replaces an `mq` root.
//!
//! Classes are named after their rule (`5348:<id>`), so the classifier needs no map from rule to
//! class. A class's queue is a bfifo of the rule's queue bytes on egress and `fq_codel` with ECN
//! on an IFB device (ingress), where the kernel has it:
//! [`class_queue`](crate::datapath::netlink::class_queue) says why.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    datapath::{
        DatapathError, Result,
        classifier::Classifier,
        interfaces,
        netlink::{
            class_queue::Kind,
            htb::{self, ClassSpec, ClassStats},
            ifb,
        },
    },
    types::keywords::DirSel,
};

/// What one shape rule asks of the devices: its class, on one interface or on all of them
/// (`iface` `None`), in the directions `dir` names (egress on the interface itself, ingress on
/// its IFB device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRequest {
    pub class: ClassSpec,
    pub iface: Option<String>,
    pub dir: DirSel,
}

/// The classes one device should have, and for an IFB device the interface it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub classes: BTreeMap<u16, ClassSpec>,
    /// `Some(interface)` for the IFB device of that interface's ingress shape rules.
    pub ifb_of: Option<String>,
}

/// The classes each device should have, by device name: every attached interface (egress
/// shape rules) and its IFB device (ingress shape rules). Every attached interface and IFB
/// name is a key, so one left without shape rules is pruned.
pub type Wanted = BTreeMap<String, Device>;

/// The classes `requests` ask for on the attached interfaces `ifaces`: each on its one
/// interface, or on all of them, in each of its directions.
pub fn wanted(requests: impl IntoIterator<Item = ClassRequest>, ifaces: &[String]) -> Wanted {
    let mut wanted = Wanted::new();
    let mut devices = Vec::new();
    for name in ifaces.iter().filter(|name| !name.is_empty()) {
        wanted.insert(name.clone(), Device::default());
        let ifb = interfaces::index(name).ok().map(ifb::name_for);
        if let Some(ifb) = &ifb {
            wanted.insert(
                ifb.clone(),
                Device {
                    classes: BTreeMap::new(),
                    ifb_of: Some(name.clone()),
                },
            );
        }
        devices.push((name.clone(), ifb));
    }
    for request in requests {
        let spec = request.class;
        let directions = request.dir.directions();
        for (name, ifb) in &devices {
            if request.iface.as_ref().is_some_and(|only| only != name) {
                continue;
            }
            if directions.contains(&shaper_common::DIR_EGRESS)
                && let Some(device) = wanted.get_mut(name)
            {
                device.classes.insert(spec.rule, spec);
            }
            if directions.contains(&shaper_common::DIR_INGRESS)
                && let Some(device) = ifb.as_ref().and_then(|ifb| wanted.get_mut(ifb))
            {
                device.classes.insert(spec.rule, spec);
            }
        }
    }
    wanted
}

/// The error of a qdisc request (`what`) on `iface` that failed; pace_queues' too.
pub(super) fn failed(
    iface: &str,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> DatapathError {
    let iface = iface.to_owned();
    move |source| DatapathError::Shape {
        iface,
        what,
        source,
    }
}

/// Checks, before anything changes, that every interface that needs shaper's root can have it:
/// its root is shaper's or the kernel's default.
pub fn check(wanted: &Wanted) -> Result<()> {
    for (name, device) in wanted {
        if device.classes.is_empty() {
            continue;
        }
        // An IFB device shaper has not made yet has no root to keep.
        let Ok(ifindex) = interfaces::index(name) else {
            if device.ifb_of.is_some() {
                continue;
            }
            return Err(DatapathError::InterfaceNotFound(name.clone()));
        };
        if let Some(root) =
            htb::root_qdisc(ifindex).map_err(failed(name, "reading the root qdisc"))?
            && !super::pace_queues::replaceable(&root)
        {
            return Err(DatapathError::ShapeForeignRoot {
                iface: name.clone(),
                root: root.to_string(),
            });
        }
    }
    Ok(())
}

/// Adds what `wanted` lacks: the IFB devices of ingress shape rules, shaper's root where a
/// device needs one, and every missing class; the classes of rules in `changed` are set again
/// even if they exist (a new rate, burst or queue). Removes nothing, so it runs before the
/// classifier names a new class. An IFB device is handed to the classifier last, once its
/// classes are there.
pub fn add(classifier: &mut Classifier, wanted: &Wanted, changed: &BTreeSet<u16>) -> Result<()> {
    check(wanted)?;
    for (name, device) in wanted {
        if device.classes.is_empty() {
            continue;
        }
        if device.ifb_of.is_some() {
            ifb::create(name).map_err(failed(name, "creating the IFB device"))?;
        }
        let ifindex = interfaces::index(name)?;
        let root = htb::root_qdisc(ifindex).map_err(failed(name, "reading the root qdisc"))?;
        if !root.as_ref().is_some_and(htb::RootQdisc::is_shapers) {
            htb::install_root(ifindex).map_err(failed(name, "installing the HTB root qdisc"))?;
            match &root {
                Some(root) if root.kind == "mq" => log::warn!(
                    "{name}: the multi-queue root qdisc {root} is replaced by shaper's HTB \
                     5348: for shape rules; HTB serialises the device's transmit path on one \
                     lock, for all traffic. The kernel's default comes back with the last \
                     shape rule"
                ),
                Some(root) if device.ifb_of.is_none() => log::info!(
                    "{name}: the kernel's default root qdisc {root} is replaced by shaper's HTB \
                     5348: for shape rules; it comes back with the last shape rule"
                ),
                _ => log::info!("{name}: shaper's HTB 5348: is the root qdisc"),
            }
        }
        let existing: BTreeSet<u16> = htb::classes(ifindex)
            .map_err(failed(name, "listing the HTB classes"))?
            .into_iter()
            .map(|class| class.rule)
            .collect();
        let to_set: Vec<(&u16, &ClassSpec)> = device
            .classes
            .iter()
            .filter(|(id, _)| !existing.contains(id) || changed.contains(id))
            .collect();
        // The queues are read only when a class is set: most calls change nothing here.
        let leaves = match to_set.is_empty() {
            true => BTreeMap::new(),
            false => htb::leaves(ifindex).map_err(failed(name, "listing the class queues"))?,
        };
        // Remote senders (ingress, on the IFB) are told of the queue by CoDel's marks.
        let queue = match device.ifb_of {
            Some(_) => Kind::FqCodel,
            None => Kind::Fifo,
        };
        for (id, spec) in to_set {
            let leaf = leaves
                .get(&shaper_common::shape_class_id(u32::from(*id)))
                .copied();
            let kind = htb::set_class(ifindex, spec, leaf, queue)
                .map_err(failed(name, "setting a shape rule's HTB class"))?;
            if leaf.is_none() {
                log::debug!("{name}: shape rule {id}'s class queues in {}", kind.name());
            }
        }
        if let Some(iface) = &device.ifb_of {
            classifier.set_shape_ifb(iface, ifindex)?;
        }
    }
    Ok(())
}

/// Removes what `wanted` no longer has: the classes of rules gone (or no longer shape rules),
/// shaper's root from an interface left without a shape rule, which brings the kernel's
/// default root back, and an IFB device left without one (after the classifier stopped sending
/// packets to it). Runs after the classifier stopped naming those classes.
pub fn prune(classifier: &mut Classifier, wanted: &Wanted) -> Result<()> {
    for (name, device) in wanted {
        let Ok(ifindex) = interfaces::index(name) else {
            continue;
        };
        if let Some(iface) = &device.ifb_of
            && device.classes.is_empty()
        {
            classifier.set_shape_ifb(iface, 0)?;
            ifb::delete(ifindex).map_err(failed(name, "removing the IFB device"))?;
            log::info!("{name}: IFB device of {iface}'s ingress shape rules removed");
            continue;
        }
        let root = htb::root_qdisc(ifindex).map_err(failed(name, "reading the root qdisc"))?;
        if !root.as_ref().is_some_and(htb::RootQdisc::is_shapers) {
            continue;
        }
        if device.classes.is_empty() {
            remove_root(name, ifindex)?;
            continue;
        }
        for class in htb::classes(ifindex).map_err(failed(name, "listing the HTB classes"))? {
            if !device.classes.contains_key(&class.rule) {
                htb::delete_class(ifindex, class.rule)
                    .map_err(failed(name, "deleting a shape rule's HTB class"))?;
            }
        }
    }
    Ok(())
}

fn remove_root(name: &str, ifindex: u32) -> Result<()> {
    htb::delete_root(ifindex).map_err(failed(name, "deleting the HTB root qdisc"))?;
    let now = htb::root_qdisc(ifindex)
        .ok()
        .flatten()
        .map_or_else(|| "none (the device is down)".to_owned(), |r| r.to_string());
    log::info!(
        "{name}: shaper's HTB root removed; the root qdisc is the kernel's default again: {now}"
    );
    Ok(())
}

/// Removes shaper's root from each of `ifaces` that has it (daemon stop, `shaper down`);
/// returns the interfaces it was removed from. An interface that is gone has nothing to remove.
pub fn release(ifaces: &[String]) -> Result<Vec<String>> {
    let mut released = Vec::new();
    for name in ifaces {
        let Ok(ifindex) = interfaces::index(name) else {
            continue;
        };
        let root = htb::root_qdisc(ifindex).map_err(failed(name, "reading the root qdisc"))?;
        if root.as_ref().is_some_and(htb::RootQdisc::is_shapers) {
            remove_root(name, ifindex)?;
            released.push(name.clone());
        }
        let ifb_name = ifb::name_for(ifindex);
        if let Ok(ifb_index) = interfaces::index(&ifb_name) {
            ifb::delete(ifb_index).map_err(failed(&ifb_name, "removing the IFB device"))?;
            released.push(ifb_name);
        }
    }
    Ok(released)
}

/// The statistics of every shape rule's classes, summed over `ifaces`, by rule id: one dump per
/// interface however many rules there are. An interface that cannot be read adds nothing.
pub fn stats(ifaces: &[String]) -> BTreeMap<u16, ClassStats> {
    let mut sums: BTreeMap<u16, ClassStats> = BTreeMap::new();
    let ifbs = ifaces
        .iter()
        .filter_map(|name| interfaces::index(name).ok())
        .map(ifb::name_for);
    let devices: Vec<String> = ifaces.iter().cloned().chain(ifbs).collect();
    for name in &devices {
        let Ok(ifindex) = interfaces::index(name) else {
            continue;
        };
        let leaves = htb::leaves(ifindex).unwrap_or_default();
        for class in htb::classes(ifindex).unwrap_or_default() {
            let sum = sums.entry(class.rule).or_default();
            sum.packets += class.stats.packets;
            sum.bytes += class.stats.bytes;
            sum.backlog_packets += class.stats.backlog_packets;
            sum.backlog_bytes += class.stats.backlog_bytes;
            // The queue's own count holds the class's (a bfifo's overflow is counted in both)
            // and CoDel's drops, which the class never sees.
            let leaf = leaves.get(&shaper_common::shape_class_id(u32::from(class.rule)));
            sum.drops += leaf.map_or(class.stats.drops, |leaf| leaf.drops.max(class.stats.drops));
            sum.marks += leaf.map_or(0, |leaf| leaf.marks);
        }
    }
    sums
}
