//! Arbitrary bytes into the trace reader, twice: as a file, and framed into
//! whole, correctly checksummed records after a valid header, so the payload
//! decoders behind the CRC are fuzzed too. The reader must never panic, and
//! what it reports must add up: it stops exactly where the damage is, and a
//! file it read to the end has no damage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reclaimscope::trace::{DamageReason, Record, TraceReader, FORMAT_VERSION, MAGIC};

/// Reads everything and checks the reader's account of it.
fn drain(bytes: &[u8]) -> Option<DamageReason> {
    let Ok(mut r) = TraceReader::from_bytes(bytes) else { return None };
    let _ = r.header();
    for rec in r.by_ref() {
        if let Record::Event(e) = &rec {
            let _ = (e.stack_id(), e.scan_fn());
        }
    }
    match r.damage() {
        Some(d) => {
            assert_eq!(d.offset, r.bytes_read());
            assert_eq!(d.index, r.records_read());
            assert!(d.offset < bytes.len() as u64);
            Some(d.reason.clone())
        }
        None => {
            assert_eq!(r.bytes_read(), bytes.len() as u64);
            None
        }
    }
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

const HEADER: &[u8] = br#"{"agent_version":"0","kernel_release":"6.18.0","hostname":"h","started_unix_ns":0,"command":"c","topology":{},"attach":{}}"#;

fuzz_target!(|data: &[u8]| {
    drain(data);

    // [type][len][payload: len bytes] ..., each made a whole record.
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    frame(&mut file, 1, HEADER);
    let mut rest = data;
    while let [ty, len, tail @ ..] = rest {
        let (payload, tail) = tail.split_at((*len as usize).min(tail.len()));
        frame(&mut file, *ty % 8, payload);
        rest = tail;
    }
    if let Some(reason) = drain(&file) {
        assert!(
            matches!(reason, DamageReason::UnknownType(_) | DamageReason::BadPayload(_)),
            "whole records reported as {reason:?}"
        );
    }
});
