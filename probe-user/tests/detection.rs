//! The detection engine on real stacks: the hazard is flagged, the real
//! deadlock is flagged as it forms, and the controls stay quiet.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;

fn dev_of(stack: &testbed::StorageStack) -> String {
    let (ma, mi) = stack.top().devt;
    format!("{ma}:{mi}")
}

fn rule(v: &Value) -> &str {
    v["rule"].as_str().unwrap_or_default()
}

#[test]
fn hazard_is_flagged_for_qemu_storage_daemon() {
    testbed::require_root("hazard_is_flagged_for_qemu_storage_daemon");
    let (_lock, mut stack) = common::hazard_stack("hazard");
    let agent = common::Agent::start(&["watch", "--json", "--summary-every", "1"]);
    agent.wait_started();
    common::write_through(&mut stack, 384);
    let (code, lines) = agent.stop(libc::SIGINT);
    let mountpoint = stack.top().mountpoint.display().to_string();
    let dev = dev_of(&stack);
    let qsd = stack.daemon_pid.unwrap();
    stack.teardown().unwrap();
    assert_eq!(code, Some(0));
    // Other tasks may serve the stack too (the flusher writing back the
    // FUSE file): the finding that matters is the daemon's.
    let hazards: Vec<&Value> =
        common::findings(&lines).into_iter().filter(|f| rule(f) == "RS001" && f["servicer"]["tgid"] == qsd).collect();
    assert!(!hazards.is_empty(), "no hazard for qsd {qsd}; got {lines:#?}");
    let h = hazards[0];
    assert_eq!(h["severity"], "hazard");
    assert_eq!(h["servicer"]["tgid"], qsd);
    assert!(h["servicer"]["comm"].as_str().unwrap().starts_with("qemu-storage"), "{}", h["servicer"]["comm"]);
    assert_eq!(h["upper_fs"]["mount_point"], mountpoint.as_str());
    assert_eq!(h["upper_fs"]["fs_type"], "xfs");
    assert_eq!(h["device"], dev.as_str());
    assert_ne!(h["gfp_raw"].as_u64().unwrap() & 0x80, 0, "__GFP_FS not in {}", h["gfp"]);
    assert!(h["remedy"].as_str().unwrap().contains("PR_SET_IO_FLUSHER"));
    assert!(!h["stack"].as_array().unwrap().is_empty(), "no kernel stack");
    assert_eq!(h["servicer"]["name"], "qemu-storage-daemon", "the full program name, not the 15-byte comm");
    // A kernel whose legacy-memcg reclaim skips FUSE writeback waits
    // (6.16+, under cgroup v1) says so on the daemon's hazard; others do not.
    let closed = kernel_skips_fuse_writeback_waits();
    assert_eq!(h["kernel_note"].is_string(), closed, "kernel note {}", h["kernel_note"]);
    // One finding per (rule, process, upper fs): every qsd thread is in it,
    // counted live.
    let live: Vec<&Value> = common::final_findings(&lines)
        .into_iter()
        .filter(|f| rule(f) == "RS001" && f["servicer"]["tgid"] == qsd)
        .collect();
    assert_eq!(live.len(), 1, "{live:#?}");
    let threads = live[0]["threads"].as_array().unwrap();
    let sightings: u64 = threads.iter().map(|t| t["count"].as_u64().unwrap()).sum();
    assert_eq!(sightings + live[0]["threads_folded"].as_u64().unwrap(), live[0]["count"].as_u64().unwrap());
    // Holders are named only while blocked holding something (docs/rules.md):
    // this writer stays outside the memcg and is rarely blocked under its
    // lock, so whether it is named depends on timing. The deadlock tests,
    // where it is blocked for good, assert it.
    let hooks = common::chosen_families();
    common::record_result(
        "hazard (qsd FUSE, servicer in a 256 MiB memcg)",
        serde_json::json!({
            "result": format!("RS001 for qemu-storage-daemon, gfp {}", h["gfp"].as_str().unwrap_or("?")),
            "through": { "reclaim": hooks["reclaim"], "alloc_slowpath": hooks["alloc_slowpath"] },
        }),
    );
}

