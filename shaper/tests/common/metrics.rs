//! Scraping the daemon's `/metrics` from a test, and reading the Prometheus text format back.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use super::netns::{InNamespace as _, Namespace};

/// An HTTP response: status code, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` on `addr` from inside `ns` with HTTP/1.0 (the server closes the connection after
/// the response, so reading to the end reads exactly one response). Panics on any failure.
pub fn get(ns: &Namespace, addr: SocketAddr, path: &str, accept: Option<&str>) -> Response {
    let raw = ns.within(|| {
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n");
        stream.write_all(request.as_bytes()).expect("send request");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("read response");
        raw
    });
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Samples of one exposition, keyed by the series as written (`name{labels}`).
pub type Samples = BTreeMap<String, f64>;

/// Parses the samples of a Prometheus text exposition (comments skipped).
pub fn samples(body: &str) -> Samples {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            (series.to_owned(), value.parse().expect("sample value"))
        })
        .collect()
}

/// The metric name of a series key (`name{...}` or `name`).
pub fn metric_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// Every `_total` series of `before` whose metric `counted` admits is in `after` with a value
/// no smaller: counters that went on across a restart or an upgrade. Returns how many series
/// were compared.
pub fn counters_continue(
    what: &str,
    before: &Samples,
    after: &Samples,
    counted: impl Fn(&str) -> bool,
) -> usize {
    let mut compared = 0;
    for (series, value) in before {
        let name = metric_name(series);
        if !name.ends_with("_total") || !counted(name) {
            continue;
        }
        let now = after
            .get(series)
            .unwrap_or_else(|| panic!("{what}: {series} is gone"));
        assert!(now >= value, "{what}: {series}: {value} -> {now}");
        compared += 1;
    }
    println!("{what}: {compared} counter series, none decreased");
    compared
}

/// The series key `name{a="x",b="y"}` for labels in exposition order.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// The value of the label `name` in a series key, if present.
pub fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// `promtool check metrics` on `body`: panics with promtool's words when it finds a problem.
/// Returns whether promtool ran (outside CI a machine without it skips; see [`super::tool`]).
pub fn promtool_check(body: &str) -> bool {
    let Some(promtool) = super::tool("promtool") else {
        return false;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("wait for promtool");
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}\n{body}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

/// Where a test's daemon serves metrics and probes: the default address, inside its namespace.
pub const DAEMON_ADDR: SocketAddr = shaper::telemetry::metrics::DEFAULT_ADDR;

/// One scrape of `/metrics` of the daemon in `ns` (status 200 asserted): the body and its
/// samples.
pub fn scrape(ns: &Namespace) -> (String, Samples) {
    let response = get(ns, DAEMON_ADDR, "/metrics", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let parsed = samples(&response.body);
    (response.body, parsed)
}
