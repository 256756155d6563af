//! The file `report` reads: a regular file, opened so that nothing at the
//! path can make it wait, and told apart as a trace or a text capture by
//! its first bytes.

use std::{fs::File, os::unix::fs::FileExt, path::Path};

use anyhow::{anyhow, bail, Result};
use rustix::fs::{self as rfs, FileType, Mode, OFlags, CWD};

use crate::trace::{self, MAGIC};

pub struct Input {
    pub file: File,
    /// The path as given, for messages.
    pub name: String,
    /// Whether it starts with a trace's magic bytes.
    pub is_trace: bool,
}

/// Opens `path` for reading. O_NONBLOCK makes opening a FIFO return at once
/// instead of waiting for a writer; anything but a regular file is then
/// refused, since a FIFO or a device would be read forever.
pub fn open(path: &Path) -> Result<Input> {
    let name = path.display().to_string();
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rfs::openat(CWD, path, flags, Mode::empty()).map_err(|e| anyhow!("{name}: cannot open: {e}"))?;
    let st = rfs::fstat(&fd).map_err(|e| anyhow!("{name}: cannot stat: {e}"))?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO"),
        FileType::Socket => Some("a socket"),
        FileType::CharacterDevice => Some("a character device"),
        FileType::BlockDevice => Some("a block device"),
        _ => Some("of an unknown type"),
    };
    if let Some(kind) = kind {
        bail!("{name}: not a regular file ({kind}); report reads trace files and text captures");
    }
    let file = File::from(fd);
    let mut head = [0u8; MAGIC.len()];
    let got = file.read_at(&mut head, 0).map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
    Ok(Input { file, name, is_trace: trace::is_trace(&head[..got]) })
}
