//! Where the metrics endpoint listens (`--metrics-addr`, `metrics_addr`): a setting the config
//! file reads and the telemetry layer serves.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    str::FromStr,
};

/// Where `/metrics` listens unless told otherwise: loopback only, so that a daemon on an edge
/// node does not publish its ports and process names to the world by default. 19350 is outside
/// the 9100-9999 range of the Prometheus exporter port registry, which is fully allocated.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 19350));

/// `--metrics-addr`: an address to serve `/metrics` on, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    At(SocketAddr),
}

impl FromStr for MetricsAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Self::Off);
        }
        text.parse().map(Self::At).map_err(|_| {
            format!(
                "'{text}' is not ADDR:PORT (e.g. 127.0.0.1:19350, 0.0.0.0:19350, [::]:19350) \
                 or off"
            )
        })
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::At(addr) => write!(f, "{addr}"),
        }
    }
}
