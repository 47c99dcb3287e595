//! The Kubernetes manifests of `deploy/kubernetes/`: rendered with `kubectl kustomize` as
//! `kubectl apply -k` would, then every object validated — the built-in kinds by
//! kubernetes-validate (PyPI) against the schemas of a current Kubernetes release, strictly (an
//! unknown field fails); the PodMonitor, a custom resource it has no schema for, against
//! `podmonitor.schema.json` with the jsonschema library kubernetes-validate brings. Then the
//! doors of the daemon's metrics endpoint, which answers anyone who reaches it: the daemon
//! listens on the node's loopback only, and kube-rbac-proxy, the pod's one open port, forwards
//! authorized scrapes of /metrics and nothing else (`metrics_doors`).
//!
//! kubernetes-validate is installed once into a virtualenv in the cache (beside bpf-linker);
//! its schemas ship inside the package, so later runs work offline.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

use crate::{bootstrap::cache_root, check, target_dir, workspace_root};

/// The kubernetes-validate release, and the Kubernetes release whose schemas it validates
/// against (the newest it ships).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const KUBERNETES_VERSION: &str = "1.37.0";

/// The manifests, relative to the workspace root.
const MANIFESTS: &str = "deploy/kubernetes";

/// Checks a PodMonitor document (YAML on stdin, as kustomize renders it) against the schema
/// named by argv[1].
const PODMONITOR_CHECK: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
found = 0
for doc in yaml.safe_load_all(sys.stdin):
    if doc and doc.get("kind") == "PodMonitor":
        jsonschema.validate(doc, schema)
        found += 1
        print("PodMonitor/%s: valid" % doc["metadata"]["name"])
sys.exit(0 if found == 1 else "expected one PodMonitor, found %d" % found)
"#;

/// The rendered documents (YAML on stdin) as one JSON array, for the checks written in Rust.
const AS_JSON: &str = r#"
import json, sys, yaml
json.dump([doc for doc in yaml.safe_load_all(sys.stdin) if doc], sys.stdout)
"#;

/// The only path the proxy may forward: the daemon's /healthz and /readyz are for the kubelet,
/// on loopback.
const PROXIED_PATH: &str = "/metrics";

