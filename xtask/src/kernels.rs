//! `cargo xtask kernels`: the kernel matrix, measured. For this machine's
//! kernel and each VM kernel: which implementation each hook chose and why
//! the better ones were skipped (`probes --json`), what every
//! implementation costs per call under the same workload (`probes
//! --measure`), and what each scenario test saw. Writes docs/kernels.md.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    build::{ebpf_object, run_build},
    setup::run_setup,
    test::{report_dir, vm_suite, Breadth, SuiteOptions},
    util::{cargo, exec, root},
};

/// The matrix's columns: this machine first, then the VM kernels.
const HOST: &str = "host";

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

fn read_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// This machine's column: its probes, its costs, and the scenario tests.
fn host_report(obj: &Path) -> Result<()> {
    let dir = report_dir(HOST);
    fs::create_dir_all(&dir)?;
    let bin = root().join("target/release/reclaimscope");
    let probes = std::process::Command::new(&bin).args(["probes", "--json"]).output()?;
    fs::write(dir.join("probes.json"), probes.stdout)?;
    let costs = std::process::Command::new(&bin)
        .args(["probes", "--measure", "--json", "--"])
        .arg(root().join("target/debug/xtask"))
        .args(["workload", "--mb", "256"])
        .output()?;
    fs::write(dir.join("costs.json"), costs.stdout)?;
    let results = dir.join("results.jsonl");
    let _ = fs::remove_file(&results);
    exec(
        cargo()
            .args(["test", "--release", "-p", "probe-user", "--test", "detection", "--", "--test-threads=1"])
            .env("RECLAIMSCOPE_BPF_OBJ", obj)
            .env("RECLAIMSCOPE_RESULTS", &results),
    )
}

struct Column {
    name: String,
    release: String,
    probes: Option<Value>,
    costs: Option<Value>,
    results: Vec<Value>,
    /// Modules a distro server loads that the guest could not (guest.sh);
    /// None for this machine, whose modules no guest script tried.
    missing_modules: Option<Vec<String>>,
}

fn column(name: &str) -> Column {
    let dir = report_dir(name);
    let results = read_lines(&dir.join("results.jsonl"));
    let release = results.first().and_then(|r| r["kernel"].as_str()).unwrap_or("?").to_owned();
    Column {
        name: name.to_owned(),
        release,
        probes: read_json(&dir.join("probes.json")),
        costs: read_json(&dir.join("costs.json")),
        results,
        missing_modules: (name != HOST && dir.join("probes.json").exists()).then(|| {
            fs::read_to_string(dir.join("missing-modules")).unwrap_or_default().lines().map(str::to_owned).collect()
        }),
    }
}

fn hook_cell(c: &Column, hook: &str) -> String {
    let Some(h) = c.probes.as_ref().and_then(|p| p["hooks"].as_array()?.iter().find(|h| h["hook"] == hook).cloned())
    else {
        return "?".into();
    };
    let mut cell = h["family"].as_str().unwrap_or("**missing**").to_owned();
    if let Some(t) = h["targets"].as_array().and_then(|t| t.first()).and_then(Value::as_str) {
        let _ = write!(cell, " `{t}`");
    }
    if h["lacks"].is_string() {
        cell.push_str(" (limited)");
    }
    cell
}

