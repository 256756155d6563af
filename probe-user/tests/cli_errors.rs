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
    testbed::require_root("not_root_is_refused_with_one_line");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", common::bin(), "watch"])
        .output()
        .expect("setpriv");
    one_line_error(&out, "needs root");
}

#[test]
fn missing_tracefs_is_one_line() {
    testbed::require_root("missing_tracefs_is_one_line");
    one_line_error(
        &common::run(&["watch", "--tracefs", "/nonexistent/tracing"]),
        "tracefs not found at /nonexistent/tracing",
    );
}

#[test]
fn missing_btf_is_one_line() {
    testbed::require_root("missing_btf_is_one_line");
    one_line_error(&common::run(&["watch", "--btf", "/nonexistent/vmlinux"]), "no kernel BTF");
}

#[test]
fn bad_pid_is_one_line() {
    one_line_error(&common::run(&["watch", "-p", "999999999"]), "no such process");
    one_line_error(&common::run(&["watch", "--servicer", "0"]), "no such process");
}

#[test]
fn missing_hook_family_is_one_line() {
    testbed::require_root("missing_hook_family_is_one_line");
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

#[test]
fn absurd_durations_are_one_line() {
    let max = u64::MAX.to_string();
    for (args, option) in [
        (vec!["watch", "--duration", &max], "--duration"),
        (vec!["watch", "--summary-every", &max], "--summary-every"),
        (vec!["monitor", "--deadlock-after", "1e20"], "--deadlock-after"),
        (vec!["record", "-o", "/nonexistent/x.trace", "--deadlock-after", "1e20"], "--deadlock-after"),
        (vec!["watch", "--deadlock-after", "inf"], "--deadlock-after"),
        (vec!["report", "--deadlock-after", "1e20", "/nonexistent/x.trace"], "--deadlock-after"),
    ] {
        one_line_error(&common::run(&args), &format!("{option} must be"));
    }
}

/// A small but real trace: a header and one finding.
fn trace_file(dir: &std::path::Path, gfp_format: Option<String>) -> std::path::PathBuf {
    use reclaimscope::trace::{Record, TraceWriter};
    let path = dir.join("t.trace");
    let header = common::test_header(gfp_format);
    let mut w = TraceWriter::create(&path, header, None, 1, false).unwrap();
    w.write(&Record::Finding(Box::new(common::test_finding("RS201", "d", "qsd")))).unwrap();
    w.finish().unwrap();
    path
}

/// Runs the binary with a stdout pipe whose reader is already gone.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(common::bin()).args(args).stdout(writer).output().unwrap()
}

/// Exit 141 and no error line: a closed stdout is not worth a message (log
/// lines the run printed before are fine).
fn quiet_sigpipe_exit(out: &std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{what}: {:?}, stderr: {stderr}", out.status);
    assert!(
        !stderr.contains("panicked") && !stderr.lines().any(|l| l.starts_with("reclaimscope:")),
        "{what}: {stderr}"
    );
}

#[test]
fn a_closed_stdout_ends_report_and_audit_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let trace = trace_file(dir.path(), None);
    let trace = trace.to_str().unwrap();
    quiet_sigpipe_exit(&with_closed_stdout(&["report", trace]), "report");
    quiet_sigpipe_exit(&with_closed_stdout(&["report", "--json", trace]), "report --json");
    quiet_sigpipe_exit(&with_closed_stdout(&["audit"]), "audit");
    quiet_sigpipe_exit(&with_closed_stdout(&["audit", "--json"]), "audit --json");
}

