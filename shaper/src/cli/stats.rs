//! `shaper stats`: the daemon's current counters, as a table or as JSON.

use std::path::Path;

use anyhow::bail;
use clap::Args;
use shaper::control::{self, Request, Response};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON (schema in the docs' reference/json.md) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn stats(args: StatsArgs, socket: &Path) -> anyhow::Result<()> {
    let snapshot = match control::request(socket, &Request::Stats)? {
        Response::Stats(snapshot) => snapshot,
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print!("{}", snapshot.to_table());
    }
    Ok(())
}
