//! The storage-stack model: what discovery finds and every consumer reads
//! (devices, mounts, servicers), with no discovery in it. The files beside
//! this folder fill it in, one transport or /proc source each.

mod block;
mod dev;
mod known;
mod link;
mod mount;
mod servicer;
mod topology;

pub use block::{BackingFile, BlockDevice, DeviceKind};
pub use dev::{Dev, FileId};
pub use known::KnownServicer;
pub use link::{KernelTarget, Link, Transport};
pub use mount::Mount;
pub use servicer::{
    protection_of, Confidence, DataFile, Note, Protection, Remedy, Servicer, ServicerKind, ServicerThread,
};
pub use topology::Topology;
