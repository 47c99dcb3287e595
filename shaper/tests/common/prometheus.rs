//! A real Prometheus server (Debian's package) on loopback inside a test namespace, scraping the
//! daemon every second; killed and its data removed on drop.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use super::{
    metrics::get,
    netns::{InNamespace as _, Namespace},
    temp_dir::TempDir,
};

/// Where the server listens inside its namespace (the daemon's metrics are on 19350).
const LISTEN: &str = "127.0.0.1:19390";

pub struct Prometheus {
    child: Child,
    dir: TempDir,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts `binary` in `ns`, scraping `target` every second; `tag` names its directory.
    pub fn start(ns: &Namespace, binary: &Path, target: SocketAddr, tag: &str) -> Self {
        let dir = TempDir::new(&format!("prometheus-{tag}"));
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: shaper\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr: SocketAddr = LISTEN.parse().expect("an address");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = ns
            .command(binary.to_str().expect("a UTF-8 path"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Self { child, dir, addr }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The result vector of an instant query through the HTTP API (which must say `success`);
    /// `None` while the server does not accept connections yet.
    pub fn query(&self, ns: &Namespace, promql: &str) -> Option<Vec<serde_json::Value>> {
        let up =
            ns.within(|| TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok());
        if !up {
            return None;
        }
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let response = get(ns, self.addr, &path, None);
        let json: serde_json::Value = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("{e}: {}", response.body));
        assert_eq!(json["status"], "success", "{promql}: {json}");
        Some(
            json["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` as a URL query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
