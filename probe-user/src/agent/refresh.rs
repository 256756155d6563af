//! Topology discovery off the event loop, at a cost that follows what
//! changed on the host.
//!
//! A full discovery readlinks every descriptor of every process: on a big
//! host it takes seconds. The event loop must keep draining the ring buffer
//! meanwhile, so discovery runs on a background task that publishes
//! snapshots through a `tokio::sync::watch` channel, and the loop applies a
//! snapshot when one arrives. The task runs one discovery at a time, on a
//! blocking thread it waits for (a wedged one is reported, never abandoned
//! and doubled).
//!
//! Most discoveries are [`Pass::Changes`]: they read the mount table, the
//! block devices and the servicers again, but the descriptors only of
//! processes not seen before (see [`Discoverer`]). One starts when the
//! mount table changes (poll(2) on /proc/self/mountinfo reports
//! POLLPRI|POLLERR), when a block device comes, goes or changes (a uevent),
//! and `refresh` after the previous discovery ended. A [`Pass::Full`] runs
//! at start, when asked (SIGHUP), and `full_scan` after the previous one:
//! the safety net for a process that opened a device node after it was
//! first seen.
//!
//! A discovery that fails (out of descriptors, typically) is loud: it is
//! logged, counted in [`RefreshStats`], and the previous view stays in force,
//! so servicers never drop out of the kernel's maps because /proc could not
//! be read.

use std::{
    fs::File,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{watch, Notify},
    task::JoinHandle,
};

use super::uevents::BlockEvents;
use crate::topology::{Discoverer, Done, Extra, Pass, Topology};

/// A discovery still running after this long is reported (again every
/// time this much more passes): discovery should never block, so one that
/// does deserves a line in the log.
const SLOW: Duration = Duration::from_secs(10);

/// While discovery keeps failing, the warning is repeated this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// How discovery has been doing; the summaries and metrics show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RefreshStats {
    /// Discoveries that completed.
    pub refreshes: u64,
    /// Discoveries that failed; the view before them stayed in force.
    pub errors: u64,
    /// Failures in a row, up to the latest attempt.
    pub failing: u64,
    /// How long the latest discovery took, and the longest so far.
    pub last_ms: f64,
    pub max_ms: f64,
    pub last_error: Option<String>,
}

/// What the refresher publishes after every attempt.
#[derive(Debug, Clone)]
pub struct Published {
    /// The latest topology discovery produced (None until the first success).
    pub topology: Option<Arc<Topology>>,
    /// Counts successes: a new value means a new topology.
    pub generation: u64,
    /// When the topology in force was discovered.
    pub discovered_at: Option<Instant>,
    pub stats: RefreshStats,
}

/// The default time between full discoveries: long enough that reading
/// every descriptor of a crowded host is a small share of a core (about
/// 1 s per 200,000 descriptors here), short enough to catch what the
/// notifications cannot show (a process opening a device node late).
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(300);

/// How often discovery runs besides the notifications that start one.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    /// Between two discoveries (of what changed).
    pub refresh: Duration,
    /// Between two full discoveries.
    pub full_scan: Duration,
}

/// The background refresher; dropping it stops the task.
pub struct Refresher {
    rx: watch::Receiver<Published>,
    poke: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Refresher {
    /// Starts discovering now, then again on mount and block device
    /// changes, on [`refresh_now`](Self::refresh_now) and as `every` says.
    pub fn start(extra: Extra, every: Every) -> Refresher {
        let initial = Published { topology: None, generation: 0, discovered_at: None, stats: RefreshStats::default() };
        let (tx, rx) = watch::channel(initial);
        let poke = Arc::new(Notify::new());
        let task = tokio::spawn(refresh_loop(extra, every, tx, Arc::clone(&poke)));
        Refresher { rx, poke, task }
    }

    /// Asks for a full discovery as soon as the one running (if any) ends.
    pub fn refresh_now(&self) {
        self.poke.notify_one();
    }

    /// A receiver of every publication.
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.rx.clone()
    }

    /// The latest publication.
    pub fn current(&self) -> Published {
        self.rx.borrow().clone()
    }

