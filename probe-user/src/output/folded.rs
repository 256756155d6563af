//! Findings' kernel stacks as folded stacks, the input of inferno
//! (`inferno-flamegraph`) and flamegraph.pl: `frame;frame;frame count`,
//! root first, one line per distinct stack per servicer and rule. The
//! servicer and the rule are the two outermost frames, so the graph splits
//! by them first and a reader sees whose reclaim each tower is.

use std::collections::BTreeMap;

use crate::{
    detect::finding::Finding,
    kernel::{kallsyms::without_probe_frames, markers::function},
};

/// The folded lines, sorted (inferno wants equal stacks adjacent; sorting
/// also makes the output stable). Stacks that fold to the same functions
/// (they differ only in offsets) are added up.
pub fn render(findings: &[Finding]) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for f in findings {
        let servicer = frame(&format!("{}[{}]", name(f), f.servicer.tgid));
        let stacks: Vec<(&[String], u64)> = if f.stacks.is_empty() {
            // Findings made from /proc (a deadlock) carry only `stack`.
            vec![(&f.stack[..], f.count.max(1))]
        } else {
            f.stacks.iter().map(|s| (&s.frames[..], s.count)).collect()
        };
        for (frames, count) in stacks.into_iter().filter(|(s, c)| !s.is_empty() && *c > 0) {
            let mut line = format!("{servicer};{}", frame(&f.rule));
            // Innermost first in the finding: reversed for root first.
            for fr in without_probe_frames(frames).iter().rev() {
                line.push(';');
                line.push_str(&frame(function(fr)));
            }
            *lines.entry(line).or_default() += count;
        }
    }
    lines.into_iter().map(|(stack, n)| format!("{stack} {n}\n")).collect()
}

/// The program's short name: a path's last component.
fn name(f: &Finding) -> &str {
    let n = if f.servicer.name.is_empty() { &f.servicer.comm } else { &f.servicer.name };
    n.rsplit('/').next().unwrap_or(n)
}

/// `;` separates frames and the last space starts the count: neither may
/// appear inside one.
fn frame(s: &str) -> String {
    s.trim().replace(';', ":").replace(char::is_whitespace, "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::finding::{Severity, StackSeen};

    fn finding(rule: &str, stacks: &[(&[&str], u64)]) -> Finding {
        Finding {
            stack: stacks.first().map(|(s, _)| s.iter().map(|f| f.to_string()).collect()).unwrap_or_default(),
            stacks: stacks
                .iter()
                .map(|(s, count)| StackSeen {
                    frames: s.iter().map(|f| f.to_string()).collect(),
                    count: *count,
                    hash: 0,
                })
                .collect(),
            count: stacks.iter().map(|(_, c)| c).sum(),
            ..Finding::sample(rule, Severity::Hazard)
        }
    }

    #[test]
    fn root_first_per_servicer_and_rule_offsets_dropped() {
        let a: &[&str] = &["folio_wait_writeback+0x2a/0x80", "shrink_folio_list+0x3a/0x9f0", "fuse_dev_do_write+0x10"];
        let b: &[&str] = &["folio_wait_writeback+0x2a/0x80", "shrink_folio_list+0x40/0x9f0", "fuse_dev_do_write+0x10"];
        let c: &[&str] = &["xfs_buf_iowait", "shrink_node"];
        let out = render(&[finding("RS001", &[(a, 3), (b, 2)]), finding("RS101", &[(c, 1)])]);
        assert_eq!(
            out,
            "qemu-storage-daemon[4242];RS001;fuse_dev_do_write;shrink_folio_list;folio_wait_writeback 5\n\
             qemu-storage-daemon[4242];RS101;shrink_node;xfs_buf_iowait 1\n"
        );
    }

    #[test]
    fn separators_inside_names_cannot_split_frames() {
        let odd: &[&str] = &["a;b c [mod]"];
        let out = render(&[finding("RS001", &[(odd, 1)])]);
        assert_eq!(out.lines().next().unwrap().rsplit_once(' ').unwrap().0.split(';').count(), 3, "{out}");
    }
}
