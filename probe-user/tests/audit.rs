//! Topology discovery and `reclaimscope audit`.
//!
//! Fixture tests read snapshots under tests/data/topology (captured from
//! live stacks on this machine, or written by hand for drivers this kernel
//! lacks: nbd, dm, tcmu, ublk) and run without root. Kernel tests build real
//! stacks with the testbed crate, need root, and always tear down.
//!
//! Run: cargo test -p probe-user --test audit -- --test-threads=1

use reclaimscope::output::audit::{audit, EXIT_INCOMPLETE, EXIT_OK, EXIT_UNPROTECTED};
use reclaimscope::topology::{
    capture, Confidence, Dev, Extra, Note, Protection, Remedy, ServicerKind, StackPath, Topology,
};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/topology").join(name)
}

fn discover_fixture(name: &str, extra: &Extra) -> Topology {
    Topology::discover_from(&fixture(name), extra).unwrap_or_else(|e| panic!("fixture {name}: {e:#}"))
}

/// The chain of elements from `p` down its first branch.
fn chain(p: &StackPath) -> Vec<Dev> {
    let mut out = vec![p.dev];
    let mut cur = p;
    while let Some(next) = cur.below.first() {
        out.push(next.dev);
        cur = next;
    }
    out
}

// ---------------------------------------------------------------- fixtures

/// XFS on loop2 on a file in XFS on loop1 on a file in XFS on loop0 on a
/// qemu-storage-daemon FUSE export of a file on the ext4 root, captured live.
#[test]
fn captured_qsd_fuse_three_levels() {
    let t = discover_fixture("qsd_fuse_3_levels", &Extra::default());
    let (l0, l1, l2, fuse) = (Dev::new(7, 0), Dev::new(7, 1), Dev::new(7, 2), Dev::new(0, 39));
    assert_eq!(t.stacked_devices().into_iter().collect::<BTreeSet<_>>(), BTreeSet::from([l0, l1, l2]));

    // Backing files: the FUSE export is the root of its mount (FUSE_ROOT_ID),
    // the nested ones come from LOOP_GET_STATUS64.
    let mut backing: Vec<(Dev, u64, Dev)> = t.backing_files().iter().map(|b| (b.file_dev, b.ino, b.backs)).collect();
    backing.sort();
    assert_eq!(backing, vec![(fuse, 1, l0), (l0, 131, l1), (l1, 131, l2)]);

    // The daemon: pinned by fdinfo, both threads checked, unprotected, under all three XFS.
    let daemon = t.servicers.iter().find(|s| s.kind == ServicerKind::Fuse).expect("FUSE daemon found");
    assert_eq!(daemon.tgid, Some(29472));
    assert_eq!(daemon.comm, "qemu-storage-da");
    assert_eq!(daemon.serves, fuse);
    assert!(
        matches!(&daemon.confidence, Confidence::Certain { why } if why.contains("connection 39")),
        "{:?}",
        daemon.confidence
    );
    assert_eq!(daemon.threads.iter().map(|t| t.tid).collect::<Vec<_>>(), vec![29472, 29473]);
    assert!(daemon.threads.iter().all(|t| t.protection == Protection::Unprotected));
    assert_eq!(daemon.protection, Protection::Unprotected);
    assert_eq!(daemon.under_mounts.len(), 3);
    assert_eq!(daemon.data_files.len(), 1, "lower.img only, not the write-only log");
    assert!(daemon.data_files[0].path.ends_with("lower.img"));
    assert_eq!(t.servicer_processes(), vec![(29472, fuse)]);
    assert_eq!(t.unprotected().len(), 1);

    // Kernel loop workers: protected per work item, no idle kworker threads listed.
    let workers: Vec<_> = t.servicers.iter().filter(|s| s.kind == ServicerKind::KernelLoop).collect();
    assert_eq!(workers.len(), 3);
    assert!(workers.iter().all(|w| w.protection == Protection::NoIo && w.threads.is_empty() && w.tgid.is_none()));

    // Followed to the bottom: loop2 -> loop1 -> loop0 -> FUSE -> ext4 root.
    let p = t.path_of(l2).expect("loop2 is stacked");
    assert_eq!(chain(&p), vec![l2, l1, l0, fuse]);
    assert!(p.upper.as_ref().unwrap().mount_point.ends_with("mnt2"));
    assert!(p.backing_file.as_ref().unwrap().ends_with("mnt1/level2.img"));
    assert_eq!(p.lower.as_ref().unwrap().dev, l1);
    let bottom = p.bottom.as_ref().expect("a bottom");
    assert_eq!((bottom.mount_point.as_path(), bottom.fs_type.as_str()), (Path::new("/"), "ext4"));
    assert_eq!(t.devices_below(l2), vec![l2, l1, l0, fuse]);
    assert!(t.mount_for_dev(l0).unwrap().mount_point.ends_with("mnt0"));
    assert!(t.path_of(Dev::new(254, 0)).is_none(), "the root disk is not stacked");

    // One tree from the top; text and JSON carry the same verdict.
    assert_eq!(t.stacks().len(), 1);
    let out = audit(&t);
    assert_eq!(out.exit_code, EXIT_UNPROTECTED);
    assert_eq!(out.json["exit_code"], EXIT_UNPROTECTED);
    assert_eq!(out.json["unprotected"][0]["tgid"], 29472);
    assert_eq!(out.json["unprotected"][0]["unprotected_threads"], serde_json::json!([29472, 29473]));
    assert!(out.text.contains("servicer qemu-storage-da (pid 29472) [FUSE daemon]: UNPROTECTED"), "{}", out.text);
    assert!(out.text.contains("prctl(PR_SET_IO_FLUSHER, 1)"));
    assert_eq!(out.text.matches("[kernel loop worker]: protected (PF_MEMALLOC_NOIO)").count(), 3);
}

