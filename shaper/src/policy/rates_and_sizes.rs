//! Rates and sizes as operators write them (CLI flags and TOML config): the one place they are
//! parsed and formatted.
//!
//! - **Rates are bits per second.** The eBPF token bucket counts in nanobits, so any whole number
//!   of bits per second is exact there; a rate that is not a whole number of bits per second
//!   ("0.1B/s" is 0.8 bit/s) could only be rounded, and is rejected rather than silently changed.
//!   For the same reason a size must be a whole number of bytes.
//! - **No floats anywhere.** A decimal such as "1.1mbit" has no exact binary floating-point value,
//!   and `f64` cannot hold every `u64`. Numbers are read as a decimal integer and a scale (digits
//!   after the point), multiplied out in `u128`: a result is either exact or an error, and overflow
//!   past `u64` is detected exactly, never rounded.
//! - **Every unit says bits or bytes.** `kbit`, `mbit`, `gbit` are bits; `B/s`, `KB/s`, `KiB/s`, ...
//!   are bytes. `mbps`, `kbps`, `bps` and bare `k`, `m`, `g` are rejected as ambiguous: operators
//!   usually mean megabits by "mbps", but tc(8) reads it as megabytes per second, a factor of 8
//!   apart. For a size, `k` is 1000 or 1024 bytes depending on the tool, so it is rejected too.
//!   Matching is case-insensitive, so `mb/s` is megabytes per second.
//! - **A bare number is bytes** (per second, for a rate). Beware that tc(8)
//!   reads a bare rate as bits per second: a number copied from a tc command needs its unit.
//! - **Numbers are plain decimals:** ASCII digits with at most one decimal point and digits on both
//!   sides of it ("0.5", not ".5" or "5."); no sign, exponent or digit separators, so that every
//!   accepted string has one obvious reading.
//! - **Formatting round-trips:** [`format_rate`] and [`format_size`] print the shortest exact form
//!   among a fixed order of units, and [`parse_rate`] / [`parse_size`] read it back to the same
//!   value (zero, which the parsers reject, is the one exception).

use std::fmt;

/// The accepted forms of a rate; every rate error message ends with it.
pub const RATE_FORMS: &str = "kbit, mbit, gbit (bits/s, 1000-based), \
B/s, KB/s, MB/s, GB/s (bytes/s, 1000-based), KiB/s, MiB/s, GiB/s (bytes/s, 1024-based); \
the /s is optional, case is ignored and a bare number is bytes/s, e.g. 10mbit, 1.5gbit, 64KiB/s";

/// The accepted forms of a size; every size error message ends with it.
pub const SIZE_FORMS: &str = "B, KB, MB, GB (bytes, 1000-based), KiB, MiB, GiB (bytes, 1024-based); \
case is ignored and a bare number is bytes, e.g. 1500, 256KiB, 1.5MB";

/// Rate units, each with its value in bits per second, written as [`format_rate`] prints them.
/// The "/s" is optional on input, so units are matched with it stripped.
const RATE_UNITS: [(&str, u64); 10] = [
    ("gbit", 1_000_000_000),
    ("mbit", 1_000_000),
    ("kbit", 1_000),
    ("GiB/s", 8 << 30),
    ("GB/s", 8_000_000_000),
    ("MiB/s", 8 << 20),
    ("MB/s", 8_000_000),
    ("KiB/s", 8 << 10),
    ("KB/s", 8_000),
    ("B/s", 8),
];

/// Size units, each with its value in bytes, largest first and binary before SI, the order in
/// which [`format_size`] tries them.
const SIZE_UNITS: [(&str, u64); 7] = [
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

/// What was being parsed, so that an error names it and lists its accepted forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rate,
    Size,
}

impl Kind {
    /// The accepted-forms text: [`RATE_FORMS`] or [`SIZE_FORMS`].
    pub const fn forms(self) -> &'static str {
        match self {
            Kind::Rate => RATE_FORMS,
            Kind::Size => SIZE_FORMS,
        }
    }

    /// What a value of this kind must be a whole number of.
    const fn whole_unit(self) -> &'static str {
        match self {
            Kind::Rate => "bits per second",
            Kind::Size => "bytes",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Rate => "rate",
            Kind::Size => "size",
        })
    }
}

