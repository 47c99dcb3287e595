//! The daemon's rules in force: the [`RuleTable`], its image in the classifier's maps, and the
//! state file that brings them back after a restart.
//!
//! Every change is validated completely, then written to the state file, then applied to the
//! maps; a change that fails validation or cannot be saved leaves the rules, the maps and every
//! counter exactly as they were. Applying never reloads or detaches anything: a new limit is a
//! map write the program reads on its next packet, a new or removed rule a repaint of the ports
//! whose winning rule changes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use shaper_common::Counter;

use crate::{
    Direction,
    datapath::classifier::Classifier,
    datapath::interfaces,
    datapath::netlink::htb,
    datapath::pace_queues,
    datapath::shape_classes,
    error::chain,
    policy::action_options,
    policy::config_reload::{Origin, ReloadStatus, ReloadSummary},
    policy::rates_and_sizes,
    policy::rule_actor::Actor,
    policy::rule_table::{
        Action, DirSel, PortRange, ProtoSel, Rule, RuleKey, RuleSpec, RuleTable, SetOutcome, Side,
        make_limit,
    },
    policy::state_file,
    policy::{PolicyError, Result},
};

/// A rule with its counters, as `shaper limit ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    pub id: u16,
    pub ports: PortRange,
    /// `local` or `remote`.
    pub side: Side,
    pub dir: DirSel,
    pub proto: ProtoSel,
    /// The interface, or `null` for all.
    pub iface: Option<String>,
    pub rate_bps: u64,
    /// The rate in the shortest exact unit, e.g. `10mbit`.
    pub rate: String,
    pub burst_bytes: u64,
    pub burst: String,
    pub action: Action,
    /// Both directions together.
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub would_drop_packets: u64,
    pub would_drop_bytes: u64,
    /// Bytes each direction's bucket holds now (at most `burst_bytes`): how much could pass at
    /// once before the rate applies.
    #[serde(default)]
    pub ingress_bucket_bytes: u64,
    #[serde(default)]
    pub egress_bucket_bytes: u64,
    /// `config` when the config file names this rule as it is, `runtime` when it was set with
    /// `shaper limit set` (see docs/src/guide/config.md, *Reloading*).
    #[serde(default)]
    pub origin: Origin,
    /// `--ecn` (drop rules).
    #[serde(default)]
    pub ecn: bool,
    /// `--per-remote` (drop and observe rules): a bucket per remote address.
    #[serde(default)]
    pub per_remote: bool,
    /// The remote addresses a `--per-remote` rule holds a bucket for now, both directions.
    #[serde(default)]
    pub remote_buckets: u64,
    /// Packets an `--ecn` rule marked CE (they are passed packets too).
    #[serde(default)]
    pub marked_packets: u64,
    #[serde(default)]
    pub marked_bytes: u64,
    /// A shape rule's queue limit in bytes (0 for other actions).
    #[serde(default)]
    pub queue_bytes: u64,
    /// Packets and bytes a shape rule's HTB classes sent after queueing (every interface); a
    /// packet its queue had no room for is counted in `dropped_*` instead.
    #[serde(default)]
    pub queued_packets: u64,
    #[serde(default)]
    pub queued_bytes: u64,
    /// What waits in the shape rule's queues now.
    #[serde(default)]
    pub backlog_packets: u64,
    #[serde(default)]
    pub backlog_bytes: u64,
    /// Who set a runtime rule through the control socket, and when; `null` for a config rule
    /// (and for a runtime rule saved by a shaper that did not record it).
    #[serde(default)]
    pub set_by: Option<Actor>,
}

impl RuleView {
    /// What the rule names in place of its ports: `9090`, `8000-8099` or `unplaced`.
    pub fn target(&self) -> String {
        if self.side == Side::Unplaced {
            crate::types::ports::UNPLACED.to_owned()
        } else {
            self.ports.to_string()
        }
    }
}

impl RuleView {
    /// The key of the rule this view shows.
    pub fn key(&self) -> RuleKey {
        RuleKey {
            ports: self.ports,
            side: self.side,
            dir: self.dir,
            proto: self.proto,
            iface: self.iface.clone(),
        }
    }
}

/// The rules in force and where they are saved.
#[derive(Debug)]
pub struct Limits {
    table: RuleTable,
    /// The rules of the config file last loaded (at start-up or by a reload).
    config_rules: Vec<RuleSpec>,
    /// The keys of the rules in force whose origin is the config file; every other rule was
    /// set at runtime.
    config_keys: HashSet<RuleKey>,
    /// Who set each runtime rule; config rules have none.
    actors: HashMap<RuleKey, Actor>,
    state_file: PathBuf,
    reload: ReloadStatus,
}

