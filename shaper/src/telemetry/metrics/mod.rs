//! Prometheus metrics: what a scrape reads, which series it shows, and the `/metrics` endpoint.
//!
//! A scrape copies the little it needs from the daemon under its lock ([`Inventory`]: the
//! interfaces and whether the programs are on them, the rules, the unclassified counters), then
//! reads the per-port counters from shared memory without it ([`PortCounters`]), so a scrape
//! never holds up `shaper limit set` for the length of a 65,536-port scan. The selection is
//! saved beside the state file after each scrape that changed it, and resumed by the next
//! daemon ([`saved_selection`]).

mod http_connections;
mod http_endpoint;
mod metric_families;
mod port_selection;
mod queueing_families;
pub mod remote_series;
mod saved_selection;
mod tcp_families;
mod text_formats;

use std::{collections::HashSet, path::Path, sync::Mutex, time::Instant};

pub use http_connections::{Bounds as HttpBounds, DEFAULT_MAX_CONNECTIONS};
pub use http_endpoint::{Handlers, HealthFn, Probe, ScrapeFn, bind, serve};
pub use port_selection::{Group, Memory, Offset, PortKey, Selection, Selector, Totals};
pub use saved_selection::{path_beside as selection_file_beside, unpinned_datapath_id};
use shaper_common::{Counter, reason};
pub use text_formats::Format;

use crate::{
    Classifier, Direction,
    datapath::classifier::{InterfaceState, PROTOCOLS},
    datapath::mapped_arrays::PortCounters,
    policy::config_reload::ReloadStatus,
    policy::rule_table::{Rule, Side},
    policy::rules_in_force::Limits,
    telemetry::listening_sockets::{Owners, ScopedListener, scoped_listeners},
};

pub use crate::types::metrics_addr::{DEFAULT_ADDR, MetricsAddr};

/// How many ports, beyond the pinned ones, get a series of their own by default.
pub const DEFAULT_TOP_PORTS: usize = 100;

/// At most this many ports get a series because a single-port rule names them.
pub const MAX_RULE_PINNED_PORTS: usize = 1024;

/// What a scrape needs from the daemon's state, copied while holding its lock.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub interfaces: Vec<InterfaceState>,
    pub rules: Vec<Rule>,
    /// (interface slot, direction index, reason, counter) for every reason.
    pub unclassified: Vec<(u32, u32, u32, Counter)>,
    /// Whether the last config reload worked and when one last did.
    pub config_reload: ReloadStatus,
    /// The TCP handshake tracker's totals; `None` if they could not be read.
    pub handshakes: Option<crate::datapath::tcp_telemetry::HandshakeTracking>,
    /// The `unplaced` rules with their counters; empty without any.
    pub unplaced_rules: Vec<crate::policy::rules_in_force::RuleView>,
    /// The fragment tracker's totals; `None` if they could not be read.
    pub fragments: Option<crate::datapath::fragment_tracking::FragmentTracking>,
    /// The `--per-remote` buckets' totals; `None` if they could not be read.
    pub remote_buckets: Option<crate::datapath::remote_buckets::RemoteBuckets>,
    /// The opt-in per-remote series (`--metrics-top-remotes`); empty unless asked for.
    pub remotes: Vec<remote_series::RemoteSeries>,
    /// The shape, pace, `--ecn` and `--per-remote` rules with the figures only they have (queued,
    /// backlog, marked, remote buckets); the others are not read.
    pub queueing_rules: Vec<crate::policy::rules_in_force::RuleView>,
}

