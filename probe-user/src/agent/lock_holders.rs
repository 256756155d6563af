//! Who holds what in the filesystems above servicers: the tasks in D state
//! whose kernel stacks pass through a function that holds an inode lock, a
//! transaction or a journal handle (detect/holds.rs), and the filesystem
//! of the file their system call works on.
//!
//! Pulled from /proc when a finding asks, not pushed by lock hooks: a
//! holder that matters to a cycle is blocked (it waits on the servicer's
//! I/O, on dirty throttling, on reclaim), so it is in D state with the
//! holding function on its stack, however long before the lock was taken.
//! Nothing runs on the filesystems' lock paths, so an unrelated filesystem
//! costs nothing, pressure or not.
//!
//! A holder seen in one walk stays named for [`RECENT`] with how long ago it
//! was seen: a writer throttled under its write one second may be blocked
//! the next in reclaim on a page fault of its own code (no lock held), and
//! it is still the task whose dirty pages and lock the cycle is made of.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    sync::Arc,
    time::{Duration, Instant},
};

use super::blocked::{self, BlockedTask};
use crate::{
    detect::{finding::LockHolder, holds::held_by},
    topology::Dev,
};

/// A walk of /proc is reused for this long: a burst of servicer events
/// must not become a burst of walks, and a blocked holder stays blocked.
const FRESH: Duration = Duration::from_secs(1);

/// How long a holder stays named after the last walk that saw it.
const RECENT: Duration = Duration::from_secs(10);

/// System calls whose first argument is the descriptor of the file they
/// write, read or sync: the file a blocked holder's locks are on.
const FD_FIRST: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_close,
];

#[derive(Default)]
pub struct LockHolders {
    snapshot: Arc<[(Dev, LockHolder)]>,
    taken: Option<Instant>,
    /// Every holder seen within RECENT, by thread, with when.
    seen: HashMap<u32, (Dev, LockHolder, Instant)>,
}

impl LockHolders {
    /// Who holds what now, by the filesystem's device; walks /proc when the
    /// last walk is older than [`FRESH`].
    pub fn current(&mut self) -> Arc<[(Dev, LockHolder)]> {
        if self.taken.is_none_or(|t| t.elapsed() >= FRESH) {
            self.update(&blocked::blocked_tasks());
        }
        Arc::clone(&self.snapshot)
    }

    /// Takes the holders from a walk the caller made anyway.
    pub fn update(&mut self, blocked: &[BlockedTask]) -> Arc<[(Dev, LockHolder)]> {
        let now = Instant::now();
        self.taken = Some(now);
        for (dev, h) in blocked.iter().filter_map(holder) {
            self.seen.insert(h.tid, (dev, h, now));
        }
        self.seen.retain(|_, (_, _, at)| now.duration_since(*at) < RECENT);
        let mut all: Vec<(Dev, LockHolder)> = self
            .seen
            .values()
            .map(|(dev, h, at)| {
                (*dev, LockHolder { seen_ms_ago: now.duration_since(*at).as_millis() as u64, ..h.clone() })
            })
            .collect();
        // Blocked holding now first, then the most recently seen.
        all.sort_by_key(|(_, h)| (h.seen_ms_ago, h.tid));
        self.snapshot = all.into();
        Arc::clone(&self.snapshot)
    }
}

fn holder(t: &BlockedTask) -> Option<(Dev, LockHolder)> {
    let held = held_by(&t.frames);
    if held.is_empty() {
        return None;
    }
    let (dev, ino) = file_of(t.pid, t.tid)?;
    let blocked_in = t.frames.first().map(|f| crate::kernel::markers::function(f).to_owned());
    Some((dev, LockHolder { tid: t.tid, tgid: t.pid, comm: t.comm.clone(), held, ino, blocked_in, seen_ms_ago: 0 }))
}

/// The filesystem and inode of the file the task's current system call
/// works on (/proc/PID/task/TID/syscall: the number, then the arguments).
fn file_of(pid: u32, tid: u32) -> Option<(Dev, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let mut words = text.split_whitespace();
    let nr: libc::c_long = words.next()?.parse().ok()?;
    if !FD_FIRST.contains(&nr) {
        return None;
    }
    let fd = u64::from_str_radix(words.next()?.trim_start_matches("0x"), 16).ok()?;
    // stat() follows the magic link to the open file itself.
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    Some((Dev::from_st_dev(meta.dev()), meta.ino()))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
    };

    use super::*;

    #[test]
    fn the_file_of_a_thread_blocked_in_write_is_the_one_it_writes() {
        let mut fds = [0; 2];
        // SAFETY: a valid array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both were just opened and are owned here only.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = std::fs::metadata(format!("/proc/self/fd/{}", w.as_raw_fd())).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            // More than a pipe holds: blocks until the reader drains it.
            std::fs::File::from(w).write_all(&vec![0u8; 1 << 20]).unwrap();
        });
        let tid = rx.recv().unwrap();
        let pid = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            if let Some(f) = file_of(pid, tid) {
                break Some(f);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut sink = Vec::new();
        std::fs::File::from(r).read_to_end(&mut sink).unwrap();
        writer.join().unwrap();
        assert_eq!(found, Some((Dev::from_st_dev(want.dev()), want.ino())));
    }
}