/// Why a rate or size string was rejected. Each message quotes the input as given and ends with
/// the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{kind} \"{input}\" is empty; accepted {kind}s: {}", .kind.forms())]
    Empty { kind: Kind, input: String },

    #[error(
        "{kind} \"{input}\" is negative; negative values are not allowed; accepted {kind}s: {}",
        .kind.forms()
    )]
    Negative { kind: Kind, input: String },

    #[error(
        "{kind} \"{input}\" is zero; a {kind} must be greater than zero; accepted {kind}s: {}",
        .kind.forms()
    )]
    Zero { kind: Kind, input: String },

    #[error(
        "{kind} \"{input}\" is not a plain number and unit (ASCII digits with at most one decimal \
         point, digits on both sides of it, no sign, exponent or separators); accepted {kind}s: {}",
        .kind.forms()
    )]
    NotANumber { kind: Kind, input: String },

    #[error(
        "{kind} \"{input}\" is not a whole number of {}; round it, or write it in a smaller \
         unit; accepted {kind}s: {}",
        .kind.whole_unit(),
        .kind.forms()
    )]
    Fractional { kind: Kind, input: String },

    #[error(
        "{kind} \"{input}\" is too large: at most {} {} fit in 64 bits; accepted {kind}s: {}",
        u64::MAX,
        .kind.whole_unit(),
        .kind.forms()
    )]
    Overflow { kind: Kind, input: String },

    #[error("{kind} \"{input}\" has an unknown unit \"{unit}\"; accepted {kind}s: {}", .kind.forms())]
    UnknownUnit {
        kind: Kind,
        input: String,
        unit: String,
    },

    /// A unit operators commonly type that could mean two different things (bits or bytes for a
    /// rate, 1000 or 1024 for a size); `hint` names both readings and how to write each.
    #[error(
        "{kind} \"{input}\" has an ambiguous unit \"{unit}\": {hint}; accepted {kind}s: {}",
        .kind.forms()
    )]
    AmbiguousUnit {
        kind: Kind,
        input: String,
        unit: String,
        hint: String,
    },

    #[error(
        "size \"{input}\" has a \"/s\", but a size has no \"/s\" (it is bytes, not a rate); \
         accepted sizes: {}",
        SIZE_FORMS
    )]
    SizePerSecond { input: String },
}

impl UnitError {
    /// Whether a rate or a size was being parsed.
    pub fn kind(&self) -> Kind {
        match self {
            UnitError::Empty { kind, .. }
            | UnitError::Negative { kind, .. }
            | UnitError::Zero { kind, .. }
            | UnitError::NotANumber { kind, .. }
            | UnitError::Fractional { kind, .. }
            | UnitError::Overflow { kind, .. }
            | UnitError::UnknownUnit { kind, .. }
            | UnitError::AmbiguousUnit { kind, .. } => *kind,
            UnitError::SizePerSecond { .. } => Kind::Size,
        }
    }

    /// The rejected text, exactly as given.
    pub fn input(&self) -> &str {
        match self {
            UnitError::Empty { input, .. }
            | UnitError::Negative { input, .. }
            | UnitError::Zero { input, .. }
            | UnitError::NotANumber { input, .. }
            | UnitError::Fractional { input, .. }
            | UnitError::Overflow { input, .. }
            | UnitError::UnknownUnit { input, .. }
            | UnitError::AmbiguousUnit { input, .. }
            | UnitError::SizePerSecond { input } => input,
        }
    }
}

/// Parses a rate such as "10mbit", "1.5 MB/s" or "64KiB" into bits per second (see
/// [`RATE_FORMS`]).
pub fn parse_rate(text: &str) -> Result<u64, UnitError> {
    parse(text, Kind::Rate)
}

/// Parses a size such as "1500", "256KiB" or "1.5 MB" into bytes (see [`SIZE_FORMS`]).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    parse(text, Kind::Size)
}

