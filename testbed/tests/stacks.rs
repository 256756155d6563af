//! Builds real storage stacks, checks them against the kernel's own view
//! (mountinfo, block sysfs, cgroup.procs), tears them down and checks that
//! nothing is left. Root only. Servicers whose kernel module this kernel
//! lacks (nbd, tcmu, ublk on the project's own VM kernel) must fail to build
//! with a clear error, and leave nothing either. Run serially:
//! `cargo test -p testbed -- --test-threads=1 --nocapture`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testbed::{
    blocked_threads, loops_backed_under, mounts_under, pid_alive, pid_running, Dm, Hierarchy, Servicer, StorageStack,
    StorageStackSpec,
};

/// What must be gone after teardown, captured before the StorageStack is consumed.
struct Footprint {
    workdir: PathBuf,
    loops: Vec<PathBuf>,
    memcg: Option<PathBuf>,
    daemon: Option<u32>,
    /// Block devices that must be gone or disconnected (nbd, ublk, SCSI, dm).
    devices: Vec<PathBuf>,
}

fn name_of(dev: &Path) -> &str {
    dev.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// (major, minor) of a block device node.
fn devt_of(dev: &Path) -> (u32, u32) {
    let rdev = std::os::unix::fs::MetadataExt::rdev(&fs::metadata(dev).unwrap());
    (libc::major(rdev), libc::minor(rdev))
}

/// The sysfs directory of a block device node (dm nodes have no name there).
fn sys_block(dev: &Path) -> PathBuf {
    let (ma, mi) = devt_of(dev);
    PathBuf::from(format!("/sys/dev/block/{ma}:{mi}"))
}

/// Check the built stack against the kernel and return its footprint.
fn check_built(stack: &StorageStack, spec: &StorageStackSpec) -> Footprint {
    assert_eq!(stack.levels.len(), spec.levels);
    let mounts = mounts_under(&stack.workdir);
    let mut loops: Vec<PathBuf> =
        stack.levels.iter().filter(|l| l.backing_file.is_some()).map(|l| l.device.clone()).collect();
    loops.sort();
    let mut devices: Vec<PathBuf> = stack.served_device.iter().cloned().collect();
    for level in &stack.levels {
        let m = mounts.iter().find(|m| m.mountpoint == level.mountpoint).expect("level is mounted");
        assert_eq!(m.fstype, "xfs");
        assert_eq!(devt_of(&level.device), level.devt, "{}", level.device.display());
        if level.backing_file.is_none() {
            devices.push(level.device.clone());
        }
    }
    if spec.dm.is_some() && matches!(spec.servicer, Servicer::KernelLoop | Servicer::QsdFuse | Servicer::BindFs) {
        loops.push(
            fs::read_dir(sys_block(&stack.levels[0].device).join("slaves"))
                .unwrap()
                .flatten()
                .map(|e| PathBuf::from("/dev").join(e.file_name()))
                .next()
                .unwrap(),
        );
        loops.sort();
    }
    // The NFS stack's loop device is its served device, under the first XFS.
    if spec.servicer == Servicer::NfsLoopback {
        loops.extend(stack.served_device.iter().cloned());
        loops.sort();
    }
    assert_eq!(loops_backed_under(&stack.workdir), loops, "loop devices backed by the workdir");
    match spec.servicer {
        Servicer::QsdFuse | Servicer::BindFs => {
            let fuse = stack.fuse_mount.as_ref().expect("fuse mount");
            assert!(mounts.iter().any(|m| &m.mountpoint == fuse && m.fstype.starts_with("fuse")));
        }
        Servicer::KernelLoop => assert!(stack.daemon_pid.is_none() && stack.fuse_mount.is_none()),
        // Kernel threads serve these: no daemon.
        Servicer::IscsiLio | Servicer::Nvmet | Servicer::NfsLoopback => {
            assert!(stack.daemon_pid.is_none(), "a kernel target has no daemon");
            assert!(stack.served_device.as_ref().is_some_and(|d| d.exists()), "no served device");
        }
        _ => assert!(stack.served_device.as_ref().is_some_and(|d| d.exists()), "no served device"),
    }
    if let Some(pid) = stack.daemon_pid {
        assert!(pid_alive(pid), "servicer {pid} is not running");
        assert!(stack.data_file.exists(), "{} missing", stack.data_file.display());
    }
    if let (Some(memcg), Some(pid)) = (&stack.memcg, stack.daemon_pid) {
        let procs = fs::read_to_string(memcg.path.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "servicer {pid} is not in {}", memcg.path.display());
    }
    Footprint {
        workdir: stack.workdir.clone(),
        loops,
        memcg: stack.memcg.as_ref().map(|m| m.path.clone()),
        daemon: stack.daemon_pid,
        devices,
    }
}

fn assert_gone(fp: &Footprint) {
    assert!(mounts_under(&fp.workdir).is_empty(), "mounts left: {:?}", mounts_under(&fp.workdir));
    assert!(loops_backed_under(&fp.workdir).is_empty(), "loops left");
    for dev in &fp.loops {
        let name = name_of(dev);
        assert!(!PathBuf::from(format!("/sys/block/{name}/loop/backing_file")).exists(), "{name} still bound");
    }
    for dev in &fp.devices {
        let name = name_of(dev);
        // An nbd device stays, disconnected, and a loop device unbound; the others go.
        let connected = if name.starts_with("nbd") {
            Path::new(&format!("/sys/block/{name}/pid")).exists()
        } else if name.starts_with("loop") {
            Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists()
        } else {
            dev.exists()
        };
        assert!(!connected, "{} is still there", dev.display());
    }
    if let Some(memcg) = &fp.memcg {
        assert!(!memcg.exists(), "memcg {} left", memcg.display());
    }
    if let Some(pid) = fp.daemon {
        assert!(!pid_running(pid), "servicer {pid} still running");
    }
    assert!(!fp.workdir.exists(), "workdir {} left", fp.workdir.display());
}

/// Whether this kernel can build the servicer's device (and dm layer) at all.
fn kernel_has(servicer: Servicer, dm: Option<Dm>) -> Result<(), &'static str> {
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if dm.is_some() && !module("dm_mod") {
        return Err("dm");
    }
    match servicer {
        Servicer::NbdServer | Servicer::QemuNbd if !module("nbd") => Err("nbd"),
        Servicer::TcmuZbc if !module("target_core_user") || !module("tcm_loop") || !module("dm_zoned") => Err("tcmu"),
        Servicer::Ublk { .. } if !module("ublk_drv") => Err("ublk"),
        Servicer::IscsiTgt if !module("iscsi_tcp") => Err("iscsi_tcp"),
        Servicer::IscsiLio if !module("iscsi_tcp") || !module("target_core_file") || !module("iscsi_target_mod") => {
            Err("LIO iSCSI")
        }
        Servicer::Nvmet if !module("nvmet_tcp") || !module("nvme_tcp") => Err("nvmet"),
        Servicer::NfsLoopback if !module("nfsd") || !module("nfsv4") => Err("nfsd"),
        _ => Ok(()),
    }
}

