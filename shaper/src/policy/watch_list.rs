//! The daemon's watched ports (`shaper watch`/`unwatch`): the list, its image in the `WATCHED`
//! switches, and the file beside the state file that brings it back after a restart.
//!
//! The list lives in its own file (`STATE.watches.json` beside `--state`) rather than in the
//! rules' state file: the rules' file is rewritten on every limit change and versioned on its
//! own, and watches change the accounting, never a verdict.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    datapath::classifier::Classifier,
    datapath::watched_ports::{self, WatchSpec},
    policy::state_file,
    policy::{PolicyError, Result},
};

const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    /// The config file's `[[watch]]`es `watches` grew from.
    #[serde(default)]
    config_watches: Vec<WatchSpec>,
    watches: Vec<WatchSpec>,
}

/// The watches in force and where they are saved.
#[derive(Debug)]
pub struct WatchList {
    watches: Vec<WatchSpec>,
    config_watches: Vec<WatchSpec>,
    path: PathBuf,
}

/// Where the watches of the daemon whose state file is `state` are saved.
pub fn saved_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_owned();
    name.push(".watches.json");
    state.with_file_name(name)
}

impl WatchList {
    /// Resumes the saved watches when they grew from the same `[[watch]]`es of the config
    /// file (as the rules do from theirs), else starts from `config_watches`; paints them.
    pub fn start(
        classifier: &Classifier,
        config_watches: Vec<WatchSpec>,
        state: &Path,
    ) -> Result<Self> {
        let path = saved_path(state);
        let watches = match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: Saved =
                    serde_json::from_slice(&bytes).map_err(|e| PolicyError::State {
                        path: path.clone(),
                        reason: format!("not a shaper watch list: {e}"),
                    })?;
                if saved.version != VERSION {
                    return Err(PolicyError::State {
                        path,
                        reason: format!(
                            "version {} (this shaper reads version {VERSION})",
                            saved.version
                        ),
                    });
                }
                if saved.config_watches == config_watches {
                    saved.watches
                } else {
                    log::warn!(
                        "the config file's watches changed since {} was saved: starting from \
                         the config file",
                        path.display()
                    );
                    config_watches.clone()
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => config_watches.clone(),
            Err(e) => return Err(PolicyError::path(&path)(e)),
        };
        let list = Self {
            watches,
            config_watches,
            path,
        };
        watched_ports::paint(classifier, &list.watches);
        if !list.watches.is_empty() {
            log::info!(
                "restored {} watch(es) from {}",
                list.watches.len(),
                list.path.display()
            );
        }
        Ok(list)
    }

    /// Adds `watch` (a no-op if it is already there), saves, then paints. Returns whether it
    /// was new.
    pub fn add(&mut self, classifier: &Classifier, watch: WatchSpec) -> Result<bool> {
        if let Some(iface) = &watch.iface
            && !classifier.interface_names().contains(iface)
        {
            return Err(PolicyError::Watch(format!(
                "{iface} is not an interface this daemon is attached to"
            )));
        }
        if self.watches.contains(&watch) {
            return Ok(false);
        }
        let mut watches = self.watches.clone();
        watches.push(watch);
        self.commit(classifier, watches)?;
        Ok(true)
    }

    /// Removes exactly `watch`, saves, then paints.
    pub fn remove(&mut self, classifier: &Classifier, watch: &WatchSpec) -> Result<()> {
        if !self.watches.contains(watch) {
            return Err(PolicyError::Watch(format!(
                "no watch {watch}; `shaper watch --list` shows them"
            )));
        }
        let watches = self
            .watches
            .iter()
            .filter(|w| *w != watch)
            .cloned()
            .collect();
        self.commit(classifier, watches)
    }

    pub fn list(&self) -> Vec<WatchSpec> {
        self.watches.clone()
    }

    /// Saved first: a change that cannot be saved is not made.
    fn commit(&mut self, classifier: &Classifier, watches: Vec<WatchSpec>) -> Result<()> {
        let text = serde_json::to_vec_pretty(&Saved {
            version: VERSION,
            config_watches: self.config_watches.clone(),
            watches: watches.clone(),
        })
        .map_err(std::io::Error::other)?;
        state_file::write_atomically(&self.path, &text)?;
        self.watches = watches;
        watched_ports::paint(classifier, &self.watches);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_saved_beside_the_state_file() {
        assert_eq!(
            saved_path(Path::new("/var/lib/shaper/state.json")),
            Path::new("/var/lib/shaper/state.json.watches.json")
        );
    }
}
