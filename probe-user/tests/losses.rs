//! Losses on a monitored host are counted and survived, never fatal: here,
//! a topology with more servicer processes than the kernel's SERVICERS map
//! holds (probe_common::maps::MAX_SERVICERS). Needs root; loads the BPF
//! programs and starts processes, builds no storage stack.

mod common;

use std::time::{Duration, Instant};

use probe_common::maps::MAX_SERVICERS;
use serde_json::Value;

/// Servicer processes named on the command line: this many more than the map holds.
const BEYOND: u32 = 8;

fn n(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[k]).as_u64().unwrap_or_else(|| panic!("no {} in {v}", path.join(".")))
}

/// 4,104 processes named with --servicer: the agent writes the 4,096 the
/// map holds, counts the rest as left out at every sync, and keeps running
/// (it used to end with "SERVICERS update" at its first sync).
#[test]
fn a_topology_larger_than_the_filter_maps_is_followed_as_far_as_it_fits() {
    testbed::require_root("a_topology_larger_than_the_filter_maps_is_followed_as_far_as_it_fits");
    // Not a storage stack, but 4,000 processes disturb whoever else measures.
    let _lock = testbed::lock().unwrap();
    let t = Instant::now();
    let sleepers = common::Crowd::spawn((MAX_SERVICERS + BEYOND) as usize, 0);
    eprintln!("{} sleepers in {:.1} s", sleepers.children.len(), t.elapsed().as_secs_f64());
    let mut args: Vec<String> = ["monitor", "--summary-every", "1", "--refresh-every", "1"].map(String::from).into();
    for c in &sleepers.children {
        args.extend(["--servicer".into(), c.id().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = common::Agent::start(&args);
    // Servicers that discovery finds on this host on its own come on top.
    let left_out = |v: &Value| v["type"] == "summary" && v["left_out"]["servicers"].as_u64() >= Some(BEYOND as u64);
    let first = agent.wait_for(common::STARTUP, left_out).map(|(_, v)| v);
    // Two more syncs later it still runs, and counted them too.
    let later = first.as_ref().and_then(|f| {
        let refreshes = n(f, &["topology_refreshes"]);
        let after = move |v: &Value| left_out(v) && v["topology_refreshes"].as_u64() >= Some(refreshes + 2);
        agent.wait_for(Duration::from_secs(60), after).map(|(_, v)| v)
    });
    let (code, lines) = agent.stop(libc::SIGTERM);
    drop(sleepers);
    let first =
        first.unwrap_or_else(|| panic!("no summary with {BEYOND} servicers left out; the agent said:\n{lines:#?}"));
    let later = later.unwrap_or_else(|| panic!("no summary two syncs later; the agent said:\n{lines:#?}"));
    eprintln!("first: {}\nlater: {}", first["left_out"], later["left_out"]);
    assert_eq!(code, Some(0), "the agent did not end cleanly on SIGTERM");
    assert!(n(&first, &["filter_map_full"]) >= BEYOND as u64, "{first}");
    // Counted again at the later syncs (two refreshes may come as one sync).
    assert!(n(&later, &["filter_map_full"]) >= n(&first, &["filter_map_full"]) + BEYOND as u64, "{later}");
    assert_eq!(n(&later, &["left_out", "backing_files"]), 0, "{later}");
    // The kernel's map is full, not short: as many servicers as it holds are followed.
    assert!(n(&later, &["servicers"]) >= (MAX_SERVICERS + BEYOND) as u64, "{later}");
    let fin = lines.iter().find(|v| v["type"] == "final_summary").expect("final summary");
    assert!(n(fin, &["filter_map_full"]) >= n(&later, &["filter_map_full"]), "{fin}");
}
