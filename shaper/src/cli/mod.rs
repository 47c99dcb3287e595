//! Command-line interface: one module per subcommand.

mod datapath;
mod exposure;
mod keyword;
mod limit;
mod log_level;
mod run;
mod stats;
mod top;
mod top_port;
mod trace;
mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use shaper::control::DEFAULT_SOCKET;

/// eBPF per-port traffic shaper and observer for Linux tc hooks.
#[derive(Debug, Parser)]
#[command(version = shaper::build_info::VERSION, about, long_about = None)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "SHAPER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the classifier (adopting a pinned datapath), attach it to interfaces and serve the
    /// control socket until SIGINT/SIGTERM, then detach and unpin (or, with --persist, leave
    /// the datapath running for the next daemon).
    Run(run::RunArgs),
    /// Print the per-port counters of the running daemon.
    Stats(stats::StatsArgs),
    /// Set, remove or list the running daemon's per-port limits.
    #[command(subcommand)]
    Limit(limit::LimitCommand),
    /// Live per-port rates, drops and limits of the running daemon (q quits).
    Top(top::TopArgs),
    /// What is pinned and attached in this network namespace, and whether a daemon runs it.
    Status(datapath::StatusArgs),
    /// Every listening port with its process, bind scope and the connections it accepted;
    /// probed closed ports. Surprising lines first.
    Exposure(exposure::ExposureArgs),
    /// Detach and unpin the datapath a stopped daemon left (after `run --persist`, or a
    /// crash), and remove any clsact qdisc shaper added. Refused while a daemon runs.
    Down(datapath::DownArgs),
    /// Account a local port (or range) per remote address, for `top --port`; without a port,
    /// list the watches.
    Watch(watch::WatchArgs),
    /// Stop a watch given to `shaper watch`.
    Unwatch(watch::UnwatchArgs),
    /// One line per packet of the traced ports, as the hook sees it, until Ctrl-C or --count.
    Trace(trace::TraceArgs),
    /// Set the level of the program's own log lines (off, error, warn, info, debug, trace),
    /// which the daemon writes to its log.
    LogLevel(log_level::LogLevelArgs),
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::run(args, &self.socket),
            Command::Stats(args) => stats::stats(args, &self.socket),
            Command::Limit(command) => limit::limit(command, &self.socket),
            Command::Top(args) => top::top(args, &self.socket),
            Command::Status(args) => datapath::status(args),
            Command::Exposure(args) => exposure::exposure(args, &self.socket),
            Command::Down(args) => datapath::down(args),
            Command::Watch(args) => watch::watch(args, &self.socket),
            Command::Unwatch(args) => watch::unwatch(args, &self.socket),
            Command::Trace(args) => trace::trace(args, &self.socket),
            Command::LogLevel(args) => log_level::log_level(args, &self.socket),
        }
    }
}