pub fn check_manifests() -> anyhow::Result<()> {
    eprintln!("xtask: kubectl kustomize {MANIFESTS}");
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(workspace_root().join(MANIFESTS))
        .output()
        .context("running kubectl")?;
    if !rendered.status.success() {
        bail!(
            "kubectl kustomize {MANIFESTS}: {}\n{}",
            rendered.status,
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
    let dir = target_dir()?.join("check-deploy");
    fs::create_dir_all(&dir)?;
    let file = dir.join("kubernetes.yaml");
    fs::write(&file, &rendered.stdout)?;
    let kinds: Vec<String> = String::from_utf8_lossy(&rendered.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect();

    let venv = install_kubernetes_validate()?;
    let validated = Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .context("running kubernetes-validate")?;
    let said = String::from_utf8_lossy(&validated.stdout);
    for line in said.lines() {
        eprintln!("kubernetes-validate: {line}");
    }
    // One "passed" per built-in object; the only tolerated warning is the missing schema of
    // the custom resource, checked below.
    let passed = said
        .lines()
        .filter(|line| line.contains(" passed for "))
        .count();
    let unexpected: Vec<&str> = said
        .lines()
        .filter(|line| !line.contains(" passed for "))
        .filter(|line| !line.contains("Couldn't find schema for kind PodMonitor"))
        .collect();
    let built_in = kinds.iter().filter(|kind| *kind != "PodMonitor").count();
    if !validated.status.success() || !unexpected.is_empty() || passed != built_in {
        bail!(
            "kubernetes-validate: {} ({passed} of {built_in} objects passed)\n{}{}",
            validated.status,
            unexpected.join("\n"),
            String::from_utf8_lossy(&validated.stderr)
        );
    }

    let schema = workspace_root().join("xtask/src/podmonitor.schema.json");
    check(
        Command::new(venv.join("bin/python"))
            .arg("-c")
            .arg(PODMONITOR_CHECK)
            .arg(&schema)
            .stdin(fs::File::open(&file)?),
    )?;

    let json = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(AS_JSON)
        .stdin(fs::File::open(&file)?)
        .output()
        .context("running python")?;
    if !json.status.success() {
        bail!(
            "reading the rendered manifests: {}\n{}",
            json.status,
            String::from_utf8_lossy(&json.stderr)
        );
    }
    let docs: Vec<Value> =
        serde_json::from_slice(&json.stdout).context("reading the rendered manifests")?;
    let doors = metrics_doors(&docs)?;
    eprintln!(
        "xtask: metrics: the daemon on {} only; kube-rbac-proxy on the node's port {}, \
         forwarding {PROXIED_PATH} alone, over TLS, with a token",
        doors.daemon, doors.proxy_port
    );
    Ok(())
}

/// Where the metrics are served: the daemon's address, the proxy's port on the node.
#[derive(Debug, PartialEq)]
struct Doors {
    daemon: SocketAddr,
    proxy_port: u16,
}

/// Checks that nothing but kube-rbac-proxy exposes the daemon's metrics endpoint, and that the
/// proxy exposes only /metrics, to a token, over TLS. With hostNetwork every address the pod
/// listens on is the node's, and the endpoint answers without authentication.
fn metrics_doors(docs: &[Value]) -> anyhow::Result<Doors> {
    let toml = object(docs, "ConfigMap", "shaper-config")?["data"]["shaper.toml"]
        .as_str()
        .context("ConfigMap/shaper-config has no shaper.toml")?;
    let daemon = loopback_metrics_addr(toml)?;

    let containers = object(docs, "DaemonSet", "shaper")?["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("DaemonSet/shaper has no containers")?;
    let container = |name: &str| {
        containers
            .iter()
            .find(|container| container["name"] == name)
            .with_context(|| format!("DaemonSet/shaper has no container {name}"))
    };

    let shaper = container("shaper")?;
    if shaper["ports"]
        .as_array()
        .is_some_and(|ports| !ports.is_empty())
    {
        bail!(
            "the shaper container declares a port: with hostNetwork it is the node's, and the \
             daemon's endpoint has no authentication (scrapes go through kube-rbac-proxy)"
        );
    }
    if let Some(arg) = strings(&shaper["args"])
        .into_iter()
        .find(|arg| arg.starts_with("--metrics-addr"))
    {
        bail!("the shaper container's `{arg}` overrides the ConfigMap's metrics_addr");
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &shaper[probe]["httpGet"];
        if get.is_null() {
            continue;
        }
        let host = get["host"]
            .as_str()
            .and_then(|host| host.parse::<IpAddr>().ok());
        if host != Some(daemon.ip()) || get["port"].as_u64() != Some(u64::from(daemon.port())) {
            bail!(
                "the shaper container's {probe} does not go to {daemon}, where the daemon listens"
            );
        }
    }

    let proxy = container("kube-rbac-proxy")?;
    let flags: Vec<(&str, Option<&str>)> = strings(&proxy["args"])
        .into_iter()
        .map(|arg| match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (arg, None),
        })
        .collect();
    let values = |name: &str| -> anyhow::Result<Vec<&str>> {
        flags
            .iter()
            .filter(|(flag, _)| *flag == name)
            .map(|(_, value)| value.with_context(|| format!("kube-rbac-proxy: write {name}=VALUE")))
            .collect()
    };
    for bypass in ["--insecure-listen-address", "--ignore-paths"] {
        if !values(bypass)?.is_empty() {
            bail!("kube-rbac-proxy: {bypass} serves without authentication");
        }
    }
    let allowed: Vec<&str> = values("--allow-paths")?
        .into_iter()
        .flat_map(|paths| paths.split(','))
        .collect();
    if allowed != [PROXIED_PATH] {
        bail!(
            "kube-rbac-proxy must allow {PROXIED_PATH} alone (--allow-paths={PROXIED_PATH}), \
             not {allowed:?}: without it every path of the daemon is forwarded"
        );
    }
    let upstream = format!("http://{daemon}/");
    if values("--upstream")? != [upstream.as_str()] {
        bail!("kube-rbac-proxy's --upstream must be {upstream}, the ConfigMap's metrics_addr");
    }
    let proxy_port = proxy["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|port| port["name"] == "metrics"))
        .and_then(|port| port["containerPort"].as_u64())
        .and_then(|port| u16::try_from(port).ok())
        .context("the kube-rbac-proxy container has no port named metrics")?;
    let listen = values("--secure-listen-address")?;
    let listen_port = listen
        .first()
        .and_then(|address| address.rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok());
    if listen.len() != 1 || listen_port != Some(proxy_port) {
        bail!(
            "kube-rbac-proxy's --secure-listen-address must be on its port `metrics`, {proxy_port}"
        );
    }
    let security = &proxy["securityContext"];
    if security["runAsNonRoot"] != true
        || security["allowPrivilegeEscalation"] != false
        || security["capabilities"]["add"]
            .as_array()
            .is_some_and(|added| !added.is_empty())
    {
        bail!(
            "the kube-rbac-proxy container must run as non-root, without privilege escalation \
             and without added capabilities"
        );
    }

    for endpoint in object(docs, "PodMonitor", "shaper")?["spec"]["podMetricsEndpoints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let https = endpoint["scheme"]
            .as_str()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https"));
        if endpoint["port"] != "metrics" || !https || endpoint["authorization"].is_null() {
            bail!(
                "PodMonitor/shaper must scrape the port `metrics` with scheme https and an \
                 authorization token (kube-rbac-proxy)"
            );
        }
    }

    for policy in docs.iter().filter(|doc| doc["kind"] == "NetworkPolicy") {
        for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
            let ports = rule["ports"].as_array().filter(|ports| !ports.is_empty());
            let Some(ports) = ports else {
                bail!(
                    "NetworkPolicy/{} admits every port: only the proxy's, {proxy_port}, is open",
                    policy["metadata"]["name"]
                );
            };
            for port in ports {
                if port["port"] != proxy_port && port["port"] != "metrics" {
                    bail!(
                        "NetworkPolicy/{} admits port {}: only the proxy's, {proxy_port}, is open",
                        policy["metadata"]["name"],
                        port["port"]
                    );
                }
            }
        }
    }
    Ok(Doors { daemon, proxy_port })
}

/// The rendered object of this kind and name.
fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .with_context(|| format!("{MANIFESTS} has no {kind}/{name}"))
}

/// The strings of a JSON array (an absent field: none).
fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The `metrics_addr` of the ConfigMap's shaper.toml, which must be on loopback: the endpoint
/// has no authentication, and with hostNetwork any other address is the node's, open to every
/// host that reaches it. It must be set, not left to the daemon's default (loopback too):
/// kube-rbac-proxy's --upstream names it. A top-level key, so the lines after the first table
/// header (`[[limit]]`) do not count.
fn loopback_metrics_addr(toml: &str) -> anyhow::Result<SocketAddr> {
    let mut set = None;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            break;
        }
        let Some(value) = line
            .strip_prefix("metrics_addr")
            .and_then(|rest| rest.trim_start().strip_prefix('='))
            .map(str::trim)
        else {
            continue;
        };
        let unquoted = ['"', '\'']
            .into_iter()
            .find_map(|quote| value.strip_prefix(quote)?.split_once(quote))
            .map(|(inner, _)| inner)
            .with_context(|| format!("shaper.toml: metrics_addr = {value} is not a string"))?;
        set = Some(unquoted);
    }
    let text = set.context(
        "the ConfigMap's shaper.toml sets no metrics_addr: set the loopback address that \
         kube-rbac-proxy's --upstream names (127.0.0.1:19350)",
    )?;
    let addr: SocketAddr = text.parse().map_err(|_| {
        anyhow!(
            "the ConfigMap's metrics_addr = \"{text}\" is not ADDR:PORT: kube-rbac-proxy needs it"
        )
    })?;
    if !addr.ip().is_loopback() {
        bail!(
            "the ConfigMap's metrics_addr = \"{addr}\" is not a loopback address: the endpoint has \
             no authentication, and with hostNetwork it would be open on the node; Prometheus \
             scrapes through kube-rbac-proxy (daemonset.yaml), which forwards to 127.0.0.1:19350"
        );
    }
    Ok(addr)
}

