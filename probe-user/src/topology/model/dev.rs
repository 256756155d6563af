//! Device numbers, in the two encodings the agent meets.
//!
//! Userspace sees `st_dev`/`st_rdev` (glibc's `makedev()` layout) and sysfs
//! prints "major:minor". Inside the kernel a `dev_t` is `major << 20 | minor`
//! (include/linux/kdev_t.h, MINORBITS = 20): that is what BPF programs read
//! from `sb->s_dev` and from tracepoint `dev` fields. Mixing the two silently
//! matches nothing, so every conversion goes through this type.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A device number (major, minor).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

/// include/linux/kdev_t.h
const MINORBITS: u32 = 20;
const MINORMASK: u32 = (1 << MINORBITS) - 1;
/// A kernel `dev_t` is 32 bits: 12 of major, 20 of minor.
const MAJORBITS: u32 = 32 - MINORBITS;

impl Dev {
    /// 0:0 is never handed out (anonymous devices start at minor 1), so it
    /// stands for "no device known", e.g. a named servicer whose device
    /// cannot be found.
    pub const NONE: Dev = Dev { major: 0, minor: 0 };

    /// What [`parse`](Self::parse) accepts, for messages about a number it refused.
    pub const FORMAT: &'static str = "MAJOR:MINOR, MAJOR below 4096 and MINOR below 1048576";

    pub const fn new(major: u32, minor: u32) -> Dev {
        Dev { major, minor }
    }

    /// From the kernel's internal `dev_t` (`MKDEV(ma, mi)`).
    pub const fn from_kernel(k: u32) -> Dev {
        Dev { major: k >> MINORBITS, minor: k & MINORMASK }
    }

    /// To the kernel's internal `dev_t`, as BPF programs compare it.
    pub const fn to_kernel(self) -> u32 {
        (self.major << MINORBITS) | (self.minor & MINORMASK)
    }

    /// From a userspace `st_dev`/`st_rdev`. LOOP_GET_STATUS64's `lo_device`
    /// (`huge_encode_dev()`) decodes the same way.
    pub fn from_st_dev(d: u64) -> Dev {
        Dev { major: libc::major(d), minor: libc::minor(d) }
    }

    /// Parses sysfs/mountinfo's "7:0". A number the kernel's `dev_t` cannot
    /// hold is refused: [`to_kernel`](Self::to_kernel) would fold it onto
    /// another device, so the BPF programs would watch the wrong one.
    pub fn parse(s: &str) -> Option<Dev> {
        let (major, minor) = s.trim().split_once(':')?;
        let d = Dev { major: major.parse().ok()?, minor: minor.parse().ok()? };
        (d.major >> MAJORBITS == 0 && d.minor >> MINORBITS == 0).then_some(d)
    }

    /// Anonymous devices (major 0) belong to filesystems without a block
    /// device: FUSE, tmpfs, proc, overlayfs...
    pub const fn is_anonymous(self) -> bool {
        self.major == 0
    }
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Identity of a file: the st_dev of its filesystem and its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: Dev,
    pub ino: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_encoding_round_trips() {
        let d = Dev::new(259, 0x12345);
        assert_eq!(d.to_kernel(), (259 << 20) | 0x12345);
        assert_eq!(Dev::from_kernel(d.to_kernel()), d);
        assert_eq!(Dev::from_kernel(7 << 20), Dev::new(7, 0));
    }

    #[test]
    fn st_dev_uses_glibc_layout() {
        // glibc: minor's low byte in bits 0-7, major in bits 8-19, minor's upper bits from bit 20.
        assert_eq!(Dev::from_st_dev(0xfe00), Dev::new(254, 0));
        assert_eq!(Dev::from_st_dev(libc::makedev(259, 300)), Dev::new(259, 300));
        assert_eq!(Dev::from_st_dev(0x0700), Dev::new(7, 0));
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(Dev::parse("7:0"), Some(Dev::new(7, 0)));
        assert_eq!(Dev::parse("254:16\n"), Some(Dev::new(254, 16)));
        assert_eq!(Dev::parse("7"), None);
        assert_eq!(Dev::parse("a:b"), None);
        assert_eq!(Dev::parse("4095:1048575"), Some(Dev::new(4095, (1 << 20) - 1)));
        assert_eq!(Dev::parse("4096:0"), None, "a 12-bit major");
        assert_eq!(Dev::parse("0:1048576"), None, "a 20-bit minor");
        assert_eq!(Dev::parse("4294967295:4294967295"), None);
        assert_eq!(Dev::new(0, 39).to_string(), "0:39");
    }
}
