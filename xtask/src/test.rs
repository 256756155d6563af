//! `cargo xtask test`: what CI runs. Set-up, build, unit tests, the kernel
//! integration tests one at a time on this machine's kernel (they build real
//! storage stacks), the same tests inside VMs booted with Debian's kernels,
//! and a short fuzz run of each fuzz target.

use std::{fmt::Write as _, process::Command, time::Duration, time::Instant};

use anyhow::{bail, Context, Result};

use crate::{
    build::{ebpf_object, run_build},
    setup::run_setup,
    util::{cargo, exec, path_env, root},
    vm,
};

/// The integration test binaries whose outcome depends on the kernel they
/// run on, and the name filter each gets on a kernel that is not the first:
/// there only what differs by kernel version runs again (attach choices,
/// reclaim and detection through them, ublk from 6.6 on). The rest
/// (command-line errors, fixtures, metrics and trace files, which the
/// kernel does not shape) runs on this machine's kernel only.
const KERNEL_TESTS: &[(&str, Scope)] = &[
    ("probes", Scope::Every),
    ("reclaim_events", Scope::Every),
    ("detection", Scope::Every),
    ("servicers", Scope::ElsewhereOnly("ublk")),
    ("stacks", Scope::ElsewhereOnly("ublk")),
    ("audit", Scope::First),
];

/// Where a kernel test binary runs in the VM suite.
#[derive(Clone, Copy)]
enum Scope {
    Every,
    /// On the first kernel only.
    First,
    /// Whole on the first kernel, only the tests matching this filter on the others.
    ElsewhereOnly(&'static str),
}

/// The kernels `cargo xtask test` boots by default, and with `--kernels all`.
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];
pub const ALL_KERNELS: &[&str] = &["5.10", "6.1", "6.12", "sid", "6.1-cloud", "6.12-cloud", "6.12-rt"];

/// Memory a fuzz target may reach: `report`'s own bound (256 MiB,
/// docs/postmortem.md) plus libFuzzer's corpus and bookkeeping. An input
/// that takes more is a finding, like a panic (docs/fuzzing.md).
const FUZZ_RSS_LIMIT_MB: u32 = 512;

fn fuzz_smoke(seconds: u64) -> Result<()> {
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", path_env())
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("xtask: installing cargo-fuzz");
        exec(
            Command::new("cargo")
                .args(["install", "cargo-fuzz", "--locked", "--version", "0.13.1"])
                .env("PATH", path_env()),
        )?;
    }
    let dir = root().join("fuzz");
    for target in ["trace_reader", "ftrace_import", "replay"] {
        // libFuzzer refuses a corpus directory that does not exist.
        std::fs::create_dir_all(dir.join("corpus").join(target))?;
        let (corpus, seeds, dict) =
            (format!("corpus/{target}"), format!("seeds/{target}"), format!("-dict={target}.dict"));
        exec(
            Command::new("cargo")
                .args([
                    "+nightly",
                    "fuzz",
                    "run",
                    target,
                    &corpus,
                    &seeds,
                    "--",
                    &format!("-max_total_time={seconds}"),
                    &format!("-rss_limit_mb={FUZZ_RSS_LIMIT_MB}"),
                    &dict,
                ])
                .current_dir(&dir)
                .env("PATH", path_env())
                .env("RECLAIMSCOPE_BPF_OBJ", ebpf_object()),
        )?;
    }
    Ok(())
}

/// Builds the integration tests without running them; returns the
/// executables of the kernel-dependent ones, by name.
fn kernel_test_binaries(obj: &std::path::Path) -> Result<Vec<(String, String)>> {
    let out = cargo()
        .args(["test", "--release", "--workspace", "--no-run", "--message-format=json", "--test", "*"])
        .env("RECLAIMSCOPE_BPF_OBJ", obj)
        .output()
        .context("cannot build the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) else { continue };
        if v["target"]["kind"][0] == "test" && KERNEL_TESTS.iter().any(|(t, _)| *t == name) {
            bins.push((name.to_owned(), exe.to_owned()));
        }
    }
    for (t, _) in KERNEL_TESTS {
        if !bins.iter().any(|(n, _)| n == t) {
            bail!("no test binary {t}");
        }
    }
    Ok(bins)
}

/// Where each kernel's `probes.json` and `results.jsonl` are kept.
pub fn report_dir(kernel: &str) -> std::path::PathBuf {
    root().join("target/vm/report").join(kernel)
}

fn save_report(kernel: &str, out: &std::path::Path) -> Result<()> {
    let dir = report_dir(kernel);
    std::fs::create_dir_all(&dir)?;
    for f in ["probes.json", "costs.json", "results.jsonl", "missing-modules"] {
        // A file this run did not write must not outlive an older run's.
        let _ = std::fs::remove_file(dir.join(f));
        if out.join(f).exists() {
            std::fs::copy(out.join(f), dir.join(f)).with_context(|| format!("keeping {f}"))?;
        }
    }
    Ok(())
}

pub struct SuiteOptions {
    /// Also measure every hook implementation's cost (`probes --measure`).
    pub measure: bool,
    pub breadth: Breadth,
}

