//! Checks made before touching BPF, so that a missing privilege is one clear
//! line rather than an EPERM from deep inside the loader.

use anyhow::{bail, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability mask of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Loading and attaching tracing programs needs CAP_BPF and CAP_PERFMON
/// (or CAP_SYS_ADMIN on older kernels).
pub fn require_bpf_privileges(command: &str) -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!("reclaimscope {command} needs root (CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo")
}

/// tokio's signal driver panics when it cannot get a socket pair, so a
/// limit this low is refused before the runtime starts. The agent itself
/// holds a few dozen descriptors (programs, maps, links, the runtime's).
const AGENT_MIN_FDS: u64 = 64;

/// The soft limit on open descriptors (RLIMIT_NOFILE) in force.
pub fn descriptor_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// Raises the soft descriptor limit to the hard one: the agent reads /proc
/// while clients hold metrics connections, and running out costs it
/// detection, while the soft limit (often 1,024) guards only programs
/// that use select(). Fails when even the hard limit is too low to run.
pub fn raise_descriptor_limit() -> Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            log::info!("cannot raise the descriptor limit to {}: {}", lim.rlim_max, std::io::Error::last_os_error());
        }
    }
    let limit = descriptor_limit();
    if limit < AGENT_MIN_FDS {
        bail!("the descriptor limit (RLIMIT_NOFILE) is {limit}; the agent needs at least {AGENT_MIN_FDS}");
    }
    Ok(())
}
