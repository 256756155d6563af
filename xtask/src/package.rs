//! `cargo xtask package`: the Debian package (cargo-deb), its man pages and
//! completions (from the release binary's hidden `generate` command), the
//! fleet files that derive from the repo (the PrometheusRule), and checks:
//! the .deb's contents, the Kubernetes manifests against Kubernetes'
//! schemas. `--install-test` then installs the .deb into a minimal Debian 12
//! root (debootstrap, cached under target/) and runs `audit` and `watch`
//! there; `--podman` builds and runs the container image.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    build::release_binary,
    util::{cargo, exec, path_env, root},
};

/// Pinned: built with the machine's rustc.
const CARGO_DEB_VERSION: &str = "3.8.0";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate";
/// The Kubernetes release whose schemas the manifests are checked against.
const KUBERNETES_VERSION: &str = "1.30";

pub struct Options {
    pub install_test: bool,
    pub podman: bool,
}

fn dir() -> PathBuf {
    root().join("target/package")
}

/// Runs `cmd`, killing it after `timeout`; returns its output.
pub fn run_with_deadline(cmd: &mut Command, timeout: Duration) -> Result<std::process::Output> {
    eprintln!("xtask: {cmd:?} (at most {timeout:?})");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    // Drain the pipes beside the wait, so a chatty command cannot block on them.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not end within {timeout:?}");
        }
        sleep(Duration::from_millis(100));
    };
    Ok(std::process::Output { status, stdout: o.join().unwrap_or_default(), stderr: e.join().unwrap_or_default() })
}

fn checked(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = run_with_deadline(cmd, timeout)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

fn has_cargo_deb() -> bool {
    Command::new("cargo").args(["deb", "--version"]).env("PATH", path_env()).output().is_ok_and(|o| o.status.success())
}

/// cargo-deb from crates.io, and kubernetes-validate from PyPI in a venv
/// under target/ (called by `cargo xtask setup` too).
pub fn setup() -> Result<()> {
    if !has_cargo_deb() {
        eprintln!("setup: installing cargo-deb {CARGO_DEB_VERSION}");
        exec(
            Command::new("cargo")
                .args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB_VERSION])
                .env("PATH", path_env()),
        )?;
    }
    let venv = root().join("target/venv/kubernetes-validate");
    if !venv.join("bin").join(KUBERNETES_VALIDATE).exists() {
        eprintln!("setup: installing kubernetes-validate (PyPI) into {}", venv.display());
        exec(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        exec(Command::new(venv.join("bin/pip")).args(["install", "-q", KUBERNETES_VALIDATE]))?;
    }
    Ok(())
}

/// Man pages (gzipped, as Debian installs them) and completions into
/// target/package/gen, from the binary that goes into the package.
fn generate(bin: &Path) -> Result<()> {
    let gen = dir().join("gen");
    if gen.exists() {
        std::fs::remove_dir_all(&gen)?;
    }
    checked(Command::new(bin).arg("generate").arg(&gen), Duration::from_secs(30))?;
    for page in std::fs::read_dir(gen.join("man"))? {
        exec(Command::new("gzip").arg("-9n").arg(page?.path()))?;
    }
    Ok(())
}

/// What the .deb must hold, beside the binary.
const EXPECTED: &[&str] = &[
    "./usr/bin/reclaimscope",
    "./usr/share/man/man1/reclaimscope.1.gz",
    "./usr/share/man/man1/reclaimscope-watch.1.gz",
    "./usr/share/man/man1/reclaimscope-monitor.1.gz",
    "./usr/share/man/man1/reclaimscope-record.1.gz",
    "./usr/share/man/man1/reclaimscope-report.1.gz",
    "./usr/share/man/man1/reclaimscope-probes.1.gz",
    "./usr/share/man/man1/reclaimscope-audit.1.gz",
    "./usr/share/man/man1/reclaimscope-exec.1.gz",
    "./usr/share/bash-completion/completions/reclaimscope",
    "./usr/share/zsh/vendor-completions/_reclaimscope",
    "./usr/share/fish/vendor_completions.d/reclaimscope.fish",
    "./usr/lib/systemd/system/reclaimscope.service",
    "./usr/share/doc/reclaimscope/README.md",
    "./usr/share/doc/reclaimscope/deployment.md",
    "./usr/share/doc/reclaimscope/runbook.md",
    "./usr/share/doc/reclaimscope/json.md",
    "./usr/share/doc/reclaimscope/examples/io-flusher.conf.example",
    "./usr/share/reclaimscope/prometheus/alerts.yml",
    "./usr/share/reclaimscope/grafana/reclaimscope.json",
];

fn check_contents(deb: &Path) -> Result<()> {
    let listing = checked(Command::new("dpkg-deb").arg("-c").arg(deb), Duration::from_secs(60))?;
    let paths: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    let missing: Vec<&&str> = EXPECTED.iter().filter(|p| !paths.iter().any(|q| q == *p)).collect();
    if !missing.is_empty() {
        bail!("{} lacks {missing:?}; it holds:\n{listing}", deb.display());
    }
    Ok(())
}

/// The DaemonSet (with its Namespace and Service) against Kubernetes'
/// schemas. The ServiceMonitor and PrometheusRule are custom resources of
/// the Prometheus Operator, for which kubernetes-validate has no schema:
/// they are checked for their apiVersion and kind here, and the
/// PrometheusRule's rules are alerts.yml's (checked by promtool, and kept
/// identical by `fleet::prometheus_rule`).
pub fn validate_manifests() -> Result<()> {
    let kv = root().join("target/venv/kubernetes-validate/bin").join(KUBERNETES_VALIDATE);
    let k8s = root().join("deploy/kubernetes");
    let out = checked(
        Command::new(&kv).args(["--strict", "-k", KUBERNETES_VERSION]).arg(k8s.join("daemonset.yaml")),
        Duration::from_secs(120),
    )?;
    eprint!("{out}");
    for (file, kind) in [("servicemonitor.yaml", "ServiceMonitor"), ("prometheusrule.yaml", "PrometheusRule")] {
        let text = std::fs::read_to_string(k8s.join(file))?;
        if !(text.contains("apiVersion: monitoring.coreos.com/v1\n") && text.contains(&format!("kind: {kind}\n"))) {
            bail!("{file} is not a monitoring.coreos.com/v1 {kind}");
        }
        eprintln!("xtask: {file}: a {kind} (custom resource: no Kubernetes schema, checked by kind)");
    }
    Ok(())
}

/// Builds the .deb and returns its path.
pub fn build() -> Result<PathBuf> {
    setup()?;
    let bin = release_binary()?;
    generate(&bin)?;
    crate::fleet::write_prometheus_rule()?;
    let out = checked(
        cargo().args(["deb", "-p", "probe-user", "--no-build", "--output"]).arg(root().join("target/debian")),
        Duration::from_secs(600),
    )?;
    let deb =
        PathBuf::from(out.lines().rfind(|l| l.trim_end().ends_with(".deb")).context("cargo deb named no .deb")?.trim());
    check_contents(&deb)?;
    let size = std::fs::metadata(&deb)?.len();
    eprintln!("xtask: {} ({:.1} MiB)", deb.display(), size as f64 / (1 << 20) as f64);
    validate_manifests()?;
    Ok(deb)
}

pub fn run(opts: &Options) -> Result<()> {
    let deb = build()?;
    if opts.install_test {
        crate::debroot::install_test(&deb)?;
    }
    if opts.podman {
        crate::debroot::podman_test(&deb)?;
    }
    Ok(())
}
