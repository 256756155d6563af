//! `cargo xtask soak --minutes N`: `reclaimscope monitor` for N minutes over
//! the hazard stack (XFS on loop on qemu-storage-daemon's FUSE export, the
//! daemon in a 256 MiB memory cgroup) under a churning workload: dd writers
//! that come and go, threads that are born, write and die, short-lived
//! processes. Prints the agent's RSS, open descriptors, CPU and event-loop
//! lag once per interval, then a verdict: RSS flat within 10 % after the
//! warm-up, no lost events, no findings but the expected hazard (RS001).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use testbed::{StorageStack, StorageStackSpec};

use crate::{
    build::run_build,
    setup::run_setup,
    util::{interrupt, is_root},
};

/// The only finding the scenario may produce: the daemon reclaims with
/// __GFP_FS|__GFP_IO while it serves the XFS above (the writers stay
/// outside the cgroup, so the deadlock itself never forms).
const EXPECTED_RULE: &str = "RS001";
/// RSS may grow this much after the warm-up.
const RSS_SLACK: f64 = 0.10;

/// The agent as /proc shows it at one moment.
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn sample(pid: u32, at: Duration) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("the agent is gone")?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: utime is the 14th field.
    let rest: Vec<&str> = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Sample { at, rss_kib, fds, cpu_ticks: ticks(11) + ticks(12) })
}

fn scrape(addr: &str) -> Result<()> {
    let mut s = TcpStream::connect(addr).context("connecting to /metrics")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") {
        bail!("/metrics answered {}", body.lines().next().unwrap_or("nothing"));
    }
    Ok(())
}

/// Threads that are born, write 1 MiB into the XFS with fsync, and die;
/// and short-lived processes, so discovery sees /proc change.
fn churn(dir: PathBuf, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut born = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let workers: Vec<_> = (0..4)
                .map(|i| {
                    let path = dir.join(format!("churn-{i}"));
                    thread::spawn(move || {
                        let data = vec![0x5au8; 1 << 20];
                        if let Ok(mut f) = std::fs::File::create(&path) {
                            let _ = f.write_all(&data).and_then(|()| f.sync_all());
                        }
                    })
                })
                .collect();
            born += workers.len() as u64;
            for w in workers {
                let _ = w.join();
            }
            let _ = Command::new("true").status();
            thread::sleep(Duration::from_millis(200));
        }
        born
    })
}

struct Outcome {
    samples: Vec<Sample>,
    findings: Vec<Value>,
    final_summary: Option<Value>,
    writers: u64,
    threads: u64,
}

fn soak(stack: &mut StorageStack, bin: &Path, minutes: u64, interval: Duration) -> Result<Outcome> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let summary_every = interval.as_secs().max(1).to_string();
    let mut child = Command::new(bin)
        .args(["monitor", "--metrics-addr", &addr, "--summary-every", &summary_every, "--refresh-every", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start reclaimscope monitor")?;
    let pid = child.id();
    let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
    let reader = {
        let out = child.stdout.take().context("monitor stdout")?;
        let lines = Arc::clone(&lines);
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                }
            }
        })
    };
    thread::sleep(Duration::from_secs(3));
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(stack.top().mountpoint.clone(), Arc::clone(&stop));
    let clk_tck = {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    };
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(minutes * 60);
    let mut samples = vec![sample(pid, Duration::ZERO)?];
    let mut next = t0 + interval;
    let mut writers = 0u64;
    let mut result = Ok(());
    while Instant::now() < end {
        // Writers come and go: 64 MiB each, fsynced, then deleted.
        let name = format!("w{}", writers % 4);
        let w = stack.spawn_writer_outside_memcg(&name, 64)?;
        stack.wait_writer(w, Duration::from_secs(120))?;
        let _ = std::fs::remove_file(stack.top().mountpoint.join(&name));
        writers += 1;
        if Instant::now() < next {
            continue;
        }
        next += interval;
        if let Err(e) = scrape(&addr) {
            result = Err(e);
            break;
        }
        let s = match sample(pid, t0.elapsed()) {
            Ok(s) => s,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let prev = samples.last().expect("a first sample");
        let cpu = (s.cpu_ticks - prev.cpu_ticks) as f64 / clk_tck / (s.at - prev.at).as_secs_f64() * 100.0;
        let got = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let last = got.iter().rev().find(|v| v["type"] == "summary");
        let field = |k: &str| last.map(|v| v[k].clone()).unwrap_or(Value::Null);
        let findings = got.iter().filter(|v| v["type"] == "finding").count();
        println!(
            "soak: t={:>5.0}s rss={:>6.1} MiB fds={:>3} cpu={cpu:>5.1}% lag_max={} ms events={} dropped={} findings={findings} writers={writers}",
            s.at.as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            field("loop_lag_max_ms").as_f64().map_or("-".into(), |l| format!("{l:.1}")),
            field("events"),
            field("dropped"),
        );
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    let threads = churner.join().unwrap_or(0);
    interrupt(child, Duration::from_secs(15))?;
    let _ = reader.join();
    result?;
    let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Outcome {
        samples,
        findings: lines.iter().filter(|v| v["type"] == "finding").cloned().collect(),
        final_summary: lines.iter().find(|v| v["type"] == "final_summary").cloned(),
        writers,
        threads,
    })
}

