//! Where the classifier runs: the interface slots its counters are kept by, attaching to and
//! detaching from each interface's hooks, and what the kernel reports of those attachments.

use aya::maps::{Array, HashMap, MapData};
use shaper_common::{DIRECT_IFINDEXES, maps};

use super::{Classifier, CurrentInterface, Interface, InterfaceState, object_map_mut};
use crate::{
    datapath::attach::{self, AttachMode, Direction},
    datapath::interfaces,
    datapath::{DatapathError, Result},
    error::chain,
};

impl Classifier {
    /// How `iface` is attached in the pinned datapath this classifier adopted, if it is.
    pub fn pinned_mode(&self, iface: &str) -> Option<AttachMode> {
        attach::pinned_mode(self.pins.as_ref()?, iface)
    }

    /// Gives `iface` a counter slot, so the programs count its packets. [`attach`](Self::attach)
    /// does this itself; tests that run the programs with BPF_PROG_TEST_RUN (whose packets arrive
    /// on loopback) call it directly.
    pub fn register(&mut self, name: &str) -> Result<u32> {
        let ifindex = interfaces::index(name)?;
        if let Some(slot) = self.interfaces.iter().position(|i| i.ifindex == ifindex) {
            let iface = &mut self.interfaces[slot];
            iface.current = true;
            iface.name = name.to_owned();
            return Ok(slot as u32);
        }
        // An adopted slot whose interface no longer exists (deleted, or recreated with a new
        // index, as container runtimes do) is handed to the newcomer once the map is full: a
        // pinned datapath cannot grow.
        let stale = self
            .interfaces
            .iter()
            .position(|i| !i.current && interfaces::name(i.ifindex).is_none());
        let slot = match stale {
            _ if (self.interfaces.len() as u32) < self.capacity => self.interfaces.len(),
            Some(slot) => slot,
            None => {
                return Err(DatapathError::TooManyInterfaces {
                    requested: self.interfaces.len() + 1,
                    max: self.capacity,
                });
            }
        };
        let interface = Interface {
            name: name.to_owned(),
            ifindex,
            attachment: None,
            current: true,
        };
        if slot < self.interfaces.len() {
            self.write_slot(self.interfaces[slot].ifindex, None)?;
            self.write_slot(ifindex, Some(slot as u32))?;
            self.interfaces[slot] = interface;
        } else {
            self.write_slot(ifindex, Some(slot as u32))?;
            self.interfaces.push(interface);
        }
        Ok(slot as u32)
    }

    /// Records `ifindex`'s slot (`None`: forgets it) in `IFACE_SLOTS` and, for a small ifindex,
    /// in the array the programs read it from without hashing (see `DIRECT_IFINDEXES`).
    pub(super) fn write_slot(&mut self, ifindex: u32, slot: Option<u32>) -> Result<()> {
        let mut slots: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(object_map_mut(&mut self.ebpf, maps::IFACE_SLOTS)?)?;
        match slot {
            Some(slot) => slots.insert(ifindex, slot, 0)?,
            // Absent already is as good as removed.
            None => {
                let _ = slots.remove(&ifindex);
            }
        }
        if ifindex < DIRECT_IFINDEXES {
            let mut direct: Array<&mut MapData, u32> =
                Array::try_from(object_map_mut(&mut self.ebpf, maps::IFACE_SLOT_BY_IFINDEX)?)?;
            direct.set(ifindex, slot.map_or(0, |slot| slot + 1), 0)?;
        }
        Ok(())
    }

    /// Makes `IFACE_SLOT_BY_IFINDEX` the copy of the adopted slots again, writing only the
    /// entries that differ, so the programs already attached never miss an interface. A
    /// datapath pinned by a build without the array gets it filled here, before the new
    /// programs are attached; one whose array went stale under an older daemon (which kept only
    /// the hash) gets its stale entries cleared.
    pub(super) fn sync_direct_slots(&mut self) -> Result<()> {
        let mut wanted = vec![0u32; DIRECT_IFINDEXES as usize];
        for (slot, interface) in self.interfaces.iter().enumerate() {
            if let Some(entry) = wanted.get_mut(interface.ifindex as usize) {
                *entry = slot as u32 + 1;
            }
        }
        let mut direct: Array<&mut MapData, u32> =
            Array::try_from(object_map_mut(&mut self.ebpf, maps::IFACE_SLOT_BY_IFINDEX)?)?;
        for (ifindex, &entry) in (0u32..).zip(&wanted) {
            if direct.get(&ifindex, 0)? != entry {
                direct.set(ifindex, entry, 0)?;
            }
        }
        Ok(())
    }

    /// Attaches both programs to the ingress and egress hooks of `name`.
    pub fn attach(&mut self, name: &str, mode: AttachMode) -> Result<()> {
        let slot = self.register(name)? as usize;
        let netns = interfaces::netns_inode()?;
        let ifindex = self.interfaces[slot].ifindex;
        let attachment = attach::attach(
            &mut self.ebpf,
            name,
            ifindex,
            netns,
            mode,
            self.pins.as_ref(),
        )?;
        self.interfaces[slot].attachment = Some(attachment);
        Ok(())
    }

