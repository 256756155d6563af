//! Trace files are the user's private data, written as root: mode 0600
//! whatever the umask, never through a symlink or into anything but a
//! regular file of ours, and rotated inside the directory they started in.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::tests::{header, reclaim};
use super::*;

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn create_err(path: &Path) -> String {
    let err = TraceWriter::create(path, header(), None, 1, false).err().expect("creating the trace must fail");
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

/// Writes enough events to rotate a 4 KiB file several times.
fn fill(w: &mut TraceWriter, from: u64) {
    for i in from..from + 200 {
        w.write(&reclaim(i, -1)).unwrap();
    }
}

#[test]
fn traces_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.trace");
    let old = dir.path().join("old.trace");
    fs::write(&old, b"an older, world-readable file").unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: umask only swaps the process's file-creation mask.
    let saved = unsafe { libc::umask(0o022) };
    let made = TraceWriter::create(&fresh, header(), Some(4 << 10), 3, false);
    // SAFETY: as above, restoring the mask found.
    unsafe { libc::umask(saved) };
    let mut w = made.unwrap();
    fill(&mut w, 0);
    w.finish().unwrap();
    for name in ["fresh.trace", "fresh.trace.1", "fresh.trace.2"] {
        assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
    }
    TraceWriter::create(&old, header(), None, 1, true).unwrap().finish().unwrap();
    assert_eq!(mode(&old), 0o600, "an existing file keeps its old mode");
}

#[test]
fn a_symlink_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    fs::write(&target, b"keep me").unwrap();
    let link = dir.path().join("x.trace");
    symlink(&target, &link).unwrap();
    let msg = create_err(&link);
    assert!(msg.contains("symbolic link"), "{msg}");
    assert_eq!(fs::read(&target).unwrap(), b"keep me");
    // A dangling link must not create its target either.
    let dangling = dir.path().join("d.trace");
    symlink(dir.path().join("created-through-link"), &dangling).unwrap();
    assert!(create_err(&dangling).contains("symbolic link"));
    assert!(!dir.path().join("created-through-link").exists());
}

#[test]
fn only_regular_files_of_ours_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.trace");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let t = Instant::now();
    assert!(create_err(&fifo).contains("not a regular file"));
    assert!(t.elapsed() < Duration::from_secs(5), "opening a FIFO without a reader must not hang");

    let sub = dir.path().join("sub.trace");
    fs::create_dir(&sub).unwrap();
    assert!(create_err(&sub).contains("is a directory"));

    let shared = dir.path().join("shared");
    fs::write(&shared, b"data another path shares").unwrap();
    let hard = dir.path().join("hard.trace");
    fs::hard_link(&shared, &hard).unwrap();
    assert!(create_err(&hard).contains("hard links"));
    assert_eq!(fs::read(&shared).unwrap(), b"data another path shares");

    let devnull = Path::new("/dev/null");
    assert!(create_err(devnull).contains("not a regular file"));
    assert!(create_err(&dir.path().join("")).contains("does not name a file"));
}

#[test]
fn a_file_of_another_user_is_refused() {
    // Root makes a file owned by another user.
    testbed::require_root("a_file_of_another_user_is_refused");
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.trace");
    fs::write(&theirs, b"theirs").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    assert!(create_err(&theirs).contains("belongs to uid 65534"));
    assert_eq!(fs::read(&theirs).unwrap(), b"theirs");
}

#[test]
fn rotation_stays_in_the_directory_it_started_in() {
    let top = tempfile::tempdir().unwrap();
    let logs = top.path().join("logs");
    let elsewhere = top.path().join("elsewhere");
    fs::create_dir(&logs).unwrap();
    fs::create_dir(&elsewhere).unwrap();
    let mut w = TraceWriter::create(&logs.join("r.trace"), header(), Some(4 << 10), 3, false).unwrap();
    fill(&mut w, 0);
    // The directory's path now leads somewhere else: rotation must not follow.
    let moved = top.path().join("logs.moved");
    fs::rename(&logs, &moved).unwrap();
    symlink(&elsewhere, &logs).unwrap();
    fill(&mut w, 200);
    w.finish().unwrap();
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "rotation wrote through the swapped path");
    let mut names: Vec<String> =
        fs::read_dir(&moved).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["r.trace", "r.trace.1", "r.trace.2"]);
    let last: Vec<Record> = TraceReader::open(&moved.join("r.trace")).unwrap().collect();
    assert_eq!(last.last(), Some(&reclaim(399, -1)));
}
