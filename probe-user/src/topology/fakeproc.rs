//! A hand-made system for tests: a directory that [`Source::at`] reads as
//! `/`, with processes that come, go and open files as a test says.

use super::source::Source;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use tempfile::TempDir;

pub(crate) struct FakeProc {
    pub root: TempDir,
}

impl FakeProc {
    /// An empty /proc, and a mount table with the root filesystem only.
    pub fn new() -> FakeProc {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("proc/self")).unwrap();
        let f = FakeProc { root };
        f.mounts("");
        f
    }

    pub fn source(&self) -> Source {
        Source::at(self.root.path()).unwrap()
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.root.path().join(p)
    }

    /// /proc/self/mountinfo: the root filesystem, then `more` lines.
    pub fn mounts(&self, more: &str) {
        let text = format!("1 0 254:0 / / rw - ext4 /dev/vda rw\n{more}");
        fs::write(self.path("proc/self/mountinfo"), text).unwrap();
    }

    /// Process `pid` started at `start`, with one thread and `fds` open
    /// (fd number, link target).
    pub fn spawn(&self, pid: u32, start: u64, fds: &[(u32, &str)]) {
        let dir = self.path(&format!("proc/{pid}"));
        fs::create_dir_all(dir.join("fd")).unwrap();
        fs::create_dir_all(dir.join(format!("task/{pid}"))).unwrap();
        let stat = format!(
            "{pid} (p{pid}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 100 \
             18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        );
        fs::write(dir.join("stat"), &stat).unwrap();
        fs::write(dir.join(format!("task/{pid}/stat")), &stat).unwrap();
        fs::write(dir.join("comm"), format!("p{pid}\n")).unwrap();
        for &(fd, target) in fds {
            self.open(pid, fd, target);
        }
    }

    /// A file at `rel` (under the fake root) holding `text`.
    pub fn file(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    pub fn open(&self, pid: u32, fd: u32, target: &str) {
        symlink(target, self.path(&format!("proc/{pid}/fd/{fd}"))).unwrap();
    }

    pub fn exit(&self, pid: u32) {
        fs::remove_dir_all(self.path(&format!("proc/{pid}"))).unwrap();
    }

    /// `pid` exits and another process gets its pid. The old directory is
    /// moved away first, so the new one cannot get its inode number back.
    pub fn reuse(&self, pid: u32, start: u64, fds: &[(u32, &str)]) {
        let old = self.path(&format!("proc/{pid}"));
        let gone = self.path("gone");
        fs::rename(&old, &gone).unwrap();
        self.spawn(pid, start, fds);
        fs::remove_dir_all(&gone).unwrap();
    }

    /// The kernel makes /proc/PID's entry again (after dropping it under
    /// memory pressure): a new inode for the same process.
    pub fn relist(&self, pid: u32) {
        let old = self.path(&format!("proc/{pid}"));
        let moved = self.path("moved");
        fs::rename(&old, &moved).unwrap();
        copy_dir(&moved, &old);
        fs::remove_dir_all(&moved).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let kind = e.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&src, &dst);
        } else if kind.is_symlink() {
            symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}