/// The virtualenv holding kubernetes-validate, made on first use.
fn install_kubernetes_validate() -> anyhow::Result<PathBuf> {
    let venv = cache_root()
        .ok_or_else(|| anyhow!("no cache directory: set HOME or SHAPER_CACHE_DIR"))?
        .join("kubernetes-validate")
        .join(KUBERNETES_VALIDATE_VERSION);
    if venv.join("bin/kubernetes-validate").is_file() {
        return Ok(venv);
    }
    eprintln!(
        "xtask: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    // A half-made virtualenv from an interrupted run would be reused forever: start over.
    let _ = fs::remove_dir_all(&venv);
    check(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("python3 -m venv (Debian package `python3-venv`)")?;
    check(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!(
                "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
            )),
    )?;
    Ok(venv)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The shaper.toml of the shipped ConfigMap, as the kubelet writes it into the pod.
    fn shipped_config() -> String {
        let manifest =
            fs::read_to_string(workspace_root().join(MANIFESTS).join("configmap.yaml")).unwrap();
        manifest
            .lines()
            .skip_while(|line| *line != "  shaper.toml: |")
            .skip(1)
            .map(|line| line.strip_prefix("    ").unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_shipped_config_keeps_the_endpoint_on_loopback() {
        assert_eq!(
            loopback_metrics_addr(&shipped_config()).unwrap(),
            "127.0.0.1:19350".parse().unwrap()
        );
    }

    #[test]
    fn an_address_other_hosts_reach_is_refused() {
        for open in ["0.0.0.0:19350", "[::]:19350", "10.1.2.3:19350"] {
            let config = shipped_config().replace("127.0.0.1:19350", open);
            let error = loopback_metrics_addr(&config).unwrap_err().to_string();
            assert!(error.contains("not a loopback address"), "{open}: {error}");
        }
        for closed in [
            "metrics_addr = \"[::1]:19350\"",
            "metrics_addr='127.0.0.2:19350'  # a comment",
        ] {
            assert!(loopback_metrics_addr(closed).is_ok(), "{closed}");
        }
    }

    #[test]
    fn the_address_must_be_set_at_the_top_level() {
        for config in [
            "# metrics_addr = \"127.0.0.1:19350\"\n",
            "[[limit]]\nmetrics_addr = \"127.0.0.1:19350\"\n",
            "metrics_addr_x = \"127.0.0.1:19350\"\n",
        ] {
            let error = loopback_metrics_addr(config).unwrap_err().to_string();
            assert!(error.contains("sets no metrics_addr"), "{config}: {error}");
        }
        let error = loopback_metrics_addr("metrics_addr = \"off\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not ADDR:PORT"), "{error}");
        // Set twice (TOML refuses that, the daemon would not start): the open one is not missed.
        let twice = "metrics_addr = \"127.0.0.1:19350\"\nmetrics_addr = \"0.0.0.0:19350\"\n";
        assert!(loopback_metrics_addr(twice).is_err());
    }

    /// The objects `metrics_doors` reads, as the shipped manifests render them.
    fn rendered() -> Vec<Value> {
        vec![
            json!({
                "kind": "ConfigMap",
                "metadata": {"name": "shaper-config"},
                "data": {"shaper.toml": "metrics_addr = \"127.0.0.1:19350\"\n"},
            }),
            json!({
                "kind": "DaemonSet",
                "metadata": {"name": "shaper"},
                "spec": {"template": {"spec": {"containers": [
                    {
                        "name": "shaper",
                        "args": ["run", "--config", "/etc/shaper/shaper.toml", "--persist"],
                        "livenessProbe": {"httpGet": {"host": "127.0.0.1", "port": 19350}},
                        "readinessProbe": {"httpGet": {"host": "127.0.0.1", "port": 19350}},
                    },
                    {
                        "name": "kube-rbac-proxy",
                        "args": [
                            "--secure-listen-address=[$(IP)]:19351",
                            "--upstream=http://127.0.0.1:19350/",
                            "--allow-paths=/metrics",
                        ],
                        "ports": [{"name": "metrics", "containerPort": 19351}],
                        "securityContext": {
                            "runAsNonRoot": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    },
                ]}}},
            }),
            json!({
                "kind": "PodMonitor",
                "metadata": {"name": "shaper"},
                "spec": {"podMetricsEndpoints": [{
                    "port": "metrics",
                    "scheme": "https",
                    "authorization": {"credentials": {"name": "t", "key": "token"}},
                }]},
            }),
            json!({
                "kind": "NetworkPolicy",
                "metadata": {"name": "shaper-metrics"},
                "spec": {"ingress": [{"ports": [{"protocol": "TCP", "port": 19351}]}]},
            }),
        ]
    }

    /// `rendered()` with one field of one object changed.
    fn changed(kind: &str, pointer: &str, value: Value) -> Vec<Value> {
        let mut docs = rendered();
        let doc = docs.iter_mut().find(|doc| doc["kind"] == kind).unwrap();
        *doc.pointer_mut(pointer).unwrap() = value;
        docs
    }

    const PROXY: &str = "/spec/template/spec/containers/1";

    #[test]
    fn the_proxy_is_the_only_door() {
        assert_eq!(
            metrics_doors(&rendered()).unwrap(),
            Doors {
                daemon: "127.0.0.1:19350".parse().unwrap(),
                proxy_port: 19351
            }
        );
        let refused = [
            (
                changed(
                    "DaemonSet",
                    &format!("{PROXY}/args/2"),
                    json!("--allow-paths=/metrics,/healthz"),
                ),
                "allow /metrics alone",
            ),
            (
                changed(
                    "DaemonSet",
                    &format!("{PROXY}/args/2"),
                    json!("--tls-min-version=VersionTLS13"),
                ),
                "allow /metrics alone",
            ),
            (
                changed(
                    "DaemonSet",
                    &format!("{PROXY}/args/2"),
                    json!("--ignore-paths=/metrics"),
                ),
                "without authentication",
            ),
            (
                changed(
                    "DaemonSet",
                    &format!("{PROXY}/args/1"),
                    json!("--upstream=http://127.0.0.1:9/"),
                ),
                "--upstream must be http://127.0.0.1:19350/",
            ),
            (
                changed(
                    "DaemonSet",
                    &format!("{PROXY}/args/0"),
                    json!("--secure-listen-address=[$(IP)]:19350"),
                ),
                "--secure-listen-address",
            ),
            (
                changed(
                    "DaemonSet",
                    &format!("{PROXY}/securityContext/capabilities"),
                    json!({"add": ["NET_ADMIN"]}),
                ),
                "without added capabilities",
            ),
            (
                changed(
                    "DaemonSet",
                    "/spec/template/spec/containers/0/args/1",
                    json!("--metrics-addr=0.0.0.0:19350"),
                ),
                "overrides the ConfigMap",
            ),
            (
                changed(
                    "DaemonSet",
                    "/spec/template/spec/containers/0/readinessProbe/httpGet/host",
                    json!("10.0.0.1"),
                ),
                "readinessProbe",
            ),
            (
                changed(
                    "ConfigMap",
                    "/data/shaper.toml",
                    json!("metrics_addr = \"0.0.0.0:19350\""),
                ),
                "not a loopback address",
            ),
            (
                changed(
                    "PodMonitor",
                    "/spec/podMetricsEndpoints/0/scheme",
                    json!("http"),
                ),
                "scheme https",
            ),
            (
                changed(
                    "NetworkPolicy",
                    "/spec/ingress/0/ports/0/port",
                    json!(19350),
                ),
                "admits port 19350",
            ),
            (
                changed("NetworkPolicy", "/spec/ingress/0/ports", json!([])),
                "admits every port",
            ),
        ];
        for (docs, expected) in refused {
            let error = metrics_doors(&docs).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "expected `{expected}` in: {error}"
            );
        }

        let mut ported = rendered();
        ported[1]["spec"]["template"]["spec"]["containers"][0]["ports"] =
            json!([{"name": "metrics", "containerPort": 19350}]);
        let error = metrics_doors(&ported).unwrap_err().to_string();
        assert!(error.contains("declares a port"), "{error}");
    }
}
