//! The Kubernetes manifests of `deploy/kubernetes/`: rendered with `kubectl kustomize` as
//! `kubectl apply -k` would, then every object validated — the built-in kinds by
//! kubernetes-validate (PyPI) against the schemas of a current Kubernetes release, strictly (an
//! unknown field fails); the PodMonitor, a custom resource it has no schema for, against
//! `podmonitor.schema.json` with the jsonschema library kubernetes-validate brings.
//!
//! kubernetes-validate is installed once into a virtualenv in the cache (beside bpf-linker);
//! its schemas ship inside the package, so later runs work offline.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow, bail};

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
    Ok(())
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
