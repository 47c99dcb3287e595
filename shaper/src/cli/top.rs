//! `shaper top`: live per-port rates from the running daemon, as a terminal UI, as plain tables
//! when stdout is not a terminal, or as one JSON sample.

use std::{
    io::{self, IsTerminal as _, Write as _},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::Line,
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};
use shaper::{
    Direction,
    control::{self, Request, Response},
    policy::rates_and_sizes,
    policy::rule_table::Action,
    telemetry::top_view::{self, Column, Row, Sample, View},
};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between samples (fractions allowed, at least 0.1).
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// Take one sample over one interval, print it and exit.
    #[arg(long)]
    once: bool,
    /// With --once: print the sample as JSON (schema in the docs' reference/json.md).
    #[arg(long, requires = "once")]
    json: bool,
    /// Show rates in bytes per second instead of bits (key `b` toggles it).
    #[arg(long)]
    bytes: bool,
    /// Only rows whose port is this number, or whose interface or process contains this text
    /// (key `/` changes it).
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// The remotes of this watched local port (see `shaper watch`), busiest first.
    #[arg(long)]
    port: Option<u16>,
    /// With --port: group remotes by prefix, /N (IPv4 up to /32, longer is IPv6), v4/N or
    /// v6/N; may be given once per family.
    #[arg(long, value_name = "PREFIX", requires = "port")]
    group: Vec<shaper::telemetry::talkers_view::GroupPrefix>,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if (0.1..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "'{text}' is not a number of seconds from 0.1 to 3600"
        )),
    }
}

pub fn top(args: TopArgs, socket: &Path) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(args.interval);
    let filter = args.filter.clone().unwrap_or_default();
    if let Some(port) = args.port {
        let grouping = shaper::telemetry::talkers_view::Grouping::from_prefixes(&args.group);
        return super::top_port::top_port(socket, port, grouping, interval, args.once, args.json);
    }
    if args.once {
        let before = sample(socket)?;
        std::thread::sleep(interval);
        let view = top_view::view(&before, &sample(socket)?);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            print!("{}", plain_table(&view, !args.bytes, &filter));
        }
        return Ok(());
    }
    if !io::stdout().is_terminal() {
        return plain_loop(socket, interval, !args.bytes, &filter);
    }
    Tui::new(!args.bytes, filter).run(socket, interval)
}

