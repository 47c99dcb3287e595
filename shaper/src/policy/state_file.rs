//! The state file: the rules in force, saved on every change so a restarted daemon resumes them
//! (`--state`, default `/var/lib/shaper/state.json`). One JSON document with one rule per line,
//! replaced atomically, so a crash leaves the old file or the new one, never half of either.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    policy::config_reload::Origin,
    policy::rule_actor::Actor,
    policy::rule_table::{Rule, RuleSpec},
    policy::{PolicyError, Result},
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
    pub(crate) rules: Vec<SavedRule>,
}

/// A rule as saved: the rule and where it came from. `origin` was added within version 1: a
/// file saved before it has none, and the daemon infers it from `config_rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedRule {
    #[serde(flatten)]
    pub(crate) rule: Rule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) origin: Option<Origin>,
    /// Who set a runtime rule (added within version 1: older files have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) set_by: Option<Actor>,
}

/// A rule to save, borrowed.
#[derive(Serialize)]
struct RuleToSave<'a> {
    #[serde(flatten)]
    rule: &'a Rule,
    origin: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_by: Option<&'a Actor>,
}

/// Reads the state file at `path`: `None` when there is none yet. A file that is not a state
/// file, or of another version, is refused with a message naming it and what to do.
pub(crate) fn read(path: &Path) -> Result<Option<State>> {
    // Bytes, not a `String`: a file that is not UTF-8 is a corrupt state file, refused as such
    // below, not an I/O error without the advice.
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PolicyError::path(path)(e)),
    };
    parse(&bytes, path).map(Some)
}

