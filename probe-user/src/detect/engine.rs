//! Correlates events with the storage stack and applies the rules.

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use probe_common::{
    events::{
        DirtyThrottleEvent, ReclaimEvent, ReclaimKind, ReclaimWriteEvent, ShrinkerEvent, TaskCtx, WritebackWaitEvent,
    },
    flags::{effective_gfp, GFP_FS, PF_KTHREAD, PF_LOCAL_THROTTLE, PF_MEMALLOC},
};

use super::{
    behaviour::ReclaimBehaviour,
    finding::{Detail, Finding, LockHolder, ServicerDesc, StackSeen, ThreadSeen, MAX_STACKS, MAX_THREADS},
    index::{MountRef, StorageIndex},
    rules::{self, Rule},
};
use crate::{
    events::decode::{comm, cstr, wait_dev, Event},
    kernel::markers::{function, on_stack, RECLAIM_FUNCTIONS, THROTTLE_FUNCTION, WAIT_FUNCTIONS},
    topology::Dev,
};

/// What the agent knows about an event beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Symbolized kernel stack of the event, shared: a replay interns each
    /// stack once and every event, pending thread and finding points to it.
    pub stack: Arc<[String]>,
    /// Requests in flight on the served device (None: not known, as in a
    /// replayed trace, or a device without a sysfs inflight count).
    pub inflight: Option<i64>,
    /// Who holds what in each filesystem now, by its device (empty: not
    /// known, as in a replayed trace).
    pub lock_holders: Arc<[(Dev, LockHolder)]>,
}

/// What a pending servicer thread is stuck in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stuck {
    /// Inside direct or memcg reclaim (between its begin and end events).
    Reclaim,
    /// Paused in balance_dirty_pages(): no end event, the pauses repeat.
    DirtyThrottle,
}

/// A servicer thread seen entering reclaim and not yet leaving it, or being
/// dirty-throttled.
#[derive(Debug, Clone)]
struct Pending {
    ctx: TaskCtx,
    stuck: Stuck,
    gfp: u32,
    waited_on: Option<Dev>,
    stack: Arc<[String]>,
}

/// What one rule saw in one event or blocked thread, before it is counted
/// into the finding of its (rule, process, upper filesystem).
struct Sighting {
    rule: &'static Rule,
    /// The servicer thread as the event saw it; it names the served device.
    ctx: TaskCtx,
    /// The device the event names, if any: the filesystem on it is the one
    /// the finding is about.
    about: Option<Dev>,
    /// The allocation's gfp mask (0: not known).
    gfp: u32,
    obs: Observed,
    detail: Detail,
    /// Deadlock: the tasks waiting on the servicer.
    chain: Vec<String>,
}

impl Sighting {
    fn new(rule: &'static Rule, ctx: TaskCtx, obs: &Observed, detail: Detail) -> Sighting {
        Sighting { rule, ctx, about: None, gfp: 0, obs: obs.clone(), detail, chain: Vec::new() }
    }

    fn about(self, dev: Dev) -> Sighting {
        Sighting { about: Some(dev), ..self }
    }

    fn gfp(self, gfp: u32) -> Sighting {
        Sighting { gfp, ..self }
    }
}

/// A task's comm as the kernel keeps it: at most 15 bytes and a NUL.
fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = comm.len().min(15);
    out[..n].copy_from_slice(&comm.as_bytes()[..n]);
    out
}

/// A dirty-throttled thread whose last pause is older than this has
/// moved on (pauses are at most 200 ms apart while it stays throttled).
const THROTTLE_GONE_NS: u64 = 3_000_000_000;

/// A thread the agent found in D state.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub tid: u32,
    /// Its task flags now (field 9 of /proc/TID/stat).
    pub flags: u32,
    pub blocked_for: Duration,
    pub now_ns: u64,
    pub stack: Arc<[String]>,
    /// The tasks waiting on it, up the stack.
    pub chain: Vec<String>,
    /// Who holds what in each filesystem now.
    pub lock_holders: Arc<[(Dev, LockHolder)]>,
}

/// Distinct findings kept; beyond, new ones are counted in `folded`.
const MAX_FINDINGS: usize = 512;

/// Threads followed inside reclaim at once; beyond, new ones are counted in
/// `untracked`. A host has far fewer servicer threads; a crafted trace
/// could name every tid there is, each one an entry.
pub const MAX_PENDING: usize = 1 << 16;

