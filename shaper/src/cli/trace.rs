//! `shaper trace`: one line per packet of the traced ports, read from the ring buffer the
//! daemon's program writes, until Ctrl-C, `--count` or the reader of stdout goes away.
//!
//! The daemon switches the trace on for as long as this command's control connection stays
//! open, so however this process ends (even killed), the kernel closes the connection and the
//! daemon switches the trace off. The events are read here, not relayed by the daemon: a slow
//! terminal then only fills the ring buffer (counted as lost events), never the daemon.

use std::{
    io::{self, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use clap::Args;
use shaper::{
    control::{self, Request, Response, protocol::TraceSpec},
    datapath::{ktime, trace_switch},
    policy::rule_table::{DirSel, PortRange, TraceVerdicts},
    telemetry::trace_lines::TraceLine,
};
use shaper_common::TraceEvent;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use super::keyword::keyword;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// A local port or an inclusive range LO-HI; default every port.
    ports: Option<PortRange>,
    /// Directions to trace.
    #[arg(long, value_parser = keyword::<DirSel>(), default_value_t = DirSel::Both)]
    dir: DirSel,
    /// Which packets, by verdict.
    #[arg(long, value_parser = keyword::<TraceVerdicts>(), default_value_t = TraceVerdicts::All)]
    verdict: TraceVerdicts,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// One JSON object per line (schema in the docs' reference/json.md).
    #[arg(long)]
    json: bool,
    /// Events each CPU may send per second; beyond it they are counted as lost.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    rate: u32,
}

pub fn trace(args: TraceArgs, socket: &Path) -> anyhow::Result<()> {
    let ports = args.ports.unwrap_or(PortRange {
        lo: 0,
        hi: u16::MAX,
    });
    let started_ns = ktime::monotonic_ns();
    let spec = TraceSpec {
        ports,
        dir: args.dir,
        verdict: args.verdict,
        per_cpu_per_second: args.rate,
    };
    let (response, connection) = control::request_held(socket, &Request::TraceOn { trace: spec })?;
    let Response::TraceOn {
        events,
        lost,
        interfaces,
        ..
    } = response
    else {
        bail!("unexpected reply from the daemon: {response:?}");
    };
    let ring = RingBuf::try_from(Map::RingBuf(
        MapData::from_pin(&events).with_context(|| format!("opening {}", events.display()))?,
    ))?;
    let lost: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(
        MapData::from_pin(&lost).with_context(|| format!("opening {}", lost.display()))?,
    ))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(follow(
        ring,
        &lost,
        &args,
        &interfaces,
        started_ns,
        ports,
        connection,
    ))
}

/// Reads events until done; reports lost events on stderr as they grow and at the end.
async fn follow(
    ring: RingBuf<MapData>,
    lost: &PerCpuArray<MapData, u64>,
    args: &TraceArgs,
    interfaces: &[String],
    started_ns: u64,
    ports: PortRange,
    connection: std::os::unix::net::UnixStream,
) -> anyhow::Result<()> {
    let lost_before = trace_switch::lost(lost)?;
    let mut reported = (0, 0);
    let report = |reported: &mut (u64, u64), last: bool| -> anyhow::Result<()> {
        let now = trace_switch::lost(lost)?;
        let delta = (now.0 - lost_before.0, now.1 - lost_before.1);
        if delta != *reported || (last && delta != (0, 0)) {
            eprintln!(
                "shaper trace: {} events lost ({} over the rate of {} per CPU per second, {} with \
                 the ring buffer full)",
                delta.0 + delta.1,
                delta.0,
                args.rate,
                delta.1
            );
            *reported = delta;
        }
        Ok(())
    };
    // The wall clock minus the kernel's monotonic clock, to print when each packet was seen.
    let offset = unix_now_ns() - i128::from(ktime::monotonic_ns());
    connection.set_nonblocking(true)?;
    let daemon = tokio::net::UnixStream::from_std(connection)?;
    // SAFETY: the ring buffer owns its map's fd, which stays open and the same until the
    // `RingBuf` is dropped, and the `AsyncFd` owns the `RingBuf`: the fd outlives its
    // registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut printed = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut out = io::stdout().lock();
    // Made once, before the loop: a signal stream made anew each turn would miss a Ctrl-C that
    // arrived while the previous turn was printing events.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = tick.tick() => report(&mut reported, false)?,
            // The daemon closes the connection only when it stops: so does the trace.
            _ = daemon.readable() => {
                let mut byte = [0u8; 1];
                match daemon.try_read(&mut byte) {
                    Ok(_) => bail!("the daemon ended the trace (it stopped)"),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e).context("the daemon's connection"),
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() < size_of::<TraceEvent>() {
                        continue;
                    }
                    // SAFETY: the record holds at least a whole `TraceEvent` (checked above),
                    // which is Pod: any bytes are a valid value; read unaligned as the ring
                    // buffer only promises 8-byte alignment.
                    let event = unsafe { item.as_ptr().cast::<TraceEvent>().read_unaligned() };
                    // Left in the ring by an earlier trace: not this one's.
                    if event.time_ns < started_ns || !ports.contains(event.local_port) {
                        continue;
                    }
                    let Some(line) = TraceLine::new(&event, interfaces, offset) else {
                        continue;
                    };
                    let text = if args.json {
                        serde_json::to_string(&line)?
                    } else {
                        line.text()
                    };
                    match writeln!(out, "{text}") {
                        Ok(()) => {}
                        // `shaper trace | head`: the reader is done, and so are we.
                        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                        Err(e) => return Err(e).context("writing to stdout"),
                    }
                    printed += 1;
                    if args.count.is_some_and(|n| printed >= n) {
                        break;
                    }
                }
                guard.clear_ready();
                match out.flush() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(e).context("writing to stdout"),
                }
                if args.count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
        }
    }
    report(&mut reported, true)
}

fn unix_now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}