/// Build, check, write `write_mb` through the top XFS, tear down, check.
/// On a kernel without the servicer's module, the build must fail with
/// a clear error and leave nothing behind.
fn round_trip(name: &str, spec: StorageStackSpec, write_mb: u64) {
    testbed::require_root(name);
    let _lock = testbed::lock().unwrap();
    if let Err(module) = kernel_has(spec.servicer, spec.dm) {
        let err = format!("{:#}", StorageStack::build(name, &spec).unwrap_err());
        println!("{name}: this kernel has no {module}; the build fails with: {err}");
        assert!(err.contains("this kernel"), "unclear error: {err}");
        let workdir = PathBuf::from(format!("{}/{name}-{}", testbed::WORK_ROOT, std::process::id()));
        assert!(!workdir.exists(), "{} left after a failed build", workdir.display());
        return;
    }
    let shared = Shared::now();
    let mut stack = StorageStack::build(name, &spec).unwrap();
    let fp = check_built(&stack, &spec);
    let started = Instant::now();
    // Only the servicer is under the limit: under cgroup v2 a writer in the
    // memcg is throttled on its own dirty pages before the memcg reclaims.
    let pid = stack.spawn_writer_outside_memcg("data", write_mb).unwrap();
    stack.wait_writer(pid, Duration::from_secs(300)).unwrap();
    let size = fs::metadata(stack.top().mountpoint.join("data")).unwrap().len();
    assert_eq!(size, write_mb << 20);
    let pressure = stack.memcg.as_ref().map(|m| m.pressure());
    println!("{name}: wrote {write_mb} MiB in {:?}, memcg pressure {pressure:?}", started.elapsed());
    let t = Instant::now();
    stack.teardown().unwrap();
    println!("{name}: teardown took {:?}", t.elapsed());
    assert_gone(&fp);
    assert_eq!(Shared::now(), shared, "state outside the workdir changed");
}