impl Limits {
    /// Installs the rules to start with: the state file's when it was saved from the same config
    /// rules (runtime changes survive a restart), otherwise `config_rules`, which are then saved.
    pub fn start(
        classifier: &mut Classifier,
        config_rules: Vec<RuleSpec>,
        state_file: &Path,
    ) -> Result<Self> {
        let mut limits = Self {
            table: RuleTable::new(),
            config_keys: config_rules.iter().map(|spec| spec.key.clone()).collect(),
            config_rules,
            actors: HashMap::new(),
            state_file: state_file.to_owned(),
            reload: ReloadStatus::succeeded_now(),
        };
        match state_file::read(state_file)? {
            Some(state) if state.config_rules == limits.config_rules => {
                // A file saved before origins were: a rule under a config key is the config's.
                limits.config_keys = state
                    .rules
                    .iter()
                    .filter(|saved| {
                        saved
                            .origin
                            .unwrap_or(if limits.config_keys.contains(&saved.rule.key) {
                                Origin::Config
                            } else {
                                Origin::Runtime
                            })
                            == Origin::Config
                    })
                    .map(|saved| saved.rule.key.clone())
                    .collect();
                limits.actors = state
                    .rules
                    .iter()
                    .filter_map(|saved| Some((saved.rule.key.clone(), saved.set_by.clone()?)))
                    .collect();
                let rules = state.rules.into_iter().map(|saved| saved.rule).collect();
                limits.restore(classifier, rules)?;
                log::info!(
                    "restored {} rule(s) from {}",
                    limits.table.len(),
                    state_file.display()
                );
            }
            saved => {
                if saved.is_some() {
                    log::warn!(
                        "the config file's rules changed since {} was saved: starting from the \
                         config file (earlier runtime changes are discarded)",
                        state_file.display()
                    );
                }
                // Every config rule is checked before any is installed or saved: a bad one stops
                // the daemon with nothing changed, and the next start tries the config again.
                let mut table = RuleTable::new();
                let attached = Attached::read(classifier)?;
                for spec in &limits.config_rules {
                    let refused = |e: PolicyError| PolicyError::ConfigRule {
                        rule: spec.key.to_string(),
                        source: Box::new(e),
                    };
                    let limit = attached.validate(spec).map_err(refused)?;
                    table
                        .set(spec.key.clone(), limit)
                        .map_err(|e| refused(e.into()))?;
                }
                limits.install(classifier, table)?;
                limits.save(
                    &limits.table,
                    &limits.config_rules,
                    |key| limits.config_keys.contains(key),
                    |key| limits.actors.get(key),
                )?;
            }
        }
        Ok(limits)
    }

    /// Adds a rule, or replaces the limit of the rule with the same key (keeping its counters),
    /// on behalf of `actor`. Returns the rule and whether it replaced one.
    pub fn set(
        &mut self,
        classifier: &mut Classifier,
        spec: RuleSpec,
        actor: Actor,
    ) -> Result<(RuleView, bool)> {
        let limit = Attached::read(classifier)?.validate(&spec)?;
        let mut next = self.table.clone();
        let outcome = next.set(spec.key.clone(), limit)?;
        let (id, fresh) = match outcome {
            SetOutcome::Added(id) => (id, true),
            SetOutcome::Replaced(id) => (id, false),
        };
        // A shape rule's class exists before the classifier names it.
        let wanted = Queues::of(&next, classifier);
        wanted.add(classifier, &BTreeSet::from([id]))?;
        // A runtime change makes the rule a runtime rule, even under a key the file names: the
        // next reload puts the file's rule back (see docs/src/guide/config.md, *Reloading*).
        // The new actor is saved before it is recorded: a change that cannot be saved or written
        // leaves `self.actors` as it was, without copying the map (one entry per runtime rule).
        self.save(
            &next,
            &self.config_rules,
            |key| key != &spec.key && self.config_keys.contains(key),
            |key| {
                if key == &spec.key {
                    Some(&actor)
                } else {
                    self.actors.get(key)
                }
            },
        )?;
        if let Err(e) = classifier.write_rule(id, &limit.config(), fresh) {
            // Nothing reached the rule index; put the saved state back as it was.
            if let Err(undo) = self.save(
                &self.table,
                &self.config_rules,
                |key| self.config_keys.contains(key),
                |key| self.actors.get(key),
            ) {
                log::error!(
                    "restoring {} after a failed change: {}",
                    self.state_file.display(),
                    chain(&undo)
                );
            }
            return Err(e.into());
        }
        paint(classifier, &next)?;
        self.table = next;
        self.config_keys.remove(&spec.key);
        self.actors.insert(spec.key.clone(), actor);
        wanted.prune(classifier);
        let rule = self.table.find(&spec.key).ok_or(PolicyError::NoSuchRule {
            key: spec.key.to_string(),
            others: String::new(),
        })?;
        Ok((
            view(
                classifier,
                rule,
                Origin::Runtime,
                self.actors.get(&spec.key),
                &Beside::read(classifier, &self.table),
            ),
            !fresh,
        ))
    }