impl Inventory {
    pub fn gather(classifier: &Classifier, limits: &Limits) -> crate::telemetry::Result<Self> {
        let interfaces = classifier.interface_states();
        let mut unclassified = Vec::new();
        for iface in &interfaces {
            for direction in Direction::BOTH {
                for reason in 0..reason::COUNT {
                    let counter = classifier.unclassified_counter(iface.slot, direction, reason)?;
                    unclassified.push((iface.slot, direction.index(), reason, counter));
                }
            }
        }
        let rules = limits.rules();
        let unplaced_rules = if rules.iter().any(|rule| rule.key.side == Side::Unplaced) {
            limits
                .list(classifier)
                .into_iter()
                .filter(|rule| rule.side == Side::Unplaced)
                .collect()
        } else {
            Vec::new()
        };
        let queueing_rules = if rules.iter().any(|rule| {
            matches!(
                rule.limit.action,
                crate::policy::rule_table::Action::Shape | crate::policy::rule_table::Action::Pace
            ) || rule.limit.ecn
                || rule.limit.per_remote
        }) {
            limits
                .list(classifier)
                .into_iter()
                .filter(|rule| {
                    matches!(
                        rule.action,
                        crate::policy::rule_table::Action::Shape
                            | crate::policy::rule_table::Action::Pace
                    ) || rule.ecn
                        || rule.per_remote
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            interfaces,
            rules,
            unclassified,
            config_reload: limits.reload_status(),
            handshakes: classifier.handshake_tracking().ok(),
            fragments: classifier.fragment_tracking().ok(),
            remote_buckets: classifier.remote_buckets().ok(),
            unplaced_rules,
            remotes: Vec::new(),
            queueing_rules,
        })
    }

    /// The ports a single-port rule on the local side names, for every interface, direction
    /// and protocol the rule covers: at most [`MAX_RULE_PINNED_PORTS`] ports, the lowest, so
    /// that a rule per port on thousands of ports cannot flood Prometheus (the rest compete for
    /// the top N). A range rule pins nothing: one rule over 30000-32767 would otherwise be up to
    /// 11,072 series per interface; its busiest ports compete for the top N too.
    fn rule_ports(&self) -> HashSet<PortKey> {
        let mut rules: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|rule| rule.key.side == Side::Local && rule.key.ports.width() == 0)
            .collect();
        rules.sort_by_key(|rule| rule.key.ports.lo);
        let mut ports = HashSet::new();
        rules.retain(|rule| {
            let port = rule.key.ports.lo;
            ports.contains(&port) || (ports.len() < MAX_RULE_PINNED_PORTS && ports.insert(port))
        });
        let mut pinned = HashSet::new();
        for rule in rules {
            for iface in &self.interfaces {
                if rule
                    .key
                    .iface
                    .as_ref()
                    .is_some_and(|name| *name != iface.name)
                {
                    continue;
                }
                for &direction in rule.key.dir.directions() {
                    for &proto in rule.key.proto.protos() {
                        pinned.insert(PortKey {
                            slot: iface.slot,
                            direction,
                            proto,
                            port: rule.key.ports.lo,
                        });
                    }
                }
            }
        }
        pinned
    }
}

/// The metrics side of the daemon: the counters to scan and the selection's memory.
#[derive(Debug)]
pub struct Exporter {
    counters: PortCounters,
    top_ports: usize,
    selection: Mutex<Remembered>,
    /// Whether `shaper_port_listening` names processes.
    owners: Owners,
}

/// The selection's memory, and the file it is saved to (if any).
#[derive(Debug)]
struct Remembered {
    selector: Selector,
    file: Option<saved_selection::SelectionFile>,
}

/// One scrape's data, ready to encode.
#[derive(Debug)]
pub struct Scrape {
    pub inventory: Inventory,
    /// Listening sockets with their bind scope.
    pub listeners: Vec<ScopedListener>,
    pub selection: Selection,
    /// TCP connection telemetry of the shown TCP ports.
    pub tcp: Vec<tcp_families::TcpSeries>,
    /// When the scrape began (before the daemon's lock was taken).
    pub started: Instant,
}

impl Exporter {
    /// An exporter whose selection starts afresh and is not saved.
    pub fn new(counters: PortCounters, top_ports: usize) -> Self {
        Self {
            counters,
            top_ports,
            selection: Mutex::new(Remembered {
                selector: Selector::default(),
                file: None,
            }),
            owners: Owners::Named,
        }
    }

    /// An exporter that resumes the selection saved beside the state file `state` over the
    /// datapath `datapath_id` (opaque: equal only for the same kernel counters), and saves it
    /// there after every scrape that changes it. A selection that cannot be resumed is logged
    /// and the selection starts afresh.
    pub fn resume(
        counters: PortCounters,
        top_ports: usize,
        state: &Path,
        datapath_id: String,
    ) -> Self {
        let file =
            saved_selection::SelectionFile::open(saved_selection::path_beside(state), datapath_id);
        Self {
            counters,
            top_ports,
            selection: Mutex::new(Remembered {
                selector: Selector::default(),
                file: Some(file),
            }),
            owners: Owners::Named,
        }
    }

