//! The shipped alert rules and Grafana dashboard against a real Prometheus
//! (Debian's `prometheus`) scraping a real `monitor`, through a quiet host,
//! the qsd hazard scenario and the deadlock scenario. Prometheus's own API
//! says which alerts fire; they must be exactly the ones the agent's
//! findings call for, and every dashboard query must return data.
//!
//! Prometheus has no clock a test can advance, so the copy of
//! deploy/prometheus/alerts.yml it loads has each `for:` shortened to
//! seconds; everything else is the shipped file. `promtool test rules`
//! (deploy/prometheus/alerts.test.yml) checks the real durations.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// What every `for:` in the shipped rules becomes here.
const FOR: &str = "3s";
/// How long an alert may take to fire once its finding is out: a scrape,
/// an evaluation and the shortened `for:`, with room for a loaded host.
const FIRE_WITHIN: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A Prometheus server in a temporary directory; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
        let shortened: String = rules
            .lines()
            .map(|l| if l.trim_start().starts_with("for: ") { format!("        for: {FOR}") } else { l.into() })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(rules, shortened, "the shipped rules have no `for:` left to shorten");
        std::fs::write(dir.path().join("alerts.yml"), shortened).unwrap();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
                 scrape_configs:\n  - job_name: reclaimscope\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, _dir: dir };
        let t = Instant::now();
        while get(&p.addr, "/-/ready").map(|(code, _)| code) != Some(200) {
            assert!(t.elapsed() < Duration::from_secs(60), "prometheus not ready within 60 s");
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn api(&self, path: &str) -> Value {
        let (code, body) = get(&self.addr, path).expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(code == 200 && v["status"] == "success", "{path}: {code} {body}");
        v["data"].clone()
    }

    fn query(&self, promql: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", encode(promql)))["result"].as_array().cloned().unwrap_or_default()
    }

    /// The names of the alerts now firing, with their labels.
    fn firing(&self) -> Vec<(String, Value)> {
        let alerts = self.api("/api/v1/alerts")["alerts"].as_array().cloned().unwrap_or_default();
        alerts
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| (a["labels"]["alertname"].as_str().unwrap_or("?").to_owned(), a["labels"].clone()))
            .collect()
    }

    /// Waits until Prometheus has scraped the target at least once.
    fn wait_scraped(&self) {
        let t = Instant::now();
        while self.query("up == 1").is_empty() {
            assert!(t.elapsed() < Duration::from_secs(30), "prometheus never scraped the agent");
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET over HTTP/1.0: the status code and the body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The alert the shipped rules raise for a finding of this severity.
fn alert_for(severity: &str) -> &'static str {
    match severity {
        "hazard" => "UnprotectedStorageServicer",
        "recursion" => "StorageServicerReclaimRecursion",
        "failure" => "StorageServicerOOMKilled",
        _ => "StorageServicerReclaimDeadlock",
    }
}

/// The alerts the agent's findings so far call for.
fn called_for(agent: &common::Agent) -> BTreeSet<&'static str> {
    agent.of_type("finding").iter().map(|(_, v)| alert_for(v["severity"].as_str().unwrap_or("?"))).collect()
}

/// Polls until every alert in `want` fires, noting when each first did
/// (seconds since `t0`) in `timeline`. Returns what fires at the end.
fn wait_firing(
    prom: &Prometheus,
    want: &BTreeSet<&'static str>,
    t0: Instant,
    timeline: &mut BTreeMap<String, f64>,
) -> BTreeSet<String> {
    let t = Instant::now();
    loop {
        let now: BTreeSet<String> = prom.firing().into_iter().map(|(name, _)| name).collect();
        for name in &now {
            timeline.entry(name.clone()).or_insert(t0.elapsed().as_secs_f64());
        }
        if want.iter().all(|w| now.contains(*w)) || t.elapsed() > FIRE_WITHIN {
            return now;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Every query of the Grafana dashboard, with its variables filled in as
/// Grafana would for "All" instances.
fn dashboard_queries() -> Vec<(String, String)> {
    let board: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/reclaimscope.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in board["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*").replace("$__rate_interval", "30s");
            out.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr));
        }
    }
    assert!(!out.is_empty(), "the dashboard has no queries");
    out
}

