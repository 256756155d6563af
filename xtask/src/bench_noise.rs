//! The unrelated load of the bench's pressure condition: what a container
//! host always has. A memory cgroup kept at its limit by a writer (so some
//! task is always in memcg reclaim), and an XFS that is not stacked on any
//! servicer, busy with small writes (so every XFS lock path and every
//! buffered write runs all the time). Neither has anything to do with the
//! stack under test: a tool should pay nothing for them.
//!
//! The XFS sits on zram0 when the kernel has an unused one (a block device,
//! no servicer below it), else on a loop device over a file of the root
//! filesystem (its kernel worker, protected by PF_MEMALLOC_NOIO, is then a
//! servicer the agent knows about). Everything is torn down on drop, with
//! deadlines, in reverse order.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use testbed::Memcg;

const ZRAM: &str = "/sys/block/zram0";
/// The memcg's limit: small enough that its writer reclaims throughout.
const MEMCG_MB: u64 = 64;

/// Where the unrelated XFS lives.
enum XfsDevice {
    Zram,
    Loop { dev: String, image: PathBuf },
}

pub struct Noise {
    dir: PathBuf,
    xfs: Option<XfsDevice>,
    mounted: bool,
    children: Vec<Child>,
    memcg: Option<Memcg>,
}

/// A shell loop, in its own process group so it dies whole.
fn looping(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    c
}

fn sh(cmd: &mut Command) -> Result<String> {
    testbed::run(cmd, Duration::from_secs(60))
}

impl Noise {
    pub fn start() -> Result<Noise> {
        let dir = PathBuf::from(testbed::WORK_ROOT).join(format!("bench-noise-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut n = Noise { dir, xfs: None, mounted: false, children: Vec::new(), memcg: None };
        n.start_xfs().context("the unrelated XFS")?;
        n.start_memcg().context("the unrelated memcg")?;
        // Let both reach their steady state before anything is measured.
        std::thread::sleep(Duration::from_secs(5));
        Ok(n)
    }

    /// What the pressure condition's XFS sits on, for the report.
    pub fn describe(&self) -> &'static str {
        match self.xfs {
            Some(XfsDevice::Zram) => "XFS on zram0",
            _ => "XFS on a loop device over a root-fs file",
        }
    }

    fn start_xfs(&mut self) -> Result<()> {
        let zram_free = std::fs::read_to_string(format!("{ZRAM}/disksize")).is_ok_and(|s| s.trim() == "0");
        let dev = if zram_free {
            std::fs::write(format!("{ZRAM}/disksize"), "1G").context("sizing zram0")?;
            self.xfs = Some(XfsDevice::Zram);
            "/dev/zram0".to_owned()
        } else {
            let image = self.dir.join("xfs.img");
            sh(Command::new("truncate").args(["-s", "1G"]).arg(&image))?;
            let dev = sh(Command::new("losetup").args(["-f", "--show"]).arg(&image))?.trim().to_owned();
            self.xfs = Some(XfsDevice::Loop { dev: dev.clone(), image });
            dev
        };
        sh(Command::new("mkfs.xfs").args(["-q", "-f", &dev]))?;
        let mnt = self.dir.join("xfs");
        std::fs::create_dir_all(&mnt)?;
        sh(Command::new("mount").arg(&dev).arg(&mnt))?;
        self.mounted = true;
        // Small buffered writes, each an XFS write with its inode locks;
        // the file is rewritten so the filesystem never fills.
        let f = mnt.join("busy");
        let script =
            format!("while :; do dd if=/dev/zero of={} bs=4k count=4096 conv=notrunc status=none; done", f.display());
        self.children.push(looping(&script).spawn()?);
        Ok(())
    }

    fn start_memcg(&mut self) -> Result<()> {
        let memcg = Memcg::create("bench-noise", MEMCG_MB)?;
        let f = self.dir.join("memcg-writer");
        let script = format!("while :; do dd if=/dev/zero of={} bs=1M count=256 status=none; done", f.display());
        let mut c = looping(&script);
        memcg.enter_on_spawn(&mut c)?;
        self.children.push(c.spawn()?);
        self.memcg = Some(memcg);
        Ok(())
    }

    /// Memory-cgroup reclaims so far (memory.events "max" or v1's failcnt),
    /// to show the pressure was real.
    pub fn reclaims(&self) -> u64 {
        self.memcg.as_ref().map_or(0, |m| m.pressure().limit_hits)
    }
}

fn kill_group(c: &mut Child) {
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
    let _ = c.wait();
}

impl Drop for Noise {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill_group(c);
        }
        if let Some(m) = self.memcg.take() {
            if let Err(e) = m.remove() {
                eprintln!("bench: cannot remove the noise memcg: {e:#}");
            }
        }
        let mnt = self.dir.join("xfs");
        if self.mounted {
            let _ = sh(Command::new("umount").arg("-l").arg(&mnt));
        }
        match self.xfs.take() {
            Some(XfsDevice::Zram) => {
                let _ = std::fs::write(format!("{ZRAM}/reset"), "1");
            }
            Some(XfsDevice::Loop { dev, image }) => {
                let _ = sh(Command::new("losetup").args(["-d", &dev]));
                let _ = std::fs::remove_file(image);
            }
            None => {}
        }
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}
