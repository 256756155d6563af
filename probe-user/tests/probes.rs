//! Attach strategies on the running kernel, whatever it is: every program
//! the kernel accepts passes the verifier, and each hook uses the best
//! implementation the kernel allows. What the kernel allows is read from
//! the kernel itself (the kprobe PMU, the verifier's verdict on each
//! program), never assumed from one machine.

mod common;

use std::collections::HashMap;

use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let out = common::run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// What the kernel allows, independently of the loader's choices.
struct Kernel {
    kprobes: bool,
    /// program → (loaded, error)
    verified: HashMap<String, (bool, String)>,
}

impl Kernel {
    fn read() -> Kernel {
        let v = json(&["probes", "--verify", "--json"]);
        let verified = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let name = p["program"].as_str().unwrap().to_owned();
                (name, (p["loaded"] == true, p["error"].as_str().unwrap_or_default().to_owned()))
            })
            .collect();
        Kernel { kprobes: std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists(), verified }
    }

    /// The verifier accepted every one of these programs.
    fn loads(&self, progs: &[&str]) -> bool {
        progs.iter().all(|p| self.verified.get(*p).unwrap_or_else(|| panic!("no program {p}")).0)
    }
}

#[test]
fn every_program_the_kernel_accepts_passes_the_verifier() {
    testbed::require_root("every_program_the_kernel_accepts_passes_the_verifier");
    let k = Kernel::read();
    assert!(k.verified.len() >= 30, "only {} programs", k.verified.len());
    let fentry: Vec<(&String, &(bool, String))> =
        k.verified.iter().filter(|(n, _)| n.starts_with("fe_") || n.starts_with("fx_")).collect();
    for (name, (loaded, err)) in &k.verified {
        let family_ok = match name.split('_').next().unwrap() {
            // Kprobe and tracepoint programs go through the verifier on any
            // kernel with BPF, attachable or not.
            "kp" | "krp" | "tp" => *loaded,
            // A BTF tracepoint loads where the kernel has it.
            "tpbtf" => *loaded || err.contains("no BTF tracepoint"),
            // A trampoline program loads unless the kernel refuses
            // trampolines altogether, lacks the function, or lacks the
            // helper an exit program needs for the return value (5.17+).
            // 5.10's verifier logs "arg#0 type is not a struct" for every
            // Rust program: a log line, never a reason to accept a failure.
            "fe" | "fx" => {
                *loaded
                    || err.contains("Operation not permitted")
                    || err.contains("not in kernel BTF")
                    || err.contains("notrace")
                    || (name.starts_with("fx_") && err.contains("invalid func unknown#"))
            }
            other => panic!("{name}: unknown program family {other}"),
        };
        assert!(family_ok, "{name}: {err}");
    }
    // Refusing trampolines is a policy of the whole kernel, never of one
    // program: of those whose function this kernel has, all or none get EPERM.
    let present: Vec<_> =
        fentry.iter().filter(|(_, (_, e))| !e.contains("not in kernel BTF") && !e.contains("notrace")).collect();
    let eperm = present.iter().filter(|(_, (_, e))| e.contains("Operation not permitted")).count();
    assert!(eperm == 0 || eperm == present.len(), "{eperm} of {} trampoline programs got EPERM", present.len());
}

#[test]
fn each_hook_uses_the_best_implementation_the_kernel_allows() {
    testbed::require_root("each_hook_uses_the_best_implementation_the_kernel_allows");
    let k = Kernel::read();
    let v = json(&["probes", "--json"]);
    let hooks = v["hooks"].as_array().unwrap();
    let family = |n: &str| {
        let h = hooks.iter().find(|h| h["hook"] == n).unwrap_or_else(|| panic!("no hook {n}"));
        h["family"].as_str().map(str::to_owned)
    };
    let fentry = |progs: &[&str]| k.loads(progs);

    // Reclaim: trampolines where they load; else the tracepoints, which see
    // the same and cost less per call than kprobes (docs/kernels.md).
    let reclaim_fentry = [
        "fe_try_to_free_pages",
        "fx_try_to_free_pages",
        "fe_try_to_free_mem_cgroup_pages",
        "fx_try_to_free_mem_cgroup_pages",
    ];
    let want = if fentry(&reclaim_fentry) { "fentry" } else { "tracepoint" };
    assert_eq!(family("reclaim").as_deref(), Some(want));

    // Hooks with no tracepoint: trampoline, else kprobe, else missing.
    let best = |fe: &[&str]| {
        if fentry(fe) {
            Some("fentry".to_owned())
        } else if k.kprobes {
            Some("kprobe".to_owned())
        } else {
            None
        }
    };
    assert_eq!(family("shrink_node"), best(&["fe_shrink_node"]));
    assert_eq!(family("alloc_slowpath"), best(&["fe_wakeup_kswapd"]).or(best(&["fe_alloc_pages_slowpath"])));
    // Writeback waits: the BTF raw tracepoint where it loads. It sees what
    // the trampoline sees but fires only when a folio is under writeback,
    // not on every call (docs/kernels.md, "What the costs decided").
    if k.loads(&["tpbtf_folio_wait_writeback"]) {
        assert_eq!(family("writeback_wait").as_deref(), Some("tp_btf"));
    } else if fentry(&["fe_folio_wait_writeback"]) {
        assert_eq!(family("writeback_wait").as_deref(), Some("fentry"));
    }
    if fentry(&["fe_super_cache_scan"]) {
        assert_eq!(family("shrinker").as_deref(), Some("fentry"));
    }

    // Where kprobes or trampolines work, nothing the kernel could support is missing.
    let missing: Vec<&Value> = hooks.iter().filter(|h| h["family"].is_null()).collect();
    if k.kprobes || fentry(&["fe_shrink_node"]) {
        assert!(missing.is_empty(), "missing on a kernel with kprobes or fentry: {missing:#?}");
    } else {
        for h in &missing {
            let why = h["skipped"].to_string();
            assert!(why.contains("no kprobe support"), "{}: {why}", h["hook"]);
            assert!(h["degraded"].as_str().unwrap().contains("hazard"), "{}", h["hook"]);
        }
    }
}

#[test]
fn forcing_kprobes_works_exactly_where_the_kernel_has_them() {
    testbed::require_root("forcing_kprobes_works_exactly_where_the_kernel_has_them");
    let out = common::run(&["probes", "--attach=kprobe", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert!(out.status.success(), "{stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let reclaim = v["hooks"].as_array().unwrap().iter().find(|h| h["hook"] == "reclaim").unwrap().clone();
        assert_eq!(reclaim["family"], "kprobe");
        assert!(reclaim["targets"].as_array().unwrap().iter().any(|t| t == "try_to_free_mem_cgroup_pages"));
    } else {
        assert!(!out.status.success());
        assert!(stderr.contains("reclaim") && stderr.contains("no kprobe support"), "{stderr}");
    }
}
