//! ublk: a block device (ublkbN) whose I/O a userspace server completes
//! through the character device /dev/ublkcN, which the server holds open.

use super::model::BlockDevice;
use super::model::{Servicer, ServicerKind};
use super::process::holder_servicers;
use super::seen::Seen;

/// The servers of ublk device `d`: the processes holding its control node.
pub(super) fn servers(seen: Seen, d: &BlockDevice, warnings: &mut Vec<String>) -> Vec<Servicer> {
    let Seen { src, mounts, holders, .. } = seen;
    let node = format!("/dev/ublkc{}", d.name.trim_start_matches("ublkb"));
    let found = holder_servicers(src, mounts, holders, &node, ServicerKind::Ublk, d.dev, d.label());
    if found.is_empty() {
        warnings.push(format!(
            "{}: no process holds {node} open (ublk server gone, or not visible without root)",
            d.label()
        ));
    }
    found
}
