//! The two text formats `/metrics` speaks, and which one a scraper gets.
//!
//! prometheus-client writes only OpenMetrics text. The Prometheus text format (0.0.4), which
//! `curl`, `promtool check metrics` and older scrapers read, differs from it, for the metrics we
//! expose, in three things only: a counter family is named with its `_total` suffix in `# HELP`
//! and `# TYPE` (OpenMetrics names the family without it), there is no `# UNIT` line, and there
//! is no `# EOF` terminator. [`to_prometheus_text`] makes exactly those changes.

/// The response body's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4.
    PrometheusText,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// Picks the format for an `Accept` header (RFC 9110 section 12.5.1): OpenMetrics when the
    /// scraper ranks it at least as high as plain text, the Prometheus text format otherwise,
    /// and for a missing or unparsable header. Prometheus itself sends OpenMetrics first
    /// (`application/openmetrics-text;version=1.0.0,...,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::PrometheusText;
        };
        let mut openmetrics = 0.0f32;
        let mut text = 0.0f32;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut quality = 1.0f32;
            let mut version = None;
            for parameter in parts {
                let Some((name, value)) = parameter.split_once('=') else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "q" => quality = value.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
            match media.as_str() {
                // Only the versions this encoder writes; 0.0.1 is the pre-1.0 name of the same text.
                "application/openmetrics-text"
                    if version
                        .as_deref()
                        .is_none_or(|v| v == "1.0.0" || v == "0.0.1") =>
                {
                    openmetrics = openmetrics.max(quality);
                }
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Self::OpenMetrics
        } else {
            Self::PrometheusText
        }
    }
}

/// Rewrites OpenMetrics text, as prometheus-client writes it, into the Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // `# HELP` comes before `# TYPE`; the family's type decides how HELP is named.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some((_, help)) = pending_help.take() {
                out.push_str(&format!("# HELP {name} {help}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some((name, help)) = pending_help.take() {
            out.push_str(&format!("# HELP {name} {help}\n"));
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some((name, help)) = pending_help {
        out.push_str(&format!("# HELP {name} {help}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_curl_gets_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,\
            application/openmetrics-text;version=0.0.1;q=0.75,\
            text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::PrometheusText
        );
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
    }

    #[test]
    fn quality_and_versions_decide() {
        // Text preferred over OpenMetrics.
        let text_first = "application/openmetrics-text;q=0.3,text/plain;q=0.9";
        assert_eq!(Format::negotiate(Some(text_first)), Format::PrometheusText);
        // q=0 means "not acceptable".
        let refused = "application/openmetrics-text;q=0";
        assert_eq!(Format::negotiate(Some(refused)), Format::PrometheusText);
        // A version this encoder does not write is not chosen.
        let future = "application/openmetrics-text;version=2.0.0";
        assert_eq!(Format::negotiate(Some(future)), Format::PrometheusText);
        assert_eq!(
            Format::negotiate(Some("garbage;;;=,")),
            Format::PrometheusText
        );
    }

    #[test]
    fn counters_take_their_total_name_and_openmetrics_only_lines_go() {
        let openmetrics = "# HELP shaper_bytes Bytes seen.\n\
            # TYPE shaper_bytes counter\n\
            shaper_bytes_total{port=\"80\"} 5\n\
            # HELP shaper_burst Burst.\n\
            # TYPE shaper_burst gauge\n\
            # UNIT shaper_burst bytes\n\
            shaper_burst 7\n\
            # EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP shaper_bytes_total Bytes seen.\n\
             # TYPE shaper_bytes_total counter\n\
             shaper_bytes_total{port=\"80\"} 5\n\
             # HELP shaper_burst Burst.\n\
             # TYPE shaper_burst gauge\n\
             shaper_burst 7\n"
        );
    }

    #[test]
    fn unknown_becomes_untyped() {
        assert_eq!(
            to_prometheus_text("# TYPE x unknown\nx 1\n# EOF\n"),
            "# TYPE x untyped\nx 1\n"
        );
    }
}