/// How many of the kernel tests each kernel runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Breadth {
    /// Every test on the first kernel, the scoped ones on the others
    /// (`cargo xtask test`).
    FirstWhole,
    /// Every test on every kernel (`cargo xtask kernels`).
    Whole,
    /// The scoped ones on every kernel (`cargo xtask kernels --quick`).
    Scoped,
}

/// Runs the kernel-dependent tests inside a VM of each kernel, one after
/// the other (they share the machine's two cores), keeping each kernel's
/// probes, costs and scenario results under target/vm/report/.
pub fn vm_suite(kernels: &[&str], obj: &std::path::Path, opts: &SuiteOptions) -> Result<()> {
    let bins = kernel_test_binaries(obj)?;
    // Each kernel's choices and scenario outcomes, for docs/kernels.md.
    let bin = root().join("target/release/reclaimscope");
    let mut probes = format!("{} probes --json > \"$RECLAIMSCOPE_VM_OUT/probes.json\"", bin.display());
    if opts.measure {
        let _ = write!(
            probes,
            "; {} probes --measure --json -- {} workload --mb 256 > \"$RECLAIMSCOPE_VM_OUT/costs.json\"",
            bin.display(),
            root().join("target/debug/xtask").display()
        );
    }
    let script = |first: bool| {
        let whole = match opts.breadth {
            Breadth::FirstWhole => first,
            Breadth::Whole => true,
            Breadth::Scoped => false,
        };
        let runs: Vec<String> = bins
            .iter()
            .filter_map(|(name, exe)| {
                let scope = KERNEL_TESTS.iter().find(|(t, _)| t == name).map(|(_, s)| *s).unwrap_or(Scope::Every);
                let filter = match (scope, whole) {
                    (_, true) | (Scope::Every, false) => "",
                    (Scope::First, false) => return None,
                    (Scope::ElsewhereOnly(f), false) => f,
                };
                Some(format!("echo '== {name} {filter}'; {exe} --test-threads=1 {filter} || fail=\"$fail {name}\""))
            })
            .collect();
        format!(
            "export RECLAIMSCOPE_RESULTS=\"$RECLAIMSCOPE_VM_OUT/results.jsonl\"; \
             {probes}; fail=; {}; \
             [ -z \"$fail\" ] || {{ echo \"failed:$fail\"; exit 1; }}",
            runs.join("; ")
        )
    };
    let mut failed = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let cmd = script(i == 0);
        let started = Instant::now();
        let opts = vm::VmOptions {
            kernel: (*k).to_owned(),
            memory: "3G".into(),
            cpus: 2,
            timeout: Duration::from_secs(40 * 60),
        };
        let done = vm::run(&opts, &["sh".into(), "-c".into(), cmd])?;
        let code = done.code;
        save_report(k, &done.out)?;
        eprintln!(
            "xtask: kernel {k}: tests {} in {:.0} s",
            if code == 0 { "passed" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if code != 0 {
            failed.push(*k);
        }
    }
    if !failed.is_empty() {
        bail!("kernel tests failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Formatting and lints, for the whole tree and the eBPF crate.
fn checks(obj: &std::path::Path) -> Result<()> {
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    exec(
        Command::new("cargo").args(["fmt", "--check"]).current_dir(root().join("probe-ebpf")).env("PATH", path_env()),
    )?;
    exec(
        cargo()
            .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
            .env("RECLAIMSCOPE_BPF_OBJ", obj),
    )
}

/// Which parts run: `host` is everything on this machine's kernel.
pub struct Parts<'a> {
    pub host: bool,
    pub fuzz_seconds: u64,
    pub kernels: &'a [&'a str],
}

pub fn run_tests(parts: &Parts) -> Result<()> {
    run_setup()?;
    // Release builds throughout: the emulated guests run the same binaries,
    // several times faster than debug ones.
    run_build(true)?;
    let obj = ebpf_object();
    if parts.host {
        checks(&obj)?;
        exec(cargo().args(["test", "--release", "--workspace", "--lib", "--bins"]).env("RECLAIMSCOPE_BPF_OBJ", &obj))?;
        // Each integration test takes the testbed lock itself.
        exec(
            cargo()
                .args(["test", "--release", "--workspace", "--test", "*", "--", "--test-threads=1"])
                .env("RECLAIMSCOPE_BPF_OBJ", &obj),
        )?;
        // The .deb, installed and run on a minimal Debian 12 root.
        crate::package::run(&crate::package::Options { install_test: true, podman: false })?;
        if parts.fuzz_seconds > 0 {
            fuzz_smoke(parts.fuzz_seconds)?;
        }
    }
    let kernels = parts.kernels;
    if !kernels.is_empty() {
        // The guests have their own locks; this one keeps host stacks (and
        // their CPU use) away while the emulated guests run.
        let _lock = testbed::lock()?;
        vm_suite(kernels, &obj, &SuiteOptions { measure: false, breadth: Breadth::FirstWhole })?;
    }
    eprintln!("xtask: all tests passed");
    Ok(())
}
