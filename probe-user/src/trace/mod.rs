//! Postmortem trace files: what `reclaimscope record` writes and
//! `reclaimscope report` reads, on this machine or another one.
//!
//! docs/trace-format.md describes the bytes. The choices behind them:
//! - Every record is framed with its length and a CRC32, so a file cut short
//!   by a crash or a power loss still reads up to its last whole record, and
//!   the reader can say where it stopped and why ([`Damage`]).
//! - Lengths are bounded ([`MAX_PAYLOAD`]), so a damaged length field never
//!   makes the reader allocate more than the file holds.
//! - Every file is self-contained: it starts with the header, and the writer
//!   puts the symbols of each stack and shrinker callback before the first
//!   event that uses them, again in every rotated file. A file can be read
//!   alone, on a machine with another kernel.
//! - Events are stored as the kernel wrote them, so the report replays them
//!   through the same decoder and detection engine as the live agent.

mod clock;
mod frame;
mod legacy;
mod reader;
mod record;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_files;

pub use clock::{monotonic_to_unix_ns, OffsetEstimate};
pub use frame::{Damage, DamageReason, MAX_PAYLOAD};
pub use reader::{TraceError, TraceErrorKind, TraceReader};
pub use record::{
    json_cost, EventRecord, Frame, Opaque, Record, StackRecord, SymbolRecord, TopologyRecord, TraceHeader, MAX_FRAMES,
    MAX_JSON_COST, MAX_SYMBOL,
};
pub use writer::{TraceWriter, MAX_FILES};

/// The first eight bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"RCLMSCP\0";

/// Whether a file starting with `head` is a trace (by its magic, whatever follows).
pub fn is_trace(head: &[u8]) -> bool {
    head.starts_with(&MAGIC)
}

/// The format this build writes, and the newest it reads. Bump it for any
/// change an older reader would misread; adding a record type counts.
/// Format 1's findings held words (trace/legacy.rs reads them); format 2's
/// hold raw values.
pub const FORMAT_VERSION: u32 = 2;

/// Bytes before the first record: the magic and the format version.
const PREAMBLE_LEN: usize = MAGIC.len() + 4;
