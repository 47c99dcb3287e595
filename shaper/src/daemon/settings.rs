//! What a daemon runs with: each setting from its `shaper run` flag, else the config file, else
//! the default.

use std::{collections::HashSet, path::PathBuf};

use log::info;

use crate::{
    control::access::SocketGroup,
    datapath::{
        attach::{AttachChoice, AttachMode},
        interfaces,
    },
    error::Result,
    policy::{
        PolicyError,
        config_file::{self, Config},
        rule_table::RuleSpec,
    },
    telemetry::{
        listening_sockets::Owners,
        metrics::{self, MetricsAddr},
    },
};

/// What `shaper run` was given: a field is empty or `None` where its flag was not.
#[derive(Debug, Clone)]
pub struct Flags {
    pub ifaces: Vec<String>,
    pub attach: Option<AttachChoice>,
    pub config: Option<PathBuf>,
    pub state: PathBuf,
    pub metrics_addr: Option<MetricsAddr>,
    pub metrics_top_ports: Option<usize>,
    /// Remotes of watched ports with a `shaper_remote_bytes_total` series (0 = none).
    pub metrics_top_remotes: usize,
    /// Connections the metrics endpoint keeps open at once.
    pub metrics_max_connections: usize,
    /// The level of the program's aya-log lines (`shaper_common::log_level`; 0 = off).
    pub bpf_log: u32,
    pub socket: PathBuf,
    /// The group whose members may use the control socket (a name or a gid).
    pub socket_group: Option<String>,
    /// `--no-owner-names`: `Some(false)`.
    pub owner_names: Option<bool>,
    /// Where each network namespace's datapath is pinned (a directory per namespace below it).
    pub pin_dir: PathBuf,
    /// Leave the datapath attached and pinned on SIGTERM/SIGINT (the service's way).
    pub persist: bool,
}

/// The settings in force for one daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interfaces to attach to, each once, in the order first named; each exists.
    pub ifaces: Vec<String>,
    /// What was asked for: `auto` also takes over an interface in the mode it is pinned with.
    pub attach: AttachChoice,
    pub mode: AttachMode,
    /// The config file's rules, installed at start-up unless the state file resumes them.
    pub config_rules: Vec<RuleSpec>,
    /// The config file's `[[watch]]`es, in force at start-up unless the saved watches resume.
    pub config_watches: Vec<crate::datapath::watched_ports::WatchSpec>,
    pub state: PathBuf,
    pub metrics_addr: MetricsAddr,
    pub metrics_top_ports: usize,
    pub metrics_top_remotes: usize,
    pub metrics_max_connections: usize,
    pub bpf_log: u32,
    pub socket: PathBuf,
    /// The group that shares the control socket with root, looked up.
    pub socket_group: Option<SocketGroup>,
    pub owners: Owners,
    pub pin_dir: PathBuf,
    pub persist: bool,
}

/// Reads the config file named by `flags`, if any. Done before anything else, privileges
/// included, so a bad file is the first thing an operator hears about.
pub fn read_config(flags: &Flags) -> Result<Config> {
    Ok(match &flags.config {
        Some(path) => config_file::load(path).map_err(PolicyError::from)?,
        None => Config::default(),
    })
}

impl Settings {
    /// Merges `flags` over `config`. Without an interface from either, takes the interface of
    /// the default route. Fails on an interface that does not exist, before anything is loaded.
    pub fn resolve(flags: Flags, config: Config) -> Result<Self> {
        let mut ifaces = flags.ifaces;
        if ifaces.is_empty() {
            ifaces = config.interfaces;
        }
        if ifaces.is_empty() {
            let default = interfaces::default_route_interface()?;
            info!("no --iface given: using {default}, the interface of the default route");
            ifaces.push(default);
        }
        // Naming an interface twice means it once; keep the first mention's order.
        let mut seen = HashSet::new();
        ifaces.retain(|name| seen.insert(name.clone()));
        for name in &ifaces {
            interfaces::index(name)?;
        }
        let attach = flags.attach.or(config.attach).unwrap_or(AttachChoice::Auto);
        let socket_group = flags
            .socket_group
            .or(config.socket_group)
            .map(|name| SocketGroup::resolve(&name))
            .transpose()?;
        let owners = if flags.owner_names.or(config.owner_names).unwrap_or(true) {
            Owners::Named
        } else {
            Owners::Unnamed
        };
        Ok(Self {
            ifaces,
            attach,
            mode: attach.resolve(),
            config_rules: config.limits,
            config_watches: config.watches,
            state: flags.state,
            metrics_addr: flags
                .metrics_addr
                .or(config.metrics_addr)
                .unwrap_or(MetricsAddr::At(metrics::DEFAULT_ADDR)),
            metrics_top_ports: flags
                .metrics_top_ports
                .or(config.metrics_top_ports)
                .unwrap_or(metrics::DEFAULT_TOP_PORTS),
            metrics_top_remotes: flags.metrics_top_remotes,
            metrics_max_connections: flags.metrics_max_connections,
            bpf_log: flags.bpf_log,
            socket: flags.socket,
            socket_group,
            owners,
            pin_dir: flags.pin_dir,
            persist: flags.persist || config.persist.unwrap_or(false),
        })
    }
}
