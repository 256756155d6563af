//! Where discovery reads the system from.
//!
//! Live discovery reads /proc and /sys, asks the loop driver through an
//! ioctl and stat()s a few files. A *snapshot* is a directory that stands in
//! for `/`: copies of exactly the /proc and /sys files one live discovery
//! read (symlinks stay symlinks), plus `reclaimscope-snapshot.json` with the
//! answers that are not files (ioctls, stats). Discovery on a snapshot gives
//! the same topology as the live discovery that recorded it, which is how
//! the test fixtures are captured and how a user can send in their stack.

use super::loopdev;
use super::model::{Dev, FileId};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Name of the file holding a snapshot's non-file answers.
pub const ANSWERS_FILE: &str = "reclaimscope-snapshot.json";

/// What a snapshot cannot hold as files.
#[derive(Default, Debug, Serialize, Deserialize)]
struct Answers {
    /// LOOP_GET_STATUS64 by loop device name.
    #[serde(default)]
    loop_status: BTreeMap<String, FileId>,
    /// stat() by path.
    #[serde(default)]
    stat: BTreeMap<PathBuf, FileId>,
}

/// Everything one live discovery read, to be written out as a snapshot.
#[derive(Default, Debug)]
pub(crate) struct Recording {
    files: BTreeMap<String, Vec<u8>>,
    links: BTreeMap<String, PathBuf>,
    dirs: BTreeMap<String, Vec<String>>,
    answers: Answers,
}

enum Mode {
    Live(Option<RefCell<Recording>>),
    Snapshot(Answers),
}

/// Read access to a live system or a snapshot. Paths are absolute ("/proc/1/stat").
pub(crate) struct Source {
    root: PathBuf,
    mode: Mode,
    /// The first read that failed because the system could not answer
    /// (see [`is_resource_error`]), as "PATH: error".
    failure: RefCell<Option<String>>,
}

/// Errors that say nothing about the file asked for, only that this
/// process or the system ran short: out of file descriptors, out of memory.
/// Discovery treats a missing file as "not there" (a process that exited,
/// a device without that attribute); taking one of these the same way
/// would make every servicer vanish from the kernel's maps when the agent
/// runs out of descriptors, and detection would go blind without a word.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS))
}

impl Source {
    pub fn live() -> Source {
        Source { root: PathBuf::from("/"), mode: Mode::Live(None), failure: RefCell::default() }
    }

    /// Live, keeping a copy of every answer for [`Recording::write`].
    pub fn recording() -> Source {
        Source { root: PathBuf::from("/"), mode: Mode::Live(Some(RefCell::default())), failure: RefCell::default() }
    }

