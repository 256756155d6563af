//! The kernel's block device notifications (uevents), so that a new loop,
//! nbd, ublk or SCSI device starts a discovery at once instead of at the
//! next interval.
//!
//! The kernel multicasts every uevent on NETLINK_KOBJECT_UEVENT, group 1
//! (udev re-broadcasts its own on group 2, with a header of its own). A
//! message is `ACTION@DEVPATH` then `KEY=VALUE` fields, all NUL-terminated;
//! only `SUBSYSTEM=block` matters here.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::{unix::AsyncFd, Interest};

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;

/// Uevents are a few hundred bytes; a longer one is cut, which the
/// SUBSYSTEM field (among the first ones) survives.
const MESSAGE_MAX: usize = 8192;

/// A socket receiving the kernel's uevents.
pub struct BlockEvents {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl BlockEvents {
    pub fn open() -> io::Result<BlockEvents> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = KERNEL_GROUP;
        // SAFETY: addr is a sockaddr_nl of the length given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the socket, and with it the descriptor it polls.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(BlockEvents { fd, buf: vec![0; MESSAGE_MAX] })
    }

    /// Resolves once a block device was added, removed or changed, after
    /// reading every message queued (a burst, as mkfs and udev make, is
    /// one change). A full socket buffer lost messages, which may have
    /// been about block devices: that counts as a change too.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut block = false;
            let mut guard = self.fd.readable().await?;
            loop {
                let got = guard.try_io(|fd| {
                    // SAFETY: recv into a buffer we own, of the length given.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT)
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                match got {
                    Ok(Ok(n)) => block |= is_block(&self.buf[..n]),
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => block = true,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(e),
                    // Drained; readiness is cleared.
                    Err(_would_block) => break,
                }
            }
            if block {
                return Ok(());
            }
        }
    }
}

fn is_block(message: &[u8]) -> bool {
    message.split(|&b| b == 0).any(|field| field == b"SUBSYSTEM=block")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_block_uevents() {
        let add = b"add@/devices/virtual/block/loop3\0ACTION=add\0DEVPATH=/devices/virtual/block/loop3\0SUBSYSTEM=block\0MAJOR=7\0MINOR=3\0DEVNAME=loop3\0DEVTYPE=disk\0SEQNUM=4242\0";
        assert!(is_block(add));
        let tty = b"add@/devices/virtual/tty/ptmx\0ACTION=add\0SUBSYSTEM=tty\0DEVNAME=ptmx\0";
        assert!(!is_block(tty));
        // A value that merely contains the text is not the field.
        assert!(!is_block(b"change@/x\0DEVPATH=/SUBSYSTEM=block\0SUBSYSTEM=bdi\0"));
    }
}
