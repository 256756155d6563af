//! The model's promises on small traces written here: slices close,
//! tracks never go back in time, links join the tasks a finding names,
//! and the clock comes from the header or, for older traces, the reads.

use std::collections::BTreeMap;
use std::path::Path;

use bytemuck::bytes_of;
use probe_common::events::{EventKind, ReclaimData, ReclaimEvent, TaskCtx, WritebackWaitData, WritebackWaitEvent};

use super::*;
use crate::detect::finding::{LockHolder, ServicerDesc, Severity};
use crate::trace::{EventRecord, Frame, Opaque, StackRecord, TopologyRecord, TraceHeader, TraceWriter};

const QSD: (u32, u32) = (4242, 4243);
const READ_LAG: u64 = 1_764_000_000_000_000_000;

#[derive(Default)]
struct Items(Vec<Item>);

impl Sink for Items {
    fn item(&mut self, item: &Item) -> Result<()> {
        self.0.push(item.clone());
        Ok(())
    }
}

fn ctx(ts_ns: u64, (tgid, tid): (u32, u32), stack_id: i32) -> TaskCtx {
    TaskCtx {
        ts_ns,
        tgid,
        tid,
        task_flags: 0x800,
        stack_id,
        comm: *b"qemu-storage-dae",
        serving_dev: 7 << 20,
        fs_depth: 1,
    }
}

fn reclaim(kind: EventKind, ts: u64) -> Record {
    let data = ReclaimData { reclaim_kind: 2, gfp: 0x100cca, order: 0, duration_ns: 1_000, ..Default::default() };
    let e = ReclaimEvent::new(kind, ctx(ts, QSD, -1), data);
    Record::Event(EventRecord { unix_ns: READ_LAG + ts + 5_000, data: bytes_of(&e).to_vec() })
}

fn wait(ts: u64) -> Record {
    let mut bdi = [0u8; 32];
    bdi[..3].copy_from_slice(b"7:0");
    let data = WritebackWaitData { bdi, ino: 131, index: 0, in_reclaim: 1, dev: 0 };
    let e = WritebackWaitEvent::new(EventKind::WritebackWait, ctx(ts, QSD, 9), data);
    Record::Event(EventRecord { unix_ns: READ_LAG + ts + 2_000, data: bytes_of(&e).to_vec() })
}

fn header(offset: Option<i64>) -> TraceHeader {
    TraceHeader {
        agent_version: "0.1.0".into(),
        kernel_release: "6.18.0".into(),
        hostname: "h".into(),
        started_unix_ns: READ_LAG,
        command: "reclaimscope record".into(),
        topology: TopologyRecord::default(),
        attach: Opaque::default(),
        gfp_format: None,
        monotonic_to_unix_ns: offset,
    }
}

/// The qsd deadlock in miniature: one memcg reclaim that returns, a second
/// that waits on writeback of 7:0 and never returns.
fn write_trace(path: &Path, offset: Option<i64>) {
    let mut w = TraceWriter::create(path, header(offset), None, 1, false).unwrap();
    let stack = Record::Stack(StackRecord {
        id: 9,
        frames: vec![
            Frame { addr: 0, symbol: "bpf_trace_run2+0x103".into() },
            Frame { addr: 1, symbol: "folio_wait_writeback+0x2a/0x80".into() },
            Frame { addr: 2, symbol: "shrink_folio_list+0x3a/0x9f0".into() },
        ],
    });
    for r in [
        reclaim(EventKind::ReclaimBegin, 1_000_000),
        reclaim(EventKind::ReclaimEnd, 2_000_000),
        reclaim(EventKind::ReclaimBegin, 3_000_000),
        stack,
        wait(3_500_000),
    ] {
        w.write(&r).unwrap();
    }
    w.finish().unwrap();
}

fn finding() -> Finding {
    let mut f = Finding::sample("RS201", Severity::Deadlock);
    f.servicer = ServicerDesc {
        name: "qemu-storage-daemon".into(),
        comm: "qemu-storage-dae".into(),
        tgid: QSD.0,
        tid: QSD.1,
        task_flags: 0,
    };
    f.chain = vec!["kworker/u8:2+flush-7:0[77] folio_wait_writeback <- write_cache_pages".into()];
    (f.first_ns, f.last_ns) = (3_500_000, 9_000_000);
    f.lock_holders = vec![LockHolder {
        tid: 900,
        tgid: 900,
        comm: "dd".into(),
        held: vec![Held::IolockExcl],
        ino: 131,
        blocked_in: Some("balance_dirty_pages+0x1f2".into()),
        seen_ms_ago: 8,
    }];
    f
}