    /// Removes the rule with exactly this key; returns it with its final counters.
    pub fn remove(&mut self, classifier: &mut Classifier, key: &RuleKey) -> Result<RuleView> {
        let mut next = self.table.clone();
        let Some(rule) = next.remove(key) else {
            let same_ports: Vec<String> = self
                .table
                .rules()
                .filter(|r| r.key.ports == key.ports && r.key.side == key.side)
                .map(|r| r.key.to_string())
                .collect();
            return Err(PolicyError::NoSuchRule {
                key: key.to_string(),
                others: if same_ports.is_empty() {
                    " (`shaper limit ls` lists the rules)".into()
                } else {
                    format!("; rules on these ports: {}", same_ports.join("; "))
                },
            });
        };
        self.save(
            &next,
            &self.config_rules,
            |other| other != key && self.config_keys.contains(other),
            |key| self.actors.get(key),
        )?;
        // Unhook the ports first, then clear the limit, so no packet finds a half-removed rule.
        paint(classifier, &next)?;
        let removed = view(
            classifier,
            &rule,
            self.origin(&rule.key),
            self.actor(&rule.key),
            &Beside::read(classifier, &self.table),
        );
        self.table = next;
        self.config_keys.remove(key);
        self.actors.remove(key);
        // The rule is already out of the index: a stale limit left behind is never read.
        if let Err(e) = classifier.clear_rule(rule.id) {
            log::warn!(
                "clearing the limit of removed rule {}: {}",
                rule.id,
                chain(&e)
            );
        }
        Queues::of(&self.table, classifier).prune(classifier);
        Ok(removed)
    }

