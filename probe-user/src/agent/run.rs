//! The event loop shared by `watch`, `monitor` and `record`: ring buffer,
//! topology snapshots from the background refresher, D-state checks,
//! signals, duration. Nothing in it waits on discovery, and it measures its
//! own lag so that the summaries show it never stalls.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use probe_common::maps::{counter, MAX_BACKING_FILES, MAX_SERVICERS};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::MissedTickBehavior,
};

use super::{
    blocked,
    inflight::Inflight,
    lock_holders::LockHolders,
    ratelimit::{GrowthLog, LOSS_LOG_EVERY},
    refresh::{Published, Refresher},
    session::Session,
};
use crate::{
    detect::{
        engine::{Blocked, Engine, Observed},
        index::StorageIndex,
    },
    events::decode::Event,
    output::{sink::Sink, summary::Summary},
    topology::{Dev, Topology},
};

/// How often the loop checks how late it runs.
const LAG_PROBE: Duration = Duration::from_millis(100);

/// What a periodic summary reports that can be news: everything but the
/// clocks (elapsed time, loop lag, discovery times, topology age).
fn news(s: &Summary) -> [u64; 16] {
    [
        s.events,
        s.decode_errors,
        s.reclaim_direct,
        s.reclaim_memcg,
        s.shrinker_calls,
        s.writeback_waits,
        s.dropped,
        s.task_state_full,
        s.stacks_lost,
        s.stale_reclaim,
        s.filter_map_full,
        s.oom_kills,
        s.sightings,
        s.findings_folded,
        s.servicers as u64,
        s.topology_errors,
    ]
}

pub struct RunOptions {
    pub duration: Option<Duration>,
    pub summary_every: Duration,
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The largest lag seen, per summary interval and overall.
#[derive(Default)]
struct Lag {
    interval: Duration,
    overall: Duration,
}

impl Lag {
    fn observe(&mut self, lag: Duration) {
        self.interval = self.interval.max(lag);
        self.overall = self.overall.max(lag);
    }
}

/// The agent's event loop: ring-buffer events through the engine to the
/// sink, with topology refreshes and blocked-task scans between reads.
pub struct EventLoop<'a> {
    pub session: &'a mut Session,
    pub engine: Engine,
    pub sink: &'a mut dyn Sink,
    pub summary: Summary,
    pub topo: Arc<Topology>,
    refresher: &'a Refresher,
    /// The refresher's generation in force.
    generation: u64,
    started: Instant,
    blocked: blocked::BlockedTracker,
    inflight: Inflight,
    lock_holders: LockHolders,
    lag: Lag,
    /// Rate-limits the warnings of dropped events and of a topology that
    /// does not fit the filter maps.
    drops_log: GrowthLog,
    /// An agent older or newer than its eBPF object could fail every event.
    decode_errors_log: GrowthLog,
    left_out_log: GrowthLog,
    map_errors: u64,
    map_errors_log: GrowthLog,
}