/// Per track: times never go back, every Begin has its End, and every
/// Complete lies inside the slices open around it.
fn check_tracks(items: &[Item]) {
    let mut last: BTreeMap<TaskKey, u64> = BTreeMap::new();
    let mut open: BTreeMap<TaskKey, Vec<u64>> = BTreeMap::new();
    for item in items {
        let Some(task) = item.task() else { continue };
        let ts = item.ts();
        let prev = last.insert(task, ts).unwrap_or(0);
        assert!(ts >= prev, "{task:?} goes back from {prev} to {ts}: {item:?}");
        match item {
            Item::Begin { .. } => open.entry(task).or_default().push(ts),
            Item::End { .. } => assert!(open.entry(task).or_default().pop().is_some(), "End without Begin: {item:?}"),
            _ => {}
        }
    }
    for (task, o) in open {
        assert!(o.is_empty(), "{task:?} left {} slices open", o.len());
    }
}

#[test]
fn a_recorded_deadlock_becomes_closed_slices_on_ordered_tracks_with_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qsd.trace");
    write_trace(&path, Some(42));
    let file = std::fs::File::open(&path).unwrap();
    assert_eq!(trace_clock(&file, "qsd.trace").unwrap(), Clock::Header(42));
    let mut items = Items::default();
    let mut again = finding();
    (again.first_ns, again.last_ns, again.chain, again.rule) = (9_500_000, 9_500_000, vec![], "RS102".into());
    let live = [finding(), again];
    let totals = from_trace(&file, "qsd.trace", Findings { all: &live, live: &live }, &mut items).unwrap();
    let items = items.0;
    check_tracks(&items);
    assert_eq!(totals.events, 4);
    assert_eq!(totals.reordered, 0);

    let begins = items.iter().filter(|i| matches!(i, Item::Begin { span: Span::Reclaim { .. }, .. })).count();
    assert_eq!(begins, 2);
    // The second reclaim never returned: it ends with the trace, whose
    // last word is the second finding's.
    let ends: Vec<&Close> =
        items.iter().filter_map(|i| if let Item::End { close, .. } = i { Some(close) } else { None }).collect();
    assert!(matches!(ends[0], Close::Returned { nr_reclaimed: 0, duration_ns: 1_000 }));
    assert_eq!(ends[1..], [&Close::TraceEnd, &Close::TraceEnd]);
    assert!(items.iter().any(|i| matches!(i, Item::End { ts: 9_500_000, task: QSD, close: Close::TraceEnd })));
    // The wait names what it blocks in, from the stack record (the probe's
    // own frames left out).
    assert!(items.iter().any(|i| matches!(i,
        Item::Begin { span: Span::WritebackWait { dev: Some(d), stack, .. }, .. }
            if d.to_string() == "7:0" && stack[0].starts_with("folio_wait_writeback"))));
    // The finding is an instant on the servicer at its first sighting.
    assert!(items.iter().any(|i| matches!(i, Item::Instant { ts: 3_500_000, task: QSD, mark: Mark::Finding(_) })));
    // Both findings saw the writer blocked holding IOLOCK, 8 ms before
    // each: one span from the first sighting to the last.
    assert!(items.iter().any(|i| matches!(
        i,
        Item::Complete { ts: 1_000_000, dur: 500_000, task: (900, 900), span: Span::Holding { sightings: 2, .. } }
    )));
    // Links: servicer -> holder, flusher -> servicer, each out and in once.
    let mut flows: BTreeMap<u64, (Option<TaskKey>, Option<TaskKey>)> = BTreeMap::new();
    for i in &items {
        match i {
            Item::FlowOut { id, task, .. } => flows.entry(*id).or_default().0 = Some(*task),
            Item::FlowIn { id, task, .. } => flows.entry(*id).or_default().1 = Some(*task),
            _ => {}
        }
    }
    let pairs: Vec<_> = flows.values().map(|(a, b)| (a.unwrap(), b.unwrap())).collect();
    assert_eq!(pairs, [(QSD, (900, 900)), ((77, 77), QSD), (QSD, (900, 900))]);
    // Who is who.
    let tasks: Vec<&TaskInfo> =
        items.iter().filter_map(|i| if let Item::Task(t) = i { Some(t) } else { None }).collect();
    assert!(tasks.iter().any(|t| t.tid == QSD.1 && t.serving.is_some_and(|d| d.to_string() == "7:0")));
    assert!(tasks.iter().any(|t| t.tid == 900 && t.holder && t.comm == "dd"));
    assert!(tasks.iter().any(|t| t.tid == 77 && t.waiter && t.flusher() && t.tgid_unknown));
}

