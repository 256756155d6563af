//! Round trips, rotation, and damaged files: the reader must stop at the
//! last whole record, say why, and never panic.

use std::path::{Path, PathBuf};

use bytemuck::bytes_of;
use probe_common::events::{EventKind, ReclaimData, ReclaimEvent, ShrinkerData, ShrinkerEvent, TaskCtx};
use serde_json::json;

use super::*;

fn ctx(ts_ns: u64, stack_id: i32) -> TaskCtx {
    TaskCtx {
        ts_ns,
        tgid: 4242,
        tid: 4243,
        task_flags: 0x40_0040,
        stack_id,
        comm: *b"qemu-storage-dae",
        serving_dev: 7 << 20,
        fs_depth: 1,
    }
}

pub(super) fn reclaim(i: u64, stack_id: i32) -> Record {
    let e = ReclaimEvent::new(
        EventKind::ReclaimBegin,
        ctx(1_000 + i, stack_id),
        ReclaimData { reclaim_kind: 2, gfp: 0x100cca, order: 0, ..Default::default() },
    );
    Record::Event(EventRecord { unix_ns: 1_764_000_000_000_000_000 + i, data: bytes_of(&e).to_vec() })
}

fn shrink(i: u64, scan_fn: u64) -> Record {
    let e = ShrinkerEvent::new(
        EventKind::Shrinker,
        ctx(1_000 + i, -1),
        ShrinkerData {
            shrinker: 0xffff_8881_0000_0000,
            scan_fn,
            nr_to_scan: 128,
            gfp: 0xcc0,
            sb_dev: 7 << 20,
            fs_type: *b"xfs\0\0\0\0\0\0\0\0\0\0\0\0\0",
        },
    );
    Record::Event(EventRecord { unix_ns: 1_764_000_000_000_000_000 + i, data: bytes_of(&e).to_vec() })
}

fn stack(id: i32) -> Record {
    Record::Stack(StackRecord {
        id,
        frames: vec![
            Frame { addr: 0xffff_ffff_8159_b6e0, symbol: "folio_wait_writeback".into() },
            Frame { addr: 0xffff_ffff_815a_ce40 + id as u64, symbol: format!("shrink_node+0x{id:x}") },
        ],
    })
}

fn symbol(addr: u64) -> Record {
    Record::Symbol(SymbolRecord { addr, symbol: "super_cache_scan".into() })
}

/// A topology whose one loop device is backed by `path`.
fn topology(path: &str) -> TopologyRecord {
    let dev = |minor| crate::topology::Dev { major: 7, minor };
    let edge = crate::detect::index::BackingEdge { file_dev: dev(1), path: path.into(), backs: dev(0) };
    let index = crate::detect::index::StorageIndex { backing: vec![edge], ..Default::default() };
    TopologyRecord { index, topology: Opaque::of(&json!({"devices": [{"dev": "7:0", "backing": path}]})).unwrap() }
}

/// A finding record whose detail is `detail`.
fn finding(detail: &str) -> Record {
    let detail = crate::detect::finding::Detail::Recorded(detail.into());
    let f = crate::detect::finding::Finding::sample("RS001", crate::detect::finding::Severity::Hazard);
    Record::Finding(Box::new(crate::detect::finding::Finding { detail, ..f }))
}

pub(super) fn header() -> TraceHeader {
    TraceHeader {
        agent_version: "0.1.0".into(),
        kernel_release: "6.18.0".into(),
        hostname: "testhost".into(),
        started_unix_ns: 1_764_000_000_000_000_000,
        command: "reclaimscope record -o t.rst".into(),
        topology: topology("/srv/fuse.img"),
        attach: Opaque::of(&json!({"reclaim": "tracepoint"})).unwrap(),
        gfp_format: Some(include_str!("../../tests/data/gfp_print_fmt_6.18.txt").into()),
        monotonic_to_unix_ns: None,
    }
}

/// A small file of every record type, and the records it holds.
fn sample(dir: &Path) -> (PathBuf, Vec<Record>) {
    let path = dir.join("sample.rst");
    let records = vec![
        stack(3),
        reclaim(0, 3),
        symbol(0xffff_ffff_8170_0000),
        shrink(1, 0xffff_ffff_8170_0000),
        finding("d"),
        Record::Topology(topology("/srv/other.img")),
        reclaim(2, 3),
        reclaim(3, -1),
    ];
    let mut w = TraceWriter::create(&path, header(), None, 1, false).unwrap();
    for r in &records {
        w.write(r).unwrap();
    }
    w.finish().unwrap();
    (path, records)
}

