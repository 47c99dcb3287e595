//! The config file of `shaper run --config FILE`: the interfaces to attach to and the limit rules
//! to start with. Pure parsing: nothing here touches the kernel, so a rule's burst minimum and
//! whether its interface exists are checked by the daemon, not here.
//!
//! # Format
//! ```toml
//! interfaces = ["eth0"]    # optional; left out, the daemon uses --iface or the default route
//! attach = "auto"          # optional: auto (default) | tcx | clsact
//!
//! [[limit]]                # one table per rule, in any number
//! port = 9090              # required: an integer 0-65535, or a string "9090" or "8000-8099"
//!                          #   (an inclusive range whose ports share one bucket)
//! rate = "10mbit"          # required: a rate (see `units`); an integer is bytes per second
//! burst = "256KiB"         # optional: a size (see `units`); an integer is bytes; not for pace
//! dir = "egress"           # optional: both (default) | ingress | egress
//! proto = "tcp"            # optional: any (default) | tcp | udp
//! action = "observe"       # optional: drop (default) | observe | shape | pace (dir = "egress")
//! ecn = true               # optional, drop rules only: mark CE below half the burst
//! per_remote = true        # optional, drop and observe rules: a bucket per remote address
//! queue = "256KiB"         # optional, shape and pace rules: the queue (a size)
//! iface = "eth0"           # optional: one attached interface; default all of them
//! remote = false           # optional: true = `port` is the remote port, not the local one
//!
//! [[watch]]                # per-remote accounting of local ports (`shaper watch`), any number
//! port = "9090"            # required: a port or range, as for [[limit]]
//! dir = "ingress"          # optional: both (default) | ingress | egress
//! iface = "eth0"           # optional: one attached interface; default all of them
//! ```
//!
//! # Strictness
//! - A key that is not listed above, at the top or in a `[[limit]]`, is an error: a misspelt
//!   optional key would otherwise be silently ignored and the rule would do something else.
//! - Each value is read as a raw TOML value and checked here, so every message has the form
//!   `FILE: limit #N (port P): FIELD VALUE: what is wrong and what is accepted`, with `N` counted
//!   from 1 in file order. TOML syntax errors keep the toml crate's message, which shows the line
//!   and column.
//! - TOML floats are refused for rates and sizes: a float is not exact, and "1.5mbit" says the
//!   same exactly (`units` never rounds).
//! - Two rules with the same key (ports, remote, dir, proto and iface; see [`crate::policy::rule_table`]) are
//!   an error naming both: on the command line the second would replace the first, which in a
//!   file is almost certainly a copy-paste slip. Overlapping keys are fine; the most specific
//!   rule wins a packet, as [`crate::policy::rule_table`] describes.

use std::{
    fs, io,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;
use toml::Value;

use crate::{
    datapath::attach::AttachChoice,
    policy::rates_and_sizes::{self, RATE_FORMS, SIZE_FORMS},
    policy::rule_table::{
        Action, DirSel, PORT_FORMS, PortRange, PortRangeError, ProtoSel, RuleKey, RuleSpec, Side,
        UNPLACED,
    },
    types::metrics_addr::MetricsAddr,
};

/// What a config file asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Interfaces to attach to, in file order; empty = not given (the daemon then uses --iface
    /// or the default route).
    pub interfaces: Vec<String>,
    /// How to attach, if given.
    pub attach: Option<AttachChoice>,
    /// Rules in file order; no two have the same key.
    pub limits: Vec<RuleSpec>,
    /// Where to serve metrics, if given.
    pub metrics_addr: Option<MetricsAddr>,
    /// How many busiest ports get their own metrics series, if given.
    pub metrics_top_ports: Option<usize>,
    /// Whether SIGTERM/SIGINT leave the datapath attached and pinned, if given.
    pub persist: Option<bool>,
    /// The group whose members may use the control socket (a name or a number), if given.
    pub socket_group: Option<String>,
    /// Whether listening sockets are named with their owning processes, if given.
    pub owner_names: Option<bool>,
    /// The `[[watch]]` tables, in file order.
    pub watches: Vec<crate::datapath::watched_ports::WatchSpec>,
}

/// Why a config file was rejected. Every message starts with the file's name.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Not valid TOML, or an unknown key: where, and the toml crate's message without the
    /// excerpt of the file it would add (a config line may hold what the journal should not).
    #[error("{origin}: line {line}, column {column}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },

    /// The file (or, through a link, its target) may be changed by users other than its owner.
    #[error(transparent)]
    Unsafe(#[from] crate::private_files::UnsafeFile),

    /// A bad top-level value (`interfaces`, `attach`, `limit`).
    #[error("{origin}: {field} {value}: {problem}")]
    Invalid {
        origin: String,
        field: &'static str,
        /// As written: strings quoted with '…'.
        value: String,
        problem: String,
    },

    /// A bad value in a rule; `rule` is e.g. "limit #2 (port 9090)".
    #[error("{origin}: {rule}: {field} {value}: {problem}")]
    InvalidInRule {
        origin: String,
        rule: String,
        field: &'static str,
        /// As written: strings quoted with '…'.
        value: String,
        problem: String,
    },

    #[error("{origin}: {rule}: {field} is missing; every [[limit]] needs a port and a rate")]
    Missing {
        origin: String,
        rule: String,
        field: &'static str,
    },

    #[error(
        "{origin}: {first} and {second} are the same rule ({key}): a rule is identified by its \
         port, remote, dir, proto and iface together; remove one of them or make them differ"
    )]
    Duplicate {
        origin: String,
        first: String,
        second: String,
        key: RuleKey,
    },
}

