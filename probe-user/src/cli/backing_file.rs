//! `--backing-file PATH=MAJOR:MINOR`, which `watch`, `monitor`, `record` and
//! `audit` all take: PATH holds the data of block device MAJOR:MINOR.

use std::path::PathBuf;

use crate::topology::Dev;

/// Splits at the last `=`, so a path may hold one.
pub fn parse(s: &str) -> Result<(PathBuf, Dev), String> {
    let (path, dev) = s.rsplit_once('=').ok_or_else(|| format!("{s:?} is not PATH=MAJOR:MINOR"))?;
    let dev = Dev::parse(dev).ok_or_else(|| format!("{dev:?} is not a device number {}", Dev::FORMAT))?;
    if path.is_empty() {
        return Err(format!("{s:?} has an empty path"));
    }
    Ok((PathBuf::from(path), dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_then_device() {
        assert_eq!(parse("/srv/a=b.img=43:0"), Ok((PathBuf::from("/srv/a=b.img"), Dev::new(43, 0))));
        assert!(parse("/srv/a.img").is_err());
        assert!(parse("/srv/a.img=43").is_err());
        assert!(parse("=43:0").is_err());
    }
}