/// The shortest exact form of a rate that [`parse_rate`] reads back to the same value: the
/// largest of gbit, mbit, kbit that divides it ("10mbit", "1500kbit"); else, for whole bytes per
/// second, the largest of GiB/s, MiB/s, KiB/s that divides it, or B/s ("1KiB/s", "3B/s"); else
/// bytes per second with up to three decimals ("1.5B/s" for 12 bits per second).
pub fn format_rate(bits_per_sec: u64) -> String {
    if bits_per_sec == 0 {
        return "0B/s".to_owned();
    }
    // An SI byte unit divides only what kbit divides too, so only the bit and binary byte units
    // can be the largest exact one.
    let units = RATE_UNITS
        .iter()
        .filter(|(name, _)| !matches!(*name, "GB/s" | "MB/s" | "KB/s"));
    for &(name, value) in units {
        if bits_per_sec.is_multiple_of(value) {
            return format!("{}{name}", bits_per_sec / value);
        }
    }
    // Not whole bytes: n/8 bytes has at most three decimals (1/8 = 0.125).
    let thousandths = format!("{:03}", (bits_per_sec % 8) * 125);
    format!(
        "{}.{}B/s",
        bits_per_sec / 8,
        thousandths.trim_end_matches('0')
    )
}

/// The shortest exact form of a size that [`parse_size`] reads back to the same value: the
/// largest of GiB, GB, MiB, MB, KiB, KB that divides it, binary first ("256KiB", "2MB"), else
/// bytes ("1500B").
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0B".to_owned();
    }
    let (name, value) = SIZE_UNITS
        .iter()
        .copied()
        .find(|&(_, value)| bytes.is_multiple_of(value))
        .unwrap_or(("B", 1));
    format!("{}{name}", bytes / value)
}

fn parse(text: &str, kind: Kind) -> Result<u64, UnitError> {
    let input = || text.to_owned();
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(UnitError::Empty {
            kind,
            input: input(),
        });
    }
    if trimmed.starts_with('-') {
        return Err(UnitError::Negative {
            kind,
            input: input(),
        });
    }
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number_text, rest) = trimmed.split_at(split);
    let unit = rest.trim_start();
    // A digit in the unit means the number went on in a form we do not accept: "1e6", "1_000",
    // "1,5mbit", "10 20".
    let number = match Decimal::parse(number_text) {
        Some(number) if !unit.contains(|c: char| c.is_ascii_digit()) => number,
        _ => {
            return Err(UnitError::NotANumber {
                kind,
                input: input(),
            });
        }
    };
    let multiplier = match kind {
        Kind::Rate => rate_multiplier(unit, number_text),
        Kind::Size => size_multiplier(unit, number_text),
    }
    .map_err(|problem| match problem {
        UnitProblem::Unknown => UnitError::UnknownUnit {
            kind,
            input: input(),
            unit: unit.to_owned(),
        },
        UnitProblem::Ambiguous { hint } => UnitError::AmbiguousUnit {
            kind,
            input: input(),
            unit: unit.to_owned(),
            hint,
        },
        UnitProblem::PerSecond => UnitError::SizePerSecond { input: input() },
    })?;
    number.scale(multiplier).map_err(|problem| match problem {
        ScaleProblem::Zero => UnitError::Zero {
            kind,
            input: input(),
        },
        ScaleProblem::Fractional => UnitError::Fractional {
            kind,
            input: input(),
        },
        ScaleProblem::Overflow => UnitError::Overflow {
            kind,
            input: input(),
        },
    })
}

enum UnitProblem {
    Unknown,
    Ambiguous { hint: String },
    PerSecond,
}

