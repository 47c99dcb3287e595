//! `shaper watch` and `shaper unwatch`: per-remote accounting of ports, through the daemon.

use std::path::Path;

use anyhow::bail;
use clap::Args;
use shaper::{
    control::{self, Request, Response},
    datapath::watched_ports::WatchSpec,
    policy::rule_table::{DirSel, PortRange},
};

use super::keyword::keyword;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// A local port or an inclusive range LO-HI; left out, the watches are listed.
    ports: Option<PortRange>,
    /// Directions to watch.
    #[arg(long, value_parser = keyword::<DirSel>(), default_value_t = DirSel::Both)]
    dir: DirSel,
    /// One attached interface; default all of them.
    #[arg(long)]
    iface: Option<String>,
}

pub fn watch(args: WatchArgs, socket: &Path) -> anyhow::Result<()> {
    let request = match args.ports {
        Some(ports) => Request::Watch {
            watch: WatchSpec {
                ports,
                dir: args.dir,
                iface: args.iface,
            },
        },
        None => Request::WatchLs,
    };
    print_watches(control::request(socket, &request)?)
}

#[derive(Debug, Args)]
pub struct UnwatchArgs {
    /// The port or range of the watch, as it was given.
    ports: PortRange,
    #[arg(long, value_parser = keyword::<DirSel>(), default_value_t = DirSel::Both)]
    dir: DirSel,
    #[arg(long)]
    iface: Option<String>,
}

pub fn unwatch(args: UnwatchArgs, socket: &Path) -> anyhow::Result<()> {
    let watch = WatchSpec {
        ports: args.ports,
        dir: args.dir,
        iface: args.iface,
    };
    print_watches(control::request(socket, &Request::Unwatch { watch })?)
}

fn print_watches(response: Response) -> anyhow::Result<()> {
    let Response::Watches { watches } = response else {
        bail!("unexpected reply from the daemon: {response:?}");
    };
    if watches.is_empty() {
        println!("no ports watched");
    }
    for watch in watches {
        println!("{watch}");
    }
    Ok(())
}
