//! What a TCP sender's kernel says about its connections: the namespace's segment counters
//! (shaper-testbed's [`Segments`]) and each socket's smoothed round trip (`rtt:` of `ss -tin`).
//! Parsing is pure and unit-tested; reading goes through the namespace.

use crate::sys::Namespace;

pub use shaper_testbed::tcp_segments::Segments;

/// The smoothed round trips (ms) of the established TCP sockets of `ns` with local or remote
/// port `port`, from `ss -tin`.
pub fn smoothed_rtts_ms(ns: &Namespace, port: u16) -> anyhow::Result<Vec<f64>> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = ns.run("ss", &["-Htin", "state", "established", &filter])?;
    Ok(parse_rtts_ms(&out))
}

/// Every `rtt:SRTT/RTTVAR` of `ss -ti` output: SRTT in milliseconds, one per socket.
pub fn parse_rtts_ms(ss: &str) -> Vec<f64> {
    ss.split_whitespace()
        .filter_map(|word| word.strip_prefix("rtt:"))
        .filter_map(|value| value.split('/').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_round_trips_are_the_smoothed_value_of_each_socket() {
        let ss = "ESTAB 0 2896 198.18.3.2:40788 198.18.3.1:5401\n\t cubic wscale:7,7 \
            rto:201 rtt:0.052/0.013 ato:40 mss:1460 cwnd:10 bytes_sent:1234\n\
            ESTAB 0 0 198.18.3.2:40790 198.18.3.1:5401\n\t cubic rto:304 rtt:103.5/1.25 \
            minrtt:0.02 mss:1460\n";
        assert_eq!(parse_rtts_ms(ss), vec![0.052, 103.5]);
        assert!(parse_rtts_ms("").is_empty());
    }
}