/// XFS on loop1 on a file in XFS on loop0 on a file on the ext4 root, captured live.
#[test]
fn captured_kernel_loop_two_levels() {
    let t = discover_fixture("kernel_loop_2_levels", &Extra::default());
    let (l0, l1, root) = (Dev::new(7, 0), Dev::new(7, 1), Dev::new(254, 0));
    let mut backing: Vec<(Dev, u64, Dev)> = t.backing_files().iter().map(|b| (b.file_dev, b.ino, b.backs)).collect();
    backing.sort();
    assert_eq!(backing, vec![(l0, 131, l1), (root, 10092551, l0)], "both from LOOP_GET_STATUS64");
    assert_eq!(t.servicers.len(), 2);
    assert!(t.servicers.iter().all(|s| s.kind == ServicerKind::KernelLoop && s.protection == Protection::NoIo));
    assert!(t.servicer_processes().is_empty(), "no userspace servicer");
    let p = t.path_of(l1).unwrap();
    assert_eq!(chain(&p), vec![l1, l0]);
    assert_eq!(p.bottom.unwrap().dev, root);
    assert!(t.unprotected().is_empty());
    let out = audit(&t);
    assert_eq!(out.exit_code, EXIT_OK);
    assert!(out.text.contains("Verdict: no unprotected servicer under a mounted filesystem (exit 0)."), "{}", out.text);
}

