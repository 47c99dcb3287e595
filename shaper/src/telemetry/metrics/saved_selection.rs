//! The selection saved beside the state file, so that `port="other"` continues across a daemon
//! restart, crash or upgrade instead of falling (which Prometheus would take for a reset).
//!
//! A port's own series is its kernel counter; `other` also holds the offsets of the
//! [`Selector`], which live in the daemon. So every scrape that changed the selector's memory
//! writes it to `metrics-selection.<state file name>` beside the state file (by default
//! `/var/lib/shaper/metrics-selection.state.json`), and a new daemon resumes from it. The write
//! happens before the scrape's answer is sent, so the file always holds the last scrape
//! Prometheus saw, or one after it that it did not see: the selector's series never fall from
//! one scrape to the next, so resuming from either is monotonic for Prometheus.
//!
//! The memory is only worth resuming over the same kernel counters. The file records the
//! daemon's datapath identity (opaque here); a file of another datapath, as after `shaper down`
//! or a reboot, is set aside (every counter starts from zero then anyway), and so is a file whose
//! shown ports' counters are now lower than it says. An unreadable file, or one of another
//! version, is set aside with a warning: metrics never stop the daemon, and `other` then starts
//! afresh — Prometheus sees that as one reset of `other`.
//!
//! Groups are saved under the interface's name, as the `iface` label has it, not its slot; ports
//! of an interface the new daemon does not have are dropped.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use super::port_selection::{Group, Memory, Offset, PortKey, Selector, Totals};
use crate::{
    Direction,
    datapath::classifier::{InterfaceState, PROTOCOLS},
};

/// The file format's version. A reader refuses any other (and starts afresh).
const VERSION: u32 = 1;

/// The file's name beside the state file `state`: `metrics-selection.` and the state file's
/// name, so daemons with their own `--state` in one directory have their own selection too.
pub fn path_beside(state: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from("metrics-selection.");
    name.push(state.file_name().unwrap_or_default());
    state.with_file_name(name)
}

/// A datapath identity for a daemon whose kernel counters start from zero with it (they are
/// not pinned): unique to this daemon's start, so that no saved selection is resumed over
/// counters that started afresh.
pub fn unpinned_datapath_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "unpinned {} {} {since_epoch}",
        boot.trim(),
        std::process::id()
    )
}

/// The file: its version first, so a reader can refuse another version before reading on.
#[derive(Debug, Serialize, Deserialize)]
struct SavedFile {
    version: u32,
    /// The datapath whose counters the shown ports' totals were read from.
    datapath: String,
    groups: Vec<SavedGroup>,
}

#[derive(Debug, Deserialize)]
struct Version {
    version: u32,
}

/// One (interface, direction, protocol) group: its offset and the ports it showed, each as
/// `[port, packets, bytes, dropped packets, dropped bytes, would-drop packets, would-drop
/// bytes]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedGroup {
    iface: String,
    direction: String,
    proto: String,
    offset: Offset,
    shown: Vec<[u64; 7]>,
}

/// Why a saved selection is not resumed.
#[derive(Debug, PartialEq, Eq)]
enum SetAside {
    /// It was saved over another datapath (expected after `shaper down` or a reboot).
    OtherDatapath,
    /// It cannot be read, or not by this version.
    Unreadable(String),
}

/// The selection saved beside the state file: read at start-up, resumed at the first scrape,
/// rewritten after every scrape that changed it.
#[derive(Debug)]
pub(super) struct SelectionFile {
    path: PathBuf,
    datapath_id: String,
    /// Read at start-up, resumed at the first scrape (which knows the interfaces' slots).
    pending: Option<Vec<SavedGroup>>,
    /// The selector's revision last written.
    written: Option<u64>,
    /// Whether the last write failed (warned once, until one succeeds).
    failing: bool,
}

impl SelectionFile {
    /// Reads the selection saved at `path` over the datapath `datapath_id`, to resume at the
    /// first scrape. A missing file is a fresh start; one that cannot be resumed is logged and
    /// is a fresh start too.
    pub(super) fn open(path: PathBuf, datapath_id: String) -> Self {
        let pending = match read(&path, &datapath_id) {
            Ok(groups) => groups,
            Err(SetAside::OtherDatapath) => {
                info!(
                    "{}: saved over another datapath; port=\"other\" starts afresh, like every \
                     counter",
                    path.display()
                );
                None
            }
            Err(SetAside::Unreadable(reason)) => {
                warn!(
                    "{}: {reason}; starting the metrics selection afresh (Prometheus sees one \
                     reset of port=\"other\")",
                    path.display()
                );
                None
            }
        };
        Self {
            path,
            datapath_id,
            pending,
            written: None,
            failing: false,
        }
    }