    /// Every rule in force with its counters, by port.
    /// The rules in force, in `limit ls` order.
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self.table.rules().cloned().collect();
        rules.sort_by_key(|r| (r.key.ports, r.key.side, r.id));
        rules
    }

    pub fn list(&self, classifier: &Classifier) -> Vec<RuleView> {
        let mut rules: Vec<&Rule> = self.table.rules().collect();
        rules.sort_by_key(|r| (r.key.ports, r.key.side, r.id));
        let beside = Beside::read(classifier, &self.table);
        rules
            .into_iter()
            .map(|rule| {
                view(
                    classifier,
                    rule,
                    self.origin(&rule.key),
                    self.actor(&rule.key),
                    &beside,
                )
            })
            .collect()
    }

    /// Who set the rule under `key`, if it is a runtime rule set through the control socket.
    fn actor(&self, key: &RuleKey) -> Option<&Actor> {
        if self.config_keys.contains(key) {
            None
        } else {
            self.actors.get(key)
        }
    }

    fn origin(&self, key: &RuleKey) -> Origin {
        if self.config_keys.contains(key) {
            Origin::Config
        } else {
            Origin::Runtime
        }
    }

    /// Whether the last reload worked, and when one last did.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload
    }

    /// Makes the rules of a reloaded config file (`config_rules`, from `file`) true: every rule
    /// the file names is set as written (an unchanged one keeps its id, bucket and counters, a
    /// changed one keeps them too and gets the new limit, as `limit set` replacing does), a
    /// config rule the file no longer names is removed, and a runtime rule under a key the file
    /// does not name stays. Every rule is checked first: a file with one bad rule changes
    /// nothing, and the reload status says so.
    pub fn reload(
        &mut self,
        classifier: &mut Classifier,
        config_rules: Vec<RuleSpec>,
    ) -> Result<ReloadSummary> {
        let outcome = self.try_reload(classifier, config_rules);
        self.reload = match outcome {
            Ok(_) => ReloadStatus::succeeded_now(),
            Err(_) => self.reload.failed(),
        };
        outcome
    }

    /// Counts a reload that failed before it reached the rules (an unreadable or invalid file).
    pub fn reload_failed(&mut self) {
        self.reload = self.reload.failed();
    }

    fn try_reload(
        &mut self,
        classifier: &mut Classifier,
        config_rules: Vec<RuleSpec>,
    ) -> Result<ReloadSummary> {
        let attached = Attached::read(classifier)?;
        let mut next = self.table.clone();
        let mut summary = ReloadSummary::default();
        let config_keys: HashSet<RuleKey> =
            config_rules.iter().map(|spec| spec.key.clone()).collect();
        for spec in &config_rules {
            let refused = |e: PolicyError| PolicyError::ConfigRule {
                rule: spec.key.to_string(),
                source: Box::new(e),
            };
            let limit = attached.validate(spec).map_err(refused)?;
            match next.find(&spec.key) {
                Some(rule) if rule.limit == limit => summary.unchanged += 1,
                Some(_) => summary.changed += 1,
                None => summary.added += 1,
            }
            next.set(spec.key.clone(), limit)
                .map_err(|e| refused(e.into()))?;
        }
        // Removed after every set, so no id is freed and handed out again in the same reload.
        for key in &self.config_keys {
            if !config_keys.contains(key) && next.remove(key).is_some() {
                summary.removed += 1;
            }
        }
        // The classes of shape rules exist before the classifier names them (those of changed
        // rules set again); the ones no rule needs any more go once it no longer does.
        let wanted = Queues::of(&next, classifier);
        let changed: BTreeSet<u16> = next
            .rules()
            .filter(|rule| {
                self.table
                    .find(&rule.key)
                    .is_none_or(|was| was.limit != rule.limit)
            })
            .map(|rule| rule.id)
            .collect();
        wanted.add(classifier, &changed)?;
        self.save(
            &next,
            &config_rules,
            |key| config_keys.contains(key),
            |key| self.actors.get(key),
        )?;
        if let Err(e) = apply(classifier, &self.table, &next) {
            // Put back what was in force, as far as the maps let us.
            if let Err(undo) = apply(classifier, &next, &self.table) {
                log::error!("undoing a reload that failed: {}", chain(&undo));
            }
            if let Err(undo) = self.save(
                &self.table,
                &self.config_rules,
                |key| self.config_keys.contains(key),
                |key| self.actors.get(key),
            ) {
                log::error!(
                    "restoring {} after a failed reload: {}",
                    self.state_file.display(),
                    chain(&undo)
                );
            }
            return Err(e);
        }
        self.table = next;
        self.config_rules = config_rules;
        self.config_keys = config_keys;
        // A rule the file now names is the file's; one the reload removed has no actor.
        let table = &self.table;
        let config_keys = &self.config_keys;
        self.actors
            .retain(|key, _| !config_keys.contains(key) && table.find(key).is_some());
        wanted.prune(classifier);
        Ok(summary)
    }

    fn restore(&mut self, classifier: &mut Classifier, rules: Vec<Rule>) -> Result<()> {
        let mut table = RuleTable::new();
        let attached = Attached::read(classifier)?;
        for rule in rules {
            let spec = RuleSpec {
                key: rule.key.clone(),
                rate_bps: rule.limit.rate_bps,
                // A pace rule has no burst (0), and takes none.
                burst_bytes: (rule.limit.action != Action::Pace).then_some(rule.limit.burst_bytes),
                action: rule.limit.action,
                ecn: rule.limit.ecn,
                per_remote: rule.limit.per_remote,
                queue_bytes: (rule.limit.queue_bytes > 0).then_some(rule.limit.queue_bytes),
            };
            // The interfaces may differ from the last run: a rule that no longer fits is
            // skipped, loudly, rather than keeping the daemon from starting.
            match attached.validate(&spec) {
                Ok(limit)
                    if table.restore(Rule {
                        limit,
                        ..rule.clone()
                    }) => {}
                Ok(_) => log::warn!("state file: duplicate rule {} skipped", rule.key),
                Err(e) => log::warn!("state file: rule {} skipped: {}", rule.key, chain(&e)),
            }
        }
        self.install(classifier, table)
    }

    /// Makes `table` the rules in force, in the maps too, before the programs are attached or
    /// swapped. A pinned datapath may already enforce some of them (an earlier daemon's): a rule
    /// whose id holds the same limit keeps its buckets and counters untouched, one whose id holds
    /// another limit gets the new limit and keeps them (a change that was saved but not yet
    /// applied when the earlier daemon stopped), and a new id starts full with zero counters.
    /// Ids the maps hold that `table` does not are cleared last, after the rule index no
    /// longer names them, so no packet ever meets an empty rule table in between.
    fn install(&mut self, classifier: &mut Classifier, mut table: RuleTable) -> Result<()> {
        let live: std::collections::HashMap<u16, shaper_common::RuleConfig> =
            classifier.live_rules()?.into_iter().collect();
        let mut wanted = Queues::of(&table, classifier);
        let ids = table.rules().map(|rule| rule.id).collect();
        match wanted.add(classifier, &ids) {
            Ok(()) => {}
            // A kernel without fq (the state file came from another machine, say) keeps the
            // pace rules from being enforced, not the daemon from starting: they are skipped,
            // loudly, as a rule that no longer fits is.
            Err(PolicyError::Datapath(e @ crate::datapath::DatapathError::PaceNeedsFq { .. })) => {
                let paced: Vec<RuleKey> = table
                    .rules()
                    .filter(|rule| rule.limit.action == Action::Pace)
                    .map(|rule| rule.key.clone())
                    .collect();
                for key in &paced {
                    log::error!("rule {key} skipped: {e}");
                    table.remove(key);
                }
                wanted = Queues::of(&table, classifier);
                wanted.add(classifier, &ids)?;
            }
            Err(e) => return Err(e),
        }
        let mut kept = 0;
        for rule in table.rules() {
            let config = rule.limit.config();
            match live.get(&rule.id) {
                Some(current) if *current == config => kept += 1,
                Some(_) => classifier.write_rule(rule.id, &config, false)?,
                None => classifier.write_rule(rule.id, &config, true)?,
            }
        }
        paint(classifier, &table)?;
        let mut cleared = 0;
        for &id in live.keys() {
            if table.rules().all(|rule| rule.id != id) {
                classifier.clear_rule(id)?;
                cleared += 1;
            }
        }
        if !live.is_empty() {
            log::info!(
                "pinned datapath: {kept} rule(s) carried on unchanged, {cleared} cleared, {} \
                 written",
                table.len() - kept
            );
        }
        self.table = table;
        wanted.prune(classifier);
        Ok(())
    }

    /// Removes shaper's HTB and pace roots from every attached interface (the daemon stops without
    /// `--persist`): the kernel's default root comes back. The rules stay saved and come back,
    /// classes and all, with the next daemon.
    pub fn release_shaping(&self, classifier: &Classifier) -> Result<Vec<String>> {
        let ifaces = classifier.interface_names();
        let mut released = shape_classes::release(&ifaces)?;
        released.extend(pace_queues::prune(&BTreeSet::new(), &ifaces)?);
        Ok(released)
    }

    /// Saves `table`, grown from `config_rules`; `is_config` says which rules are the file's,
    /// `actor_of` who set the others.
    fn save<'a>(
        &self,
        table: &'a RuleTable,
        config_rules: &[RuleSpec],
        is_config: impl Fn(&RuleKey) -> bool,
        actor_of: impl Fn(&RuleKey) -> Option<&'a Actor>,
    ) -> Result<()> {
        state_file::write(
            &self.state_file,
            config_rules,
            table.rules().map(|rule| {
                if is_config(&rule.key) {
                    (rule, Origin::Config, None)
                } else {
                    (rule, Origin::Runtime, actor_of(&rule.key))
                }
            }),
        )
    }
}

