//! The nftables policer the accuracy scenario compares against, in a table of its own that is
//! deleted on drop.

use crate::sys::{Namespace, run};

const TABLE: &str = "shb_bench";

pub struct NftLimit<'a> {
    ns: &'a Namespace,
}

impl<'a> NftLimit<'a> {
    /// `limit rate over RATE bytes/second burst BURST bytes drop` for TCP and UDP to `port`, at
    /// the input hook of `ns`. nftables charges each packet its length at that hook: the IP
    /// packet (GRO/GSO aggregates whole, with one set of headers), not the Ethernet frame.
    pub fn install(
        ns: &'a Namespace,
        port: u16,
        rate_bytes: u64,
        burst_bytes: u64,
    ) -> anyhow::Result<Self> {
        // A table left by a killed earlier run would keep policing: start clean.
        let _ = run(ns.command("nft").args(["delete", "table", "inet", TABLE]));
        run(ns.command("nft").args(["add", "table", "inet", TABLE]))?;
        let guard = Self { ns };
        run(ns.command("nft").args([
            "add",
            "chain",
            "inet",
            TABLE,
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ]))?;
        let rule = format!(
            "meta l4proto {{ tcp, udp }} th dport {port} limit rate over {rate_bytes} bytes/second \
             burst {burst_bytes} bytes drop"
        );
        run(ns
            .command("nft")
            .args(["add", "rule", "inet", TABLE, "input"])
            .args(rule.split(' ')))
        .map_err(|e| {
            anyhow::Error::from(e).context("adding the nftables rule (apt-get install nftables)")
        })?;
        Ok(guard)
    }
}

impl Drop for NftLimit<'_> {
    fn drop(&mut self) {
        let _ = run(self
            .ns
            .command("nft")
            .args(["delete", "table", "inet", TABLE]));
    }
}