/// State outside a stack's workdir that stacks change and must restore:
/// the mounts over system directories, the knfsd threads, the kernel
/// targets and sessions named after this project, our child processes.
#[derive(Debug, PartialEq, Eq)]
struct Shared {
    mounts: Vec<PathBuf>,
    nfsd_threads: String,
    named: Vec<String>,
    children: Vec<String>,
}

impl Shared {
    fn now() -> Shared {
        let mounts = ["/etc/iscsi", "/var/lib/nfs", "/proc/fs/nfsd"]
            .iter()
            .flat_map(|p| mounts_under(Path::new(p)))
            .map(|m| m.mountpoint)
            .collect();
        let nfsd_threads = fs::read_to_string("/proc/fs/nfsd/threads").unwrap_or_default().trim().to_owned();
        Shared { mounts, nfsd_threads, named: named_kernel_objects(), children: live_children() }
    }
}

/// Names in `dir` (none when it is missing).
fn names(dir: &str) -> Vec<String> {
    let entries = fs::read_dir(dir).into_iter().flatten().flatten();
    entries.map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// iSCSI and NVMe objects whose names carry the testbed's IQN or NQN
/// prefix: LIO targets, nvmet subsystems and port links, logged-in sessions,
/// connected controllers, and LIO fileio backstores named the testbed's way.
fn named_kernel_objects() -> Vec<String> {
    const IQN: &str = "iqn.2003-01.org.reclaimscope";
    const NQN: &str = "nqn.2014-08.org.reclaimscope";
    let read = |p: String| fs::read_to_string(p).unwrap_or_default().trim().to_owned();
    let mut found: Vec<String> =
        names("/sys/kernel/config/target/iscsi").into_iter().filter(|n| n.starts_with(IQN)).collect();
    found.extend(names("/sys/kernel/config/nvmet/subsystems").into_iter().filter(|n| n.starts_with(NQN)));
    for port in names("/sys/kernel/config/nvmet/ports") {
        let links = names(&format!("/sys/kernel/config/nvmet/ports/{port}/subsystems"));
        found.extend(links.into_iter().filter(|n| n.starts_with(NQN)).map(|n| format!("port {port} -> {n}")));
    }
    for s in names("/sys/class/iscsi_session") {
        found.extend(Some(read(format!("/sys/class/iscsi_session/{s}/targetname"))).filter(|t| t.starts_with(IQN)));
    }
    for c in names("/sys/class/nvme") {
        found.extend(Some(read(format!("/sys/class/nvme/{c}/subsysnqn"))).filter(|n| n.starts_with(NQN)));
    }
    // The testbed names its backstores rs<owner pid>.
    let testbed_named =
        |n: &str| n.strip_prefix("rs").is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    for hba in names("/sys/kernel/config/target/core").into_iter().filter(|h| h.starts_with("fileio_")) {
        let backstores = names(&format!("/sys/kernel/config/target/core/{hba}"));
        found.extend(backstores.into_iter().filter(|b| testbed_named(b)).map(|b| format!("{hba}/{b}")));
    }
    found.sort();
    found
}

/// Our child processes still running (a daemon or helper a stack started).
fn live_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for pid in names("/proc").into_iter().filter(|p| p.parse::<u32>().is_ok()) {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((comm, rest)) = stat.split_once(") ") else { continue };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
        if ppid == me && state != "Z" {
            found.push(format!("{pid} {}", comm.split_once('(').map_or(comm, |(_, c)| c)));
        }
    }
    found
}

fn spec(servicer: Servicer) -> StorageStackSpec {
    StorageStackSpec { servicer, ..StorageStackSpec::default() }
}

#[test]
fn kernel_loop_one_level() {
    round_trip("kernel_loop_one_level", spec(Servicer::KernelLoop), 32);
}

