//! What every transport's discovery reads, in one value: each transport
//! module takes it, and transport.rs passes it to each, so no transport
//! imports the module that calls it.

use super::model::{BlockDevice, Mount};
use super::procs::Holders;
use super::sockets::Sockets;
use super::source::Source;

/// What every transport's discovery reads: the system, its mounts and
/// block devices, which processes hold which device nodes, and the
/// TCP sockets.
#[derive(Clone, Copy)]
pub(crate) struct Seen<'a> {
    pub src: &'a Source,
    pub mounts: &'a [Mount],
    pub devices: &'a [BlockDevice],
    pub holders: &'a Holders,
    /// TCP sockets and their holders (empty unless a device or mount
    /// travels over a connection).
    pub sockets: &'a Sockets,
}
