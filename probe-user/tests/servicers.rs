//! Every kind of servicer, on real kernel modules: XFS on dm-zoned on
//! tcmu-runner's ZBC handler (the stack of the 2019 report), XFS on the
//! kernel nbd client served by nbd-server or qemu-nbd, XFS on ublk served by
//! two rublk releases, XFS on dm over a served device, a second FUSE
//! daemon (bindfs), XFS on iSCSI served by tgtd. For each: the audit names
//! the servicer thread by thread with the kernel's verdict on its
//! protection, and `watch` flags it under memory-cgroup pressure through
//! the filesystem above. Kernel targets (LIO over iSCSI, nvmet over
//! NVMe/TCP, knfsd under a loop device) have no daemon: the audit must
//! still name what serves the device, and its verdict.
//!
//! A kernel without the servicer's module (the project's own VM kernel has
//! no nbd, tcmu or ublk) must refuse the stack with a clear error: that is
//! its truth, and what the test then asserts.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use reclaimscope::output::audit::audit;
use reclaimscope::topology::{Dev, Extra, Protection, ServicerKind, Topology};
use serde_json::{json, Value};
use testbed::{Dm, Servicer, StorageStack, StorageStackSpec};

fn module(m: &str) -> bool {
    Path::new("/sys/module").join(m).exists()
}

/// None when this kernel can build the servicer's device (and dm layer).
fn missing_module(servicer: Servicer, dm: Option<Dm>) -> Option<&'static str> {
    if dm.is_some() && !module("dm_mod") {
        return Some("dm");
    }
    match servicer {
        Servicer::NbdServer | Servicer::QemuNbd if !module("nbd") => Some("nbd"),
        Servicer::TcmuZbc if !(module("target_core_user") && module("tcm_loop") && module("dm_zoned")) => Some("tcmu"),
        Servicer::Ublk { .. } if !module("ublk_drv") => Some("ublk"),
        Servicer::IscsiTgt if !module("iscsi_tcp") => Some("iscsi_tcp"),
        Servicer::IscsiLio if !(module("iscsi_tcp") && module("target_core_file") && module("iscsi_target_mod")) => {
            Some("LIO iSCSI")
        }
        Servicer::Nvmet if !(module("nvmet_tcp") && module("nvme_tcp")) => Some("nvmet"),
        Servicer::NfsLoopback if !(module("nfsd") && module("nfsv4")) => Some("nfsd"),
        _ => None,
    }
}

/// What the audit must say about the servicer.
struct Expect {
    kind: ServicerKind,
    comm: &'static str,
    protected: bool,
}

/// The device whose I/O the servicer completes: the one under dm (if any)
/// for block servicers, the bottom loop device's FUSE file for FUSE daemons.
fn served(stack: &StorageStack, t: &Topology) -> Dev {
    match &stack.served_device {
        Some(d) => {
            let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(d).unwrap());
            Dev::from_st_dev(rdev)
        }
        None => {
            let fuse = stack.fuse_mount.as_ref().expect("a FUSE servicer's mount");
            t.mounts.iter().find(|m| &m.mount_point == fuse).map(|m| m.dev).expect("the FUSE mount")
        }
    }
}

/// Builds the stack (servicer in a 256 MiB memcg), audits it, watches a
/// write through it, and returns the agent's lines; the stack is torn down.
fn scenario(name: &str, servicer: Servicer, dm: Option<Dm>, expect: Expect) -> Option<Vec<Value>> {
    launched_scenario(name, servicer, dm, expect, &[])
}

