//! `shaper top --port P`: the remotes of one watched port, busiest first, as plain tables (one
//! per interval) or as one JSON sample.

use std::{
    io::{self, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use shaper::{
    control::{self, Request, Response},
    datapath::watched_ports::TalkersReading,
    telemetry::talkers_view::{self, Grouping, PortView},
};

/// Reads the port's remotes, stamped half-way through the request.
fn reading(socket: &Path, port: u16) -> anyhow::Result<(Instant, TalkersReading)> {
    let sent = Instant::now();
    let reading = match control::request(socket, &Request::Talkers { port: Some(port) })? {
        Response::Talkers(reading) => reading,
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    let received = Instant::now();
    Ok((sent + received.duration_since(sent) / 2, reading))
}

pub fn top_port(
    socket: &Path,
    port: u16,
    grouping: Grouping,
    interval: Duration,
    once: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut before = reading(socket, port)?;
    loop {
        std::thread::sleep(interval);
        let after = reading(socket, port)?;
        let seconds = after.0.duration_since(before.0).as_secs_f64();
        let view = talkers_view::view(port, &before.1, &after.1, seconds, grouping);
        let text = if json {
            serde_json::to_string_pretty(&view)?
        } else {
            table(&view)
        };
        let mut out = io::stdout().lock();
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        if once {
            return Ok(());
        }
        before = after;
    }
}

fn table(view: &PortView) -> String {
    let mut out = format!(
        "port {}  remotes {}  map {}/{} evicted {}  {:.2}s\n",
        view.port,
        view.remotes.len(),
        view.live,
        view.capacity,
        view.evicted,
        view.interval_seconds
    );
    out.push_str(&format!(
        "{:<10} {:<7} {:<5} {:<40} {:>12} {:>10} {:>10} {:>10} {:>6} {:>14}\n",
        "IFACE", "DIR", "PROTO", "REMOTE", "RATE", "PKT/S", "DROP/S", "WDROP/S", "SHARE", "BYTES"
    ));
    for row in &view.remotes {
        out.push_str(&format!(
            "{:<10} {:<7} {:<5} {:<40} {:>10.0}b/s {:>10.1} {:>10.1} {:>10.1} {:>5.1}% {:>14}\n",
            row.iface,
            row.direction.name(),
            row.proto,
            row.remote,
            row.bits_per_second,
            row.packets_per_second,
            row.dropped_packets_per_second,
            row.would_drop_packets_per_second,
            row.share * 100.0,
            row.bytes
        ));
    }
    out
}
