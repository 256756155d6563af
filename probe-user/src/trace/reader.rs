//! Reads a trace file record by record, stopping at the first record that
//! is not whole and recording why. It never panics, whatever the bytes: the
//! fuzz target `trace_reader` holds it to that.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::Result;

use super::frame::{self, Damage, DamageReason, Next, RecordType};
use super::record::{decode_json, Record, TraceHeader};
use super::{FORMAT_VERSION, MAGIC, PREAMBLE_LEN};

/// Why a file cannot be read as a trace at all. Each prints as one line
/// naming the file.
#[derive(Debug)]
pub struct TraceError {
    pub source_name: String,
    pub kind: TraceErrorKind,
}

#[derive(Debug)]
pub enum TraceErrorKind {
    Open(std::io::Error),
    NotATrace,
    NewerVersion(u32),
    /// Right magic, but the header record is not whole.
    BadHeader(Damage),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.source_name;
        match &self.kind {
            TraceErrorKind::Open(e) => write!(f, "{name}: cannot open: {e}"),
            TraceErrorKind::NotATrace => write!(f, "{name}: not a reclaimscope trace"),
            TraceErrorKind::NewerVersion(v) => write!(
                f,
                "{name}: trace format version {v} is newer than this reclaimscope supports ({FORMAT_VERSION})"
            ),
            TraceErrorKind::BadHeader(d) => write!(f, "{name}: the trace header is damaged: {d}"),
        }
    }
}

impl std::error::Error for TraceError {}

/// A trace file being read. The header is read by the constructor; the
/// records come from the iterator; [`damage`](Self::damage) says, once the
/// iterator has ended, whether it ended early.
pub struct TraceReader<R> {
    src: R,
    version: u32,
    header: TraceHeader,
    /// Byte offset of the next record.
    offset: u64,
    /// Index of the next record (the header is 0).
    index: u64,
    damage: Option<Damage>,
    done: bool,
}

impl TraceReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let file =
            File::open(path).map_err(|e| TraceError { source_name: name.clone(), kind: TraceErrorKind::Open(e) })?;
        Ok(Self::new(BufReader::with_capacity(256 << 10, file), &name)?)
    }
}

impl<'a> TraceReader<&'a [u8]> {
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Ok(Self::new(bytes, "trace")?)
    }
}

impl<R: Read> TraceReader<R> {
    /// Checks the magic and version and reads the header; `name` goes into
    /// the error messages.
    pub fn new(mut src: R, name: &str) -> Result<Self, TraceError> {
        let err = |kind| TraceError { source_name: name.to_string(), kind };
        let mut preamble = [0u8; PREAMBLE_LEN];
        // A read error this early means the file cannot be read at all.
        let got = frame::read_full(&mut src, &mut preamble).map_err(|e| err(TraceErrorKind::Open(e)))?;
        let (magic, version) = preamble.split_at(MAGIC.len());
        if got < MAGIC.len() || magic != MAGIC {
            return Err(err(TraceErrorKind::NotATrace));
        }
        let header_damage = |reason| Damage { offset: got as u64, index: 0, reason };
        if got < PREAMBLE_LEN {
            return Err(err(TraceErrorKind::BadHeader(header_damage(DamageReason::Truncated))));
        }
        let version = u32::from_le_bytes(version.try_into().unwrap_or_default());
        if version == 0 {
            return Err(err(TraceErrorKind::NotATrace));
        }
        if version > FORMAT_VERSION {
            return Err(err(TraceErrorKind::NewerVersion(version)));
        }
        let (header, len) = match frame::read(&mut src) {
            Next::Record { ty: RecordType::Header, payload, len } => match decode_json(&payload) {
                Ok(h) => (h, len),
                Err(e) => return Err(err(TraceErrorKind::BadHeader(header_damage(DamageReason::BadPayload(e))))),
            },
            Next::Record { .. } => {
                return Err(err(TraceErrorKind::BadHeader(header_damage(DamageReason::BadPayload(
                    "the first record is not a header".into(),
                )))))
            }
            Next::End => return Err(err(TraceErrorKind::BadHeader(header_damage(DamageReason::Truncated)))),
            Next::Damaged(reason) => return Err(err(TraceErrorKind::BadHeader(header_damage(reason)))),
        };
        Ok(TraceReader { src, version, header, offset: PREAMBLE_LEN as u64 + len, index: 1, damage: None, done: false })
    }

    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// The header, to take parts of it out (a replay keeps only what it
    /// needs of a header that may be large).
    pub fn header_mut(&mut self) -> &mut TraceHeader {
        &mut self.header
    }

    /// The format version the file was written with.
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// Where and why reading stopped early; `None` while records remain or
    /// when the file ended on a whole record.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Records read so far, the header included.
    pub fn records_read(&self) -> u64 {
        self.index
    }

    /// Bytes read so far, all of them whole records.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    fn stop(&mut self, reason: DamageReason) -> Option<Record> {
        self.done = true;
        self.damage = Some(Damage { offset: self.offset, index: self.index, reason });
        None
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.done {
            return None;
        }
        match frame::read(&mut self.src) {
            Next::End => {
                self.done = true;
                None
            }
            Next::Damaged(reason) => self.stop(reason),
            Next::Record { ty, payload, len } => match Record::decode(ty, &payload, self.version) {
                Ok(record) => {
                    self.offset += len;
                    self.index += 1;
                    Some(record)
                }
                Err(e) => self.stop(DamageReason::BadPayload(e)),
            },
        }
    }
}
