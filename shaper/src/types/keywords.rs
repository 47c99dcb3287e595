//! The small keyword enums every layer speaks (directions, protocols, sides, actions, trace
//! verdicts), spelt the same way in the CLI, the config file, the control protocol and the state
//! file.

use shaper_common::{DIR_EGRESS, DIR_INGRESS, PROTO_TCP, PROTO_UDP, SIDE_LOCAL, SIDE_REMOTE};

/// A keyword enum's words, each with its help (its doc comment, empty without one), for
/// whoever lists them: the command line shows them as its possible values.
pub trait Keyword: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static {
    const WORDS: &'static [&'static str];
    const HELP: &'static [&'static str];
}

/// Generates the string form, parsing and listing of a small keyword enum, so the CLI, the
/// config file, the control protocol and the state file all spell it the same way. Paths are
/// absolute so that any module of the crate can use it. A variant's doc comment is its help
/// (`--help` lists it); `(default)` after the word marks the default variant.
macro_rules! keyword_enum {
    ($(#[$meta:meta])* $name:ident {
        $( $(#[doc = $vdoc:literal])* $variant:ident => $word:literal $(($default:ident))? ),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $( $(#[doc = $vdoc])* $(#[$default])? $variant ),+ }

        impl $name {
            pub const WORDS: &'static [&'static str] = &[$($word),+];
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }
        }

        impl $crate::types::keywords::Keyword for $name {
            const WORDS: &'static [&'static str] = &[$($word),+];
            const HELP: &'static [&'static str] = &[$(concat!("" $(, $vdoc)*)),+];
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(format!("'{text}' is not one of {}", Self::WORDS.join(", "))),
                }
            }
        }
    };
}

pub(crate) use keyword_enum;

keyword_enum!(
    /// The hook directions a rule applies to; each direction has its own bucket.
    DirSel { Both => "both" (default), Ingress => "ingress", Egress => "egress" }
);
keyword_enum!(
    ProtoSel { Any => "any" (default), Tcp => "tcp", Udp => "udp" }
);
keyword_enum!(
    Action {
        /// Drop packets the bucket has no tokens for.
        Drop => "drop" (default),
        /// Pass every packet; count those `drop` would have dropped.
        Observe => "observe",
        /// Queue the rule's packets in an HTB class at the rate (egress).
        Shape => "shape",
        /// Give each packet a departure time at the rate, which `fq` keeps (egress).
        Pace => "pace",
    }
);
keyword_enum!(
    /// Which packets `shaper trace` shows, by verdict.
    TraceVerdicts { All => "all" (default), Drop => "drop", WouldDrop => "would-drop" }
);
keyword_enum!(
    /// Which port of the packet the rule's ports are: the local one, the remote one, or none:
    /// an `unplaced` rule governs the packets no port could be found for (see the guide's
    /// *What is counted*).
    Side { Local => "local" (default), Remote => "remote", Unplaced => "unplaced" }
);

impl DirSel {
    /// Classifier direction indices this selection covers.
    pub fn directions(self) -> &'static [u32] {
        match self {
            Self::Both => &[DIR_INGRESS, DIR_EGRESS],
            Self::Ingress => &[DIR_INGRESS],
            Self::Egress => &[DIR_EGRESS],
        }
    }
}

impl ProtoSel {
    pub fn protos(self) -> &'static [u32] {
        match self {
            Self::Any => &[PROTO_TCP, PROTO_UDP],
            Self::Tcp => &[PROTO_TCP],
            Self::Udp => &[PROTO_UDP],
        }
    }
}

impl Side {
    /// The side's rows in the rule index; `None` for `unplaced`, whose rules live in a map of
    /// their own.
    pub fn index(self) -> Option<u32> {
        match self {
            Self::Local => Some(SIDE_LOCAL),
            Self::Remote => Some(SIDE_REMOTE),
            Self::Unplaced => None,
        }
    }
}

impl Action {
    pub fn code(self) -> u32 {
        match self {
            Self::Drop => shaper_common::ACTION_DROP,
            Self::Observe => shaper_common::ACTION_OBSERVE,
            Self::Shape => shaper_common::ACTION_SHAPE,
            Self::Pace => shaper_common::ACTION_PACE,
        }
    }
}
