//! Writes trace files: whole records only, size-bounded rotation, and every
//! file self-contained.
//!
//! A trace holds kernel text addresses, shrinker pointers, command lines and
//! paths, and the agent writes it as root, so the files are the user's
//! private data: created 0600 whatever the umask, never opened through a
//! symbolic link, never anything but a regular file that we own, and rotated
//! with `renameat`/`unlinkat` relative to the directory opened at the start,
//! so that a path component swapped for a symlink later cannot redirect
//! rotation elsewhere.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::frame::{self, RecordType};
use super::record::{Record, StackRecord, SymbolRecord, TopologyRecord, TraceHeader};
use super::{FORMAT_VERSION, MAGIC};

/// Records are gathered into one buffer and written with a single
/// `write_all` once this much is waiting (or on [`TraceWriter::flush`]), so
/// every write(2) carries whole records: a killed agent leaves a file that
/// ends between records, and a busy one makes few syscalls.
const WRITE_AT: usize = 64 << 10;

/// The most files a rotating trace keeps. Rotation renames every kept file
/// once, in the event loop, so their number must stay small enough that a
/// rotation costs milliseconds, not the agent's responsiveness to SIGTERM.
pub const MAX_FILES: usize = 1000;

/// An open trace file.
///
/// Stack and symbol records are remembered, and the writer puts each one
/// again in front of the first event that needs it in every new file after
/// a rotation; the latest topology snapshot is repeated after the header.
/// So any one file, `FILE` or `FILE.N`, can be reported on alone.
pub struct TraceWriter {
    /// The path as given, for messages.
    path: PathBuf,
    /// The directory holding the trace, opened once: every later open,
    /// rename and unlink is relative to it.
    dir: OwnedFd,
    /// The trace's file name inside `dir`.
    name: OsString,
    header: TraceHeader,
    max_size: Option<u64>,
    max_files: usize,
    /// The `n` of every `FILE.n` (1 <= n < max_files) that exists: listed
    /// once at the start, then kept up to date by rotation, so rotating
    /// renames only files that are there.
    rotated: BTreeSet<usize>,
    file: File,
    /// Whole framed records not yet written to `file`.
    pending: Vec<u8>,
    /// Bytes in the current file, `pending` included.
    size: u64,
    /// Bytes of the current file's preamble (magic, version, header, repeated
    /// topology). A file holding only those is not rotated again, so a
    /// record larger than `max_size` still gets written.
    preamble_size: u64,
    /// The latest topology written as a record.
    topology: Option<TopologyRecord>,
    stacks: HashMap<i32, StackRecord>,
    symbols: HashMap<u64, SymbolRecord>,
    /// Which of `stacks` and `symbols` the current file already holds.
    stacks_in_file: HashSet<i32>,
    symbols_in_file: HashSet<u64>,
}

/// Stack and symbol records an event needs in front of it in this file.
#[derive(Default)]
struct Needs {
    bytes: Vec<u8>,
    stack: Option<i32>,
    symbol: Option<u64>,
}

impl TraceWriter {
    /// Checks, without changing anything, that [`create`](Self::create)
    /// may write `path`: call it before the long work that precedes
    /// `create` (loading the probes), so a wrong `-o` is refused at once.
    pub fn check(path: &Path, force: bool) -> Result<()> {
        let (dir, name) = open_dir(path)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        match rfs::openat(&dir, &name, flags, Mode::empty()) {
            Ok(fd) => check_existing(&fd, path, force),
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(open_error(e, path)),
        }
    }

    /// Creates (or replaces) `path` and writes the header. An existing file
    /// is replaced only if it is empty or a trace, unless `force`. With
    /// `max_size`, the file is rotated before it would grow past that many
    /// bytes, keeping at most `max_files` files (at most [`MAX_FILES`]):
    /// `path`, `path.1` (the newest rotated one) ... `path.{max_files-1}`.
    pub fn create(
        path: &Path,
        header: TraceHeader,
        max_size: Option<u64>,
        max_files: usize,
        force: bool,
    ) -> Result<TraceWriter> {
        if !(1..=MAX_FILES).contains(&max_files) {
            bail!("a trace keeps 1 to {MAX_FILES} files, not {max_files}");
        }
        let (dir, name) = open_dir(path)?;
        let file = open_trace(&dir, &name, path, force)?;
        // The new directory entry must outlive a power cut as much as the data.
        sync_dir(&dir, path)?;
        let rotated = rotated_files(&dir, &name, max_files)
            .with_context(|| format!("cannot list the directory of {}", path.display()))?;
        let mut w = TraceWriter {
            path: path.to_path_buf(),
            dir,
            name,
            header,
            max_size,
            max_files,
            rotated,
            file,
            pending: Vec::with_capacity(WRITE_AT * 2),
            size: 0,
            preamble_size: 0,
            topology: None,
            stacks: HashMap::new(),
            symbols: HashMap::new(),
            stacks_in_file: HashSet::new(),
            symbols_in_file: HashSet::new(),
        };
        w.start_file()?;
        w.write_pending()?;
        Ok(w)
    }

