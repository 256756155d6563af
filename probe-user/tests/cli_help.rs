//! The command line as a user meets it: examples in every help page, human
//! durations, `exec --io-flusher`'s error without CAP_SYS_RESOURCE, and
//! the man pages and completions the package ships. No root, no BPF.

mod common;

use std::process::Command;

const SUBCOMMANDS: &[&str] = &["watch", "monitor", "record", "report", "probes", "audit", "exec"];

#[test]
fn every_help_page_shows_examples() {
    for sub in SUBCOMMANDS {
        for flag in ["-h", "--help"] {
            let out = common::run(&[sub, flag]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{sub} {flag}");
            assert!(text.lines().any(|l| l == "Examples:"), "{sub} {flag} shows no Examples:\n{text}");
            assert!(text.contains(&format!("reclaimscope {sub}")), "{sub} {flag}: no example of {sub}:\n{text}");
        }
    }
}

#[test]
fn human_durations_are_accepted_and_plain_seconds_still_are() {
    // --help after valid options: clap parses them first, then prints help.
    for d in ["10m", "1h", "1h30m", "90", "2.5"] {
        let out = common::run(&["report", "--deadlock-after", d, "--help"]);
        assert!(out.status.success(), "--deadlock-after {d}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for d in ["10m", "1h", "45"] {
        let out = common::run(&["watch", "--duration", d, "--summary-every", "1m", "--help"]);
        assert!(out.status.success(), "--duration {d}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = common::run(&["watch", "--duration", "10 parsecs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("e.g. 30, 2.5, 10m, 1h30m"));
    let out = common::run(&["watch", "--duration", "1.5"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a whole number of seconds"));
}

/// CAP_SYS_RESOURCE in this process's effective set (bit 24).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0
}

/// The kernel's truth either way: without CAP_SYS_RESOURCE (this project's
/// machine) one clear line and exit 126, CMD never run; with it, CMD runs
/// with PF_MEMALLOC_NOIO (0x80000) and PF_LOCAL_THROTTLE (0x100000) set.
#[test]
fn exec_io_flusher_sets_the_flags_or_says_why_not() {
    let marker = tempfile::NamedTempFile::new().unwrap();
    let script = format!("cut -d' ' -f9 /proc/self/stat > {}", marker.path().display());
    let out = common::run(&["exec", "--io-flusher", "--", "sh", "-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let written = std::fs::read_to_string(marker.path()).unwrap();
    if has_cap_sys_resource() {
        assert!(out.status.success(), "{stderr}");
        let flags: u64 = written.trim().parse().unwrap();
        assert_eq!(flags & 0x180000, 0x180000, "task flags {flags:#x}");
    } else {
        println!("no CAP_SYS_RESOURCE here: checking the refusal");
        assert_eq!(out.status.code(), Some(126), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains("CAP_SYS_RESOURCE") && lines[0].contains("EPERM"), "{stderr}");
        assert!(written.is_empty(), "CMD ran although the flag could not be set");
    }
}

#[test]
fn exec_needs_a_command_and_reports_a_missing_one() {
    assert_eq!(common::run(&["exec", "--io-flusher"]).status.code(), Some(2));
    // Without --io-flusher nothing is set: exec is refused by clap.
    assert_eq!(common::run(&["exec", "--", "true"]).status.code(), Some(2));
}

#[test]
fn generate_writes_a_man_page_per_subcommand_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin()).arg("generate").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let man = dir.path().join("man");
    for sub in SUBCOMMANDS {
        let page = std::fs::read_to_string(man.join(format!("reclaimscope-{sub}.1"))).unwrap();
        assert!(page.contains(".TH reclaimscope-") && page.contains("Examples:"), "{sub}: {page}");
    }
    assert!(man.join("reclaimscope.1").exists());
    assert!(!man.join("reclaimscope-generate.1").exists(), "the hidden command has a page");
    let comp = dir.path().join("completions");
    let bash = std::fs::read_to_string(comp.join("reclaimscope.bash")).unwrap();
    assert!(bash.contains("complete") && bash.contains("--io-flusher"));
    assert!(std::fs::read_to_string(comp.join("_reclaimscope")).unwrap().starts_with("#compdef reclaimscope"));
    assert!(std::fs::read_to_string(comp.join("reclaimscope.fish")).unwrap().contains("complete -c reclaimscope"));
}
