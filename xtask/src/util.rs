//! Running commands with the workspace's environment.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// PATH with cargo's bin directory (bpf-linker, cargo-fuzz) in front.
pub fn path_env() -> String {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo"));
    format!("{}:{}", home.join("bin").display(), std::env::var("PATH").unwrap_or_default())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("PATH", path_env()).current_dir(root());
    c
}

pub fn exec(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    testbed::is_root()
}

/// Stops a `reclaimscope` child the way a user would (SIGINT), and fails if
/// it does not exit cleanly within `timeout`.
pub fn interrupt(mut child: Child, timeout: Duration) -> Result<()> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    while t.elapsed() < timeout {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("reclaimscope exited with {status}");
            }
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    child.kill()?;
    child.wait()?;
    bail!("reclaimscope did not exit within {timeout:?} of SIGINT")
}

/// Replaces what lies between `begin` and `end` in the document `doc`
/// (relative to the workspace) with `section`; returns the document's path.
pub fn write_section(doc: &str, begin: &str, end: &str, section: &str) -> Result<PathBuf> {
    let path = root().join(doc);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        bail!("{} has no markers {begin} ... {end}", path.display());
    };
    let new = format!("{}{begin}\n{section}{}", &text[..b], &text[e..]);
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