#[test]
fn qsd_fuse_one_level_in_memcg() {
    round_trip(
        "qsd_fuse_one_level_in_memcg",
        StorageStackSpec { memcg_limit_mb: Some(256), ..spec(Servicer::QsdFuse) },
        64,
    );
}

#[test]
fn qsd_fuse_two_levels() {
    round_trip("qsd_fuse_two_levels", StorageStackSpec { levels: 2, ..spec(Servicer::QsdFuse) }, 32);
}

#[test]
fn bindfs_in_memcg() {
    round_trip("bindfs_in_memcg", StorageStackSpec { memcg_limit_mb: Some(256), ..spec(Servicer::BindFs) }, 64);
}

#[test]
fn nbd_server_in_memcg() {
    round_trip("nbd_server_in_memcg", StorageStackSpec { memcg_limit_mb: Some(256), ..spec(Servicer::NbdServer) }, 64);
}

#[test]
fn qemu_nbd_under_dm_linear() {
    round_trip("qemu_nbd_under_dm_linear", StorageStackSpec { dm: Some(Dm::Linear), ..spec(Servicer::QemuNbd) }, 32);
}

#[test]
fn qsd_fuse_under_dm_crypt() {
    round_trip("qsd_fuse_under_dm_crypt", StorageStackSpec { dm: Some(Dm::Crypt), ..spec(Servicer::QsdFuse) }, 32);
}

#[test]
fn tcmu_zbc_under_dm_zoned() {
    // dm-zoned needs more zones than 512 MiB of 32 MiB zones leave it.
    let spec = StorageStackSpec { memcg_limit_mb: Some(256), image_mb: 1024, ..spec(Servicer::TcmuZbc) };
    round_trip("tcmu_zbc_under_dm_zoned", spec, 64);
}

#[test]
fn ublk_both_rublks() {
    for io_flusher in [false, true] {
        round_trip("ublk_rublk", spec(Servicer::Ublk { io_flusher }), 32);
    }
}

#[test]
fn iscsi_tgt_in_memcg() {
    round_trip("iscsi_tgt_in_memcg", StorageStackSpec { memcg_limit_mb: Some(256), ..spec(Servicer::IscsiTgt) }, 64);
}

#[test]
fn iscsi_lio_fileio() {
    round_trip("iscsi_lio_fileio", spec(Servicer::IscsiLio), 32);
}

#[test]
fn nvmet_tcp_file() {
    round_trip("nvmet_tcp_file", spec(Servicer::Nvmet), 32);
}

#[test]
fn nfs_loopback() {
    round_trip("nfs_loopback", spec(Servicer::NfsLoopback), 32);
}

/// mkfs.xfs refuses filesystems under 300 MB, so this build fails after qsd,
/// the memcg and the loop device exist: all of them must be gone again.
#[test]
fn failed_build_tears_down() {
    testbed::require_root("failed_build_tears_down");
    let _lock = testbed::lock().unwrap();
    let spec = StorageStackSpec { image_mb: 64, memcg_limit_mb: Some(64), ..StorageStackSpec::default() };
    let err = StorageStack::build("failed_build", &spec).unwrap_err();
    println!("build failed as expected: {err:#}");
    assert!(format!("{err:#}").contains("mkfs.xfs"));
    let pid = std::process::id();
    let workdir = PathBuf::from(format!("{}/failed_build-{pid}", testbed::WORK_ROOT));
    let memcg = Hierarchy::detect().unwrap().root().join(format!("reclaimscope-failed_build-{pid}"));
    assert_gone(&Footprint { workdir, loops: Vec::new(), memcg: Some(memcg), daemon: None, devices: Vec::new() });
    let qsd_left = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| fs::read_to_string(e.path().join("cmdline")).is_ok_and(|c| c.contains("failed_build-")));
    assert!(!qsd_left, "a qemu-storage-daemon of the failed build survives");
}

