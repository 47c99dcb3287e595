//! Policy's errors: a rule, a config file or a state file that cannot be taken as it is.

use std::{io, path::PathBuf};

use crate::datapath::DatapathError;

/// What went wrong with the operator's wishes: a limit or an action option out of range, a
/// config file or state file that does not parse or is not safe to read, a rule that does not
/// exist, a watch that cannot be done; or the datapath's error when a rule could not be
/// installed. Like every layer's error, a variant shows its cause in its message or returns it
/// from `source()`, never both (see [`crate::error`]).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Limit(#[from] super::rule_table::LimitError),

    #[error(transparent)]
    ActionOption(#[from] super::action_options::ActionOptionError),

    #[error("config rule {rule}")]
    ConfigRule {
        rule: String,
        #[source]
        source: Box<PolicyError>,
    },

    /// A `watch` or `unwatch` that cannot be done as asked.
    #[error("{0}")]
    Watch(String),

    #[error("no rule {key}{others}")]
    NoSuchRule { key: String, others: String },

    #[error("state file {path}: {reason}; move it away to start from the config file's rules")]
    State { path: PathBuf, reason: String },

    #[error(transparent)]
    Config(#[from] super::config_file::ConfigError),

    #[error("{path}")]
    Path {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    UnsafeFile(#[from] crate::private_files::UnsafeFile),

    #[error(transparent)]
    Io(#[from] io::Error),

    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

impl PolicyError {
    pub(crate) fn path(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Path { path, source }
    }
}

pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;

    fn denied() -> io::Error {
        io::Error::from_raw_os_error(libc::EACCES)
    }

    #[test]
    fn a_nested_error_shows_each_cause_once() {
        let error = PolicyError::ConfigRule {
            rule: "9090 port dir both proto any iface all".into(),
            source: Box::new(PolicyError::Path {
                path: "/var/lib/shaper".into(),
                source: denied(),
            }),
        };
        let expected = "config rule 9090 port dir both proto any iface all: /var/lib/shaper: \
                        Permission denied (os error 13)";
        assert_eq!(chain(&error), expected);
        // As `shaper` prints it, with a context of the CLI's around it.
        let error = anyhow::Error::from(error).context("starting");
        assert_eq!(chain(error.as_ref()), format!("starting: {expected}"));
    }
}
