//! `watch --all` reports real memcg reclaim from this kernel: a writer in a
//! small memory cgroup, and events carrying its pid and a plausible mask.

mod common;

use std::{process::Command, time::Duration};

#[test]
fn memcg_reclaim_of_a_writer_is_reported() {
    testbed::require_root("memcg_reclaim_of_a_writer_is_reported");
    let _lock = testbed::lock().unwrap();
    let memcg = testbed::Memcg::create("events", 64).unwrap();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let agent = common::Agent::start(&["watch", "--all", "--json", "--summary-every", "1"]);
    // Attached once the first summary arrives.
    agent.wait_started();
    let mut dd = Command::new("dd");
    dd.args(["if=/dev/zero", &format!("of={}", dir.path().join("f").display()), "bs=1M", "count=300", "conv=fsync"]);
    memcg.enter_on_spawn(&mut dd).unwrap();
    let child = dd.spawn().unwrap();
    let dd_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hit = agent.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "event" && v["event"] == "reclaim_end" && v["kind"] == "memcg" && v["pid"] == dd_pid
    });
    let ours = common::prog_ids_of(agent.pid());
    let (code, lines) = agent.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "watch did not exit cleanly on SIGINT");
    let (_, ev) =
        hit.unwrap_or_else(|| panic!("no memcg reclaim event for dd pid {dd_pid} among {} lines", lines.len()));
    let gfp = ev["gfp_raw"].as_u64().unwrap();
    assert_ne!(gfp & 0x400, 0, "__GFP_DIRECT_RECLAIM missing from {gfp:#x}");
    assert_eq!(ev["comm"], "dd");
    assert!(ev["latency_us"].as_f64().unwrap() > 0.0);
    assert!(ev["memcg"].as_str().unwrap().contains("reclaimscope"), "memcg: {}", ev["memcg"]);
    // The kernel names the mask itself: the decoded string is the kernel's.
    assert!(ev["gfp"].as_str().unwrap().starts_with("GFP_") || ev["gfp"].as_str().unwrap().starts_with("__GFP_"));
    let summary = lines.iter().find(|v| v["type"] == "final_summary").expect("final summary");
    assert!(summary["reclaim_memcg"].as_u64().unwrap() > 0);
    assert_eq!(summary["dropped"], 0);
    assert!(!ours.is_empty(), "the agent held no BPF program");
    assert_eq!(common::still_loaded(&ours), Vec::<u64>::new(), "programs left loaded after exit");
}
