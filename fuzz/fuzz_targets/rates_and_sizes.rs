//! Rates and sizes as operators write them (`--rate`, `--burst`, the config file). Every text is
//! either a nonzero value whose formatted form parses back to it, the same in any letter case and
//! whitespace around it, or a `UnitError` that quotes the text and ends with the accepted forms.
//! The first 8 bytes, as a number, must format to a text that parses back to it.

#![no_main]

use std::mem::discriminant;

use libfuzzer_sys::fuzz_target;
use shaper::policy::rates_and_sizes::{
    Kind, UnitError, format_rate, format_size, parse_rate, parse_size,
};

type Parse = fn(&str) -> Result<u64, UnitError>;
type Format = fn(u64) -> String;

const KINDS: [(Kind, Parse, Format); 2] = [
    (Kind::Rate, parse_rate, format_rate),
    (Kind::Size, parse_size, format_size),
];

fuzz_target!(|data: &[u8]| {
    if let Some(&bytes) = data.first_chunk::<8>() {
        let value = u64::from_le_bytes(bytes);
        for (_, parse, format) in KINDS {
            let text = format(value);
            if value == 0 {
                assert!(
                    parse(&text).is_err(),
                    "{text:?} parsed, but zero is refused"
                );
            } else {
                assert_eq!(parse(&text), Ok(value), "{value} formatted as {text:?}");
            }
        }
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (kind, parse, format) in KINDS {
        let parsed = parse(text);
        let relaxed = [
            text.to_ascii_uppercase(),
            text.to_ascii_lowercase(),
            format!(" {text}\t"),
        ];
        match &parsed {
            Ok(value) => {
                assert_ne!(*value, 0, "{kind} {text:?} parsed to zero");
                let shown = format(*value);
                assert_eq!(
                    parse(&shown),
                    Ok(*value),
                    "{kind} {text:?} shown as {shown:?}"
                );
                for other in &relaxed {
                    assert_eq!(parse(other), Ok(*value), "{kind} {text:?} vs {other:?}");
                }
            }
            Err(error) => {
                let message = error.to_string();
                assert_eq!(error.kind(), kind, "{message}");
                assert_eq!(error.input(), text, "{message}");
                assert!(message.starts_with(&format!("{kind} ")), "{message}");
                assert!(message.contains(&format!("\"{text}\"")), "{message}");
                assert!(message.ends_with(kind.forms()), "{message}");
                for other in &relaxed {
                    match parse(other) {
                        Err(again) => assert_eq!(
                            discriminant(&again),
                            discriminant(error),
                            "{kind} {text:?}: {error:?}, but {other:?}: {again:?}"
                        ),
                        Ok(value) => panic!("{kind} {text:?} refused, but {other:?} is {value}"),
                    }
                }
            }
        }
    }
});
