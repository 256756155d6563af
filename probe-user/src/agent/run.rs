//! The event loop shared by `watch`, `monitor` and `record`: ring buffer,
//! periodic topology refresh and D-state checks, signals, duration.

use std::time::{Duration, Instant};

use anyhow::Result;
use probe_common::maps::counter;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use super::{blocked, session::Session};
use crate::{
    detect::{
        engine::{Blocked, Engine, Observed},
        finding::Finding,
        index::StackIndex,
    },
    events::decode::Event,
    topology::{Dev, Extra, Topology},
};

/// Totals for the periodic and final summaries.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub elapsed_s: f64,
    pub events: u64,
    pub decode_errors: u64,
    pub reclaim_direct: u64,
    pub reclaim_memcg: u64,
    pub shrinker_calls: u64,
    pub writeback_waits: u64,
    pub dropped: u64,
    pub task_state_full: u64,
    pub findings: usize,
    pub servicers: usize,
}

/// Where the loop's output goes.
pub trait Sink {
    fn event(&mut self, raw: &[u8], ev: &Event, obs: &Observed, stack: &[(u64, String)]) -> Result<()>;
    fn finding(&mut self, f: &Finding) -> Result<()>;
    fn summary(&mut self, s: &Summary, last: bool) -> Result<()>;
    fn topology(&mut self, topo: &Topology, index: &StackIndex) -> Result<()>;
    /// Called after each batch: the events of one ring-buffer wakeup, or
    /// one round of D-state checks, and the findings they made.
    fn end_batch(&mut self) -> Result<()> {
        Ok(())
    }
}

pub struct RunOptions {
    pub duration: Option<Duration>,
    pub summary_every: Duration,
    pub extra: Extra,
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Rediscovers the topology on a blocking thread with a deadline: a FUSE
/// daemon stuck in the very deadlock we report must not stall the agent.
pub async fn discover(extra: &Extra) -> Option<Topology> {
    let extra = extra.clone();
    let task = tokio::task::spawn_blocking(move || Topology::discover(&extra));
    match tokio::time::timeout(Duration::from_secs(3), task).await {
        Ok(Ok(Ok(t))) => Some(t),
        Ok(Ok(Err(e))) => {
            log::warn!("topology refresh failed: {e:#}");
            None
        }
        _ => {
            log::warn!("topology refresh timed out; keeping the previous view");
            None
        }
    }
}

pub struct Loop<'a> {
    pub session: &'a mut Session,
    pub engine: Engine,
    pub sink: &'a mut dyn Sink,
    pub summary: Summary,
    pub topo: Topology,
    started: Instant,
    blocked: blocked::BlockedTracker,
}

