//! The config file of `shaper run --config` (`config_file::parse`). Every text is either refused
//! with a `ConfigError` whose message starts with the file's name, or accepted as a config whose
//! rules have distinct keys and which, written back as TOML, parses to the same config.

#![no_main]

use std::{collections::HashSet, fmt::Write as _};

use libfuzzer_sys::fuzz_target;
use shaper::policy::{
    config_file::{self, Config},
    rates_and_sizes::{format_rate, format_size},
    rule_table::Side,
};

const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    // `config_file::load` reads the file as UTF-8 first; anything else is a read error.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match config_file::parse(text, ORIGIN) {
        Ok(config) => config,
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("fuzz.toml: "), "{message}");
            return;
        }
    };
    let keys: HashSet<_> = config.limits.iter().map(|rule| &rule.key).collect();
    assert_eq!(
        keys.len(),
        config.limits.len(),
        "duplicate keys in {config:?}"
    );
    let written = to_toml(&config);
    match config_file::parse(&written, ORIGIN) {
        Ok(again) => assert_eq!(again, config, "{text:?} written as {written:?}"),
        Err(error) => panic!("{text:?} written as {written:?} is refused: {error}"),
    }
});

/// The config as a file that says exactly that, in the forms the formatters print.
fn to_toml(config: &Config) -> String {
    let mut out = String::new();
    if !config.interfaces.is_empty() {
        let names: Vec<String> = config.interfaces.iter().map(|n| quoted(n)).collect();
        let _ = writeln!(out, "interfaces = [{}]", names.join(", "));
    }
    if let Some(attach) = config.attach {
        let _ = writeln!(out, "attach = \"{attach}\"");
    }
    if let Some(addr) = config.metrics_addr {
        let _ = writeln!(out, "metrics_addr = {}", quoted(&addr.to_string()));
    }
    if let Some(top) = config.metrics_top_ports {
        let _ = writeln!(out, "metrics_top_ports = {top}");
    }
    if let Some(persist) = config.persist {
        let _ = writeln!(out, "persist = {persist}");
    }
    for rule in &config.limits {
        let key = &rule.key;
        let _ = writeln!(out, "[[limit]]\nport = \"{}\"", key.ports);
        let _ = writeln!(out, "remote = {}", key.side == Side::Remote);
        let _ = writeln!(out, "rate = \"{}\"", format_rate(rule.rate_bps));
        if let Some(burst) = rule.burst_bytes {
            let _ = writeln!(out, "burst = \"{}\"", format_size(burst));
        }
        let _ = writeln!(out, "dir = \"{}\"", key.dir);
        let _ = writeln!(out, "proto = \"{}\"", key.proto);
        let _ = writeln!(out, "action = \"{}\"", rule.action);
        if let Some(iface) = &key.iface {
            let _ = writeln!(out, "iface = {}", quoted(iface));
        }
        if rule.ecn {
            let _ = writeln!(out, "ecn = true");
        }
        if let Some(queue) = rule.queue_bytes {
            let _ = writeln!(out, "queue = \"{}\"", format_size(queue));
        }
    }
    for watch in &config.watches {
        let _ = writeln!(out, "[[watch]]\nport = \"{}\"", watch.ports);
        let _ = writeln!(out, "dir = \"{}\"", watch.dir);
        if let Some(iface) = &watch.iface {
            let _ = writeln!(out, "iface = {}", quoted(iface));
        }
    }
    out
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
