//! A trace written by an earlier agent still replays to the same findings:
//! the qsd deadlock as `record` wrote it before the trace's findings and
//! topology records were typed.

use std::time::Duration;

use probe_common::flags::PF_MEMALLOC;

use super::replay;
use crate::{detect::finding::Detail, output::finding};

const QSD: &[u8] = include_bytes!("../../tests/data/trace/qsd-deadlock.trace");

#[test]
fn the_recorded_qsd_deadlock_replays_to_its_findings() {
    let r = replay::trace_bytes(QSD, "qsd-deadlock.trace", Duration::from_secs(5)).unwrap();
    assert_eq!((r.damage.as_deref(), r.limits.len()), (None, 0));
    assert_eq!((r.records, r.events), (136, 106));
    let replayed: Vec<_> =
        r.findings.iter().map(|f| (f.rule.as_str(), f.servicer.tgid, f.servicer.tid, f.count)).collect();
    assert_eq!(replayed, [("RS001", 1541, 1559, 27), ("RS102", 1541, 1559, 1)]);
    let waited = "folio_wait_writeback on 7:0 (ino 131, index 0) from inside reclaim";
    assert_eq!(finding::detail(&r.findings[1], &r.gfp), waited);
    // The agent's own findings decode, and the replay derives them all.
    let recorded: Vec<_> = r.recorded.iter().map(|f| (f.rule.as_str(), f.servicer.tid)).collect();
    assert_eq!(recorded, [("RS001", 1559), ("RS102", 1559)]);
    assert!(r.recorded_only.is_empty());
    assert_eq!(r.recorded[1].lock_holders[0].comm, "dd");
    // Format 1 recorded words: they are kept, and the flags read back.
    assert_eq!(r.recorded[1].detail, Detail::Recorded(waited.into()));
    assert_eq!(r.recorded[1].servicer.task_flags, PF_MEMALLOC);
}
