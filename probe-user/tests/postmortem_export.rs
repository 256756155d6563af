//! `report --perfetto` and `report --folded` on traces, without root: the
//! timeline's structure (every finding an instant, every slice closed, the
//! servicer's and the writer's tracks, each track in time order) and the
//! folded stacks through inferno to a well-formed SVG.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use bytemuck::bytes_of;
use probe_common::events::{EventKind, ReclaimData, ReclaimEvent, TaskCtx, WritebackWaitData, WritebackWaitEvent};
use reclaimscope::trace::{EventRecord, Frame, Opaque, Record, StackRecord, TopologyRecord, TraceHeader, TraceWriter};
use serde_json::{json, Value};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/trace").join(name)
}

fn report_json(args: &[&str]) -> Value {
    let mut all = vec!["report", "--json"];
    all.extend_from_slice(args);
    let out = common::run(&all);
    assert!(out.status.success(), "report failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `report --perfetto` and returns the timeline and the report.
fn perfetto(dir: &Path, args: &[&str]) -> (Value, Value) {
    let out_path = dir.join("timeline.json");
    let mut all = vec!["report", "--perfetto", out_path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = common::run(&all);
    assert!(out.status.success(), "report --perfetto failed: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(out_path.to_str().unwrap()), "does not say where the timeline is: {said}");
    let timeline = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).expect("the timeline is JSON");
    (timeline, report_json(args))
}

type Track = (u64, u64);

fn track(ev: &Value) -> Track {
    (ev["pid"].as_u64().unwrap(), ev["tid"].as_u64().unwrap())
}

/// The structure Perfetto relies on, and what the issue asks of it.
fn check_timeline(t: &Value, report: &Value) -> BTreeMap<Track, String> {
    let events = t["traceEvents"].as_array().expect("traceEvents");
    let mut names = BTreeMap::new();
    let mut last: BTreeMap<Track, f64> = BTreeMap::new();
    let mut open: BTreeMap<Track, Vec<String>> = BTreeMap::new();
    let mut instants = Vec::new();
    let mut flows: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    for ev in events {
        let ph = ev["ph"].as_str().unwrap();
        if ph == "M" {
            if ev["name"] == "thread_name" {
                names.insert(track(ev), ev["args"]["name"].as_str().unwrap().to_owned());
            }
            continue;
        }
        let tr = track(ev);
        let ts = ev["ts"].as_f64().unwrap();
        let prev = last.insert(tr, ts).unwrap_or(f64::MIN);
        assert!(ts >= prev, "track {tr:?} goes back in time from {prev} to {ts}: {ev}");
        match ph {
            "B" => open.entry(tr).or_default().push(ev["name"].as_str().unwrap().to_owned()),
            "E" => assert!(open.entry(tr).or_default().pop().is_some(), "an end without a begin on {tr:?}: {ev}"),
            "X" => assert!(ev["dur"].as_f64().unwrap() >= 0.0, "{ev}"),
            "i" => instants.push(ev),
            "s" => flows.entry(ev["id"].as_u64().unwrap()).or_default().0 += 1,
            "f" => flows.entry(ev["id"].as_u64().unwrap()).or_default().1 += 1,
            other => panic!("unexpected phase {other}: {ev}"),
        }
    }
    // Every reclaim begin has its end (so has every other slice).
    for (tr, o) in &open {
        assert!(o.is_empty(), "track {tr:?} leaves {o:?} open");
    }
    assert!(flows.values().all(|c| *c == (1, 1)), "each link leaves once and arrives once: {flows:?}");
    // Every finding, replayed or only recorded live, is an instant on its servicer.
    let findings: Vec<&Value> =
        report["findings"].as_array().unwrap().iter().chain(report["recorded_only"].as_array().unwrap()).collect();
    assert!(!findings.is_empty(), "the trace has no finding to look for");
    for f in findings {
        let (rule, tid) = (f["rule"].as_str().unwrap(), f["servicer"]["tid"].as_u64().unwrap());
        assert!(
            instants.iter().any(|i| i["cat"] == "finding" && i["args"]["rule"] == rule && i["tid"] == tid),
            "finding {rule} of tid {tid} is not an instant in the timeline"
        );
        let i = instants.iter().find(|i| i["args"]["rule"] == rule).unwrap();
        for arg in ["severity", "remedy"] {
            assert!(i["args"][arg].as_str().is_some_and(|s| !s.is_empty()), "no {arg}: {i}");
        }
    }
    // Every track that has events is named.
    for tr in last.keys() {
        assert!(names.contains_key(tr), "track {tr:?} has no name");
    }
    names
}

/// Folded stacks through inferno, as `cargo xtask demo` does: the SVG must
/// be well-formed XML with an <svg> root and show the stacks' frames.
fn check_flamegraph(folded: &str, must_show: &str) {
    let lines: Vec<&str> = folded.lines().collect();
    assert!(!lines.is_empty(), "no folded stacks");
    for l in &lines {
        let (stack, count) = l.rsplit_once(' ').expect("`stack count`");
        assert!(count.parse::<u64>().unwrap() > 0, "{l}");
        assert!(stack.split(';').all(|f| !f.is_empty()), "{l}");
    }
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut inferno::flamegraph::Options::default(), lines, &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    let mut reader = quick_xml::Reader::from_str(&svg);
    let mut root = None;
    loop {
        match reader.read_event().expect("the flame graph is well-formed XML") {
            quick_xml::events::Event::Start(e) if root.is_none() => {
                root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned())
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("svg"));
    assert!(svg.contains(must_show), "the flame graph does not show {must_show}");
}

const QSD: (u32, u32) = (4242, 4243);

fn ctx(ts_ns: u64, stack_id: i32) -> TaskCtx {
    TaskCtx {
        ts_ns,
        tgid: QSD.0,
        tid: QSD.1,
        task_flags: 0x800,
        stack_id,
        comm: *b"qemu-storage-dae",
        serving_dev: 7 << 20,
        fs_depth: 1,
    }
}

/// A recorded qsd deadlock in miniature, as `record` writes it: the
/// servicer's memcg reclaim waits on writeback of its own device and never
/// returns; the live agent's RS201 names the writer holding IOLOCK and the
/// flusher waiting behind the servicer.
fn qsd_trace(dir: &Path) -> PathBuf {
    let path = dir.join("qsd.trace");
    let header = TraceHeader {
        agent_version: "0.1.0".into(),
        kernel_release: "6.18.0".into(),
        hostname: "h".into(),
        started_unix_ns: 1_764_000_000_000_000_000,
        command: "reclaimscope record -o qsd.trace".into(),
        topology: TopologyRecord::default(),
        attach: Opaque::default(),
        gfp_format: None,
        monotonic_to_unix_ns: Some(1_763_990_000_000_000_000),
    };
    let mut w = TraceWriter::create(&path, header, None, 1, false).unwrap();
    let reclaim = |kind, ts| {
        let d = ReclaimData { reclaim_kind: 2, gfp: 0x100cca, order: 0, duration_ns: 500_000, ..Default::default() };
        Record::Event(EventRecord { unix_ns: 0, data: bytes_of(&ReclaimEvent::new(kind, ctx(ts, -1), d)).to_vec() })
    };
    let mut bdi = [0u8; 32];
    bdi[..3].copy_from_slice(b"7:0");
    let wait = WritebackWaitEvent::new(
        EventKind::WritebackWait,
        ctx(3_500_000, 9),
        WritebackWaitData { bdi, ino: 131, index: 0, in_reclaim: 1, dev: 0 },
    );
    let frames =
        ["folio_wait_writeback+0x2a/0x80", "shrink_folio_list+0x3a/0x9f0", "try_to_free_mem_cgroup_pages+0x10"];
    let stack = Record::Stack(StackRecord {
        id: 9,
        frames: frames.iter().enumerate().map(|(i, s)| Frame { addr: i as u64, symbol: s.to_string() }).collect(),
    });
    let finding = json!({
        "rule": "RS201", "severity": "deadlock",
        "servicer": {"name": "/usr/bin/qemu-storage-daemon", "comm": "qemu-storage-dae", "tgid": QSD.0, "tid": QSD.1,
                     "task_flags": 0x800},
        "upper_fs": null, "device": {"major": 7, "minor": 0}, "backing_file": null, "lower_fs": null,
        "bottom_fs": null, "gfp": 0x100cca, "upper_inflight": null,
        "detail": {"blocked_in_reclaim": {"waited_on": {"major": 7, "minor": 0}, "blocked_ns": 6_000_000_000u64}},
        "stack": frames, "threads": [], "threads_folded": 0, "stacks": [], "stacks_folded": 0,
        "lock_holders": [{"tid": 900, "tgid": 900, "comm": "dd", "held": ["IOLOCK_EXCL"], "ino": 131,
                     "blocked_in": "balance_dirty_pages", "seen_ms_ago": 0}],
        "chain": ["kworker/u8:2+flush-7:0[77] folio_wait_writeback <- write_cache_pages"],
        "first_ns": 9_000_000u64, "last_ns": 9_000_000u64, "count": 1,
    });
    for r in [
        reclaim(EventKind::ReclaimBegin, 1_000_000),
        reclaim(EventKind::ReclaimEnd, 1_500_000),
        reclaim(EventKind::ReclaimBegin, 3_000_000),
        stack,
        Record::Event(EventRecord { unix_ns: 0, data: bytes_of(&wait).to_vec() }),
        Record::Finding(Box::new(serde_json::from_value(finding).unwrap())),
    ] {
        w.write(&r).unwrap();
    }
    w.finish().unwrap();
    path
}

#[test]
fn a_recorded_deadlock_exports_a_timeline_of_servicer_writer_and_flusher() {
    let dir = tempfile::tempdir().unwrap();
    let trace = qsd_trace(dir.path());
    let (t, report) = perfetto(dir.path(), &[trace.to_str().unwrap()]);
    let names = check_timeline(&t, &report);
    let named = |tid: u64| names.iter().find(|((_, t), _)| *t == tid).map(|(_, n)| n.as_str()).unwrap_or("");
    assert!(named(QSD.1 as u64).contains("servicer of 7:0"), "{names:?}");
    assert!(named(900).starts_with("dd 900") && named(900).contains("holder"), "{names:?}");
    assert!(named(77).contains("flusher"), "{names:?}");
    let events = t["traceEvents"].as_array().unwrap();
    let process = |pid: u32| {
        events.iter().find(|e| e["name"] == "process_name" && e["pid"] == pid).map(|e| e["args"]["name"].clone())
    };
    assert_eq!(process(QSD.0), Some(json!("/usr/bin/qemu-storage-daemon")));
    // Wall-clock times: the header's offset plus the kernel's stamp.
    let first = t["traceEvents"].as_array().unwrap().iter().find(|e| e["ph"] == "B").unwrap();
    assert_eq!(first["ts"].as_f64().unwrap(), (1_763_990_000_000_000_000u64 + 1_000_000) as f64 / 1000.0);
    assert!(t["otherData"]["clock"].as_str().unwrap().contains("Unix time"));
}

#[test]
fn a_recorded_deadlock_folds_into_a_flame_graph() {
    let dir = tempfile::tempdir().unwrap();
    let trace = qsd_trace(dir.path());
    let out = common::run(&["report", "--folded", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let folded = String::from_utf8(out.stdout).unwrap();
    // The replay's RS102 (a wait on its own device in reclaim; the file has
    // no topology, so the servicer goes by its comm) and the live RS201.
    assert_eq!(
        folded,
        "qemu-storage-dae[4242];RS102;try_to_free_mem_cgroup_pages;shrink_folio_list;folio_wait_writeback 1\n\
         qemu-storage-daemon[4242];RS201;try_to_free_mem_cgroup_pages;shrink_folio_list;folio_wait_writeback 1\n"
    );
    check_flamegraph(&folded, "shrink_folio_list");
}

#[test]
fn an_ftrace_capture_exports_a_timeline_on_the_boot_clock() {
    let dir = tempfile::tempdir().unwrap();
    let capture = data("ftrace-memcg-dd.trace");
    let (t, report) = perfetto(dir.path(), &["--servicer", "13256=7:0", capture.to_str().unwrap()]);
    let names = check_timeline(&t, &report);
    assert!(names.values().any(|n| n.starts_with("dd 13256: servicer of 7:0")), "{names:?}");
    assert!(t["otherData"]["clock"].as_str().unwrap().contains("since boot"));
    let events = t["traceEvents"].as_array().unwrap();
    let count = |ph: &str, name: &str| events.iter().filter(|e| e["ph"] == ph && e["name"] == name).count();
    assert_eq!(count("B", "memcg reclaim"), 240, "every reclaim of the capture");
    assert!(count("X", "D state") > 0, "the capture's D-state intervals");
}

/// The qsd deadlock scenario (XFS on a loop device on qemu-storage-daemon's
/// FUSE export, in a small memory cgroup), as `reclaimscope record` wrote
/// it: the servicer's memcg reclaim waits on writeback of the device it
/// serves while dd holds XFS_IOLOCK_EXCL. Its header predates the clock
/// offset, so the wall clock is estimated from the read times.
#[test]
fn the_recorded_qsd_deadlock_exports_its_story() {
    let dir = tempfile::tempdir().unwrap();
    let trace = data("qsd-deadlock.trace");
    let (t, report) = perfetto(dir.path(), &[trace.to_str().unwrap()]);
    let names = check_timeline(&t, &report);
    let servicer = names.values().find(|n| n.starts_with("qemu-storage-da") && n.contains("servicer of 7:0"));
    assert!(servicer.is_some(), "no servicer track: {names:?}");
    let writer = names.values().find(|n| n.starts_with("dd ") && n.contains("holder (writer)"));
    assert!(writer.is_some(), "no writer track: {names:?}");
    let events = t["traceEvents"].as_array().unwrap();
    let reclaims = events.iter().filter(|e| e["ph"] == "B" && e["cat"] == "reclaim").count();
    assert!(reclaims > 0, "no reclaim slices");
    // The writer's span links back to the servicer that waits on it.
    let holding = events.iter().find(|e| e["cat"] == "holder").expect("the writer's holding span");
    assert!(holding["name"].as_str().unwrap().contains("XFS_IOLOCK_EXCL"), "{holding}");
    assert!(events.iter().any(|e| e["ph"] == "f" && e["tid"] == holding["tid"]), "no link to the writer");
    assert!(t["otherData"]["clock"].as_str().unwrap().contains("estimated"));
    // Wall-clock microseconds: after 2020 and before 2100.
    let ts = events.iter().find_map(|e| e["ts"].as_f64()).unwrap();
    assert!((1.6e15..4.1e15).contains(&ts), "{ts} is not Unix time in µs");

    let out = common::run(&["report", "--folded", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let folded = String::from_utf8(out.stdout).unwrap();
    let rules: std::collections::BTreeSet<&str> = folded.lines().filter_map(|l| l.split(';').nth(1)).collect();
    let found: std::collections::BTreeSet<&str> =
        report["findings"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, found, "a line per rule that has stacks");
    assert!(!folded.contains("bpf_trace_run"), "the probe's own frames are left out:\n{folded}");
    check_flamegraph(&folded, "folio_wait_writeback");
}