    /// Detaches from every interface and removes the pins, maps included: the datapath is gone
    /// and the next daemon starts afresh. Reports the first failure after trying all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first_error = None;
        for iface in &mut self.interfaces {
            let Some(attachment) = iface.attachment.take() else {
                continue;
            };
            if let Err(e) = attach::detach(&mut self.ebpf, &iface.name, iface.ifindex, attachment) {
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_none()
            && let Some(pins) = &self.pins
            && let Err(e) = pins.remove()
        {
            first_error = Some(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Leaves every attachment and pin in place for the next daemon to adopt: the programs keep
    /// counting and policing with the pinned maps while no daemon runs.
    pub fn release_all(&mut self) {
        for iface in &mut self.interfaces {
            if let Some(attachment) = iface.attachment.take() {
                attach::release(attachment);
            }
        }
    }

    /// Detaches and unpins an interface an earlier daemon attached that this one does not name
    /// (it was removed from the configuration), and frees its slot.
    pub fn drop_pinned_interface(&mut self, iface: &str) -> Result<()> {
        let Some(pins) = self.pins.clone() else {
            return Ok(());
        };
        attach::remove_pinned(&pins, iface)?;
        if let Some(slot) = self
            .interfaces
            .iter()
            .position(|i| !i.current && i.name == iface)
        {
            let ifindex = self.interfaces[slot].ifindex;
            // Only the last slot can go without leaving a gap; an inner one stays reserved.
            if slot + 1 == self.interfaces.len() {
                self.write_slot(ifindex, None)?;
                self.interfaces.pop();
            }
        }
        Ok(())
    }

    /// The program of one direction, for BPF_PROG_TEST_RUN.
    pub fn program_mut(
        &mut self,
        direction: Direction,
    ) -> Result<&mut aya::programs::SchedClassifier> {
        attach::program_mut(&mut self.ebpf, direction)
    }

    /// Points the ingress shape rules of interface `name` at IFB device `ifb` (0: none, they
    /// pass unshaped). An interface this daemon does not name has nothing to point.
    pub fn set_shape_ifb(&mut self, name: &str, ifb: u32) -> Result<()> {
        let Some(slot) = self
            .interfaces
            .iter()
            .position(|i| i.current && i.name == name)
        else {
            return Ok(());
        };
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(object_map_mut(&mut self.ebpf, maps::SHAPE_IFB)?)?;
        map.set(slot as u32, ifb, 0)?;
        Ok(())
    }

    /// The interfaces this daemon registered, by slot, with how each is attached.
    pub fn current_interfaces(&self) -> Vec<CurrentInterface> {
        self.interfaces
            .iter()
            .enumerate()
            .filter(|(_, iface)| iface.current)
            .map(|(slot, iface)| CurrentInterface {
                slot: slot as u32,
                name: iface.name.clone(),
                ifindex: iface.ifindex,
                mode: iface.attachment.as_ref().map(|a| a.mode),
            })
            .collect()
    }

    /// Names of the registered interfaces, in slot order; an adopted slot this daemon does not
    /// use is named "", which no interface-specific rule matches.
    pub fn interface_names(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .map(|i| {
                if i.current {
                    i.name.clone()
                } else {
                    String::new()
                }
            })
            .collect()
    }

    /// Whether the interface slot is one this daemon registered (not an adopted leftover).
    pub fn slot_is_current(&self, slot: u32) -> bool {
        self.interfaces
            .get(slot as usize)
            .is_some_and(|i| i.current)
    }

    /// Every registered interface, with its attachment checked against the kernel. A check
    /// that fails (the kernel refuses the query) is logged and reported as not attached: a
    /// program that cannot be seen cannot be vouched for.
    pub fn interface_states(&self) -> Vec<InterfaceState> {
        let mut states = Vec::with_capacity(self.interfaces.len());
        for (slot, iface) in self.interfaces.iter().enumerate() {
            if !iface.current {
                continue;
            }
            let mode = iface.attachment.as_ref().map(|a| a.mode);
            let attached = Direction::BOTH
                .into_iter()
                .map(|direction| {
                    let Some(mode) = mode else {
                        return (direction, false);
                    };
                    let now = attach::attached_now(
                        &self.ebpf,
                        &iface.name,
                        iface.ifindex,
                        mode,
                        direction,
                    )
                    .unwrap_or_else(|e| {
                        log::warn!("{} {}: {}", iface.name, direction.name(), chain(&e));
                        false
                    });
                    (direction, now)
                })
                .collect();
            states.push(InterfaceState {
                slot: slot as u32,
                name: iface.name.clone(),
                mode,
                attached,
            });
        }
        states
    }
}
