//! What the kernel side must and must not do on every event, checked in the
//! embedded eBPF object itself (only the ELF is parsed: no root, no kernel),
//! since neither shows on a machine until a long run or an overflow.

use aya_obj::Object;

use crate::agent::session::BPF_OBJECT;

fn object() -> Object {
    Object::parse(BPF_OBJECT).expect("the embedded eBPF object parses")
}

/// The kernel side counts what it loses and never logs (aya-log): a log
/// line in a hook is a ring-buffer write per event, and the one that said
/// "ring buffer full" per dropped event flooded the log during an
/// overflow. The agent logs drops from EVENTS_DROPPED, rate-limited.
#[test]
fn the_kernel_side_has_no_log_channel() {
    let obj = object();
    let mut logs: Vec<&String> = obj.maps.keys().filter(|m| m.starts_with("AYA_LOG")).collect();
    logs.sort();
    assert!(logs.is_empty(), "the eBPF object logs through aya-log ({logs:?})");
}