/// Reads and parses the config file at `path`; messages name it as given. A file that its
/// group or everyone may write is refused: it gives a root daemon its orders.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    use std::io::Read as _;
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    // The mode of the file that is read, not of whatever the path names a moment later.
    let mut file = fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    crate::private_files::refuse_writable_by_others(path, &meta)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    parse(&text, &path.display().to_string())
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Parses config `text`; `origin` (the file's name) starts every error message.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let syntax = |error: toml::de::Error| {
        let (line, column) = line_and_column(text, error.span().map_or(0, |span| span.start));
        ConfigError::Syntax {
            origin: origin.to_owned(),
            line,
            column,
            message: error.message().trim_end().to_owned(),
        }
    };
    // `[limit]` for `[[limit]]` is an easy slip whose serde message ("invalid type: map,
    // expected a sequence") does not say what to write instead.
    let table: toml::Table = toml::from_str(text).map_err(syntax)?;
    if let Some(limit) = table.get("limit") {
        let rules_are_tables =
            matches!(limit, Value::Array(items) if items.iter().all(Value::is_table));
        if !rules_are_tables {
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                field: "limit",
                value: show(limit),
                problem: "each rule must be a table of its own, headed [[limit]] (two brackets)"
                    .to_owned(),
            });
        }
    }
    // Deserialized from the text, not from `table`, so that an unknown key's message keeps the
    // line and column.
    let raw: RawConfig = toml::from_str(text).map_err(syntax)?;

    let top = |field, value: &Value, problem: String| ConfigError::Invalid {
        origin: origin.to_owned(),
        field,
        value: show(value),
        problem,
    };
    let mut config = Config::default();
    if let Some(value) = &raw.interfaces {
        let names = value
            .as_array()
            .filter(|names| !names.is_empty())
            .ok_or_else(|| {
                let problem = "expected a non-empty array of interface names, e.g. \
                               [\"eth0\", \"eth1\"]; leave it out to use --iface or the \
                               interface of the default route";
                top("interfaces", value, problem.to_owned())
            })?;
        for name in names {
            let checked = match name {
                Value::String(name) => check_iface_name(name).map(|()| name.clone()),
                _ => Err("expected a string, an interface name".to_owned()),
            };
            config
                .interfaces
                .push(checked.map_err(|problem| top("interfaces", name, problem))?);
        }
    }
    if let Some(value) = &raw.attach {
        config.attach = Some(
            keyword::<AttachChoice>(value, AttachChoice::WORDS)
                .map_err(|problem| top("attach", value, problem))?,
        );
    }
    if let Some(value) = &raw.metrics_addr {
        let addr = match value {
            Value::String(text) => text.parse::<MetricsAddr>(),
            _ => Err("expected a string: \"ADDR:PORT\" or \"off\"".to_owned()),
        };
        config.metrics_addr = Some(addr.map_err(|problem| top("metrics_addr", value, problem))?);
    }
    if let Some(value) = &raw.metrics_top_ports {
        let top_ports = match value {
            Value::Integer(n) => usize::try_from(*n).ok(),
            _ => None,
        }
        .ok_or_else(|| {
            let problem = "expected a whole number >= 0 (0: only pinned ports get a series)";
            top("metrics_top_ports", value, problem.to_owned())
        })?;
        config.metrics_top_ports = Some(top_ports);
    }
    if let Some(value) = &raw.persist {
        let Value::Boolean(persist) = value else {
            return Err(top("persist", value, "expected true or false".to_owned()));
        };
        config.persist = Some(*persist);
    }
    if let Some(value) = &raw.socket_group {
        let group = match value {
            Value::String(name) if is_group_name(name) => Some(name.clone()),
            Value::Integer(gid) => u32::try_from(*gid).ok().map(|gid| gid.to_string()),
            _ => None,
        }
        .ok_or_else(|| {
            let problem = "expected a group name or a gid, e.g. \"shaper\"";
            top("socket_group", value, problem.to_owned())
        })?;
        config.socket_group = Some(group);
    }
    if let Some(value) = &raw.owner_names {
        let Value::Boolean(names) = value else {
            return Err(top(
                "owner_names",
                value,
                "expected true or false".to_owned(),
            ));
        };
        config.owner_names = Some(*names);
    }

    // Rule numbers by key: a config may hold tens of thousands of rules, too many to compare
    // each with all the others.
    let mut seen = std::collections::HashMap::new();
    for (i, rule) in raw.limit.iter().enumerate() {
        let spec = rule.validate(i + 1, origin)?;
        if let Some(&first) = seen.get(&spec.key) {
            return Err(ConfigError::Duplicate {
                origin: origin.to_owned(),
                first: label(first, &spec.key),
                second: label(i + 1, &spec.key),
                key: spec.key,
            });
        }
        seen.insert(spec.key.clone(), i + 1);
        config.limits.push(spec);
    }
    for (i, watch) in raw.watch.iter().enumerate() {
        config.watches.push(watch.validate(i + 1, origin)?);
    }
    Ok(config)
}