/// Changes the maps from the rules `from` to the rules `to` (which grew from `from`, so a key
/// in both has the same id): new limits first, then the rule index, then the removed ids are
/// cleared once no port names them. A rule whose limit changed keeps its bucket and counters.
fn apply(classifier: &mut Classifier, from: &RuleTable, to: &RuleTable) -> Result<()> {
    for rule in to.rules() {
        match from.find(&rule.key) {
            Some(old) if old.id == rule.id && old.limit == rule.limit => {}
            Some(old) if old.id == rule.id => {
                classifier.write_rule(rule.id, &rule.limit.config(), false)?
            }
            _ => classifier.write_rule(rule.id, &rule.limit.config(), true)?,
        }
    }
    paint(classifier, to)?;
    for rule in from.rules() {
        if to.find(&rule.key).is_none_or(|new| new.id != rule.id) {
            classifier.clear_rule(rule.id)?;
        }
    }
    Ok(())
}

/// What a rule is checked against: the attached interfaces and the largest aggregate their
/// hooks can see. Read once per batch of rules (one netlink request per interface), not once
/// per rule, so starting with tens of thousands of rules costs no more than a few requests.
struct Attached {
    names: Vec<String>,
    aggregate: u64,
    /// ` on IFACE`, naming where the largest aggregate comes from.
    largest_on: String,
}

impl Attached {
    /// The burst minimum comes from the largest aggregate of *every* attached interface, even
    /// for a rule on one interface: a forwarded aggregate reaches the egress hook as it was built
    /// on the interface it arrived on (GRO there, before any segmentation for this device), so a
    /// BIG TCP interface can hand a large aggregate to another interface's hook.
    fn read(classifier: &Classifier) -> Result<Self> {
        let names = classifier.interface_names();
        let mut aggregate = 0u64;
        let mut largest_on = String::new();
        for name in &names {
            let bytes = u64::from(interfaces::max_aggregate_bytes(name)?);
            if bytes > aggregate {
                aggregate = bytes;
                largest_on = format!(" on {name}");
            }
        }
        Ok(Self {
            names,
            aggregate,
            largest_on,
        })
    }

