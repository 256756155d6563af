//! Machine-wide memory pressure: a child that takes all but a little of
//! the memory available, so that tasks outside any small memory cgroup
//! (kernel threads above all: LIO's, knfsd's) have to reclaim. Kernel
//! threads charge no memory cgroup, so a memcg limit never makes them
//! reclaim; only the machine running short does.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Read;
use std::process::{Child, Command, Stdio};

/// The memory hog; killed on drop.
pub struct Hog {
    child: Child,
    pub mb: u64,
}

/// MemAvailable from /proc/meminfo, in MiB.
fn available_mb() -> Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemAvailable in /proc/meminfo")?;
    Ok(kb / 1024)
}

impl Hog {
    /// Takes all of the available memory but `leave_mb`, touching every
    /// page, and returns once it holds it. The hog asks the OOM killer to
    /// pick it first (oom_score_adj 1000), so a miscount kills the hog and
    /// not the test.
    pub fn start(leave_mb: u64) -> Result<Hog> {
        let mb = available_mb()?.saturating_sub(leave_mb);
        if mb < 64 {
            bail!("only {} MiB available: no room to press on", mb + leave_mb);
        }
        let script = format!(
            "import sys, time\n\
             open('/proc/self/oom_score_adj', 'w').write('1000')\n\
             a = bytearray({mb} << 20)\n\
             for i in range(0, len(a), 4096): a[i] = 1\n\
             print('held', flush=True)\n\
             time.sleep(3600)\n"
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the memory hog (python3)")?;
        // It prints once it holds the memory, or dies (EOF).
        let mut buf = [0u8; 5];
        let held = child.stdout.take().is_some_and(|mut out| out.read_exact(&mut buf).is_ok() && &buf == b"held\n");
        if !held {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the memory hog did not take {mb} MiB (killed by the OOM killer?)");
        }
        Ok(Hog { child, mb })
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