/// Judges a run; Err names every criterion that failed.
fn verdict(o: &Outcome) -> Result<()> {
    let mut failed = Vec::new();
    // Warm-up: the first fifth of the run, at least one interval.
    let warm = (o.samples.len() / 5).max(1);
    let after: Vec<&Sample> = o.samples.iter().skip(warm).collect();
    let base = after.first().map(|s| s.rss_kib as f64).unwrap_or(0.0);
    let peak = after.iter().map(|s| s.rss_kib as f64).fold(0.0, f64::max);
    let growth = if base > 0.0 { peak / base - 1.0 } else { 0.0 };
    let fds: Vec<usize> = o.samples.iter().map(|s| s.fds).collect();
    let fin = o.final_summary.as_ref();
    let dropped = fin.and_then(|f| f["dropped"].as_u64());
    let lag = fin.and_then(|f| f["loop_lag_max_ms"].as_f64());
    let unexpected: Vec<String> = o
        .findings
        .iter()
        .filter(|f| f["rule"] != EXPECTED_RULE)
        .map(|f| format!("{} {} tid {}", f["rule"], f["servicer"]["comm"], f["servicer"]["tid"]))
        .collect();
    let hazards = o.findings.len() - unexpected.len();
    println!(
        "soak: {} samples, {} writers, {} churn threads; RSS after warm-up {:.1} -> peak {:.1} MiB ({:+.1} %); \
         fds {}..{}; worst loop lag {} ms; dropped {}; {hazards} {EXPECTED_RULE} finding(s), {} other",
        o.samples.len(),
        o.writers,
        o.threads,
        base / 1024.0,
        peak / 1024.0,
        growth * 100.0,
        fds.iter().min().unwrap_or(&0),
        fds.iter().max().unwrap_or(&0),
        lag.map_or("?".into(), |l| format!("{l:.1}")),
        dropped.map_or("?".into(), |d| d.to_string()),
        unexpected.len()
    );
    if after.len() < 2 {
        failed.push("too short to judge RSS after the warm-up (run longer or lower --interval)".to_string());
    } else if growth > RSS_SLACK {
        failed.push(format!("RSS grew {:.1} % after the warm-up (limit {:.0} %)", growth * 100.0, RSS_SLACK * 100.0));
    }
    match dropped {
        Some(0) => {}
        Some(n) => failed.push(format!("{n} events lost")),
        None => failed.push("no final summary from the agent".into()),
    }
    if !unexpected.is_empty() {
        failed.push(format!("unexpected findings: {}", unexpected.join("; ")));
    }
    if hazards == 0 {
        failed.push(format!("no {EXPECTED_RULE} finding: the scenario did not put the daemon under pressure"));
    }
    if failed.is_empty() {
        println!("soak: PASS");
        Ok(())
    } else {
        bail!("soak: FAIL: {}", failed.join("; "))
    }
}

pub fn run(minutes: u64, interval_s: u64) -> Result<()> {
    if minutes == 0 || interval_s == 0 {
        bail!("--minutes and --interval must be at least 1");
    }
    run_setup()?;
    let bin = run_build(true)?;
    if !is_root() {
        bail!("the soak builds loop devices, mounts and a memory cgroup: run it as root");
    }
    let _lock = testbed::lock()?;
    let spec = StorageStackSpec::qsd_in_memcg(256);
    let mut stack = StorageStack::build("soak", &spec)?;
    println!(
        "soak: {minutes} min of monitor over XFS on {} <- qemu-storage-daemon (pid {}) in a 256 MiB memcg",
        stack.top().device.display(),
        stack.daemon_pid.unwrap_or(0)
    );
    let outcome = soak(&mut stack, &bin, minutes, Duration::from_secs(interval_s));
    let torn = stack.teardown();
    let outcome = outcome?;
    torn?;
    verdict(&outcome)
}
