//! The cost per call of every implementation of every hook, from the
//! kernel's own BPF run-time statistics (BPF_ENABLE_STATS): the evidence the
//! hook table's order rests on where implementations see the same thing.

use aya::Ebpf;
use serde::Serialize;

use super::{loader::Attached, table::Family};

#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    pub program: &'static str,
    pub run_count: u64,
    pub run_time_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImplCost {
    pub hook: &'static str,
    pub family: Family,
    pub lacks: Option<&'static str>,
    pub targets: Vec<String>,
    /// Runs of its first program (one per event of the hook: a reclaim, a
    /// write, a wait).
    pub calls: u64,
    /// Time in all its programs per call (entry and exit together).
    pub ns_per_call: Option<f64>,
    pub programs: Vec<ProgramCost>,
    /// Why it did not attach.
    pub error: Option<String>,
}

/// Reads the statistics of every attached implementation.
pub fn costs(ebpf: &Ebpf, attached: &[Attached]) -> Vec<ImplCost> {
    attached
        .iter()
        .map(|a| {
            let programs: Vec<ProgramCost> = if a.error.is_some() {
                Vec::new()
            } else {
                a.programs
                    .iter()
                    .filter_map(|&name| {
                        let info = ebpf.program(name)?.info().ok()?;
                        Some(ProgramCost {
                            program: name,
                            run_count: info.run_count(),
                            run_time_ns: info.run_time().as_nanos() as u64,
                        })
                    })
                    .collect()
            };
            let calls = programs.first().map(|p| p.run_count).unwrap_or(0);
            let total: u64 = programs.iter().map(|p| p.run_time_ns).sum();
            ImplCost {
                hook: a.hook,
                family: a.family,
                lacks: a.lacks,
                targets: a.targets.clone(),
                calls,
                ns_per_call: (calls > 0).then(|| total as f64 / calls as f64),
                programs,
                error: a.error.clone(),
            }
        })
        .collect()
}