/// Byte offsets where each record ends, the header's first.
fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = PREAMBLE_LEN;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 9 + len;
        ends.push(at);
    }
    assert_eq!(at, bytes.len());
    ends
}

fn one_line_error(bytes: &[u8]) -> String {
    let msg = TraceReader::from_bytes(bytes).err().expect("an error").to_string();
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = sample(dir.path());
    let mut r = TraceReader::open(&path).unwrap();
    assert_eq!(r.header(), &header());
    assert_eq!(r.format_version(), FORMAT_VERSION);
    let got: Vec<Record> = r.by_ref().collect();
    assert_eq!(got, records);
    assert_eq!(r.damage(), None);
    assert_eq!(r.records_read(), 1 + records.len() as u64);
    assert_eq!(r.bytes_read(), std::fs::metadata(&path).unwrap().len());
    let Record::Event(e) = &got[1] else { panic!() };
    assert_eq!(e.stack_id(), Some(3));
    assert_eq!(e.scan_fn(), None);
    let Record::Event(e) = &got[3] else { panic!() };
    assert_eq!((e.stack_id(), e.scan_fn()), (None, Some(0xffff_ffff_8170_0000)));
}

#[test]
fn repeated_stack_records_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.rst");
    let mut w = TraceWriter::create(&path, header(), None, 1, false).unwrap();
    assert!(!w.has_stack(3));
    w.write(&stack(3)).unwrap();
    w.write(&stack(3)).unwrap();
    assert!(w.has_stack(3));
    w.write(&reclaim(0, 3)).unwrap();
    drop(w); // without finish: Drop still writes what was given
    let got: Vec<Record> = TraceReader::open(&path).unwrap().collect();
    assert_eq!(got, vec![stack(3), reclaim(0, 3)]);
}

/// The kernel reuses a stack id for a newer stack (BPF_F_REUSE_STACKID):
/// the writer says the id's frames changed, and the new record follows.
#[test]
fn a_reused_stack_id_is_written_again_with_its_new_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.rst");
    let mut w = TraceWriter::create(&path, header(), None, 1, false).unwrap();
    let Record::Stack(old) = stack(3) else { unreachable!() };
    let frames = |s: &StackRecord| s.frames.iter().map(|f| (f.addr, f.symbol.clone())).collect::<Vec<_>>();
    let Record::Stack(four) = stack(4) else { unreachable!() };
    let newer = StackRecord { id: 3, frames: four.frames };
    w.write(&Record::Stack(old.clone())).unwrap();
    w.write(&reclaim(0, 3)).unwrap();
    assert!(w.has_stack_as(3, &frames(&old)));
    assert!(!w.has_stack_as(3, &frames(&newer)));
    assert!(!w.has_stack_as(4, &frames(&old)));
    w.write(&Record::Stack(newer.clone())).unwrap();
    w.write(&reclaim(1, 3)).unwrap();
    assert!(w.has_stack_as(3, &frames(&newer)));
    w.finish().unwrap();
    let got: Vec<Record> = TraceReader::open(&path).unwrap().collect();
    assert_eq!(got, vec![Record::Stack(old), reclaim(0, 3), Record::Stack(newer), reclaim(1, 3)]);
}

#[test]
fn rotation_keeps_max_files_and_each_file_reads_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rot.rst");
    let max_size = 16 << 10;
    let mut w = TraceWriter::create(&path, header(), Some(max_size), 3, false).unwrap();
    let scan_fn = 0xffff_ffff_8170_0000;
    w.write(&symbol(scan_fn)).unwrap();
    let mut written = Vec::new();
    for i in 0..2000u64 {
        let id = (i % 7) as i32;
        if !w.has_stack(id) {
            w.write(&stack(id)).unwrap();
        }
        if i == 500 {
            w.write(&Record::Topology(topology("/srv/late.img"))).unwrap();
        }
        let e = if i % 5 == 0 { shrink(i, scan_fn) } else { reclaim(i, id) };
        w.write(&e).unwrap();
        written.push(e);
    }
    w.finish().unwrap();

    assert!(!dir.path().join("rot.rst.3").exists());
    let mut files_events = Vec::new();
    for name in ["rot.rst.2", "rot.rst.1", "rot.rst"] {
        let p = dir.path().join(name);
        assert!(std::fs::metadata(&p).unwrap().len() <= max_size, "{name} is over max_size");
        let mut r = TraceReader::open(&p).unwrap();
        assert_eq!(r.header(), &header());
        let mut stacks = std::collections::HashSet::new();
        let mut symbols = std::collections::HashSet::new();
        let mut latest = None;
        let mut events = Vec::new();
        for rec in r.by_ref() {
            match &rec {
                Record::Stack(s) => _ = stacks.insert(s.id),
                Record::Symbol(s) => _ = symbols.insert(s.addr),
                Record::Topology(t) => latest = Some(t.clone()),
                Record::Event(e) => {
                    if let Some(id) = e.stack_id() {
                        assert!(stacks.contains(&id), "{name}: stack {id} used before its record");
                    }
                    if let Some(a) = e.scan_fn() {
                        assert!(symbols.contains(&a), "{name}: symbol {a:#x} used before its record");
                    }
                    events.push(rec.clone());
                }
                Record::Finding(_) => {}
            }
        }
        assert_eq!(r.damage(), None, "{name}");
        assert!(!events.is_empty(), "{name}");
        assert_eq!(latest, Some(topology("/srv/late.img")), "{name} lacks the latest topology");
        files_events.push(events);
    }
    // The kept files hold the newest events, in order, with nothing missing.
    let kept: Vec<Record> = files_events.concat();
    assert_eq!(kept[..], written[written.len() - kept.len()..]);
    assert!(kept.len() < written.len(), "the test should rotate out old files");
}

