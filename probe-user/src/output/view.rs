//! The printable form of an event, shared by the table and JSON outputs.

use std::sync::Arc;

use serde::Serialize;

use crate::{
    detect::engine::Observed,
    events::decode::{cstr, reclaim_kind_name, wait_dev, Event},
    names::{self, GfpNames},
    topology::Dev,
};

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    #[serde(rename = "type")]
    pub record: &'static str,
    pub ts_ns: u64,
    pub event: &'static str,
    pub comm: String,
    pub pid: u32,
    pub tid: u32,
    /// direct | memcg | slowpath | shrink_node for reclaim events.
    pub kind: Option<&'static str>,
    pub gfp: Option<String>,
    pub gfp_raw: Option<u32>,
    pub order: Option<i32>,
    pub task_flags: String,
    pub latency_us: Option<f64>,
    pub nr_reclaimed: Option<u64>,
    pub memcg: Option<String>,
    /// The stacked device the task was serving, if any.
    pub serving: Option<String>,
    pub fs_depth: u32,
    pub detail: Option<String>,
    pub upper_inflight: Option<i64>,
    pub stack: Arc<[String]>,
}

impl EventView {
    pub fn new(ev: &Event, obs: &Observed, gfp: &GfpNames, memcg: Option<String>) -> EventView {
        let c = ev.ctx();
        let mut v = EventView {
            record: "event",
            ts_ns: c.ts_ns,
            event: ev.name(),
            comm: cstr(&c.comm),
            pid: c.tgid,
            tid: c.tid,
            kind: None,
            gfp: None,
            gfp_raw: None,
            order: None,
            task_flags: names::task_flags(c.task_flags),
            latency_us: None,
            nr_reclaimed: None,
            memcg,
            serving: (c.serving_dev != 0).then(|| Dev::from_kernel(c.serving_dev).to_string()),
            fs_depth: c.fs_depth,
            detail: None,
            upper_inflight: obs.inflight,
            stack: obs.stack.clone(),
        };
        match ev {
            Event::ReclaimBegin(e) | Event::ReclaimEnd(e) => {
                v.set_gfp(e.data.gfp, gfp);
                v.kind = Some(reclaim_kind_name(e.data.reclaim_kind));
                v.order = Some(e.data.order);
                if matches!(ev, Event::ReclaimEnd(_)) {
                    v.latency_us = Some(e.data.duration_ns as f64 / 1000.0);
                    v.nr_reclaimed = Some(e.data.nr_reclaimed);
                }
            }
            Event::Shrinker(e) => v.set_gfp(e.data.gfp, gfp),
            _ => {}
        }
        v.detail = detail(ev);
        v
    }
}

impl EventView {
    fn set_gfp(&mut self, mask: u32, gfp: &GfpNames) {
        self.gfp = Some(gfp.decode(u64::from(mask)));
        self.gfp_raw = Some(mask);
    }
}

/// What an event says beyond its task, gfp mask and reclaim, in a line
/// (None: a reclaim's begin or end, which say nothing more).
fn detail(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::ReclaimBegin(_) | Event::ReclaimEnd(_) => return None,
        Event::Shrinker(e) => format!(
            "shrinker {:#x} fs={} sb_dev={} nr_to_scan={}",
            e.data.shrinker,
            cstr(&e.data.fs_type),
            Dev::from_kernel(e.data.sb_dev),
            e.data.nr_to_scan
        ),
        Event::WritebackWait(e) => {
            let dev = wait_dev(e).map(|d| d.to_string()).unwrap_or_else(|| "?".into());
            format!("wait on {dev} ino={} index={} in_reclaim={}", e.data.ino, e.data.index, e.data.in_reclaim)
        }
        Event::ReclaimWrite(e) => format!("pageout dev={} ino={}", Dev::from_kernel(e.data.dev), e.data.ino),
        Event::OomVictim(e) => format!("OOM killer chose pid {}", e.data.pid),
        Event::DirtyThrottle(e) => format!(
            "dirty-throttled writing to bdi {}: {} dirty pages, limit {}, pause {} ms, memcg ino {}",
            cstr(&e.data.bdi),
            e.data.dirty,
            e.data.limit,
            e.data.pause,
            e.data.cgroup_ino
        ),
    })
}