/// [`scenario`], the servicer started through `launcher` (which execs it).
fn launched_scenario(
    name: &str,
    servicer: Servicer,
    dm: Option<Dm>,
    expect: Expect,
    launcher: &[&str],
) -> Option<Vec<Value>> {
    testbed::require_root(name);
    let _lock = testbed::lock().unwrap();
    let spec = StorageStackSpec { servicer, levels: 1, image_mb: 1024, memcg_limit_mb: Some(256), dm };
    if let Some(m) = missing_module(servicer, dm) {
        let err = format!("{:#}", StorageStack::build(name, &spec).unwrap_err());
        println!("{name}: this kernel has no {m}: {err}");
        assert!(err.contains("this kernel"), "unclear error: {err}");
        common::record_result(name, json!({ "result": format!("not built: the kernel has no {m}") }));
        return None;
    }
    let mut stack = StorageStack::build_with_launcher(name, &spec, launcher).expect("building the stack");
    let pid = stack.daemon_pid.expect("a userspace servicer");
    let top = stack.top().clone();

    // The audit: the servicer, its threads, the verdict.
    let t = Topology::discover(&Extra::default()).expect("discover");
    let s = t
        .servicer_by_tgid(pid)
        .unwrap_or_else(|| panic!("{name}: the audit does not name pid {pid}: {:#?}", t.servicers));
    assert_eq!(s.kind, expect.kind, "{name}");
    assert!(s.comm.starts_with(expect.comm), "{name}: comm {}", s.comm);
    assert_eq!(s.serves, served(&stack, &t), "{name}: serves");
    assert!(s.under_mounts.contains(&top.mountpoint), "{name}: under {:?}", s.under_mounts);
    assert!(!s.threads.is_empty(), "{name}: no threads listed");
    assert_eq!(s.protection.is_protected(), expect.protected, "{name}: {:?} {:#?}", s.protection, s.threads);
    if !expect.protected {
        assert!(s.threads.iter().any(|th| th.protection == Protection::Unprotected));
    }
    let family: Vec<u32> =
        t.servicers.iter().filter(|x| x.serves == s.serves && x.comm == s.comm).filter_map(|x| x.tgid).collect();
    let out = audit(&t);
    assert!(out.text.contains(&s.comm), "{name}: the printed audit does not name {}:\n{}", s.comm, out.text);
    let stack_path = t.path_of(Dev::new(top.devt.0, top.devt.1)).expect("the top device is stacked");
    assert_eq!(stack_path.upper.as_ref().unwrap().mount_point, top.mountpoint);

    // Detection under pressure: only the servicer is in the memcg.
    let agent = common::Agent::start(&["watch", "--json", "--summary-every", "1"]);
    agent.wait_started();
    common::write_through(&mut stack, 384);
    std::thread::sleep(Duration::from_secs(2));
    let (code, lines) = agent.stop(libc::SIGINT);
    let pressure = stack.memcg.as_ref().unwrap().pressure();
    stack.teardown().expect("teardown");
    assert_eq!(code, Some(0));
    // The processes of that servicer: qemu-nbd -c is two, sharing the data.
    let pids: Vec<u32> = family.clone();
    let ours: Vec<&Value> = common::findings(&lines)
        .into_iter()
        .filter(|f| f["servicer"]["tgid"].as_u64().is_some_and(|t| pids.contains(&(t as u32))))
        .collect();
    let hazard = ours.iter().find(|f| f["rule"] == "RS001" || f["rule"] == "RS002");
    let summary = lines.iter().find(|v| v["type"] == "final_summary").cloned().unwrap_or_default();
    println!("{name}: {} findings for the servicer, memcg {pressure:?}, summary {summary}", ours.len());
    if expect.protected {
        assert!(hazard.is_none(), "{name}: a protected servicer was flagged: {hazard:#?}");
        common::record_result(
            name,
            json!({ "result": format!("audit: {} protected ({:?}); no hazard over {} memcg reclaims", s.comm, s.protection, summary["reclaim_memcg"]) }),
        );
    } else {
        let h = hazard.unwrap_or_else(|| {
            panic!("{name}: no hazard for {} (pid {pid}); memcg {pressure:?}; got {lines:#?}", s.comm)
        });
        assert_eq!(h["upper_fs"]["mount_point"], top.mountpoint.display().to_string(), "{name}");
        common::record_result(
            name,
            json!({ "result": format!("audit: {} unprotected, {} threads; {} {}", s.comm, s.threads.len(), h["rule"].as_str().unwrap_or("?"), h["detail"].as_str().unwrap_or("?")) }),
        );
    }
    Some(lines)
}

#[test]
fn seed_tcmu_runner_under_dm_zoned_under_xfs() {
    let expect = Expect { kind: ServicerKind::Tcmu, comm: "tcmu-runner", protected: false };
    scenario("seed_tcmu_zbc", Servicer::TcmuZbc, None, expect);
}

#[test]
fn nbd_server_behind_the_kernel_nbd_client() {
    let expect = Expect { kind: ServicerKind::NbdServer, comm: "nbd-server", protected: false };
    scenario("nbd_server", Servicer::NbdServer, None, expect);
}

