//! `shaper-docs OUT_DIR`: the man pages and shell completions of `shaper`, made from the same
//! clap command the binary parses (its `cli` module, compiled in here too), so they cannot
//! drift from the real options. `cargo xtask dist` runs it; the packages ship what it writes:
//!
//! - `man8/shaper.8`, `man8/shaper-run.8`, `man8/shaper-limit-set.8`, ...: one page per command
//!   and subcommand, section 8 (system administration: the binary lives in `/usr/sbin`);
//! - `completions/shaper.bash`, `completions/_shaper` (zsh), `completions/shaper.fish`.

#[path = "../cli/mod.rs"]
#[expect(
    dead_code,
    reason = "only the command's definition is used here, not the code that runs it"
)]
mod cli;

use std::{fs, path::Path};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .context("usage: shaper-docs OUT_DIR")?;
    let out = Path::new(&out);
    let mut command = cli::Cli::command().name("shaper");
    // Built, every subcommand knows its full name (`shaper-limit-set`) for its page.
    command.build();

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