/// dm on nbd. The nbd client is found from sysfs; the NBD server behind the
/// socket only with --servicer and --backing-file.
#[test]
fn synthetic_nbd_under_dm() {
    let (nbd, dm) = (Dev::new(43, 0), Dev::new(253, 0));
    let t = discover_fixture("synthetic_nbd_dm", &Extra::default());
    // Pid 700 configured nbd0 but holds neither a connection nor the data:
    // the kernel does the I/O over a socket whose server is not on this
    // host (or not visible), and the audit says so rather than guess.
    assert!(t.servicer_by_tgid(700).is_none(), "the configuring client is no servicer");
    assert!(t.warnings.iter().any(|w| w.contains("nbd0") && w.contains("--servicer")), "{:?}", t.warnings);
    assert_eq!(t.stacked_devices(), vec![dm]);
    assert!(t.servicer_by_tgid(800).is_none(), "qemu-nbd is invisible without help");

    let extra = Extra { servicers: vec![800], backing_files: vec![(PathBuf::from("/srv/nbd0.img"), nbd)] };
    let t = discover_fixture("synthetic_nbd_dm", &extra);
    let server = t.servicer_by_tgid(800).expect("named servicer");
    assert_eq!((server.kind, server.serves, &server.confidence), (ServicerKind::Named, nbd, &Confidence::Named));
    assert_eq!(server.threads.len(), 2);
    let b = t.backing_files();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].file_dev, b[0].ino, b[0].backs, b[0].named), (Dev::new(254, 0), 4242, nbd, true));
    assert_eq!(t.path_of(dm).unwrap().bottom.unwrap().mount_point, Path::new("/"));
    assert_eq!(t.stacked_devices(), vec![nbd, dm]);
    // The dm holder's mount is nbd0's upper filesystem.
    assert_eq!(t.path_of(nbd).unwrap().upper.unwrap().mount_point, Path::new("/mnt/data"));
    assert!(t.mount_for_dev(nbd).is_none());
    let stacks = t.stacks();
    assert_eq!(stacks.len(), 1);
    assert_eq!(chain(&stacks[0]), vec![dm, nbd]);
    assert_eq!(stacks[0].detail.as_deref(), Some("dm data"));
    assert!(server.under_mounts.contains(&PathBuf::from("/mnt/data")));
    assert_eq!(t.unprotected().iter().map(|s| s.tgid).collect::<Vec<_>>(), vec![Some(800)]);
    assert_eq!(audit(&t).exit_code, EXIT_UNPROTECTED);
}

/// A tcmu LUN (partitioned, reached through tcm_loop) and a ublk device.
#[test]
fn synthetic_tcmu_and_ublk() {
    let (sdb, sdb1, ublk) = (Dev::new(8, 16), Dev::new(8, 17), Dev::new(252, 0));
    let t = discover_fixture("synthetic_tcmu_ublk", &Extra::default());
    assert_eq!(t.stacked_devices().into_iter().collect::<BTreeSet<_>>(), BTreeSet::from([sdb, sdb1, ublk]));

    let runner = t.servicer_by_tgid(900).expect("tcmu-runner holds /dev/uio0");
    assert_eq!((runner.kind, runner.serves), (ServicerKind::Tcmu, sdb), "matched through the VPD unit serial");
    let prot: Vec<(u32, Protection)> = runner.threads.iter().map(|t| (t.tid, t.protection)).collect();
    assert_eq!(prot, vec![(900, Protection::NoIo), (901, Protection::Unprotected), (905, Protection::Unprotected)]);
    assert_eq!(runner.protection, Protection::Unprotected, "one bare thread is enough");
    assert_eq!(runner.remedy, Remedy::IoFlusherThreads(vec![901, 905]));
    assert_eq!(runner.under_mounts, vec![PathBuf::from("/mnt/lun")]);

    let server = t.servicer_by_tgid(1000).expect("ublk server holds /dev/ublkc0");
    assert_eq!((server.kind, server.serves, server.protection), (ServicerKind::Ublk, ublk, Protection::IoFlusher));
    // Judged by the queue thread (waiting on its io_uring) and its io-wq
    // worker; the main thread and the control ring's worker are bare.
    assert_eq!(server.threads.len(), 4);
    assert_eq!(server.serving_tids, vec![1001, 1002]);
    assert_eq!(server.note, Some(Note::Process { known: None, protected: true, judged_by: vec![1001, 1002] }));
    assert!(t.servicer_by_tgid(1100).is_none(), "a non-tcmu uio user is no servicer");

    let p = t.path_of(sdb1).unwrap();
    assert_eq!(chain(&p), vec![sdb1, sdb]);
    assert_eq!(p.upper.unwrap().mount_point, Path::new("/mnt/lun"));
    assert_eq!(p.bottom.unwrap().mount_point, Path::new("/"), "through tcmu-runner's backing file");
    assert_eq!(t.stacks().len(), 2);
    assert_eq!(t.unprotected().iter().map(|s| s.tgid).collect::<Vec<_>>(), vec![Some(900)]);
    let out = audit(&t);
    assert_eq!(out.exit_code, EXIT_UNPROTECTED);
    assert!(out.text.contains("sdb (8:16)  [LIO-ORG fileback]"), "{}", out.text);
}