#[test]
fn qemu_nbd_connecting_its_own_device_under_dm_linear() {
    let expect = Expect { kind: ServicerKind::Nbd, comm: "qemu-nbd", protected: false };
    scenario("qemu_nbd_dm_linear", Servicer::QemuNbd, Some(Dm::Linear), expect);
}

#[test]
fn qsd_fuse_under_dm_crypt() {
    let expect = Expect { kind: ServicerKind::Fuse, comm: "qemu-storage", protected: false };
    scenario("qsd_dm_crypt", Servicer::QsdFuse, Some(Dm::Crypt), expect);
}

#[test]
fn tgtd_behind_an_iscsi_session() {
    let expect = Expect { kind: ServicerKind::IscsiTarget, comm: "tgtd", protected: false };
    scenario("iscsi_tgtd", Servicer::IscsiTgt, None, expect);
}

/// What the audit must say about a servicer made of kernel threads.
struct KernelExpect {
    kind: ServicerKind,
    /// Whether discovery reports it as kernel threads (PF_KTHREAD).
    kernel: bool,
    protected: bool,
    /// Its threads have pids of their own (LIO, knfsd), so `watch` must
    /// flag their reclaim under machine-wide pressure; `Err` says why a
    /// scenario does not check that.
    watched: Result<(), &'static str>,
}

/// A stack served by kernel threads, which have no daemon pid to look the
/// servicer up by: the audit must name a servicer of the expected kind for
/// the served device, with the filesystem above it and its verdict.
fn kernel_scenario(name: &str, servicer: Servicer, expect: KernelExpect) {
    testbed::require_root(name);
    let _lock = testbed::lock().unwrap();
    let spec = StorageStackSpec { servicer, levels: 1, image_mb: 1024, memcg_limit_mb: None, dm: None };
    if let Some(m) = missing_module(servicer, None) {
        let err = format!("{:#}", StorageStack::build(name, &spec).unwrap_err());
        println!("{name}: this kernel has no {m}: {err}");
        assert!(err.contains("this kernel"), "unclear error: {err}");
        common::record_result(name, json!({ "result": format!("not built: the kernel has no {m}") }));
        return;
    }
    let mut stack = StorageStack::build(name, &spec).expect("building the stack");
    assert!(stack.daemon_pid.is_none(), "{name}: a kernel target has no daemon");
    let top = stack.top().clone();
    let t = Topology::discover(&Extra::default()).expect("discover");
    let serves = served(&stack, &t);
    let s = t.servicers.iter().find(|s| s.serves == serves && s.kind == expect.kind).unwrap_or_else(|| {
        panic!("{name}: the audit names no {:?} serving {serves:?}: {:#?}", expect.kind, t.servicers)
    });
    assert_eq!(s.kernel, expect.kernel, "{name}: kernel threads? {s:#?}");
    assert!(s.under_mounts.contains(&top.mountpoint), "{name}: under {:?}", s.under_mounts);
    assert_eq!(s.protection.is_protected(), expect.protected, "{name}: {:?} {:#?}", s.protection, s.threads);
    let out = audit(&t);
    assert!(out.text.contains(&s.comm), "{name}: the printed audit does not name {}:\n{}", s.comm, out.text);
    let (comm, protection) = (s.comm.clone(), s.protection);
    let threads: Vec<u32> =
        t.servicers.iter().filter(|x| x.serves == serves && x.kind == expect.kind).filter_map(|x| x.tgid).collect();
    let watched = match expect.watched {
        Ok(()) => watch_under_machine_pressure(name, &mut stack, &threads, &top.mountpoint),
        Err(why) => format!("watch not checked: {why}"),
    };
    stack.teardown().expect("teardown");
    common::record_result(
        name,
        json!({ "result": format!("audit: {comm} ({}) {protection}; {watched}", expect.kind) }),
    );
}

