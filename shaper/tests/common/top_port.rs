//! Per-remote figures of a watched port as the operator reads them: `shaper top --port PORT
//! --once --json`, and extra addresses for namespace b to send from.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::{
    daemon::Daemon,
    netns::{InNamespace as _, VethPair},
};

/// Adds `count` more addresses (.11, .12, ... of the pair's subnet) to namespace b's end.
pub fn extra_addresses(pair: &VethPair, count: u8) -> Vec<Ipv4Addr> {
    let [a, b, c, _] = pair.b_addr.octets();
    (0..count)
        .map(|i| {
            let addr = Ipv4Addr::new(a, b, c, 11 + i);
            pair.b
                .ip_ok(&["addr", "add", &format!("{addr}/24"), "dev", &pair.b_if]);
            addr
        })
        .collect()
}

/// `shaper top --port PORT --once --json`.
pub fn top_port(daemon: &Daemon, port: u16) -> serde_json::Value {
    let out = daemon.cli_ok(&[
        "top",
        "--port",
        &port.to_string(),
        "--once",
        "--json",
        "--interval",
        "0.2",
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("top --port JSON: {e}\n{out}"))
}

/// (remote, packets, bytes, dropped packets) of every row, sorted by remote.
pub fn rows(view: &serde_json::Value) -> Vec<(String, u64, u64, u64)> {
    let mut rows: Vec<_> = view["remotes"]
        .as_array()
        .expect("remotes")
        .iter()
        .map(|r| {
            assert_eq!(r["direction"], "ingress", "{r}");
            assert_eq!(r["proto"], "udp", "{r}");
            (
                r["remote"].as_str().expect("remote").to_owned(),
                r["packets"].as_u64().expect("packets"),
                r["bytes"].as_u64().expect("bytes"),
                r["dropped_packets"].as_u64().expect("dropped"),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Polls `top --port` until the remotes' packets add up to `packets` (at most 10 s).
pub fn settled(daemon: &Daemon, port: u16, packets: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = top_port(daemon, port);
        let seen: u64 = rows(&view).iter().map(|r| r.1).sum();
        if seen >= packets || Instant::now() >= deadline {
            return view;
        }
    }
}