    /// Whether a stack record for `id` was written already: the caller need
    /// not symbolize that stack again.
    pub fn has_stack(&self, id: i32) -> bool {
        self.stacks.contains_key(&id)
    }

    /// Whether the latest stack record for `id` holds exactly `frames`
    /// ((address, symbol), innermost first). The kernel gives an id to a
    /// newer stack when one lands in its bucket (BPF_F_REUSE_STACKID), so an
    /// id seen before with other frames needs a new record, which replaces
    /// the older one for the events after it.
    pub fn has_stack_as(&self, id: i32, frames: &[(u64, String)]) -> bool {
        self.stacks.get(&id).is_some_and(|s| {
            s.frames.len() == frames.len()
                && s.frames.iter().zip(frames).all(|(f, (addr, symbol))| f.addr == *addr && f.symbol == *symbol)
        })
    }

    /// Whether a symbol record for `addr` was written already.
    pub fn has_symbol(&self, addr: u64) -> bool {
        self.symbols.contains_key(&addr)
    }

    /// Appends one record. Write a stack's (or shrinker callback's) record
    /// before the first event that uses it; the writer repeats it in later
    /// files by itself.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        match record {
            Record::Stack(s) if self.stacks.get(&s.id) == Some(s) && self.stacks_in_file.contains(&s.id) => {
                return Ok(())
            }
            Record::Symbol(s) if self.symbols.get(&s.addr) == Some(s) && self.symbols_in_file.contains(&s.addr) => {
                return Ok(())
            }
            _ => {}
        }
        let mut framed = Vec::new();
        frame::encode(&mut framed, record.record_type(), &record.payload()?)?;
        let mut needs = self.needs(record)?;
        if self.must_rotate(needs.bytes.len() + framed.len()) {
            self.rotate()?;
            needs = self.needs(record)?;
        }
        self.stacks_in_file.extend(needs.stack);
        self.symbols_in_file.extend(needs.symbol);
        match record {
            Record::Stack(s) => {
                self.stacks.insert(s.id, s.clone());
                self.stacks_in_file.insert(s.id);
            }
            Record::Symbol(s) => {
                self.symbols.insert(s.addr, s.clone());
                self.symbols_in_file.insert(s.addr);
            }
            Record::Topology(t) => self.topology = Some(t.clone()),
            Record::Event(_) | Record::Finding(_) => {}
        }
        self.append(&needs.bytes);
        self.append(&framed);
        if self.pending.len() >= WRITE_AT {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes every record given so far to the file (to the page cache: it
    /// survives the agent, not a power cut). Call it at every summary, and
    /// on SIGTERM/SIGINT before exiting.
    pub fn flush(&mut self) -> Result<()> {
        self.write_pending()?;
        self.file.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Writes every record given so far and fdatasyncs the file, so they
    /// survive a power cut. The machine a finding warns about may well be
    /// reset next, so call it after each batch of findings; not after every
    /// event, which would cost a disk flush per ring-buffer wakeup.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync_data().with_context(|| format!("cannot sync {}", self.path.display()))
    }

    /// Flushes and syncs the file to disk.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.file.sync_all().with_context(|| format!("cannot sync {}", self.path.display()))
    }

    fn append(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
    }

    fn needs(&self, record: &Record) -> Result<Needs> {
        let mut needs = Needs::default();
        let Record::Event(e) = record else {
            return Ok(needs);
        };
        if let Some(s) = e.stack_id().filter(|id| !self.stacks_in_file.contains(id)).and_then(|id| self.stacks.get(&id))
        {
            frame::encode(&mut needs.bytes, RecordType::Stack, &Record::Stack(s.clone()).payload()?)?;
            needs.stack = Some(s.id);
        }
        if let Some(s) = e.scan_fn().filter(|a| !self.symbols_in_file.contains(a)).and_then(|a| self.symbols.get(&a)) {
            frame::encode(&mut needs.bytes, RecordType::Symbol, &Record::Symbol(s.clone()).payload()?)?;
            needs.symbol = Some(s.addr);
        }
        Ok(needs)
    }

    fn must_rotate(&self, more: usize) -> bool {
        self.max_size.is_some_and(|max| self.size + more as u64 > max && self.size > self.preamble_size)
    }

    /// Puts the preamble of a new file in `pending`.
    fn start_file(&mut self) -> Result<()> {
        self.stacks_in_file.clear();
        self.symbols_in_file.clear();
        self.size = 0;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let header = serde_json::to_vec(&self.header).context("cannot encode the trace header")?;
        frame::encode(&mut out, RecordType::Header, &header)?;
        if let Some(t) = &self.topology {
            frame::encode(&mut out, RecordType::Topology, &Record::Topology(t.clone()).payload()?)?;
        }
        self.append(&out);
        self.preamble_size = self.size;
        Ok(())
    }

    /// Closes the current file as `FILE.1`, shifting older ones up and
    /// dropping the oldest, and starts a new `FILE`. Every step names
    /// entries of the directory opened at the start.
    fn rotate(&mut self) -> Result<()> {
        self.write_pending()?;
        self.file.sync_data().with_context(|| format!("cannot sync {}", self.path.display()))?;
        let kept = self.max_files - 1;
        if kept > 0 {
            for (n, to) in shifts(&self.rotated, kept) {
                match to {
                    Some(to) => self.rename_if_present(&numbered(&self.name, n), &numbered(&self.name, to))?,
                    None => self.remove_if_present(&numbered(&self.name, n))?,
                }
            }
            self.rename_if_present(&self.name.clone(), &numbered(&self.name, 1))?;
            self.rotated = self.rotated.iter().map(|n| n + 1).filter(|n| *n <= kept).collect();
            self.rotated.insert(1);
        }
        // What is at FILE now is our own trace (one file kept) or nothing.
        self.file = open_trace(&self.dir, &self.name, &self.path, false)?;
        sync_dir(&self.dir, &self.path)?;
        self.start_file()
    }

    fn remove_if_present(&self, name: &OsStr) -> Result<()> {
        match rfs::unlinkat(&self.dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.shown(name))),
        }
    }

    fn rename_if_present(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        match rfs::renameat(&self.dir, from, &self.dir, to) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot rename {} to {}", self.shown(from), self.shown(to))),
        }
    }

    /// `name`, a file in the trace's directory, as the user named that directory.
    fn shown(&self, name: &OsStr) -> String {
        self.path.with_file_name(name).display().to_string()
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.pending);
        // After a failed write the file's tail is unknown; never write the
        // same records twice.
        self.pending.clear();
        result.with_context(|| format!("cannot write {}", self.path.display()))
    }
}