    /// Before the first scrape's selection: replaces `selector` with the saved one, unless the
    /// counters it saw have gone back since (then the datapath is not the one it was saved
    /// over, whatever its identity says).
    pub(super) fn resume(
        &mut self,
        selector: &mut Selector,
        interfaces: &[InterfaceState],
        active: &[(PortKey, Totals)],
    ) {
        let Some(groups) = self.pending.take() else {
            return;
        };
        let resumed = Selector::resume(memory(&groups, interfaces));
        if resumed.counters_went_back(active) {
            warn!(
                "{}: port counters are lower than when it was saved (the datapath started \
                 afresh); starting the metrics selection afresh (Prometheus sees one reset of \
                 port=\"other\")",
                self.path.display()
            );
            return;
        }
        *selector = resumed;
    }

    /// After a scrape's selection, before its answer: saves the selector's memory if it
    /// changed. A failed write is logged once (the daemon serves on; a restart would then
    /// resume an older selection, and Prometheus could see `other` fall once).
    pub(super) fn save(&mut self, selector: &Selector, interfaces: &[InterfaceState]) {
        if self.written == Some(selector.revision()) {
            return;
        }
        let Some(memory) = selector.memory() else {
            return;
        };
        let text = to_json(&self.datapath_id, &groups(&memory, interfaces));
        match crate::private_files::write_atomically(&self.path, &text) {
            Ok(()) => {
                self.written = Some(selector.revision());
                if self.failing {
                    info!("{}: saved again", self.path.display());
                }
                self.failing = false;
            }
            Err(error) => {
                if !self.failing {
                    warn!(
                        "{}: cannot save the metrics selection: {error} (a restarted daemon \
                         would resume an older one; retrying at every scrape)",
                        self.path.display()
                    );
                }
                self.failing = true;
            }
        }
    }
}

/// The saved groups, if `path` holds a selection of this version saved over `datapath_id`.
fn read(path: &Path, datapath_id: &str) -> Result<Option<Vec<SavedGroup>>, SetAside> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SetAside::Unreadable(e.to_string())),
    };
    let unreadable = |e: serde_json::Error| SetAside::Unreadable(format!("not a selection: {e}"));
    let Version { version } = serde_json::from_slice(&text).map_err(unreadable)?;
    if version != VERSION {
        return Err(SetAside::Unreadable(format!(
            "version {version} (this shaper reads version {VERSION})"
        )));
    }
    let saved: SavedFile = serde_json::from_slice(&text).map_err(unreadable)?;
    if saved.datapath != datapath_id {
        return Err(SetAside::OtherDatapath);
    }
    for group in &saved.groups {
        if direction(&group.direction).is_none() || proto(&group.proto).is_none() {
            return Err(SetAside::Unreadable(format!(
                "unknown direction or protocol in group {} {} {}",
                group.iface, group.direction, group.proto
            )));
        }
    }
    Ok(Some(saved.groups))
}

fn direction(name: &str) -> Option<u32> {
    Direction::BOTH
        .into_iter()
        .find(|d| d.name() == name)
        .map(Direction::index)
}

fn proto(name: &str) -> Option<u32> {
    PROTOCOLS
        .into_iter()
        .find(|p| p.name() == name)
        .map(|p| p.index())
}

/// The selector's memory as saved groups, by interface name.
fn groups(memory: &Memory, interfaces: &[InterfaceState]) -> Vec<SavedGroup> {
    let mut by_group: BTreeMap<Group, (Offset, Vec<[u64; 7]>)> = BTreeMap::new();
    for &(group, offset) in &memory.offsets {
        by_group.entry(group).or_default().0 = offset;
    }
    for (key, totals) in &memory.shown {
        let group = Group {
            slot: key.slot,
            direction: key.direction,
            proto: key.proto,
        };
        let mut port = [u64::from(key.port); 7];
        port[1..].copy_from_slice(totals);
        by_group.entry(group).or_default().1.push(port);
    }
    let direction_name = |index| {
        Direction::BOTH
            .into_iter()
            .find(|d| d.index() == index)
            .map(Direction::name)
    };
    let proto_name = |index| {
        PROTOCOLS
            .into_iter()
            .find(|p| p.index() == index)
            .map(|p| p.name())
    };
    by_group
        .into_iter()
        .filter_map(|(group, (offset, shown))| {
            Some(SavedGroup {
                iface: interfaces
                    .iter()
                    .find(|i| i.slot == group.slot)?
                    .name
                    .clone(),
                direction: direction_name(group.direction)?.to_owned(),
                proto: proto_name(group.proto)?.to_owned(),
                offset,
                shown,
            })
        })
        .collect()
}

