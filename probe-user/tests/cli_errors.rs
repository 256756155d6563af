//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.

mod common;

use std::process::Command;

fn one_line_error(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].contains(needle), "`{}` does not mention `{needle}`", lines[0]);
}

#[test]
fn not_root_is_refused_with_one_line() {
    if !testbed::require_root("not_root_is_refused_with_one_line") {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", common::bin(), "watch"])
        .output()
        .expect("setpriv");
    one_line_error(&out, "needs root");
}

#[test]
fn missing_tracefs_is_one_line() {
    if !testbed::require_root("missing_tracefs_is_one_line") {
        return;
    }
    one_line_error(
        &common::run(&["watch", "--tracefs", "/nonexistent/tracing"]),
        "tracefs not found at /nonexistent/tracing",
    );
}

#[test]
fn missing_btf_is_one_line() {
    if !testbed::require_root("missing_btf_is_one_line") {
        return;
    }
    one_line_error(&common::run(&["watch", "--btf", "/nonexistent/vmlinux"]), "no kernel BTF");
}

#[test]
fn bad_pid_is_one_line() {
    one_line_error(&common::run(&["watch", "-p", "999999999"]), "no such process");
    one_line_error(&common::run(&["watch", "--servicer", "0"]), "no such process");
}

#[test]
fn missing_hook_family_is_one_line() {
    if !testbed::require_root("missing_hook_family_is_one_line") {
        return;
    }
    let out = common::run(&["watch", "--attach=kprobe", "--duration", "1"]);
    one_line_error(&out, "no kprobe support");
}

#[test]
fn corrupt_or_foreign_trace_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.trace");
    std::fs::write(&garbage, b"this is not a trace file at all\n").unwrap();
    one_line_error(&common::run(&["report", garbage.to_str().unwrap()]), "not a reclaimscope trace");
    let missing = dir.path().join("missing.trace");
    one_line_error(&common::run(&["report", missing.to_str().unwrap()]), "missing.trace");
}
