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
