//! Topology discovery runs beside the event loop: on a host with 5,000
//! processes holding 200,000 descriptors, made here, discovery takes long
//! and the loop's lag stays small. Mount changes refresh the topology at
//! once.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

const SLEEPERS: usize = 5_000;
/// Descriptors each sleeper holds besides stdin/stdout/stderr.
const FDS_EACH: usize = 40;

/// Processes and descriptors on this host, as /proc shows them.
fn census() -> (usize, usize) {
    let mut procs = 0;
    let mut fds = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_ok() {
            procs += 1;
            fds += std::fs::read_dir(e.path().join("fd")).map(|d| d.count()).unwrap_or(0);
        }
    }
    (procs, fds)
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn discovery_on_a_crowded_host_does_not_stall_the_event_loop() {
    testbed::require_root("discovery_on_a_crowded_host_does_not_stall_the_event_loop");
    // Not a storage stack, but 5,000 processes disturb whoever else measures.
    let _lock = testbed::lock().unwrap();
    let t = Instant::now();
    let crowd = common::Crowd::spawn(SLEEPERS, FDS_EACH);
    let (procs, fds) = census();
    eprintln!("host: {procs} processes, {fds} open descriptors ({:.1} s to spawn)", t.elapsed().as_secs_f64());
    assert!(procs >= SLEEPERS && fds >= SLEEPERS * FDS_EACH, "{procs} processes, {fds} descriptors");

    // What one discovery costs on its own here: the audit is one discovery.
    let t = Instant::now();
    let audit = common::run(&["audit", "--json"]);
    let audit_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_ne!(audit.status.code(), Some(1), "{}", String::from_utf8_lossy(&audit.stderr));

    let agent = common::Agent::start(&["monitor", "--summary-every", "1", "--refresh-every", "1"]);
    // Summaries after at least three discoveries of the crowded host.
    let enough = |v: &Value| v["type"] == "summary" && v["topology_refreshes"].as_u64().unwrap_or(0) >= 4;
    agent.wait_for(Duration::from_secs(120), enough).expect("four discoveries within 120 s");
    let (code, lines) = agent.stop(libc::SIGTERM);
    drop(crowd);
    assert_eq!(code, Some(0));
    let summaries: Vec<&Value> = lines.iter().filter(|v| v["type"] == "summary").collect();
    let measured: Vec<&&Value> = summaries.iter().filter(|v| v["topology_refreshes"].as_u64() >= Some(1)).collect();
    let discovery_max = measured.iter().map(|v| f(v, "discovery_max_ms")).fold(0.0, f64::max);
    let discovery_last: Vec<f64> = measured.iter().map(|v| f(v, "discovery_ms")).collect();
    let lag_max = measured.iter().map(|v| f(v, "loop_lag_max_ms")).fold(0.0, f64::max);
    let fin = lines.iter().find(|v| v["type"] == "final_summary").expect("final summary");
    eprintln!(
        "one discovery (audit): {audit_ms:.0} ms; agent discoveries: {} done, last {:?} ms, max {discovery_max:.0} ms; \
         event-loop lag: max {lag_max:.1} ms per 1 s summary, {:.1} ms over the run; dropped {}",
        fin["topology_refreshes"],
        discovery_last.iter().map(|d| d.round()).collect::<Vec<_>>(),
        f(fin, "loop_lag_max_ms"),
        fin["dropped"]
    );
    assert_eq!(fin["topology_errors"], 0, "{fin}");
    // Discovery is the expensive part here, and the loop does not wait on it.
    assert!(discovery_max >= 200.0, "discovery took only {discovery_max} ms: the host is not crowded enough");
    assert!(
        lag_max < 50.0 && f(fin, "loop_lag_max_ms") < discovery_max / 4.0,
        "the event loop lagged {lag_max} ms while discovery took {discovery_max} ms"
    );
}

#[test]
fn a_mount_change_refreshes_the_topology_at_once() {
    testbed::require_root("a_mount_change_refreshes_the_topology_at_once");
    let _lock = testbed::lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap().to_owned();
    // A refresh interval far longer than the test: only the mount change can refresh.
    let agent = common::Agent::start(&["monitor", "--summary-every", "1", "--refresh-every", "3600"]);
    let refreshes = |n: u64| move |v: &Value| v["type"] == "summary" && v["topology_refreshes"].as_u64() >= Some(n);
    agent.wait_for(common::STARTUP, refreshes(1)).expect("first discovery");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "reclaimscope-refresh-test", &mnt]).status().unwrap();
    assert!(mounted.success());
    let t = Instant::now();
    let seen = agent.wait_for(Duration::from_secs(10), refreshes(2));
    let unmounted = Command::new("umount").arg(&mnt).status().unwrap();
    let (code, _) = agent.stop(libc::SIGTERM);
    assert!(unmounted.success());
    assert!(seen.is_some(), "no discovery within 10 s of a mount, with a one-hour interval");
    eprintln!("discovery after a mount: within {:.1} s (summaries every 1 s)", t.elapsed().as_secs_f64());
    assert_eq!(code, Some(0));
}