    /// The same exporter, naming listeners' processes or not.
    pub fn with_owners(self, owners: Owners) -> Self {
        Self { owners, ..self }
    }

    /// Scans every port's counters and selects the series. Scrapes are serialized: the
    /// selection of one depends on the one before. The selection is saved before the scrape is
    /// returned, so the file never lags what a scraper saw.
    pub fn collect(&self, inventory: Inventory, started: Instant) -> Scrape {
        let mut remembered = self
            .selection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Remembered { selector, file } = &mut *remembered;
        let listeners = scoped_listeners(self.owners);
        let mut pinned = inventory.rule_ports();
        let listening: HashSet<(u32, u16)> = listeners
            .iter()
            .map(|l| (l.listener.proto.index(), l.listener.port))
            .collect();
        let mut active = Vec::new();
        for iface in &inventory.interfaces {
            for direction in Direction::BOTH {
                for proto in PROTOCOLS.map(|p| p.index()) {
                    self.counters.for_each_active(
                        iface.slot,
                        direction.index(),
                        proto,
                        |port, reading| {
                            let key = PortKey {
                                slot: iface.slot,
                                direction: direction.index(),
                                proto,
                                port,
                            };
                            if listening.contains(&(proto, port)) {
                                pinned.insert(key);
                            }
                            active.push((key, port_selection::totals(&reading)));
                        },
                    );
                }
            }
        }
        if let Some(file) = file.as_mut() {
            file.resume(selector, &inventory.interfaces, &active);
        }
        let selection = selector.select(active, |key| pinned.contains(key), self.top_ports);
        if let Some(file) = file.as_mut() {
            file.save(selector, &inventory.interfaces);
        }
        Scrape {
            tcp: tcp_families::collect(&self.counters, &selection),
            inventory,
            listeners,
            selection,
            started,
        }
    }

    /// Collects and encodes one scrape in `format`.
    pub fn render(&self, inventory: Inventory, started: Instant, format: Format) -> String {
        let scrape = self.collect(inventory, started);
        metric_families::encode(scrape, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AttachMode,
        policy::rule_table::{Action, DirSel, Limit, PortRange, ProtoSel, RuleKey},
    };

    fn rule(id: u16, ports: PortRange, side: Side) -> Rule {
        Rule {
            id,
            key: RuleKey {
                ports,
                side,
                dir: DirSel::Both,
                proto: ProtoSel::Any,
                iface: None,
            },
            limit: Limit {
                rate_bps: 8_000_000,
                burst_bytes: 1 << 20,
                action: Action::Drop,
                ecn: false,
                per_remote: false,
                queue_bytes: 0,
            },
        }
    }

    fn inventory(rules: Vec<Rule>) -> Inventory {
        Inventory {
            queueing_rules: Vec::new(),
            interfaces: vec![InterfaceState {
                slot: 0,
                name: "eth0".into(),
                mode: Some(AttachMode::Tcx),
                attached: Vec::new(),
            }],
            rules,
            unclassified: Vec::new(),
            config_reload: ReloadStatus::succeeded_now(),
            handshakes: None,
            fragments: None,
            remote_buckets: None,
            unplaced_rules: Vec::new(),
            remotes: Vec::new(),
        }
    }

    #[test]
    fn single_port_local_rules_pin_their_ports_up_to_the_cap() {
        let pinned = inventory(vec![
            rule(1, PortRange::single(9090), Side::Local),
            rule(2, PortRange { lo: 8000, hi: 8099 }, Side::Local),
            rule(3, PortRange::single(443), Side::Remote),
        ])
        .rule_ports();
        // 9090 in both directions and both protocols; the range and the remote rule pin nothing.
        assert_eq!(pinned.len(), 4);
        assert!(pinned.iter().all(|key| key.port == 9090));

        let many = (1..=3000).map(|port| rule(port, PortRange::single(port), Side::Local));
        let pinned = inventory(many.collect()).rule_ports();
        assert_eq!(pinned.len(), 4 * MAX_RULE_PINNED_PORTS);
        // The lowest ports win.
        assert!(
            pinned
                .iter()
                .all(|key| usize::from(key.port) <= MAX_RULE_PINNED_PORTS)
        );
    }
}
