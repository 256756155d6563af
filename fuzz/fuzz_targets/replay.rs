//! Arbitrary bytes through the whole of `reclaimscope report`: replayed as a
//! trace file and as an ftrace text capture, through the decoder and the
//! detection engine, then rendered as text and as JSON. It must never panic.
//!
//! Two passes, as in `trace_reader`. The first takes the bytes as a file.
//! The second builds a well-formed trace from them, so that mutations get
//! past the CRC: `[u16 LE n][n bytes: the header's gfp_format]` and then
//! `[type][u16 LE len][payload: len bytes]` chunks, each framed as a whole
//! record. The header's GFP table reaches the GFP expression parser, stack,
//! finding and topology payloads the JSON decoders and the stack index, and
//! event payloads `Event::parse` and the rules.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use reclaimscope::{
    names::GfpNames,
    output::report::{render, ReportView},
    postmortem::replay::{self, Report},
    topology::Dev,
    trace::{FORMAT_VERSION, MAGIC},
};

const AFTER: Duration = Duration::from_secs(5);
/// What `report --format ftrace --servicer 4242=7:0` names.
const SERVICERS: &[(u32, Dev)] = &[(4242, Dev::new(7, 0)), (4243, Dev::new(7, 1))];

static GFP: OnceLock<GfpNames> = OnceLock::new();

fn show(report: anyhow::Result<Report>) {
    // An error is fine (one line to the user); a report must render both ways.
    let Ok(r) = report else { return };
    let text = render(&r);
    assert!(text.starts_with("report of "), "{text}");
    serde_json::to_string(&ReportView::new(&r)).expect("a report always serialises");
}

/// The framing of docs/trace-format.md, written out independently.
fn frame(out: &mut Vec<u8>, ty: u8, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&[ty]);
    h.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.push(ty);
    out.extend_from_slice(payload);
}

/// Splits a `[u16 LE n][n bytes]` chunk off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let n = match rest {
        [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
        _ => 0,
    };
    let body = rest.get(2..).unwrap_or_default();
    let (head, tail) = body.split_at(n.min(body.len()));
    *rest = tail;
    head
}

fuzz_target!(|data: &[u8]| {
    let gfp = GFP.get_or_init(GfpNames::builtin);
    show(replay::trace_bytes(data, "fuzz.trace", AFTER));
    show(replay::ftrace_bytes(data, "fuzz.txt", SERVICERS, gfp.clone(), AFTER));

    let mut rest = data;
    let gfp_format = String::from_utf8_lossy(take(&mut rest)).into_owned();
    let header = serde_json::json!({
        "agent_version": "0", "kernel_release": "6.18.0", "hostname": "h", "started_unix_ns": 0,
        "command": "reclaimscope record", "attach": {}, "gfp_format": gfp_format,
        "topology": {"index": {"mounts": [], "backing": [], "servicers": []}, "topology": {}},
    });
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    frame(&mut file, 1, &serde_json::to_vec(&header).unwrap());
    while let [ty, tail @ ..] = rest {
        rest = tail;
        let payload = take(&mut rest);
        frame(&mut file, *ty % 8, payload);
    }
    show(replay::trace_bytes(&file, "fuzz.trace", AFTER));
});
