//! `shaper-docs OUT_DIR`: the man pages and shell completions of `shaper`, made from the same
//! clap command the binary parses (its `cli` module, compiled in here too), so they cannot
//! drift from the real options. `cargo xtask dist` runs it; the packages ship what it writes:
//!
//! - `man8/shaper.8`, `man8/shaper-run.8`, `man8/shaper-limit-set.8`, ...: one page per command
//!   and subcommand, section 8 (system administration: the binary lives in `/usr/sbin`);
//! - `completions/shaper.bash`, `completions/_shaper` (zsh), `completions/shaper.fish`.
//!
//! `shaper-docs --markdown` prints the book's command reference instead
//! (`docs/src/reference/commands.md`, which `cargo xtask docs` rewrites and
//! `shaper/tests/docs.rs` holds equal to this output): every command and subcommand with its
//! usage, its help and each argument's help, default, possible values and environment variable.

#[path = "../cli/mod.rs"]
#[expect(
    dead_code,
    reason = "only the command's definition is used here, not the code that runs it"
)]
mod cli;

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .context("usage: shaper-docs OUT_DIR | shaper-docs --markdown")?;
    let mut command = cli::Cli::command().name("shaper");
    // Built, every subcommand knows its full name (`shaper-limit-set`) for its page.
    command.build();
    if out == "--markdown" {
        print!("{}", markdown(&command));
        return Ok(());
    }
    let out = Path::new(&out);

    let man = out.join("man8");
    fs::create_dir_all(&man)?;
    write_pages(&command, &man)?;

    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = command.clone();
        clap_complete::generate_to(shell, &mut command, "shaper", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    Ok(())
}

/// The page of `command`, then those of its subcommands (recursively), skipping `help`.
fn write_pages(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section("8")
        .source(concat!("shaper ", env!("CARGO_PKG_VERSION")))
        .manual("System Administration")
        .render(&mut page)?;
    fs::write(dir.join(format!("{name}.8")), page).with_context(|| format!("{name}.8"))?;
    for sub in command.get_subcommands() {
        if sub.get_name() != "help" && !sub.is_hide_set() {
            write_pages(sub, dir)?;
        }
    }
    Ok(())
}

/// The command reference in Markdown: a section per command, depth first, `help` and hidden
/// commands left out (as for the man pages).
fn markdown(command: &clap::Command) -> String {
    let mut text = String::from(
        "# Commands\n\n\
         <!-- Generated from the CLI's definition (shaper/src/cli/) by `cargo xtask docs`; \
         do not edit. -->\n\n\
         Every command of `shaper` with every option, as `--help` and the man pages show \
         them. What the options do in depth is in the operator guide; see also the \
         [command notes](command-notes.md).\n",
    );
    markdown_command(command, true, &mut text);
    text
}

fn markdown_command(command: &clap::Command, root: bool, text: &mut String) {
    let name = command.get_bin_name().unwrap_or_else(|| command.get_name());
    let _ = write!(text, "\n## `{name}`\n\n");
    if let Some(about) = command.get_long_about().or_else(|| command.get_about()) {
        let _ = write!(text, "{}\n\n", prose(&about.to_string()));
    }
    let usage = command.clone().render_usage().to_string();
    let _ = write!(text, "```text\n{}\n```\n", usage.trim_end());

    let (positionals, options): (Vec<&clap::Arg>, Vec<&clap::Arg>) = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && arg.get_id() != "help")
        // A global option is listed once, under `shaper`, not again under each subcommand.
        .filter(|arg| root || !arg.is_global_set())
        .partition(|arg| arg.is_positional());
    for (title, args) in [("Arguments", positionals), ("Options", options)] {
        if args.is_empty() {
            continue;
        }
        let _ = write!(text, "\n{title}:\n\n");
        for arg in args {
            markdown_arg(arg, text);
        }
    }

    let subcommands: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|sub| sub.get_name() != "help" && !sub.is_hide_set())
        .collect();
    if !subcommands.is_empty() {
        text.push_str("\nCommands:\n\n");
        for sub in &subcommands {
            let sub_name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
            let about = sub.get_about().map(|a| prose(&a.to_string()));
            let _ = writeln!(
                text,
                "- [`{}`](#{}): {}",
                sub.get_name(),
                sub_name.replace(' ', "-"),
                about.unwrap_or_default()
            );
        }
        for sub in subcommands {
            markdown_command(sub, false, text);
        }
    }
}

/// One argument as a list item: how it is written, its help, then what clap knows of its values.
fn markdown_arg(arg: &clap::Arg, text: &mut String) {
    let takes_value = arg.get_action().takes_values();
    let value = arg
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", arg.get_id().as_str().to_uppercase()));
    let mut form = Vec::new();
    if let Some(short) = arg.get_short() {
        form.push(format!("-{short}"));
    }
    if let Some(long) = arg.get_long() {
        form.push(format!("--{long}"));
    }
    let mut spelled = form.join(", ");
    if takes_value {
        if !spelled.is_empty() {
            spelled.push(' ');
        }
        spelled.push_str(&value);
        let many = matches!(arg.get_action(), clap::ArgAction::Append)
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        if many {
            spelled.push_str("...");
        }
    }
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| prose(&h.to_string()))
        .unwrap_or_default();
    let _ = write!(text, "- `{spelled}`");
    if !help.is_empty() {
        let _ = write!(text, ": {}", indent(&help));
        // clap drops a help's final period; the facts below are sentences of their own.
        if !help.ends_with(['.', ')', '`']) {
            text.push('.');
        }
    }
    let mut facts = Vec::new();
    if arg.is_required_set() {
        facts.push("Required.".to_owned());
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .collect();
    if takes_value && !defaults.is_empty() {
        facts.push(format!("Default: {}.", defaults.join(", ")));
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| match v.get_help() {
            Some(help) => format!("`{}` ({})", v.get_name(), prose(&help.to_string())),
            None => format!("`{}`", v.get_name()),
        })
        .collect();
    if takes_value && !possible.is_empty() {
        facts.push(format!("Possible values: {}.", possible.join(", ")));
    }
    if let Some(env) = arg.get_env() {
        facts.push(format!("Environment: `{}`.", env.to_string_lossy()));
    }
    if arg.is_global_set() {
        facts.push("Global: every subcommand takes it.".to_owned());
    }
    if !facts.is_empty() {
        let _ = write!(text, "\n  {}", facts.join(" "));
    }
    text.push('\n');
}

/// Help text as Markdown prose: a `<` would open an HTML tag, so it is escaped.
fn prose(help: &str) -> String {
    help.trim().replace('<', "&lt;")
}

/// Continuation lines of a list item, indented under it; blank lines stay blank.
fn indent(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                String::new()
            } else {
                format!("  {line}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim_start()
        .to_owned()
}
