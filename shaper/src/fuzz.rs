//! Entry points for the fuzz targets in `fuzz/` (`cargo xtask fuzz-inputs`): the parsers of
//! outside input that are not public API, reached exactly as the daemon runs them. Not part of
//! the library's API; nothing else calls these.
//!
//! The public parsers (`rates_and_sizes`, `config_file::parse`, the control protocol's
//! `Request`) need no entry of their own.

use std::path::Path;

pub use crate::datapath::netlink::{AggregateLimits, Replayed as NetlinkReplies};
use crate::policy::{
    Result,
    rule_table::{Rule, RuleSpec},
    state_file,
};

/// `datagrams` as rtnetlink's reply to each request the daemon sends (an ack, RTM_GETLINK, a
/// filter dump of the `ingress` or egress hook), through the same walker and handlers.
pub fn netlink_replies(datagrams: &[&[u8]], ingress: bool) -> NetlinkReplies {
    crate::datapath::netlink::replay(datagrams, ingress)
}

/// The state file's parser on `bytes`, as if read from `path`: the config rules and the rules.
pub fn parse_state_file(bytes: &[u8], path: &Path) -> Result<(Vec<RuleSpec>, Vec<Rule>)> {
    let state = state_file::parse(bytes, path)?;
    Ok((
        state.config_rules,
        state.rules.into_iter().map(|saved| saved.rule).collect(),
    ))
}

/// The state file the daemon writes for `config_rules` and `rules`.
pub fn state_file_text(config_rules: &[RuleSpec], rules: &[Rule]) -> serde_json::Result<Vec<u8>> {
    state_file::to_json(
        config_rules,
        rules
            .iter()
            .map(|rule| (rule, crate::policy::config_reload::Origin::Runtime, None)),
    )
}