/// Bits per second in one `unit`; `n` is the number as typed, for the hint of an ambiguous unit
/// ("write 10mbit ...").
fn rate_multiplier(unit: &str, n: &str) -> Result<u64, UnitProblem> {
    let unit = unit.to_ascii_lowercase();
    if unit.is_empty() {
        return Ok(8);
    }
    let stem = unit.strip_suffix("/s").unwrap_or(&unit);
    if !stem.is_empty() {
        let found = RATE_UNITS.iter().find(|(name, _)| {
            name.strip_suffix("/s")
                .unwrap_or(name)
                .eq_ignore_ascii_case(stem)
        });
        if let Some(&(_, value)) = found {
            return Ok(value);
        }
    }
    // "10k", "10m/s", "10ki" and "10bps", "10kbps", "10kibps": bits or bytes?
    let prefix = match stem {
        "k" | "m" | "g" | "ki" | "mi" | "gi" => stem,
        _ => unit
            .strip_suffix("ps")
            .and_then(|rest| rest.strip_suffix('b'))
            .filter(|prefix| ["", "k", "m", "g", "ki", "mi", "gi"].contains(prefix))
            .ok_or(UnitProblem::Unknown)?,
    };
    let hint = match Prefix::of(prefix) {
        None => format!(
            "it could mean bits or bytes per second; write {n}B/s for bytes per second, \
             or use kbit, mbit or gbit for bits per second"
        ),
        Some((p, false)) => format!(
            "it could mean {0}bits or {0}bytes per second; write {n}{1}bit for {0}bits \
             or {n}{2}B/s for {0}bytes per second",
            p.si_name, p.lower, p.upper
        ),
        Some((p, true)) => format!(
            "it could mean bits or bytes per second; write {n}{0}iB/s for {1}bytes per \
             second or {n}{2}bit for {3}bits",
            p.upper, p.binary_name, p.lower, p.si_name
        ),
    };
    Err(UnitProblem::Ambiguous { hint })
}

/// Bytes in one `unit`; `n` is the number as typed, for the hint of an ambiguous unit.
fn size_multiplier(unit: &str, n: &str) -> Result<u64, UnitProblem> {
    if unit.is_empty() {
        return Ok(1);
    }
    if unit.ends_with("/s") || unit.ends_with("/S") {
        return Err(UnitProblem::PerSecond);
    }
    if let Some(&(_, value)) = SIZE_UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
    {
        return Ok(value);
    }
    // "10k": 1000 or 1024 bytes each?
    match Prefix::of(&unit.to_ascii_lowercase()) {
        Some((p, false)) => Err(UnitProblem::Ambiguous {
            hint: format!(
                "it could mean {0}bytes or {1}bytes; write {n}{2}B for {0}bytes (1000-based) \
                 or {n}{2}iB for {1}bytes (1024-based)",
                p.si_name, p.binary_name, p.upper
            ),
        }),
        _ => Err(UnitProblem::Unknown),
    }
}

/// A unit prefix, for the hints of ambiguous units.
#[derive(Clone, Copy)]
struct Prefix {
    lower: &'static str,
    upper: &'static str,
    si_name: &'static str,
    binary_name: &'static str,
}

impl Prefix {
    /// The prefix named by "k", "m", "g" (false) or "ki", "mi", "gi" (true: binary).
    fn of(text: &str) -> Option<(Prefix, bool)> {
        let (letter, binary) = match text.strip_suffix('i') {
            Some(letter) => (letter, true),
            None => (text, false),
        };
        let prefix = match letter {
            "k" => Prefix {
                lower: "k",
                upper: "K",
                si_name: "kilo",
                binary_name: "kibi",
            },
            "m" => Prefix {
                lower: "m",
                upper: "M",
                si_name: "mega",
                binary_name: "mebi",
            },
            "g" => Prefix {
                lower: "g",
                upper: "G",
                si_name: "giga",
                binary_name: "gibi",
            },
            _ => return None,
        };
        Some((prefix, binary))
    }
}

/// A decimal number as written: `int` + `frac` / 10^`frac_digits`, exactly.
struct Decimal {
    /// `None` if the integer part does not fit `u128` (then no result fits `u64`).
    int: Option<u128>,
    frac: Fraction,
}

enum Fraction {
    /// `value` / 10^`digits`, trailing zeros removed (so `digits` is 0 exactly when it is zero).
    Exact { value: u128, digits: u32 },
    /// Nonzero with more digits than `u128` holds. An exact result needs 10^digits to divide
    /// value × multiplier, and as value's last digit is not 0, digits <= the multiplicity of 2 or
    /// 5 in the multiplier, at most 33 (GiB/s = 2^33 bits/s): such a fraction is never exact.
    TooLong,
}

