//! What a blocked task holds in a filesystem, inferred from the kernel
//! functions on its stack.
//!
//! A lock taken by a function stays held while that function is on the
//! stack: a writer blocked in `balance_dirty_pages()` or in reclaim under
//! `xfs_file_buffered_write()` holds the inode's IOLOCK, however long before
//! it was taken and whatever traced it. Reading it from the stack when a
//! finding asks costs nothing on the filesystem's hot paths, and sees locks
//! taken before the agent started.
//!
//! Each entry names the function that takes the lock and keeps it until it
//! returns, checked in the sources of Linux 5.10, 6.1, 6.12 and 6.18. A
//! function missing from a kernel (renamed, inlined) only means that entry
//! never matches there.

use serde::{Deserialize, Serialize};

use crate::kernel::markers::function;

/// One kind of thing held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Held {
    /// XFS_IOLOCK_EXCL: the inode's i_rwsem, exclusive.
    IolockExcl,
    /// XFS_IOLOCK_SHARED.
    IolockShared,
    /// XFS_MMAPLOCK_EXCL: page faults and truncation are held off.
    MmaplockExcl,
    /// XFS_ILOCK_EXCL: the inode's metadata lock.
    IlockExcl,
    /// An XFS transaction with its log reservation.
    XfsTrans,
    /// The VFS inode lock (i_rwsem) of another filesystem, exclusive.
    IRwsemExcl,
    /// The same, shared (direct I/O).
    IRwsemShared,
    /// A running jbd2 handle: the ext4 journal cannot commit past it.
    Jbd2Handle,
}

use Held::*;

/// Functions that hold what they list while they are on the stack.
const HOLDERS: &[(&str, &[Held])] = &[
    // fs/xfs/xfs_file.c: xfs_ilock_iocb(iocb, XFS_IOLOCK_EXCL) for the whole
    // buffered write (xfs_file_buffered_aio_write before 5.12).
    ("xfs_file_buffered_write", &[IolockExcl]),
    ("xfs_file_buffered_aio_write", &[IolockExcl]),
    // 5.12+: unaligned direct writes serialise, aligned ones share.
    ("xfs_file_dio_write_unaligned", &[IolockExcl]),
    ("xfs_file_dio_write_aligned", &[IolockShared]),
    // 5.10: shared, upgraded to exclusive for unaligned writes.
    ("xfs_file_dio_aio_write", &[IolockShared]),
    // xfs_file_fallocate: iolock = XFS_IOLOCK_EXCL | XFS_MMAPLOCK_EXCL.
    ("xfs_file_fallocate", &[IolockExcl, MmaplockExcl]),
    // xfs_vn_setattr takes XFS_MMAPLOCK_EXCL around xfs_vn_setattr_size;
    // the VFS's do_truncate holds i_rwsem (the IOLOCK).
    ("xfs_vn_setattr_size", &[IolockExcl, MmaplockExcl]),
    // Delalloc conversion in writeback, and direct/unwritten allocation:
    // a transaction, then xfs_ilock(ip, XFS_ILOCK_EXCL), until commit.
    ("xfs_bmapi_convert_delalloc", &[XfsTrans, IlockExcl]),
    ("xfs_bmapi_convert_one_delalloc", &[XfsTrans, IlockExcl]),
    ("xfs_iomap_write_direct", &[XfsTrans, IlockExcl]),
    ("xfs_iomap_write_unwritten", &[XfsTrans, IlockExcl]),
    // Committing or rolling: the transaction is held until it is done.
    ("__xfs_trans_commit", &[XfsTrans]),
    ("xfs_trans_roll", &[XfsTrans]),
    // fs/ext4/file.c: inode_lock() for the whole buffered write.
    ("ext4_buffered_write_iter", &[IRwsemExcl]),
    ("ext4_dio_write_iter", &[IRwsemShared]),
    ("ext4_fallocate", &[IRwsemExcl]),
    // fs/ext4/inode.c: ext4_do_writepages (ext4_writepages before 6.5)
    // starts a handle, then maps and submits extents under it.
    ("mpage_map_and_submit_extent", &[Jbd2Handle]),
    // mm/filemap.c: the write path of filesystems without their own.
    ("generic_file_write_iter", &[IRwsemExcl]),
    // fs/btrfs/file.c: btrfs_inode_lock() for the write.
    ("btrfs_buffered_write", &[IRwsemExcl]),
    // fs/open.c: inode_lock() around notify_change() for a truncate.
    ("do_truncate", &[IRwsemExcl]),
];

/// Functions inside which a caller waits to start its transaction: what
/// the callers further out list as a transaction is not held yet.
const TRANS_NOT_YET: &[&str] = &["xfs_trans_alloc", "xfs_trans_reserve"];

/// What a task holds, from its kernel stack (innermost frame first), in
/// a stable order and without repeats.
pub fn held_by(frames: &[String]) -> Vec<Held> {
    let mut out = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let name = function(frame);
        let Some((_, held)) = HOLDERS.iter().find(|(f, _)| *f == name) else { continue };
        let waiting_for_trans = frames[..i].iter().any(|f| TRANS_NOT_YET.contains(&function(f)));
        for &h in *held {
            if waiting_for_trans && matches!(h, XfsTrans | IlockExcl) {
                continue;
            }
            out.push(h);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str]) -> Vec<String> {
        frames.iter().map(|f| format!("{f}+0x10/0x80")).collect()
    }

    #[test]
    fn a_buffered_xfs_writer_blocked_in_throttling_holds_its_iolock() {
        // The writer of the qsd deadlock on 6.1: dirty-throttled under its write.
        let s = stack(&[
            "balance_dirty_pages",
            "balance_dirty_pages_ratelimited_flags",
            "iomap_file_buffered_write",
            "xfs_file_buffered_write",
            "vfs_write",
            "ksys_write",
        ]);
        assert_eq!(held_by(&s), vec![IolockExcl]);
    }

    #[test]
    fn a_transaction_is_not_held_while_its_reservation_is_awaited() {
        let waiting =
            stack(&["xlog_grant_head_wait", "xfs_trans_reserve", "xfs_trans_alloc", "xfs_bmapi_convert_delalloc"]);
        assert_eq!(held_by(&waiting), Vec::<Held>::new());
        let holding = stack(&["xfs_buf_lock", "xfs_bmapi_write", "xfs_bmapi_convert_delalloc", "iomap_writepages"]);
        assert_eq!(held_by(&holding), vec![IlockExcl, XfsTrans]);
    }

    #[test]
    fn tasks_outside_a_holding_function_hold_nothing() {
        let s =
            stack(&["folio_wait_bit_common", "folio_wait_writeback", "__filemap_fdatawait_range", "xfs_file_fsync"]);
        assert!(held_by(&s).is_empty());
        assert!(held_by(&[]).is_empty());
    }
}
