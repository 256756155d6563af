//! The deployment files in deploy/ are what docs/deployment.md points to,
//! and the tools that read them accept them.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use reclaimscope::{
    attach::table::HOOKS,
    detect::rules,
    output::{
        exposition::Format,
        metrics::{Losses, Metrics},
    },
};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file())
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        eprintln!("skipped: promtool is not installed (Debian package prometheus; cargo xtask setup installs it)");
        return;
    };
    let out = Command::new(&promtool).args(["check", "rules"]).arg(deploy("prometheus/alerts.yml")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out = Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The alerts of alerts.yml, each with the runbook_url annotation of its
/// block (None when it has none), read line by line: the file is ours and
/// keeps one `- alert:` per rule.
fn alerts() -> Vec<(String, Option<String>)> {
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            out.push((name.to_string(), None));
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            out.last_mut().expect("runbook_url before any alert").1 = Some(url.trim_matches('"').to_string());
        }
    }
    out
}

/// A Markdown heading's anchor, as GitHub and most renderers make it.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every alert links its own section of docs/runbook.md.
#[test]
fn every_alert_links_its_runbook_section() {
    let runbook =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/runbook.md")).unwrap();
    let anchors: Vec<String> =
        runbook.lines().filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### "))).map(anchor).collect();
    let alerts = alerts();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for (name, url) in alerts {
        let url = url.unwrap_or_else(|| panic!("alert {name} has no runbook_url"));
        let (page, section) = url.split_once('#').unwrap_or_else(|| panic!("{name}: {url} names no section"));
        assert!(page.ends_with("/runbook.md"), "{name}: {url}");
        assert_eq!(section, anchor(&name), "{name}: the section is named after the alert");
        assert!(anchors.iter().any(|a| a == section), "docs/runbook.md has no section #{section} for {name}");
    }
}

/// alerts.test.yml has, for every alert, a time when it fires and one when
/// it does not.
#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let tests = std::fs::read_to_string(deploy("prometheus/alerts.test.yml")).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let cases: Vec<(&str, bool)> =
        lines.windows(2).filter_map(|w| Some((w[0].strip_prefix("alertname: ")?, w[1] != "exp_alerts: []"))).collect();
    for (name, _) in alerts() {
        for fires in [true, false] {
            assert!(
                cases.contains(&(name.as_str(), fires)),
                "alerts.test.yml has no case where {name} {}",
                if fires { "fires" } else { "stays quiet" }
            );
        }
    }
}

/// One agent's metrics with every family holding a series, in the text format.
fn every_series() -> String {
    let m = Metrics::new();
    for r in rules::ALL {
        m.declare_finding(r.id, r.severity.name());
    }
    for h in HOOKS {
        m.set_probe(h.name, "none", false, h.required);
    }
    m.finding("RS001", "hazard");
    m.set_reclaim_events("memcg", 1);
    m.set_servicers("unprotected", 1);
    m.set_losses(&Losses {
        dropped_events: 1,
        task_state_full: 2,
        stacks_lost: 3,
        stale_reclaim: 4,
        decode_errors: 5,
        filter_map_full: 6,
    });
    m.set_agent_health(1, Some(2.0), 0.001);
    m.render(Format::Text)
}

/// docs/deployment.md's table names every family the agent exports.
#[test]
fn the_deployment_guide_lists_every_metric() {
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/deployment.md")).unwrap();
    for line in every_series().lines() {
        let Some(name) = line.strip_prefix("# TYPE ").and_then(|l| l.split(' ').next()) else { continue };
        assert!(doc.contains(&format!("| `{name}` |")), "docs/deployment.md's metrics table has no `{name}`");
    }
}

/// Every series the agent exports, in the text format a scraper gets
/// without asking for OpenMetrics, passes `promtool check metrics`: HELP
/// and TYPE on each, and the naming conventions.
#[test]
fn the_metrics_pass_promtool_check_metrics() {
    let Some(promtool) = tool("promtool") else {
        eprintln!("skipped: promtool is not installed (Debian package prometheus; cargo xtask setup installs it)");
        return;
    };
    let text = every_series();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\non:\n{text}");
}

/// `systemd-analyze verify` checks that ExecStart names an executable, so
/// the unit is verified with its binary path pointed at the one just built:
/// that one path is all that differs from the shipped file.
#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let unit = std::fs::read_to_string(deploy("systemd/reclaimscope.service")).unwrap();
    const INSTALLED: &str = "/usr/bin/reclaimscope";
    assert_eq!(unit.matches(INSTALLED).count(), 1, "one ExecStart= names the installed binary");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("reclaimscope.service");
    std::fs::write(&copy, unit.replace(INSTALLED, env!("CARGO_BIN_EXE_reclaimscope"))).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&copy).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn the_deployment_guide_points_to_the_files_instead_of_copies() {
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/deployment.md")).unwrap();
    for file in ["deploy/systemd/reclaimscope.service", "deploy/prometheus/alerts.yml"] {
        assert!(doc.contains(file), "docs/deployment.md does not name {file}");
    }
    for copied in ["[Service]", "[Install]", "alert: StorageServicerReclaimDeadlock", "groups:"] {
        assert!(!doc.contains(copied), "docs/deployment.md still carries a copy (`{copied}`)");
    }
}

/// SIGHUP only starts a topology discovery (agent/run.rs): the agent has no
/// configuration file, so no line about SIGHUP or a reload may promise that
/// one is re-read.
#[test]
fn the_deployment_guide_says_what_sighup_does() {
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/deployment.md")).unwrap();
    let about_hup: Vec<&str> = doc.lines().filter(|l| l.contains("HUP") || l.contains("reload")).collect();
    assert!(about_hup.iter().any(|l| l.starts_with("| `SIGHUP` |") && l.contains("discovery")), "{about_hup:#?}");
    for l in about_hup {
        assert!(!l.contains("config") || l.contains("There is no configuration file"), "promises a config: {l}");
    }
}

/// Every series name a query of the Grafana dashboard uses is one the agent
/// exports (metrics.rs), and every family has a panel.
#[test]
fn the_dashboard_queries_the_agents_metrics() {
    let text = std::fs::read_to_string(deploy("grafana/reclaimscope.json")).unwrap();
    let board: serde_json::Value = serde_json::from_str(&text).unwrap();
    let series = every_series();
    // The samples, and the families (a family may hold no sample yet).
    let exported: Vec<&str> = series
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .collect();
    let mut used = Vec::new();
    for panel in board["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("reclaimscope_"))
                .collect();
            assert!(!names.is_empty(), "{}: `{expr}` queries no reclaimscope metric", panel["title"]);
            for n in names {
                assert!(exported.contains(&n), "{}: `{n}` is not a series the agent exports", panel["title"]);
                used.push(n);
            }
        }
    }
    for line in series.lines() {
        let Some(family) = line.strip_prefix("# TYPE ").and_then(|l| l.split(' ').next()) else { continue };
        assert!(used.iter().any(|u| u.starts_with(family)), "no panel shows {family}");
    }
}
