//! Command-line interface: one module per subcommand.

mod limit;
mod run;
mod stats;
mod top;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use shaper::control::DEFAULT_SOCKET;

/// eBPF per-port traffic shaper and observer for Linux tc hooks.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "SHAPER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the classifier, attach it to interfaces and serve the control socket until
    /// SIGINT/SIGTERM, then detach.
    Run(run::RunArgs),
    /// Print the per-port counters of the running daemon.
    Stats(stats::StatsArgs),
    /// Set, remove or list the running daemon's per-port limits.
    #[command(subcommand)]
    Limit(limit::LimitCommand),
    /// Live per-port rates, drops and limits of the running daemon (q quits).
    Top(top::TopArgs),
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::run(args, &self.socket),
            Command::Stats(args) => stats::stats(args, &self.socket),
            Command::Limit(command) => limit::limit(command, &self.socket),
            Command::Top(args) => top::top(args, &self.socket),
        }
    }
}