/// Saved groups as a selector's memory, on this daemon's interfaces (checked by [`read`]: the
/// direction and protocol names are known).
fn memory(groups: &[SavedGroup], interfaces: &[InterfaceState]) -> Memory {
    let mut memory = Memory::default();
    for saved in groups {
        let (Some(iface), Some(direction), Some(proto)) = (
            interfaces.iter().find(|i| i.name == saved.iface),
            direction(&saved.direction),
            proto(&saved.proto),
        ) else {
            continue;
        };
        let group = Group {
            slot: iface.slot,
            direction,
            proto,
        };
        if saved.offset != [0; 6] {
            memory.offsets.push((group, saved.offset));
        }
        for port in &saved.shown {
            let Ok(number) = u16::try_from(port[0]) else {
                continue;
            };
            let key = PortKey {
                slot: group.slot,
                direction,
                proto,
                port: number,
            };
            let mut totals = [0; 6];
            totals.copy_from_slice(&port[1..]);
            memory.shown.push((key, totals));
        }
    }
    memory
}

/// The file's text: one group per line.
fn to_json(datapath_id: &str, groups: &[SavedGroup]) -> Vec<u8> {
    let mut out = format!(
        "{{\"version\": {VERSION}, \"datapath\": {}, \"groups\": [",
        serde_json::Value::from(datapath_id)
    )
    .into_bytes();
    for (i, group) in groups.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        // Plain strings and numbers: serializing them cannot fail.
        if let Err(error) = serde_json::to_writer(&mut out, group) {
            log::error!("serializing the metrics selection failed: {error}");
        }
    }
    out.extend_from_slice(b"\n]}\n");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::telemetry::metrics::Selection;

    fn interfaces(names: &[&str]) -> Vec<InterfaceState> {
        names
            .iter()
            .enumerate()
            .map(|(slot, name)| InterfaceState {
                slot: slot as u32,
                name: (*name).to_owned(),
                mode: None,
                attached: Vec::new(),
            })
            .collect()
    }

    /// A directory of its own per test, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "shaper-selection-test-{}-{tag}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }

        fn file(&self) -> PathBuf {
            path_beside(&self.0.join("state.json"))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Pseudo-random traffic over 40 ports on two interfaces, both directions and protocols:
    /// every active port at each scrape.
    fn churn(scrapes: usize) -> Vec<Vec<(PortKey, Totals)>> {
        let mut counters = [[0u64; 6]; 40];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..scrapes)
            .map(|_| {
                counters
                    .iter_mut()
                    .enumerate()
                    .map(|(i, totals)| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let bytes = state % 1_000;
                        let grow = [bytes / 100, bytes, bytes / 500, bytes / 5, 0, bytes / 7];
                        for (t, g) in totals.iter_mut().zip(grow) {
                            *t += g;
                        }
                        let key = PortKey {
                            slot: (i % 2) as u32,
                            direction: (i / 2 % 2) as u32,
                            proto: (i / 4 % 2) as u32,
                            port: 9000 + i as u16,
                        };
                        (key, *totals)
                    })
                    .collect()
            })
            .collect()
    }

    fn pinned(key: &PortKey) -> bool {
        key.port == 9007
    }

    /// A selection with each slot's ports moved to `slot_map[slot]`, sorted again.
    fn on_slots(selection: &Selection, slot_map: [u32; 2]) -> Selection {
        let mut shown: Vec<_> = selection
            .shown
            .iter()
            .map(|&(key, totals)| {
                let slot = slot_map[key.slot as usize];
                (PortKey { slot, ..key }, totals)
            })
            .collect();
        shown.sort_unstable_by_key(|(key, _)| *key);
        let mut other: Vec<_> = selection
            .other
            .iter()
            .map(|&(group, totals)| {
                let slot = slot_map[group.slot as usize];
                (Group { slot, ..group }, totals)
            })
            .collect();
        other.sort_unstable_by_key(|(group, _)| *group);
        Selection { shown, other }
    }

    #[test]
    fn a_daemon_resuming_the_file_continues_exactly_by_interface_name() {
        let scrapes = churn(60);
        let before = interfaces(&["eth0", "eth1"]);
        // The new daemon registered the interfaces the other way round: groups follow names.
        let after = interfaces(&["eth1", "eth0"]);
        let mut uninterrupted = Selector::default();
        let expected: Vec<Selection> = scrapes
            .iter()
            .map(|active| uninterrupted.select(active.clone(), pinned, 3))
            .collect();
        for stop in [1, 2, 7, 30, 59] {
            let dir = TempDir::new(&format!("resume-{stop}"));
            let mut file = SelectionFile::open(dir.file(), "datapath 1".into());
            let mut first = Selector::default();
            for active in &scrapes[..stop] {
                file.resume(&mut first, &before, active);
                first.select(active.clone(), pinned, 3);
                file.save(&first, &before);
            }
            drop((first, file));

            let mut file = SelectionFile::open(dir.file(), "datapath 1".into());
            let mut resumed = Selector::default();
            for (scrape, active) in scrapes.iter().enumerate().skip(stop) {
                let active: Vec<_> = active
                    .iter()
                    .map(|&(key, totals)| {
                        (
                            PortKey {
                                slot: 1 - key.slot,
                                ..key
                            },
                            totals,
                        )
                    })
                    .collect();
                file.resume(&mut resumed, &after, &active);
                let selection = resumed.select(active, pinned, 3);
                file.save(&resumed, &after);
                assert_eq!(
                    selection,
                    on_slots(&expected[scrape], [1, 0]),
                    "stopped after {stop} scrapes; scrape {scrape} differs"
                );
            }
        }
    }

    #[test]
    fn a_file_is_written_only_when_the_selection_changed() {
        let dir = TempDir::new("unchanged");
        let eth0 = interfaces(&["eth0"]);
        let mut file = SelectionFile::open(dir.file(), "d".into());
        let mut selector = Selector::default();
        let active = churn(1).remove(0);
        let active: Vec<_> = active.into_iter().filter(|(k, _)| k.slot == 0).collect();
        selector.select(active.clone(), pinned, 3);
        file.save(&selector, &eth0);
        let text = std::fs::read_to_string(dir.file()).expect("saved");
        assert!(
            text.starts_with("{\"version\": 1, \"datapath\": \"d\""),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.len() > 2
                && lines[1..lines.len() - 1]
                    .iter()
                    .all(|line| line.starts_with("{\"iface\"")),
            "one line per group:\n{text}"
        );
        std::fs::remove_file(dir.file()).expect("remove");
        // The same counters again: nothing to save.
        selector.select(active, pinned, 3);
        file.save(&selector, &eth0);
        assert!(!dir.file().exists());
    }

    #[test]
    fn an_unreadable_file_or_another_version_is_set_aside_and_replaced() {
        let dir = TempDir::new("corrupt");
        let eth0 = interfaces(&["eth0"]);
        assert_eq!(read(&dir.file(), "d"), Ok(None), "no file: a fresh start");
        std::fs::create_dir_all(&dir.0).expect("dir");
        for (text, reason) in [
            ("garbage", "not a selection"),
            (
                "{\"version\": 1, \"datapath\": \"d\", \"gro",
                "not a selection",
            ),
            ("", "not a selection"),
            (
                "{\"version\": 2, \"datapath\": \"d\", \"groups\": {}}",
                "version 2 (this shaper reads version 1)",
            ),
            (
                "{\"version\": 1, \"datapath\": \"d\", \"groups\": [{\"iface\": \"eth0\", \
                 \"direction\": \"sideways\", \"proto\": \"udp\", \"offset\": [0,0,0,0,0,0], \
                 \"shown\": []}]}",
                "unknown direction",
            ),
        ] {
            std::fs::write(dir.file(), text).expect("write");
            match read(&dir.file(), "d") {
                Err(SetAside::Unreadable(message)) => {
                    assert!(message.contains(reason), "{text:?}: {message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
            // Opening it warns and starts afresh; the first scrape writes a good file.
            let mut file = SelectionFile::open(dir.file(), "d".into());
            let mut selector = Selector::default();
            let active = vec![(
                PortKey {
                    slot: 0,
                    direction: 0,
                    proto: 0,
                    port: 80,
                },
                [1, 100, 0, 0, 0, 0],
            )];
            file.resume(&mut selector, &eth0, &active);
            assert_eq!(selector.memory(), None, "{text:?}: started afresh");
            selector.select(active, |_| false, 1);
            file.save(&selector, &eth0);
            assert!(matches!(read(&dir.file(), "d"), Ok(Some(_))));
        }
    }

    #[test]
    fn a_file_of_another_datapath_or_over_lower_counters_is_not_resumed() {
        let dir = TempDir::new("datapath");
        let eth0 = interfaces(&["eth0"]);
        let key = |port| PortKey {
            slot: 0,
            direction: 0,
            proto: 1,
            port,
        };
        let mut selector = Selector::default();
        let mut file = SelectionFile::open(dir.file(), "pinned A".into());
        selector.select(
            vec![
                (key(80), [5, 500, 0, 0, 0, 0]),
                (key(81), [1, 100, 0, 0, 0, 0]),
            ],
            |_| false,
            1,
        );
        file.save(&selector, &eth0);

        assert_eq!(read(&dir.file(), "pinned B"), Err(SetAside::OtherDatapath));
        let mut fresh = Selector::default();
        let mut other = SelectionFile::open(dir.file(), "pinned B".into());
        other.resume(&mut fresh, &eth0, &[(key(80), [6, 600, 0, 0, 0, 0])]);
        assert_eq!(fresh.memory(), None);

        // The same identity, but 80's counters are below the saved ones: started afresh.
        let mut same = SelectionFile::open(dir.file(), "pinned A".into());
        same.resume(&mut fresh, &eth0, &[(key(80), [1, 60, 0, 0, 0, 0])]);
        assert_eq!(fresh.memory(), None);

        // Counters at or above the saved ones: resumed.
        let mut same = SelectionFile::open(dir.file(), "pinned A".into());
        same.resume(&mut fresh, &eth0, &[(key(80), [5, 500, 0, 0, 0, 0])]);
        assert_eq!(fresh.memory(), selector.memory());
    }

    #[test]
    fn offsets_beyond_64_bits_round_trip() {
        let groups = vec![SavedGroup {
            iface: "eth0".into(),
            direction: "egress".into(),
            proto: "tcp".into(),
            offset: [-6 * i128::from(u64::MAX), i128::MAX, i128::MIN, -1, 0, 1],
            shown: vec![[65_535, u64::MAX, u64::MAX, 0, 0, 1, 2]],
        }];
        let text = to_json("id with \"quotes\"", &groups);
        let saved: SavedFile = serde_json::from_slice(&text).expect("parse");
        assert_eq!(saved.datapath, "id with \"quotes\"");
        assert_eq!(saved.groups, groups);
    }

    #[test]
    fn the_file_sits_beside_the_state_file_and_is_named_after_it() {
        assert_eq!(
            path_beside(Path::new("/var/lib/shaper/state.json")),
            Path::new("/var/lib/shaper/metrics-selection.state.json")
        );
        assert_eq!(
            path_beside(Path::new("/srv/eth1-rules")),
            Path::new("/srv/metrics-selection.eth1-rules")
        );
    }

    #[test]
    fn the_largest_selection_makes_a_small_file() {
        // 1,024 rule-pinned ports in both directions and protocols, and the top 100, with
        // counters of a long-running, busy daemon.
        let dir = TempDir::new("largest");
        let eth0 = interfaces(&["eth0"]);
        let mut active = Vec::new();
        for direction in 0..2 {
            for proto in 0..2 {
                for port in 1..=1_124u16 {
                    let key = PortKey {
                        slot: 0,
                        direction,
                        proto,
                        port: 10_000 + port,
                    };
                    let bytes = 123_456_789_012_345 + u64::from(port);
                    active.push((key, [bytes / 900, bytes, bytes / 90, bytes / 9, 0, 0]));
                }
            }
        }
        let mut selector = Selector::default();
        let selection = selector.select(active, |k| k.port <= 11_024, 100);
        assert_eq!(selection.shown.len(), 4 * 1_024 + 100);
        let mut file = SelectionFile::open(dir.file(), unpinned_datapath_id());
        let started = Instant::now();
        file.save(&selector, &eth0);
        let took = started.elapsed();
        let size = std::fs::metadata(dir.file()).expect("saved").len();
        println!(
            "{} shown ports: {size} bytes, written in {:.2} ms",
            selection.shown.len(),
            took.as_secs_f64() * 1e3
        );
        assert!(size < 400_000, "{size} bytes");
    }
}