enum ScaleProblem {
    Zero,
    Fractional,
    Overflow,
}

impl Decimal {
    /// Digits with at most one decimal point and digits on both sides of it.
    fn parse(text: &str) -> Option<Decimal> {
        let (int_text, frac_text) = match text.split_once('.') {
            Some((int_text, frac_text)) => (int_text, frac_text),
            None => (text, "0"),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_text) || !all_digits(frac_text) {
            return None;
        }
        let int = int_text.bytes().try_fold(0u128, |acc, digit| {
            acc.checked_mul(10)?.checked_add(u128::from(digit - b'0'))
        });
        let frac_text = frac_text.trim_end_matches('0');
        let frac = match frac_text.bytes().try_fold(0u128, |acc, digit| {
            acc.checked_mul(10)?.checked_add(u128::from(digit - b'0'))
        }) {
            // 10^digits must fit too: u128 holds 10^38.
            Some(value) if frac_text.len() <= 38 => Fraction::Exact {
                value,
                digits: frac_text.len() as u32,
            },
            _ => Fraction::TooLong,
        };
        Some(Decimal { int, frac })
    }

    /// This number × `multiplier`, if it is a whole, nonzero number that fits `u64`.
    fn scale(&self, multiplier: u64) -> Result<u64, ScaleProblem> {
        let multiplier = u128::from(multiplier);
        if self.int == Some(0) && matches!(self.frac, Fraction::Exact { digits: 0, .. }) {
            return Err(ScaleProblem::Zero);
        }
        let whole = self
            .int
            .and_then(|int| int.checked_mul(multiplier))
            .ok_or(ScaleProblem::Overflow)?;
        let frac = match self.frac {
            Fraction::Exact { value, digits } => {
                // value × multiplier / 10^digits, without the product overflowing: cancel the
                // common factor first; what is left of 10^digits must then divide value.
                let power = 10u128.pow(digits);
                let common = gcd(multiplier, power);
                let rest_of_power = power / common;
                if !value.is_multiple_of(rest_of_power) {
                    return Err(ScaleProblem::Fractional);
                }
                // value / rest_of_power < common <= multiplier < 2^64, so this fits u128.
                value / rest_of_power * (multiplier / common)
            }
            Fraction::TooLong => return Err(ScaleProblem::Fractional),
        };
        let total = whole.checked_add(frac).ok_or(ScaleProblem::Overflow)?;
        u64::try_from(total).map_err(|_| ScaleProblem::Overflow)
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    const VALID_RATES: &[(&str, u64)] = &[
        // Bits per second, with and without "/s", any case.
        ("1kbit", 1_000),
        ("1kbit/s", 1_000),
        ("10mbit", 10_000_000),
        ("10Mbit", 10_000_000),
        ("10MBIT/S", 10_000_000),
        ("10mbit/s", 10_000_000),
        ("2gbit", 2_000_000_000),
        ("2Gbit/s", 2_000_000_000),
        // Bytes per second, SI.
        ("1B/s", 8),
        ("1b", 8),
        ("1B", 8),
        ("1KB/s", 8_000),
        ("1kb/s", 8_000),
        ("1KB", 8_000),
        ("3MB/s", 24_000_000),
        ("3mb", 24_000_000),
        ("1GB/s", 8_000_000_000),
        ("1gB/S", 8_000_000_000),
        // Bytes per second, binary.
        ("1KiB/s", 8 * KIB),
        ("1kib", 8 * KIB),
        ("1MiB/s", 8 * MIB),
        ("1MIB", 8 * MIB),
        ("1GiB/s", 8 * GIB),
        ("1gib", 8 * GIB),
        // A bare number is bytes per second.
        ("1000", 8_000),
        ("1", 8),
        // Whitespace.
        ("10 mbit", 10_000_000),
        ("  10mbit  ", 10_000_000),
        ("\t10 \t mbit/s\n", 10_000_000),
        ("10 KiB/s", 80 * KIB),
        (" 1000 ", 8_000),
        // Fractions that come out whole.
        ("1.5mbit", 1_500_000),
        ("0.5B/s", 4),
        ("0.125", 1),
        ("0.001kbit", 1),
        ("1.5KiB/s", 12 * KIB),
        ("0.5gbit", 500_000_000),
        ("2.25MB/s", 18_000_000),
        (
            "1.000000000000000000000000000000000000000000000mbit",
            1_000_000,
        ),
        ("0.000000000116415321826934814453125GiB/s", 1),
        // Leading zeros, and the largest rate.
        ("010mbit", 10_000_000),
        ("2305843009213693951.875B/s", u64::MAX),
        ("18446744073709551.615kbit", u64::MAX),
    ];

    const VALID_SIZES: &[(&str, u64)] = &[
        ("1500", 1_500),
        ("1500B", 1_500),
        ("1500b", 1_500),
        ("1KB", 1_000),
        ("1kb", 1_000),
        ("1KiB", KIB),
        ("1kib", KIB),
        ("1.5KiB", 1_536),
        ("256KiB", 262_144),
        ("2MB", 2_000_000),
        ("1MiB", MIB),
        ("0.5MiB", MIB / 2),
        ("1GB", 1_000_000_000),
        ("1GiB", GIB),
        ("1.5gib", GIB + GIB / 2),
        ("0.1KB", 100),
        ("  64 kib ", 64 * KIB),
        ("18446744073709551615", u64::MAX),
        ("17179869183.999999999068677425384521484375GiB", u64::MAX),
    ];

    /// The variant of an error, for tables.
    fn variant(error: &UnitError) -> &'static str {
        match error {
            UnitError::Empty { .. } => "Empty",
            UnitError::Negative { .. } => "Negative",
            UnitError::Zero { .. } => "Zero",
            UnitError::NotANumber { .. } => "NotANumber",
            UnitError::Fractional { .. } => "Fractional",
            UnitError::Overflow { .. } => "Overflow",
            UnitError::UnknownUnit { .. } => "UnknownUnit",
            UnitError::AmbiguousUnit { .. } => "AmbiguousUnit",
            UnitError::SizePerSecond { .. } => "SizePerSecond",
        }
    }

