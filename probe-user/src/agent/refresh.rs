//! Topology discovery off the event loop.
//!
//! Discovery readlinks every descriptor of every process and opens loop
//! devices: on a big host it takes seconds. The event loop must keep
//! draining the ring buffer meanwhile, so discovery runs on a background
//! task that publishes snapshots through a `tokio::sync::watch` channel, and
//! the loop applies a snapshot when one arrives. The task runs one discovery
//! at a time, on a blocking thread it waits for (a wedged one is reported,
//! never abandoned and doubled), and starts the next when the mount table
//! changes (poll(2) on /proc/self/mountinfo reports POLLPRI|POLLERR), when
//! asked (SIGHUP), or `every` after the previous one ended.
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

use crate::topology::{Extra, Topology};

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

/// The background refresher; dropping it stops the task.
pub struct Refresher {
    rx: watch::Receiver<Published>,
    poke: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Refresher {
    /// Starts discovering now, then again on mount changes, on
    /// [`refresh_now`](Self::refresh_now) and `every` after each discovery.
    pub fn start(extra: Extra, every: Duration) -> Refresher {
        let initial = Published { topology: None, generation: 0, discovered_at: None, stats: RefreshStats::default() };
        let (tx, rx) = watch::channel(initial);
        let poke = Arc::new(Notify::new());
        let task = tokio::spawn(refresh_loop(extra, every, tx, Arc::clone(&poke)));
        Refresher { rx, poke, task }
    }

    /// Asks for a discovery as soon as the one running (if any) ends.
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

async fn refresh_loop(extra: Extra, every: Duration, tx: watch::Sender<Published>, poke: Arc<Notify>) {
    let mut mounts = mount_watch();
    let mut last_warned: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let result = discover(&extra).await;
        let took_ms = started.elapsed().as_secs_f64() * 1e3;
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
                    last_warned = None;
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
                        last_warned = Some(Instant::now());
                    }
                    p.stats.last_error = Some(e);
                }
            }
        });
        // Whatever asked for a refresh while this one ran is served by the
        // next one; the interval counts from the end of this one.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = poke.notified() => {}
            _ = mounts_changed(&mut mounts) => {}
        }
    }
}

/// One discovery on a blocking thread, waited for however long it takes.
async fn discover(extra: &Extra) -> anyhow::Result<Topology> {
    let extra = extra.clone();
    let started = Instant::now();
    let mut job = tokio::task::spawn_blocking(move || {
        let t = Topology::discover(&extra);
        // Reading /proc of every process leaves megabytes freed inside this
        // thread's malloc arena, which glibc keeps otherwise: a monitor's
        // RSS would be its busiest discovery's.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        t
    });
    loop {
        match tokio::time::timeout(SLOW, &mut job).await {
            Ok(Ok(result)) => return result,
            Ok(Err(e)) => anyhow::bail!("topology discovery crashed: {e}"),
            Err(_) => log::warn!(
                "topology discovery has been running for {:.0} s; the previous view stays in force",
                started.elapsed().as_secs_f64()
            ),
        }
    }
}