impl Drop for TraceWriter {
    /// An agent that returns without [`finish`](TraceWriter::finish) (an
    /// error path) still leaves every whole record it was given.
    fn drop(&mut self) {
        let _ = self.write_pending();
    }
}

/// Opens the directory that will hold the trace and splits off its file name.
fn open_dir(path: &Path) -> Result<(OwnedFd, OsString)> {
    let name = path
        .file_name()
        .filter(|_| !path.as_os_str().as_encoded_bytes().ends_with(b"/"))
        .with_context(|| format!("trace path {} does not name a file", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fd = rfs::openat(CWD, dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("cannot open directory {} for the trace", dir.display()))?;
    Ok((fd, name.to_os_string()))
}

/// Creates (or truncates) `name` in `dir` for writing, mode 0600.
///
/// O_NOFOLLOW refuses a symlink in the last component, and O_NONBLOCK keeps
/// a FIFO without a reader from hanging the open; [`check_existing`] then
/// refuses what must not be replaced before a byte is truncated or written.
fn open_trace(dir: &OwnedFd, name: &OsStr, path: &Path, force: bool) -> Result<File> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = rfs::openat(dir, name, flags, Mode::RUSR | Mode::WUSR).map_err(|e| open_error(e, path))?;
    check_existing(&fd, path, force)?;
    let shown = path.display();
    // An existing file keeps its old mode through O_CREAT: make it private too.
    rfs::fchmod(&fd, Mode::RUSR | Mode::WUSR).with_context(|| format!("cannot make {shown} private (0600)"))?;
    rfs::ftruncate(&fd, 0).with_context(|| format!("cannot truncate {shown}"))?;
    rfs::fcntl_setfl(&fd, OFlags::empty()).with_context(|| format!("cannot set {shown} to blocking writes"))?;
    Ok(File::from(fd))
}

fn open_error(e: Errno, path: &Path) -> anyhow::Error {
    let shown = path.display();
    match e {
        Errno::LOOP => anyhow!("{shown} is a symbolic link; refusing to write a trace through it"),
        Errno::NXIO => anyhow!("{shown} is not a regular file (a FIFO); refusing to write a trace into it"),
        Errno::ISDIR => anyhow!("{shown} is a directory, not a trace file"),
        e => anyhow!("cannot create trace file {shown}: {e}"),
    }
}

/// Refuses to replace `fd` (open on the trace's path) unless it is a plain
/// regular file of ours that no other path shares, and, without `force`,
/// empty or a reclaimscope trace: `-o /etc/fstab` is a typo, not a request.
fn check_existing(fd: &OwnedFd, path: &Path, force: bool) -> Result<()> {
    let shown = path.display();
    let st = rfs::fstat(fd).with_context(|| format!("cannot stat {shown}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        bail!("{shown} is not a regular file; refusing to write a trace into it");
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if st.st_uid != euid {
        bail!("{shown} belongs to uid {}, not to us (uid {euid}); remove it or choose another path", st.st_uid);
    }
    if st.st_nlink > 1 {
        bail!("{shown} has {} hard links; refusing to overwrite a file that other paths share", st.st_nlink);
    }
    if st.st_size > 0 && !force {
        let mut magic = [0u8; MAGIC.len()];
        let got = rustix::io::pread(fd, &mut magic, 0).with_context(|| format!("cannot read {shown}"))?;
        if got < MAGIC.len() || magic != MAGIC {
            bail!("{shown} exists and is not a reclaimscope trace; refusing to overwrite it (--force would)");
        }
    }
    Ok(())
}

/// The `n` of every `FILE.n` in `dir` that a trace of `max_files` files
/// would rotate (1 <= n < max_files).
fn rotated_files(dir: &OwnedFd, name: &OsStr, max_files: usize) -> Result<BTreeSet<usize>> {
    let mut prefix = name.as_encoded_bytes().to_vec();
    prefix.push(b'.');
    let mut found = BTreeSet::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes().strip_prefix(&prefix[..]).and_then(|n| std::str::from_utf8(n).ok());
        // "FILE.01" is not a name rotation makes.
        if let Some(n) = n.filter(|n| !n.starts_with('0')).and_then(|n| n.parse::<usize>().ok()) {
            if n < max_files {
                found.insert(n);
            }
        }
    }
    Ok(found)
}

/// The moves that make room for a new `FILE.1`, highest first: each
/// present `FILE.n` goes to `FILE.n+1`, and the one at `kept` (the oldest
/// that may stay) is removed (`None`). Only files that exist are touched.
fn shifts(present: &BTreeSet<usize>, kept: usize) -> Vec<(usize, Option<usize>)> {
    present.iter().rev().filter(|n| **n <= kept).map(|&n| (n, Some(n + 1).filter(|to| *to <= kept))).collect()
}

/// Makes the directory's entries (a new file, renames) durable.
fn sync_dir(dir: &OwnedFd, shown: &Path) -> Result<()> {
    rfs::fsync(dir).with_context(|| format!("cannot sync the directory of {}", shown.display()))
}

/// `FILE.n`
fn numbered(name: &OsStr, n: usize) -> OsString {
    let mut s = name.to_os_string();
    s.push(format!(".{n}"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_moves_only_the_files_that_exist() {
        let present: BTreeSet<usize> = [1, 2, 5].into();
        assert_eq!(shifts(&present, MAX_FILES - 1), [(5, Some(6)), (2, Some(3)), (1, Some(2))]);
        assert_eq!(shifts(&present, 2), [(2, None), (1, Some(2))]);
        assert_eq!(shifts(&BTreeSet::new(), MAX_FILES - 1), []);
    }
}