fn prometheus_bin() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').map(|d| Path::new(d).join("prometheus")).find(|p| p.is_file())
}

#[test]
fn alerts_fire_in_a_real_prometheus_exactly_when_the_findings_call_for_them() {
    testbed::require_root("alerts_fire_in_a_real_prometheus_exactly_when_the_findings_call_for_them");
    let Some(bin) = prometheus_bin() else {
        panic!("prometheus is not installed: `cargo xtask setup` installs Debian's package");
    };
    let lock = testbed::lock().expect("testbed lock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent =
        common::Agent::start(&["monitor", "--metrics-addr", &metrics, "--summary-every", "1", "--refresh-every", "1"]);
    agent.wait_started();
    let prom = Prometheus::start(&bin, &metrics);
    prom.wait_scraped();
    let t0 = Instant::now();
    let mut timeline = BTreeMap::new();

    // A quiet host: nothing fires, also where an optional hook has no
    // implementation on this kernel.
    let missing = prom.query(r#"reclaimscope_probe_attached{implementation="none",required="false"} == 0"#);
    let missing: Vec<&str> = missing.iter().filter_map(|s| s["metric"]["hook"].as_str()).collect();
    eprintln!("optional hooks this kernel lacks: {missing:?}");
    thread::sleep(Duration::from_secs(10));
    let quiet = wait_firing(&prom, &BTreeSet::new(), t0, &mut timeline);
    assert!(quiet.is_empty(), "alerts fired on a quiet host: {quiet:?}");

    // The hazard scenario: the hazard alert, and every dashboard query
    // returns data.
    let mut hazard = testbed::StorageStack::build("alerts-hazard", &common::hazard_spec()).expect("build hazard stack");
    common::write_through(&mut hazard, 384);
    agent.wait_for(Duration::from_secs(20), |v| v["type"] == "finding");
    let want = called_for(&agent);
    let after_hazard = wait_firing(&prom, &want, t0, &mut timeline);
    let empty: Vec<(String, String)> =
        dashboard_queries().into_iter().filter(|(_, q)| prom.query(q).is_empty()).collect();
    hazard.teardown().unwrap();

    // The deadlock scenario: the deadlock alert (or, when the memcg's OOM
    // killer takes the daemon instead, the failure alert).
    let mut dead = testbed::StorageStack::build("alerts-deadlock", &common::deadlock_spec()).expect("build stack");
    let qsd = dead.daemon_pid.unwrap();
    dead.spawn_writer("data", 512).unwrap();
    let grave = agent.wait_for(Duration::from_secs(90), |v| {
        v["type"] == "finding"
            && (v["severity"] == "deadlock" || (v["severity"] == "failure" && v["servicer"]["tgid"] == qsd))
    });
    let want_dead = called_for(&agent);
    let after_deadlock = wait_firing(&prom, &want_dead, t0, &mut timeline);
    let prom_down = prom.query("up == 0");
    dead.abort_fuse().unwrap();
    let (code, _) = agent.stop(libc::SIGTERM);
    dead.teardown().unwrap();
    drop(prom);
    drop(lock);

    eprintln!("alert timeline (s after Prometheus first scraped the agent): {timeline:?}");
    assert_eq!(code, Some(0));
    assert!(prom_down.is_empty(), "Prometheus lost the agent during the deadlock: {prom_down:?}");
    assert!(want.contains("UnprotectedStorageServicer"), "the hazard scenario raised no hazard finding");
    assert_eq!(after_hazard.iter().map(String::as_str).collect::<BTreeSet<_>>(), want, "alerts after the hazard");
    assert!(empty.is_empty(), "dashboard queries with no data: {empty:?}");
    let (_, grave) = grave.expect("neither a deadlock nor an OOM kill of the daemon reported within 90 s");
    assert!(want_dead.contains(alert_for(grave["severity"].as_str().unwrap())));
    assert_eq!(
        after_deadlock.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        want_dead,
        "alerts after the deadlock"
    );
}
