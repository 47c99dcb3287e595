//! `shaper exposure`: the daemon's exposure report, as a table or as JSON.

use std::path::Path;

use anyhow::bail;
use clap::Args;
use shaper::control::{self, Request, Response};

#[derive(Debug, Args)]
pub struct ExposureArgs {
    /// Print JSON (schema in the docs' reference/json.md) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn exposure(args: ExposureArgs, socket: &Path) -> anyhow::Result<()> {
    let report = match control::request(socket, &Request::Exposure)? {
        Response::Exposure(report) => report,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