/// Parses the contents of the state file at `path` (named in every error). The version is read
/// first, so a file from a newer shaper is refused as that even when the rest of its format
/// changed; a file cut short says so.
pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<State> {
    let refuse = |reason: String| PolicyError::State {
        path: path.to_owned(),
        reason,
    };
    if bytes.trim_ascii().is_empty() {
        return Err(refuse("empty".to_owned()));
    }
    let unreadable = |e: serde_json::Error| {
        refuse(if e.is_eof() {
            format!("truncated (it ends in the middle: {e})")
        } else {
            format!("not a shaper state file: {e}")
        })
    };
    /// Only the version; every other field is skipped unread.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let Versioned { version } = serde_json::from_slice(bytes).map_err(unreadable)?;
    if version != VERSION {
        let newer = if version > VERSION {
            ", written by a newer shaper"
        } else {
            ""
        };
        return Err(refuse(format!(
            "version {version}{newer} (this shaper reads version {VERSION})"
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| refuse(format!("not a valid version {VERSION} state file: {e}")))
}

/// Saves `rules` with their origins (and the config rules they grew from) to `path`, whole or
/// not at all.
pub(crate) fn write<'a>(
    path: &Path,
    config_rules: &[RuleSpec],
    rules: impl Iterator<Item = (&'a Rule, Origin, Option<&'a Actor>)>,
) -> Result<()> {
    let text = to_json(config_rules, rules).map_err(std::io::Error::other)?;
    write_atomically(path, &text)
}

/// The state file's text: a [`State`] with one rule per line. Compact lines keep the file small
/// enough to rewrite on every change with tens of thousands of rules (pretty-printing 65,535
/// rules took 34 MB and most of a `limit set`), and a line per rule keeps it readable.
pub(crate) fn to_json<'a>(
    config_rules: &[RuleSpec],
    rules: impl Iterator<Item = (&'a Rule, Origin, Option<&'a Actor>)>,
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
    list(
        &mut out,
        rules.map(|(rule, origin, set_by)| RuleToSave {
            rule,
            origin,
            set_by,
        }),
    )?;
    out.extend_from_slice(b"\n}\n");
    Ok(out)
}

/// Replaces `path` with `contents`: see [`crate::private_files::write_atomically`].
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    Ok(crate::private_files::write_atomically(path, contents)?)
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
            ecn: false,
            per_remote: false,
            queue_bytes: None,
        }];
        let rules: Vec<Rule> = (1..=3)
            .map(|id| Rule {
                id,
                key: key(9000 + id),
                limit: Limit {
                    rate_bps: 1_000_000,
                    burst_bytes: 1 << 20,
                    action: Action::Drop,
                    ecn: false,
                    per_remote: false,
                    queue_bytes: 0,
                },
            })
            .collect();
        let alice = Actor {
            uid: Some(1000),
            user: Some("alice".into()),
            pid: Some(4242),
            command: Some("shaper".into()),
            at: "2026-12-06T06:40:00Z".into(),
        };
        // The first rule's actor is known, the others' are not (saved by an older shaper).
        let actor = |id: u16| (id == 1).then_some(&alice);
        let text = String::from_utf8(
            to_json(
                &config_rules,
                rules.iter().map(|r| (r, Origin::Runtime, actor(r.id))),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            text.lines().filter(|l| l.contains("\"id\"")).count(),
            3,
            "{text}"
        );
        let state: State = serde_json::from_str(&text).unwrap();
        assert_eq!(state.version, VERSION);
        assert_eq!(state.config_rules, config_rules);
        assert_eq!(
            state.rules,
            rules
                .iter()
                .map(|rule| SavedRule {
                    rule: rule.clone(),
                    origin: Some(Origin::Runtime),
                    set_by: actor(rule.id).cloned(),
                })
                .collect::<Vec<_>>()
        );
        let empty: State =
            serde_json::from_slice(&to_json(&[], std::iter::empty()).unwrap()).unwrap();
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
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "nothing but the state file is left");
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

    /// A saved file with a config rule and two rules, as the daemon writes it.
    fn saved() -> Vec<u8> {
        use crate::policy::rule_table::Limit;
        let config_rules = [RuleSpec {
            key: RuleKey::local(PortRange::single(53)),
            rate_bps: 8_000,
            burst_bytes: None,
            action: Action::Drop,
            ecn: false,
            per_remote: false,
            queue_bytes: None,
        }];
        let rules: Vec<Rule> = [(1, 9090), (2, 443)]
            .map(|(id, port)| Rule {
                id,
                key: RuleKey::local(PortRange::single(port)),
                limit: Limit {
                    rate_bps: 10_000_000,
                    burst_bytes: 375_000,
                    action: Action::Drop,
                    ecn: false,
                    per_remote: false,
                    queue_bytes: 0,
                },
            })
            .into();
        to_json(
            &config_rules,
            rules.iter().map(|r| (r, Origin::Config, None)),
        )
        .unwrap()
    }

    #[test]
    fn a_state_file_saved_before_origins_reads_with_none() {
        let text = r#"{"version": 1, "config_rules": [], "rules": [
            {"id":1,"key":{"ports":"9090","side":"local","dir":"both","proto":"any","iface":null},"limit":{"rate_bps":8000,"burst_bytes":1500,"action":"drop"}}]}"#;
        let state = parse(text.as_bytes(), Path::new("s")).unwrap();
        assert_eq!(state.rules.len(), 1);
        assert_eq!(state.rules[0].origin, None);
        let saved = parse(&saved(), Path::new("s")).unwrap();
        assert!(saved.rules.iter().all(|r| r.origin == Some(Origin::Config)));
    }

    fn refusal(bytes: &[u8]) -> String {
        match parse(bytes, Path::new("/state/here.json")) {
            Ok(state) => panic!(
                "accepted {state:?} from {:?}",
                String::from_utf8_lossy(bytes)
            ),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.starts_with("state file /state/here.json: ")
                        && message.ends_with("move it away to start from the config file's rules"),
                    "{message}"
                );
                message
            }
        }
    }

    #[test]
    fn a_state_file_cut_anywhere_is_refused_as_truncated() {
        let whole = saved();
        // Everything up to the closing brace; only the final newline may go.
        let end = whole.iter().rposition(|&b| b == b'}').unwrap();
        assert!(refusal(&whole[..0]).contains(": empty;"));
        for cut in 1..=end {
            let message = refusal(&whole[..cut]);
            assert!(
                message.contains("truncated (it ends in the middle"),
                "cut at {cut}: {message}"
            );
        }
        assert_eq!(
            parse(&whole[..=end], Path::new("s")).unwrap().rules.len(),
            2
        );
    }

    #[test]
    fn a_state_file_that_is_not_utf8_is_refused_as_a_state_file_not_as_an_io_error() {
        let dir = std::env::temp_dir().join(format!("shaper-state-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let mut bytes = saved();
        let at = bytes.windows(4).position(|w| w == b"9090").unwrap();
        bytes[at] = 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let in_a_rule = read(&path).unwrap_err().to_string();
        std::fs::write(&path, b"\xff\xfe{}").unwrap();
        let at_the_start = read(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        for message in [in_a_rule, at_the_start] {
            assert!(
                message.starts_with(&format!("state file {}: ", path.display()))
                    && (message.contains("not a shaper state file: ")
                        || message.contains("not a valid version 1 state file: "))
                    && message.ends_with("move it away to start from the config file's rules"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_state_file_of_a_newer_version_is_named_as_that_whatever_its_format() {
        for text in [
            r#"{"version": 2, "config_rules": [], "rules": []}"#,
            r#"{"version": 2, "rules": {"by_port": {"9090": "10mbit"}}}"#,
            r#"{"format": "v2", "version": 7}"#,
        ] {
            let message = refusal(text.as_bytes());
            assert!(
                message.contains(", written by a newer shaper (this shaper reads version 1)"),
                "{message}"
            );
        }
        let message = refusal(br#"{"version": 0, "config_rules": [], "rules": []}"#);
        assert!(
            message.contains(": version 0 (this shaper reads version 1)"),
            "{message}"
        );
    }

    #[test]
    fn a_version_1_file_with_a_bad_rule_is_refused_with_the_reason() {
        let text = String::from_utf8(saved())
            .unwrap()
            .replace("\"9090\"", "\"90-80\"");
        let message = refusal(text.as_bytes());
        assert!(
            message.contains("not a valid version 1 state file: "),
            "{message}"
        );
        assert!(
            message.contains("'90-80' is not a port or port range"),
            "{message}"
        );
        assert!(refusal(b"  \n").contains(": empty;"));
        for text in [
            "null",
            "[]",
            r#"{"version": "1"}"#,
            r#"{"rules": []}"#,
            "{} {}",
        ] {
            let message = refusal(text.as_bytes());
            assert!(
                message.contains("not a shaper state file"),
                "{text:?}: {message}"
            );
        }
    }
}
