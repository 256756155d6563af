//! Shared by the integration tests: running the real binary, reading its
//! JSON lines, and the hazard stack.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long the agent may take to attach its probes and report.
pub const STARTUP: Duration = Duration::from_secs(120);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_reclaimscope")
}

/// Runs the binary to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run reclaimscope")
}

/// A running `reclaimscope` whose stdout JSON lines are collected with the
/// time each arrived. Dropping it interrupts and reaps it.
pub struct Agent {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<(Instant, Value)>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Agent {
    pub fn start(args: &[&str]) -> Agent {
        let mut child = Command::new(bin()).args(args).stdout(Stdio::piped()).spawn().expect("start reclaimscope");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push((Instant::now(), v));
                }
            }
        });
        Agent { child: Some(child), lines, reader: Some(reader) }
    }

    /// Waits for the first summary: the probes are attached and the loop
    /// runs. Under emulation (the VM kernels) loading and verifying every
    /// program takes tens of seconds.
    pub fn wait_started(&self) {
        let t = Instant::now();
        self.wait_for(STARTUP, |v| v["type"] == "summary").expect("agent started");
        eprintln!("agent started in {:.1} s", t.elapsed().as_secs_f64());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Objects whose "type" is `kind`, with their arrival times.
    pub fn of_type(&self, kind: &str) -> Vec<(Instant, Value)> {
        self.lines.lock().unwrap().iter().filter(|(_, v)| v["type"] == kind).cloned().collect()
    }

    /// Waits until `pred` holds for some object, or the timeout passes.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<(Instant, Value)> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Some(hit) = self.lines.lock().unwrap().iter().find(|(_, v)| pred(v)).cloned() {
                return Some(hit);
            }
            thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// Sends `sig`, waits for exit (at most 20 s), returns the exit status
    /// code and every line read.
    pub fn stop(mut self, sig: i32) -> (Option<i32>, Vec<Value>) {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s.code();
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(100));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines.lock().unwrap().iter().map(|(_, v)| v.clone()).collect();
        (status, lines)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `bpftool ARGS --json` prints (Null when it fails).
fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool").args(args).arg("--json").output().expect("bpftool");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Names of the BPF programs attached now, by the kernel's list of links
/// (`bpftool link show`), 15 characters as the kernel keeps them.
pub fn attached_prog_names() -> Vec<String> {
    let links = bpftool_json(&["link", "show"]);
    let ids: Vec<u64> = links.as_array().into_iter().flatten().filter_map(|l| l["prog_id"].as_u64()).collect();
    let progs = bpftool_json(&["prog", "show"]);
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// The ids of the BPF programs process `pid` holds, from the kernel's
/// own account of its descriptors (`prog_id:` in /proc/PID/fdinfo).
/// Names would also match another BPF tool's programs on the host.
pub fn prog_ids_of(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    let mut ids: Vec<u64> = fds
        .flatten()
        .filter(|e| {
            std::fs::read_link(format!("/proc/{pid}/fd/{}", e.file_name().to_string_lossy()))
                .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog")
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Which of `ids` the kernel still has loaded (`bpftool prog show`) 5 s
/// after the agent is gone: the kernel frees a program after an RCU grace
/// period and a work item once its last reference (fd, link) goes, so an
/// exit is not seen at once.
pub fn still_loaded(ids: &[u64]) -> Vec<u64> {
    let loaded = || -> Vec<u64> {
        let progs = bpftool_json(&["prog", "show"]);
        progs.as_array().into_iter().flatten().filter_map(|p| p["id"].as_u64()).filter(|id| ids.contains(id)).collect()
    };
    let t = Instant::now();
    loop {
        let left = loaded();
        if left.is_empty() || t.elapsed() > Duration::from_secs(5) {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn findings(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "finding").collect()
}

/// The findings of `watch --json`'s final summary: each at its live count,
/// with every thread, stack and the latest holders.
pub fn final_findings(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "final_summary")
        .flat_map(|v| v["findings"].as_array().into_iter().flatten())
        .collect()
}

/// The hazard scenario: XFS on a loop device on qemu-storage-daemon's FUSE
/// export on ext4, the daemon in a memory cgroup small enough that it
/// reclaims. The writer stays outside the cgroup, so the daemon's reclaim
/// finds only its own lower-file page cache and nothing hangs.
pub fn hazard_stack(name: &str) -> (testbed::TestbedLock, testbed::StorageStack) {
    let lock = testbed::lock().expect("testbed lock");
    (lock, testbed::StorageStack::build(name, &hazard_spec()).expect("build hazard stack"))
}

/// The hazard scenario's stack, for a test that holds the lock already.
pub fn hazard_spec() -> testbed::StorageStackSpec {
    testbed::StorageStackSpec {
        servicer: testbed::Servicer::QsdFuse,
        levels: 1,
        image_mb: 1024,
        memcg_limit_mb: Some(256),
        dm: None,
    }
}

/// Writes through the upper XFS from outside the memcg and waits for the
/// writer (fsync included).
pub fn write_through(stack: &mut testbed::StorageStack, mb: u64) {
    let pid = stack.spawn_writer_outside_memcg("data", mb).expect("writer");
    stack.wait_writer(pid, Duration::from_secs(240)).expect("writer finishes");
}

/// Waits until `record` created its trace file, which it does once every
/// probe is attached.
pub fn wait_for_file(path: &std::path::Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < STARTUP, "{} not created within {STARTUP:?}", path.display());
        thread::sleep(Duration::from_millis(100));
    }
}

/// The family each hook attached with on this kernel, as `probes` reports it.
pub fn chosen_families() -> serde_json::Map<String, Value> {
    let out = run(&["probes", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["hooks"]
        .as_array()
        .map(|hooks| {
            hooks.iter().map(|h| (h["hook"].as_str().unwrap_or("?").to_owned(), h["family"].clone())).collect()
        })
        .unwrap_or_default()
}

/// Appends one scenario's outcome to the file named by
/// `RECLAIMSCOPE_RESULTS` (the VM suite sets it), from which
/// `cargo xtask kernels` writes docs/kernels.md. A no-op elsewhere.
pub fn record_result(scenario: &str, outcome: Value) {
    let Ok(path) = std::env::var("RECLAIMSCOPE_RESULTS") else { return };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let line = serde_json::json!({ "scenario": scenario, "kernel": kernel.trim(), "outcome": outcome });
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("results file");
    writeln!(f, "{line}").expect("write result");
}

/// The deadlock scenario: XFS on a loop device on qemu-storage-daemon's
/// FUSE export, the daemon and its writer in a 96 MiB memory cgroup.
pub fn deadlock_spec() -> testbed::StorageStackSpec {
    testbed::StorageStackSpec {
        servicer: testbed::Servicer::QsdFuse,
        levels: 1,
        image_mb: 1024,
        memcg_limit_mb: Some(96),
        dm: None,
    }
}

/// `n` idle `sleep` processes in one process group, each holding `fds`
/// descriptors besides stdin/stdout/stderr: a crowded host. Killed and
/// reaped on drop, whatever happened.
pub struct Crowd {
    pub children: Vec<Child>,
    pgid: i32,
}

impl Crowd {
    pub fn spawn(n: usize, fds: usize) -> Crowd {
        // dup() leaves FD_CLOEXEC clear, so every child inherits these.
        let null = File::open("/dev/null").unwrap();
        // SAFETY: dup of a descriptor we own; each copy is closed below.
        let dups: Vec<i32> = (0..fds).map(|_| unsafe { libc::dup(null.as_raw_fd()) }).collect();
        let close = |dups: &[i32]| {
            for &fd in dups {
                // SAFETY: closing our own dups; the children keep theirs.
                unsafe { libc::close(fd) };
            }
        };
        let mut crowd = Crowd { children: Vec::with_capacity(n), pgid: 0 };
        if dups.iter().any(|&fd| fd < 0) {
            close(&dups);
            panic!("dup failed");
        }
        for _ in 0..n {
            let mut cmd = Command::new("sleep");
            // Bounded, so a test killed without its Drop leaves nothing for long.
            cmd.arg("900").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut cmd, crowd.pgid);
            match cmd.spawn() {
                Ok(c) => {
                    if crowd.pgid == 0 {
                        crowd.pgid = c.id() as i32;
                    }
                    crowd.children.push(c);
                }
                Err(e) => {
                    close(&dups);
                    panic!("spawning sleeper {}: {e}", crowd.children.len());
                }
            }
        }
        close(&dups);
        crowd
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        if self.pgid > 0 {
            // SAFETY: signalling the process group we created.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A trace header for traces the tests write themselves.
pub fn test_header(gfp_format: Option<String>) -> reclaimscope::trace::TraceHeader {
    reclaimscope::trace::TraceHeader {
        agent_version: "0".into(),
        kernel_release: "6.18.0".into(),
        hostname: "h".into(),
        started_unix_ns: 0,
        command: "reclaimscope record".into(),
        topology: Default::default(),
        attach: Default::default(),
        gfp_format,
        monotonic_to_unix_ns: None,
    }
}

/// A finding as the agent writes it, with the given words where a hostile
/// file could put any.
pub fn test_finding(rule: &str, detail: &str, comm: &str) -> reclaimscope::detect::finding::Finding {
    serde_json::from_value(serde_json::json!({
        "rule": rule, "severity": "deadlock",
        "servicer": {"name": comm, "comm": comm, "tgid": 1, "tid": 1, "task_flags": 0},
        "upper_fs": null, "device": {"major": 7, "minor": 0}, "backing_file": null, "lower_fs": null,
        "bottom_fs": null, "gfp": 3264, "upper_inflight": null, "detail": {"recorded": detail}, "stack": [],
        "threads": [], "threads_folded": 0, "stacks": [], "stacks_folded": 0, "lock_holders": [],
        "chain": [], "first_ns": 1, "last_ns": 1, "count": 1
    }))
    .unwrap()
}
