//! `shaper status` and `shaper down`: the pinned datapath of this network namespace, with or
//! without a daemon.

use std::path::PathBuf;

use clap::Args;
use shaper::datapath::{
    pinned_datapath::{self, Status},
    pins::{self, PinDir},
};

#[derive(Debug, Args)]
pub struct PinArgs {
    /// The base directory the daemon pins under (`shaper run --pin-dir`).
    #[arg(long, value_name = "DIR", env = "SHAPER_PIN_DIR", default_value = pins::DEFAULT_BASE)]
    pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pins: PinArgs,
    /// Print JSON (schema in the docs' reference/json.md) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pins: PinArgs,
    /// Only this interface (repeat for several); the maps stay. Default: everything.
    #[arg(long = "iface", value_name = "IFACE")]
    ifaces: Vec<String>,
    /// Print what was removed as JSON.
    #[arg(long)]
    json: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let pins = PinDir::for_current_netns(&args.pins.pin_dir)?;
    let status = pinned_datapath::status(&pins)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status_text(&status));
    }
    Ok(())
}

fn status_text(status: &Status) -> String {
    let mut out = String::new();
    if !status.pinned {
        out.push_str(&format!(
            "nothing pinned at {} (no datapath in this network namespace)\n",
            status.pin_dir
        ));
        return out;
    }
    let daemon = status
        .daemon_pid
        .as_ref()
        .map_or_else(|| "no daemon".to_owned(), |pid| format!("daemon pid {pid}"));
    out.push_str(&format!(
        "datapath pinned at {} ({daemon})\n",
        status.pin_dir
    ));
    for iface in &status.interfaces {
        let mode = iface.mode.as_deref().unwrap_or("nothing attached");
        let gone = if iface.exists {
            ""
        } else {
            " (interface gone)"
        };
        out.push_str(&format!("{}: {mode}{gone}\n", iface.name));
        for hook in &iface.hooks {
            match (hook.program_id, &hook.program_tag) {
                (Some(id), tag) => {
                    let since = hook.loaded_at_unix.map_or_else(String::new, |at| {
                        format!(", loaded {} s ago", pinned_datapath::age_seconds(at))
                    });
                    let tag = tag.as_deref().unwrap_or("?");
                    out.push_str(&format!(
                        "  {:<7}  program {id} tag {tag}{since}\n",
                        hook.direction.name()
                    ));
                }
                (None, _) => out.push_str(&format!(
                    "  {:<7}  no shaper program attached\n",
                    hook.direction.name()
                )),
            }
        }
    }
    out
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let pins = PinDir::for_current_netns(&args.pins.pin_dir)?;
    let down = pinned_datapath::down(&pins, &args.ifaces)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&down)?);
        return Ok(());
    }
    if down.interfaces.is_empty() && !down.removed_maps {
        println!("nothing pinned at {}: nothing to remove", down.pin_dir);
        return Ok(());
    }
    for iface in &down.interfaces {
        let detached = if iface.detached.is_empty() {
            "nothing attached".to_owned()
        } else {
            format!("detached {}", iface.detached.join(", "))
        };
        let qdisc = if iface.removed_qdisc {
            ", removed the clsact qdisc shaper added"
        } else {
            ""
        };
        println!("{}: {detached}{qdisc}", iface.iface);
    }
    if down.removed_maps {
        println!("removed the pinned maps and {}", down.pin_dir);
    }
    Ok(())
}