    /// Checks a requested rule against the attached interfaces and turns it into a limit.
    fn validate(&self, spec: &RuleSpec) -> Result<crate::policy::rule_table::Limit> {
        if let Some(name) = &spec.key.iface
            && !self.names.contains(name)
        {
            return Err(crate::policy::rule_table::LimitError::NotAttached {
                iface: name.clone(),
                attached: self.names.join(", "),
            }
            .into());
        }
        let limit = make_limit(
            spec.rate_bps,
            spec.burst_bytes,
            spec.action,
            self.aggregate,
            &self.largest_on,
        )?;
        Ok(action_options::apply(spec, limit, self.aggregate)?)
    }
}

/// The bytes a rule's bucket in `direction` holds now. For a `--per-remote` rule, the
/// emptiest of its remotes' buckets (full without one: a new remote's would be).
fn bucket_bytes_now(
    classifier: &Classifier,
    rule: &Rule,
    direction: Direction,
    now_ns: u64,
    beside: &Beside,
) -> u64 {
    // A pace rule has no bucket: its clock is not tokens.
    if rule.limit.action == Action::Pace {
        return 0;
    }
    if rule.limit.per_remote {
        return beside
            .remote_buckets
            .get(&rule.id)
            .and_then(|fill| fill.emptiest[direction.index() as usize])
            .unwrap_or(rule.limit.burst_bytes);
    }
    // A bucket that cannot be read counts as full, as a fresh one is.
    match classifier.bucket(rule.id, direction) {
        Ok(state) => bytes_now(&rule.limit.config(), &state, now_ns),
        Err(_) => rule.limit.burst_bytes,
    }
}

/// The bytes a pace rule has scheduled ahead of `now_ns` on its egress clock (0 if it cannot
/// be read).
fn paced_backlog_bytes(classifier: &Classifier, rule: &Rule, now_ns: u64) -> u64 {
    classifier
        .bucket(rule.id, Direction::Egress)
        .map_or(0, |state| {
            shaper_common::pace::backlog_bytes(state.stamp_ns, now_ns, rule.limit.rate_bps)
        })
}

/// The `--per-remote` rules' bucket counts and emptiest buckets, from every remote bucket.
fn remote_fills(
    table: &RuleTable,
    by_rule: BTreeMap<u16, Vec<(shaper_common::RemoteBucketKey, shaper_common::BucketState)>>,
) -> BTreeMap<u16, RemoteFill> {
    let now_ns = crate::datapath::ktime::monotonic_ns();
    let mut fills = BTreeMap::new();
    for rule in table.rules().filter(|rule| rule.limit.per_remote) {
        let Some(buckets) = by_rule.get(&rule.id) else {
            continue;
        };
        let config = rule.limit.config();
        let mut fill = RemoteFill::default();
        for (key, state) in buckets {
            fill.buckets += 1;
            let bytes = bytes_now(&config, state, now_ns);
            if let Some(emptiest) = fill.emptiest.get_mut(usize::from(key.direction)) {
                *emptiest = Some(emptiest.map_or(bytes, |e| e.min(bytes)));
            }
        }
        fills.insert(rule.id, fill);
    }
    fills
}

/// Bytes a bucket holds at `now_ns`: what the programs left plus what time has credited
/// since — they refill lazily, on the next packet — capped at the burst.
fn bytes_now(
    config: &shaper_common::RuleConfig,
    state: &shaper_common::BucketState,
    now_ns: u64,
) -> u64 {
    let elapsed = now_ns.saturating_sub(state.stamp_ns);
    let credit = shaper_common::bucket::refill(elapsed, config.fill_ns, config.rate_bps);
    let tokens = state
        .tokens
        .saturating_add(credit)
        .min(config.burst_nanobits);
    tokens / shaper_common::bucket::NANOBITS_PER_BYTE
}

/// The HTB classes the shape rules among `rules` ask for (the other actions need none).
fn class_requests<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
) -> impl Iterator<Item = shape_classes::ClassRequest> {
    rules
        .into_iter()
        .filter(|rule| rule.limit.action == Action::Shape)
        .map(|rule| shape_classes::ClassRequest {
            class: htb::ClassSpec {
                rule: rule.id,
                rate_bps: rule.limit.rate_bps,
                burst_bytes: rule.limit.burst_bytes,
                queue_bytes: rule.limit.queue_bytes,
            },
            iface: rule.key.iface.clone(),
            dir: rule.key.dir,
        })
}

