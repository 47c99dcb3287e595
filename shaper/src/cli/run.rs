//! `shaper run`: the daemon (`shaper::daemon`), started from the command line.

use std::path::{Path, PathBuf};

use clap::Args;
use shaper::{
    daemon::{Daemon, Flags},
    datapath::{attach::AttachChoice, pins},
    policy::state_file::DEFAULT_STATE_FILE,
    telemetry::metrics::{self, MetricsAddr},
};

use super::keyword::keyword;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to (ingress and egress); repeat for several. Default: the config
    /// file's `interfaces`, else the interface of the default route.
    #[arg(long = "iface", value_name = "IFACE")]
    ifaces: Vec<String>,

    /// How to attach: tcx links (Linux >= 6.6), legacy clsact filters, or auto (tcx where the
    /// kernel has it). Default: the config file's `attach`, else auto.
    #[arg(long, value_parser = keyword::<AttachChoice>())]
    attach: Option<AttachChoice>,

    /// TOML file with the interfaces and the limit rules to start with (see shaper.toml). Its
    /// rules are reloaded on SIGHUP and when the file changes.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where the rules in force are saved, so a restarted daemon resumes them.
    #[arg(long, value_name = "FILE", env = "SHAPER_STATE", default_value = DEFAULT_STATE_FILE)]
    state: PathBuf,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, or `off`. Default: the config
    /// file's `metrics_addr`, else 127.0.0.1:19350 (loopback only; use 0.0.0.0:19350 or
    /// [::]:19350 for a Prometheus on another host).
    #[arg(long, value_name = "ADDR:PORT|off")]
    metrics_addr: Option<MetricsAddr>,

    /// Ports, beyond those named by a single-port rule or listened on, that get their own
    /// metrics series: the busiest by bytes. The rest are summed under port="other". Default:
    /// the config file's `metrics_top_ports`, else 100.
    #[arg(long, value_name = "N")]
    metrics_top_ports: Option<usize>,

    /// Remotes of watched ports (`shaper watch`) that get a `shaper_remote_bytes_total` series:
    /// the N busiest by bytes. 0 (the default) exports no per-remote series at all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    metrics_top_remotes: usize,

    /// Connections the metrics endpoint keeps open at once. Each serves one request, must send
    /// it within 5 s and is closed after 30 s; at the cap, the oldest connection that has sent
    /// no request is closed for the new one, so probes get through idle clients.
    #[arg(long, value_name = "N", default_value_t = metrics::DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    metrics_max_connections: usize,

    /// The level of the program's own log lines (its rare paths, through aya-log): off, error,
    /// warn, info, debug or trace. `shaper log-level` changes it while the daemon runs.
    #[arg(long, value_name = "LEVEL", default_value = "off", value_parser = parse_bpf_log)]
    bpf_log: u32,

    /// On SIGTERM/SIGINT, leave the programs attached and the maps pinned, so shaping and
    /// counting go on and the next daemon takes over where this one stopped (what a service
    /// wants across restarts and upgrades). Without it, stopping detaches and unpins
    /// everything. Default: the config file's `persist`, else off.
    #[arg(long)]
    persist: bool,

    /// Let the members of GROUP (a name or a gid) use the control socket, as root may: the
    /// socket gets mode 0660 and that group. Without it the socket is root-only (0600).
    /// Default: the config file's `socket_group`.
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    socket_group: Option<String>,

    /// Do not name the processes that own listening sockets (`shaper stats`, `exposure`,
    /// `shaper_port_listening` show process "unknown"); the daemon then drops CAP_SYS_PTRACE
    /// and CAP_DAC_READ_SEARCH after attaching and keeps CAP_NET_ADMIN alone. Default: the
    /// config file's `owner_names`, else names on.
    #[arg(long)]
    no_owner_names: bool,

    /// Where the datapath is pinned, in a directory per network namespace below it (on bpffs;
    /// under /sys/fs/bpf it is mounted if missing).
    #[arg(long, value_name = "DIR", env = "SHAPER_PIN_DIR", default_value = pins::DEFAULT_BASE)]
    pin_dir: PathBuf,
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=65_536) => Ok(n),
        _ => Err("a number of connections from 1 to 65536".into()),
    }
}

fn parse_group(text: &str) -> Result<String, String> {
    if text.parse::<u32>().is_ok() || shaper::policy::config_file::is_group_name(text) {
        Ok(text.to_owned())
    } else {
        Err("a group name (letters, digits, _ - .) or a gid".into())
    }
}

fn parse_bpf_log(text: &str) -> Result<u32, String> {
    shaper::datapath::bpf_log::parse_level(text).map_err(|e| e.to_string())
}

pub fn run(args: RunArgs, socket: &Path) -> anyhow::Result<()> {
    let flags = Flags {
        ifaces: args.ifaces,
        attach: args.attach,
        config: args.config,
        state: args.state,
        metrics_addr: args.metrics_addr,
        metrics_top_ports: args.metrics_top_ports,
        metrics_top_remotes: args.metrics_top_remotes,
        metrics_max_connections: args.metrics_max_connections,
        bpf_log: args.bpf_log,
        socket: socket.to_owned(),
        socket_group: args.socket_group,
        owner_names: args.no_owner_names.then_some(false),
        pin_dir: args.pin_dir,
        persist: args.persist,
    };
    Daemon::start(flags)?.run()?;
    Ok(())
}
