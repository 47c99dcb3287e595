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
            eprintln!("shaper: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by ": ". Library errors already end with their source's
/// text (so the message alone reads well in a log); a cause that the message before it already
/// ends with is not repeated.
fn message(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.ends_with(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}