/// The queues the rules of a table need on the attached interfaces: the HTB classes of its
/// shape rules and the `fq` roots of its pace rules.
struct Queues {
    shape: shape_classes::Wanted,
    pace: BTreeSet<String>,
}

impl Queues {
    fn of(table: &RuleTable, classifier: &Classifier) -> Self {
        let ifaces = classifier.interface_names();
        let pace = table
            .rules()
            .filter(|rule| rule.limit.action == Action::Pace)
            .map(|rule| rule.key.iface.clone());
        Self {
            pace: pace_queues::wanted(pace, &ifaces),
            shape: shape_classes::wanted(class_requests(table.rules()), &ifaces),
        }
    }

    /// Adds what the rules lack (see [`shape_classes::add`], [`pace_queues::add`]), after
    /// checking that no interface needs both roots; the classes of rules in `changed` are set
    /// again.
    fn add(&self, classifier: &mut Classifier, changed: &BTreeSet<u16>) -> Result<()> {
        pace_queues::check(&self.pace, &self.shape)?;
        shape_classes::add(classifier, &self.shape, changed)?;
        pace_queues::add(&self.pace, &self.shape)?;
        Ok(())
    }

    /// Removes the classes and roots no rule needs any more. The rule change they follow is
    /// done and saved, so a failure here leaves an unused class or root (no packet is sent to
    /// it, or stamped for it) and is only logged; the next change tries again.
    fn prune(&self, classifier: &mut Classifier) {
        if let Err(e) = shape_classes::prune(classifier, &self.shape) {
            log::warn!("removing HTB classes no rule needs: {}", chain(&e));
        }
        if let Err(e) = pace_queues::prune(&self.pace, &classifier.interface_names()) {
            log::warn!("removing an fq root no pace rule needs: {}", chain(&e));
        }
    }
}

/// What a rule's view shows beside its own counters, read once for every rule listed.
#[derive(Default)]
struct Beside {
    /// The HTB class statistics of the shape rules.
    shaped: BTreeMap<u16, htb::ClassStats>,
    /// The remote buckets of each `--per-remote` rule.
    remote_buckets: BTreeMap<u16, RemoteFill>,
}

/// What a `--per-remote` rule's buckets hold, for its view.
#[derive(Default)]
struct RemoteFill {
    buckets: u64,
    /// Per direction (by index), the bytes of the emptiest bucket now: the remote closest to
    /// the limit. `None` without a bucket in that direction.
    emptiest: [Option<u64>; 2],
}

impl Beside {
    /// Asks the kernel only for what `table` has: no netlink request without shape rules, no
    /// walk of the remote buckets without `--per-remote` rules.
    fn read(classifier: &Classifier, table: &RuleTable) -> Self {
        let shaped = if table.rules().any(|rule| rule.limit.action == Action::Shape) {
            shape_classes::stats(&classifier.interface_names())
        } else {
            BTreeMap::new()
        };
        let remote_buckets = if table.rules().any(|rule| rule.limit.per_remote) {
            match classifier.remote_buckets_by_rule() {
                Ok(by_rule) => remote_fills(table, by_rule),
                Err(e) => {
                    log::warn!("reading the remote buckets: {}", chain(&e));
                    BTreeMap::new()
                }
            }
        } else {
            BTreeMap::new()
        };
        Self {
            shaped,
            remote_buckets,
        }
    }
}

