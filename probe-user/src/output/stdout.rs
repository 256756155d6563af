//! Writing to stdout when the reader may go away (`reclaimscope watch --json
//! | head -1`).
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE, and
//! `println!` turns that into a panic. Commands write through here instead:
//! a closed stdout becomes [`StdoutClosed`], which unwinds the command like
//! any error (the agent stops its loop, detaches its probes, finishes its
//! trace), and `main` then exits quietly with [`EXIT_STDOUT_CLOSED`].

use std::{
    fmt,
    io::{self, Write},
};

use anyhow::Result;

use super::terminal;

/// 128 + SIGPIPE: the status a shell reports for a program that SIGPIPE
/// ended, so `set -o pipefail` and service managers see what they would
/// see from any other tool whose reader went away.
pub const EXIT_STDOUT_CLOSED: u8 = 141;

/// The reader of stdout closed it (EPIPE).
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `text` as it is.
pub fn write(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(failed)
}

/// Writes `value` as pretty JSON and a newline, streamed (a report can be
/// bigger than anything worth holding) and terminal-safe.
pub fn json_pretty(value: &impl serde::Serialize) -> Result<()> {
    let mut out = terminal::Json::new(io::BufWriter::with_capacity(64 << 10, io::stdout().lock()));
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(failed)
}

fn failed(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("cannot write to stdout")
    }
}

/// Writes `text` and a newline.
pub fn line(text: impl fmt::Display) -> Result<()> {
    write(&format!("{text}\n"))
}

/// Whether `e` is, or was caused by, a closed stdout.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}
