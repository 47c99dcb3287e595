//! The classic configuration the shaper's `shape` action is measured against: an HTB root with
//! one class at the rate, a `u32` filter on the port and a bfifo leaf, written with `tc` by hand.
//! On ingress the port's packets are first sent to an IFB device with `mirred egress redirect`
//! (act_mirred, net/sched/act_mirred.c), whose root is the HTB. Everything is removed on drop.

use crate::sys::Namespace;

/// Which way the limited traffic flows through `iface`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Packets arriving on `iface` for local port `port` (u32 `ip dport`).
    Ingress,
    /// Packets leaving `iface` from local port `port` (u32 `ip sport`).
    Egress,
}

/// A hand-written HTB class limiting one port; removed on drop.
pub struct ClassicHtb<'a> {
    ns: &'a Namespace,
    iface: String,
    ifb: Option<String>,
}

impl<'a> ClassicHtb<'a> {
    /// `rate` bytes per second, a bfifo of `queue` bytes; on `iface` of `ns`.
    pub fn install(
        ns: &'a Namespace,
        iface: &str,
        hook: Hook,
        port: u16,
        rate: u64,
        queue: u64,
    ) -> anyhow::Result<Self> {
        let mut guard = Self {
            ns,
            iface: iface.to_owned(),
            ifb: None,
        };
        let port = port.to_string();
        let htb_dev = match hook {
            Hook::Egress => iface.to_owned(),
            Hook::Ingress => {
                let ifb = format!("ifb-{iface}");
                ns.ip(&["link", "add", &ifb, "type", "ifb"])?;
                guard.ifb = Some(ifb.clone());
                ns.ip(&["link", "set", &ifb, "up"])?;
                ns.run(
                    "tc",
                    &["qdisc", "add", "dev", iface, "handle", "ffff:", "ingress"],
                )?;
                ns.run(
                    "tc",
                    &[
                        "filter", "add", "dev", iface, "parent", "ffff:", "protocol", "ip", "prio",
                        "1", "u32", "match", "ip", "dport", &port, "0xffff", "action", "mirred",
                        "egress", "redirect", "dev", &ifb,
                    ],
                )?;
                ifb
            }
        };
        let rate = format!("{}bit", rate * 8);
        // `default 99` names no class: unclassified packets go to HTB's direct queue, unlimited.
        ns.run(
            "tc",
            &[
                "qdisc", "add", "dev", &htb_dev, "root", "handle", "1:", "htb", "default", "99",
            ],
        )?;
        ns.run(
            "tc",
            &[
                "class", "add", "dev", &htb_dev, "parent", "1:", "classid", "1:10", "htb", "rate",
                &rate, "ceil", &rate,
            ],
        )?;
        ns.run(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                &htb_dev,
                "parent",
                "1:10",
                "handle",
                "10:",
                "bfifo",
                "limit",
                &queue.to_string(),
            ],
        )?;
        let field = match hook {
            Hook::Egress => "sport",
            Hook::Ingress => "dport",
        };
        ns.run(
            "tc",
            &[
                "filter", "add", "dev", &htb_dev, "parent", "1:", "protocol", "ip", "prio", "1",
                "u32", "match", "ip", field, &port, "0xffff", "flowid", "1:10",
            ],
        )?;
        Ok(guard)
    }
}

impl Drop for ClassicHtb<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .run("tc", &["qdisc", "del", "dev", &self.iface, "root"]);
        if let Some(ifb) = &self.ifb {
            let _ = self
                .ns
                .run("tc", &["qdisc", "del", "dev", &self.iface, "ingress"]);
            let _ = self.ns.ip(&["link", "del", ifb]);
        }
    }
}