    /// A snapshot directory; `/` means the live system.
    pub fn at(root: &Path) -> Result<Source> {
        if root == Path::new("/") {
            return Ok(Source::live());
        }
        if !root.is_dir() {
            anyhow::bail!("snapshot root {} is not a directory", root.display());
        }
        let answers_path = root.join(ANSWERS_FILE);
        let answers = match fs::read_to_string(&answers_path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {}", answers_path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Answers::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", answers_path.display())),
        };
        Ok(Source { root: root.to_path_buf(), mode: Mode::Snapshot(answers), failure: RefCell::default() })
    }

    /// The first read that failed for want of resources: the answers read
    /// are incomplete, and discovery must not pass them off as the system.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Passes `r` through, noting a resource error (see [`Source::failure`]).
    fn checked<T>(&self, path: &str, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if is_resource_error(e) {
                self.failure.borrow_mut().get_or_insert_with(|| format!("{path}: {e}"));
            }
        }
        r
    }

    fn real(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn record(&self, f: impl FnOnce(&mut Recording)) {
        if let Mode::Live(Some(rec)) = &self.mode {
            f(&mut rec.borrow_mut());
        }
    }

    pub fn read_bytes(&self, path: &str) -> io::Result<Vec<u8>> {
        let data = self.checked(path, fs::read(self.real(path)))?;
        self.record(|r| {
            r.files.insert(path.to_string(), data.clone());
        });
        Ok(data)
    }

    /// A text file (sysfs and procfs files are ASCII; anything else is replaced, not an error).
    pub fn read(&self, path: &str) -> io::Result<String> {
        self.read_bytes(path).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// The first line of a file, trimmed; `None` when absent or empty.
    pub fn read_line(&self, path: &str) -> Option<String> {
        let text = self.read(path).ok()?;
        let line = text.lines().next()?.trim();
        (!line.is_empty()).then(|| line.to_string())
    }

    pub fn read_link(&self, path: &str) -> io::Result<PathBuf> {
        let target = self.checked(path, fs::read_link(self.real(path)))?;
        self.record(|r| {
            r.links.insert(path.to_string(), target.clone());
        });
        Ok(target)
    }

    /// Entry names, sorted; a missing directory is empty (git keeps no empty
    /// directories, so a snapshot has none).
    pub fn read_dir(&self, path: &str) -> io::Result<Vec<String>> {
        Ok(self.read_dir_ino(path)?.into_iter().map(|(name, _)| name).collect())
    }

    /// Entry names with their inode numbers, sorted by name. For /proc the
    /// inode of a /proc/PID directory is handed out when that process's
    /// entry is first looked up and dropped when it exits, so it tells a
    /// process from a later one with the same pid without reading anything.
    pub fn read_dir_ino(&self, path: &str) -> io::Result<Vec<(String, u64)>> {
        let listing = fs::read_dir(self.real(path)).and_then(|entries| {
            entries
                .map(|e| e.map(|e| (e.file_name().to_string_lossy().into_owned(), e.ino())))
                .collect::<io::Result<Vec<_>>>()
        });
        let mut entries = match self.checked(path, listing) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        entries.sort();
        self.record(|r| {
            r.dirs.insert(path.to_string(), entries.iter().map(|(name, _)| name.clone()).collect());
        });
        Ok(entries)
    }

    /// The loop driver's view of /dev/`name`'s backing file (see [`loopdev`]).
    pub fn loop_status(&self, name: &str) -> Option<FileId> {
        match &self.mode {
            Mode::Snapshot(a) => a.loop_status.get(name).copied(),
            Mode::Live(_) => {
                let id = self.checked(&format!("/dev/{name}"), loopdev::backing_file_id(name)).ok()?;
                self.record(|r| {
                    r.answers.loop_status.insert(name.to_string(), id);
                });
                Some(id)
            }
        }
    }

    /// stat(); callers keep it away from FUSE and network filesystems.
    pub fn stat(&self, path: &Path) -> Option<FileId> {
        match &self.mode {
            Mode::Snapshot(a) => a.stat.get(path).copied(),
            Mode::Live(_) => {
                let m = self.checked(&path.display().to_string(), fs::metadata(path)).ok()?;
                let id = FileId { dev: Dev::from_st_dev(m.dev()), ino: m.ino() };
                self.record(|r| {
                    r.answers.stat.insert(path.to_path_buf(), id);
                });
                Some(id)
            }
        }
    }

    pub fn into_recording(self) -> Option<Recording> {
        match self.mode {
            Mode::Live(Some(rec)) => Some(rec.into_inner()),
            _ => None,
        }
    }
}

/// The pid a /proc path belongs to ("/proc/42/fd/3" → 42).
fn proc_pid(path: &str) -> Option<u32> {
    path.strip_prefix("/proc/")?.split('/').next()?.parse().ok()
}

impl Recording {
    /// Writes the snapshot into `dest` (created; must not hold another
    /// snapshot). Only the /proc/PID entries of `keep_pids` are written:
    /// discovery read every process's open files, but only the servicers
    /// matter and the rest would make fixtures huge and leak unrelated
    /// command lines.
    pub fn write(&self, dest: &Path, keep_pids: &BTreeSet<u32>) -> Result<()> {
        let kept = |path: &str| proc_pid(path).is_none_or(|pid| keep_pids.contains(&pid));
        let out = |path: &str| dest.join(path.trim_start_matches('/'));
        let ensure_parent = |p: &Path| -> Result<()> {
            let parent = p.parent().expect("snapshot paths are below dest");
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
        };
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        for (path, data) in self.files.iter().filter(|(p, _)| kept(p)) {
            let p = out(path);
            ensure_parent(&p)?;
            fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        }
        for (path, target) in self.links.iter().filter(|(p, _)| kept(p)) {
            let p = out(path);
            ensure_parent(&p)?;
            std::os::unix::fs::symlink(target, &p).with_context(|| format!("linking {}", p.display()))?;
        }
        // Entries of /sys directories that were listed but never read below
        // (holders/, slaves/) become empty files so the listing survives.
        // Under /proc every kept entry was read, so nothing else is needed.
        for (dir, names) in self.dirs.iter().filter(|(d, _)| !d.starts_with("/proc")) {
            for name in names {
                let p = out(&format!("{dir}/{name}"));
                if fs::symlink_metadata(&p).is_err() {
                    ensure_parent(&p)?;
                    fs::write(&p, b"").with_context(|| format!("writing {}", p.display()))?;
                }
            }
        }
        let answers = serde_json::to_string_pretty(&self.answers).context("serializing snapshot answers")?;
        fs::write(dest.join(ANSWERS_FILE), answers + "\n").context("writing snapshot answers")?;
        Ok(())
    }
}