    const INVALID_RATES: &[(&str, &str)] = &[
        ("", "Empty"),
        ("   ", "Empty"),
        ("-5mbit", "Negative"),
        ("-0.5", "Negative"),
        (" -1", "Negative"),
        ("0", "Zero"),
        ("0kbit", "Zero"),
        ("0.0MiB", "Zero"),
        ("000.000 gbit/s", "Zero"),
        ("fast", "NotANumber"),
        ("mbit", "NotANumber"),
        ("1.2.3mbit", "NotANumber"),
        ("+5", "NotANumber"),
        ("1e6", "NotANumber"),
        ("1E6 mbit", "NotANumber"),
        ("1_000kbit", "NotANumber"),
        ("1,5mbit", "NotANumber"),
        ("10 20mbit", "NotANumber"),
        (".5mbit", "NotANumber"),
        ("5.mbit", "NotANumber"),
        ("0.1B/s", "Fractional"),
        ("0.0001kbit", "Fractional"),
        (
            "1.0000000000000000000000000000000000000000001gbit",
            "Fractional",
        ),
        ("0.1", "Fractional"),
        ("2305843009213693952B/s", "Overflow"),
        ("2305843009213693952", "Overflow"),
        ("18446744073709551.616kbit", "Overflow"),
        (
            "99999999999999999999999999999999999999999999gbit",
            "Overflow",
        ),
        ("10 furlongs", "UnknownUnit"),
        ("10kibit", "UnknownUnit"),
        ("10bit/s", "UnknownUnit"),
        ("10tbit", "UnknownUnit"),
        ("10/s", "UnknownUnit"),
        ("10 m bit", "UnknownUnit"),
        ("10mbps", "AmbiguousUnit"),
        ("10Mbps", "AmbiguousUnit"),
        ("10kbps", "AmbiguousUnit"),
        ("10gbps", "AmbiguousUnit"),
        ("10bps", "AmbiguousUnit"),
        ("10k", "AmbiguousUnit"),
        ("10M", "AmbiguousUnit"),
        ("10g/s", "AmbiguousUnit"),
        ("10kibps", "AmbiguousUnit"),
        ("10Mi", "AmbiguousUnit"),
    ];

