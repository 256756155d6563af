//! The network connection a device's I/O travels over, as its driver
//! records it: what discovery follows to the task at the other end.

use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;

/// The protocol a connection-borne device speaks.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Iscsi,
    NvmeTcp,
    Nbd,
    Nfs,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Iscsi => "iSCSI",
            Transport::NvmeTcp => "NVMe/TCP",
            Transport::Nbd => "NBD",
            Transport::Nfs => "NFS",
        })
    }
}

/// One connection of a device (or of an NFS mount): where it goes and,
/// when the driver records it, the local port it comes from.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub transport: Transport,
    /// The server's address and port.
    pub remote: SocketAddr,
    /// The client's port, which picks one connection out of several to
    /// the same server (iSCSI records it; NVMe/TCP and NFS do not).
    pub local_port: Option<u16>,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.local_port {
            Some(p) => write!(f, "{} connection from port {p} to {}", self.transport, self.remote),
            None => write!(f, "{} connection to {}", self.transport, self.remote),
        }
    }
}

/// A kernel service that serves storage over TCP: a listening socket that
/// no process holds is one of these, as its own records say.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KernelTarget {
    /// LIO's iSCSI target (iscsi_target_mod).
    Lio,
    /// The NVMe-oF target over TCP (nvmet, nvmet-tcp).
    Nvmet,
    /// The kernel NFS server.
    Knfsd,
}

impl fmt::Display for KernelTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelTarget::Lio => "LIO iSCSI target",
            KernelTarget::Nvmet => "nvmet",
            KernelTarget::Knfsd => "knfsd",
        })
    }
}