/// Reads the counters and the rules, stamped half-way through the two requests: the daemon read
/// its counters somewhere in between.
fn sample(socket: &Path) -> anyhow::Result<Sample> {
    let sent = Instant::now();
    let snapshot = match control::request(socket, &Request::Stats)? {
        Response::Stats(snapshot) => snapshot,
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    let rules = match control::request(socket, &Request::LimitLs)? {
        Response::Rules { rules } => rules,
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    let received = Instant::now();
    Ok(Sample {
        taken: sent + received.duration_since(sent) / 2,
        snapshot,
        rules,
    })
}

/// Not a terminal: one plain table per interval, until the reader goes away.
fn plain_loop(socket: &Path, interval: Duration, bits: bool, filter: &str) -> anyhow::Result<()> {
    let mut before = sample(socket)?;
    loop {
        std::thread::sleep(interval);
        let after = sample(socket)?;
        let table = plain_table(&top_view::view(&before, &after), bits, filter);
        let mut out = io::stdout().lock();
        match writeln!(out, "{table}").and_then(|()| out.flush()) {
            Ok(()) => {}
            // `shaper top | head`: the reader is done, and so are we.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        before = after;
    }
}

/// The header lines: interval, totals, unclassified.
fn header(view: &View, bits: bool) -> [String; 2] {
    let t = &view.totals;
    [
        format!(
            "passed {} ({} pkt/s) of {}  drop {}/s  would-drop {}/s  ports {}  {:.2}s",
            rate(t.bytes_per_second, bits),
            count(t.packets_per_second),
            rate(t.seen_bytes_per_second, bits),
            count(t.dropped_packets_per_second),
            count(t.would_drop_packets_per_second),
            view.rows.len(),
            view.interval_seconds
        ),
        format!(
            "unclassified {}  {} pkt/s",
            rate(view.unclassified.bytes_per_second, bits),
            count(view.unclassified.packets_per_second)
        ),
    ]
}

/// Every column, for pipes and `--once`.
fn plain_table(view: &View, bits: bool, filter: &str) -> String {
    let mut out = String::new();
    for line in header(view, bits) {
        out.push_str(&line);
        out.push('\n');
    }
    let cells = |texts: Vec<String>| {
        Column::ALL
            .iter()
            .zip(texts)
            .map(|(&column, text)| {
                let width = width(column);
                if column.right_aligned() {
                    format!("{text:>width$}")
                } else {
                    format!("{text:<width$}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end()
            .to_owned()
    };
    out.push_str(&cells(
        Column::ALL.iter().map(|c| c.title().to_owned()).collect(),
    ));
    out.push('\n');
    for row in view.rows.iter().filter(|r| top_view::matches(r, filter)) {
        out.push_str(&cells(
            Column::ALL
                .iter()
                .map(|&c| cell_text(row, c, bits))
                .collect(),
        ));
        out.push('\n');
    }
    out
}

fn rate(bytes_per_second: f64, bits: bool) -> String {
    if bits {
        format!("{}b/s", si(bytes_per_second * 8.0))
    } else {
        format!("{}B/s", si(bytes_per_second))
    }
}

fn count(per_second: f64) -> String {
    si(per_second)
}

/// 3 significant digits with an SI prefix: `950`, `12.3K`, `1.60M`, `9.41G`.
fn si(value: f64) -> String {
    let (scaled, prefix) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")]
        .into_iter()
        .find(|(unit, _)| value >= *unit)
        .map_or((value, ""), |(unit, prefix)| (value / unit, prefix));
    let text = if scaled >= 100.0 || prefix.is_empty() {
        format!("{scaled:.0}")
    } else if scaled >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    format!("{text}{prefix}")
}

/// Seconds as milliseconds with two or three significant digits: `0.07`, `4.2`, `67`.
fn millis(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    if ms < 1.0 {
        format!("{ms:.2}")
    } else if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn cell_text(row: &Row, column: Column, bits: bool) -> String {
    match column {
        Column::Iface => row.iface.clone(),
        Column::Direction => match row.direction {
            Direction::Ingress => "in".to_owned(),
            Direction::Egress => "out".to_owned(),
        },
        Column::Proto => row.proto.to_string(),
        Column::Port => row.port.to_string(),
        Column::Rate => rate(row.bytes_per_second, bits),
        Column::Packets => count(row.packets_per_second),
        Column::Drops => count(row.dropped_packets_per_second),
        Column::WouldDrops => count(row.would_drop_packets_per_second),
        Column::Conns => row
            .tcp
            .as_ref()
            .map_or("-".to_owned(), |t| count(t.new_connections_per_second)),
        Column::Resets => row
            .tcp
            .as_ref()
            .map_or("-".to_owned(), |t| count(t.resets_per_second)),
        Column::Rtt => row.tcp.as_ref().map_or("-".to_owned(), |t| {
            let ms = |s: Option<f64>| s.map_or("-".to_owned(), millis);
            format!(
                "{}/{}ms",
                ms(t.handshake_rtt_p50_seconds),
                ms(t.handshake_rtt_p99_seconds)
            )
        }),
        Column::Rule => row.rule.as_ref().map_or("-".to_owned(), |r| {
            format!(
                "{}/{} {}",
                rates_and_sizes::format_rate(r.rate_bps),
                rates_and_sizes::format_size(r.burst_bytes),
                match r.action {
                    Action::Observe => "obs",
                    Action::Drop => "drop",
                    Action::Shape => "shape",
                    Action::Pace => "pace",
                }
            )
        }),
        // A shape or pace rule has no bucket in use: its queue delay stands there instead.
        Column::Bucket => row.rule.as_ref().map_or("-".to_owned(), |r| {
            r.queue_delay_ms.map_or_else(
                || format!("{:.0}%", r.bucket_fill * 100.0),
                |ms| format!("q{ms:.0}ms"),
            )
        }),
        Column::Process => row.process.clone().unwrap_or_else(|| "-".to_owned()),
    }
}

/// A column's width in characters.
fn width(column: Column) -> usize {
    match column {
        Column::Iface => 10,
        Column::Direction => 3,
        Column::Proto => 5,
        Column::Port => 5,
        Column::Rate => 9,
        Column::Packets => 6,
        Column::Drops => 6,
        Column::WouldDrops => 7,
        Column::Conns => 6,
        Column::Resets => 5,
        Column::Rtt => 13,
        Column::Rule => 19,
        Column::Bucket => 6,
        Column::Process => 12,
    }
}

/// The columns that fit `total` characters, kept in display order: the most useful first, so
/// that 80 columns show port, rate, packets, drops, rule, bucket and process; wider terminals add
/// would-drops and the interface (before would-drops when several interfaces are shown).
fn visible_columns(total: usize, several_ifaces: bool) -> Vec<Column> {
    let mut priority = vec![
        Column::Port,
        Column::Rate,
        Column::Direction,
        Column::Proto,
        Column::Packets,
        Column::Drops,
        Column::Rule,
        Column::Bucket,
        Column::Process,
        Column::WouldDrops,
        Column::Iface,
        // TCP connection columns, on terminals wide enough.
        Column::Conns,
        Column::Rtt,
        Column::Resets,
    ];
    if several_ifaces {
        priority.retain(|&c| c != Column::Iface);
        priority.insert(5, Column::Iface);
    }
    let mut used = 0;
    let mut shown = Vec::new();
    for column in priority {
        let needed = width(column) + usize::from(!shown.is_empty());
        if used + needed <= total {
            used += needed;
            shown.push(column);
        }
    }
    Column::ALL
        .into_iter()
        .filter(|c| shown.contains(c))
        .collect()
}

/// The interactive view's state.
struct Tui {
    bits: bool,
    filter: String,
    /// The filter being typed after `/`, until Enter or Esc.
    editing: Option<String>,
    sort: Column,
    descending: bool,
    view: Option<View>,
    error: Option<String>,
}

impl Tui {
    fn new(bits: bool, filter: String) -> Self {
        Self {
            bits,
            filter,
            editing: None,
            sort: Column::Rate,
            descending: true,
            view: None,
            error: None,
        }
    }

    fn run(mut self, socket: &Path, interval: Duration) -> anyhow::Result<()> {
        // Fail before touching the terminal if there is no daemon to ask.
        let mut before = sample(socket)?;
        // SIGTERM (the demo's time bound, `kill`) must restore the terminal too; raw mode turns
        // Ctrl-C into a key, handled below. SIGHUP keeps its default action, ending the process:
        // after a hangup there is no terminal left to restore, and crossterm would spin reading
        // end-of-file from the dead tty instead of returning to this loop.
        let terminated = Arc::new(AtomicBool::new(false));
        // A second SIGTERM ends the process at once, should the first one go unseen.
        signal_hook::flag::register_conditional_shutdown(
            signal_hook::consts::SIGTERM,
            1,
            Arc::clone(&terminated),
        )?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&terminated))?;
        let mut terminal = ratatui::try_init().context("setting up the terminal")?;
        let outcome = (|| -> anyhow::Result<()> {
            let mut next_sample = Instant::now() + interval;
            loop {
                terminal.draw(|frame| self.draw(frame))?;
                let now = Instant::now();
                if now >= next_sample {
                    match sample(socket) {
                        Ok(after) => {
                            let mut view = top_view::view(&before, &after);
                            top_view::sort(&mut view.rows, self.sort, self.descending);
                            self.view = Some(view);
                            self.error = None;
                            before = after;
                        }
                        // Keep showing the last view; say why it is not moving.
                        Err(e) => self.error = Some(format!("{e:#}")),
                    }
                    next_sample += interval;
                    if next_sample < now {
                        next_sample = now + interval;
                    }
                    continue;
                }
                // Wake for a key, a signal (checked every 100 ms) or the next sample.
                let wait = (next_sample - now).min(Duration::from_millis(100));
                if event::poll(wait)?
                    && let Event::Key(key) = event::read()?
                    && key.kind == KeyEventKind::Press
                    && self.key(key)
                {
                    return Ok(());
                }
                if terminated.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        })();
        ratatui::restore();
        outcome
    }

    /// Handles a key; true to quit.
    fn key(&mut self, key: KeyEvent) -> bool {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return true;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = std::mem::take(text);
                    self.editing = None;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return false;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => return true,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            KeyCode::Char('b') => self.bits = !self.bits,
            KeyCode::Char('s') | KeyCode::Right | KeyCode::Char('>') => {
                self.sort_on(self.sort.next());
            }
            KeyCode::Char('S') | KeyCode::Left | KeyCode::Char('<') => {
                self.sort_on(self.sort.previous());
            }
            KeyCode::Char('r') => {
                self.descending = !self.descending;
                self.resort();
            }
            _ => {}
        }
        false
    }

    fn sort_on(&mut self, column: Column) {
        self.sort = column;
        self.descending = column.descending_first();
        self.resort();
    }

    fn resort(&mut self) {
        if let Some(view) = &mut self.view {
            top_view::sort(&mut view.rows, self.sort, self.descending);
        }
    }

    fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        let [head, table_area, help] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Min(1),
            Constraint::Length(1),
        ])
        .areas(area);
        let mut lines: Vec<Line> = match &self.view {
            Some(view) => header(view, self.bits)
                .into_iter()
                .map(Line::from)
                .collect(),
            None => vec![Line::from("waiting for the first interval...")],
        };
        let status = match (&self.editing, &self.error) {
            (Some(text), _) => format!("filter: {text}_   (Enter applies, Esc cancels)"),
            (None, Some(error)) => format!("error: {error}"),
            (None, None) => format!(
                "sorted by {} {}{}",
                self.sort.title(),
                if self.descending { "desc" } else { "asc" },
                if self.filter.is_empty() {
                    String::new()
                } else {
                    format!("   filter: {}", self.filter)
                }
            ),
        };
        lines.push(Line::from(status).style(Style::new().add_modifier(Modifier::DIM)));
        frame.render_widget(Paragraph::new(lines), head);

        let rows: Vec<&Row> = self.view.as_ref().map_or_else(Vec::new, |view| {
            view.rows
                .iter()
                .filter(|r| top_view::matches(r, &self.filter))
                .collect()
        });
        let several_ifaces = rows.windows(2).any(|w| w[0].iface != w[1].iface);
        let columns = visible_columns(usize::from(area.width), several_ifaces);
        let titles = columns.iter().map(|&c| {
            let title = if c == self.sort {
                format!("{}{}", c.title(), if self.descending { "v" } else { "^" })
            } else {
                c.title().to_owned()
            };
            aligned(c, title)
        });
        let body = rows.iter().map(|row| {
            TableRow::new(
                columns
                    .iter()
                    .map(|&c| aligned(c, cell_text(row, c, self.bits))),
            )
        });
        let widths = columns.iter().map(|&c| {
            if c == Column::Process {
                Constraint::Min(width(c) as u16)
            } else {
                Constraint::Length(width(c) as u16)
            }
        });
        let table = Table::new(body, widths)
            .header(TableRow::new(titles).bold().reversed())
            .column_spacing(1);
        frame.render_widget(table, table_area);
        frame.render_widget(
            Paragraph::new(
                "q quit  s/S sort next/prev column  r reverse  / filter  Esc clear  b bits/bytes",
            )
            .style(Style::new().add_modifier(Modifier::DIM)),
            help,
        );
    }
}

fn aligned(column: Column, text: String) -> Cell<'static> {
    let line = Line::from(text);
    Cell::from(if column.right_aligned() {
        line.right_aligned()
    } else {
        line
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighty_columns_show_the_essentials_and_wider_shows_more() {
        let at_80 = visible_columns(80, false);
        for column in [
            Column::Port,
            Column::Rate,
            Column::Packets,
            Column::Drops,
            Column::Rule,
            Column::Bucket,
            Column::Process,
        ] {
            assert!(
                at_80.contains(&column),
                "{column:?} missing at 80: {at_80:?}"
            );
        }
        let used: usize =
            at_80.iter().map(|&c| width(c)).sum::<usize>() + at_80.len().saturating_sub(1);
        assert!(used <= 80, "{used}");
        assert_eq!(visible_columns(200, false), Column::ALL.to_vec());
        // Several interfaces: the interface beats would-drops for the space.
        let at_90 = visible_columns(90, true);
        assert!(at_90.contains(&Column::Iface), "{at_90:?}");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(950.4), "950");
        assert_eq!(si(12_345.0), "12.3K");
        assert_eq!(si(1_600_000.0), "1.60M");
        assert_eq!(si(999_999_999.0), "1000M");
        assert_eq!(rate(125_000.0, true), "1.00Mb/s");
        assert_eq!(rate(125_000.0, false), "125KB/s");
    }

    #[test]
    fn intervals_are_checked() {
        assert!(parse_interval("0.5").is_ok());
        for bad in ["0", "0.05", "-1", "nan", "inf", "one", "4000"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
