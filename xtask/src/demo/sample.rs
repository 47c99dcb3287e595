//! One sample of `shaper top --once --json` (schema version 1): only the fields the demo reads.
//! Unknown fields are ignored, since the schema only ever adds fields.

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::process::Shaper;

const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
pub struct Sample {
    pub schema_version: u32,
    pub interval_seconds: f64,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub iface: String,
    pub direction: String,
    pub proto: String,
    pub port: u16,
    pub bytes_per_second: f64,
    pub dropped_packets_per_second: f64,
    pub rule: Option<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Rule {
    pub ports: String,
    pub rate_bps: u64,
    pub burst_bytes: u64,
    pub action: String,
}

impl Sample {
    /// Runs `shaper top --once --json --interval SECS`: one sample over one interval.
    pub fn take(shaper: &Shaper, interval_secs: u64) -> anyhow::Result<Self> {
        let interval = interval_secs.to_string();
        let args = ["top", "--once", "--json", "--interval", &interval];
        let output = shaper.run(&args)?;
        let sample: Self = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "reading the output of `{}`:\n{}",
                shaper.command_line(&args),
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        if sample.schema_version != SCHEMA_VERSION {
            bail!(
                "`shaper top --json` has schema version {}, this demo reads {SCHEMA_VERSION}",
                sample.schema_version
            );
        }
        Ok(sample)
    }

    /// The row of UDP traffic arriving on `iface` for local port `port`.
    pub fn udp_ingress(&self, iface: &str, port: u16) -> anyhow::Result<&Row> {
        self.rows
            .iter()
            .find(|r| {
                r.iface == iface && r.direction == "ingress" && r.proto == "udp" && r.port == port
            })
            .with_context(|| {
                format!(
                    "`shaper top` shows no ingress UDP row for port {port} on {iface} \
                     (rows: {:?})",
                    self.rows
                        .iter()
                        .map(|r| format!("{} {} {}/{}", r.iface, r.direction, r.proto, r.port))
                        .collect::<Vec<_>>()
                )
            })
    }
}
