//! The monitor serves metrics that move with the real hazard scenario, the
//! shipped alert rules fire on them as documented, a flood of idle
//! connections costs it no descriptors and no servicers, and SIGTERM leaves
//! no program behind.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{body}"))
}

/// One scrape's samples: `name{labels}` → value (OpenMetrics text).
fn samples(body: &str) -> BTreeMap<String, f64> {
    let text = body.split_once("\r\n\r\n").map_or(body, |(_, b)| b);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

/// Adds `instance` and `job` as Prometheus would when scraping.
fn with_target(series: &str) -> String {
    const TARGET: &str = r#"instance="db7:9858",job="reclaimscope""#;
    match series.split_once('{') {
        Some((name, labels)) => format!("{name}{{{TARGET},{labels}"),
        None => format!("{series}{{{TARGET}}}"),
    }
}

/// The labels of a `reclaimscope_findings_active{...}` series.
fn labels(series: &str) -> BTreeMap<String, String> {
    let inner = series.split_once('{').unwrap().1.trim_end_matches('}');
    inner
        .split("\",")
        .map(|kv| kv.split_once("=\"").unwrap())
        .map(|(k, v)| (k.into(), v.trim_end_matches('"').into()))
        .collect()
}

/// The annotations deploy/prometheus/alerts.yml gives an alert with these labels.
fn annotations(alert: &str, l: &BTreeMap<String, String>) -> String {
    let (instance, servicer, rule) = (&l["instance"], &l["servicer"], &l["rule"]);
    let summary = match alert {
        "UnprotectedStorageServicer" => {
            format!("{instance}: storage servicer {servicer} runs without reclaim protection ({rule})")
        }
        "StorageServicerReclaimRecursion" => {
            format!("{instance}: servicer {servicer} re-entered the filesystem it serves from reclaim ({rule})")
        }
        "StorageServicerOOMKilled" => {
            format!("{instance}: storage servicer {servicer} was OOM-killed ({rule}); the filesystems above it fail")
        }
        _ => format!("{instance}: storage servicer {servicer} deadlocked in memory reclaim ({rule})"),
    };
    let mut out = format!("              summary: \"{summary}\"\n");
    if alert == "StorageServicerReclaimDeadlock" {
        out.push_str("              description: \"See the finding's 'remedy' field in the journal (journalctl -u reclaimscope). Aborting the FUSE connection (fusectl) breaks the cycle.\"\n");
    }
    out.push_str(&format!(
        "              runbook_url: \"file:///usr/share/doc/reclaimscope/runbook.md#{}\"\n",
        alert.to_lowercase()
    ));
    out
}

/// Runs the shipped rules over real scrapes, as if taken a minute apart,
/// and expects at the last one exactly the alerts the data calls for.
fn promtool_on(scrapes: &[BTreeMap<String, f64>]) {
    let Some(promtool) = std::env::var_os("PATH")
        .and_then(|p| p.to_str().map(str::to_owned))
        .and_then(|p| p.split(':').map(|d| std::path::Path::new(d).join("promtool")).find(|p| p.is_file()))
    else {
        eprintln!("alert rules not run: promtool is not installed (Debian package prometheus)");
        return;
    };
    let keys: std::collections::BTreeSet<&String> = scrapes.iter().flat_map(|s| s.keys()).collect();
    let mut series = String::new();
    for k in &keys {
        let values: Vec<String> =
            scrapes.iter().map(|s| s.get(*k).map_or("_".to_string(), |v| v.to_string())).collect();
        series.push_str(&format!("      - series: '{}'\n        values: '{}'\n", with_target(k), values.join(" ")));
    }
    let last = scrapes.len() - 1;
    // From the data: a hazard series active since at least 5 minutes before
    // the end (the rule's `for:`), with an unprotected servicer watched.
    let unprotected = scrapes[last].get(r#"reclaimscope_servicers{protection="unprotected"}"#).copied() > Some(0.0);
    let mut expected: BTreeMap<&str, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for k in keys.iter().filter(|k| k.starts_with("reclaimscope_findings_active{")) {
        let l = labels(k);
        let since = scrapes.iter().position(|s| s.get(*k).copied() > Some(0.0));
        let (alert, severity, for_minutes) = match l["severity"].as_str() {
            "hazard" => ("UnprotectedStorageServicer", "warning", 5),
            "recursion" => ("StorageServicerReclaimRecursion", "warning", 0),
            "failure" => ("StorageServicerOOMKilled", "critical", 0),
            _ => ("StorageServicerReclaimDeadlock", "critical", 0),
        };
        let fires = since.is_some_and(|t| last - t >= for_minutes)
            && (severity != "warning" || for_minutes == 0 || unprotected);
        if fires && scrapes[last].get(*k).copied() > Some(0.0) {
            let mut want = BTreeMap::from([("instance".to_string(), "db7:9858".to_string())]);
            want.insert("rule".into(), l["rule"].clone());
            want.insert("servicer".into(), l["servicer"].clone());
            want.insert("severity".into(), severity.into());
            expected.entry(alert).or_default().push(want);
        }
    }
    assert!(expected.contains_key("UnprotectedStorageServicer"), "the scenario should call for the hazard alert");
    let mut tests = String::new();
    for alert in [
        "UnprotectedStorageServicer",
        "StorageServicerReclaimRecursion",
        "StorageServicerReclaimDeadlock",
        "StorageServicerOOMKilled",
        "ReclaimscopeDetectionLost",
        "ReclaimscopeTopologyStale",
    ] {
        tests.push_str(&format!("      - eval_time: {last}m\n        alertname: {alert}\n        exp_alerts:"));
        match expected.get(alert) {
            None => tests.push_str(" []\n"),
            Some(all) => {
                tests.push('\n');
                for want in all {
                    let l: Vec<String> = want.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
                    tests.push_str(&format!("          - exp_labels: {{{}}}\n", l.join(", ")));
                    tests.push_str(&format!("            exp_annotations:\n{}", annotations(alert, want)));
                }
            }
        }
    }
    let rules = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let file = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n{tests}",
        rules.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scraped.test.yml");
    std::fs::write(&path, &file).unwrap();
    let out = Command::new(promtool).args(["test", "rules"]).arg(&path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool on the scraped metrics:\n{said}\n{file}");
    eprintln!("alert rules on {} real scrapes: {expected:?}", scrapes.len());
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn metrics_move_with_the_hazard_and_sigterm_detaches() {
    testbed::require_root("metrics_move_with_the_hazard_and_sigterm_detaches");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (_lock, mut stack) = common::hazard_stack("monitor");
    let agent =
        common::Agent::start(&["monitor", "--metrics-addr", &addr, "--summary-every", "1", "--refresh-every", "1"]);
    agent
        .wait_for(common::STARTUP, |v| v["type"] == "summary" && v["servicers"].as_u64() > Some(0))
        .expect("monitor started and found qsd");
    let before = scrape(&addr);
    assert_eq!(sample(&before, "reclaimscope_findings_total{rule=\"RS001\",severity=\"hazard\"}"), 0.0);
    // The metric names the implementation this kernel attached, as `probes` reports it.
    let probes: serde_json::Value = serde_json::from_slice(&common::run(&["probes", "--json"]).stdout).unwrap();
    let reclaim =
        probes["hooks"].as_array().unwrap().iter().find(|h| h["hook"] == "reclaim").unwrap()["family"].clone();
    let attached =
        format!("reclaimscope_probe_attached{{hook=\"reclaim\",implementation={reclaim},required=\"true\"}}");
    assert_eq!(sample(&before, &attached), 1.0);
    let mut scrapes = vec![samples(&before)];

    // A thousand idle connections: the agent keeps its descriptors, and
    // discovery (every second here) keeps seeing qsd.
    let fds_before = open_fds(agent.pid());
    let flood: Vec<TcpStream> = (0..1000).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(3));
    let fds_flooded = open_fds(agent.pid());
    drop(flood);
    eprintln!("agent descriptors: {fds_before} before, {fds_flooded} with 1000 idle connections");
    assert!(fds_flooded <= fds_before + 40, "idle connections took {} descriptors", fds_flooded - fds_before);

    common::write_through(&mut stack, 384);
    agent.wait_for(Duration::from_secs(5), |v| v["type"] == "summary" && v["reclaim_memcg"].as_u64().unwrap_or(0) > 0);
    for _ in 0..9 {
        std::thread::sleep(Duration::from_secs(1));
        scrapes.push(samples(&scrape(&addr)));
    }
    let after = scrape(&addr);
    // This agent's own programs: another BPF tool on the host has its own.
    let ours = common::prog_ids_of(agent.pid());
    assert!(!ours.is_empty(), "the agent holds no BPF program");
    let (code, lines) = agent.stop(libc::SIGTERM);
    stack.teardown().unwrap();
    assert!(sample(&after, "reclaimscope_findings_total{rule=\"RS001\",severity=\"hazard\"}") >= 1.0, "{after}");
    assert!(sample(&after, "reclaimscope_findings_active{rule=\"RS001\",severity=\"hazard\"") >= 1.0, "{after}");
    assert!(sample(&after, "reclaimscope_reclaim_events_total{kind=\"memcg\"}") > 0.0);
    assert!(sample(&after, "reclaimscope_servicers{protection=\"unprotected\"}") >= 1.0);
    assert_eq!(sample(&after, "reclaimscope_dropped_events_total"), 0.0);
    assert_eq!(sample(&after, "reclaimscope_topology_errors_total"), 0.0);
    assert!(sample(&after, "reclaimscope_uptime_seconds") > 0.0);
    assert_eq!(code, Some(0));
    let fin = lines.iter().find(|v| v["type"] == "final_summary").expect("no final summary flushed");
    assert_eq!(fin["topology_errors"], 0, "{fin}");
    let left = common::still_loaded(&ours);
    assert!(left.is_empty(), "programs {left:?} of the {} it loaded left loaded after SIGTERM", ours.len());
    promtool_on(&scrapes);
}