/// A group name as useradd(8) and adduser(8) accept them by default: letters, digits, `_`, `-`
/// and `.`, not starting with `-`, at most 32 bytes (what the password database allows). A name
/// of digits only would read as a gid.
pub fn is_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && !name.bytes().all(|b| b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Option<Value>,
    attach: Option<Value>,
    metrics_addr: Option<Value>,
    metrics_top_ports: Option<Value>,
    persist: Option<Value>,
    socket_group: Option<Value>,
    owner_names: Option<Value>,
    #[serde(default)]
    limit: Vec<RawLimit>,
    #[serde(default)]
    watch: Vec<RawWatch>,
}

/// A `[[watch]]` table with every value as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    port: Option<Value>,
    dir: Option<Value>,
    iface: Option<Value>,
}

impl RawWatch {
    /// The watch this table asks for; `number` counts watches from 1 in file order.
    fn validate(
        &self,
        number: usize,
        origin: &str,
    ) -> Result<crate::datapath::watched_ports::WatchSpec, ConfigError> {
        let watch = format!("watch #{number}");
        let invalid = |field, value: &Value, problem: String| ConfigError::InvalidInRule {
            origin: origin.to_owned(),
            rule: watch.clone(),
            field,
            value: show(value),
            problem,
        };
        let Some(port) = &self.port else {
            return Err(ConfigError::InvalidInRule {
                origin: origin.to_owned(),
                rule: watch.clone(),
                field: "port",
                value: "(missing)".to_owned(),
                problem: "every [[watch]] needs a port or a range".to_owned(),
            });
        };
        let ports = port_range(port).map_err(|problem| invalid("port", port, problem))?;
        let dir = optional_keyword(&self.dir, DirSel::WORDS)
            .map_err(|(value, problem)| invalid("dir", value, problem))?;
        let iface = match &self.iface {
            None => None,
            Some(Value::String(name)) => Some(
                check_iface_name(name)
                    .map(|()| name.clone())
                    .map_err(|problem| invalid("iface", &Value::String(name.clone()), problem))?,
            ),
            Some(value) => {
                let problem = "expected a string, an interface name".to_owned();
                return Err(invalid("iface", value, problem));
            }
        };
        Ok(crate::datapath::watched_ports::WatchSpec { ports, dir, iface })
    }
}

/// A `[[limit]]` table with every value as written, checked by [`RawLimit::validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    port: Option<Value>,
    rate: Option<Value>,
    burst: Option<Value>,
    dir: Option<Value>,
    proto: Option<Value>,
    action: Option<Value>,
    iface: Option<Value>,
    remote: Option<Value>,
    ecn: Option<Value>,
    per_remote: Option<Value>,
    queue: Option<Value>,
}