impl<'a> Loop<'a> {
    pub async fn new(
        session: &'a mut Session,
        engine: Engine,
        sink: &'a mut dyn Sink,
        extra: &Extra,
    ) -> Result<Loop<'a>> {
        let topo = discover(extra).await.ok_or_else(|| anyhow::anyhow!("cannot read the storage topology"))?;
        let mut l = Loop {
            session,
            engine,
            sink,
            summary: Summary::default(),
            topo,
            started: Instant::now(),
            blocked: Default::default(),
        };
        l.apply_topology()?;
        Ok(l)
    }

    fn apply_topology(&mut self) -> Result<()> {
        let changes = self.session.maps.sync(&self.topo)?;
        if changes.any() {
            log::info!("storage topology: {changes:?}");
        }
        let index = StackIndex::from_topology(&self.topo);
        if &index != self.engine.index() {
            self.sink.topology(&self.topo, &index)?;
            self.engine.set_index(index);
        }
        self.summary.servicers = self.topo.servicer_processes().len();
        Ok(())
    }

    fn handle(&mut self, raw: &[u8]) -> Result<()> {
        self.summary.events += 1;
        let ev = match Event::parse(raw) {
            Ok(ev) => ev,
            Err(e) => {
                self.summary.decode_errors += 1;
                log::warn!("undecodable event: {e}");
                return Ok(());
            }
        };
        let ctx = *ev.ctx();
        let stack = self.session.stacks.frames(ctx.stack_id, &self.session.kv.kallsyms).to_vec();
        let inflight =
            (ctx.serving_dev != 0).then(|| self.session.maps.inflight(Dev::from_kernel(ctx.serving_dev))).flatten();
        let obs = Observed { stack: stack.iter().map(|(_, s)| s.clone()).collect(), inflight };
        self.sink.event(raw, &ev, &obs, &stack)?;
        for f in self.engine.on_event(&ev, &obs) {
            self.sink.finding(&f)?;
        }
        Ok(())
    }

    fn check_blocked(&mut self) -> Result<()> {
        let pending: Vec<(u32, u64)> = self.engine.pending().collect();
        let tids: Vec<u32> = pending.iter().map(|p| p.0).collect();
        self.blocked.forget_others(&tids);
        for (tid, _) in pending {
            let Some(blocked_for) = self.blocked.observe(tid) else { continue };
            let b = Blocked {
                tid,
                blocked_for,
                now_ns: now_ns(),
                stack: blocked::kernel_stack(&format!("/proc/{tid}")),
                chain: blocked::waiting_chain(tid, 12),
            };
            if let Some(f) = self.engine.on_blocked(&b) {
                self.sink.finding(&f)?;
            }
        }
        Ok(())
    }

    fn refresh_summary(&mut self) {
        let c = &self.session.counters;
        let s = &mut self.summary;
        s.elapsed_s = self.started.elapsed().as_secs_f64();
        s.reclaim_direct = c.get(counter::RECLAIM_DIRECT);
        s.reclaim_memcg = c.get(counter::RECLAIM_MEMCG);
        s.shrinker_calls = c.get(counter::SHRINKER_CALLS);
        s.writeback_waits = c.get(counter::WRITEBACK_WAITS);
        s.dropped = c.get(counter::EVENTS_DROPPED);
        s.task_state_full = c.get(counter::TASK_STATE_FULL);
        s.findings = self.engine.findings().len();
    }

    /// Runs until the duration passes or SIGINT/SIGTERM; SIGHUP re-reads the
    /// topology. Always drains the ring and prints the final summary.
    pub async fn run(&mut self, opts: &RunOptions) -> Result<()> {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // SAFETY: the logger owns its ring-buffer fd for the AsyncFd's lifetime.
        let mut logs = match self.session.logger.take() {
            Some(l) => Some(
                unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
                    .map_err(std::io::Error::from)?,
            ),
            None => None,
        };
        let mut last_summary = Instant::now();
        let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
        let sleep = tokio::time::sleep_until(
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365)),
        );
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                batch = self.session.events.next_batch() => {
                    for raw in batch? {
                        self.handle(&raw)?;
                    }
                    self.sink.end_batch()?;
                }
                guard = async { logs.as_mut().expect("guarded").readable_mut().await }, if logs.is_some() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    if let Some(t) = discover(&opts.extra).await {
                        self.topo = t;
                        self.apply_topology()?;
                    }
                    self.check_blocked()?;
                    self.sink.end_batch()?;
                    if last_summary.elapsed() >= opts.summary_every {
                        last_summary = Instant::now();
                        self.refresh_summary();
                        self.sink.summary(&self.summary, false)?;
                    }
                }
                _ = &mut sleep, if deadline.is_some() => break,
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = sighup.recv() => {
                    log::info!("SIGHUP: re-reading the storage topology");
                    if let Some(t) = discover(&opts.extra).await {
                        self.topo = t;
                        self.apply_topology()?;
                    }
                }
            }
        }
        for raw in self.session.events.drain() {
            self.handle(&raw)?;
        }
        self.sink.end_batch()?;
        self.refresh_summary();
        self.sink.summary(&self.summary, true)
    }
}
