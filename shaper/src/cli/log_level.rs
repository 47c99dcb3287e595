//! `shaper log-level LEVEL`: the level of the program's aya-log lines, through the daemon.

use std::path::Path;

use anyhow::bail;
use clap::Args;
use shaper::control::{self, Request, Response};

#[derive(Debug, Args)]
pub struct LogLevelArgs {
    /// off, error, warn, info, debug or trace.
    level: String,
}

pub fn log_level(args: LogLevelArgs, socket: &Path) -> anyhow::Result<()> {
    match control::request(socket, &Request::LogLevel { level: args.level })? {
        Response::LogLevel { level } => println!("program log level: {level}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
    Ok(())
}