#[test]
fn one_file_rotation_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.rst");
    let mut w = TraceWriter::create(&path, header(), Some(8 << 10), 1, false).unwrap();
    for i in 0..500 {
        w.write(&reclaim(i, -1)).unwrap();
    }
    w.finish().unwrap();
    assert!(!dir.path().join("one.rst.1").exists());
    let events: Vec<Record> = TraceReader::open(&path).unwrap().collect();
    assert_eq!(events.last(), Some(&reclaim(499, -1)));
    assert!(events.len() < 500);
}

#[test]
fn a_record_larger_than_max_size_is_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.rst");
    let mut w = TraceWriter::create(&path, header(), Some(1024), 2, false).unwrap();
    let big = finding(&"x".repeat(4000));
    w.write(&big).unwrap();
    w.write(&big).unwrap();
    w.finish().unwrap();
    for p in [path.clone(), dir.path().join("big.rst.1")] {
        let got: Vec<Record> = TraceReader::open(&p).unwrap().collect();
        assert_eq!(got, vec![big.clone()]);
    }
}

#[test]
fn truncation_at_every_offset_reads_the_whole_record_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = sample(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let ends = record_ends(&bytes);
    for cut in 0..=bytes.len() {
        let part = &bytes[..cut];
        if cut < ends[0] {
            let msg = one_line_error(part);
            if cut < MAGIC.len() {
                assert_eq!(msg, "trace: not a reclaimscope trace");
            } else {
                assert!(msg.starts_with("trace: the trace header is damaged: stopped at byte"), "{msg}");
                assert!(msg.ends_with("(record 0): truncated"), "{msg}");
            }
            continue;
        }
        let mut r = TraceReader::from_bytes(part).unwrap();
        let got: Vec<Record> = r.by_ref().collect();
        let whole = ends.iter().filter(|e| **e <= cut).count() - 1;
        assert_eq!(got[..], records[..whole], "cut at {cut}");
        let last_end = ends[whole] as u64;
        match r.damage() {
            None => assert_eq!(last_end, cut as u64),
            Some(d) => {
                assert_eq!(d, &Damage { offset: last_end, index: 1 + whole as u64, reason: DamageReason::Truncated });
                assert_eq!(d.to_string(), format!("stopped at byte {last_end} (record {}): truncated", whole + 1));
            }
        }
    }
}

#[test]
fn every_corrupted_byte_is_caught_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = sample(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let ends = record_ends(&bytes);
    for at in ends[0]..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0xa5;
        let mut r = TraceReader::from_bytes(&bad).unwrap();
        let got: Vec<Record> = r.by_ref().collect();
        // The damaged record is the one whose bytes hold `at`.
        let i = ends.iter().position(|e| *e > at).unwrap();
        assert_eq!(got[..], records[..i - 1], "byte {at}");
        let d = r.damage().unwrap_or_else(|| panic!("corruption at byte {at} went unnoticed"));
        assert_eq!((d.offset, d.index), (ends[i - 1] as u64, i as u64), "byte {at}");
        let in_length_field = at < ends[i - 1] + 4;
        if !in_length_field {
            assert_eq!(d.reason, DamageReason::ChecksumMismatch, "byte {at}");
        }
    }
}

#[test]
fn damaged_header_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = sample(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[PREAMBLE_LEN + 20] ^= 1;
    assert_eq!(
        one_line_error(&bytes),
        "trace: the trace header is damaged: stopped at byte 12 (record 0): checksum mismatch"
    );
}

