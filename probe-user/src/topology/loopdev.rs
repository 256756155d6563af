//! LOOP_GET_STATUS64: the identity (dev, inode) of the file a loop device
//! really holds, straight from the loop driver.
//!
//! Better than stat()ing the path in /sys/block/loopN/loop/backing_file: the
//! path may have been unlinked, renamed or over-mounted since losetup, and
//! the driver reports the open file itself. The kernel still calls
//! vfs_getattr() on that file, so callers must not use this for files on
//! FUSE or network filesystems (a wedged daemon would block the caller).

use super::model::{Dev, FileId};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// include/uapi/linux/loop.h
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64` (include/uapi/linux/loop.h), a stable UAPI layout.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);

/// The backing file's (dev, ino) of /dev/`name`; an error when the device
/// cannot be opened (not root, no /dev node) or is not bound (ENXIO).
pub(crate) fn backing_file_id(name: &str) -> io::Result<FileId> {
    let dev = File::open(format!("/dev/{name}"))?;
    // SAFETY: all-zero bytes are a valid LoopInfo64 (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one struct loop_info64 through the pointer,
    // which points at a live, correctly sized and aligned value.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_GET_STATUS64, &mut info as *mut LoopInfo64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FileId { dev: Dev::from_st_dev(info.lo_device), ino: info.lo_inode })
}
