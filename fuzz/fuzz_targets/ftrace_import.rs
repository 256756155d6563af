//! Arbitrary text into the ftrace importer: it must never panic, and every
//! event it produces must be a whole `Event<T>` of a known kind whose
//! shrinker callback it can name.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use probe_common::events::{
    DirtyThrottleEvent, EventKind, OomVictimEvent, ReclaimEvent, ReclaimWriteEvent, ShrinkerEvent, WritebackWaitEvent,
};
use reclaimscope::flags::GfpNames;
use reclaimscope::postmortem::ftrace::import;

static GFP: OnceLock<GfpNames> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(im) = import(data, GFP.get_or_init(GfpNames::builtin)) else { return };
    for (_, bytes) in &im.events {
        let kind = u32::from_ne_bytes(bytes[..4].try_into().unwrap());
        let size = match EventKind::from_u32(kind).expect("a known event kind") {
            EventKind::ReclaimBegin | EventKind::ReclaimEnd => size_of::<ReclaimEvent>(),
            EventKind::Shrinker => size_of::<ShrinkerEvent>(),
            EventKind::WritebackWait => size_of::<WritebackWaitEvent>(),
            EventKind::ReclaimWrite => size_of::<ReclaimWriteEvent>(),
            EventKind::OomVictim => size_of::<OomVictimEvent>(),
            EventKind::DirtyThrottle => size_of::<DirtyThrottleEvent>(),
        };
        assert_eq!(bytes.len(), size);
    }
    let mut addrs: Vec<u64> = im.symbols.iter().map(|s| s.addr).collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), im.symbols.len(), "one number per callback name");
});
