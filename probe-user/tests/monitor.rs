//! The monitor serves metrics that move with the real hazard scenario, and
//! SIGTERM leaves no program behind.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
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

#[test]
fn metrics_move_with_the_hazard_and_sigterm_detaches() {
    if !testbed::require_root("metrics_move_with_the_hazard_and_sigterm_detaches") {
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (_lock, mut stack) = common::hazard_stack("monitor");
    let agent = common::Agent::start(&["monitor", "--metrics-addr", &addr, "--summary-every", "1"]);
    agent.wait_for(Duration::from_secs(30), |v| v["type"] == "summary").expect("monitor started");
    let before = scrape(&addr);
    assert_eq!(sample(&before, "reclaimscope_findings_total{rule=\"RS001\",severity=\"hazard\"}"), 0.0);
    // The metric names the implementation this kernel attached, as `probes` reports it.
    let probes: serde_json::Value = serde_json::from_slice(&common::run(&["probes", "--json"]).stdout).unwrap();
    let reclaim =
        probes["hooks"].as_array().unwrap().iter().find(|h| h["hook"] == "reclaim").unwrap()["family"].clone();
    let attached = format!("reclaimscope_probe_attached{{hook=\"reclaim\",implementation={reclaim}}}");
    assert_eq!(sample(&before, &attached), 1.0);
    common::write_through(&mut stack, 384);
    agent.wait_for(Duration::from_secs(5), |v| v["type"] == "summary" && v["reclaim_memcg"].as_u64().unwrap_or(0) > 0);
    std::thread::sleep(Duration::from_secs(2));
    let after = scrape(&addr);
    let (code, lines) = agent.stop(libc::SIGTERM);
    stack.teardown().unwrap();
    assert!(sample(&after, "reclaimscope_findings_total{rule=\"RS001\",severity=\"hazard\"}") >= 1.0, "{after}");
    assert!(sample(&after, "reclaimscope_reclaim_events_total{kind=\"memcg\"}") > 0.0);
    assert!(sample(&after, "reclaimscope_servicers{protection=\"unprotected\"}") >= 1.0);
    assert_eq!(sample(&after, "reclaimscope_dropped_events_total"), 0.0);
    assert!(sample(&after, "reclaimscope_uptime_seconds") > 0.0);
    assert_eq!(code, Some(0));
    assert!(lines.iter().any(|v| v["type"] == "final_summary"), "no final summary flushed");
    assert!(!common::any_of_ours_loaded(), "programs left loaded after SIGTERM");
}
