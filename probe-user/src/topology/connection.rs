//! Who serves a connection-borne device, found by its transport and never
//! by a program's name: the one code path behind iSCSI, NVMe/TCP, nbd and
//! NFS. A device's driver records its connection (a [`Link`]); the server
//! end of that connection, when it is on this host, is held by a process
//! (tgtd, nbd-server, SPDK, nfs-ganesha...), whose threads are judged as
//! any servicer's, or by the kernel (LIO, nvmet, knfsd), whose own records
//! say which service it is and which threads do its I/O.

use super::kernel_target;
use super::model::{Confidence, KernelTarget, Link, Note, Protection, Remedy, Servicer, ServicerKind, Transport};
use super::model::{Dev, Mount};
use super::sockets::{Sock, Sockets};
use super::source::Source;
use std::collections::BTreeSet;

/// The other end of a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Processes holding the accepting end.
    Processes(BTreeSet<u32>),
    /// An in-kernel server, with the record that names it.
    Kernel(KernelTarget, String),
    /// An accepting end on this host that no process holds and no kernel
    /// service claims.
    UnknownKernel,
    /// No accepting end here: a remote server (or another network namespace).
    Away,
}

/// The server end of `link`. With the client's port, the very connection
/// is followed; without it, every accepted connection to the server's
/// address counts (they all end at the same listener).
pub(crate) fn peer(src: &Source, sockets: &Sockets, link: &Link) -> Peer {
    let accepted: Vec<&Sock> = match link.local_port {
        Some(port) => sockets.connection_from(port, link.remote).and_then(|c| sockets.peer(c)).into_iter().collect(),
        None => sockets.socks.iter().filter(|s| !s.listening && s.local == link.remote).collect(),
    };
    if accepted.is_empty() {
        return Peer::Away;
    }
    let owners: BTreeSet<u32> = accepted.iter().filter_map(|s| sockets.owner(s)).collect();
    if !owners.is_empty() {
        return Peer::Processes(owners);
    }
    match kernel_target::listening_on(src, link.remote) {
        Some((k, record)) => Peer::Kernel(k, record),
        None => Peer::UnknownKernel,
    }
}

/// The device (or mount) a servicer is found for.
pub(crate) struct Served<'a> {
    pub dev: Dev,
    pub label: String,
    pub mounts: &'a [Mount],
}

/// The servicers at the far end of `links`, or a warning saying why there
/// are none on this host.
pub(crate) fn servicers(
    src: &Source,
    sockets: &Sockets,
    served: &Served,
    links: &[Link],
    warnings: &mut Vec<String>,
) -> Vec<Servicer> {
    let mut out: Vec<Servicer> = Vec::new();
    for link in links {
        let found = match peer(src, sockets, link) {
            Peer::Processes(pids) => processes(src, served, link, &pids),
            Peer::Kernel(k, record) => kernel(src, served, link, k, &record),
            Peer::UnknownKernel => {
                warnings.push(format!(
                    "{}: the server end of its {link} is held by the kernel, but no kernel target this tool knows \
                     (LIO, nvmet, knfsd) claims it: name its threads with --servicer",
                    served.label
                ));
                Vec::new()
            }
            Peer::Away => Vec::new(),
        };
        for s in found {
            if !out.iter().any(|o| o.tgid == s.tgid && o.comm == s.comm) {
                out.push(s);
            }
        }
    }
    out
}

/// The kind of servicer a transport's server is.
fn kind_of(t: Transport) -> ServicerKind {
    match t {
        Transport::Iscsi => ServicerKind::IscsiTarget,
        Transport::NvmeTcp => ServicerKind::NvmeTarget,
        Transport::Nbd => ServicerKind::NbdServer,
        Transport::Nfs => ServicerKind::NfsServer,
    }
}

fn processes(src: &Source, served: &Served, link: &Link, pids: &BTreeSet<u32>) -> Vec<Servicer> {
    let why = Confidence::Certain { why: format!("holds the server end of the {link}") };
    pids.iter()
        .filter_map(|&pid| {
            Servicer::process(
                src,
                served.mounts,
                kind_of(link.transport),
                pid,
                served.dev,
                served.label.clone(),
                why.clone(),
            )
        })
        .collect()
}

