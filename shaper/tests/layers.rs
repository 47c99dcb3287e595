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
//! utilities every layer may use, `error` composes the layers' errors (for now every layer
//! still returns it: the next step gives each layer errors of its own), `fuzz` exposes parsers
//! to the fuzz targets.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
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

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn rank_of_module(module: &str) -> Option<usize> {
    rank(module)
}

/// The first path segment after every `crate::` in `text`, outside comments and string
/// literals: `use crate::{a::x, b::{y, z}}` names `a` and `b`.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let code = strip_comments_and_strings(text);
    let mut modules = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` in a macro, or an identifier ending in `crate`.
        if before.is_some_and(|c| c == '$' || c.is_alphanumeric() || c == '_') {
            continue;
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            // Top-level segments of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut segment = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        modules.extend(first_segment(&segment));
                        segment.clear();
                        continue;
                    }
                    _ => {}
                }
                segment.push(c);
            }
            modules.extend(first_segment(&segment));
        } else {
            modules.extend(first_segment(trimmed));
        }
    }
    modules
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
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