impl<'a> EventLoop<'a> {
    /// Starts with whatever topology the refresher has (none while its first
    /// discovery runs: the kernel filter then lets nothing through, and the
    /// loop applies the topology when it arrives).
    pub fn new(
        session: &'a mut Session,
        engine: Engine,
        sink: &'a mut dyn Sink,
        refresher: &'a Refresher,
    ) -> EventLoop<'a> {
        EventLoop {
            session,
            engine,
            sink,
            summary: Summary::default(),
            topo: Arc::new(Topology::empty()),
            refresher,
            generation: 0,
            started: Instant::now(),
            blocked: Default::default(),
            inflight: Default::default(),
            lock_holders: Default::default(),
            lag: Lag::default(),
            drops_log: GrowthLog::new(LOSS_LOG_EVERY),
            decode_errors_log: GrowthLog::new(LOSS_LOG_EVERY),
            left_out_log: GrowthLog::new(LOSS_LOG_EVERY),
            map_errors: 0,
            map_errors_log: GrowthLog::new(LOSS_LOG_EVERY),
        }
    }

    /// Applies a publication of the refresher if it carries a new topology.
    fn take(&mut self, p: &Published) -> Result<()> {
        match &p.topology {
            Some(t) if p.generation != self.generation => {
                self.generation = p.generation;
                self.topo = Arc::clone(t);
                self.apply_topology()
            }
            _ => Ok(()),
        }
    }

    /// Writes the topology into the kernel's filter maps and the engine.
    /// What does not fit the maps is counted and warned about (once a
    /// minute at most), never fatal: the agent goes on with what fits.
    fn apply_topology(&mut self) -> Result<()> {
        if let Err(e) = self.session.gate_hooks(&self.topo) {
            log::warn!("{e:#}");
        }
        let out = self.session.maps.sync(&self.topo);
        if out.changes.any() {
            log::info!("storage topology: {:?}", out.changes);
        }
        let now = Instant::now();
        let before = std::mem::replace(&mut self.summary.left_out, out.left_out);
        self.summary.filter_map_full += out.left_out.total() as u64;
        if self.left_out_log.check(self.summary.filter_map_full, now, false).is_some() {
            log::warn!(
                "the kernel's filter maps cannot hold the storage topology: {} of its servicer processes and {} of \
                 its backing files are left out (the maps hold {} and {}), and their reclaim is not followed",
                out.left_out.servicers,
                out.left_out.backing_files,
                MAX_SERVICERS,
                MAX_BACKING_FILES
            );
        } else if before.total() > 0 && out.left_out.total() == 0 {
            log::info!("the storage topology fits the kernel's filter maps again");
        }
        self.map_errors += out.errors.len() as u64;
        if let Some(g) = self.map_errors_log.check(self.map_errors, now, false) {
            log::warn!(
                "the kernel refused filter map writes ({}): {}",
                g.describe("refused"),
                out.errors.first().map(String::as_str).unwrap_or("")
            );
        }
        let index = StorageIndex::from_topology(&self.topo);
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
                if let Some(g) = self.decode_errors_log.check(self.summary.decode_errors, Instant::now(), false) {
                    log::warn!("undecodable event ({e}): {}", g.describe("undecodable events"));
                }
                return Ok(());
            }
        };
        let ctx = *ev.ctx();
        let stack = self.session.stacks.frames(ctx.stack_id, &self.session.kallsyms).to_vec();
        let inflight = (ctx.serving_dev != 0).then(|| self.inflight.of(Dev::from_kernel(ctx.serving_dev))).flatten();
        let holders = if ctx.serving_dev != 0 { self.lock_holders.current() } else { Default::default() };
        let obs = Observed { stack: stack.iter().map(|(_, s)| s.clone()).collect(), inflight, lock_holders: holders };
        self.sink.event(raw, &ev, &obs, &stack)?;
        for f in self.engine.on_event(&ev, &obs) {
            self.sink.finding(&f)?;
        }
        Ok(())
    }

    fn check_blocked(&mut self) -> Result<()> {
        // Servicer threads already stuck when the agent started (or whose
        // event was lost) send no event: found by their own stacks.
        let servicers = self.topo.servicer_processes().into_iter().map(|(tgid, _)| tgid);
        for t in blocked::blocked_in(servicers) {
            self.engine.adopt(t.pid, t.tid, &t.comm, t.flags, &t.frames, now_ns());
        }
        let pending = self.engine.pending(now_ns());
        let tids: Vec<u32> = pending.iter().map(|p| p.0).collect();
        self.blocked.forget_others(&tids);
        // One walk of the host's blocked tasks per check, made only when a
        // servicer thread is blocked.
        let mut walk = None;
        for (tid, _) in pending {
            let Some((blocked_for, flags)) = self.blocked.observe(tid) else { continue };
            let all = walk.get_or_insert_with(blocked::blocked_tasks);
            let b = Blocked {
                tid,
                flags,
                blocked_for,
                now_ns: now_ns(),
                stack: blocked::kernel_stack(&format!("/proc/{tid}")).into(),
                chain: blocked::waiting_chain(all, tid, 12),
                lock_holders: self.lock_holders.update(all),
            };
            if let Some(f) = self.engine.on_blocked(&b) {
                self.sink.finding(&f)?;
            }
        }
        Ok(())
    }

    /// Says how many events the ring buffer dropped: the first drop at once,
    /// then at most once a minute with the count since the previous line
    /// (the kernel counts every drop and does not log them), and whatever
    /// is left unsaid at exit (`last`).
    fn log_drops(&mut self, last: bool) {
        let total = self.session.counters.get(counter::EVENTS_DROPPED);
        if let Some(g) = self.drops_log.check(total, Instant::now(), last) {
            log::warn!(
                "ring buffer full: {} (the agent did not drain it in time); findings may be missing",
                g.describe("events dropped")
            );
        }
    }

    fn refresh_summary(&mut self) {
        let c = &self.session.counters;
        let s = &mut self.summary;
        s.elapsed_s = self.started.elapsed().as_secs_f64();
        s.reclaim_direct = c.get(counter::RECLAIM_DIRECT);
        s.reclaim_memcg = c.get(counter::RECLAIM_MEMCG);
        s.shrinker_calls = c.get(counter::SHRINKER_CALLS);
        s.writeback_waits = c.get(counter::WAITS_IN_RECLAIM) + c.get(counter::WAITS_OUTSIDE_RECLAIM);
        s.dropped = c.get(counter::EVENTS_DROPPED);
        s.task_state_full = c.get(counter::TASK_STATE_FULL);
        s.waits_outside_reclaim = c.get(counter::WAITS_OUTSIDE_RECLAIM);
        s.stacks_lost = c.get(counter::STACKS_LOST);
        s.stale_reclaim = c.get(counter::STALE_RECLAIM);
        s.slowpath_entries = c.get(counter::SLOWPATH_ENTRIES);
        s.oom_kills = c.get(counter::OOM_KILLS);
        s.findings = self.engine.findings().len();
        s.sightings = self.engine.findings().iter().map(|f| f.count).sum();
        s.findings_folded = self.engine.folded();
        let p = self.refresher.current();
        s.topology_refreshes = p.stats.refreshes;
        s.topology_errors = p.stats.errors;
        s.discovery_ms = p.stats.last_ms;
        s.discovery_max_ms = p.stats.max_ms;
        s.topology_age_s = p.discovered_at.map(|t| t.elapsed().as_secs_f64());
    }

    /// Runs until the duration passes or SIGINT/SIGTERM; SIGHUP asks for a
    /// new discovery. Always drains the ring and prints the final summary.
    /// Once a second: probes for modules loaded since, loss logs, D-state
    /// checks, and the findings' live counts to the sink.
    fn every_second(&mut self) -> Result<()> {
        match self.session.refresh_modules() {
            Ok(now) if !now.is_empty() => log::warn!("attached after a module load: {}", now.join(", ")),
            Ok(_) => {}
            Err(e) => log::warn!("cannot re-read the kernel after a module load: {e:#}"),
        }
        self.log_drops(false);
        self.check_blocked()?;
        self.sink.end_batch()?;
        self.sink.findings_now(self.engine.findings(), now_ns())
    }

    /// A periodic summary, marked as news when it says something
    /// `last_news` (the previous one's) did not.
    fn periodic_summary(&mut self, last_news: &mut Option<[u64; 16]>) -> Result<()> {
        self.refresh_summary();
        self.summary.loop_lag_max_ms = std::mem::take(&mut self.lag.interval).as_secs_f64() * 1e3;
        let now = Some(news(&self.summary));
        self.summary.news = now != *last_news;
        *last_news = now;
        self.sink.summary(&self.summary, self.engine.findings(), false)
    }

    pub async fn run(&mut self, opts: &RunOptions) -> Result<()> {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut lag_probe = tokio::time::interval(LAG_PROBE);
        // A late probe counts once, as the lag it saw, not as a burst.
        lag_probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut topology = self.refresher.subscribe();
        let first = topology.borrow_and_update().clone();
        self.take(&first)?;
        let mut last_summary = Instant::now();
        // The first periodic summary always comes: it says the loop runs.
        let mut last_news = None;
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
                changed = topology.changed() => {
                    if changed.is_ok() {
                        let p = topology.borrow_and_update().clone();
                        self.take(&p)?;
                    }
                }
                due = lag_probe.tick() => self.lag.observe(due.elapsed()),
                _ = tick.tick() => {
                    self.every_second()?;
                    if last_summary.elapsed() >= opts.summary_every {
                        last_summary = Instant::now();
                        self.periodic_summary(&mut last_news)?;
                    }
                }
                _ = &mut sleep, if deadline.is_some() => break,
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = sighup.recv() => {
                    log::info!("SIGHUP: re-reading the storage topology");
                    self.refresher.refresh_now();
                }
            }
        }
        for raw in self.session.events.drain() {
            self.handle(&raw)?;
        }
        self.sink.end_batch()?;
        self.log_drops(true);
        self.refresh_summary();
        self.summary.loop_lag_max_ms = self.lag.overall.as_secs_f64() * 1e3;
        self.summary.news = true;
        self.sink.summary(&self.summary, self.engine.findings(), true)
    }
}
