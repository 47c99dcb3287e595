//! The `shaper` command: the daemon (`run`) and the clients that talk to it.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shaper: {}", shaper::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
