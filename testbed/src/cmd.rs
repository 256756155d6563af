//! Running external commands (mount, losetup, mkfs...) so that a wedged
//! storage stack can never hang the caller: every command has a deadline.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Run a command with a timeout (kill on expiry); Err with the command line
/// and stderr on failure. The child gets its own process group so that
/// helpers it spawns die with it.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let line = command_line(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("cannot start `{line}`"))?;
    // Pipes are drained by threads: a chatty child must not block on a full pipe.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let Some(status) = wait_timeout(&mut child, timeout)? else {
        // SAFETY: plain kill(2) on the child's own process group.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let reaped = wait_timeout(&mut child, Duration::from_secs(5))?.is_some();
        bail!(
            "`{line}` timed out after {timeout:?} and was killed{}",
            if reaped { "" } else { " (still unkillable: stuck in the kernel)" }
        );
    };
    // A grandchild may keep the pipes open; do not wait for it.
    let stdout = out.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let stderr = err.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    if !status.success() {
        // Some tools (targetcli) say why on stdout.
        let why = if stderr.trim().is_empty() { stdout.trim() } else { stderr.trim() };
        bail!("`{line}` failed ({status}): {why}");
    }
    Ok(stdout)
}

/// Poll a child until it exits or `timeout` passes; `None` means still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waitpid")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Human-readable `prog arg arg` for error messages.
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
    }
    rx
}