impl RawLimit {
    /// The rule this table asks for; `number` counts rules from 1 in file order.
    fn validate(&self, number: usize, origin: &str) -> Result<RuleSpec, ConfigError> {
        let mut rule = format!("limit #{number}");
        let invalid =
            |rule: &String, field, value: &Value, problem: String| ConfigError::InvalidInRule {
                origin: origin.to_owned(),
                rule: rule.clone(),
                field,
                value: show(value),
                problem,
            };
        let missing = |rule: &String, field| ConfigError::Missing {
            origin: origin.to_owned(),
            rule: rule.clone(),
            field,
        };

        let port = self.port.as_ref().ok_or_else(|| missing(&rule, "port"))?;
        let unplaced = matches!(port, Value::String(text) if text == UNPLACED);
        let ports = if unplaced {
            PortRange::ALL
        } else {
            port_range(port).map_err(|problem| {
                invalid(&rule, "port", port, format!("{problem}, or \"{UNPLACED}\""))
            })?
        };
        let remote = match &self.remote {
            None => false,
            Some(Value::Boolean(remote)) => *remote,
            Some(value) => {
                let problem = "expected true (the port is the remote one) or false".to_owned();
                return Err(invalid(&rule, "remote", value, problem));
            }
        };
        if unplaced && remote {
            let problem = "`unplaced` names no port, local or remote".to_owned();
            return Err(invalid(&rule, "remote", &Value::Boolean(true), problem));
        }
        // Named by its port from here on, so the operator finds the rule without counting.
        rule = if unplaced {
            format!("limit #{number} (unplaced)")
        } else {
            label_ports(number, ports, remote)
        };

        let rate = self.rate.as_ref().ok_or_else(|| missing(&rule, "rate"))?;
        let rate_bps = amount(
            rate,
            rates_and_sizes::parse_rate,
            RATE_FORMS,
            "\"10mbit\" or \"1.5MB/s\"",
        )
        .map_err(|problem| invalid(&rule, "rate", rate, problem))?;
        let burst_bytes = match &self.burst {
            None => None,
            Some(burst) => Some(
                amount(
                    burst,
                    rates_and_sizes::parse_size,
                    SIZE_FORMS,
                    "\"256KiB\" or \"1.5MB\"",
                )
                .map_err(|problem| invalid(&rule, "burst", burst, problem))?,
            ),
        };
        let dir = optional_keyword(&self.dir, DirSel::WORDS)
            .map_err(|(value, problem)| invalid(&rule, "dir", value, problem))?;
        let proto = optional_keyword(&self.proto, ProtoSel::WORDS)
            .map_err(|(value, problem)| invalid(&rule, "proto", value, problem))?;
        let action = optional_keyword(&self.action, Action::WORDS)
            .map_err(|(value, problem)| invalid(&rule, "action", value, problem))?;
        let ecn = match &self.ecn {
            None => false,
            Some(Value::Boolean(ecn)) => *ecn,
            Some(value) => {
                let problem = "expected true (mark CE below half the burst) or false".to_owned();
                return Err(invalid(&rule, "ecn", value, problem));
            }
        };
        let per_remote = match &self.per_remote {
            None => false,
            Some(Value::Boolean(per_remote)) => *per_remote,
            Some(value) => {
                let problem =
                    "expected true (a bucket per remote address) or false (one for the rule)"
                        .to_owned();
                return Err(invalid(&rule, "per_remote", value, problem));
            }
        };
        let queue_bytes = match &self.queue {
            None => None,
            Some(queue) => Some(
                amount(
                    queue,
                    rates_and_sizes::parse_size,
                    SIZE_FORMS,
                    "\"256KiB\" or \"1MB\"",
                )
                .map_err(|problem| invalid(&rule, "queue", queue, problem))?,
            ),
        };
        let iface = match &self.iface {
            None => None,
            Some(value) => Some(match value {
                Value::String(name) => check_iface_name(name)
                    .map(|()| name.clone())
                    .map_err(|problem| invalid(&rule, "iface", value, problem))?,
                _ => {
                    let problem = "expected a string, an interface name".to_owned();
                    return Err(invalid(&rule, "iface", value, problem));
                }
            }),
        };

        Ok(RuleSpec {
            key: RuleKey {
                ports,
                side: if unplaced {
                    Side::Unplaced
                } else if remote {
                    Side::Remote
                } else {
                    Side::Local
                },
                dir,
                proto,
                iface,
            },
            rate_bps,
            burst_bytes,
            action,
            ecn,
            per_remote,
            queue_bytes,
        })
    }
}

/// "limit #N (port P)" / "(ports LO-HI)", with "remote " before "port" for a remote rule.
fn label_ports(number: usize, ports: PortRange, remote: bool) -> String {
    format!(
        "limit #{number} ({}port{} {ports})",
        if remote { "remote " } else { "" },
        if ports.width() > 0 { "s" } else { "" },
    )
}

fn label(number: usize, key: &RuleKey) -> String {
    if key.side == Side::Unplaced {
        return format!("limit #{number} (unplaced)");
    }
    label_ports(number, key.ports, key.side == Side::Remote)
}

fn port_range(value: &Value) -> Result<PortRange, String> {
    match value {
        Value::Integer(port) => u16::try_from(*port).map(PortRange::single).map_err(|_| {
            PortRangeError {
                value: port.to_string(),
            }
            .to_string()
        }),
        Value::String(text) => text
            .parse()
            .map_err(|error: PortRangeError| error.to_string()),
        _ => Err(format!(
            "expected an integer or a string; accepted: {PORT_FORMS}"
        )),
    }
}

/// A rate or size: a string in the units `forms` lists, or an integer of the base unit (bytes,
/// per second for a rate), which goes through the same parser so that zero, negative and
/// too-large integers get the same messages as strings do.
fn amount(
    value: &Value,
    parse: fn(&str) -> Result<u64, rates_and_sizes::UnitError>,
    forms: &str,
    examples: &str,
) -> Result<u64, String> {
    match value {
        Value::String(text) => parse(text).map_err(|error| error.to_string()),
        Value::Integer(n) => parse(&n.to_string()).map_err(|error| error.to_string()),
        Value::Float(_) => Err(format!(
            "a TOML float is not exact; write a string such as {examples} instead; accepted: \
             {forms}"
        )),
        _ => Err(format!(
            "expected a string such as {examples}, or an integer; accepted: {forms}"
        )),
    }
}

fn keyword<T: FromStr<Err = String>>(value: &Value, words: &[&str]) -> Result<T, String> {
    match value {
        Value::String(text) => text.parse(),
        _ => Err(format!("expected a string, one of {}", words.join(", "))),
    }
}

fn optional_keyword<'a, T: FromStr<Err = String> + Default>(
    value: &'a Option<Value>,
    words: &[&str],
) -> Result<T, (&'a Value, String)> {
    match value {
        None => Ok(T::default()),
        Some(value) => keyword(value, words).map_err(|problem| (value, problem)),
    }
}

