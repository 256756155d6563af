//! Ring-buffer records to typed events. The length is checked before the
//! tag, and the tag before the payload, so a short or unknown record is an
//! error rather than a read past the end.

use anyhow::{bail, Result};
use bytemuck::{bytes_of, Pod};
use probe_common::events::{
    DirtyThrottleEvent, EventKind, OomVictimEvent, ReclaimEvent, ReclaimKind, ReclaimWriteEvent, ShrinkerEvent,
    TaskCtx, WritebackWaitEvent,
};

use crate::topology::Dev;

#[derive(Debug, Clone, Copy)]
pub enum Event {
    ReclaimBegin(ReclaimEvent),
    ReclaimEnd(ReclaimEvent),
    Shrinker(ShrinkerEvent),
    WritebackWait(WritebackWaitEvent),
    ReclaimWrite(ReclaimWriteEvent),
    OomVictim(OomVictimEvent),
    DirtyThrottle(DirtyThrottleEvent),
}

/// The leading `T` of a record; ring-buffer and trace-file bytes carry no
/// alignment promise, so it is copied out rather than borrowed.
fn read<T: Pod>(bytes: &[u8]) -> Result<T> {
    let Some(head) = bytes.get(..size_of::<T>()) else {
        bail!("event record of {} bytes is shorter than {}", bytes.len(), size_of::<T>());
    };
    Ok(bytemuck::pod_read_unaligned(head))
}

impl Event {
    pub fn parse(bytes: &[u8]) -> Result<Event> {
        let kind: u32 = read(bytes)?;
        Ok(match EventKind::from_u32(kind) {
            Some(EventKind::ReclaimBegin) => Event::ReclaimBegin(read(bytes)?),
            Some(EventKind::ReclaimEnd) => Event::ReclaimEnd(read(bytes)?),
            Some(EventKind::Shrinker) => Event::Shrinker(read(bytes)?),
            Some(EventKind::WritebackWait) => Event::WritebackWait(read(bytes)?),
            Some(EventKind::ReclaimWrite) => Event::ReclaimWrite(read(bytes)?),
            Some(EventKind::OomVictim) => Event::OomVictim(read(bytes)?),
            Some(EventKind::DirtyThrottle) => Event::DirtyThrottle(read(bytes)?),
            None => bail!("unknown event kind {kind}"),
        })
    }

    /// The record's bytes as the kernel wrote them (trace files store these).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Event::ReclaimBegin(e) | Event::ReclaimEnd(e) => bytes_of(e),
            Event::Shrinker(e) => bytes_of(e),
            Event::WritebackWait(e) => bytes_of(e),
            Event::ReclaimWrite(e) => bytes_of(e),
            Event::OomVictim(e) => bytes_of(e),
            Event::DirtyThrottle(e) => bytes_of(e),
        }
        .to_vec()
    }

    pub fn ctx(&self) -> &TaskCtx {
        match self {
            Event::ReclaimBegin(e) | Event::ReclaimEnd(e) => &e.ctx,
            Event::Shrinker(e) => &e.ctx,
            Event::WritebackWait(e) => &e.ctx,
            Event::ReclaimWrite(e) => &e.ctx,
            Event::OomVictim(e) => &e.ctx,
            Event::DirtyThrottle(e) => &e.ctx,
        }
    }

    /// For what an importer knows beyond the capture, e.g. which device a
    /// task serves.
    pub fn ctx_mut(&mut self) -> &mut TaskCtx {
        match self {
            Event::ReclaimBegin(e) | Event::ReclaimEnd(e) => &mut e.ctx,
            Event::Shrinker(e) => &mut e.ctx,
            Event::WritebackWait(e) => &mut e.ctx,
            Event::ReclaimWrite(e) => &mut e.ctx,
            Event::OomVictim(e) => &mut e.ctx,
            Event::DirtyThrottle(e) => &mut e.ctx,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Event::ReclaimBegin(_) => "reclaim_begin",
            Event::ReclaimEnd(_) => "reclaim_end",
            Event::Shrinker(_) => "shrinker",
            Event::WritebackWait(_) => "writeback_wait",
            Event::ReclaimWrite(_) => "reclaim_write",
            Event::OomVictim(_) => "oom_victim",
            Event::DirtyThrottle(_) => "dirty_throttle",
        }
    }
}

pub fn comm(ctx: &TaskCtx) -> String {
    cstr(&ctx.comm)
}

/// A NUL-terminated kernel string.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn reclaim_kind_name(kind: u32) -> &'static str {
    match ReclaimKind::from_u32(kind) {
        Some(ReclaimKind::Direct) => "direct",
        Some(ReclaimKind::Memcg) => "memcg",
        Some(ReclaimKind::ShrinkNode) => "shrink_node",
        Some(ReclaimKind::AllocSlowpath) => "slowpath",
        None => "unknown",
    }
}

/// The device a writeback wait was on: the probe's s_dev when it had one,
/// else the bdi name ("7:0").
pub fn wait_dev(e: &WritebackWaitEvent) -> Option<Dev> {
    if e.data.dev != 0 {
        return Some(Dev::from_kernel(e.data.dev));
    }
    Dev::parse(&cstr(&e.data.bdi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::events::{ReclaimData, WritebackWaitData};

    fn ctx() -> TaskCtx {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"qsd");
        TaskCtx { ts_ns: 5, tgid: 10, tid: 11, task_flags: 0x40, stack_id: -1, comm, serving_dev: 7 << 20, fs_depth: 1 }
    }

    #[test]
    fn round_trips_a_reclaim_event() {
        let e = ReclaimEvent::new(
            EventKind::ReclaimBegin,
            ctx(),
            ReclaimData { reclaim_kind: 2, gfp: 0x100cca, order: 0, ..Default::default() },
        );
        let bytes = Event::ReclaimBegin(e).to_bytes();
        match Event::parse(&bytes).unwrap() {
            Event::ReclaimBegin(got) => {
                assert_eq!(got.data.gfp, 0x100cca);
                assert_eq!(comm(&got.ctx), "qsd");
                assert_eq!(reclaim_kind_name(got.data.reclaim_kind), "memcg");
            }
            other => panic!("wrong kind {other:?}"),
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(Event::parse(&[1, 0]).is_err());
        assert!(Event::parse(&[1, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Event::parse(&[99, 0, 0, 0, 0, 0, 0, 0]).unwrap_err().to_string().contains("unknown event kind 99"));
    }

    #[test]
    fn writeback_wait_device_from_bdi_name() {
        let mut bdi = [0u8; 32];
        bdi[..3].copy_from_slice(b"7:0");
        let e =
            WritebackWaitEvent::new(EventKind::WritebackWait, ctx(), WritebackWaitData { bdi, ..Default::default() });
        assert_eq!(wait_dev(&e), Some(Dev { major: 7, minor: 0 }));
    }
}
