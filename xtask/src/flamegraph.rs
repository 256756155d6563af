//! The demo's flame graph: `reclaimscope report --folded` lines, drawn by
//! inferno (the Rust port of flamegraph.pl) into an SVG that a browser
//! opens, with the stacks to search and zoom.

use std::{fs::File, io::BufWriter, path::Path};

use anyhow::{bail, Context, Result};
use inferno::flamegraph::{self, Options};

/// Writes `folded` (`frame;frame count` lines, root first) as an SVG at
/// `out`. Fails on no stacks: an empty graph would say nothing was found
/// without saying so.
pub fn write_svg(folded: &str, title: &str, out: &Path) -> Result<()> {
    let lines: Vec<&str> = folded.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        bail!("no reclaim stacks to draw: the trace has no finding with a kernel stack");
    }
    let mut opt = Options::default();
    opt.title = title.to_owned();
    opt.count_name = "sightings".to_owned();
    // The same stacks give the same picture, run after run.
    opt.deterministic = true;
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    flamegraph::from_lines(&mut opt, lines, BufWriter::new(file))
        .with_context(|| format!("cannot draw the flame graph into {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLDED: &str = "\
qemu-storage-daemon_[4242];RS001;fuse_dev_do_write;try_to_free_mem_cgroup_pages;shrink_folio_list;folio_wait_writeback 5
qemu-storage-daemon_[4242];RS201;try_to_free_mem_cgroup_pages;shrink_folio_list;xfs_ilock 1
";

    #[test]
    fn folded_stacks_become_a_well_formed_svg_showing_them() {
        let dir = std::env::temp_dir().join(format!("xtask-flamegraph-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("demo-flamegraph.svg");
        write_svg(FOLDED, "reclaim stacks", &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut reader = quick_xml::Reader::from_str(&svg);
        let mut elements = Vec::new();
        loop {
            match reader.read_event().expect("well-formed XML") {
                quick_xml::events::Event::Start(e) => {
                    elements.push(String::from_utf8_lossy(e.name().as_ref()).into_owned())
                }
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(elements.first().map(String::as_str), Some("svg"));
        for frame in ["qemu-storage-daemon_[4242]", "RS001", "folio_wait_writeback", "xfs_ilock", "reclaim stacks"] {
            assert!(svg.contains(frame), "the graph lacks {frame}");
        }
    }

    #[test]
    fn no_stacks_is_an_error_not_an_empty_picture() {
        let out = std::env::temp_dir().join("xtask-flamegraph-never-written.svg");
        let err = write_svg("\n", "t", &out).unwrap_err();
        assert!(err.to_string().contains("no reclaim stacks"), "{err}");
        assert!(!out.exists());
    }
}