#[test]
fn bad_extras_are_errors() {
    let bad = |extra: Extra| {
        Topology::discover_from(&fixture("synthetic_nbd_dm"), &extra).map(|_| ()).unwrap_err().to_string()
    };
    assert!(bad(Extra { servicers: vec![4_000_000], ..Extra::default() }).contains("no such process"));
    let e = bad(Extra { backing_files: vec![(PathBuf::from("/srv/x.img"), Dev::new(9, 9))], ..Extra::default() });
    assert!(e.contains("no block device 9:9"), "{e}");
    let e = bad(Extra { backing_files: vec![(PathBuf::from("srv/x.img"), Dev::new(43, 0))], ..Extra::default() });
    assert!(e.contains("absolute"), "{e}");
    let e =
        bad(Extra { backing_files: vec![(PathBuf::from("/srv/missing.img"), Dev::new(43, 0))], ..Extra::default() });
    assert!(e.contains("cannot stat"), "{e}");
    assert!(Topology::discover_from(Path::new("/nonexistent-snapshot"), &Extra::default()).is_err());
}

/// `reclaimscope audit` as a health check sees it: exit codes, JSON on
/// stdout, one-line errors.
fn run_audit(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reclaimscope"))
        .arg("audit")
        .args(args)
        .output()
        .expect("running reclaimscope");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 output");
    (out.status.code(), text(out.stdout), text(out.stderr))
}

