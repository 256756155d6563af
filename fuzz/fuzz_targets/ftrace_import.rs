//! Arbitrary text into the ftrace importer: it must never panic, every event
//! it produces must come back unchanged through the trace files' byte codec,
//! and each shrinker callback name must have one number.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use reclaimscope::events::decode::Event;
use reclaimscope::names::GfpNames;
use reclaimscope::postmortem::ftrace::import;

static GFP: OnceLock<GfpNames> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(im) = import(data, GFP.get_or_init(GfpNames::builtin)) else { return };
    for ev in &im.events {
        let bytes = ev.to_bytes();
        let back = Event::parse(&bytes).expect("an imported event decodes");
        assert_eq!(back.to_bytes(), bytes);
    }
    let mut addrs: Vec<u64> = im.symbols.iter().map(|s| s.addr).collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), im.symbols.len(), "one number per callback name");
});