/// Why the implementations before the chosen one were skipped.
fn skipped_reasons(c: &Column) -> Vec<String> {
    let mut out = Vec::new();
    for h in c.probes.as_ref().and_then(|p| p["hooks"].as_array().cloned()).unwrap_or_default() {
        for s in h["skipped"].as_array().cloned().unwrap_or_default() {
            let reason = s["reason"].as_str().unwrap_or_default();
            if reason == "a better implementation is attached" {
                continue;
            }
            let first = reason.lines().next().unwrap_or_default();
            let short: String = first.chars().take(160).collect();
            out.push(format!(
                "- `{}` {}: {short}",
                h["hook"].as_str().unwrap_or("?"),
                s["family"].as_str().unwrap_or("?")
            ));
        }
        if let Some(l) = h["lacks"].as_str() {
            out.push(format!(
                "- `{}` {} is limited: {l}",
                h["hook"].as_str().unwrap_or("?"),
                h["family"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

/// A difference in total cost decides only past this many calls of the
/// busiest implementation and this ratio: below them the same program
/// varies more between two runs (6.1: 2,135 then 807 ns per call for
/// fe_shrink_node at 3,841 and 3,905 calls) than between implementations.
const DECISIVE_CALLS: u64 = 10_000;
const DECISIVE_RATIO: f64 = 0.75;

/// For each hook with two or more implementations that see the same thing
/// and ran under the workload: their total kernel time (calls times cost:
/// a probe that fires on every call of a function costs more in all than
/// a tracepoint that fires only when something happens, even when each
/// call is cheaper), against the one the table put first and this kernel
/// attached.
fn decisions(c: &Column) -> Vec<String> {
    let costs = c.costs.as_ref().and_then(|v| v.as_array().cloned()).unwrap_or_default();
    let chosen = |hook: &str| -> Option<String> {
        let hooks = c.probes.as_ref()?["hooks"].as_array()?.clone();
        hooks.iter().find(|h| h["hook"] == hook)?["family"].as_str().map(str::to_owned)
    };
    let mut by_hook: BTreeMap<String, Vec<(String, f64, u64)>> = BTreeMap::new();
    for imp in &costs {
        if !imp["error"].is_null() || !imp["lacks"].is_null() {
            continue;
        }
        let total: u64 =
            imp["programs"].as_array().into_iter().flatten().filter_map(|p| p["run_time_ns"].as_u64()).sum();
        let calls = imp["calls"].as_u64().unwrap_or(0);
        if calls == 0 {
            continue;
        }
        by_hook.entry(imp["hook"].as_str().unwrap_or("?").to_owned()).or_default().push((
            imp["family"].as_str().unwrap_or("?").to_owned(),
            total as f64 / 1e6,
            calls,
        ));
    }
    let mut out = Vec::new();
    for (hook, mut imps) in by_hook.into_iter().filter(|(_, v)| v.len() > 1) {
        imps.sort_by(|a, b| a.1.total_cmp(&b.1));
        let list: Vec<String> = imps.iter().map(|(f, ms, n)| format!("{f} {ms:.2} ms ({n} calls)")).collect();
        let busiest = imps.iter().map(|i| i.2).max().unwrap_or(0);
        let attached = chosen(&hook).map(|f| {
            let ms = imps.iter().find(|i| i.0 == f).map(|i| i.1);
            (f, ms)
        });
        let verdict = match attached {
            Some((f, _)) if f == imps[0].0 => format!("attached: {f}, the cheapest"),
            // Attached, but it lacks something or did not run: no cost to compare.
            Some((f, None)) => format!("attached: {f}, not among these"),
            Some((f, Some(ms))) if busiest >= DECISIVE_CALLS && imps[0].1 < ms * DECISIVE_RATIO => {
                format!("attached: {f}; **{} cost less here**", imps[0].0)
            }
            Some((f, Some(ms))) => format!(
                "attached: {f}; {} {:.0} % cheaper, within the spread at {busiest} calls",
                imps[0].0,
                100.0 * (1.0 - imps[0].1 / ms)
            ),
            None => "none attached".to_owned(),
        };
        out.push(format!("- `{hook}`: {}; {verdict}", list.join(", ")));
    }
    out
}

fn render(cols: &[Column]) -> String {
    let mut md = String::new();
    md.push_str("# Kernel matrix\n\n");
    md.push_str(
        "Made by `cargo xtask kernels` (do not edit by hand). `host` is this project's machine kind; the others are \
         Debian's own kernels (`linux-image-amd64` of bullseye, bookworm, trixie and sid; `linux-image-cloud-amd64` of bookworm and trixie, the smaller configuration Debian's cloud images boot; trixie's `linux-image-rt-amd64`, PREEMPT_RT), booted under qemu on the same \
         root filesystem by `cargo xtask vm`, with the lower filesystem on an ext4 virtio disk and cgroup v2.\n\n",
    );
    let head: Vec<String> = cols.iter().map(|c| format!("{} ({})", c.name, c.release)).collect();
    let _ = writeln!(md, "## Hook implementation chosen\n\n| hook | {} |", head.join(" | "));
    let _ = writeln!(md, "| --- |{}", " --- |".repeat(cols.len()));
    let hooks: Vec<String> = cols
        .iter()
        .find_map(|c| c.probes.as_ref()?["hooks"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["hook"].as_str().map(str::to_owned))
        .collect();
    for hook in &hooks {
        let cells: Vec<String> = cols.iter().map(|c| hook_cell(c, hook)).collect();
        let _ = writeln!(md, "| {hook} | {} |", cells.join(" | "));
    }
    md.push_str("\n### Why the better implementations were not used\n\n");
    for c in cols {
        let _ = writeln!(md, "**{} ({})**\n", c.name, c.release);
        let reasons = skipped_reasons(c);
        if reasons.is_empty() {
            md.push_str("- nothing skipped\n");
        }
        for r in reasons {
            md.push_str(&r);
            md.push('\n');
        }
        md.push('\n');
    }

    md.push_str(
        "## Modules the kernel lacks\n\nOf what a distro server loads on demand (xtask/vm/guest.sh: block, \
         filesystems, FUSE, nbd, dm, SCSI and NVMe targets, ublk, knfsd). A scenario whose module is missing is \
         listed below as not built, and `audit` finds no servicer of that kind.\n\n",
    );
    for c in cols {
        let Some(missing) = &c.missing_modules else { continue };
        let list = if missing.is_empty() {
            "none".to_owned()
        } else {
            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(md, "- {} ({}): {list}", c.name, c.release);
    }
    md.push('\n');

    md.push_str("## Cost per call\n\n");
    md.push_str(
        "Kernel time per call of every implementation, all attached at once under the same workload \
         (`reclaimscope probes --measure -- xtask workload`: 256 MiB through XFS on loop on qemu-storage-daemon with \
         the daemon in a 256 MiB memcg, then 256 MiB of plain ext4 writes in a 64 MiB memcg), from BPF_ENABLE_STATS. \
         Entry and exit programs are summed. Under emulation the absolute numbers are inflated; the ratios between \
         implementations of one hook on one kernel are what the hook table's order rests on.\n\n",
    );
    let _ = writeln!(md, "| hook | implementation | {} |", head.join(" | "));
    let _ = writeln!(md, "| --- | --- |{}", " --- |".repeat(cols.len()));
    let mut rows: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for (i, c) in cols.iter().enumerate() {
        for imp in c.costs.as_ref().and_then(|v| v.as_array().cloned()).unwrap_or_default() {
            let key = (
                imp["hook"].as_str().unwrap_or("?").to_owned(),
                imp["family"].as_str().unwrap_or("?").to_owned(),
                imp["targets"].as_array().and_then(|t| t.first()).and_then(Value::as_str).unwrap_or("").to_owned(),
            );
            let cell = match (imp["error"].is_null(), imp["ns_per_call"].as_f64()) {
                (false, _) => "-".to_owned(),
                (true, Some(ns)) => format!("{ns:.0} ns ({} calls)", imp["calls"]),
                (true, None) => "0 calls".to_owned(),
            };
            let row = rows.entry(key).or_insert_with(|| vec![String::from("?"); cols.len()]);
            row[i] = cell;
        }
    }
    for ((hook, family, target), cells) in &rows {
        let target = if target.is_empty() { String::new() } else { format!(" `{target}`") };
        let _ = writeln!(md, "| {hook} | {family}{target} | {} |", cells.join(" | "));
    }

    md.push_str(
        "\n### What the costs decided\n\nTotal kernel time of each implementation that sees everything the hook needs, \
         over the same workload, cheapest first, and the one attached (the first in the hook table that the kernel \
         takes). Only hooks with two or more such implementations that ran are listed. A difference decides only when \
         the busiest implementation ran 10,000 times or more and the cheaper one cost under 0.75 of the other: \
         below that, one program's cost varies more from run to run than implementations differ (6.1 measured \
         2,135 then 807 ns per call for the same fentry on shrink_node at about 3,900 calls). There the table's \
         order stands: a trampoline before a kprobe, whose dispatch (not counted by BPF stats) costs more.\n\n",
    );
    for c in cols.iter().filter(|c| c.costs.is_some()) {
        let d = decisions(c);
        if d.is_empty() {
            continue;
        }
        let _ = writeln!(md, "**{} ({})**\n", c.name, c.release);
        for line in d {
            md.push_str(&line);
            md.push('\n');
        }
        md.push('\n');
    }

    md.push_str("\n## Scenarios\n\nWhat each scenario test saw (only scenarios that ran are listed).\n\n");
    let _ = writeln!(md, "| scenario | kernel | result |\n| --- | --- | --- |");
    for c in cols {
        for r in &c.results {
            let mut result = r["outcome"]["result"].as_str().unwrap_or("?").to_owned();
            if let Some(t) = r["outcome"].get("through") {
                let _ = write!(result, "; through {t}");
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                r["scenario"].as_str().unwrap_or("?"),
                c.name,
                result.replace('|', "/")
            );
        }
    }
    md
}

pub fn run(kernels: &[&str], measure_host: bool, breadth: Breadth) -> Result<()> {
    run_setup()?;
    run_build(true)?;
    let obj = ebpf_object();
    exec(cargo().args(["build", "-p", "xtask"]))?;
    if measure_host {
        host_report(&obj)?;
    }
    let suite = if kernels.is_empty() {
        Ok(())
    } else {
        let _lock = testbed::lock()?;
        vm_suite(kernels, &obj, &SuiteOptions { measure: true, breadth })
    };
    let mut cols = vec![column(HOST)];
    // A kernel never measured on this checkout gets no column of question marks.
    cols.extend(crate::test::ALL_KERNELS.iter().map(|k| column(k)).filter(|c| c.probes.is_some()));
    let md = render(&cols);
    let path = root().join("docs/kernels.md");
    fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    suite
}