#[test]
fn binary_exit_codes_and_json() {
    let fuse = fixture("qsd_fuse_3_levels");
    let fuse = fuse.to_str().unwrap();
    let (code, stdout, _) = run_audit(&["--root", fuse, "--json"]);
    assert_eq!(code, Some(EXIT_UNPROTECTED));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    let lib = audit(&discover_fixture("qsd_fuse_3_levels", &Extra::default()));
    assert_eq!(json, lib.json, "the binary prints the library's report");
    let (code, stdout, _) = run_audit(&["--root", fuse]);
    assert_eq!((code, stdout), (Some(EXIT_UNPROTECTED), lib.text));

    let kloop = fixture("kernel_loop_2_levels");
    assert_eq!(run_audit(&["--root", kloop.to_str().unwrap()]).0, Some(EXIT_OK));

    // --servicer and --backing-file feed the same graph.
    let nbd = fixture("synthetic_nbd_dm");
    let nbd = nbd.to_str().unwrap();
    assert_eq!(run_audit(&["--root", nbd]).0, Some(EXIT_OK));
    let (code, stdout, _) =
        run_audit(&["--root", nbd, "--json", "--servicer", "800", "--backing-file", "/srv/nbd0.img=43:0"]);
    assert_eq!(code, Some(EXIT_UNPROTECTED));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["unprotected"][0]["tgid"], 800);

    // Bad input: one line on stderr, exit 1 (2 for clap's usage errors), no panic.
    let (code, _, stderr) = run_audit(&["--root", nbd, "--servicer", "4000000"]);
    assert_eq!(code, Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no such process"), "{stderr}");
    let (code, _, stderr) = run_audit(&["--root", "/nonexistent-snapshot"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(run_audit(&["--backing-file", "nodev"]).0, Some(2));
}

/// A snapshot written by hand into a temporary directory.
struct Tree(tempfile::TempDir);

impl Tree {
    fn new() -> Tree {
        Tree(tempfile::tempdir().expect("tempdir"))
    }
    fn file(&self, path: &str, text: &str) -> &Self {
        let p = self.0.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
        self
    }
    fn link(&self, path: &str, target: &str) -> &Self {
        let p = self.0.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
        self
    }
    /// A process with one unprotected thread holding /dev/fuse on fd 5,
    /// with fdinfo naming `conn` when given (kernels before that print none).
    fn fuse_daemon(&self, pid: u32, conn: Option<u32>) -> &Self {
        let conn = conn.map_or(String::new(), |c| format!("fuse_connection:\t{c}\n"));
        self.file(&format!("proc/{pid}/comm"), "fused\n")
            .file(&format!("proc/{pid}/task/{pid}/stat"), &format!("{pid} (fused) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0"))
            .link(&format!("proc/{pid}/fd/5"), "/dev/fuse")
            .file(&format!("proc/{pid}/fdinfo/5"), &format!("pos:\t0\nflags:\t02\nmnt_id:\t24\nino:\t90\n{conn}"))
    }
    /// Two FUSE mounts (0:40 at /fa, 0:41 at /fb); loop0 on /fa/disk.img carries XFS at /mnt/x.
    fn two_fuse_mounts() -> Tree {
        let t = Tree::new();
        t.file(
            "proc/self/mountinfo",
            "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
             50 27 0:40 / /fa rw - fuse.fused fused rw,user_id=0\n\
             51 27 0:41 / /fb rw - fuse.fused fused rw,user_id=0\n\
             52 27 7:0 / /mnt/x rw - xfs /dev/loop0 rw\n",
        )
        .file("proc/partitions", "major minor #blocks name\n\n 254 0 100 vda\n 7 0 100 loop0\n")
        .link("sys/class/block/vda", "../../devices/virtual/block/vda")
        .link("sys/class/block/loop0", "../../devices/virtual/block/loop0")
        .file("sys/block/loop0/loop/backing_file", "/fa/disk.img\n");
        t
    }
    fn topology(&self, extra: &Extra) -> Topology {
        Topology::discover_from(self.0.path(), extra).expect("discovery")
    }
}

#[test]
fn fuse_daemons_matched_by_fdinfo() {
    let t = Tree::two_fuse_mounts();
    t.fuse_daemon(501, Some(41)).fuse_daemon(502, Some(40)).fuse_daemon(503, None);
    let topo = t.topology(&Extra::default());
    let served: Vec<(Option<u32>, Dev)> =
        topo.servicers.iter().filter(|s| s.kind == ServicerKind::Fuse).map(|s| (s.tgid, s.serves)).collect();
    assert_eq!(
        served,
        vec![(Some(502), Dev::new(0, 40)), (Some(501), Dev::new(0, 41))],
        "503's descriptor is attached to nothing"
    );
    // The backing file on FUSE is never stat()ed: its inode stays unknown.
    let b = &topo.backing_files()[0];
    assert_eq!((b.file_dev, b.ino, b.backs), (Dev::new(0, 40), 0, Dev::new(7, 0)));
    // Only 502 sits under a mounted block filesystem; 501's plain FUSE mount does not count.
    assert_eq!(topo.unprotected().iter().map(|s| s.tgid).collect::<Vec<_>>(), vec![Some(502)]);
    assert!(topo.servicer_by_tgid(501).unwrap().under_mounts.is_empty());
    assert_eq!(chain(&topo.path_of(Dev::new(7, 0)).unwrap()), vec![Dev::new(7, 0), Dev::new(0, 40)]);
    let out = audit(&topo);
    assert_eq!(out.exit_code, EXIT_UNPROTECTED);
    assert!(out.text.contains("not counted"), "{}", out.text);
}

#[test]
fn fuse_without_fdinfo_pins() {
    // A lone /dev/fuse holder serves every FUSE mount.
    let t = Tree::two_fuse_mounts();
    t.fuse_daemon(501, None);
    let topo = t.topology(&Extra::default());
    let s = topo.servicers.iter().find(|s| s.serves == Dev::new(0, 40)).unwrap();
    assert_eq!(s.confidence, Confidence::Certain { why: "the only process holding /dev/fuse".into() });

    // Two holders: every candidate is reported, and counted.
    let t = Tree::two_fuse_mounts();
    t.fuse_daemon(501, None).fuse_daemon(502, None);
    let topo = t.topology(&Extra::default());
    let on_fa: Vec<_> = topo.servicers.iter().filter(|s| s.serves == Dev::new(0, 40)).collect();
    assert_eq!(on_fa.len(), 2);
    assert!(on_fa.iter().all(|s| s.confidence == Confidence::Ambiguous { candidates: 2 }));
    assert_eq!(topo.unprotected().len(), 2);
    assert!(audit(&topo).text.contains("ambiguous: 2 candidates"));

    // Naming one settles it: the other candidate is dropped.
    let topo = t.topology(&Extra { servicers: vec![502], ..Extra::default() });
    let on_fa: Vec<_> =
        topo.servicers.iter().filter(|s| s.serves == Dev::new(0, 40)).map(|s| (s.tgid, s.confidence.clone())).collect();
    assert_eq!(on_fa, vec![(Some(502), Confidence::Named)]);
}

#[test]
fn fuse_daemon_not_visible_gives_no_all_clear() {
    let t = Tree::two_fuse_mounts();
    let topo = t.topology(&Extra::default());
    assert_eq!(topo.unseen_servicers(), vec![Dev::new(0, 40)]);
    assert!(
        topo.warnings.iter().any(|w| w.contains("/fa") && w.contains("no process serves it")),
        "{:?}",
        topo.warnings
    );
    assert!(topo.unprotected().is_empty());
    assert_eq!(audit(&topo).exit_code, EXIT_INCOMPLETE);
}

// ------------------------------------------------------- kernel tests (root)

use testbed::{Servicer, StorageStack, StorageStackSpec};

/// Builds a stack (the test fails when not root). A failing assertion
/// drops the stack, which tears it down; the explicit teardown at the end of
/// each test reports teardown errors.
fn build(name: &str, servicer: Servicer, levels: usize) -> (testbed::TestbedLock, StorageStack) {
    testbed::require_root(name);
    let lock = testbed::lock().expect("testbed lock");
    let image_mb = if levels > 1 { 1536 } else { 512 };
    let stack =
        StorageStack::build(name, &StorageStackSpec { servicer, levels, image_mb, memcg_limit_mb: None, dm: None })
            .expect("building the stack");
    (lock, stack)
}

/// The captured snapshot reads back into the very topology discovery saw.
fn assert_snapshot_round_trips(extra: &Extra) {
    let dir = tempfile::tempdir().unwrap();
    let live = capture(&dir.path().join("snap"), extra).expect("capture");
    let back = Topology::discover_from(&dir.path().join("snap"), extra).expect("discover_from snapshot");
    assert_eq!(serde_json::to_value(&live).unwrap(), serde_json::to_value(&back).unwrap());
}

#[test]
fn kernel_loop_worker_is_protected() {
    let (_lock, stack) = build("audit-kloop", Servicer::KernelLoop, 1);
    let level = &stack.levels[0];
    let dev = Dev::new(level.devt.0, level.devt.1);
    let t = Topology::discover(&Extra::default()).expect("discover");
    let worker = t.servicers.iter().find(|s| s.serves == dev).expect("a servicer for the loop device");
    assert_eq!(worker.kind, ServicerKind::KernelLoop);
    assert_eq!((worker.protection, worker.tgid, worker.kernel), (Protection::NoIo, None, true));
    assert!(worker.threads.is_empty(), "idle kworkers are not read as unprotected");
    assert_eq!(worker.under_mounts, vec![level.mountpoint.clone()]);

    let file = level.backing_file.as_ref().expect("a loop level has a backing file");
    let meta = fs::metadata(file).unwrap();
    let b = t.backing_files().into_iter().find(|b| b.backs == dev).expect("backing file");
    assert_eq!((b.path.as_path(), b.file_dev, b.ino), (file.as_path(), Dev::from_st_dev(meta.dev()), meta.ino()));

    let p = t.path_of(dev).expect("stacked");
    assert_eq!(p.upper.as_ref().unwrap().mount_point, level.mountpoint);
    assert_eq!(p.upper.as_ref().unwrap().fs_type, "xfs");
    assert_eq!(p.lower.as_ref().unwrap().fs_type, "ext4");
    assert!(t.unprotected().iter().all(|s| !s.under_mounts.contains(&level.mountpoint)));
    let out = audit(&t);
    assert!(
        out.text.contains(&format!(
            "kworker (workqueue {}) [kernel loop worker]: protected (PF_MEMALLOC_NOIO)",
            level.device.file_name().unwrap().to_string_lossy()
        )),
        "{}",
        out.text
    );
    assert_snapshot_round_trips(&Extra::default());
    stack.teardown().expect("teardown");
}

#[test]
fn qsd_fuse_daemon_is_unprotected() {
    let (_lock, stack) = build("audit-qsd", Servicer::QsdFuse, 1);
    let pid = stack.daemon_pid.expect("qsd pid");
    let tasks = || -> BTreeSet<u32> {
        fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect()
    };
    let before = tasks();
    let t = Topology::discover(&Extra::default()).expect("discover");
    let after = tasks();
    let s = t.servicer_by_tgid(pid).expect("the daemon is a servicer");
    assert_eq!(s.kind, ServicerKind::Fuse);
    assert!(matches!(s.confidence, Confidence::Certain { .. }), "{:?}", s.confidence);
    // qsd's thread pool comes and goes: every thread alive throughout was checked.
    let seen: BTreeSet<u32> = s.threads.iter().map(|t| t.tid).collect();
    assert!(
        before.intersection(&after).all(|tid| seen.contains(tid)),
        "threads {seen:?} vs /proc {before:?}/{after:?}"
    );
    assert!(seen.iter().all(|tid| before.contains(tid) || after.contains(tid)));
    for th in &s.threads {
        let stat = fs::read_to_string(format!("/proc/{pid}/task/{}/stat", th.tid)).unwrap_or_default();
        if let Some(flags) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(6)) {
            assert_eq!(flags.parse::<u32>().unwrap(), th.flags, "thread {} flags", th.tid);
        }
        assert_eq!(th.protection, Protection::Unprotected);
    }
    let top = stack.top();
    assert!(s.under_mounts.contains(&top.mountpoint));
    let fuse_dev = t.mount_for_dev(s.serves).expect("FUSE mount").dev;
    let b = t.backing_files().into_iter().find(|b| b.backs == Dev::new(top.devt.0, top.devt.1)).unwrap();
    assert_eq!((b.file_dev, b.ino), (fuse_dev, 1), "the export file is the FUSE root, never stat()ed");
    assert!(t.unprotected().iter().any(|u| u.tgid == Some(pid)));
    let out = audit(&t);
    assert_eq!(out.exit_code, EXIT_UNPROTECTED);
    assert!(out.json["unprotected"].as_array().unwrap().iter().any(|u| u["tgid"] == pid));
    assert_eq!(run_audit(&[]).0, Some(EXIT_UNPROTECTED), "the binary agrees");
    assert!(
        out.text.contains(&format!("servicer qemu-storage-da (pid {pid}) [FUSE daemon]: UNPROTECTED")),
        "{}",
        out.text
    );
    stack.teardown().expect("teardown");
}

#[test]
fn three_levels_followed_to_the_bottom() {
    let (_lock, stack) = build("audit-deep", Servicer::QsdFuse, 3);
    let t = Topology::discover(&Extra::default()).expect("discover");
    let devs: Vec<Dev> = stack.levels.iter().rev().map(|l| Dev::new(l.devt.0, l.devt.1)).collect();
    let p = t.path_of(devs[0]).expect("top loop is stacked");
    let c = chain(&p);
    assert_eq!(&c[..3], devs.as_slice(), "top loop, middle loop, bottom loop");
    assert_eq!(c.len(), 4, "then the FUSE connection");
    assert!(t.mount_for_dev(c[3]).unwrap().is_fuse());
    assert_eq!(p.upper.as_ref().unwrap().mount_point, stack.top().mountpoint);
    // The bottom is the disk filesystem holding the stack's work directory
    // (the root fs on this machine, a scratch disk in the VMs).
    let bottom = p.bottom.expect("a bottom");
    let workdir_dev = Dev::from_st_dev(fs::metadata(&stack.workdir).unwrap().dev());
    assert_eq!((bottom.dev, bottom.fs_type.as_str()), (workdir_dev, "ext4"));
    let daemon = t.servicer_by_tgid(stack.daemon_pid.unwrap()).unwrap();
    let mounts: BTreeSet<&PathBuf> = stack.levels.iter().map(|l| &l.mountpoint).collect();
    assert_eq!(daemon.under_mounts.iter().collect::<BTreeSet<_>>(), mounts);
    assert_snapshot_round_trips(&Extra::default());
    stack.teardown().expect("teardown");
}

/// The audit is a health check for exactly this moment: with the daemon
/// stuck in reclaim (waiting on writeback of the XFS it serves), discovery
/// must return promptly and name it, even though its thread now carries
/// PF_MEMALLOC.
#[test]
fn audit_answers_while_the_daemon_is_deadlocked() {
    use probe_common::flags::{PF_MEMALLOC, PF_MEMALLOC_NOIO};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    testbed::require_root("audit_answers_while_the_daemon_is_deadlocked");
    let _lock = testbed::lock().expect("testbed lock");
    let spec =
        StorageStackSpec { servicer: Servicer::QsdFuse, levels: 1, image_mb: 1024, memcg_limit_mb: Some(96), dm: None };
    let mut stack = StorageStack::build("audit-deadlock", &spec).expect("building the stack");
    let qsd = stack.daemon_pid.expect("qsd pid");
    stack.spawn_writer("data", 512).expect("writer");

    // The deadlock: a daemon thread in D state for 3 s in a row.
    let started = Instant::now();
    let mut d_since: Option<(u32, Instant)> = None;
    let stuck = loop {
        let blocked = testbed::blocked_threads(qsd);
        d_since = match d_since {
            Some((tid, since)) if blocked.contains(&tid) => Some((tid, since)),
            _ => blocked.first().map(|&tid| (tid, Instant::now())),
        };
        if let Some((tid, since)) = d_since {
            if since.elapsed() >= Duration::from_secs(3) {
                break Some(tid);
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    let kstack = stuck
        .map(|tid| fs::read_to_string(format!("/proc/{qsd}/task/{tid}/stack")).unwrap_or_default())
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    // A hung discovery stays blocked in this thread until the FUSE abort below frees it.
    std::thread::spawn(move || {
        let t = Topology::discover(&Extra::default()).map_err(|e| format!("{e:#}"));
        let _ = tx.send(t.map(|t| (audit(&t).exit_code, t)));
    });
    let answer = rx.recv_timeout(Duration::from_secs(10));
    let took = t0.elapsed();
    stack.abort_fuse().expect("aborting FUSE");
    stack.teardown().expect("teardown");

    let stuck = stuck.expect("the deadlock did not form within 60 s");
    let (code, t) = answer.expect("discovery blocked on the deadlocked stack").expect("discovery");
    println!("qsd thread {stuck} deadlocked; discovery answered in {took:?}; its kernel stack:\n{kstack}");
    assert_eq!(code, EXIT_UNPROTECTED);
    let s = t.servicer_by_tgid(qsd).expect("the deadlocked daemon is found");
    let th = s.threads.iter().find(|th| th.tid == stuck).expect("the stuck thread is listed");
    // Stuck where the stack deadlocks: in reclaim right now (PF_MEMALLOC;
    // cgroup v1 memcg reclaim waits on writeback), or dirty-throttled on the
    // memcg's dirty pages (v2), yet unprotected.
    let throttled = kstack.lines().next().is_some_and(|l| l.contains("balance_dirty_pages"));
    assert!(th.flags & PF_MEMALLOC != 0 || throttled, "flags {:#x}, stack:\n{kstack}", th.flags);
    // The flags are a sample: the thread may sit inside ext4's own
    // journal handle (a transient PF_MEMALLOC_NOFS scope) at this instant.
    // No per-task NOIO policy is ever set on it.
    assert!(matches!(th.protection, Protection::Unprotected | Protection::NoFs), "flags {:#x}", th.flags);
    assert_eq!(th.flags & PF_MEMALLOC_NOIO, 0, "flags {:#x}", th.flags);
    assert!(t.unprotected().iter().any(|u| u.tgid == Some(qsd)));
}
