//! Names of the task flags (`PF_*`) that decide how a task's allocations may
//! recurse into reclaim.

use probe_common::flags::{PF_KSWAPD, PF_KTHREAD, PF_LOCAL_THROTTLE, PF_MEMALLOC, PF_MEMALLOC_NOFS, PF_MEMALLOC_NOIO};

/// The task flags that decide how an allocation may recurse, in bit order.
const TASK_FLAG_NAMES: [(u32, &str); 6] = [
    (PF_MEMALLOC, "MEMALLOC"),
    (PF_KSWAPD, "KSWAPD"),
    (PF_MEMALLOC_NOFS, "NOFS"),
    (PF_MEMALLOC_NOIO, "NOIO"),
    (PF_LOCAL_THROTTLE, "LOCAL_THROTTLE"),
    (PF_KTHREAD, "KTHREAD"),
];

/// Names the reclaim-relevant `PF_*` bits of a task's flags, e.g.
/// `NOIO|LOCAL_THROTTLE` for a PR_SET_IO_FLUSHER daemon, `-` when none is set.
/// Other `PF_*` bits say nothing about reclaim and are left out.
pub fn task_flags(flags: u32) -> String {
    let names: Vec<&str> = TASK_FLAG_NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| *name).collect();
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join("|")
    }
}

/// The bits [`task_flags`] names in `names` (`-`: none), or None when a
/// name is not one of them.
pub fn task_flags_named(names: &str) -> Option<u32> {
    if names == "-" {
        return Some(0);
    }
    names.split('|').try_fold(0, |bits, n| Some(bits | TASK_FLAG_NAMES.iter().find(|(_, name)| *name == n)?.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_task_flags() {
        assert_eq!(task_flags(0), "-");
        assert_eq!(task_flags(0x0040_0000), "-"); // PF_RANDOMIZE says nothing about reclaim
        assert_eq!(task_flags(PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE), "NOIO|LOCAL_THROTTLE");
        assert_eq!(task_flags(PF_MEMALLOC_NOFS | PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE), "NOFS|NOIO|LOCAL_THROTTLE");
        assert_eq!(task_flags(PF_KTHREAD | PF_KSWAPD | PF_MEMALLOC), "MEMALLOC|KSWAPD|KTHREAD");
    }

    #[test]
    fn names_read_back_to_their_bits() {
        for flags in [0, PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE, PF_KTHREAD | PF_KSWAPD | PF_MEMALLOC] {
            assert_eq!(task_flags_named(&task_flags(flags)), Some(flags));
        }
        assert_eq!(task_flags_named("NOIO|RANDOMIZE"), None);
    }
}