/// A header whose topology has no index (the schema drifted, or the file
/// is hostile) is refused in one line, not replayed with an empty stack.
#[test]
fn a_header_without_a_topology_index_is_a_one_line_error() {
    let mut header = serde_json::to_value(header()).unwrap();
    header["topology"] = json!({"topology": {}});
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    frame::encode(&mut bytes, frame::RecordType::Header, &serde_json::to_vec(&header).unwrap()).unwrap();
    let msg = one_line_error(&bytes);
    assert!(msg.starts_with("trace: the trace header is damaged: "), "{msg}");
    assert!(msg.contains("missing field `index`"), "{msg}");
}

#[test]
fn not_a_trace() {
    assert_eq!(one_line_error(b""), "trace: not a reclaimscope trace");
    assert_eq!(one_line_error(b"# tracer: nop\n#\n"), "trace: not a reclaimscope trace");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "hello, this is text\n").unwrap();
    let e = TraceReader::open(&p).err().unwrap();
    assert_eq!(e.to_string(), format!("{}: not a reclaimscope trace", p.display()));
    assert!(matches!(e.downcast_ref::<TraceError>().map(|e| &e.kind), Some(TraceErrorKind::NotATrace)));
    let missing = dir.path().join("missing.rst");
    let msg = TraceReader::open(&missing).err().unwrap().to_string();
    assert_eq!(msg, format!("{}: cannot open: No such file or directory (os error 2)", missing.display()));
}

#[test]
fn newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = sample(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(one_line_error(&bytes), "trace: trace format version 3 is newer than this reclaimscope supports (2)");
    std::fs::write(&path, &bytes).unwrap();
    let e = TraceReader::open(&path).err().unwrap();
    assert!(matches!(e.downcast_ref::<TraceError>().map(|e| &e.kind), Some(TraceErrorKind::NewerVersion(3))));
}

/// A checksummed frame built by hand, appended after the sample's records.
fn with_frame(ty: u8, len: u32, payload: &[u8]) -> (Vec<u8>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = sample(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() as u64;
    let mut h = crc32fast::Hasher::new();
    h.update(&[ty]);
    h.update(payload);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&h.finalize().to_le_bytes());
    bytes.push(ty);
    bytes.extend_from_slice(payload);
    (bytes, at)
}

fn damage_of(bytes: &[u8]) -> Damage {
    let mut r = TraceReader::from_bytes(bytes).unwrap();
    r.by_ref().for_each(drop);
    r.damage().cloned().expect("damage")
}

#[test]
fn whole_records_that_do_not_decode_are_damage() {
    let (b, at) = with_frame(99, 2, b"{}");
    assert_eq!(damage_of(&b), Damage { offset: at, index: 9, reason: DamageReason::UnknownType(99) });
    let (b, _) = with_frame(3, 5, b"[1,2]");
    assert!(matches!(damage_of(&b).reason, DamageReason::BadPayload(_)));
    let (b, _) = with_frame(2, 3, b"abc");
    assert_eq!(damage_of(&b).reason, DamageReason::BadPayload("event record of 3 bytes has no timestamp".into()));
    let (b, _) = with_frame(1, 2, b"{}");
    assert_eq!(damage_of(&b).reason, DamageReason::BadPayload("a second header record".into()));
}

#[test]
fn huge_lengths_are_refused_without_allocating() {
    let (b, at) = with_frame(2, u32::MAX, b"");
    assert_eq!(damage_of(&b), Damage { offset: at, index: 9, reason: DamageReason::BadLength(u32::MAX) });
    // Within the bound but past the end: truncated, and only the bytes
    // present were read.
    let (b, _) = with_frame(2, MAX_PAYLOAD, b"short");
    assert_eq!(damage_of(&b).reason, DamageReason::Truncated);
}

#[test]
fn oversized_records_are_refused_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TraceWriter::create(&dir.path().join("t.rst"), header(), None, 1, false).unwrap();
    let e = Record::Event(EventRecord { unix_ns: 0, data: vec![0; MAX_PAYLOAD as usize] });
    let msg = format!("{:#}", w.write(&e).unwrap_err());
    assert_eq!(msg, "event record of 16777224 bytes exceeds the 16 MiB record limit");
    assert!(TraceWriter::create(&dir.path().join("u.rst"), header(), None, 0, false).is_err());
    let err = TraceWriter::create(&dir.path().join("v.rst"), header(), None, usize::MAX, false).err().unwrap();
    assert_eq!(err.to_string(), format!("a trace keeps 1 to {MAX_FILES} files, not {}", usize::MAX));
    assert!(!dir.path().join("v.rst").exists());
}