    /// Waits for the first discovery attempt to end, and returns what it
    /// published (a topology, or the error in its stats).
    pub async fn first(&self) -> Published {
        let mut rx = self.rx.clone();
        let attempted = |p: &Published| p.stats.refreshes + p.stats.errors > 0;
        let got = rx.wait_for(attempted).await.map(|p| p.clone());
        // The task never drops its sender while the refresher lives.
        got.unwrap_or_else(|_| self.current())
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// /proc/self/mountinfo, polled for changes of the mount table. None (with
/// a warning) when it cannot be registered: the interval still refreshes.
fn mount_watch() -> Option<AsyncFd<File>> {
    let watched = File::open("/proc/self/mountinfo").and_then(|f| {
        // SAFETY: the AsyncFd owns the file, and with it the descriptor it polls.
        unsafe { AsyncFd::register_with_interest(f, Interest::PRIORITY) }.map_err(std::io::Error::from)
    });
    match watched {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::warn!("cannot watch /proc/self/mountinfo ({e}): mount changes are seen at the next interval");
            None
        }
    }
}

/// Resolves when the mount table changes; never, without a watch.
async fn mounts_changed(watch: &mut Option<AsyncFd<File>>) {
    let Some(fd) = watch.as_ref() else { return std::future::pending().await };
    match fd.ready(Interest::PRIORITY | Interest::ERROR).await {
        // The kernel reports a change once per change (mounts_poll() notes
        // the event it reported), so clearing the readiness is enough.
        Ok(mut guard) => guard.clear_ready(),
        Err(e) => {
            log::warn!("watching /proc/self/mountinfo failed ({e}): mount changes are seen at the next interval");
            *watch = None;
        }
    }
}

/// The block uevent socket; None (with a warning) when it cannot be
/// opened: new devices are then seen at the next interval or mount change.
fn block_watch() -> Option<BlockEvents> {
    BlockEvents::open()
        .inspect_err(|e| log::warn!("cannot receive block uevents ({e}): new devices are seen at the next interval"))
        .ok()
}

/// Resolves when a block device changed; never, without the socket.
async fn blocks_changed(watch: &mut Option<BlockEvents>) {
    let Some(events) = watch.as_mut() else { return std::future::pending().await };
    if let Err(e) = events.changed().await {
        log::warn!("receiving block uevents failed ({e}): new devices are seen at the next interval");
        *watch = None;
    }
}

/// Publishes one discovery's outcome: a new topology (and generation), or
/// the error, with the previous view kept in force; a failure is warned
/// about at most once every [`WARN_EVERY`] while it lasts.
fn publish(
    tx: &watch::Sender<Published>,
    result: anyhow::Result<Topology>,
    took_ms: f64,
    last_warned: &mut Option<Instant>,
) {
    tx.send_modify(|p| {
        p.stats.last_ms = took_ms;
        p.stats.max_ms = p.stats.max_ms.max(took_ms);
        match result {
            Ok(topo) => {
                if p.stats.failing > 0 {
                    log::warn!("topology discovery works again after {} failures", p.stats.failing);
                }
                p.stats.refreshes += 1;
                p.stats.failing = 0;
                p.topology = Some(Arc::new(topo));
                p.generation += 1;
                p.discovered_at = Some(Instant::now());
                *last_warned = None;
            }
            Err(e) => {
                p.stats.errors += 1;
                p.stats.failing += 1;
                let e = format!("{e:#}");
                if last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    let age = p.discovered_at.map(|t| format!("{:.0} s old", t.elapsed().as_secs_f64()));
                    log::warn!(
                        "topology discovery failed ({} in a row): {e}; keeping the previous view ({})",
                        p.stats.failing,
                        age.as_deref().unwrap_or("none yet")
                    );
                    *last_warned = Some(Instant::now());
                }
                p.stats.last_error = Some(e);
            }
        }
    });
}

async fn refresh_loop(extra: Extra, every: Every, tx: watch::Sender<Published>, poke: Arc<Notify>) {
    let mut mounts = mount_watch();
    let mut blocks = block_watch();
    let mut discoverer = Some(Discoverer::new(extra.clone()));
    let mut last_warned: Option<Instant> = None;
    // A full pass is due at start, on SIGHUP, every `every.full_scan`, and
    // again after one failed.
    let mut full_due = Instant::now();
    let mut pass = Pass::Full;
    loop {
        let started = Instant::now();
        let result = discover(&mut discoverer, &extra, pass).await;
        let took_ms = started.elapsed().as_secs_f64() * 1e3;
        if let Ok((_, done)) = &result {
            log::debug!(
                "topology: {:?} pass, {} processes listed, {} read, {took_ms:.1} ms",
                done.pass,
                done.scanned.processes,
                done.scanned.fd_scans
            );
            if done.pass == Pass::Full {
                full_due = Instant::now() + every.full_scan;
            }
        }
        publish(&tx, result.map(|(topo, _)| topo), took_ms, &mut last_warned);
        // Whatever asked for a discovery while this one ran is served by
        // the next one; the intervals count from the end of this one. A
        // full pass that failed is retried at the next wake-up, not at once.
        let full_wake = if Instant::now() >= full_due { None } else { Some(full_due) };
        tokio::select! {
            _ = tokio::time::sleep(every.refresh) => {}
            _ = sleep_until(full_wake) => {}
            _ = poke.notified() => full_due = Instant::now(),
            _ = mounts_changed(&mut mounts) => {}
            _ = blocks_changed(&mut blocks) => {}
        }
        pass = if Instant::now() >= full_due { Pass::Full } else { Pass::Changes };
    }
}

/// Sleeps until `at`; forever without it.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One discovery on a blocking thread, waited for however long it takes.
/// The discoverer goes to that thread and comes back with the result; one
/// lost in a crash is made anew (its first pass is full).
async fn discover(discoverer: &mut Option<Discoverer>, extra: &Extra, pass: Pass) -> anyhow::Result<(Topology, Done)> {
    let mut d = discoverer.take().unwrap_or_else(|| Discoverer::new(extra.clone()));
    let started = Instant::now();
    let mut job = tokio::task::spawn_blocking(move || {
        let t = d.discover(pass);
        if matches!(&t, Ok((_, done)) if done.pass == Pass::Full) {
            // Reading /proc of every process leaves megabytes freed inside
            // this thread's malloc arena, which glibc keeps otherwise: a
            // monitor's RSS would be its busiest discovery's.
            // SAFETY: malloc_trim has no preconditions.
            unsafe { libc::malloc_trim(0) };
        }
        (d, t)
    });
    loop {
        match tokio::time::timeout(SLOW, &mut job).await {
            Ok(Ok((d, result))) => {
                *discoverer = Some(d);
                return result;
            }
            Ok(Err(e)) => anyhow::bail!("topology discovery crashed: {e}"),
            Err(_) => log::warn!(
                "topology discovery has been running for {:.0} s; the previous view stays in force",
                started.elapsed().as_secs_f64()
            ),
        }
    }
}