/// An in-kernel server: its own threads, judged by their flags like any
/// servicer's, or the work items it runs in shared kworkers.
fn kernel(src: &Source, served: &Served, link: &Link, k: KernelTarget, record: &str) -> Vec<Servicer> {
    let why = Confidence::Certain { why: format!("{k} serves the {link} ({record})") };
    let kind = kind_of(link.transport);
    let threads = kernel_target::threads(src, k);
    if !threads.is_empty() {
        return threads
            .into_iter()
            .filter_map(|pid| {
                Servicer::process(src, served.mounts, kind, pid, served.dev, served.label.clone(), why.clone())
            })
            .map(|mut s| {
                s.note = Some(Note::KernelTarget(k));
                s
            })
            .collect();
    }
    vec![Servicer {
        kind,
        tgid: None,
        comm: format!("kworker (workqueues {})", kernel_target::workqueues(k).join(", ")),
        program: None,
        serves: served.dev,
        serves_name: served.label.clone(),
        threads: Vec::new(),
        serving_tids: Vec::new(),
        // Its work items run under no memalloc scope (nvmet_tcp_io_work,
        // nvmet_file_execute_rw): what an idle kworker's flags cannot show.
        protection: Protection::Unprotected,
        kernel: true,
        confidence: why,
        data_files: Vec::new(),
        under_mounts: Vec::new(),
        supports: Vec::new(),
        remedy: Remedy::KernelScope,
        note: Some(Note::KernelTarget(k)),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::fakeproc::FakeProc;
    use crate::topology::procs::Holders;

    const HEADER: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    /// An iSCSI initiator (iscsid's socket, 22493) logged in from port
    /// 50852 to 127.0.0.1:3260, whose accepted end (20963) is `owner`'s,
    /// or the kernel's when `owner` is `None`.
    fn system(owner: Option<u32>) -> (FakeProc, Holders) {
        let f = FakeProc::new();
        f.file(
            "proc/net/tcp",
            &format!(
                "{HEADER}\
   0: 00000000:0CBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20797 1 0 100 0 0 10 0\n\
   1: 0100007F:0CBC 0100007F:C6A4 01 00000000:00000000 02:0002BDAC 00000000     0        0 20963 2 0 20 4 1 10 -1\n\
   2: 0100007F:C6A4 0100007F:0CBC 01 00000000:00000000 00:00000000 00000000     0        0 22493 1 0 20 4 1 10 -1\n"
            ),
        );
        let mut h = Holders::default();
        h.by_node.insert("socket:[22493]".into(), vec![(419, 10)]);
        if let Some(pid) = owner {
            h.by_node.insert("socket:[20963]".into(), vec![(pid, 13)]);
        }
        (f, h)
    }

    fn link(remote: &str, local_port: Option<u16>) -> Link {
        Link { transport: Transport::Iscsi, remote: remote.parse().unwrap(), local_port }
    }

    #[test]
    fn a_process_holding_the_accepted_end_serves_it() {
        let (f, h) = system(Some(386));
        let src = f.source();
        let s = Sockets::read(&src).with_owners(&h);
        assert_eq!(peer(&src, &s, &link("127.0.0.1:3260", Some(50852))), Peer::Processes(BTreeSet::from([386])));
        // Without the local port, every accepted connection to the address counts.
        assert_eq!(peer(&src, &s, &link("127.0.0.1:3260", None)), Peer::Processes(BTreeSet::from([386])));
    }

    #[test]
    fn a_kernel_held_accepted_end_is_the_kernel_service_that_claims_the_address() {
        let (f, h) = system(None);
        let src = f.source();
        let s = Sockets::read(&src).with_owners(&h);
        assert_eq!(peer(&src, &s, &link("127.0.0.1:3260", Some(50852))), Peer::UnknownKernel);
        f.file("sys/kernel/config/target/iscsi/iqn.2026-12.rs:lio/tpgt_1/np/127.0.0.1:3260/enable", "1\n");
        assert!(matches!(peer(&src, &s, &link("127.0.0.1:3260", Some(50852))), Peer::Kernel(KernelTarget::Lio, _)));
    }

    #[test]
    fn no_accepted_end_here_is_a_remote_server() {
        let (f, h) = system(Some(386));
        let src = f.source();
        let s = Sockets::read(&src).with_owners(&h);
        assert_eq!(peer(&src, &s, &link("10.0.0.7:3260", Some(50852))), Peer::Away);
        assert_eq!(peer(&src, &s, &link("127.0.0.1:3260", Some(40000))), Peer::Away, "another connection's port");
    }
}
