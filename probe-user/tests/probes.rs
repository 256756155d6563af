//! Attach strategies on this kernel: every program passes the verifier
//! where the kernel allows loading it, and `probes` reports tracepoints with
//! the kernel's reasons for skipping kprobes and fentry.

mod common;

use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let out = common::run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn every_program_goes_through_the_verifier() {
    if !testbed::require_root("every_program_goes_through_the_verifier") {
        return;
    }
    let v = json(&["probes", "--verify", "--json"]);
    let progs = v.as_array().unwrap();
    assert!(progs.len() >= 30, "only {} programs", progs.len());
    for p in progs {
        let name = p["program"].as_str().unwrap();
        let family = p["family"].as_str().unwrap();
        match family {
            // Kprobes load here (the verifier runs) even though they cannot attach.
            "kprobe" | "tracepoint" | "tp_btf" => assert_eq!(p["loaded"], true, "{name}: {}", p["error"]),
            // This VM refuses BPF trampolines: the failure must be the kernel's EPERM, cleanly reported.
            "fentry" => {
                assert_eq!(p["loaded"], false, "{name} loaded: this kernel was expected to refuse fentry");
                let err = p["error"].as_str().unwrap();
                assert!(err.contains("Operation not permitted") || err.contains("EPERM"), "{name}: {err}");
            }
            other => panic!("unknown family {other}"),
        }
    }
}

#[test]
fn probes_reports_tracepoints_and_the_kernels_reasons() {
    if !testbed::require_root("probes_reports_tracepoints_and_the_kernels_reasons") {
        return;
    }
    let v = json(&["probes", "--json"]);
    let hooks = v["hooks"].as_array().unwrap();
    let hook = |n: &str| hooks.iter().find(|h| h["hook"] == n).unwrap_or_else(|| panic!("no hook {n}"));
    let reclaim = hook("reclaim");
    assert_eq!(reclaim["family"], "tracepoint");
    assert!(reclaim["targets"].as_array().unwrap().iter().any(|t| t == "vmscan:mm_vmscan_memcg_reclaim_begin"));
    let skipped = reclaim["skipped"].as_array().unwrap();
    let reason =
        |f: &str| skipped.iter().find(|s| s["family"] == f).map(|s| s["reason"].as_str().unwrap().to_owned()).unwrap();
    assert!(reason("kprobe").contains("no kprobe support"), "{}", reason("kprobe"));
    assert!(reason("fentry").contains("Operation not permitted"), "{}", reason("fentry"));
    assert_eq!(hook("reclaim_write")["family"], "tp_btf");
    // No tracepoint exists for the slowpath: missing, and it says what that costs.
    let slow = hook("alloc_slowpath");
    assert!(slow["family"].is_null());
    assert!(slow["degraded"].as_str().unwrap().contains("hazard"));
}

#[test]
fn forcing_kprobes_fails_naming_the_missing_support() {
    if !testbed::require_root("forcing_kprobes_fails_naming_the_missing_support") {
        return;
    }
    let out = common::run(&["probes", "--attach=kprobe"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reclaim") && stderr.contains("no kprobe support"), "{stderr}");
}
