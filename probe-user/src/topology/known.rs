//! What the known servicers do about reclaim recursion, from their own
//! source and binaries. The verdict always comes from the threads' real
//! flags; this table only sharpens the remedy, and explains a verdict that
//! contradicts what the program is known to do.

use super::servicer::Protection;

/// One program: how it is recognised (its executable's file name) and what
/// it does.
pub(crate) struct Known {
    /// Executable names (/proc/PID/exe's file name).
    pub exe: &'static [&'static str],
    /// What it does about PR_SET_IO_FLUSHER, as its source shows.
    pub does: &'static str,
    /// The remedy when it is unprotected.
    pub remedy: &'static str,
    /// True when a correct, current build sets PR_SET_IO_FLUSHER itself.
    pub sets_io_flusher: bool,
}

pub(crate) const KNOWN: &[Known] = &[
    Known {
        exe: &["tcmu-runner"],
        does: "tcmu-runner sets no reclaim scope: it never calls prctl() (Debian's 1.5.4 binary does not even import it)",
        remedy: "patch tcmu-runner to call prctl(PR_SET_IO_FLUSHER, 1) before it starts its handler threads, \
                 and run it with CAP_SYS_RESOURCE",
        sets_io_flusher: false,
    },
    Known {
        exe: &["nbd-server", "nbd-client"],
        does: "nbd-server and nbd-client set no reclaim scope: neither calls prctl() (Debian's 3.24 binaries do not import it)",
        remedy: "run the NBD server on another host, or patch it to call prctl(PR_SET_IO_FLUSHER, 1) in the \
                 process that serves each connection (a forked child)",
        sets_io_flusher: false,
    },
    Known {
        exe: &["iscsid"],
        does: "iscsid sets PR_SET_IO_FLUSHER since open-iscsi 2.1.5",
        remedy: "upgrade open-iscsi to 2.1.5 or later, and give iscsid CAP_SYS_RESOURCE",
        sets_io_flusher: true,
    },
    Known {
        exe: &["rublk", "ublk"],
        does: "libublk before 0.4.7 and ublksrv before 1.8 call prctl(PR_SET_IO_FLUSHER, 0), which clears the flag; \
               later ones call it with 1",
        remedy: "upgrade the ublk server (libublk 0.4.7+, ublksrv 1.8+), and give it CAP_SYS_RESOURCE",
        sets_io_flusher: true,
    },
    Known {
        exe: &["qemu-storage-daemon", "qemu-nbd", "qemu-system-x86_64"],
        does: "QEMU sets no reclaim scope for its I/O threads",
        remedy: "call prctl(PR_SET_IO_FLUSHER, 1) in QEMU's I/O threads (none of its options does), or serve the \
                 export from outside the memory pressure: its own memory cgroup with room, or another host",
        sets_io_flusher: false,
    },
    Known {
        exe: &["bindfs", "sshfs", "fuse-overlayfs", "fuse2fs", "s3fs"],
        does: "libfuse has no option to set PR_SET_IO_FLUSHER (libfuse issue #700 is open), and this daemon does not set it",
        remedy: "patch the daemon to call prctl(PR_SET_IO_FLUSHER, 1) in every thread that serves requests \
                 (libfuse's worker threads inherit it when it is set before fuse_session_loop_mt)",
        sets_io_flusher: false,
    },
];

pub(crate) fn lookup(exe: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.exe.contains(&exe))
}

/// The note for a known program: what it does, and why the verdict here
/// differs when it does.
pub(crate) fn note(k: &Known, protection: Protection) -> String {
    match (k.sets_io_flusher, protection.is_protected()) {
        (true, false) => format!(
            "{}; this one is unprotected all the same: an older release, or it lacks CAP_SYS_RESOURCE so its prctl() fails",
            k.does
        ),
        (false, true) => format!("{}; this one is protected all the same: patched, or started inside a scope", k.does),
        _ => k.does.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_is_explained() {
        let iscsid = lookup("iscsid").unwrap();
        assert!(note(iscsid, Protection::Unprotected).contains("older release"));
        assert!(!note(iscsid, Protection::IoFlusher).contains("older"));
        let tcmu = lookup("tcmu-runner").unwrap();
        assert!(note(tcmu, Protection::IoFlusher).contains("patched"));
        assert!(lookup("no-such-daemon").is_none());
    }
}
