//! Writes trace files: whole records only, size-bounded rotation, and every
//! file self-contained.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::frame::{self, RecordType};
use super::record::{Record, StackRecord, SymbolRecord, TraceHeader};
use super::{FORMAT_VERSION, MAGIC};

/// Records are gathered into one buffer and written with a single
/// `write_all` once this much is waiting (or on [`TraceWriter::flush`]), so
/// every write(2) carries whole records: a killed agent leaves a file that
/// ends between records, and a busy one makes few syscalls.
const WRITE_AT: usize = 64 << 10;

/// An open trace file.
///
/// Stack and symbol records are remembered, and the writer puts each one
/// again in front of the first event that needs it in every new file after
/// a rotation; the latest topology snapshot is repeated after the header.
/// So any one file, `FILE` or `FILE.N`, can be reported on alone.
pub struct TraceWriter {
    path: PathBuf,
    header: TraceHeader,
    max_size: Option<u64>,
    max_files: usize,
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
    topology: Option<Value>,
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
    /// Creates (or truncates) `path` and writes the header. With `max_size`,
    /// the file is rotated before it would grow past that many bytes,
    /// keeping at most `max_files` files: `path`, `path.1` (the newest
    /// rotated one) ... `path.{max_files-1}`.
    pub fn create(path: &Path, header: TraceHeader, max_size: Option<u64>, max_files: usize) -> Result<TraceWriter> {
        if max_files == 0 {
            bail!("a trace needs at least one file (max_files is 0)");
        }
        let mut w = TraceWriter {
            path: path.to_path_buf(),
            header,
            max_size,
            max_files,
            file: create_file(path)?,
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

    /// Writes every record given so far to the file. Call it after each
    /// batch of events, and on SIGTERM/SIGINT before exiting.
    pub fn flush(&mut self) -> Result<()> {
        self.write_pending()?;
        self.file.flush().with_context(|| format!("cannot write {}", self.path.display()))
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
    /// dropping the oldest, and starts a new `FILE`.
    fn rotate(&mut self) -> Result<()> {
        self.write_pending()?;
        self.file.sync_data().with_context(|| format!("cannot sync {}", self.path.display()))?;
        let kept = self.max_files - 1;
        if kept > 0 {
            remove_if_present(&numbered(&self.path, kept))?;
            for n in (1..kept).rev() {
                rename_if_present(&numbered(&self.path, n), &numbered(&self.path, n + 1))?;
            }
            rename_if_present(&self.path, &numbered(&self.path, 1))?;
        }
        self.file = create_file(&self.path)?;
        self.start_file()
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

fn create_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("cannot create trace file {}", path.display()))
}

/// `FILE.n`
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
        }
        _ => Ok(()),
    }
}