/// What this kernel says: BTF names AS_WRITEBACK_MAY_DEADLOCK_ON_RECLAIM
/// (its string table holds every enumerator's name) and the memory
/// controller is mounted as cgroup v1's.
fn kernel_skips_fuse_writeback_waits() -> bool {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
    let name = b"AS_WRITEBACK_MAY_DEADLOCK_ON_RECLAIM\0";
    let has_flag = btf.windows(name.len()).any(|w| w == name);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let v1 = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(2) == Some(&"cgroup") && f.get(3).is_some_and(|o| o.split(',').any(|o| o == "memory"))
    });
    has_flag && v1
}

/// What an operator meets on a hung host: the deadlock formed before the
/// agent started, so no event announced the servicer's reclaim and no
/// hook saw the writer take its lock. The agent still reports RS201, from
/// the servicer's blocked stack, and names the writer with the IOLOCK it
/// took long before, from the writer's stack. A memcg that OOM-kills the
/// daemon instead gives no deadlock to find: the stack is built again at
/// once, up to five times. Under cgroup v2 (Debian 6.12) the OOM killer
/// won that race in 4 of 6 builds at 96 MiB and in 1 of 8 at 192 MiB,
/// hence the larger limit here.
#[test]
fn a_deadlock_formed_before_the_agent_started_is_found_with_its_holder() {
    testbed::require_root("a_deadlock_formed_before_the_agent_started_is_found_with_its_holder");
    let _lock = testbed::lock().unwrap();
    let spec = testbed::StorageStackSpec { memcg_limit_mb: Some(192), ..common::deadlock_spec() };
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        let mut stack = testbed::StorageStack::build("early", &spec).unwrap();
        let writer = stack.spawn_writer("data", 512).unwrap();
        let qsd = stack.daemon_pid.unwrap();
        // The deadlock has formed once a daemon thread stays in D state
        // for 3 s inside memcg reclaim (cgroup v1 waits on the XFS's
        // writeback there) or dirty throttling (v2 throttles it instead).
        let in_reclaim = || {
            std::fs::read_dir(format!("/proc/{qsd}/task")).into_iter().flatten().flatten().any(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                stat.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('D'))
                    && (stack.contains("try_to_free_mem_cgroup_pages") || stack.contains("balance_dirty_pages"))
            })
        };
        // Throttled, it wakes every pause (at most 200 ms): only a second
        // without it in D state ends the streak.
        let (t, mut since, mut last) = (Instant::now(), None::<Instant>, Instant::now());
        let oom_kills = || stack.memcg.as_ref().map_or(0, |m| m.pressure().oom_kills);
        while t.elapsed() < Duration::from_secs(90)
            && since.is_none_or(|s| s.elapsed() < Duration::from_secs(3))
            && oom_kills() == 0
        {
            if in_reclaim() {
                last = Instant::now();
                since.get_or_insert(last);
            } else if last.elapsed() > Duration::from_secs(1) {
                since = None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The writer may be blocked under its write (holding the IOLOCK),
        // or in reclaim on a page fault of its own code, holding nothing:
        // the kernel decides. Only the first shape has a holder to find.
        // Before 5.12 the write is xfs_file_buffered_aio_write.
        let under_write = std::fs::read_to_string(format!("/proc/{writer}/stack"))
            .is_ok_and(|s| ["xfs_file_buffered_write+", "xfs_file_buffered_aio_write+"].iter().any(|f| s.contains(f)));
        let oom = oom_kills();
        if since.is_none() || oom > 0 || !under_write {
            stack.abort_fuse().unwrap();
            stack.teardown().unwrap();
            let why = if oom > 0 {
                format!("the memcg OOM killer broke the cycle after {:.0} s", t.elapsed().as_secs_f64())
            } else if since.is_none() {
                "no deadlock formed within 90 s".to_owned()
            } else {
                "the writer was blocked outside its write".to_owned()
            };
            assert!(attempt < ATTEMPTS, "{why}, {ATTEMPTS} times");
            println!("attempt {attempt}: {why}; building again");
            continue;
        }
        let agent = common::Agent::start(&["watch", "--json", "--summary-every", "1"]);
        agent.wait_started();
        let start = Instant::now();
        let dead = agent.wait_for(Duration::from_secs(30), |v| v["type"] == "finding" && rule(v) == "RS201");
        let found_after = start.elapsed();
        let writer_at = format!(
            "syscall {:?}\n{}",
            std::fs::read_to_string(format!("/proc/{writer}/syscall")).unwrap_or_default().trim(),
            std::fs::read_to_string(format!("/proc/{writer}/stack")).unwrap_or_default()
        );
        stack.abort_fuse().unwrap();
        let (code, _) = agent.stop(libc::SIGINT);
        stack.teardown().unwrap();
        assert_eq!(code, Some(0));
        let (_, dead) = dead.expect("no RS201 within 30 s of starting on a deadlocked stack");
        assert_eq!(dead["servicer"]["tgid"], qsd);
        let holder = dead["holders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["tgid"] == writer)
            .unwrap_or_else(|| panic!("writer {writer} not named: {dead:#}\nthe writer: {writer_at}"))
            .clone();
        assert!(holder["held"].as_array().unwrap().iter().any(|k| k == "IOLOCK_EXCL"), "{holder:#}");
        assert_ne!(holder["ino"], 0, "{holder:#}");
        println!(
            "RS201 {:.1} s after the agent started on a deadlock that formed before it",
            found_after.as_secs_f64()
        );
        return;
    }
}

#[test]
fn real_deadlock_is_flagged_as_it_forms() {
    testbed::require_root("real_deadlock_is_flagged_as_it_forms");
    let _lock = testbed::lock().unwrap();
    let spec = common::deadlock_spec();
    let mut stack = testbed::StorageStack::build("deadlock", &spec).unwrap();
    let agent = common::Agent::start(&["watch", "--json", "--summary-every", "1"]);
    agent.wait_started();
    let start = Instant::now();
    let writer = stack.spawn_writer("data", 512).unwrap();
    // The cycle ends one of two ways, as the kernel decides: the daemon
    // stays blocked (a deadlock, RS201), or the memcg cannot reclaim and
    // its OOM killer takes the daemon (RS301: the XFS above now fails
    // I/O). Debian 6.12 does either, run to run.
    let qsd = stack.daemon_pid.unwrap();
    let grave = agent.wait_for(Duration::from_secs(90), |v| {
        v["type"] == "finding" && (rule(v) == "RS201" || (rule(v) == "RS301" && v["servicer"]["tgid"] == qsd))
    });
    // Where the writer is when the cycle closed, for a failure message.
    let writer_at = format!(
        "syscall {:?}\n{}",
        std::fs::read_to_string(format!("/proc/{writer}/syscall")).unwrap_or_default().trim(),
        std::fs::read_to_string(format!("/proc/{writer}/stack")).unwrap_or_default()
    );
    if grave.is_none() {
        // Where the daemon's threads are, for the failure message.
        for t in std::fs::read_dir(format!("/proc/{qsd}/task")).into_iter().flatten().flatten() {
            let p = t.path();
            let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            let stack = std::fs::read_to_string(p.join("stack")).unwrap_or_default();
            eprintln!(
                "qsd thread {}: {}\n{stack}",
                t.file_name().to_string_lossy(),
                stat.split(") ").nth(1).unwrap_or("").get(..1).unwrap_or("?")
            );
        }
    }
    // Under cgroup v1, memcg reclaim waits on the upper XFS's writeback
    // itself (RS102). Under v2 it never does (writeback_throttling_sane()):
    // the daemon is dirty-throttled on the memcg's dirty XFS pages (RS002).
    let v2 = stack.memcg.as_ref().unwrap().hierarchy == testbed::Hierarchy::V2;
    let cycle_rule = if v2 { "RS002" } else { "RS102" };
    let recursion = agent.of_type("finding").into_iter().find(|(_, v)| rule(v) == cycle_rule);
    // The warning before the deadlock: the hazard, or the recursion itself
    // when the daemon's first reclaim already waits on the XFS's writeback
    // (RS001 needs the XFS busy at that instant: requests in flight on the
    // loop device, or a blocked holder, and the loop device completes its
    // requests into the FUSE file's page cache at once).
    let hazard = agent.of_type("finding").into_iter().find(|(_, v)| ["RS001", "RS002", "RS102"].contains(&rule(v)));
    // Break the deadlock whatever happened, then check.
    stack.abort_fuse().unwrap();
    let (code, _) = agent.stop(libc::SIGINT);
    stack.teardown().unwrap();
    assert_eq!(code, Some(0), "agent must exit cleanly even with a deadlocked FUSE daemon");
    let (t_hazard, hazard_v) = hazard.expect("no hazard or recursion before the deadlock");
    let (t_dead, dead) = grave.expect("neither a deadlock nor an OOM kill of the daemon reported within 90 s");
    assert!(t_hazard <= t_dead);
    if rule(&dead) == "RS301" {
        println!(
            "hazard at {:.1} s, the daemon OOM-killed at {:.1} s",
            (t_hazard - start).as_secs_f64(),
            (t_dead - start).as_secs_f64()
        );
        common::record_result(
            "deadlock (qsd FUSE, writer and servicer in a 96 MiB memcg)",
            serde_json::json!({
                "result": format!(
                    "{} at {:.1} s, then the memcg OOM-killed qemu-storage-daemon: RS301 at {:.1} s; recovered by aborting FUSE",
                    rule(&hazard_v),
                    (t_hazard - start).as_secs_f64(),
                    (t_dead - start).as_secs_f64()
                ),
                "cgroup": if v2 { "v2" } else { "v1" },
            }),
        );
        return;
    }
    // The wait on the XFS's I/O: its own finding, or, when the daemon's
    // reclaim went straight to reclaim_throttle() (VMSCAN_THROTTLE_WRITEBACK,
    // 5.16+: it sleeps until writeback progresses, with no folio wait to
    // trace), the deadlock's own stack.
    let dead_stack = dead["stack"].as_array().unwrap().iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ");
    let t_rec = match &recursion {
        Some((t, rec)) => {
            let waited_in = if v2 { "balance_dirty_pages" } else { "folio_wait_writeback" };
            assert!(rec["detail"].as_str().unwrap().contains(waited_in), "{}", rec["detail"]);
            *t
        }
        None => {
            assert!(
                !v2 && dead_stack.contains("reclaim_throttle"),
                "no {cycle_rule} finding, and RS201's stack: {dead:#}"
            );
            t_dead
        }
    };
    assert!(!dead["chain"].as_array().unwrap().is_empty(), "no waiting chain");
    // The other half of the cycle: the writer, holding the upper XFS's
    // IOLOCK through its write while it waits.
    let holders = dead["holders"].as_array().unwrap();
    let w = holders
        .iter()
        .find(|h| h["tgid"] == writer)
        .unwrap_or_else(|| panic!("writer {writer} not among {dead:#}\nthe writer: {writer_at}"));
    assert!(!w["held"].as_array().unwrap().is_empty(), "{w:#}");
    println!(
        "hazard at {:.1} s, recursion at {:.1} s, deadlock at {:.1} s after the writer started; hazard lead time {:.1} s",
        (t_hazard - start).as_secs_f64(),
        (t_rec - start).as_secs_f64(),
        (t_dead - start).as_secs_f64(),
        (t_dead - t_hazard).as_secs_f64()
    );
    common::record_result(
        "deadlock (qsd FUSE, writer and servicer in a 96 MiB memcg)",
        serde_json::json!({
            "result": format!(
                "{} at {:.1} s, {cycle_rule} at {:.1} s, RS201 at {:.1} s; recovered by aborting FUSE",
                rule(&hazard_v),
                (t_hazard - start).as_secs_f64(),
                (t_rec - start).as_secs_f64(),
                (t_dead - start).as_secs_f64()
            ),
            "cgroup": if v2 { "v2" } else { "v1" },
        }),
    );
}

/// Runs a writer under the same memory pressure and returns the agent's lines.
fn quiet_run(stack: Option<&mut testbed::StorageStack>, memcg: Option<&testbed::Memcg>) -> Vec<Value> {
    let agent = common::Agent::start(&["watch", "--json", "--summary-every", "1"]);
    agent.wait_started();
    match (stack, memcg) {
        // The writer is in the memcg: the loop worker writes on its behalf.
        (Some(s), _) => {
            let pid = s.spawn_writer("data", 384).unwrap();
            if let Err(e) = s.wait_writer(pid, Duration::from_secs(240)) {
                // Some kernels (Debian's 6.12) OOM-kill the writer: its
                // memcg is charged both for its own folios and for the loop
                // worker's writes of them. The pressure the control needs
                // happened; any other failure is a failure.
                let oom_kills = s.memcg.as_ref().map_or(0, |m| m.pressure().oom_kills);
                assert!(oom_kills > 0, "writer failed without an OOM kill in its memcg: {e:#}");
                println!("writer ended by the memcg OOM killer ({oom_kills} kills): {e:#}");
            }
        }
        (None, Some(m)) => {
            let dir = tempfile::tempdir_in("/var/tmp").unwrap();
            let mut dd = std::process::Command::new("dd");
            dd.args([
                "if=/dev/zero",
                &format!("of={}", Path::new(dir.path()).join("f").display()),
                "bs=1M",
                "count=384",
                "conv=fsync",
            ]);
            m.enter_on_spawn(&mut dd).unwrap();
            assert!(dd.status().unwrap().success());
        }
        (None, None) => unreachable!(),
    }
    let (code, lines) = agent.stop(libc::SIGINT);
    assert_eq!(code, Some(0));
    lines
}

fn assert_pressure_and_no_findings(lines: &[Value], what: &str) {
    let summary = lines.iter().find(|v| v["type"] == "final_summary").expect("final summary");
    common::record_result(
        &format!("control: {what}"),
        serde_json::json!({
            "result": format!("{} findings over {} memcg reclaims", common::findings(lines).len(), summary["reclaim_memcg"]),
        }),
    );
    assert!(
        summary["reclaim_memcg"].as_u64().unwrap() > 0,
        "{what}: no memcg reclaim happened, the control proves nothing"
    );
    let f = common::findings(lines);
    assert!(f.is_empty(), "{what}: unexpected findings {f:#?}");
}

#[test]
fn control_plain_loop_is_quiet() {
    testbed::require_root("control_plain_loop_is_quiet");
    let _lock = testbed::lock().unwrap();
    let spec = testbed::StorageStackSpec {
        servicer: testbed::Servicer::KernelLoop,
        levels: 1,
        image_mb: 1024,
        memcg_limit_mb: Some(256),
        dm: None,
    };
    let mut stack = testbed::StorageStack::build("control-loop", &spec).unwrap();
    let lines = quiet_run(Some(&mut stack), None);
    stack.teardown().unwrap();
    assert_pressure_and_no_findings(&lines, "XFS on a plain loop device");
}

#[test]
fn control_plain_ext4_is_quiet() {
    testbed::require_root("control_plain_ext4_is_quiet");
    let _lock = testbed::lock().unwrap();
    let memcg = testbed::Memcg::create("control-ext4", 128).unwrap();
    let lines = quiet_run(None, Some(&memcg));
    assert_pressure_and_no_findings(&lines, "plain ext4");
}