#[test]
fn an_older_trace_gets_its_clock_from_the_quickest_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.trace");
    write_trace(&path, None);
    let file = std::fs::File::open(&path).unwrap();
    assert_eq!(trace_clock(&file, "old.trace").unwrap(), Clock::Estimated((READ_LAG + 2_000) as i64));
}

#[test]
fn waiting_chain_entries_parse() {
    assert_eq!(
        parse_chain("dd[1234] folio_wait_writeback <- xfs_file_fsync"),
        Some(("dd", 1234, vec!["folio_wait_writeback".to_owned(), "xfs_file_fsync".to_owned()]))
    );
    assert_eq!(parse_chain("kworker/u8:2+flush-7:0[77]"), Some(("kworker/u8:2+flush-7:0", 77, vec![])));
    assert_eq!(parse_chain("no tid here"), None);
}

/// An ftrace text capture of `lines` (`(seconds, pid, comm, event: fields)`).
fn capture(dir: &Path, lines: &[(&str, &str)]) -> std::fs::File {
    let path = dir.join("capture.txt");
    let text: String = lines
        .iter()
        .map(|(ts, body)| format!("              dd-4243    (   4242) [000] d..2.   {ts}: {body}\n"))
        .collect();
    std::fs::write(&path, format!("# tracer: nop\n#\n{text}")).unwrap();
    std::fs::File::open(path).unwrap()
}

const TO_D: &str = "sched_switch: prev_comm=dd prev_pid=4243 prev_prio=120 prev_state=D ==> next_comm=swapper/0 next_pid=0 next_prio=120";
const WAKE: &str = "sched_switch: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=dd next_pid=4243 next_prio=120";

#[test]
fn a_capture_places_its_d_states_and_findings_in_time_and_leaves_out_a_sleep_its_task_outran() {
    let dir = tempfile::tempdir().unwrap();
    let file = capture(
        dir.path(),
        &[
            ("1.000000", "mm_vmscan_memcg_reclaim_begin: order=0 gfp_flags=GFP_HIGHUSER_MOVABLE"),
            ("1.000100", TO_D),
            ("1.000200", WAKE),
            ("1.000300", TO_D),
            // It runs without a captured wake-up: where that sleep ended is not known.
            ("1.000500", "mm_vmscan_memcg_reclaim_end: nr_reclaimed=32"),
            ("1.000600", TO_D),
            ("1.000700", WAKE),
        ],
    );
    let mut f = finding();
    (f.first_ns, f.last_ns, f.lock_holders, f.chain) = (1_000_250_000, 1_000_250_000, vec![], vec![]);
    f.servicer = ServicerDesc { tgid: 4242, tid: 4243, ..f.servicer };
    let mut items = Items::default();
    let servicers = [(4242, Dev { major: 7, minor: 0 })];
    let totals = from_capture(
        &file,
        "capture.txt",
        &servicers,
        &GfpNames::builtin(),
        Findings { all: &[f], live: &[] },
        &mut items,
    )
    .unwrap();
    check_tracks(&items.0);
    assert_eq!(totals.d_states_left_out, 1);
    let on_task: Vec<(u64, &str)> = items
        .0
        .iter()
        .filter(|i| i.task() == Some((4242, 4243)))
        .map(|i| {
            let what = match i {
                Item::Begin { .. } => "B",
                Item::End { .. } => "E",
                Item::Complete { .. } => "X",
                Item::Instant { .. } => "i",
                _ => "?",
            };
            (i.ts(), what)
        })
        .collect();
    assert_eq!(
        on_task,
        [(1_000_000_000, "B"), (1_000_100_000, "X"), (1_000_250_000, "i"), (1_000_500_000, "E"), (1_000_600_000, "X"),]
    );
}

#[test]
fn holders_are_timed_by_the_live_finding_not_the_replays_later_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qsd.trace");
    write_trace(&path, Some(0));
    let live = [finding()];
    let mut replayed = finding();
    (replayed.last_ns, replayed.lock_holders, replayed.chain) = (20_000_000, vec![], vec![]);
    let mut items = Items::default();
    let file = std::fs::File::open(&path).unwrap();
    from_trace(&file, "qsd.trace", Findings { all: &[replayed], live: &live }, &mut items).unwrap();
    check_tracks(&items.0);
    let spans: Vec<u64> =
        items.0.iter().filter_map(|i| if let Item::Complete { ts, .. } = i { Some(*ts) } else { None }).collect();
    assert_eq!(spans, [1_000_000], "8 ms before the live finding's 9 ms");
    let instants = items.0.iter().filter(|i| matches!(i, Item::Instant { mark: Mark::Finding(_), .. })).count();
    assert_eq!(instants, 1, "one instant per finding");
}