/// Writes through the stack while a hog leaves the machine 250 MiB, until
/// `watch` flags one of the kernel servicer's `threads` (RS001) or three
/// rounds of 300 MiB have gone by: what it reported, in words.
fn watch_under_machine_pressure(
    name: &str,
    stack: &mut StorageStack,
    threads: &[u32],
    upper: &std::path::Path,
) -> String {
    let agent = common::Agent::start(&["watch", "--json", "--summary-every", "1"]);
    agent.wait_started();
    let hog = testbed::Hog::start(250).expect("a memory hog");
    let ours = |v: &Value| {
        v["type"] == "finding"
            && v["rule"] == "RS001"
            && v["servicer"]["tgid"].as_u64().is_some_and(|t| threads.contains(&(t as u32)))
    };
    let mut hit = None;
    for _ in 0..3 {
        common::write_through(stack, 300);
        hit = agent.wait_for(Duration::from_secs(2), ours);
        if hit.is_some() {
            break;
        }
    }
    let hog_mb = hog.mb;
    drop(hog);
    let (code, lines) = agent.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "{name}: watch exit");
    let (_, h) = hit.unwrap_or_else(|| {
        let summary = lines.iter().find(|v| v["type"] == "final_summary");
        panic!("{name}: no RS001 for threads {threads:?} under machine-wide pressure; summary {summary:?}")
    });
    assert_eq!(h["upper_fs"]["mount_point"], upper.display().to_string(), "{name}");
    format!(
        "watch: RS001 in {} (pid {}), {}, under a {hog_mb} MiB hog",
        h["servicer"]["comm"].as_str().unwrap_or("?"),
        h["servicer"]["tgid"],
        h["gfp"].as_str().unwrap_or("?"),
    )
}

#[test]
fn lio_kernel_threads_behind_an_iscsi_session() {
    let expect = KernelExpect { kind: ServicerKind::IscsiTarget, kernel: true, protected: false, watched: Ok(()) };
    kernel_scenario("iscsi_lio", Servicer::IscsiLio, expect);
}

#[test]
fn nvmet_behind_an_nvme_tcp_controller() {
    // nvmet's work runs in shared kworkers, followed only through write
    // frames on its namespace file, whose inode the guests cannot probe
    // (their root is 9p, where discovery never walks a path).
    let watched =
        Err("nvmet's kworkers are followed by the namespace file's inode, which a 9p-rooted guest cannot probe");
    let expect = KernelExpect { kind: ServicerKind::NvmeTarget, kernel: true, protected: false, watched };
    kernel_scenario("nvmet_tcp", Servicer::Nvmet, expect);
}

#[test]
fn knfsd_behind_a_loop_device_on_nfs() {
    let expect = KernelExpect { kind: ServicerKind::NfsServer, kernel: true, protected: false, watched: Ok(()) };
    kernel_scenario("nfs_loopback", Servicer::NfsLoopback, expect);
}

/// CAP_SYS_RESOURCE in this process's effective set (bit 24).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0
}

