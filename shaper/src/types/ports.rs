//! Port ranges as the operator writes them (`9090`, `8000-8099`): in rules, watches and traces.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// An inclusive port range; a single port is `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// What a rule names in place of ports for the packets no port could be found for.
pub const UNPLACED: &str = "unplaced";

impl PortRange {
    /// Every port: the range an `unplaced` rule carries, which names no port.
    pub const ALL: Self = Self {
        lo: 0,
        hi: u16::MAX,
    };

    pub fn single(port: u16) -> Self {
        Self { lo: port, hi: port }
    }

    /// Ports in the range minus one (0 for a single port).
    pub fn width(&self) -> u16 {
        self.hi - self.lo
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

pub const PORT_FORMS: &str =
    "a port 0-65535 (9090) or an inclusive range LO-HI with LO < HI (8000-8099)";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a port or port range; accepted: {PORT_FORMS}")]
pub struct PortRangeError {
    pub value: String,
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || PortRangeError {
            value: text.to_owned(),
        };
        let port = |s: &str| -> Result<u16, PortRangeError> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error());
            }
            s.parse().map_err(|_| error())
        };
        match text.split_once('-') {
            None => Ok(Self::single(port(text)?)),
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo >= hi {
                    return Err(error());
                }
                Ok(Self { lo, hi })
            }
        }
    }
}

impl TryFrom<String> for PortRange {
    type Error = PortRangeError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// As its text (`9090`, `8000-8099`), written straight into the output: the state file holds
/// one per rule, and a `String` per port was a measurable part of saving 65,535 rules.
impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}