fn view(
    classifier: &Classifier,
    rule: &Rule,
    origin: Origin,
    set_by: Option<&Actor>,
    beside: &Beside,
) -> RuleView {
    let now_ns = crate::datapath::ktime::monotonic_ns();
    let mut passed = Counter::default();
    let mut dropped = Counter::default();
    let mut would_drop = Counter::default();
    let mut marked = Counter::default();
    for direction in Direction::BOTH {
        let c = classifier.rule_counters(rule.id, direction);
        for (sum, add) in [
            (&mut passed, c.passed),
            (&mut dropped, c.dropped),
            (&mut would_drop, c.would_drop),
            (&mut marked, c.marked),
        ] {
            sum.packets += add.packets;
            sum.bytes += add.bytes;
        }
    }
    // A shape rule's drops are its queue's overflow; the classifier never drops its packets.
    let class = beside.shaped.get(&rule.id).copied().unwrap_or_default();
    if rule.limit.action == Action::Shape {
        dropped.packets += class.drops;
        // fq_codel counts the packets it marked, not their bytes.
        marked.packets += class.marks;
    }
    // A pace rule's queue is its schedule: what it passed left at its departure time, and what
    // waits is the time its clock is ahead of now, at the rate.
    let (queued, backlog_packets, backlog_bytes) = match rule.limit.action {
        Action::Pace => (passed, 0, paced_backlog_bytes(classifier, rule, now_ns)),
        _ => (
            Counter {
                packets: class.packets,
                bytes: class.bytes,
            },
            class.backlog_packets,
            class.backlog_bytes,
        ),
    };
    RuleView {
        id: rule.id,
        ports: rule.key.ports,
        side: rule.key.side,
        dir: rule.key.dir,
        proto: rule.key.proto,
        iface: rule.key.iface.clone(),
        rate_bps: rule.limit.rate_bps,
        rate: rates_and_sizes::format_rate(rule.limit.rate_bps),
        burst_bytes: rule.limit.burst_bytes,
        burst: rates_and_sizes::format_size(rule.limit.burst_bytes),
        action: rule.limit.action,
        passed_packets: passed.packets,
        passed_bytes: passed.bytes,
        dropped_packets: dropped.packets,
        dropped_bytes: dropped.bytes,
        would_drop_packets: would_drop.packets,
        would_drop_bytes: would_drop.bytes,
        ingress_bucket_bytes: bucket_bytes_now(
            classifier,
            rule,
            Direction::Ingress,
            now_ns,
            beside,
        ),
        egress_bucket_bytes: bucket_bytes_now(classifier, rule, Direction::Egress, now_ns, beside),
        origin,
        ecn: rule.limit.ecn,
        per_remote: rule.limit.per_remote,
        remote_buckets: beside
            .remote_buckets
            .get(&rule.id)
            .map_or(0, |fill| fill.buckets),
        marked_packets: marked.packets,
        marked_bytes: marked.bytes,
        queue_bytes: rule.limit.queue_bytes,
        queued_packets: queued.packets,
        queued_bytes: queued.bytes,
        backlog_packets,
        backlog_bytes,
        set_by: set_by.cloned(),
    }
}

/// Writes what `table` resolves to into the maps the programs read: the rule index (ports)
/// and the `unplaced` rules.
fn paint(classifier: &mut Classifier, table: &RuleTable) -> Result<()> {
    let names = classifier.interface_names();
    classifier.paint_rule_index(&table.resolve(&names));
    classifier.paint_unplaced(&table.resolve_unplaced(&names))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `shaper limit ls --json` and the control protocol carry this JSON; it must not change.
    #[test]
    fn a_rule_view_serializes_to_the_documented_json() {
        let view = RuleView {
            id: 3,
            ports: PortRange { lo: 8000, hi: 8099 },
            side: Side::Remote,
            dir: DirSel::Egress,
            proto: ProtoSel::Udp,
            iface: Some("eth0".into()),
            rate_bps: 8_000_000,
            rate: "8mbit".into(),
            burst_bytes: 300_000,
            burst: "300KB".into(),
            action: Action::Observe,
            passed_packets: 1,
            passed_bytes: 2,
            dropped_packets: 3,
            dropped_bytes: 4,
            would_drop_packets: 5,
            would_drop_bytes: 6,
            ingress_bucket_bytes: 7,
            egress_bucket_bytes: 8,
            origin: Origin::Config,
            ecn: false,
            per_remote: true,
            remote_buckets: 16,
            marked_packets: 9,
            marked_bytes: 10,
            queue_bytes: 11,
            queued_packets: 12,
            queued_bytes: 13,
            backlog_packets: 14,
            backlog_bytes: 15,
            set_by: Some(Actor {
                uid: Some(1000),
                user: Some("alice".into()),
                pid: Some(4242),
                command: Some("shaper".into()),
                at: "2026-12-06T06:40:00Z".into(),
            }),
        };
        let json = serde_json::to_string(&view).unwrap();
        assert_eq!(
            json,
            r#"{"id":3,"ports":"8000-8099","side":"remote","dir":"egress","proto":"udp","iface":"eth0","rate_bps":8000000,"rate":"8mbit","burst_bytes":300000,"burst":"300KB","action":"observe","passed_packets":1,"passed_bytes":2,"dropped_packets":3,"dropped_bytes":4,"would_drop_packets":5,"would_drop_bytes":6,"ingress_bucket_bytes":7,"egress_bucket_bytes":8,"origin":"config","ecn":false,"per_remote":true,"remote_buckets":16,"marked_packets":9,"marked_bytes":10,"queue_bytes":11,"queued_packets":12,"queued_bytes":13,"backlog_packets":14,"backlog_bytes":15,"set_by":{"uid":1000,"user":"alice","pid":4242,"command":"shaper","at":"2026-12-06T06:40:00Z"}}"#
        );
        assert_eq!(serde_json::from_str::<RuleView>(&json).unwrap(), view);
    }
}
