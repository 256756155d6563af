//! record → report: a trace recorded on the real hazard scenario replays to
//! the findings the agent printed live; damaged files never panic; SIGTERM
//! leaves a whole file and no programs behind.

mod common;

use std::{collections::BTreeSet, fs};

use reclaimscope::trace::TraceReader;
use serde_json::Value;

fn report_json(path: &std::path::Path) -> Value {
    let out = common::run(&["report", "--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "report failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn key_set(findings: &Value) -> BTreeSet<(String, u64)> {
    findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["rule"].as_str().unwrap().to_owned(), f["servicer"]["tid"].as_u64().unwrap()))
        .collect()
}

/// Where each whole record of a trace file ends, the header's first: a copy
/// cut at `at` holds exactly the records that end at or before `at`.
fn record_ends(path: &std::path::Path) -> Vec<u64> {
    let mut r = TraceReader::open(path).unwrap();
    let mut ends = vec![r.bytes_read()];
    while r.next().is_some() {
        ends.push(r.bytes_read());
    }
    assert!(r.damage().is_none(), "the whole file is damaged: {:?}", r.damage());
    ends
}

#[test]
fn recorded_hazard_replays_to_the_live_findings_and_survives_damage() {
    testbed::require_root("recorded_hazard_replays_to_the_live_findings_and_survives_damage");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("hazard.trace");
    let (_lock, mut stack) = common::hazard_stack("record");
    let agent = common::Agent::start(&["record", "-o", trace.to_str().unwrap(), "--summary-every", "1"]);
    common::wait_for_file(&trace);
    common::write_through(&mut stack, 384);
    let ours = common::prog_ids_of(agent.pid());
    // SIGTERM, as a service manager stops it.
    let (code, _) = agent.stop(libc::SIGTERM);
    stack.teardown().unwrap();
    assert_eq!(code, Some(0));
    assert!(!ours.is_empty(), "the agent held no BPF program");
    assert_eq!(common::still_loaded(&ours), Vec::<u64>::new(), "programs left loaded after SIGTERM");

    let r = report_json(&trace);
    assert!(r["damage"].is_null(), "a cleanly stopped recording is damaged: {}", r["damage"]);
    let live = key_set(&r["recorded"]);
    let replayed = key_set(&r["findings"]);
    assert!(live.iter().any(|(rule, _)| rule == "RS001"), "no live hazard recorded: {live:?}");
    assert_eq!(replayed, live, "replay differs from what the agent found live");
    assert!(r["servicers"].as_array().unwrap().iter().any(|s| s["comm"].as_str().unwrap().starts_with("qemu-storage")));
    assert!(!r["timelines"][0]["events"].as_array().unwrap().is_empty());
    // The header carries the kernel and the topology, so it reads elsewhere.
    assert_eq!(r["kernel_release"].as_str().unwrap(), fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim());

    // Damage: truncations and a flipped byte are read up to the last whole record.
    let bytes = fs::read(&trace).unwrap();
    let n = bytes.len();
    let ends = record_ends(&trace);
    assert_eq!(ends.len() as u64, r["records"].as_u64().unwrap());
    let cut = dir.path().join("cut.trace");
    for at in [n / 5, n / 3, n / 2, n - 7, n - 1] {
        fs::write(&cut, &bytes[..at]).unwrap();
        let out = common::run(&["report", "--json", cut.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(101), "panic at cut {at}");
        assert!(out.status.success(), "cut at {at}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let whole = ends.iter().filter(|end| **end <= at as u64).count() as u64;
        assert_eq!(v["records"].as_u64(), Some(whole), "records read up to the cut at {at}");
        let on_a_boundary = ends.contains(&(at as u64));
        assert_eq!(v["damage"].is_null(), on_a_boundary, "cut at {at}, damage: {}", v["damage"]);
    }
    fs::write(&cut, &bytes[..n - 3]).unwrap();
    let v = report_json(&cut);
    assert!(v["damage"].as_str().unwrap().contains("truncated"), "{}", v["damage"]);
    let mut flipped = bytes.clone();
    flipped[n / 2] ^= 0xff;
    fs::write(&cut, &flipped).unwrap();
    let v = report_json(&cut);
    assert!(!v["damage"].is_null(), "a flipped byte went unnoticed");
    // Cut inside the header: nothing is readable, one clear line.
    fs::write(&cut, &bytes[..20]).unwrap();
    let out = common::run(&["report", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn rotation_bounds_disk_use() {
    testbed::require_root("rotation_bounds_disk_use");
    let _lock = testbed::lock().unwrap();
    let memcg = testbed::Memcg::create("rotate", 64).unwrap();
    // On a disk filesystem: the writer's page cache must be reclaimable
    // (tmpfs pages are not, without swap, and a v2 memcg OOM-kills dd).
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let trace = dir.path().join("r.trace");
    // Volume comes from the writer's own reclaim: record every task.
    let agent = common::Agent::start(&[
        "record",
        "--all",
        "-o",
        trace.to_str().unwrap(),
        "--max-size",
        "40K",
        "--max-files",
        "3",
        "--summary-every",
        "1",
    ]);
    common::wait_for_file(&trace);
    let mut dd = std::process::Command::new("dd");
    dd.args(["if=/dev/zero", &format!("of={}", dir.path().join("f").display()), "bs=1M", "count=1500", "conv=fsync"]);
    memcg.enter_on_spawn(&mut dd).unwrap();
    assert!(dd.status().unwrap().success());
    let (code, _) = agent.stop(libc::SIGINT);
    assert_eq!(code, Some(0));
    let files: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("r.trace"))
        .collect();
    assert_eq!(files.len(), 3, "expected rotation to keep exactly 3 files");
    for f in files {
        assert!(f.metadata().unwrap().len() <= 40 << 10, "{:?} exceeds --max-size", f.path());
        let v = report_json(&f.path());
        assert!(v["damage"].is_null() && v["events"].as_u64().unwrap() > 0, "{:?}: {v}", f.path());
    }
}

/// docs/postmortem.md: the most memory `report` may use, whatever its input.
const REPORT_RSS_BOUND_MIB: u64 = 256;

/// Runs `report` on `args` with its address space capped at twice the
/// bound (so a report that would grow without end fails fast instead of
/// taking the machine), and returns its exit status and peak RSS in MiB.
fn report_peak_rss(args: &[&str], out: &std::path::Path) -> (std::process::ExitStatus, u64) {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("report").args(args).stdout(fs::File::create(out).unwrap()).stderr(std::process::Stdio::null());
    let cap = (REPORT_RSS_BOUND_MIB * 2) << 20;
    // SAFETY: setrlimit is async-signal-safe, which is all pre_exec asks.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: cap, rlim_max: cap };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped by wait4 below, which also gives its own rusage.
    let pid = cmd.spawn().map(|c| c.id() as i32).unwrap();
    // SAFETY: rusage is plain data, valid all zero.
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: wait4 on our own child, writing through valid pointers.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss as u64 >> 10)
}

/// A reclaim begin of a servicer thread, with `stack_id`.
fn reclaim_event(i: u32, stack_id: i32) -> reclaimscope::trace::Record {
    use probe_common::events::{EventKind, ReclaimData, ReclaimEvent, TaskCtx};
    let ctx = TaskCtx {
        ts_ns: i as u64 * 1000,
        tgid: 7,
        tid: 7 + i % 64,
        stack_id,
        serving_dev: 7 << 20,
        ..Default::default()
    };
    let e = ReclaimEvent {
        kind: EventKind::ReclaimBegin as u32,
        _pad: 0,
        ctx,
        data: ReclaimData { reclaim_kind: 2, gfp: 0xcc0, ..Default::default() },
    };
    let data = reclaimscope::events::decode::Event::ReclaimBegin(e).to_bytes();
    reclaimscope::trace::Record::Event(reclaimscope::trace::EventRecord { unix_ns: 0, data })
}

/// Issue 21: a 1.9 MB trace, one stack record of 1 MB and then small
/// events using it, grew `report` past 6 GiB (each event got its own copy
/// of the stack, and every event was kept); and a text capture was read
/// whole. Both must stay under the documented bound.
#[test]
fn report_memory_stays_bounded_on_crafted_inputs() {
    use reclaimscope::trace::{Frame, Record, StackRecord, TraceWriter};
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("crafted.trace");
    let header = common::test_header(None);
    let mut w = TraceWriter::create(&trace, header, None, 1, false).unwrap();
    let frames = (0..23_000).map(|a| Frame { addr: a, symbol: "shrink_folio_list".into() }).collect();
    w.write(&Record::Stack(StackRecord { id: 1, frames })).unwrap();
    for i in 0..9_000 {
        w.write(&reclaim_event(i, 1)).unwrap();
    }
    w.finish().unwrap();
    let size = fs::metadata(&trace).unwrap().len();
    assert!((1_800_000..2_400_000).contains(&size), "{size} bytes");

    // A text capture larger than the bound: reclaim lines between three
    // lines of 100 MiB (on disk: /tmp may be memory).
    let disk = tempfile::tempdir_in("/var/tmp").unwrap();
    let capture = disk.path().join("capture.txt");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(fs::File::create(&capture).unwrap());
        for i in 0..60_000u64 {
            let line = format!(
                "  dd-42 [000] ..... {}.{:06}: mm_vmscan_direct_reclaim_begin: order=0 gfp_flags=GFP_KERNEL\n",
                i / 1000,
                i % 1000 * 1000
            );
            f.write_all(line.as_bytes()).unwrap();
            if i % 20_000 == 10_000 {
                f.write_all(&vec![b'x'; 100 << 20]).unwrap();
                f.write_all(b"\n").unwrap();
            }
        }
    }
    assert!(fs::metadata(&capture).unwrap().len() > REPORT_RSS_BOUND_MIB << 20);

    let out = dir.path().join("out");
    for args in [
        vec![trace.to_str().unwrap()],
        vec!["--json", trace.to_str().unwrap()],
        vec!["--servicer", "42=7:0", capture.to_str().unwrap()],
    ] {
        let t = std::time::Instant::now();
        let (status, peak) = report_peak_rss(&args, &out);
        eprintln!("report {args:?}: {status}, peak RSS {peak} MiB in {:.1} s", t.elapsed().as_secs_f64());
        assert!(status.success(), "report {args:?}: {status}");
        assert!(peak < REPORT_RSS_BOUND_MIB, "report {args:?} peaked at {peak} MiB");
    }
    let text = fs::read_to_string(&out).unwrap();
    assert!(text.contains("lines of the capture were other events or unreadable"), "{text}");
}
