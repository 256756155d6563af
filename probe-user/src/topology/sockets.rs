//! This host's TCP sockets, from /proc/net/tcp and /proc/net/tcp6, and the
//! process holding each (from the fd index): what a connection-borne
//! device's transport is followed through to the task at the other end.
//!
//! Addresses are compared as addresses, not as the kernel prints them: a
//! client that connected to 127.0.0.1 shows in /proc/net/tcp, while the
//! server that accepted it on a dual-stack `[::]` listener shows in
//! /proc/net/tcp6 as ::ffff:127.0.0.1.

use super::procs::Holders;
use super::source::Source;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP_ESTABLISHED and TCP_LISTEN as /proc/net/tcp prints the state.
const ESTABLISHED: &str = "01";
const LISTEN: &str = "0A";

/// One TCP socket of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sock {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub listening: bool,
    pub inode: u64,
}

/// The TCP sockets and who holds them.
#[derive(Debug, Default)]
pub(crate) struct Sockets {
    pub socks: Vec<Sock>,
    /// Socket inode → the first process holding it; a socket no process
    /// holds is the kernel's (nbd, iSCSI and NVMe/TCP clients, in-kernel
    /// targets and servers).
    owner: BTreeMap<u64, u32>,
}

impl Sockets {
    /// Reads the tables, with no owners yet.
    pub fn read(src: &Source) -> Sockets {
        let mut socks = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            socks.extend(src.read(table).unwrap_or_default().lines().skip(1).filter_map(parse_line));
        }
        Sockets { socks, owner: BTreeMap::new() }
    }

    /// Who holds each socket, from `holders` (which must hold sockets:
    /// see procindex.rs).
    pub fn with_owners(mut self, holders: &Holders) -> Sockets {
        self.owner =
            holders.by_node.iter().filter_map(|(node, fds)| Some((socket_inode(node)?, fds.first()?.0))).collect();
        self
    }

    /// Whether a connection to `server` was accepted on this host: only
    /// then is its server worth looking for among the processes.
    pub fn accepted_here(&self, server: SocketAddr) -> bool {
        self.socks.iter().any(|s| !s.listening && s.local == server)
    }

    /// The process holding a socket; `None` when only the kernel does.
    pub fn owner(&self, s: &Sock) -> Option<u32> {
        self.owner.get(&s.inode).copied()
    }

    /// Established connections whose local end `pid` holds.
    pub fn held_by(&self, pid: u32) -> impl Iterator<Item = &Sock> {
        self.socks.iter().filter(move |s| !s.listening && self.owner(s) == Some(pid))
    }

    /// Established connections no process holds.
    pub fn kernel_held(&self) -> impl Iterator<Item = &Sock> {
        self.socks.iter().filter(|s| !s.listening && self.owner(s).is_none())
    }

    /// The other end of connection `s`, when it is on this host.
    pub fn peer(&self, s: &Sock) -> Option<&Sock> {
        self.socks.iter().find(|p| !p.listening && p.local == s.remote && p.remote == s.local)
    }

    /// The connection from local port `port` to `remote`.
    pub fn connection_from(&self, port: u16, remote: SocketAddr) -> Option<&Sock> {
        self.socks.iter().find(|s| !s.listening && s.local.port() == port && s.remote == remote)
    }
}

/// The socket inode of an fd link target ("socket:[1234]").
pub(crate) fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// One line of /proc/net/tcp{,6}: `sl local remote st ... uid timeout inode`.
fn parse_line(line: &str) -> Option<Sock> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let state = *f.get(3)?;
    if state != ESTABLISHED && state != LISTEN {
        return None;
    }
    Some(Sock {
        local: parse_addr(f.get(1)?)?,
        remote: parse_addr(f.get(2)?)?,
        listening: state == LISTEN,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// "0100007F:0CBC" (IPv4) or 32 hex digits and a port (IPv6), each 32-bit
/// word in host (little-endian) order as the kernel prints it; an
/// IPv4-mapped IPv6 address comes back as IPv4.
pub(crate) fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| ip.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::swap_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_be_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_the_kernel_prints_them() {
        assert_eq!(parse_addr("0100007F:0CBC"), Some("127.0.0.1:3260".parse().unwrap()));
        // nbd-server on [::]: the accepted IPv4 client is ::ffff:127.0.0.1.
        assert_eq!(parse_addr("0000000000000000FFFF00000100007F:2A39"), Some("127.0.0.1:10809".parse().unwrap()));
        assert_eq!(parse_addr("00000000000000000000000001000000:0801"), Some("[::1]:2049".parse().unwrap()));
        assert_eq!(parse_addr("00000000000000000000000000000000:0000"), Some("[::]:0".parse().unwrap()));
        assert_eq!(parse_addr("0100007F"), None);
        assert_eq!(parse_addr("zz00007F:0CBC"), None);
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/nbd0"), None);
    }

    /// The tables of a 6.1 guest: nbd-client (kernel-held, IPv4) to an
    /// nbd-server listening on [::], and a tgtd listener.
    fn seen() -> Sockets {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0CBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20797 1 0 100 0 0 10 0\n\
   3: 0100007F:939A 0100007F:2A39 01 00000000:00000000 00:00000000 00000000     0        0 23845 1 0 20 4 1 10 -1\n\
   4: 0100007F:02D3 0100007F:0801 06 00000000:00000000 03:00001456 00000000     0        0 0 3 0\n";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   1: 00000000000000000000000000000000:2A39 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21443 1 0 100 0 0 10 0\n\
   3: 0000000000000000FFFF00000100007F:2A39 0000000000000000FFFF00000100007F:939A 01 00000000:00000000 02:000AFAE0 00000000     0        0 21447 2 0 20 4 1 10 -1\n";
        let socks = [tcp, tcp6].iter().flat_map(|t| t.lines().skip(1).filter_map(parse_line)).collect();
        Sockets { socks, owner: BTreeMap::from([(21443, 574), (21447, 574), (20797, 386)]) }
    }

    #[test]
    fn the_peer_of_a_kernel_held_ipv4_client_is_found_on_an_ipv6_listener() {
        let s = seen();
        let client: Vec<&Sock> = s.kernel_held().collect();
        assert_eq!(client.len(), 1, "TIME_WAIT is no connection: {client:?}");
        let server = s.peer(client[0]).expect("the accepted end");
        assert_eq!(s.owner(server), Some(574));
        assert_eq!(s.connection_from(0x939A, "127.0.0.1:10809".parse().unwrap()), Some(client[0]));
    }
}