    const INVALID_SIZES: &[(&str, &str)] = &[
        ("", "Empty"),
        ("-1KiB", "Negative"),
        ("0", "Zero"),
        ("0B", "Zero"),
        ("big", "NotANumber"),
        ("1.5B", "Fractional"),
        ("1.5", "Fractional"),
        ("0.0001KB", "Fractional"),
        ("18446744073709551616", "Overflow"),
        ("17179869184GiB", "Overflow"),
        ("10MB/s", "SizePerSecond"),
        ("10 KiB/S", "SizePerSecond"),
        ("10/s", "SizePerSecond"),
        ("10kbit", "UnknownUnit"),
        ("10 bytes", "UnknownUnit"),
        ("10k", "AmbiguousUnit"),
        ("10M", "AmbiguousUnit"),
        ("10g", "AmbiguousUnit"),
    ];

    #[test]
    fn valid_rates_parse_to_bits_per_second() {
        for &(text, expected) in VALID_RATES {
            assert_eq!(parse_rate(text), Ok(expected), "parse_rate({text:?})");
        }
    }

    #[test]
    fn valid_sizes_parse_to_bytes() {
        for &(text, expected) in VALID_SIZES {
            assert_eq!(parse_size(text), Ok(expected), "parse_size({text:?})");
        }
    }

    #[test]
    fn invalid_rates_are_rejected_with_the_right_variant() {
        for &(text, expected) in INVALID_RATES {
            match parse_rate(text) {
                Err(error) => assert_eq!(variant(&error), expected, "parse_rate({text:?})"),
                Ok(value) => panic!("parse_rate({text:?}) accepted {value}, expected {expected}"),
            }
        }
    }

    #[test]
    fn invalid_sizes_are_rejected_with_the_right_variant() {
        for &(text, expected) in INVALID_SIZES {
            match parse_size(text) {
                Err(error) => assert_eq!(variant(&error), expected, "parse_size({text:?})"),
                Ok(value) => panic!("parse_size({text:?}) accepted {value}, expected {expected}"),
            }
        }
    }

    #[test]
    fn every_error_quotes_the_input_and_ends_with_the_accepted_forms() {
        let rates = INVALID_RATES.iter().map(|(text, _)| (text, Kind::Rate));
        let sizes = INVALID_SIZES.iter().map(|(text, _)| (text, Kind::Size));
        for (text, kind) in rates.chain(sizes) {
            let error = parse(text, kind).unwrap_err();
            let message = error.to_string();
            assert_eq!(error.kind(), kind, "{message}");
            assert_eq!(error.input(), *text, "{message}");
            assert!(message.contains(&format!("\"{text}\"")), "{message}");
            assert!(message.ends_with(kind.forms()), "{message}");
            assert!(message.starts_with(&kind.to_string()), "{message}");
        }
    }

    #[test]
    fn negative_error_says_negative_values_are_not_allowed() {
        let message = parse_rate("-5mbit").unwrap_err().to_string();
        assert!(
            message.contains("negative values are not allowed"),
            "{message}"
        );
    }

    #[test]
    fn size_with_per_second_says_a_size_has_no_per_second() {
        let message = parse_size("10MB/s").unwrap_err().to_string();
        assert!(message.contains("a size has no \"/s\""), "{message}");
    }

    #[test]
    fn ambiguous_rate_suggests_both_readings_with_the_number_typed() {
        let message = parse_rate("10mbps").unwrap_err().to_string();
        assert!(message.contains("write 10mbit for megabits"), "{message}");
        assert!(
            message.contains("10MB/s for megabytes per second"),
            "{message}"
        );
        let message = parse_rate("1.5k").unwrap_err().to_string();
        assert!(message.contains("write 1.5kbit for kilobits"), "{message}");
        assert!(message.contains("1.5KB/s for kilobytes"), "{message}");
        let message = parse_rate("2gibps").unwrap_err().to_string();
        assert!(message.contains("write 2GiB/s for gibibytes"), "{message}");
        let message = parse_rate("100bps").unwrap_err().to_string();
        assert!(
            message.contains("write 100B/s for bytes per second"),
            "{message}"
        );
    }

