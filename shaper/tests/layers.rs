//! The library's layers import only downwards (issue 24): each module under `shaper/src/LAYER/`
//! may use its own layer and the ones below it, never one above. Bottom to top:
//!
//! ```text
//! cli        the command line (binary only)
//! daemon     start-up order, request handling, what the daemon claims
//! control    the control socket's protocol and both its ends
//! telemetry  snapshots, metrics, views built from what the datapath returns
//! policy     rules, config and state files: the operator's wishes
//! datapath   the kernel: load, pin, attach, maps, and the locks that claim them
//! types      plain types every layer speaks: port ranges, keyword enums, the metrics address
//! ```
//!
//! Modules at the crate root sit beside the layers: `private_files` and `build_info` are plain
//! utilities every layer may use, `fuzz` exposes parsers to the fuzz targets, and `error`
//! composes the layers' errors. Each layer returns errors of its own (`DatapathError`,
//! `PolicyError`, `TelemetryError`, `ControlError`, `DaemonError`), a higher one wrapping the
//! lower ones it meets; `error::Error`, all of them, is for the daemon, the CLI and what spans
//! layers. So below the daemon a layer names nothing of `error` but `chain`, the printer
//! (checked here too).

use std::{
    collections::BTreeSet,
    iter::Peekable,
    path::{Path, PathBuf},
    str::Chars,
};

const LAYERS: [&str; 7] = [
    "types",
    "datapath",
    "policy",
    "telemetry",
    "control",
    "daemon",
    "cli",
];

#[test]
fn no_import_runs_up_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeSet::new();
    for layer in LAYERS {
        for file in rust_files(&src.join(layer)) {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            let rank = rank(layer).expect("a layer");
            for used in crate_modules(&text) {
                if rank_of_module(&used).is_some_and(|used_rank| used_rank > rank) {
                    let relative = file
                        .strip_prefix(&src)
                        .expect("below src")
                        .to_string_lossy()
                        .into_owned();
                    found.insert((relative, used));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "imports that run up a layer (bottom to top: {}): {found:?}",
        LAYERS.join(" < ")
    );
}

/// The top error (`error::Error`, re-exported as `crate::Error`) composes every layer's, so a
/// layer below the daemon that returned it would hide from its callers which errors it can
/// give, and could not be tested or matched on without the layers above it. Only `chain`, the
/// printer, is theirs to use.
#[test]
fn below_the_daemon_no_layer_names_the_top_error() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let daemon = rank("daemon").expect("a layer");
    let mut found = BTreeSet::new();
    for layer in LAYERS
        .into_iter()
        .filter(|l| rank(l).is_some_and(|r| r < daemon))
    {
        for file in rust_files(&src.join(layer)) {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            for path in crate_paths(&text) {
                if names_the_top_error(&path) {
                    let relative = file
                        .strip_prefix(&src)
                        .expect("below src")
                        .to_string_lossy()
                        .into_owned();
                    found.insert((relative, path));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "layers below the daemon that name the top error (theirs are their own): {found:?}"
    );
}

/// `path` (after `crate::`) names the top error, its `Result`, or the module but its `chain`.
fn names_the_top_error(path: &str) -> bool {
    matches!(path, "Error" | "Result" | "error")
        || path.starts_with("error::") && path != "error::chain"
}

/// The command line is the binary's: the library's types carry no clap derive or import (the
/// binary's `cli/keyword.rs` turns the library's keyword lists into clap's possible values).
#[test]
fn the_library_knows_nothing_of_clap() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("below src");
        if relative.starts_with("cli")
            || relative.starts_with("bin")
            || relative == Path::new("main.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        if strip_comments_and_strings(&text).contains("clap") {
            found.push(relative.to_owned());
        }
    }
    assert!(found.is_empty(), "library files that use clap: {found:?}");
}

/// The checker itself, on text whose answer is known.
#[test]
fn the_checker_sees_grouped_nested_and_inline_paths() {
    let text = "use crate::{\n    datapath::{classifier::Classifier, pins},\n    policy::rule_table::Rule,\n};\n\
                use crate::error::Result;\n\
                fn f() { crate::telemetry::exposure::gather(); let s = \"crate::cli\"; }\n\
                // crate::daemon in a comment\n";
    assert_eq!(
        crate_modules(text),
        BTreeSet::from(["datapath", "error", "policy", "telemetry"].map(str::to_owned))
    );
}

/// The expansion under both checks, on text whose answer is known.
#[test]
fn the_checker_expands_groups_and_renames() {
    let text = "use crate::{\n    datapath::{DatapathError, Result},\n    error::{chain, Error as E},\n};\n\
                fn f() -> crate::Result<()> { crate::error::Error::Poisoned {} }\n";
    let paths = crate_paths(text);
    assert_eq!(
        paths,
        BTreeSet::from(
            [
                "Result",
                "datapath::DatapathError",
                "datapath::Result",
                "error::Error",
                "error::Error::Poisoned",
                "error::chain",
            ]
            .map(str::to_owned)
        )
    );
    let top: Vec<_> = paths.iter().filter(|p| names_the_top_error(p)).collect();
    assert_eq!(top, ["Result", "error::Error", "error::Error::Poisoned"]);
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn rank_of_module(module: &str) -> Option<usize> {
    rank(module)
}

/// The first path segment after every `crate::` in `text`, outside comments and string
/// literals: `use crate::{a::x, b::{y, z}}` names `a` and `b`.
fn crate_modules(text: &str) -> BTreeSet<String> {
    crate_paths(text)
        .iter()
        .filter_map(|path| path.split("::").next())
        .filter(|first| *first != "self")
        .map(str::to_owned)
        .collect()
}

/// Every path after a `crate::` in `text`, outside comments and string literals, with its
/// groups expanded: `use crate::{a::x, b::{y, z}}` names `a::x`, `b::y` and `b::z`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code = strip_comments_and_strings(text);
    let mut paths = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` in a macro, or an identifier ending in `crate`.
        if before.is_some_and(|c| c == '$' || c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand(&mut rest.chars().peekable(), String::new(), &mut paths);
    }
    paths
}

/// Reads one use tree (`a::b`, or `a::{b, c::{d, e}}`) or inline path from `chars`, adding
/// each path it names, after `prefix`, to `paths`.
fn expand(chars: &mut Peekable<Chars>, prefix: String, paths: &mut BTreeSet<String>) {
    skip_whitespace(chars);
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            expand(chars, prefix.clone(), paths);
            // Past an `as` rename, to the `,` or `}` that ends this tree.
            loop {
                match chars.next() {
                    Some(',') => break,
                    Some('}') | None => return,
                    Some(_) => {}
                }
            }
        }
    }
    let mut name = String::new();
    while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
        name.push(c);
        chars.next();
    }
    if name.is_empty() {
        return;
    }
    skip_whitespace(chars);
    let mut ahead = chars.clone();
    if ahead.next() == Some(':') && ahead.next() == Some(':') {
        *chars = ahead;
        expand(chars, format!("{prefix}{name}::"), paths);
    } else {
        paths.insert(format!("{prefix}{name}"));
    }
}

fn skip_whitespace(chars: &mut Peekable<Chars>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

/// `text` with `//` comments, `/* */` comments and string literals blanked, so a path written
/// in a doc comment or a message is not an import.
fn strip_comments_and_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}
