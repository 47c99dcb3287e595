//! The library's keyword enums (`--dir`, `--proto`, `--action`, `--verdict`, `--attach`) as
//! clap arguments. The library knows nothing of clap: each type lists its words and their help
//! ([`Keyword`]), and this parser shows them as the argument's possible values (in `--help`, the
//! man pages and the completions) and parses with the type's own `FromStr`.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use shaper::types::keywords::Keyword;

/// The value parser of an argument taking `T`'s words.
pub fn keyword<T: Keyword>() -> impl TypedValueParser<Value = T> {
    let values = T::WORDS.iter().zip(T::HELP).map(|(word, help)| {
        let value = PossibleValue::new(*word);
        // As clap's derive shows a one-sentence doc comment: without its final period.
        let help = help.trim();
        match help.strip_suffix('.').unwrap_or(help) {
            "" => value,
            help => value.help(help),
        }
    });
    PossibleValuesParser::new(values).try_map(|word| word.parse::<T>())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use shaper::types::keywords::{Action, DirSel};

    use super::*;

    #[derive(Debug, Parser)]
    struct Args {
        #[arg(long, value_parser = keyword::<DirSel>(), default_value_t = DirSel::Both)]
        dir: DirSel,
        #[arg(long, value_parser = keyword::<Action>())]
        action: Option<Action>,
    }

    #[test]
    fn words_parse_defaults_apply_and_others_are_refused_with_the_list() {
        let args = Args::try_parse_from(["t", "--action", "observe"]).unwrap();
        assert_eq!(
            (args.dir, args.action),
            (DirSel::Both, Some(Action::Observe))
        );
        let args = Args::try_parse_from(["t", "--dir", "egress"]).unwrap();
        assert_eq!(args.dir, DirSel::Egress);
        let err = Args::try_parse_from(["t", "--dir", "up"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[possible values: both, ingress, egress]"),
            "{err}"
        );
    }

    #[test]
    fn each_word_carries_its_doc_comment_as_help() {
        let help = Args::command_for_help();
        assert!(
            help.contains("drop:") && help.contains("Drop packets the bucket has no tokens for"),
            "{help}"
        );
    }

    impl Args {
        fn command_for_help() -> String {
            use clap::CommandFactory as _;
            Self::command().render_long_help().to_string()
        }
    }
}
