//! In-kernel servers a connection can end at: a listening socket that no
//! process holds belongs to the kernel, and the kernel's own records say
//! which service bound it. Each service then names the kernel threads that
//! do its I/O, or says that work items in shared kworkers do.

use super::model::KernelTarget;
use super::procs;
use super::source::Source;
use probe_common::flags::PF_KTHREAD;
use std::net::SocketAddr;

/// The service whose record says it listens on `to`, and that record.
pub(crate) fn listening_on(src: &Source, to: SocketAddr) -> Option<(KernelTarget, String)> {
    lio_portal(src, to)
        .map(|r| (KernelTarget::Lio, r))
        .or_else(|| nvmet_port(src, to).map(|r| (KernelTarget::Nvmet, r)))
        .or_else(|| knfsd_port(src, to).map(|r| (KernelTarget::Knfsd, r)))
}

/// The kernel threads that complete its I/O, by the names the module
/// gives them (a process cannot pass for one: PF_KTHREAD is checked).
/// LIO receives each connection's data and runs its writes in that
/// connection's iscsi_trx thread; knfsd's threads run each request.
/// nvmet has none of its own: its work items run in shared kworkers.
fn thread_names(k: KernelTarget) -> &'static [&'static str] {
    match k {
        KernelTarget::Lio => &["iscsi_trx", "iscsi_ttx"],
        KernelTarget::Knfsd => &["nfsd"],
        KernelTarget::Nvmet => &[],
    }
}

/// The workqueues whose kworkers run its work items, when it has no
/// threads of its own (as nvmet-tcp and nvmet's file backend name them).
pub(crate) fn workqueues(k: KernelTarget) -> &'static [&'static str] {
    match k {
        KernelTarget::Nvmet => &["nvmet_tcp_wq", "nvmet-wq", "nvmet-buffered-io-wq"],
        _ => &[],
    }
}

/// Its threads' pids (each kernel thread is its own process).
pub(crate) fn threads(src: &Source, k: KernelTarget) -> Vec<u32> {
    let names = thread_names(k);
    if names.is_empty() {
        return Vec::new();
    }
    kernel_threads(src)
        .into_iter()
        .filter(|&pid| {
            let Some(t) = procs::threads(src, pid).into_iter().next() else { return false };
            t.flags & PF_KTHREAD != 0 && names.contains(&t.comm.as_str())
        })
        .collect()
}

/// Kernel threads: the children of kthreadd (pid 2), or every process
/// when /proc does not list children (CONFIG_PROC_CHILDREN unset).
fn kernel_threads(src: &Source) -> Vec<u32> {
    match src.read("/proc/2/task/2/children") {
        Ok(text) => text.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        Err(_) => procs::pids(src),
    }
}

/// LIO names each network portal directory "ADDR:PORT" ("[::1]:3260" for IPv6).
fn lio_portal(src: &Source, to: SocketAddr) -> Option<String> {
    let root = "/sys/kernel/config/target/iscsi";
    for iqn in src.read_dir(root).ok()? {
        for tpg in src.read_dir(&format!("{root}/{iqn}")).unwrap_or_default().iter().filter(|t| t.starts_with("tpgt_"))
        {
            for np in src.read_dir(&format!("{root}/{iqn}/{tpg}/np")).unwrap_or_default() {
                if np.parse::<SocketAddr>().is_ok_and(|a| serves(a, to)) {
                    return Some(format!("{root}/{iqn}/{tpg}/np/{np}"));
                }
            }
        }
    }
    None
}

/// An nvmet port of transport tcp bound to `to`.
fn nvmet_port(src: &Source, to: SocketAddr) -> Option<String> {
    let root = "/sys/kernel/config/nvmet/ports";
    src.read_dir(root).ok()?.into_iter().find_map(|port| {
        let attr = |a: &str| src.read_line(&format!("{root}/{port}/{a}"));
        let addr = SocketAddr::new(attr("addr_traddr")?.parse().ok()?, attr("addr_trsvcid")?.parse().ok()?);
        (attr("addr_trtype")? == "tcp" && serves(addr, to)).then(|| format!("{root}/{port}"))
    })
}

/// knfsd lists its sockets as "tcp 2049" (no address: it binds them all).
fn knfsd_port(src: &Source, to: SocketAddr) -> Option<String> {
    let list = "/proc/fs/nfsd/portlist";
    let text = src.read(list).ok()?;
    text.lines()
        .any(|l| l.split_once(' ').is_some_and(|(proto, port)| proto == "tcp" && port.trim().parse() == Ok(to.port())))
        .then(|| format!("{list}: tcp {}", to.port()))
}

/// A socket bound to `bound` accepts connections to `to`.
fn serves(bound: SocketAddr, to: SocketAddr) -> bool {
    bound.port() == to.port() && (bound.ip() == to.ip() || bound.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::fakeproc::FakeProc;

    #[test]
    fn each_service_is_known_by_its_own_record() {
        let f = FakeProc::new();
        f.file("sys/kernel/config/target/iscsi/iqn.2026-12.rs:lio/tpgt_1/np/127.0.0.1:3261/enable", "1\n");
        for (a, v) in [("addr_trtype", "tcp"), ("addr_traddr", "127.0.0.1"), ("addr_trsvcid", "4420")] {
            f.file(&format!("sys/kernel/config/nvmet/ports/1/{a}"), &format!("{v}\n"));
        }
        f.file("proc/fs/nfsd/portlist", "tcp 2049\ntcp 2049\n");
        let src = f.source();
        let on = |a: &str| listening_on(&src, a.parse().unwrap()).map(|(k, _)| k);
        assert_eq!(on("127.0.0.1:3261"), Some(KernelTarget::Lio));
        assert_eq!(on("127.0.0.1:4420"), Some(KernelTarget::Nvmet));
        assert_eq!(on("127.0.0.1:2049"), Some(KernelTarget::Knfsd));
        assert_eq!(on("[::1]:2049"), Some(KernelTarget::Knfsd));
        assert_eq!(on("10.0.0.9:4420"), None, "bound to 127.0.0.1 only");
        assert_eq!(on("127.0.0.1:3260"), None);
    }
}
