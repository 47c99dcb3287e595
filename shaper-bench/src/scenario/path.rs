//! 3. Path overhead: iperf3 through a veth between two namespaces, TCP bulk and small-packet
//!    UDP, with no hook, with the shaper attached and no rules, and with the shaper holding
//!    65,535 rules on the other ports. The shaper is loaded by the bench itself (the same
//!    library the daemon uses), attached before each run and detached after it.

use std::time::Instant;

use shaper::{
    AttachMode, Classifier,
    policy::rule_table::{Action, PortRange, RuleKey, RuleSpec},
    policy::rules_in_force::Limits,
};

use super::{Context, alternate};
use crate::{
    report::Figure,
    sys::{self, TempDir},
    traffic::{Iperf3Server, field, iperf3_client},
};

const PORT: u16 = 5201;

/// UDP payload of the small-packet runs: 14 + 20 + 8 + 22 = a 64-byte frame.
const SMALL_UDP_PAYLOAD: &str = "22";

/// One rule on every port but `except`: 65,535 rules, every rule id in use.
pub fn rules_on_other_ports(except: u16, rate_bps: u64) -> Vec<RuleSpec> {
    (0..=u16::MAX)
        .filter(|&port| port != except)
        .map(|port| RuleSpec {
            key: RuleKey::local(PortRange::single(port)),
            rate_bps,
            burst_bytes: None,
            action: Action::Drop,
            ecn: false,
            per_remote: false,
            queue_bytes: None,
        })
        .collect()
}

const VARIANTS: [&str; 3] = ["no_hook", "shaper_no_rules", "shaper_65535_rules"];

pub fn run(cx: &mut Context) -> anyhow::Result<()> {
    let pair = sys::veth_pair(0)?;
    let _server = Iperf3Server::start(&pair.a, pair.a_addr, PORT)?;
    let dir = TempDir::new("path")?;
    let plan = cx.plan.clone();
    let secs = plan.path_secs.to_string();

    // Loading, installing rules and attaching happen in the shaper's namespace (netlink and tcx
    // act on the caller's namespace); iperf3 is started in its own namespaces either way.
    let (tcp, udp, install_s) = pair.a.enter(|| -> anyhow::Result<_> {
        let mut empty = Classifier::load(1)?;
        empty.register(&pair.a_if)?;
        let _empty_limits = Limits::start(&mut empty, Vec::new(), &dir.path().join("empty.json"))?;
        let mut full = Classifier::load(1)?;
        full.register(&pair.a_if)?;
        let started = Instant::now();
        let _full_limits = Limits::start(
            &mut full,
            rules_on_other_ports(PORT, 1_000_000_000),
            &dir.path().join("full.json"),
        )?;
        let install_s = started.elapsed().as_secs_f64();
        let mut shapers = [empty, full];

        // Runs `measure` with variant `v` in place, detaching again whatever happens.
        let mut with_variant = |v: &usize, measure: &dyn Fn() -> anyhow::Result<f64>| {
            let Some(shaper) = v.checked_sub(1).map(|i| &mut shapers[i]) else {
                return measure();
            };
            shaper.attach(&pair.a_if, AttachMode::auto())?;
            let result = measure();
            shaper.detach_all()?;
            result
        };
        let tcp = alternate(plan.reps, &[0usize, 1, 2], |v| {
            with_variant(v, &|| {
                let json = iperf3_client(&pair.b, pair.a_addr, PORT, &["-t", &secs])?;
                field(&json, "/end/sum_received/bits_per_second")
            })
        })?;
        let udp = alternate(plan.reps, &[0usize, 1, 2], |v| {
            with_variant(v, &|| {
                let json = iperf3_client(
                    &pair.b,
                    pair.a_addr,
                    PORT,
                    &["-u", "-b", "0", "-l", SMALL_UDP_PAYLOAD, "-t", &secs],
                )?;
                // Datagrams the sender got through the path per second. The sender's CPU also
                // runs the receiving namespace's ingress (veth hands the packet to the backlog
                // of the sending CPU), hook included; the receiving socket, on the other CPU,
                // may drop some when it falls behind, which says nothing about the hook.
                Ok(field(&json, "/end/sum/packets")? / field(&json, "/end/sum/seconds")?)
            })
        })?;
        Ok((tcp, udp, install_s))
    })??;

    // Units for reading; ratios are taken on the same converted samples.
    let tcp: Vec<Vec<f64>> = tcp
        .iter()
        .map(|v| v.iter().map(|b| b / 1e9).collect())
        .collect();
    let udp: Vec<Vec<f64>> = udp
        .iter()
        .map(|v| v.iter().map(|p| p / 1e3).collect())
        .collect();
    for (kind, unit, samples, target, min) in [
        ("tcp_bulk", "Gbit/s", &tcp, ">= 97% of no hook", 0.97),
        ("udp_64B", "kpps", &udp, ">= 90% of no hook", 0.90),
    ] {
        for (i, name) in VARIANTS.iter().enumerate() {
            let mut figure =
                Figure::new("path", format!("{kind}/{name}"), unit, samples[i].clone())?;
            if i > 0 {
                figure = figure
                    .ratio_to(&format!("{kind}/no_hook"), &samples[0])
                    .target(target, true, Some(min), None);
            }
            if i == 2 {
                figure = figure.detail("rules_installed_in_s", install_s);
            }
            cx.add(figure);
        }
    }
    cx.note(format!(
        "path: iperf3 -t {secs} from namespace b to a over a veth; the shaper on a's veth (tcx); \
         UDP: -u -b 0 -l {SMALL_UDP_PAYLOAD} (64-byte frames), packets/s sent through the path; \
         65,535 rules: one on every port but {PORT}"
    ));
    Ok(())
}
