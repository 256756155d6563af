//! What `reclaimscope audit` prints: each storage stack as a tree from the
//! mounted filesystem down to its servicers, then the verdict, and the exit
//! code. The report is built once and rendered as text or serialized as
//! JSON, so the two cannot disagree.

use std::{fmt::Write as _, path::PathBuf};

use serde::Serialize;

use crate::names::task_flags;
use crate::topology::{Remedy, Servicer, StackPath, Topology};

/// No unprotected servicer sits under a mounted filesystem.
pub const EXIT_OK: i32 = 0;
/// Discovery failed or the arguments were bad (`cli::audit::run` returns the error).
pub const EXIT_ERROR: i32 = 1;
/// At least one unprotected servicer sits under a mounted filesystem.
pub const EXIT_UNPROTECTED: i32 = 3;
/// None seen, but the daemon of a FUSE filesystem under a mounted
/// filesystem could not be seen (typically: not root), so no all-clear.
pub const EXIT_INCOMPLETE: i32 = 4;

/// What `--json` prints: the same tree and verdict as the text.
#[derive(Serialize)]
pub(crate) struct Report<'a> {
    pub(crate) stacks: Vec<StackPath>,
    /// Servicers whose device is unknown or not on this host.
    pub(crate) unplaced_servicers: Vec<&'a Servicer>,
    pub(crate) unprotected: Vec<Verdict<'a>>,
    /// FUSE filesystems under a mounted filesystem whose daemon was not found.
    pub(crate) unseen_servicers: Vec<String>,
    pub(crate) warnings: &'a [String],
    pub(crate) exit_code: i32,
}

/// An unprotected servicer under a mounted filesystem, and what to change.
#[derive(Serialize)]
pub(crate) struct Verdict<'a> {
    pub(crate) tgid: Option<u32>,
    pub(crate) comm: &'a str,
    pub(crate) serves: String,
    pub(crate) under_mounts: &'a [PathBuf],
    pub(crate) unprotected_threads: Vec<u32>,
    pub(crate) remedy: &'a Remedy,
}
/// The audit of one topology, in both forms.
pub struct AuditOutput {
    /// The tree and verdict as printed.
    pub text: String,
    /// The same tree and verdict, as `--json` prints it.
    pub json: serde_json::Value,
    pub exit_code: i32,
}

/// Builds the report once and renders it both ways, so text and JSON cannot disagree.
pub fn audit(topo: &Topology) -> AuditOutput {
    let report = report(topo);
    AuditOutput {
        text: render(&report),
        json: serde_json::to_value(&report).expect("the report is plain data and always serializes"),
        exit_code: report.exit_code,
    }
}

fn report(topo: &Topology) -> Report<'_> {
    let stacks = topo.stacks();
    let placed =
        |s: &Servicer| topo.devices.iter().any(|d| d.dev == s.serves) || topo.mount_for_dev(s.serves).is_some();
    let unprotected: Vec<Verdict> = topo
        .unprotected()
        .into_iter()
        .map(|s| Verdict {
            tgid: s.tgid,
            comm: &s.comm,
            serves: s.serves_name.clone(),
            under_mounts: &s.under_mounts,
            unprotected_threads: s.threads.iter().filter(|t| !t.protection.is_protected()).map(|t| t.tid).collect(),
            remedy: &s.remedy,
        })
        .collect();
    let unseen: Vec<String> = topo
        .unseen_servicers()
        .into_iter()
        .map(|d| topo.mount_for_dev(d).map_or(d.to_string(), |m| m.label()))
        .collect();
    let exit_code = match (unprotected.is_empty(), unseen.is_empty()) {
        (false, _) => EXIT_UNPROTECTED,
        (true, false) => EXIT_INCOMPLETE,
        (true, true) => EXIT_OK,
    };
    Report {
        stacks,
        unplaced_servicers: topo.servicers.iter().filter(|s| !placed(s)).collect(),
        unprotected,
        unseen_servicers: unseen,
        warnings: &topo.warnings,
        exit_code,
    }
}

/// A node of the printed tree: its lines and its children.
struct Node {
    lines: Vec<String>,
    children: Vec<Node>,
}

impl Node {
    fn leaf(line: String) -> Node {
        Node { lines: vec![line], children: Vec::new() }
    }
}

