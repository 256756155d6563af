//! Mounted filesystems, from /proc/self/mountinfo.

use super::model::{Dev, Mount};
use std::path::{Path, PathBuf};

/// Parses mountinfo; malformed lines are skipped (the kernel writes this
/// file, a bad line means a format this parser does not know, not bad input).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 || fields.len() < sep + 3 {
        return None;
    }
    Some(Mount {
        mount_id: fields[0].parse().ok()?,
        parent_id: fields[1].parse().ok()?,
        dev: Dev::parse(fields[2])?,
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        fs_type: fields[sep + 1].to_string(),
        source: unescape(fields[sep + 2]),
        super_options: fields.get(sep + 3).unwrap_or(&"").to_string(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal =
            b.get(i + 1..i + 4).and_then(|o| std::str::from_utf8(o).ok()).and_then(|o| u8::from_str_radix(o, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount a path lives on: the longest mount point that is a path
/// prefix, the most recent one when several mounts stack on one directory.
/// With `dev`, only mounts of that filesystem qualify (falling back to any
/// mount of it: the path may be in another mount namespace).
pub fn mount_of_path<'a>(mounts: &'a [Mount], path: &Path, dev: Option<Dev>) -> Option<&'a Mount> {
    let of_dev = |m: &&Mount| dev.is_none_or(|d| m.dev == d);
    let best = mounts
        .iter()
        .filter(of_dev)
        .filter(|m| path.starts_with(&m.mount_point))
        .enumerate()
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m);
    best.or_else(|| dev.and_then(|_| mounts.iter().find(of_dev)))
}

/// Whether looking `path` up could wait on a FUSE daemon or network server:
/// a path walk revalidates every directory it crosses, so one blocking
/// filesystem anywhere along the way is enough, even when the file itself
/// lives on a local filesystem mounted further down.
pub fn path_may_block(mounts: &[Mount], path: &Path) -> bool {
    path.ancestors().any(|prefix| {
        // The visible mount on `prefix`: the last one mounted there.
        mounts.iter().rev().find(|m| m.mount_point == prefix).is_some_and(Mount::stat_may_block)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
44 27 0:39 / /tmp/tq/fuse.img rw,nosuid,nodev,relatime - fuse /dev/fuse rw,user_id=0,group_id=0,allow_other
45 27 7:0 / /tmp/with\\040space rw,relatime shared:5 master:2 - xfs /dev/loop0 rw,attr2,inode64
46 45 7:0 /sub /tmp/bind rw - xfs /dev/loop0 rw
bad line
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, PathBuf::from("/"));
        assert_eq!(m[0].dev, Dev::new(254, 0));
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[1].dev, Dev::new(0, 39));
        assert!(m[1].is_fuse() && m[1].stat_may_block());
        assert_eq!(m[1].super_options, "rw,user_id=0,group_id=0,allow_other");
        assert_eq!(m[2].mount_point, PathBuf::from("/tmp/with space"));
        assert_eq!(m[2].source, "/dev/loop0");
        assert_eq!(m[3].root, PathBuf::from("/sub"));
        assert!(!m[2].is_fuse());
    }

    #[test]
    fn finds_the_mount_holding_a_path() {
        let m = parse(SAMPLE);
        let of = |p: &str, d| mount_of_path(&m, Path::new(p), d).map(|m| m.mount_id);
        assert_eq!(of("/tmp/tq/fuse.img", None), Some(44));
        assert_eq!(of("/tmp/tq/lower.img", None), Some(27));
        assert_eq!(of("/tmp/with space/a", None), Some(45));
        assert_eq!(of("/tmp/with space/a", Some(Dev::new(254, 0))), Some(27));
        // A dev that is mounted, but not on a prefix of the path: its first mount.
        assert_eq!(of("/elsewhere", Some(Dev::new(7, 0))), Some(45));
        assert_eq!(of("/x", Some(Dev::new(8, 1))), None);
    }

    #[test]
    fn a_fuse_mount_anywhere_on_the_path_blocks() {
        let mut m = parse(SAMPLE);
        assert!(path_may_block(&m, Path::new("/tmp/tq/fuse.img")));
        assert!(!path_may_block(&m, Path::new("/tmp/tq/lower.img")));
        // A local filesystem mounted inside the FUSE mount is still reached through it.
        m.extend(parse("47 44 7:1 / /tmp/tq/fuse.img/sub rw - ext4 /dev/loop1 rw\n"));
        assert!(path_may_block(&m, Path::new("/tmp/tq/fuse.img/sub/file")));
        // Unless something local is mounted over the FUSE mount itself.
        m.extend(parse("48 27 7:2 / /tmp/tq/fuse.img rw - ext4 /dev/loop2 rw\n"));
        assert!(!path_may_block(&m, Path::new("/tmp/tq/fuse.img/file")));
    }
}
