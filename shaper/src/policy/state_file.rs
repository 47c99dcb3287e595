//! The state file: the rules in force, saved on every change so a restarted daemon resumes them
//! (`--state`, default `/var/lib/shaper/state.json`). One JSON document with one rule per line,
//! replaced atomically, so a crash leaves the old file or the new one, never half of either.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    policy::rule_table::{Rule, RuleSpec},
};

/// Where the daemon keeps its rules unless told otherwise (`--state`).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/shaper/state.json";

const VERSION: u32 = 1;

/// The state file: the rules in force, and the config-file rules they grew from.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) version: u32,
    /// The `[[limit]]` rules of the config file the daemon started with. A restart with the
    /// same config rules resumes `rules`; a changed config starts over from the config.
    pub(crate) config_rules: Vec<RuleSpec>,
    pub(crate) rules: Vec<Rule>,
}

/// Reads the state file at `path`: `None` when there is none yet. A file that is not a state
/// file, or of another version, is refused with a message naming it and what to do.
pub(crate) fn read(path: &Path) -> Result<Option<State>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::path(path)(e)),
    };
    let state: State = serde_json::from_str(&text).map_err(|e| Error::State {
        path: path.to_owned(),
        reason: format!("not a shaper state file: {e}"),
    })?;
    if state.version != VERSION {
        return Err(Error::State {
            path: path.to_owned(),
            reason: format!(
                "version {} (this shaper reads version {VERSION})",
                state.version
            ),
        });
    }
    Ok(Some(state))
}

/// Saves `rules` (and the config rules they grew from) to `path`, whole or not at all.
pub(crate) fn write<'a>(
    path: &Path,
    config_rules: &[RuleSpec],
    rules: impl Iterator<Item = &'a Rule>,
) -> Result<()> {
    let text = to_json(config_rules, rules).map_err(std::io::Error::other)?;
    write_atomically(path, &text)
}

/// The state file's text: a [`State`] with one rule per line. Compact lines keep the file small
/// enough to rewrite on every change with tens of thousands of rules (pretty-printing 65,535
/// rules took 34 MB and most of a `limit set`), and a line per rule keeps it readable.
fn to_json<'a>(
    config_rules: &[RuleSpec],
    rules: impl Iterator<Item = &'a Rule>,
) -> serde_json::Result<Vec<u8>> {
    fn list<T: Serialize>(
        out: &mut Vec<u8>,
        items: impl Iterator<Item = T>,
    ) -> serde_json::Result<()> {
        out.push(b'[');
        for (i, item) in items.enumerate() {
            out.extend_from_slice(if i == 0 { b"\n  " } else { b",\n  " });
            serde_json::to_writer(&mut *out, &item)?;
        }
        out.extend_from_slice(b"\n]");
        Ok(())
    }
    let mut out = format!("{{\n\"version\": {VERSION},\n\"config_rules\": ").into_bytes();
    list(&mut out, config_rules.iter())?;
    out.extend_from_slice(b",\n\"rules\": ");
    list(&mut out, rules)?;
    out.extend_from_slice(b"\n}\n");
    Ok(out)
}

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file:
/// written to a temporary file in the same directory, synced, then renamed over the target.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::path(dir))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::path(&tmp))?;
    file.write_all(contents).map_err(Error::path(&tmp))?;
    file.sync_all().map_err(Error::path(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::path(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rule_table::{Action, DirSel, PortRange, ProtoSel, RuleKey, Side};

    #[test]
    fn the_state_file_reads_back_what_was_saved_one_rule_per_line() {
        use crate::policy::rule_table::Limit;
        let key = |port| RuleKey {
            ports: PortRange::single(port),
            side: Side::Local,
            dir: DirSel::Egress,
            proto: ProtoSel::Udp,
            iface: Some("eth0".into()),
        };
        let config_rules = vec![RuleSpec {
            key: key(53),
            rate_bps: 8_000,
            burst_bytes: None,
            action: Action::Observe,
        }];
        let rules: Vec<Rule> = (1..=3)
            .map(|id| Rule {
                id,
                key: key(9000 + id),
                limit: Limit {
                    rate_bps: 1_000_000,
                    burst_bytes: 1 << 20,
                    action: Action::Drop,
                },
            })
            .collect();
        let text = String::from_utf8(to_json(&config_rules, rules.iter()).unwrap()).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.contains("\"id\"")).count(),
            3,
            "{text}"
        );
        let state: State = serde_json::from_str(&text).unwrap();
        assert_eq!(state.version, VERSION);
        assert_eq!(state.config_rules, config_rules);
        assert_eq!(state.rules, rules);
        let empty: State = serde_json::from_slice(&to_json(&[], [].iter()).unwrap()).unwrap();
        assert!(empty.config_rules.is_empty() && empty.rules.is_empty());
    }

    #[test]
    fn state_files_are_replaced_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("shaper-state-test-{}", std::process::id()));
        let path = dir.join("state.json");
        let state = State {
            version: VERSION,
            config_rules: Vec::new(),
            rules: Vec::new(),
        };
        write_atomically(&path, serde_json::to_string(&state).unwrap().as_bytes()).unwrap();
        assert!(read(&path).unwrap().is_some());
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(
            &path,
            "{\"version\": 99, \"config_rules\": [], \"rules\": []}",
        )
        .unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("version 99") && err.contains("move it away"),
            "{err}"
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .contains("not a shaper state file")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read(&path).unwrap().is_none());
    }
}