    #[test]
    fn ambiguous_size_suggests_si_and_binary() {
        let message = parse_size("64k").unwrap_err().to_string();
        assert!(message.contains("write 64KB for kilobytes"), "{message}");
        assert!(message.contains("64KiB for kibibytes"), "{message}");
    }

    #[test]
    fn every_unit_in_the_tables_is_listed_in_the_accepted_forms_and_parses() {
        for &(name, value) in &RATE_UNITS {
            assert!(RATE_FORMS.contains(name), "{name} missing from RATE_FORMS");
            assert_eq!(parse_rate(&format!("1{name}")), Ok(value));
        }
        for &(name, value) in &SIZE_UNITS {
            assert!(SIZE_FORMS.contains(name), "{name} missing from SIZE_FORMS");
            assert_eq!(parse_size(&format!("1{name}")), Ok(value));
        }
    }

    #[test]
    fn format_rate_prefers_the_largest_exact_unit() {
        let cases: &[(u64, &str)] = &[
            (10_000_000, "10mbit"),
            (1_500_000, "1500kbit"),
            (2_000_000_000, "2gbit"),
            (1_000, "1kbit"),
            (8, "1B/s"),
            (24, "3B/s"),
            (8 * KIB, "1KiB/s"),
            (8 * MIB, "1MiB/s"),
            (8 * GIB, "1GiB/s"),
            (8_000_000_000, "8gbit"),
            (12, "1.5B/s"),
            (4, "0.5B/s"),
            (1, "0.125B/s"),
            (2, "0.25B/s"),
            (u64::MAX, "2305843009213693951.875B/s"),
            (0, "0B/s"),
        ];
        for &(bits, expected) in cases {
            assert_eq!(format_rate(bits), expected, "format_rate({bits})");
        }
    }

    #[test]
    fn format_size_prefers_the_largest_exact_unit_binary_first() {
        let cases: &[(u64, &str)] = &[
            (262_144, "256KiB"),
            (1_500, "1500B"),
            (2_000_000, "2MB"),
            (1_024_000, "1000KiB"),
            (1_024_000_000, "1024MB"),
            (GIB, "1GiB"),
            (3_000_000_000, "3GB"),
            (1, "1B"),
            (u64::MAX, "18446744073709551615B"),
            (0, "0B"),
        ];
        for &(bytes, expected) in cases {
            assert_eq!(format_size(bytes), expected, "format_size({bytes})");
        }
    }

    /// Small values, values around every unit, and pseudo-random values of every magnitude.
    fn round_trip_values() -> impl Iterator<Item = u64> {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let random = std::iter::repeat_with(move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        })
        .take(20_000)
        .flat_map(|r| {
            [
                r,
                r >> (r % 64),
                (r >> (r % 64)).wrapping_mul(1000),
                (r >> 40) << 30,
            ]
        });
        let units = RATE_UNITS
            .iter()
            .map(|&(_, v)| v)
            .chain(SIZE_UNITS.iter().map(|&(_, v)| v))
            .flat_map(|v| (1..=1025).map(move |k| v.saturating_mul(k)))
            .flat_map(|v| [v - 1, v, v.saturating_add(1)]);
        (1..=10_000)
            .chain([u64::MAX, u64::MAX - 1, u64::MAX / 8, u64::MAX / 1000 * 1000])
            .chain(units)
            .chain(random)
            .filter(|&v| v != 0)
    }

    #[test]
    fn format_rate_round_trips_through_parse_rate() {
        for bits in round_trip_values() {
            let text = format_rate(bits);
            assert_eq!(
                parse_rate(&text),
                Ok(bits),
                "format_rate({bits}) = {text:?}"
            );
        }
    }

    #[test]
    fn format_size_round_trips_through_parse_size() {
        for bytes in round_trip_values() {
            let text = format_size(bytes);
            assert_eq!(
                parse_size(&text),
                Ok(bytes),
                "format_size({bytes}) = {text:?}"
            );
        }
    }
}
