//! What the running kernel's reclaim does that a finding's meaning depends
//! on. The rules themselves follow the kernel by observation (a wait the
//! kernel skips is never seen), but a hazard (RS001) is a forecast, and it
//! must not forecast a deadlock the kernel has closed.

use serde::{Deserialize, Serialize};

/// Read once at start: BTF says which kernel has what, the mount table
/// which memory cgroup hierarchy runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimBehaviour {
    /// The memory controller is cgroup v1's: its reclaim waits on a
    /// folio's writeback itself (shrink_folio_list()'s legacy case).
    pub legacy_memcg: bool,
    /// The kernel has `AS_WRITEBACK_MAY_DEADLOCK_ON_RECLAIM` (Linux 6.16):
    /// legacy-memcg reclaim no longer waits on the writeback of a mapping
    /// that carries it, which FUSE sets with `writeback_cache`.
    pub skips_flagged_writeback: bool,
}

/// How this kernel changes what a finding foretells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelNote {
    /// A FUSE daemon's legacy-memcg reclaim skips its own mount's
    /// writeback (when the mount uses writeback_cache): the wait on the
    /// FUSE file under the device is closed; the wait on the filesystem
    /// stacked above it, shrinkers and dirty throttling are not.
    FuseWritebackNotAwaited,
}

impl ReclaimBehaviour {
    /// The note for a finding of `rule` about a servicer that serves a
    /// FUSE filesystem (`serves_fuse`), if this kernel changes its meaning.
    pub fn note(self, rule: &str, serves_fuse: bool) -> Option<KernelNote> {
        let about_writeback_waits = matches!(rule, "RS001" | "RS201");
        (serves_fuse && about_writeback_waits && self.legacy_memcg && self.skips_flagged_writeback)
            .then_some(KernelNote::FuseWritebackNotAwaited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fuse_servicer_under_legacy_memcg_on_a_kernel_with_the_flag_gets_the_note() {
        let both = ReclaimBehaviour { legacy_memcg: true, skips_flagged_writeback: true };
        assert_eq!(both.note("RS001", true), Some(KernelNote::FuseWritebackNotAwaited));
        assert_eq!(both.note("RS001", false), None, "a block-device servicer's waits are not skipped");
        assert_eq!(both.note("RS101", true), None, "shrinker recursion is untouched");
        let v2 = ReclaimBehaviour { legacy_memcg: false, ..both };
        assert_eq!(v2.note("RS001", true), None, "cgroup v2 reclaim never waited on writeback itself");
        let old = ReclaimBehaviour { skips_flagged_writeback: false, ..both };
        assert_eq!(old.note("RS201", true), None, "before 6.16 the wait is there");
    }
}