/// The deadlock recipe: qsd and a big writer in a 96 MiB memcg. Whether or
/// not the deadlock forms within the window, aborting FUSE and tearing down
/// must leave nothing behind within 90 s.
#[test]
fn deadlock_breaks_cleanly() {
    testbed::require_root("deadlock_breaks_cleanly");
    let _lock = testbed::lock().unwrap();
    let spec = StorageStackSpec { memcg_limit_mb: Some(96), ..StorageStackSpec::default() };
    let mut stack = StorageStack::build("deadlock", &spec).unwrap();
    let fp = check_built(&stack, &spec);
    let qsd = stack.daemon_pid.unwrap();
    let writer = stack.spawn_writer("big", 512).unwrap();

    // A thread counts as stuck once it stays in D state for 3 s in a row. The
    // writer blocking alone is mere throttling; the deadlock is the daemon
    // itself stuck, so only that ends the watch early.
    let started = Instant::now();
    let mut d_since: HashMap<(u32, u32), Instant> = HashMap::new();
    let mut stuck: HashMap<(u32, u32), Duration> = HashMap::new();
    while !stuck.keys().any(|&(p, _)| p == qsd) && started.elapsed() < Duration::from_secs(40) && pid_alive(writer) {
        let now = Instant::now();
        let blocked: Vec<(u32, u32)> =
            [qsd, writer].iter().flat_map(|&p| blocked_threads(p).into_iter().map(move |t| (p, t))).collect();
        d_since.retain(|k, _| blocked.contains(k));
        for k in blocked {
            let since = *d_since.entry(k).or_insert(now);
            if now - since >= Duration::from_secs(3) {
                stuck.entry(k).or_insert(since - started);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pressure = stack.memcg.as_ref().unwrap().pressure();
    let daemon_stuck = stuck.keys().any(|&(p, _)| p == qsd);
    println!(
        "deadlock {} after {:?} of writing (memcg pressure {pressure:?}, writer alive: {})",
        if daemon_stuck { "FORMED: qemu-storage-daemon stuck in D" } else { "did not form" },
        started.elapsed(),
        pid_alive(writer),
    );
    for (&(pid, tid), after) in &stuck {
        let who = if pid == qsd { "qemu-storage-daemon" } else { "writer" };
        let kstack = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")).unwrap_or_default();
        println!("{who} thread {tid} in D state since {after:?}, kernel stack now:\n{kstack}");
    }

    let t = Instant::now();
    stack.abort_fuse().unwrap();
    stack.teardown().unwrap();
    let took = t.elapsed();
    println!("abort + teardown took {took:?}");
    assert!(took < Duration::from_secs(90));
    assert_gone(&fp);
}

/// Env var that turns `stale_owner_child` into the victim of the sweep test.
const CHILD_ENV: &str = "TESTBED_STALE_CHILD";

/// Helper process for `sweep_cleans_up_after_a_killed_owner` (a no-op unless
/// that test starts it): builds a deadlocked stack, reports it, waits to be killed.
#[test]
fn stale_owner_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let spec = StorageStackSpec { memcg_limit_mb: Some(96), ..StorageStackSpec::default() };
    let mut stack = StorageStack::build("stale", &spec).unwrap();
    stack.spawn_writer("big", 512).unwrap();
    println!("READY {} {}", stack.workdir.display(), stack.daemon_pid.unwrap());
    std::thread::sleep(Duration::from_secs(300));
}

/// A run killed with SIGKILL never tears down; the next `sweep_stale` must
/// remove its mounts, loops, daemon, writer and memcg, from its ledger.
#[test]
fn sweep_cleans_up_after_a_killed_owner() {
    use std::io::BufRead;
    testbed::require_root("sweep_cleans_up_after_a_killed_owner");
    let _lock = testbed::lock().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stale_owner_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let ready = stdout.lines().map_while(Result::ok).find_map(|l| l.split_once("READY ").map(|(_, r)| r.to_owned()));
    let ready = ready.expect("child did not build its stack");
    let (workdir, qsd) = ready.split_once(' ').unwrap();
    let workdir = PathBuf::from(workdir);
    std::thread::sleep(Duration::from_secs(2)); // let the deadlock form
    let loops = loops_backed_under(&workdir);
    assert!(!loops.is_empty() && !mounts_under(&workdir).is_empty());
    let memcg = Hierarchy::detect().unwrap().root().join(format!("reclaimscope-stale-{}", child.id()));
    assert!(memcg.exists());
    child.kill().unwrap();
    child.wait().unwrap();

    let t = Instant::now();
    testbed::sweep_stale().unwrap();
    println!("sweep of a killed owner's deadlocked stack took {:?}", t.elapsed());
    assert_gone(&Footprint {
        workdir,
        loops,
        memcg: Some(memcg),
        daemon: Some(qsd.parse().unwrap()),
        devices: Vec::new(),
    });
}

/// A stack whose directory vanished while its loop device stayed bound
/// (what older teardowns left): the sweep still finds and detaches it.
#[test]
fn sweep_detaches_loops_of_a_vanished_workdir() {
    testbed::require_root("sweep_detaches_loops_of_a_vanished_workdir");
    let _lock = testbed::lock().unwrap();
    // A dead owner's name: a pid that is not running.
    let dead = (400_000..).find(|p| !pid_alive(*p)).unwrap();
    let dir = PathBuf::from(testbed::WORK_ROOT).join(format!("vanished-{dead}"));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lower.img");
    fs::File::create(&file).unwrap().set_len(64 << 20).unwrap();
    let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(&file).output().unwrap();
    let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loops_backed_under(&dir), vec![dev.clone()], "the loop outlives its directory");
    testbed::sweep_stale().unwrap();
    assert!(loops_backed_under(&dir).is_empty(), "{} still bound", dev.display());
}

/// The stacks whose servicer sits behind a network protocol on 127.0.0.1,
/// by the name `stale_network_child` takes.
const NETWORK_STACKS: [(&str, Servicer); 4] = [
    ("tgt", Servicer::IscsiTgt),
    ("lio", Servicer::IscsiLio),
    ("nvmet", Servicer::Nvmet),
    ("nfs", Servicer::NfsLoopback),
];

/// Env var that turns `stale_network_child` into a victim of
/// `sweep_undoes_network_stacks_of_a_killed_owner`: which stack to build.
const NETWORK_CHILD_ENV: &str = "TESTBED_STALE_NETWORK_CHILD";

/// Helper process (a no-op unless that test starts it): builds the named
/// stack, starts a writer through it, reports it, waits to be killed.
#[test]
fn stale_network_child() {
    let Some(which) = std::env::var(NETWORK_CHILD_ENV).ok() else {
        return;
    };
    let servicer = NETWORK_STACKS.iter().find(|(n, _)| *n == which).expect("a network stack's name").1;
    let mut stack = StorageStack::build("stale_network", &spec(servicer)).unwrap();
    stack.spawn_writer_outside_memcg("big", 256).unwrap();
    println!("READY {}", stack.workdir.display());
    std::thread::sleep(Duration::from_secs(300));
}

/// An owner killed with SIGKILL while writing through a network stack: the
/// next `sweep_stale` must log out, disconnect, unexport, remove the
/// configfs objects and stop the daemons, from its ledger alone.
#[test]
fn sweep_undoes_network_stacks_of_a_killed_owner() {
    use std::io::BufRead;
    testbed::require_root("sweep_undoes_network_stacks_of_a_killed_owner");
    let _lock = testbed::lock().unwrap();
    for (which, servicer) in NETWORK_STACKS {
        if let Err(module) = kernel_has(servicer, None) {
            // round_trip asserts how such a build fails.
            println!("{which}: this kernel has no {module}; nothing to sweep");
            continue;
        }
        let shared = Shared::now();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "stale_network_child", "--nocapture", "--test-threads=1"])
            .env(NETWORK_CHILD_ENV, which)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let ready =
            stdout.lines().map_while(Result::ok).find_map(|l| l.split_once("READY ").map(|(_, r)| r.to_owned()));
        let workdir = PathBuf::from(ready.unwrap_or_else(|| panic!("{which}: the child did not build its stack")));
        std::thread::sleep(Duration::from_secs(1));
        assert!(!mounts_under(&workdir).is_empty(), "{which}: nothing mounted");
        child.kill().unwrap();
        child.wait().unwrap();

        let t = Instant::now();
        testbed::sweep_stale().unwrap();
        println!("{which}: sweep of a killed owner's stack took {:?}", t.elapsed());
        assert!(mounts_under(&workdir).is_empty(), "{which}: mounts left: {:?}", mounts_under(&workdir));
        assert!(loops_backed_under(&workdir).is_empty(), "{which}: loops left");
        assert!(!workdir.exists(), "{which}: {} left", workdir.display());
        assert_eq!(Shared::now(), shared, "{which}: state outside the workdir changed");
    }
}