/// What makes a finding distinct: the rule, the servicer process (0 for
/// kernel threads, which serve as one), and the filesystem above.
type Key = (&'static str, u32, Dev);

pub struct Engine {
    index: StorageIndex,
    behaviour: ReclaimBehaviour,
    deadlock_after: Duration,
    findings: Vec<Finding>,
    seen: HashMap<Key, usize>,
    /// Findings not kept because `MAX_FINDINGS` were.
    folded: u64,
    pending: HashMap<u32, Pending>,
    /// Threads not followed because `MAX_PENDING` were.
    untracked: u64,
}

fn stack_hash(stack: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    // Offsets vary with the call site inside a function; the functions don't.
    for f in stack {
        function(f).hash(&mut h);
    }
    h.finish()
}

impl Engine {
    pub fn new(index: StorageIndex, deadlock_after: Duration) -> Engine {
        Engine {
            index,
            behaviour: ReclaimBehaviour::default(),
            deadlock_after,
            findings: Vec::new(),
            seen: HashMap::new(),
            folded: 0,
            pending: HashMap::new(),
            untracked: 0,
        }
    }

    /// What the running kernel's reclaim does (unknown, the default, for a
    /// replayed trace).
    pub fn set_behaviour(&mut self, behaviour: ReclaimBehaviour) {
        self.behaviour = behaviour;
    }

    /// The topology changed (new loop device, mount, servicer).
    pub fn set_index(&mut self, index: StorageIndex) {
        self.index = index;
    }

    pub fn index(&self) -> &StorageIndex {
        &self.index
    }

    /// Every finding so far, with live counts.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Distinct findings dropped because the engine kept its maximum.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Threads entering reclaim that were not followed because
    /// [`MAX_PENDING`] were.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Whether `tid` may get a pending entry; counts it when it may not.
    fn may_follow(&mut self, tid: u32) -> bool {
        let ok = self.pending.len() < MAX_PENDING || self.pending.contains_key(&tid);
        self.untracked += u64::from(!ok);
        ok
    }

    /// Servicer threads inside reclaim or dirty throttling now, with when
    /// they were last seen entering it. Throttled threads whose pauses
    /// stopped `THROTTLE_GONE_NS` before `now_ns` are dropped.
    pub fn pending(&mut self, now_ns: u64) -> Vec<(u32, u64)> {
        self.pending.retain(|_, p| p.stuck == Stuck::Reclaim || now_ns.saturating_sub(p.ctx.ts_ns) < THROTTLE_GONE_NS);
        self.pending.iter().map(|(tid, p)| (*tid, p.ctx.ts_ns)).collect()
    }

    /// A servicer thread found in D state inside reclaim or dirty throttling
    /// (by the functions on its `stack`) that no event announced: it entered
    /// before the agent started, as on a host that is already hung. It is
    /// followed from now on as if its event had come; its gfp mask is not
    /// known. A thread already followed only has its throttling refreshed.
    pub fn adopt(&mut self, tgid: u32, tid: u32, comm: &str, task_flags: u32, stack: &[String], now_ns: u64) {
        let Some(serves) = self.index.servicer(tgid).map(|s| s.serves) else { return };
        let stuck = if RECLAIM_FUNCTIONS.iter().any(|f| on_stack(stack, f)) {
            Stuck::Reclaim
        } else if on_stack(stack, THROTTLE_FUNCTION) {
            Stuck::DirtyThrottle
        } else {
            return;
        };
        if let Some(p) = self.pending.get_mut(&tid) {
            if p.stuck == Stuck::DirtyThrottle && stuck == Stuck::DirtyThrottle {
                p.ctx.ts_ns = now_ns;
            }
            return;
        }
        if !self.may_follow(tid) {
            return;
        }
        let ctx = TaskCtx {
            ts_ns: now_ns,
            tgid,
            tid,
            task_flags,
            stack_id: -1,
            comm: comm_bytes(comm),
            serving_dev: serves.to_kernel(),
            fs_depth: 0,
        };
        self.pending.insert(tid, Pending { ctx, stuck, gfp: 0, waited_on: None, stack: stack.into() });
    }

    /// The filesystem mounted on the served device, or on a device stacked on it.
    fn upper_mount(&self, serving: Dev) -> Option<&MountRef> {
        self.index.upper_devs(serving).into_iter().filter(|d| d.major != 0).find_map(|d| self.index.mount_on(d))
    }

    fn is_upper(&self, serving: Dev, dev: Dev) -> bool {
        self.index.upper_devs(serving).contains(&dev)
    }

    /// Applies the rules to one event; returns the findings it created (a
    /// repeat only bumps the count of the existing one).
    pub fn on_event(&mut self, ev: &Event, obs: &Observed) -> Vec<Finding> {
        let sighting = match ev {
            Event::OomVictim(e) => self.oom_victim(e.data.pid, e.ctx.ts_ns),
            _ if ev.ctx().serving_dev == 0 => None,
            Event::ReclaimBegin(e) => self.reclaim_begin(e, obs),
            Event::ReclaimEnd(e) => {
                self.pending.remove(&e.ctx.tid);
                None
            }
            Event::Shrinker(e) => self.shrinker(e, obs),
            Event::WritebackWait(e) => self.writeback_wait(e, obs),
            Event::ReclaimWrite(e) => self.reclaim_write(e, obs),
            Event::DirtyThrottle(e) => self.dirty_throttle(e, obs),
        };
        sighting.and_then(|s| self.report(s)).into_iter().collect()
    }

    /// RS001: a servicer entering reclaim that may run the shrinkers of,
    /// or wait on writeback to, the busy filesystem above it. A direct or
    /// memcg reclaim is followed until it ends, for RS201.
    fn reclaim_begin(&mut self, e: &ReclaimEvent, obs: &Observed) -> Option<Sighting> {
        let ctx = e.ctx;
        let serving = Dev::from_kernel(ctx.serving_dev);
        let kind = ReclaimKind::from_u32(e.data.reclaim_kind);
        if matches!(kind, Some(ReclaimKind::Direct | ReclaimKind::Memcg)) && self.may_follow(ctx.tid) {
            let p = Pending { ctx, stuck: Stuck::Reclaim, gfp: e.data.gfp, waited_on: None, stack: obs.stack.clone() };
            self.pending.insert(ctx.tid, p);
        }
        let gfp = effective_gfp(e.data.gfp, ctx.task_flags);
        let busy = obs.inflight.is_none_or(|n| n > 0) || !self.lock_holders_of(serving, obs).is_empty();
        // Without __GFP_FS reclaim neither runs filesystem shrinkers
        // (super_cache_scan) nor waits on file writeback (may_enter_fs):
        // only swap I/O is left, which reaches the stack only when swap
        // lives on it.
        if gfp & GFP_FS == 0 || !busy || self.upper_mount(serving).is_none() {
            return None;
        }
        let detail = Detail::Reclaim { kind: e.data.reclaim_kind, order: e.data.order };
        Some(Sighting::new(&rules::HAZARD_FS_IO, ctx, obs, detail).gfp(gfp))
    }

    /// RS101: reclaim in a servicer calls the shrinker of a filesystem
    /// above the device it serves.
    fn shrinker(&self, e: &ShrinkerEvent, obs: &Observed) -> Option<Sighting> {
        let sb = Dev::from_kernel(e.data.sb_dev);
        // super_cache_scan() returns SHRINK_STOP at once without __GFP_FS
        // (fs/super.c): entered, but no recursion. A mask of 0 is one the
        // probe could not know.
        let can_recurse = e.data.gfp == 0 || e.data.gfp & GFP_FS != 0;
        if e.data.sb_dev == 0 || !can_recurse || !self.is_upper(Dev::from_kernel(e.ctx.serving_dev), sb) {
            return None;
        }
        let detail = Detail::Shrinker { fs_type: cstr(&e.data.fs_type), sb };
        Some(Sighting::new(&rules::SHRINKER_UPPER, e.ctx, obs, detail).about(sb).gfp(e.data.gfp))
    }

    /// RS102: reclaim in a servicer waits on writeback of a device above
    /// the one it serves.
    fn writeback_wait(&mut self, e: &WritebackWaitEvent, obs: &Observed) -> Option<Sighting> {
        let dev = wait_dev(e)?;
        if e.data.in_reclaim == 0 || !self.is_upper(Dev::from_kernel(e.ctx.serving_dev), dev) {
            return None;
        }
        let gfp = self.pending.get_mut(&e.ctx.tid).map_or(0, |p| {
            p.waited_on = Some(dev);
            p.gfp
        });
        let detail = Detail::WritebackWait { dev, ino: e.data.ino, index: e.data.index };
        Some(Sighting::new(&rules::WAIT_UPPER_WRITEBACK, e.ctx, obs, detail).about(dev).gfp(gfp))
    }

    /// RS103: reclaim in a servicer writes out a folio of a filesystem
    /// above the device it serves.
    fn reclaim_write(&self, e: &ReclaimWriteEvent, obs: &Observed) -> Option<Sighting> {
        let dev = Dev::from_kernel(e.data.dev);
        if !self.is_upper(Dev::from_kernel(e.ctx.serving_dev), dev) {
            return None;
        }
        let gfp = self.pending.get(&e.ctx.tid).map_or(0, |p| p.gfp);
        let detail = Detail::Pageout { dev, ino: e.data.ino };
        Some(Sighting::new(&rules::WRITE_UPPER_FOLIO, e.ctx, obs, detail).about(dev).gfp(gfp))
    }

    /// RS002: a servicer without PF_LOCAL_THROTTLE paused for dirty pages
    /// that may be those it must write back itself. The thread is followed
    /// while the pauses go on, for RS201.
    fn dirty_throttle(&mut self, e: &DirtyThrottleEvent, obs: &Observed) -> Option<Sighting> {
        let ctx = e.ctx;
        self.upper_mount(Dev::from_kernel(ctx.serving_dev))?;
        // A thread already inside reclaim stays pending as such.
        if self.may_follow(ctx.tid) {
            let entry = self.pending.entry(ctx.tid).or_insert_with(|| Pending {
                ctx,
                stuck: Stuck::DirtyThrottle,
                gfp: 0,
                waited_on: None,
                stack: obs.stack.clone(),
            });
            if entry.stuck == Stuck::DirtyThrottle {
                entry.ctx = ctx;
            }
        }
        if ctx.task_flags & PF_LOCAL_THROTTLE != 0 {
            return None;
        }
        let detail = Detail::DirtyThrottle {
            bdi: cstr(&e.data.bdi),
            dirty: e.data.dirty,
            limit: e.data.limit,
            cgroup_ino: e.data.cgroup_ino,
        };
        Some(Sighting::new(&rules::HAZARD_DIRTY_THROTTLE, ctx, obs, detail))
    }

    /// RS301: the OOM killer chose `pid`, a servicer, whose death leaves
    /// every filesystem above it failing I/O.
    fn oom_victim(&mut self, pid: u32, ts_ns: u64) -> Option<Sighting> {
        let s = self.index.servicer(pid)?.clone();
        let ctx = TaskCtx {
            ts_ns,
            tgid: pid,
            tid: pid,
            task_flags: 0,
            stack_id: -1,
            comm: comm_bytes(&s.comm),
            serving_dev: s.serves.to_kernel(),
            fs_depth: 0,
        };
        self.pending.retain(|_, p| p.ctx.tgid != pid);
        let detail = Detail::OomKilled { serves: s.serves };
        Some(Sighting::new(&rules::SERVICER_OOM_KILLED, ctx, &Observed::default(), detail))
    }

    /// A thread in D state: a deadlock when it is a servicer inside reclaim,
    /// blocked past the threshold on a wait for the I/O it serves.
    pub fn on_blocked(&mut self, b: &Blocked) -> Option<Finding> {
        let s = self.blocked(b)?;
        self.report(s)
    }

    /// RS201: the sighting `b` makes, if any.
    fn blocked(&self, b: &Blocked) -> Option<Sighting> {
        if b.blocked_for < self.deadlock_after {
            return None;
        }
        let p = self.pending.get(&b.tid)?;
        let waits = b.stack.iter().any(|f| WAIT_FUNCTIONS.iter().any(|w| f.starts_with(w)));
        let detail = match p.stuck {
            // The kernel marks reclaim with PF_MEMALLOC: without it the
            // recorded begin is stale (its end event was lost).
            Stuck::Reclaim => {
                if b.flags & PF_MEMALLOC == 0 || (p.waited_on.is_none() && !waits) {
                    return None;
                }
                Detail::BlockedInReclaim { waited_on: p.waited_on, blocked_ns: nanos(b.blocked_for) }
            }
            Stuck::DirtyThrottle => {
                if !b.stack.iter().any(|f| f.starts_with(THROTTLE_FUNCTION)) {
                    return None;
                }
                Detail::BlockedThrottled { blocked_ns: nanos(b.blocked_for) }
            }
        };
        let stack = if b.stack.is_empty() { p.stack.clone() } else { b.stack.clone() };
        let obs = Observed { stack, inflight: None, lock_holders: Arc::clone(&b.lock_holders) };
        let ctx = TaskCtx { ts_ns: b.now_ns, ..p.ctx };
        let mut s = Sighting::new(&rules::BLOCKED_IN_RECLAIM, ctx, &obs, detail).gfp(p.gfp);
        s.chain = b.chain.clone();
        Some(s)
    }

    /// The lock_holders in the filesystem above `serving`.
    fn lock_holders_of(&self, serving: Dev, obs: &Observed) -> Vec<LockHolder> {
        let Some(upper) = self.upper_mount(serving) else { return Vec::new() };
        obs.lock_holders.iter().filter(|(d, _)| *d == upper.dev).map(|(_, h)| h.clone()).collect()
    }

    /// Adds a sighting to the finding of (rule, process, upper fs): returns
    /// it when it is new, None when an existing one was updated or the
    /// engine is full (counted in `folded`).
    fn report(&mut self, s: Sighting) -> Option<Finding> {
        let serving = Dev::from_kernel(s.ctx.serving_dev);
        // The filesystem the sighting is about: the one whose shrinker,
        // writeback or folio the event names, else the one right above.
        let upper = s.about.and_then(|d| self.index.mount_on(d)).or_else(|| self.upper_mount(serving)).cloned();
        let kernel = s.ctx.task_flags & PF_KTHREAD != 0;
        let key = (s.rule.id, if kernel { 0 } else { s.ctx.tgid }, upper.as_ref().map(|m| m.dev).unwrap_or(serving));
        let lock_holders: Vec<LockHolder> =
            s.obs.lock_holders.iter().filter(|(d, _)| *d == key.2).map(|(_, h)| h.clone()).collect();
        if let Some(&i) = self.seen.get(&key) {
            let f = &mut self.findings[i];
            f.count += 1;
            f.last_ns = s.ctx.ts_ns;
            see_thread(f, &s.ctx);
            see_stack(f, &s.obs.stack);
            if !lock_holders.is_empty() {
                f.lock_holders = lock_holders;
            }
            if !s.chain.is_empty() {
                f.chain = s.chain;
            }
            return None;
        }
        if self.findings.len() >= MAX_FINDINGS {
            self.folded += 1;
            return None;
        }
        let f = self.new_finding(s, upper, lock_holders);
        self.seen.insert(key, self.findings.len());
        self.findings.push(f.clone());
        Some(f)
    }

    /// The first sighting of a finding, with the storage stack it names.
    fn new_finding(&self, s: Sighting, upper: Option<MountRef>, lock_holders: Vec<LockHolder>) -> Finding {
        let ctx = &s.ctx;
        let serving = Dev::from_kernel(ctx.serving_dev);
        let comm = comm(ctx);
        let name = self.index.servicer(ctx.tgid).and_then(|s| s.program.clone()).unwrap_or_else(|| comm.clone());
        // Name the block device the upper filesystem sits on: a FUSE
        // daemon serves a FUSE file (0:N) that backs the loop device.
        let device = upper.as_ref().map(|m| m.dev).unwrap_or(serving);
        let backing = self.index.backing_of(device);
        let serves_fuse = self.index.mount_on(serving).is_some_and(|m| m.fs_type.starts_with("fuse"));
        let mut f = Finding {
            kernel_note: self.behaviour.note(s.rule.id, serves_fuse),
            rule: s.rule.id.to_owned(),
            severity: s.rule.severity,
            servicer: ServicerDesc { name, comm, tgid: ctx.tgid, tid: ctx.tid, task_flags: ctx.task_flags },
            upper_fs: upper,
            device,
            backing_file: backing.map(|b| b.path.clone()),
            lower_fs: backing.and_then(|b| self.index.mount_on(b.file_dev)).cloned(),
            bottom_fs: self.index.bottom_mount(device).cloned(),
            gfp: s.gfp,
            upper_inflight: s.obs.inflight,
            detail: s.detail,
            stack: s.obs.stack.clone(),
            threads: Vec::new(),
            threads_folded: 0,
            stacks: Vec::new(),
            stacks_folded: 0,
            lock_holders,
            chain: s.chain,
            first_ns: ctx.ts_ns,
            last_ns: ctx.ts_ns,
            count: 1,
        };
        see_thread(&mut f, ctx);
        see_stack(&mut f, &s.obs.stack);
        f
    }
}

/// A time blocked, in the nanoseconds a finding keeps.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Counts a sighting by `ctx`'s thread, keeping at most `MAX_THREADS`.
fn see_thread(f: &mut Finding, ctx: &TaskCtx) {
    if let Some(t) = f.threads.iter_mut().find(|t| t.tid == ctx.tid) {
        t.count += 1;
        t.flags_raw = ctx.task_flags;
    } else if f.threads.len() < MAX_THREADS {
        f.threads.push(ThreadSeen { tid: ctx.tid, comm: comm(ctx), flags_raw: ctx.task_flags, count: 1 });
    } else {
        f.threads_folded += 1;
    }
}

/// Counts a sighting of `stack` (by its functions), keeping at most
/// `MAX_STACKS` distinct ones.
fn see_stack(f: &mut Finding, stack: &Arc<[String]>) {
    if stack.is_empty() {
        return;
    }
    let h = stack_hash(stack);
    if let Some(s) = f.stacks.iter_mut().find(|s| s.hash == h) {
        s.count += 1;
    } else if f.stacks.len() < MAX_STACKS {
        f.stacks.push(StackSeen { frames: Arc::clone(stack), count: 1, hash: h });
    } else {
        f.stacks_folded += 1;
    }
}

#[cfg(test)]
mod tests {
    //! The rules over synthetic event streams: no root, no kernel.

    use probe_common::{
        events::{
            EventKind, ReclaimData, ReclaimEvent, ReclaimWriteData, ReclaimWriteEvent, ShrinkerData, ShrinkerEvent,
            WritebackWaitData, WritebackWaitEvent,
        },
        flags::{PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO},
    };

    use super::*;
    use crate::detect::{
        finding::Severity,
        index::{BackingEdge, MountRef, ServicerRef},
    };

    const LOOP0: Dev = Dev { major: 7, minor: 0 };
    const LOOP1: Dev = Dev { major: 7, minor: 1 };
    const GFP_HIGHUSER_MOVABLE: u32 = 0x100cca;

    /// XFS on loop0 on qsd's FUSE file on ext4, and XFS on loop1 on a file in
    /// the first XFS.
    fn index() -> StorageIndex {
        let m = |dev, fs: &str, mp: &str| MountRef { dev, fs_type: fs.into(), mount_point: mp.into() };
        StorageIndex {
            mounts: vec![
                m(Dev { major: 254, minor: 1 }, "ext4", "/"),
                m(LOOP0, "xfs", "/mnt/upper"),
                m(LOOP1, "xfs", "/mnt/top"),
            ],
            backing: vec![
                BackingEdge { file_dev: Dev { major: 0, minor: 55 }, path: "/srv/fuse.img".into(), backs: LOOP0 },
                BackingEdge { file_dev: LOOP0, path: "/mnt/upper/img".into(), backs: LOOP1 },
            ],
            servicers: vec![ServicerRef {
                tgid: 100,
                comm: "qemu-storage-d".into(),
                program: Some("qemu-storage-daemon".into()),
                serves: LOOP0,
            }],
            below: vec![],
        }
    }

    fn engine() -> Engine {
        Engine::new(index(), Duration::from_secs(5))
    }

    fn ctx(tid: u32, flags: u32, serving: Dev) -> TaskCtx {
        let mut comm = [0u8; 16];
        comm[..14].copy_from_slice(b"qemu-storage-d");
        TaskCtx {
            ts_ns: 1_000,
            tgid: 100,
            tid,
            task_flags: flags,
            stack_id: 3,
            comm,
            serving_dev: serving.to_kernel(),
            fs_depth: 1,
        }
    }

    fn begin(tid: u32, flags: u32, gfp: u32, kind: ReclaimKind) -> Event {
        Event::ReclaimBegin(ReclaimEvent {
            kind: EventKind::ReclaimBegin as u32,
            _pad: 0,
            ctx: ctx(tid, flags, LOOP0),
            data: ReclaimData { reclaim_kind: kind as u32, gfp, ..Default::default() },
        })
    }

    fn end(tid: u32) -> Event {
        Event::ReclaimEnd(ReclaimEvent {
            kind: EventKind::ReclaimEnd as u32,
            _pad: 0,
            ctx: ctx(tid, 0, LOOP0),
            data: ReclaimData {
                reclaim_kind: ReclaimKind::Memcg as u32,
                gfp: GFP_HIGHUSER_MOVABLE,
                ..Default::default()
            },
        })
    }

    fn wait(tid: u32, bdi: &str) -> Event {
        let mut name = [0u8; 32];
        name[..bdi.len()].copy_from_slice(bdi.as_bytes());
        Event::WritebackWait(WritebackWaitEvent {
            kind: EventKind::WritebackWait as u32,
            _pad: 0,
            ctx: ctx(tid, 0, LOOP0),
            data: WritebackWaitData { bdi: name, ino: 131, index: 7, in_reclaim: 1, dev: 0 },
        })
    }

    fn obs() -> Observed {
        Observed {
            stack: ["try_to_free_mem_cgroup_pages+0x10".into(), "ext4_da_write_begin+0x20".into()].into(),
            inflight: Some(4),
            lock_holders: Default::default(),
        }
    }

    #[test]
    fn unprotected_servicer_in_memcg_reclaim_is_a_hazard() {
        let mut e = engine();
        let f = e.on_event(&begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &obs());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!((f.rule.as_str(), f.severity), ("RS001", Severity::Hazard));
        assert_eq!(f.gfp, GFP_HIGHUSER_MOVABLE);
        assert_eq!(f.detail, Detail::Reclaim { kind: ReclaimKind::Memcg as u32, order: 0 });
        assert_eq!(f.upper_fs.as_ref().unwrap().mount_point, "/mnt/upper");
        assert_eq!(f.device, LOOP0);
        assert_eq!(f.backing_file.as_deref(), Some("/srv/fuse.img"));
        assert_eq!(f.upper_inflight, Some(4));
    }

    #[test]
    fn io_flusher_servicer_is_not_a_hazard() {
        // A kprobe reports the caller's mask; the task's NOIO scope strips FS/IO.
        let mut e = engine();
        let f = e.on_event(
            &begin(101, PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE, GFP_HIGHUSER_MOVABLE, ReclaimKind::Direct),
            &obs(),
        );
        assert!(f.is_empty());
        // The tracepoint path reports the effective mask: GFP_NOIO-like.
        let f = e.on_event(&begin(102, PF_MEMALLOC_NOIO, 0x400 | 0x800, ReclaimKind::Memcg), &obs());
        assert!(f.is_empty());
    }

    #[test]
    fn no_upper_io_in_flight_or_no_upper_fs_means_no_hazard() {
        let mut e = engine();
        let idle = Observed { inflight: Some(0), ..obs() };
        assert!(e.on_event(&begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &idle).is_empty());
        let mut bare = Engine::new(StorageIndex::default(), Duration::from_secs(5));
        assert!(bare.on_event(&begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &obs()).is_empty());
    }

    /// A writer holding the upper XFS's IOLOCK, dirty-throttled.
    fn writer() -> LockHolder {
        LockHolder {
            tid: 200,
            tgid: 200,
            comm: "dd".into(),
            held: vec![crate::detect::holds::Held::IolockExcl],
            ino: 131,
            blocked_in: Some("balance_dirty_pages".into()),
            seen_ms_ago: 0,
        }
    }

    #[test]
    fn one_finding_per_rule_process_and_upper_fs_with_threads_and_stacks() {
        let mut e = engine();
        let ev = begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg);
        let f = e.on_event(&ev, &obs());
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].servicer.name.as_str(), f[0].servicer.comm.as_str()),
            ("qemu-storage-daemon", "qemu-storage-d")
        );
        assert!(e.on_event(&ev, &obs()).is_empty());
        // Another thread of the same daemon, another stack: the same finding.
        let other = Observed { stack: ["shrink_node+0x1".into()].into(), ..obs() };
        assert!(e.on_event(&begin(102, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &other).is_empty());
        let f = &e.findings()[0];
        assert_eq!(f.count, 3);
        assert_eq!(f.threads.iter().map(|t| (t.tid, t.count)).collect::<Vec<_>>(), vec![(101, 2), (102, 1)]);
        assert_eq!(f.stacks.iter().map(|s| s.count).collect::<Vec<_>>(), vec![2, 1]);
        // Thread churn and stack variety are bounded, and counted.
        for tid in 0..100 {
            let s = Observed { stack: [format!("f{tid}+0x1")].into(), ..obs() };
            e.on_event(&begin(1000 + tid, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &s);
        }
        let f = &e.findings()[0];
        assert_eq!((f.threads.len(), f.threads_folded), (MAX_THREADS, 102 - MAX_THREADS as u64));
        assert_eq!((f.stacks.len(), f.stacks_folded), (MAX_STACKS, 102 - MAX_STACKS as u64));
        assert_eq!(e.findings().len(), 1);
    }

    #[test]
    fn gfp_nofs_reclaim_is_not_a_hazard() {
        // GFP_NOFS|__GFP_HIGHMEM|__GFP_MOVABLE|__GFP_NOFAIL|__GFP_HARDWALL, seen in the demo.
        let mut e = engine();
        assert!(e.on_event(&begin(101, 0, 0x108c4a, ReclaimKind::Memcg), &obs()).is_empty());
        assert_eq!(e.on_event(&begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &obs()).len(), 1);
    }

    #[test]
    fn a_hazard_names_who_holds_what_in_the_upper_fs() {
        let mut e = engine();
        let unrelated = LockHolder { tid: 300, ..writer() };
        let lock_holders: Arc<[(Dev, LockHolder)]> = Arc::from(vec![(LOOP0, writer()), (LOOP1, unrelated)]);
        // No request in flight, but a writer holds the upper XFS's locks: busy.
        let o = Observed { inflight: Some(0), lock_holders, ..obs() };
        let f = e.on_event(&begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &o);
        assert_eq!(f[0].lock_holders, vec![writer()], "only the XFS on loop0, which the servicer serves");
    }

    #[test]
    fn writeback_wait_on_served_device_or_above_is_recursion() {
        let mut e = engine();
        e.on_event(&begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &obs());
        let f = e.on_event(&wait(101, "7:0"), &obs());
        assert_eq!(f[0].rule, "RS102");
        assert_eq!(f[0].gfp, GFP_HIGHUSER_MOVABLE);
        assert_eq!(f[0].detail, Detail::WritebackWait { dev: LOOP0, ino: 131, index: 7 });
        // Two levels up (XFS on loop1 whose file lives on loop0's XFS).
        assert_eq!(e.on_event(&wait(101, "7:1"), &Observed { stack: ["x".into()].into(), ..obs() })[0].rule, "RS102");
        // An unrelated device is not.
        assert!(e.on_event(&wait(101, "8:0"), &Observed { stack: ["y".into()].into(), ..obs() }).is_empty());
    }

    #[test]
    fn upper_shrinker_and_reclaim_write_are_recursion() {
        let mut e = engine();
        let mut fs_type = [0u8; 16];
        fs_type[..3].copy_from_slice(b"xfs");
        let shr = Event::Shrinker(ShrinkerEvent {
            kind: EventKind::Shrinker as u32,
            _pad: 0,
            ctx: ctx(101, 0, LOOP0),
            data: ShrinkerData { sb_dev: LOOP0.to_kernel(), fs_type, gfp: GFP_HIGHUSER_MOVABLE, ..Default::default() },
        });
        assert_eq!(e.on_event(&shr, &obs())[0].rule, "RS101");
        let w = Event::ReclaimWrite(ReclaimWriteEvent {
            kind: EventKind::ReclaimWrite as u32,
            _pad: 0,
            ctx: ctx(101, 0, LOOP0),
            data: ReclaimWriteData { dev: LOOP1.to_kernel(), _pad: 0, ino: 9 },
        });
        assert_eq!(e.on_event(&w, &obs())[0].rule, "RS103");
    }

    #[test]
    fn a_servicer_already_blocked_in_reclaim_when_the_agent_started_is_a_deadlock() {
        let mut e = engine();
        let stack: Vec<String> = ["folio_wait_bit+0x120", "folio_wait_writeback+0x2a", "shrink_folio_list+0xaba"]
            .into_iter()
            .chain(["shrink_node+0x2ff", "do_try_to_free_pages+0xc6", "try_to_free_mem_cgroup_pages+0x13a"])
            .map(String::from)
            .collect();
        // Not a servicer, or not in reclaim: nothing is followed.
        e.adopt(999, 999, "dd", PF_MEMALLOC, &stack, 1_000);
        e.adopt(100, 101, "qemu-storage-d", 0, &["futex_wait+0x10".to_owned()], 1_000);
        assert!(e.pending(1_000).is_empty());
        e.adopt(100, 101, "qemu-storage-d", PF_MEMALLOC, &stack, 1_000);
        assert_eq!(e.pending(1_000).iter().map(|p| p.0).collect::<Vec<_>>(), vec![101]);
        let blocked = Blocked {
            tid: 101,
            flags: PF_MEMALLOC,
            blocked_for: Duration::from_secs(6),
            now_ns: 9_000,
            stack: stack.into(),
            chain: vec![],
            lock_holders: Arc::from(vec![(LOOP0, writer())]),
        };
        let f = e.on_blocked(&blocked).unwrap();
        assert_eq!(f.rule, "RS201");
        assert_eq!(f.lock_holders, vec![writer()]);
        assert_eq!(f.servicer.comm, "qemu-storage-d");
    }

    #[test]
    fn servicer_blocked_in_reclaim_past_the_threshold_is_a_deadlock() {
        let mut e = engine();
        e.on_event(&begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &obs());
        e.on_event(&wait(101, "7:0"), &obs());
        let blocked = |secs| Blocked {
            tid: 101,
            flags: PF_MEMALLOC,
            blocked_for: Duration::from_secs(secs),
            now_ns: 9_000,
            stack: ["folio_wait_writeback+0x5".into(), "shrink_folio_list+0x9".into()].into(),
            chain: vec!["dd[200] folio_wait_writeback <- xfs_file_fsync".into()],
            lock_holders: Arc::from(vec![(LOOP0, writer())]),
        };
        assert!(e.on_blocked(&blocked(3)).is_none());
        let f = e.on_blocked(&blocked(6)).unwrap();
        assert_eq!((f.rule.as_str(), f.severity), ("RS201", Severity::Deadlock));
        assert_eq!(f.chain.len(), 1);
        assert_eq!(f.lock_holders, vec![writer()]);
        assert_eq!(f.detail, Detail::BlockedInReclaim { waited_on: Some(LOOP0), blocked_ns: 6_000_000_000 });
        // Once the thread leaves reclaim it is no longer a candidate.
        e.on_event(&end(101), &obs());
        assert!(e.pending(0).is_empty());
    }

    #[test]
    fn tasks_serving_nothing_are_ignored() {
        let mut e = engine();
        let mut ev = begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg);
        if let Event::ReclaimBegin(r) = &mut ev {
            r.ctx.serving_dev = 0;
        }
        assert!(e.on_event(&ev, &obs()).is_empty());
        assert!(e.pending(0).is_empty());
    }

    fn throttle(tid: u32, flags: u32, ts_ns: u64) -> Event {
        let mut bdi = [0u8; 32];
        bdi[..5].copy_from_slice(b"254:0");
        let mut c = ctx(tid, flags, LOOP0);
        c.ts_ns = ts_ns;
        Event::DirtyThrottle(probe_common::events::DirtyThrottleEvent {
            kind: EventKind::DirtyThrottle as u32,
            _pad: 0,
            ctx: c,
            data: probe_common::events::DirtyThrottleData { bdi, dirty: 9000, limit: 8000, pause: 50, cgroup_ino: 77 },
        })
    }

    fn blocked_in(tid: u32, flags: u32, top: &str) -> Blocked {
        Blocked {
            tid,
            flags,
            blocked_for: Duration::from_secs(9),
            now_ns: 9_000,
            stack: [format!("{top}+0x5"), "vfs_write+0x9".into()].into(),
            chain: vec![],
            lock_holders: Default::default(),
        }
    }

    #[test]
    fn a_reclaim_whose_end_was_lost_is_not_a_deadlock() {
        let mut e = engine();
        e.on_event(&begin(101, 0, GFP_HIGHUSER_MOVABLE, ReclaimKind::Memcg), &obs());
        e.on_event(&wait(101, "7:0"), &obs());
        // Later blocked elsewhere, no longer in reclaim: PF_MEMALLOC is gone.
        assert!(e.on_blocked(&blocked_in(101, 0, "folio_wait_writeback")).is_none());
        assert_eq!(e.on_blocked(&blocked_in(101, PF_MEMALLOC, "folio_wait_writeback")).unwrap().rule, "RS201");
    }

    #[test]
    fn dirty_throttled_servicer_is_a_hazard_then_a_deadlock_when_it_stays_blocked() {
        let mut e = engine();
        let f = e.on_event(&throttle(101, 0, 1_000), &obs());
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].rule.as_str(), f[0].severity), ("RS002", Severity::Hazard));
        let throttled = Detail::DirtyThrottle { bdi: "254:0".into(), dirty: 9000, limit: 8000, cgroup_ino: 77 };
        assert_eq!(f[0].detail, throttled);
        // Blocked somewhere else is not this deadlock.
        assert!(e.on_blocked(&blocked_in(101, 0, "futex_wait")).is_none());
        let d = e.on_blocked(&blocked_in(101, 0, "balance_dirty_pages")).unwrap();
        assert_eq!((d.rule.as_str(), d.severity), ("RS201", Severity::Deadlock));
        assert_eq!(d.detail, Detail::BlockedThrottled { blocked_ns: 9_000_000_000 });
        // Pauses stopped long ago: it moved on.
        assert!(e.pending(1_000 + THROTTLE_GONE_NS).is_empty());
    }

    #[test]
    fn local_throttle_exempts_a_servicer_from_the_dirty_hazard() {
        let mut e = engine();
        assert!(e.on_event(&throttle(101, PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE, 1_000), &obs()).is_empty());
    }

    #[test]
    fn the_oom_killer_choosing_a_servicer_is_a_failure() {
        let mut e = engine();
        let oom = |pid| {
            Event::OomVictim(probe_common::events::OomVictimEvent {
                kind: EventKind::OomVictim as u32,
                _pad: 0,
                ctx: ctx(555, 0, Dev::NONE),
                data: probe_common::events::OomVictimData { pid, _pad: 0 },
            })
        };
        assert!(e.on_event(&oom(999), &obs()).is_empty(), "not a servicer");
        let f = e.on_event(&oom(100), &obs());
        assert_eq!((f[0].rule.as_str(), f[0].severity), ("RS301", Severity::Failure));
        assert_eq!(f[0].servicer.tgid, 100);
        assert_eq!(f[0].upper_fs.as_ref().unwrap().mount_point, "/mnt/upper");
    }

    #[test]
    fn a_shrinker_entered_without_gfp_fs_is_not_recursion() {
        let mut e = engine();
        let mut fs_type = [0u8; 16];
        fs_type[..3].copy_from_slice(b"xfs");
        let shr = |gfp| {
            Event::Shrinker(ShrinkerEvent {
                kind: EventKind::Shrinker as u32,
                _pad: 0,
                ctx: ctx(101, 0, LOOP0),
                data: ShrinkerData { sb_dev: LOOP0.to_kernel(), fs_type, gfp, ..Default::default() },
            })
        };
        // GFP_NOFS: super_cache_scan() bails out before touching the fs.
        assert!(e.on_event(&shr(0xc40), &obs()).is_empty());
        assert_eq!(e.on_event(&shr(GFP_HIGHUSER_MOVABLE), &obs())[0].rule, "RS101");
    }
}