/// The protection offered without patching a servicer: the qsd hazard stack
/// (flagged by qsd_fuse_under_dm_crypt and detection.rs when started
/// directly), with qemu-storage-daemon started through `reclaimscope exec
/// --io-flusher`. The audit must judge every thread protected
/// (PF_MEMALLOC_NOIO|PF_LOCAL_THROTTLE, inherited through execve and by new
/// threads) and `watch` must stay quiet under the same memcg pressure.
/// PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE: where root lacks it (this
/// project's own machine) the kernel's truth is the refusal, asserted here;
/// the Debian guests of the VM suite have it and run the scenario.
#[test]
fn qsd_started_through_exec_io_flusher_is_protected_and_quiet() {
    let name = "qsd_exec_io_flusher";
    testbed::require_root(name);
    if !has_cap_sys_resource() {
        let out = common::run(&["exec", "--io-flusher", "--", "true"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(126), "{stderr}");
        assert!(stderr.contains("CAP_SYS_RESOURCE"), "{stderr}");
        println!("{name}: no CAP_SYS_RESOURCE here, exec --io-flusher refuses: {}", stderr.trim());
        common::record_result(
            name,
            json!({ "result": "not run: root lacks CAP_SYS_RESOURCE (exec --io-flusher refused with EPERM)" }),
        );
        return;
    }
    let launcher = [common::bin(), "exec", "--io-flusher", "--"];
    let expect = Expect { kind: ServicerKind::Fuse, comm: "qemu-storage", protected: true };
    let lines = launched_scenario(name, Servicer::QsdFuse, None, expect, &launcher).expect("qsd needs no module");
    // Not only no hazard: no finding at all names a qemu-storage-daemon.
    let qsd: Vec<&Value> = common::findings(&lines)
        .into_iter()
        .filter(|f| f["servicer"]["comm"].as_str().is_some_and(|c| c.starts_with("qemu-storage")))
        .collect();
    assert!(qsd.is_empty(), "{name}: findings for the protected daemon: {qsd:#?}");
    // The pressure was real: the daemon's memcg reclaimed.
    let summary = lines.iter().rfind(|v| v["type"] == "final_summary").expect("a final summary");
    assert!(summary["reclaim_memcg"].as_u64().unwrap_or(0) > 0, "{name}: no memcg reclaim: {summary}");
}

#[test]
fn bindfs_is_a_second_fuse_servicer() {
    let expect = Expect { kind: ServicerKind::Fuse, comm: "bindfs", protected: false };
    scenario("bindfs", Servicer::BindFs, None, expect);
}

#[test]
fn ublk_server_that_sets_io_flusher_is_protected() {
    let expect = Expect { kind: ServicerKind::Ublk, comm: "rublk", protected: true };
    scenario("ublk_rublk_0_2_15", Servicer::Ublk { io_flusher: true }, None, expect);
}

#[test]
fn ublk_server_that_clears_io_flusher_is_unprotected() {
    let expect = Expect { kind: ServicerKind::Ublk, comm: "rublk", protected: false };
    scenario("ublk_rublk_0_2_14", Servicer::Ublk { io_flusher: false }, None, expect);
}

/// Fills the memcg with the upper filesystem's own objects: `files` empty
/// files created by a task inside the memcg, so that their inodes and
/// dentries are charged there and memcg reclaim must shrink the upper
/// XFS's caches (super_cache_scan) to make room.
fn charge_upper_xfs_objects(stack: &StorageStack, files: u32) {
    let dir = stack.top().mountpoint.join("tree");
    std::fs::create_dir(&dir).unwrap();
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c").arg(format!("cd {} && seq 1 {files} | xargs touch", dir.display()));
    stack.memcg.as_ref().unwrap().enter_on_spawn(&mut sh).unwrap();
    assert!(sh.status().unwrap().success(), "creating {files} files in the upper XFS");
}

/// The recursion of the 2019 report: reclaim in the servicer (its memcg
/// full of the upper XFS's inodes and its own page cache) calls the upper
/// XFS's super_cache_scan, in the task that must complete that XFS's I/O.
fn shrinker_recursion(name: &str, servicer: Servicer) {
    testbed::require_root(name);
    let _lock = testbed::lock().unwrap();
    let spec = StorageStackSpec { servicer, levels: 1, image_mb: 1024, memcg_limit_mb: Some(128), dm: None };
    if let Some(m) = missing_module(servicer, None) {
        let err = format!("{:#}", StorageStack::build(name, &spec).unwrap_err());
        assert!(err.contains("this kernel"), "unclear error: {err}");
        common::record_result(name, json!({ "result": format!("not built: the kernel has no {m}") }));
        return;
    }
    let mut stack = StorageStack::build(name, &spec).expect("building the stack");
    let pid = stack.daemon_pid.unwrap();
    let top = stack.top().mountpoint.display().to_string();
    let agent = common::Agent::start(&["watch", "--json", "--summary-every", "1"]);
    agent.wait_started();
    // Enough that the upper XFS's inodes and dentries fill much of the
    // memcg: reclaim then cannot make room from page cache alone, and its
    // priority drops until shrink_slab() really scans them.
    charge_upper_xfs_objects(&stack, 80_000);
    let writer = stack.spawn_writer_outside_memcg("data", 512).unwrap();
    let hit = agent.wait_for(Duration::from_secs(300), |v| {
        v["type"] == "finding" && v["rule"] == "RS101" && v["servicer"]["tgid"] == pid
    });
    let _ = stack.wait_writer(writer, Duration::from_secs(300));
    let (code, lines) = agent.stop(libc::SIGINT);
    let pressure = stack.memcg.as_ref().unwrap().pressure();
    stack.teardown().expect("teardown");
    assert_eq!(code, Some(0));
    let summary = lines.iter().find(|v| v["type"] == "final_summary").cloned().unwrap_or_default();
    let (_, f) = hit.unwrap_or_else(|| {
        panic!("{name}: no RS101 for pid {pid}; memcg {pressure:?}; shrinker calls {}", summary["shrinker_calls"])
    });
    assert!(f["detail"].as_str().unwrap().contains("xfs"), "{}", f["detail"]);
    assert_eq!(f["upper_fs"]["mount_point"], top.as_str());
    // Caught in super_cache_scan (fentry, kprobe) or at do_shrink_slab's
    // tracepoint: either way inside the servicer's own memcg reclaim.
    let frames: Vec<&str> = f["stack"].as_array().unwrap().iter().filter_map(|fr| fr.as_str()).collect();
    assert!(frames.iter().any(|fr| fr.contains("shrink_slab") || fr.starts_with("super_cache_scan")), "{frames:?}");
    assert!(frames.iter().any(|fr| fr.starts_with("try_to_free_mem_cgroup_pages")), "{frames:?}");
    common::record_result(
        name,
        json!({ "result": format!("RS101: {} in {}", f["detail"].as_str().unwrap_or("?"), f["servicer"]["comm"].as_str().unwrap_or("?")) }),
    );
}

#[test]
fn seed_reclaim_in_tcmu_runner_calls_the_upper_xfs_shrinker() {
    shrinker_recursion("seed_tcmu_recursion", Servicer::TcmuZbc);
}

#[test]
fn reclaim_in_qemu_storage_daemon_calls_the_upper_xfs_shrinker() {
    shrinker_recursion("qsd_recursion", Servicer::QsdFuse);
}

/// The seed's deadlock: writer and tcmu-runner in one 96 MiB memcg. It is
/// flagged as it forms, and broken as an operator would, by lifting the
/// memcg's limit: the writer then finishes and the stack tears down clean.
/// Killing tcmu-runner instead strands its SCSI commands under dm-zoned,
/// whose removal then waits in D state for minutes (seen on Debian 6.1), so
/// that is only the fallback.
#[test]
fn seed_deadlock_is_flagged_and_broken() {
    let name = "seed_tcmu_deadlock";
    testbed::require_root(name);
    let _lock = testbed::lock().unwrap();
    let spec =
        StorageStackSpec { servicer: Servicer::TcmuZbc, levels: 1, image_mb: 1024, memcg_limit_mb: Some(96), dm: None };
    if let Some(m) = missing_module(Servicer::TcmuZbc, None) {
        let err = format!("{:#}", StorageStack::build(name, &spec).unwrap_err());
        assert!(err.contains("this kernel"), "unclear error: {err}");
        common::record_result(name, json!({ "result": format!("not built: the kernel has no {m}") }));
        return;
    }
    let mut stack = StorageStack::build(name, &spec).expect("building the stack");
    let pid = stack.daemon_pid.unwrap();
    let agent = common::Agent::start(&["watch", "--json", "--summary-every", "1"]);
    agent.wait_started();
    let start = Instant::now();
    let writer = stack.spawn_writer("data", 512).unwrap();
    let dead = agent.wait_for(Duration::from_secs(180), |v| {
        v["type"] == "finding" && v["rule"] == "RS201" && v["servicer"]["tgid"] == pid
    });
    // Break it whatever happened.
    stack.memcg.as_ref().unwrap().lift().unwrap();
    let broke = Instant::now();
    while testbed::pid_running(writer) && broke.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let recovered = !testbed::pid_running(writer);
    let done_after = broke.elapsed();
    if !recovered {
        // SAFETY: plain kill(2) of the stack's own daemon.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let (code, _) = agent.stop(libc::SIGINT);
    stack.teardown().expect("teardown after the deadlock");
    assert_eq!(code, Some(0));
    let (t, f) = dead.expect("no RS201 for tcmu-runner within 180 s");
    assert!(!f["chain"].as_array().unwrap().is_empty(), "no waiting chain: {f:#}");
    // The other half of the cycle: the writer, blocked under the XFS
    // write that holds its IOLOCK.
    let names_writer = f["holders"].as_array().is_some_and(|h| {
        h.iter()
            .any(|h| h["tgid"] == writer && h["held"].as_array().is_some_and(|k| k.iter().any(|k| k == "IOLOCK_EXCL")))
    });
    assert!(names_writer, "RS201 does not name the writer {writer}: {f:#}");
    assert!(recovered, "the writer did not finish within 120 s of lifting the memcg limit");
    common::record_result(
        name,
        json!({ "result": format!(
            "RS201 at {:.1} s: {}; {} holder(s) of the upper XFS named; broken by lifting the memcg limit (writer done {:.1} s later)",
            (t - start).as_secs_f64(),
            f["detail"].as_str().unwrap_or("?"),
            f["holders"].as_array().map_or(0, Vec::len),
            done_after.as_secs_f64()
        ) }),
    );
}
