//! Control-socket requests, one JSON line each, parsed as the daemon's socket parses them
//! (`serde_json::from_slice::<Request>`) and then validated and applied as the daemon does, with
//! a model of its rules in force in place of the kernel's maps: the interface check, the rate and
//! burst checks (`make_limit`), the rule table and the rule index it resolves to.
//!
//! Every line is either refused with an error reply the CLI can read, or a request that serializes
//! back to itself; every change the table accepts keeps it consistent, and the rule index only
//! names rules in force.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shaper::{
    control::{MAX_REQUEST_BYTES, Request, Response},
    policy::rule_table::{LimitError, RuleSpec, RuleTable, make_limit, min_burst},
};
use shaper_common::{NO_RULE, bucket};

/// The interfaces of the modelled daemon and the largest aggregate they see (a veth's 64 KiB).
const IFACES: [&str; 2] = ["lo", "veth0"];
const AGGREGATE: u64 = 65_536;

fuzz_target!(|data: &[u8]| {
    let ifaces: Vec<String> = IFACES.iter().map(|name| (*name).to_owned()).collect();
    let mut table = RuleTable::new();
    // A connection may send several requests, one per line.
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.len() as u64 > MAX_REQUEST_BYTES {
            continue;
        }
        let request = match serde_json::from_slice::<Request>(line) {
            Ok(request) => request,
            Err(error) => {
                reply(&Response::Error {
                    message: format!("malformed request: {error}"),
                });
                continue;
            }
        };
        let sent = serde_json::to_vec(&request).expect("a request serializes");
        assert_eq!(
            serde_json::from_slice::<Request>(&sent).ok().as_ref(),
            Some(&request),
            "{request:?} sent as {}",
            String::from_utf8_lossy(&sent)
        );
        match request {
            Request::LimitSet { rule } => match validate(&rule, &ifaces) {
                Ok(limit) => {
                    let before = table.len();
                    match table.set(rule.key.clone(), limit) {
                        Ok(_) => {
                            let found = table.find(&rule.key).expect("the rule just set");
                            assert_eq!(found.limit, limit);
                            assert!(table.len() == before || table.len() == before + 1);
                        }
                        Err(error) => refused(&error, &rule),
                    }
                }
                Err(error) => refused(&error, &rule),
            },
            Request::LimitRm { rule } => {
                let before = table.len();
                let _ = rule.to_string();
                match table.remove(&rule) {
                    Some(removed) => {
                        assert_eq!(removed.key, rule);
                        assert_eq!(table.len(), before - 1);
                        assert!(table.find(&rule).is_none());
                    }
                    None => assert_eq!(table.len(), before),
                }
            }
            Request::Watch { watch } | Request::Unwatch { watch } => {
                let _ = watch.to_string();
            }
            Request::LogLevel { level } => {
                let _ = shaper::datapath::bpf_log::parse_level(&level);
            }
            // Reads, and requests whose effect is on the datapath the daemon holds (the watch
            // list, the trace switch): what a line can reach here is their parsing above.
            Request::Stats
            | Request::LimitLs
            | Request::Exposure
            | Request::WatchLs
            | Request::Talkers { .. }
            | Request::TraceOn { .. }
            | Request::TraceOff { .. } => {}
        }
    }
    if !table.is_empty() {
        let ids: Vec<u16> = table.rules().map(|rule| rule.id).collect();
        for id in table.resolve(&ifaces) {
            assert!(
                id == NO_RULE || ids.contains(&id),
                "the index names rule {id}"
            );
        }
    }
});

/// What the daemon checks before a rule reaches its table (`rules_in_force`'s `Attached`).
fn validate(
    spec: &RuleSpec,
    ifaces: &[String],
) -> Result<shaper::policy::rule_table::Limit, LimitError> {
    if let Some(name) = &spec.key.iface
        && !ifaces.contains(name)
    {
        return Err(LimitError::NotAttached {
            iface: name.clone(),
            attached: ifaces.join(", "),
        });
    }
    let limit = make_limit(
        spec.rate_bps,
        spec.burst_bytes,
        spec.action,
        AGGREGATE,
        " on veth0",
    )?;
    assert!((1..=bucket::MAX_RATE_BPS).contains(&limit.rate_bps));
    assert!((min_burst(AGGREGATE)..=bucket::MAX_BURST_BYTES).contains(&limit.burst_bytes));
    // The kernel's view: must not overflow (overflow checks are on in fuzz builds).
    let config = limit.config();
    assert!(config.fill_ns > 0);
    Ok(limit)
}

/// A refused change: its error reply names the rule's problem and is one readable line.
fn refused(error: &LimitError, rule: &RuleSpec) {
    let message = error.to_string();
    assert!(!message.is_empty(), "{rule:?}");
    reply(&Response::Error {
        message: format!("{}: {message}", rule.key),
    });
}

/// A reply goes out as one JSON line, which the CLI reads back as it was sent.
fn reply(response: &Response) {
    let line = serde_json::to_vec(response).expect("a response serializes");
    assert!(!line.contains(&b'\n'));
    assert_eq!(
        serde_json::from_slice::<Response>(&line).ok().as_ref(),
        Some(response)
    );
}