pub(crate) fn render(r: &Report) -> String {
    let mut out = String::new();
    if r.stacks.is_empty() && r.unplaced_servicers.is_empty() {
        out.push_str("No stacked storage found (no loop, nbd, ublk, dm, md or tcmu device with something under it, no FUSE mount).\n");
    }
    for stack in &r.stacks {
        let top = match &stack.upper {
            Some(m) => m.label(),
            None => format!("{} (not mounted)", stack.device),
        };
        draw(&mut out, &Node { lines: vec![top], children: vec![element(stack)] }, "", "", "");
        out.push('\n');
    }
    if !r.unplaced_servicers.is_empty() {
        let children = r.unplaced_servicers.iter().map(|s| servicer(s)).collect();
        draw(&mut out, &Node { lines: vec!["Servicers of unknown or remote devices".into()], children }, "", "", "");
        out.push('\n');
    }
    if r.unprotected.is_empty() && r.unseen_servicers.is_empty() {
        let _ = writeln!(out, "Verdict: no unprotected servicer under a mounted filesystem (exit {}).", r.exit_code);
    } else if r.unprotected.is_empty() {
        let _ = writeln!(
            out,
            "Verdict: no unprotected servicer seen, but the daemon of {} was not found; run as root (exit {}).",
            r.unseen_servicers.join(", "),
            r.exit_code
        );
    } else {
        let _ = writeln!(
            out,
            "Verdict: {} unprotected servicer(s) under a mounted filesystem (exit {}):",
            r.unprotected.len(),
            r.exit_code
        );
        for v in &r.unprotected {
            let who = v.tgid.map_or(v.comm.to_string(), |t| format!("{} (pid {t})", v.comm));
            let under: Vec<String> = v.under_mounts.iter().map(|m| m.display().to_string()).collect();
            let _ = writeln!(out, "  {who}, serving {}, under {}", v.serves, under.join(", "));
            let _ = writeln!(out, "    remedy: {}", v.remedy);
        }
    }
    out
}

fn element(p: &StackPath) -> Node {
    let mut head = p.device.clone();
    if let Some(d) = &p.detail {
        let _ = write!(head, "  [{d}]");
    }
    let mut children: Vec<Node> = p.servicers.iter().map(servicer).collect();
    if p.servicers.is_empty() && p.dev.is_anonymous() {
        children.push(Node::leaf("no servicer found (see warnings)".into()));
    }
    let from_servicer =
        p.servicers.iter().any(|s| s.data_files.iter().any(|f| Some(&f.path) == p.backing_file.as_ref()));
    if let (Some(file), false) = (&p.backing_file, from_servicer) {
        let on = p.lower.as_ref().map_or("an unknown mount".to_string(), |m| m.label());
        children.push(Node::leaf(file_line("backing file", file, p.backing_ino.unwrap_or(0), &on)));
    }
    children.extend(p.below.iter().map(element));
    Node { lines: vec![head], children }
}

fn file_line(what: &str, path: &std::path::Path, ino: u64, on: &str) -> String {
    let ino = if ino == 0 { "inode not probed".to_string() } else { format!("ino {ino}") };
    format!("{what} {} ({ino}) on {on}", path.display())
}

fn servicer(s: &Servicer) -> Node {
    let verdict = if s.protection.is_protected() {
        s.protection.to_string()
    } else if s.under_mounts.is_empty() {
        format!("{} (not counted: no mounted block-device filesystem depends on it)", s.protection)
    } else {
        s.protection.to_string()
    };
    let mut lines = vec![format!("servicer {} [{}]: {verdict}", s.label(), s.kind)];
    lines.push(format!("match: {}", s.confidence));
    if !s.threads.is_empty() {
        lines.push(format!("{:<8} {:<16} {:<10} {:<26} {}", "TID", "COMM", "FLAGS", "SCOPE BITS", "PROTECTION"));
        for t in &s.threads {
            let verdict = if t.protection.is_protected() { "protected" } else { "UNPROTECTED" };
            lines.push(format!(
                "{:<8} {:<16} {:<10} {:<26} {verdict}",
                t.tid,
                t.comm,
                format!("{:#010x}", t.flags),
                task_flags(t.flags)
            ));
        }
    }
    for f in &s.data_files {
        lines.push(file_line(
            "data file",
            &f.path,
            f.ino,
            &format!("{} ({}, {})", f.mount_point.display(), f.fs_type, f.dev),
        ));
    }
    if !s.under_mounts.is_empty() {
        let under: Vec<String> = s.under_mounts.iter().map(|m| m.display().to_string()).collect();
        lines.push(format!("under: {}", under.join(", ")));
    }
    if let Some(n) = &s.note {
        lines.push(format!("note: {n}"));
    }
    lines.push(format!("remedy: {}", s.remedy));
    Node { lines, children: Vec::new() }
}

/// Draws `n` with box-drawing branches. `first`/`rest` prefix its first and
/// following lines; `indent` prefixes its children.
fn draw(out: &mut String, n: &Node, first: &str, rest: &str, indent: &str) {
    for (i, line) in n.lines.iter().enumerate() {
        let _ = writeln!(out, "{}{line}", if i == 0 { first } else { rest });
    }
    for (i, c) in n.children.iter().enumerate() {
        let last = i + 1 == n.children.len();
        let (branch, cont) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
        let child_rest = format!("{indent}{cont}{}", if c.children.is_empty() { "   " } else { "│  " });
        draw(out, c, &format!("{indent}{branch}"), &child_rest, &format!("{indent}{cont}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_drawing() {
        let tree = Node {
            lines: vec!["root".into()],
            children: vec![
                Node { lines: vec!["a".into(), "a2".into()], children: vec![Node::leaf("a.1".into())] },
                Node { lines: vec!["b".into(), "b2".into()], children: Vec::new() },
            ],
        };
        let mut out = String::new();
        draw(&mut out, &tree, "", "", "");
        assert_eq!(out, "root\n├─ a\n│  │  a2\n│  └─ a.1\n└─ b\n      b2\n");
    }
}