#[test]
fn watch_json_into_head_exits_quietly_and_detaches() {
    testbed::require_root("watch_json_into_head_exits_quietly_and_detaches");
    use std::io::BufRead;
    let mut child = Command::new(common::bin())
        .args(["watch", "--json", "--summary-every", "1", "--duration", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -1`: one line, then the reader goes away.
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("\"type\""), "{first}");
    let ours = common::prog_ids_of(child.id());
    drop(reader);
    let t = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(15), "watch kept running after its reader left");
    quiet_sigpipe_exit(&out, "watch --json | head -1");
    assert!(!ours.is_empty(), "watch held no BPF program");
    assert_eq!(common::still_loaded(&ours), Vec::<u64>::new(), "programs left loaded after EPIPE");
}

#[test]
fn a_crafted_gfp_table_is_a_limit_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!(
        r#"print fmt: "%s", __print_flags(REC->gfp_flags, "|", {{{}1{}, "X"}})"#,
        "(".repeat(200_000),
        ")".repeat(200_000)
    );
    let trace = trace_file(dir.path(), Some(deep));
    let out = common::run(&["report", trace.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let limit = stdout.lines().find(|l| l.starts_with("limit: the trace's GFP name table does not parse"));
    let limit = limit.unwrap_or_else(|| panic!("no limit line in:\n{stdout}"));
    assert!(limit.contains("nested deeper than 64 levels") && limit.len() < 300, "{limit}");
}

/// clap's own refusal: its first line names the option, the exit status is
/// 2, and it comes at once (before any probe is loaded).
fn refused_by_clap(args: &[&str], needle: &str) {
    let t = std::time::Instant::now();
    let out = common::run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error:") && first.contains(needle), "{args:?}: {stderr}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "{args:?} took {:?}", t.elapsed());
}

/// `--max-files 18446744073709551615` made every rotation try that many
/// renames, in the event loop, deaf to SIGTERM and --duration.
#[test]
fn an_absurd_max_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.trace");
    let out = out.to_str().unwrap();
    for n in ["18446744073709551615", "1001", "0"] {
        refused_by_clap(&["record", "-o", out, "--max-size", "4K", "--max-files", n, "--duration", "2"], "--max-files");
    }
    assert!(!dir.path().join("x.trace").exists());
}

/// The kernel's dev_t has 12 bits of major and 20 of minor: a larger
/// number would be folded onto another device.
#[test]
fn a_device_number_the_kernel_cannot_hold_is_refused() {
    for dev in ["4294967295:4294967295", "4096:0", "0:1048576"] {
        let arg = format!("/var/tmp/disk.img={dev}");
        refused_by_clap(&["watch", "--backing-file", &arg, "--duration", "1"], "MAJOR below 4096");
        refused_by_clap(&["audit", "--backing-file", &arg], "MAJOR below 4096");
        let arg = format!("42={dev}");
        refused_by_clap(&["report", "--format", "ftrace", "--servicer", &arg, "/dev/null"], "MAJOR below 4096");
    }
}

/// `record -o /etc/fstab` used to load the probes for 1.8 s and then
/// replace the file with a trace. Whoever runs it, and before any probe is
/// loaded, a file that is not a trace is refused, and so is a symlink.
#[test]
fn record_refuses_to_replace_what_is_not_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let fstab = dir.path().join("fstab");
    let precious = b"UUID=0123 / ext4 defaults 0 1\n";
    std::fs::write(&fstab, precious).unwrap();
    let link = dir.path().join("link.trace");
    std::os::unix::fs::symlink(&fstab, &link).unwrap();
    for (path, needle) in [(&fstab, "is not a reclaimscope trace"), (&link, "is a symbolic link")] {
        let t = std::time::Instant::now();
        let out = common::run(&["record", "-o", path.to_str().unwrap(), "--duration", "1"]);
        let took = t.elapsed();
        one_line_error(&out, needle);
        eprintln!("record -o {} refused in {:.0} ms", path.display(), took.as_secs_f64() * 1e3);
        assert!(took < std::time::Duration::from_millis(500), "refused only after {took:?}");
        assert_eq!(std::fs::read(&fstab).unwrap(), precious);
    }
    let msg = String::from_utf8_lossy(&common::run(&["record", "-o", fstab.to_str().unwrap()]).stderr).into_owned();
    assert!(msg.contains("--force"), "the refusal says how to insist: {msg}");
}

/// A trace's header and findings come from whoever made the file: printed
/// raw, their escape sequences retitled the terminal and cleared it.
#[test]
fn report_prints_no_terminal_escape_from_the_file() {
    use reclaimscope::trace::{Record, TraceHeader, TraceWriter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("escapes.trace");
    let hostile = "6.18\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}1m\r";
    let header = TraceHeader {
        agent_version: hostile.into(),
        kernel_release: hostile.into(),
        hostname: hostile.into(),
        started_unix_ns: 0,
        command: hostile.into(),
        topology: Default::default(),
        attach: Default::default(),
        gfp_format: Some(hostile.into()),
        monotonic_to_unix_ns: None,
    };
    let mut w = TraceWriter::create(&path, header, None, 1, false).unwrap();
    w.write(&Record::Finding(Box::new(common::test_finding(hostile, hostile, hostile)))).unwrap();
    w.finish().unwrap();
    for json in [false, true] {
        let mut args = vec!["report", path.to_str().unwrap()];
        if json {
            args.insert(1, "--json");
        }
        let out = common::run(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let control = stdout.chars().find(|c| c.is_control() && *c != '\n' && *c != '\t');
        assert_eq!(control, None, "{args:?} printed a control character:\n{stdout}");
        assert!(stdout.contains("owned"), "{stdout}");
    }
}

/// Opening a FIFO for reading waits for a writer: report hung forever.
#[test]
fn report_refuses_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.trace");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in [fifo.as_path(), dir.path(), std::path::Path::new("/dev/zero")] {
        let mut child = Command::new(common::bin())
            .args(["report", path.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > std::time::Duration::from_secs(5) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("report {} still runs after 5 s", path.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        one_line_error(&child.wait_with_output().unwrap(), "not a regular file");
    }
}
