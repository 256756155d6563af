//! Record framing: `u32 length | u32 crc32 | u8 type | payload`, integers
//! little-endian. The length counts the payload; the CRC32 covers the type
//! byte and the payload, so a flipped type byte is caught like any other.

use std::fmt;
use std::io::{self, Read};

use anyhow::{bail, Result};

/// The largest payload a record may have. The biggest real record, a stack of
/// 127 frames with long symbol names, is a few kilobytes; anything near this
/// bound is garbage, and the bound keeps the reader's allocations small.
pub const MAX_PAYLOAD: u32 = 16 << 20;

/// Length, checksum and type.
pub(crate) const FRAME_HEAD_LEN: usize = 9;

/// Record type bytes. Part of the file format: never renumber, never reuse.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordType {
    Header = 1,
    Event = 2,
    Stack = 3,
    Finding = 4,
    Topology = 5,
    Symbol = 6,
}

impl RecordType {
    fn name(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Event => "event",
            Self::Stack => "stack",
            Self::Finding => "finding",
            Self::Topology => "topology",
            Self::Symbol => "symbol",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Header,
            2 => Self::Event,
            3 => Self::Stack,
            4 => Self::Finding,
            5 => Self::Topology,
            6 => Self::Symbol,
            _ => return None,
        })
    }
}

fn checksum(ty: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[ty]);
    h.update(payload);
    h.finalize()
}

/// Appends one whole framed record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, ty: RecordType, payload: &[u8]) -> Result<()> {
    let len = match u32::try_from(payload.len()) {
        Ok(len) if len <= MAX_PAYLOAD => len,
        _ => {
            bail!("{} record of {} bytes exceeds the {} MiB record limit", ty.name(), payload.len(), MAX_PAYLOAD >> 20)
        }
    };
    out.reserve(FRAME_HEAD_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(ty as u8, payload).to_le_bytes());
    out.push(ty as u8);
    out.extend_from_slice(payload);
    Ok(())
}

/// Why the reader stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DamageReason {
    /// The file ends inside a record: a crash or power loss while writing.
    Truncated,
    /// The record's bytes do not match its checksum: corruption.
    ChecksumMismatch,
    /// The length field is beyond [`MAX_PAYLOAD`]: corruption.
    BadLength(u32),
    /// A whole, checksummed record of a type this format version lacks.
    UnknownType(u8),
    /// A whole, checksummed record whose payload does not decode.
    BadPayload(String),
    /// The file could not be read further.
    Io(String),
}

impl fmt::Display for DamageReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated"),
            Self::ChecksumMismatch => f.write_str("checksum mismatch"),
            Self::BadLength(n) => {
                write!(f, "bad length {n} (the limit is {} MiB)", MAX_PAYLOAD >> 20)
            }
            Self::UnknownType(t) => write!(f, "unknown record type {t}"),
            Self::BadPayload(e) => write!(f, "bad payload: {e}"),
            Self::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

/// Where and why reading stopped. Everything before `offset` was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first record that could not be read.
    pub offset: u64,
    /// Its index: the header is record 0.
    pub index: u64,
    pub reason: DamageReason,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stopped at byte {} (record {}): {}", self.offset, self.index, self.reason)
    }
}

/// One step of reading the record stream.
pub(crate) enum Next {
    /// The file ends cleanly between records.
    End,
    /// A whole record with a good checksum; `len` is its framed size.
    Record {
        ty: RecordType,
        payload: Vec<u8>,
        len: u64,
    },
    Damaged(DamageReason),
}

/// Reads until `buf` is full or the input ends; returns how much was read.
pub(crate) fn read_full<R: Read>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads the next framed record.
pub(crate) fn read<R: Read>(src: &mut R) -> Next {
    let mut head = [0u8; FRAME_HEAD_LEN];
    match read_full(src, &mut head) {
        Ok(0) => return Next::End,
        Ok(n) if n < FRAME_HEAD_LEN => return Next::Damaged(DamageReason::Truncated),
        Ok(_) => {}
        Err(e) => return Next::Damaged(DamageReason::Io(e.to_string())),
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3, ty] = head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len > MAX_PAYLOAD {
        return Next::Damaged(DamageReason::BadLength(len));
    }
    // take() + read_to_end() grows the buffer with the bytes really there,
    // so a length pointing past the end of a short file costs nothing.
    let mut payload = Vec::new();
    match src.by_ref().take(u64::from(len)).read_to_end(&mut payload) {
        Ok(n) if n < len as usize => return Next::Damaged(DamageReason::Truncated),
        Ok(_) => {}
        Err(e) => return Next::Damaged(DamageReason::Io(e.to_string())),
    }
    if checksum(ty, &payload) != crc {
        return Next::Damaged(DamageReason::ChecksumMismatch);
    }
    match RecordType::from_u8(ty) {
        Some(ty) => Next::Record { ty, payload, len: (FRAME_HEAD_LEN as u64) + u64::from(len) },
        None => Next::Damaged(DamageReason::UnknownType(ty)),
    }
}
