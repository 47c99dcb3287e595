//! What a reload of the config file changes, and what the daemon reports about reloads.
//!
//! The file is the source of truth for the rules it names (see docs/src/guide/config.md, *Reloading*): after
//! a reload every rule the file names is in force exactly as written, a rule an earlier file
//! named and this one does not is removed, and a rule set at runtime under a key the file does
//! not name stays. Each rule carries its [`Origin`] so `limit ls` shows which is which, and so
//! the state file brings it back after a restart.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where a rule in force came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file names this rule, and the rule is as the file says: the next reload keeps
    /// it, changes it or removes it as the file then says.
    Config,
    /// Set with `shaper limit set` (the default for a view from a daemon that did not say): a
    /// reload leaves it alone unless the file comes to name its key.
    #[default]
    Runtime,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Runtime => "runtime",
        }
    }
}

/// How the rules changed in one reload, as the log line reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rule(s) added, {} changed, {} removed, {} unchanged",
            self.added, self.changed, self.removed, self.unchanged
        )
    }
}

/// Whether the last reload worked and when one last did, for the two
/// `shaper_config_last_reload_*` gauges (the names Prometheus itself exports). The load at
/// start-up counts as the first success, as in Prometheus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReloadStatus {
    pub successful: bool,
    /// Seconds since the Unix epoch of the last load that succeeded.
    pub last_success_unix_seconds: f64,
}

impl ReloadStatus {
    /// A success now.
    pub fn succeeded_now() -> Self {
        Self {
            successful: true,
            last_success_unix_seconds: unix_now(),
        }
    }

    /// A failure now: the last success stays what it was.
    pub fn failed(self) -> Self {
        Self {
            successful: false,
            ..self
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_the_time_of_the_last_success() {
        let ok = ReloadStatus::succeeded_now();
        assert!(ok.successful && ok.last_success_unix_seconds > 1.7e9);
        let failed = ok.failed();
        assert!(!failed.successful);
        assert_eq!(
            failed.last_success_unix_seconds.to_bits(),
            ok.last_success_unix_seconds.to_bits()
        );
    }

    #[test]
    fn origins_serialize_as_their_names() {
        for origin in [Origin::Config, Origin::Runtime] {
            assert_eq!(
                serde_json::to_string(&origin).unwrap(),
                format!("\"{}\"", origin.name())
            );
        }
    }
}