/// The name rules of the kernel's `dev_valid_name()` (net/core/dev.c), which need no kernel to
/// check: whether the interface exists is the daemon's business.
fn check_iface_name(name: &str) -> Result<(), String> {
    /// IFNAMSIZ less the terminating NUL.
    const MAX_LEN: usize = 15;
    if name.is_empty() {
        return Err("an interface name cannot be empty".to_owned());
    }
    if name.len() > MAX_LEN {
        return Err(format!(
            "an interface name has at most {MAX_LEN} bytes, this one has {}",
            name.len()
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(
            "not a valid interface name (no '/', ':' or whitespace, and not '.' or '..')"
                .to_owned(),
        );
    }
    Ok(())
}

/// A value as the operator wrote it, for messages: strings quoted with '…'.
fn show(value: &Value) -> String {
    match value {
        Value::String(text) => format!("'{text}'"),
        Value::Integer(n) => n.to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(datetime) => datetime.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(_) => "(a table)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ports: &str, rate_bps: u64) -> RuleSpec {
        RuleSpec {
            key: RuleKey::local(ports.parse().unwrap()),
            rate_bps,
            burst_bytes: None,
            action: Action::Drop,
            ecn: false,
            per_remote: false,
            queue_bytes: None,
        }
    }

    /// The message of parsing `text` as "test.toml", which must fail.
    fn error(text: &str) -> String {
        match parse(text, "test.toml") {
            Ok(config) => panic!("accepted {config:?} from:\n{text}"),
            Err(error) => error.to_string(),
        }
    }

    fn assert_contains(message: &str, parts: &[&str]) {
        for part in parts {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }

    #[test]
    fn shape_queue_and_ecn_keys_parse_and_bad_values_name_the_field() {
        let text = r#"
            [[limit]]
            port = 7201
            rate = "8mbit"
            action = "shape"
            queue = "512KiB"

            [[limit]]
            port = 7202
            rate = "8mbit"
            ecn = true
            per_remote = true
        "#;
        let config = parse(text, "test.toml").unwrap();
        assert_eq!(
            config.limits,
            vec![
                RuleSpec {
                    action: Action::Shape,
                    queue_bytes: Some(512 * 1024),
                    ..spec("7201", 8_000_000)
                },
                RuleSpec {
                    ecn: true,
                    per_remote: true,
                    ..spec("7202", 8_000_000)
                },
            ]
        );
        assert_contains(
            &error(&second_rule_with("rate = \"1mbit\"\necn = \"yes\"")),
            &["limit #2 (port 9090)", "ecn 'yes'", "expected true"],
        );
        assert_contains(
            &error(&second_rule_with("rate = \"1mbit\"\nper_remote = 1")),
            &["limit #2 (port 9090)", "per_remote 1", "expected true"],
        );
        assert_contains(
            &error(&second_rule_with("rate = \"1mbit\"\nqueue = \"lots\"")),
            &["limit #2 (port 9090)", "queue", "lots"],
        );
    }

    /// A file whose second rule (port 9090) has `line` added.
    fn second_rule_with(line: &str) -> String {
        format!("[[limit]]\nport = 80\nrate = \"1mbit\"\n\n[[limit]]\nport = 9090\n{line}\n")
    }

    #[test]
    fn a_full_file_parses_into_exactly_what_it_says() {
        let text = r#"
            interfaces = ["eth0", "eth1"]
            attach = "clsact"
            metrics_addr = "0.0.0.0:19350"
            metrics_top_ports = 20
            persist = true
            socket_group = "shaper"
            owner_names = false

            [[limit]]
            port = 9090
            rate = "10mbit"
            burst = "256KiB"
            dir = "egress"
            proto = "tcp"
            action = "observe"
            iface = "eth0"
            remote = false

            [[limit]]
            port = "8000-8099"
            rate = 1000
            burst = 65536

            [[limit]]
            port = "443"
            remote = true
            dir = "ingress"
            proto = "udp"
            action = "drop"
            rate = "1.5 MB/s"
        "#;
        let expected = Config {
            interfaces: vec!["eth0".to_owned(), "eth1".to_owned()],
            attach: Some(AttachChoice::Clsact),
            metrics_addr: Some(MetricsAddr::At("0.0.0.0:19350".parse().unwrap())),
            metrics_top_ports: Some(20),
            persist: Some(true),
            socket_group: Some("shaper".to_owned()),
            owner_names: Some(false),
            watches: Vec::new(),
            limits: vec![
                RuleSpec {
                    key: RuleKey {
                        ports: PortRange::single(9090),
                        side: Side::Local,
                        dir: DirSel::Egress,
                        proto: ProtoSel::Tcp,
                        iface: Some("eth0".to_owned()),
                    },
                    rate_bps: 10_000_000,
                    burst_bytes: Some(256 * 1024),
                    action: Action::Observe,
                    ecn: false,
                    per_remote: false,
                    queue_bytes: None,
                },
                RuleSpec {
                    key: RuleKey {
                        ports: PortRange { lo: 8000, hi: 8099 },
                        side: Side::Local,
                        dir: DirSel::Both,
                        proto: ProtoSel::Any,
                        iface: None,
                    },
                    rate_bps: 8_000,
                    burst_bytes: Some(65_536),
                    action: Action::Drop,
                    ecn: false,
                    per_remote: false,
                    queue_bytes: None,
                },
                RuleSpec {
                    key: RuleKey {
                        ports: PortRange::single(443),
                        side: Side::Remote,
                        dir: DirSel::Ingress,
                        proto: ProtoSel::Udp,
                        iface: None,
                    },
                    rate_bps: 12_000_000,
                    burst_bytes: None,
                    action: Action::Drop,
                    ecn: false,
                    per_remote: false,
                    queue_bytes: None,
                },
            ],
        };
        assert_eq!(parse(text, "test.toml").unwrap(), expected);
    }

    #[test]
    fn an_empty_file_gives_nothing() {
        assert_eq!(parse("", "test.toml").unwrap(), Config::default());
        assert_eq!(
            parse("# nothing\n", "test.toml").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn attach_accepts_each_of_its_words() {
        for (word, sel) in [
            ("auto", AttachChoice::Auto),
            ("tcx", AttachChoice::Tcx),
            ("clsact", AttachChoice::Clsact),
        ] {
            let config = parse(&format!("attach = \"{word}\""), "test.toml").unwrap();
            assert_eq!(config.attach, Some(sel));
            assert_eq!(sel.to_string(), word);
        }
    }

    #[test]
    fn the_repository_example_parses_and_has_rules() {
        let config = parse(include_str!("../../../shaper.toml"), "shaper.toml").unwrap();
        assert!(
            config.interfaces.is_empty(),
            "the example must not need an interface"
        );
        assert!(config.limits.iter().all(|rule| rule.key.iface.is_none()));
        let single_drop = config
            .limits
            .iter()
            .any(|r| r.key.ports.width() == 0 && r.action == Action::Drop);
        let range_observe = config
            .limits
            .iter()
            .any(|r| r.key.ports.width() > 0 && r.action == Action::Observe);
        let remote_one_way = config.limits.iter().any(|r| {
            r.key.side == Side::Remote && r.key.dir != DirSel::Both && r.key.proto != ProtoSel::Any
        });
        assert!(
            single_drop && range_observe && remote_one_way,
            "{config:#?}"
        );
    }

    #[test]
    fn unknown_keys_are_named_at_the_top_and_in_rules() {
        let message = error("interface = [\"eth0\"]\n");
        assert_contains(&message, &["test.toml: ", "`interface`", "line 1"]);
        let message = error(&second_rule_with("rate = \"1mbit\"\nrat = \"2mbit\""));
        assert_contains(&message, &["test.toml: ", "`rat`", "line 8"]);
    }

    #[test]
    fn a_syntax_error_keeps_the_toml_message_with_its_position() {
        let message = error("[[limit]]\nport = 9090\nrate = \"10mbit\n");
        assert!(message.starts_with("test.toml: "), "{message}");
        assert_contains(&message, &["line 3"]);
        let message = error("[[limit]]\nport = 1\nport = 2\n");
        assert_contains(
            &message,
            &["test.toml: ", "line 3, column 1", "duplicate key"],
        );
    }

    #[test]
    fn a_syntax_error_never_quotes_the_line() {
        let message = error("token = \"s3cr3t\" oops\n");
        assert_contains(&message, &["test.toml: line 1, column 18: "]);
        assert!(!message.contains("s3cr3t"), "{message}");
        assert_eq!(line_and_column("ab\ncd\néf", 8), (3, 2));
    }

    #[test]
    fn a_single_bracket_limit_table_says_to_use_two() {
        let message = error("[limit]\nport = 9090\nrate = \"10mbit\"\n");
        assert_contains(&message, &["test.toml: limit (a table): ", "[[limit]]"]);
        let message = error("limit = 5\n");
        assert_contains(&message, &["test.toml: limit 5: ", "[[limit]]"]);
    }

    #[test]
    fn bad_rates_name_file_rule_field_value_and_accepted_forms() {
        for (line, value) in [
            ("rate = \"10 mbps\"", "'10 mbps'"),
            ("rate = \"fast\"", "'fast'"),
            ("rate = \"0kbit\"", "'0kbit'"),
            ("rate = 0", "0"),
            ("rate = -5", "-5"),
            ("rate = 1.5", "1.5"),
            ("rate = true", "true"),
            ("rate = 9223372036854775807", "9223372036854775807"),
        ] {
            let message = error(&second_rule_with(line));
            let head = format!("test.toml: limit #2 (port 9090): rate {value}: ");
            assert!(message.starts_with(&head), "{line}: {message}");
            assert!(message.ends_with(RATE_FORMS), "{line}: {message}");
        }
        // The unit parser's own explanation is kept.
        let message = error(&second_rule_with("rate = \"10 mbps\""));
        assert_contains(&message, &["10mbit for megabits"]);
        assert_contains(&error(&second_rule_with("rate = -5")), &["negative"]);
        assert_contains(&error(&second_rule_with("rate = 0")), &["zero"]);
    }

    #[test]
    fn bad_bursts_name_file_rule_field_value_and_accepted_forms() {
        for (line, value) in [
            ("burst = \"64k\"", "'64k'"),
            ("burst = \"10MB/s\"", "'10MB/s'"),
            ("burst = 0", "0"),
            ("burst = -1", "-1"),
            ("burst = 1.5", "1.5"),
            ("burst = [1]", "[1]"),
        ] {
            let message = error(&second_rule_with(&format!("rate = \"1mbit\"\n{line}")));
            let head = format!("test.toml: limit #2 (port 9090): burst {value}: ");
            assert!(message.starts_with(&head), "{line}: {message}");
            assert!(message.ends_with(SIZE_FORMS), "{line}: {message}");
        }
    }

    #[test]
    fn bad_ports_name_file_rule_field_value_and_accepted_forms() {
        for (value, shown) in [
            ("65536", "65536"),
            ("-1", "-1"),
            ("\"9090-9000\"", "'9090-9000'"),
            ("\"http\"", "'http'"),
            ("\"80,443\"", "'80,443'"),
            ("80.0", "80.0"),
            ("[80, 443]", "[80, 443]"),
        ] {
            let text = format!("[[limit]]\nport = 1\nrate = 1\n[[limit]]\nport = {value}\n");
            let message = error(&text);
            let head = format!("test.toml: limit #2: port {shown}: ");
            assert!(message.starts_with(&head), "{value}: {message}");
            let forms = format!("{PORT_FORMS}, or \"{UNPLACED}\"");
            assert!(message.ends_with(&forms), "{value}: {message}");
        }
    }

    #[test]
    fn ports_at_both_ends_of_the_range_are_accepted() {
        let config = parse(
            "[[limit]]\nport = 0\nrate = 1\n[[limit]]\nport = 65535\nrate = 1\n",
            "test.toml",
        )
        .unwrap();
        assert_eq!(config.limits, vec![spec("0", 8), spec("65535", 8)]);
    }

    #[test]
    fn bad_keywords_name_file_rule_field_value_and_the_words() {
        for (line, field, value, words) in [
            ("dir = \"out\"", "dir", "'out'", "both, ingress, egress"),
            ("dir = 1", "dir", "1", "both, ingress, egress"),
            ("proto = \"sctp\"", "proto", "'sctp'", "any, tcp, udp"),
            (
                "action = \"reject\"",
                "action",
                "'reject'",
                "drop, observe, shape, pace",
            ),
            (
                "action = false",
                "action",
                "false",
                "drop, observe, shape, pace",
            ),
        ] {
            let message = error(&second_rule_with(&format!("rate = 1\n{line}")));
            let head = format!("test.toml: limit #2 (port 9090): {field} {value}: ");
            assert!(message.starts_with(&head), "{line}: {message}");
            assert!(message.ends_with(words), "{line}: {message}");
        }
        let message = error("attach = \"bpf\"\n");
        assert_eq!(
            message,
            "test.toml: attach 'bpf': 'bpf' is not one of auto, tcx, clsact"
        );
    }

    #[test]
    fn bad_remote_and_iface_values_are_named() {
        let message = error(&second_rule_with("rate = 1\nremote = \"yes\""));
        assert_contains(
            &message,
            &["test.toml: limit #2: remote 'yes': ", "true", "false"],
        );
        for (line, value) in [
            ("iface = \"\"", "''"),
            ("iface = \"a-very-long-name0\"", "'a-very-long-name0'"),
            ("iface = \"eth0 \"", "'eth0 '"),
            ("iface = 2", "2"),
        ] {
            let message = error(&second_rule_with(&format!("rate = 1\n{line}")));
            let head = format!("test.toml: limit #2 (port 9090): iface {value}: ");
            assert!(message.starts_with(&head), "{line}: {message}");
        }
    }

    #[test]
    fn bad_interfaces_are_named() {
        for (text, value) in [
            ("interfaces = \"eth0\"", "'eth0'"),
            ("interfaces = []", "[]"),
            ("interfaces = [\"eth0\", 1]", "1"),
            ("interfaces = [\"eth0\", \"a/b\"]", "'a/b'"),
        ] {
            let message = error(text);
            let head = format!("test.toml: interfaces {value}: ");
            assert!(message.starts_with(&head), "{text}: {message}");
        }
    }

    #[test]
    fn bad_metrics_settings_are_named() {
        for (text, field, value) in [
            (
                "metrics_addr = \"localhost\"",
                "metrics_addr",
                "'localhost'",
            ),
            ("metrics_addr = 19350", "metrics_addr", "19350"),
            ("metrics_top_ports = -1", "metrics_top_ports", "-1"),
            ("metrics_top_ports = \"all\"", "metrics_top_ports", "'all'"),
            ("persist = \"yes\"", "persist", "'yes'"),
            ("socket_group = \"\"", "socket_group", "''"),
            ("socket_group = \"a b\"", "socket_group", "'a b'"),
            ("socket_group = -1", "socket_group", "-1"),
            ("owner_names = 1", "owner_names", "1"),
        ] {
            let message = error(text);
            let head = format!("test.toml: {field} {value}: ");
            assert!(message.starts_with(&head), "{text}: {message}");
        }
        let off = parse("metrics_addr = \"off\"", "test.toml").unwrap();
        assert_eq!(off.metrics_addr, Some(MetricsAddr::Off));
        let gid = parse("socket_group = 50", "test.toml").unwrap();
        assert_eq!(gid.socket_group.as_deref(), Some("50"));
    }

    #[test]
    fn a_missing_port_or_rate_names_the_rule_and_the_field() {
        let message = error(&second_rule_with("").replace("port = 9090\n", "rate = 1\n"));
        assert_eq!(
            message,
            "test.toml: limit #2: port is missing; every [[limit]] needs a port and a rate"
        );
        let message = error(&second_rule_with("dir = \"ingress\""));
        assert_eq!(
            message,
            "test.toml: limit #2 (port 9090): rate is missing; every [[limit]] needs a port and a rate"
        );
    }

    #[test]
    fn the_same_key_twice_names_both_rules() {
        let text = r#"
            [[limit]]
            port = 9090
            rate = "1mbit"
            [[limit]]
            port = "8000-8099"
            rate = "1mbit"
            [[limit]]
            port = "9090"
            dir = "both"
            proto = "any"
            remote = false
            rate = "2mbit"
        "#;
        let message = error(text);
        assert_contains(
            &message,
            &[
                "test.toml: ",
                "limit #1 (port 9090)",
                "limit #3 (port 9090)",
            ],
        );
        let text = r#"
            [[limit]]
            port = "8000-8099"
            remote = true
            rate = "1mbit"
            [[limit]]
            port = "8000-8099"
            remote = true
            rate = "2mbit"
        "#;
        assert_contains(
            &error(text),
            &["limit #1 (remote ports 8000-8099) and limit #2 (remote ports 8000-8099)"],
        );
    }

    #[test]
    fn port_unplaced_is_the_rule_for_packets_without_ports_and_takes_no_remote() {
        let config = parse(
            "[[limit]]\nport = \"unplaced\"\nrate = \"8kbit\"\ndir = \"ingress\"\n",
            "test.toml",
        )
        .unwrap();
        assert_eq!(
            config.limits[0].key,
            RuleKey::unplaced(DirSel::Ingress, None)
        );
        let message = parse(
            "[[limit]]\nport = \"unplaced\"\nrate = 1\nremote = true\n",
            "test.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("limit #1"), "{message}");
        assert!(message.contains("names no port"), "{message}");
        let message = parse("[[limit]]\nport = \"unplace\"\nrate = 1\n", "test.toml")
            .unwrap_err()
            .to_string();
        assert!(message.contains("or \"unplaced\""), "{message}");
    }

    #[test]
    fn rules_that_differ_in_any_part_of_the_key_are_distinct() {
        let mut text = String::new();
        for extra in [
            "",
            "remote = true",
            "dir = \"ingress\"",
            "proto = \"udp\"",
            "iface = \"lo\"",
        ] {
            text += &format!("[[limit]]\nport = 9090\nrate = 1\n{extra}\n");
        }
        text += "[[limit]]\nport = \"9090-9091\"\nrate = 1\n";
        assert_eq!(parse(&text, "test.toml").unwrap().limits.len(), 6);
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("shaper-config-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        fs::write(&path, "[[limit]]\nport = 9090\nrate = \"fast\"\n").unwrap();
        let message = load(&path).unwrap_err().to_string();
        let missing = load(&dir.join("absent.toml")).unwrap_err().to_string();
        fs::write(&path, "[[limit]]\nport = 9090\nrate = 1\n").unwrap();
        let loaded = load(&path);
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            message.starts_with(&format!(
                "{}: limit #1 (port 9090): rate 'fast'",
                path.display()
            )),
            "{message}"
        );
        assert_contains(&missing, &["absent.toml", "cannot read"]);
        assert_eq!(loaded.unwrap().limits, vec![spec("9090", 8)]);
    }

    #[test]
    fn a_config_others_may_write_is_refused_by_name() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("shaper-config-mode-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shaper.toml");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let message = load(&path).unwrap_err().to_string();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let loaded = load(&path);
        fs::remove_dir_all(&dir).unwrap();
        assert_contains(&message, &[&path.display().to_string(), "everyone", "0666"]);
        assert!(loaded.is_ok());
    }

    #[test]
    fn watch_tables_are_read_and_checked_like_limits() {
        let config = parse(
            "[[watch]]\nport = 9090\n[[watch]]\nport = \"8000-8099\"\ndir = \"ingress\"\niface = \"eth0\"\n",
            "f.toml",
        )
        .unwrap();
        let shown: Vec<String> = config.watches.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "port 9090 dir both",
                "port 8000-8099 dir ingress iface eth0"
            ]
        );
        for (text, expected) in [
            (
                "[[watch]]\ndir = \"ingress\"\n",
                "f.toml: watch #1: port (missing)",
            ),
            ("[[watch]]\nport = 70000\n", "f.toml: watch #1: port 70000"),
            (
                "[[watch]]\nport = 1\ndir = \"up\"\n",
                "f.toml: watch #1: dir 'up'",
            ),
        ] {
            let error = parse(text, "f.toml").unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error}");
        }
        assert!(parse("[[watch]]\nport = 1\nrate = 2\n", "f.toml").is_err());
    }
}
