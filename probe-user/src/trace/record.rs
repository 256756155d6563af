//! What a trace file holds, and each record's payload encoding: JSON for
//! everything but events, which keep the kernel's bytes.

use anyhow::{Context, Result};
use serde::{de::IgnoredAny, Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::{frame::RecordType, legacy::FindingV1};
use crate::{
    detect::{finding::Finding, index::StorageIndex},
    events::decode::Event,
};

/// JSON kept as the agent wrote it, for people and other tools: the
/// replay never interprets it, so its schema may grow freely.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Opaque(Box<RawValue>);

impl Opaque {
    pub fn of<T: Serialize>(value: &T) -> Result<Opaque> {
        Ok(Opaque(serde_json::value::to_raw_value(value).context("cannot encode a trace record")?))
    }

    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl Default for Opaque {
    fn default() -> Opaque {
        Opaque(RawValue::from_string("{}".into()).expect("{} is JSON"))
    }
}

impl PartialEq for Opaque {
    fn eq(&self, other: &Opaque) -> bool {
        self.json() == other.json()
    }
}

/// A storage-topology snapshot: the index the rules read, which must
/// decode (a trace whose index does not is refused, not replayed with an
/// empty one), and the whole topology as discovered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopologyRecord {
    pub index: StorageIndex,
    pub topology: Opaque,
}

/// The first record of every file: what was recorded, where, and how. A
/// rotated file repeats its recording's header unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// The reclaimscope version that recorded (the format version is in the
    /// file's preamble; see [`TraceReader::format_version`](super::TraceReader::format_version)).
    pub agent_version: String,
    pub kernel_release: String,
    pub hostname: String,
    pub started_unix_ns: u64,
    /// The command line of the recording agent.
    pub command: String,
    /// The storage topology when recording started; later snapshots are
    /// [`Record::Topology`] records.
    pub topology: TopologyRecord,
    /// Which probe implementation each hook used (`attach::AttachReport`).
    pub attach: Opaque,
    /// The recording kernel's GFP name table as it printed it: its
    /// `events/vmscan/mm_vmscan_direct_reclaim_begin/format` file (or just
    /// that file's `print fmt:` line), which `names::GfpNames::parse_format`
    /// reads. With it a report on another kernel names gfp masks as the
    /// recording kernel did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gfp_format: Option<String>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC when recording started: added
    /// to an event's `ts_ns` it gives Unix time, so an exported timeline
    /// lines up with other traces. Traces written before it existed lack
    /// it; [`OffsetEstimate`](super::OffsetEstimate) recovers it from the
    /// event records' read times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monotonic_to_unix_ns: Option<i64>,
}

/// One ring-buffer event, as the kernel wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Wall-clock time the agent read the event (the event's own `ts_ns` is
    /// the kernel's monotonic clock).
    pub unix_ns: u64,
    /// A `probe_common::events::Event<T>`, in the recording machine's byte order.
    pub data: Vec<u8>,
}

impl EventRecord {
    /// The event, if its bytes decode (every kind the agent's programs write does).
    pub fn event(&self) -> Option<Event> {
        Event::parse(&self.data).ok()
    }

    /// The kernel stack the event refers to, if any.
    pub fn stack_id(&self) -> Option<i32> {
        self.event().map(|e| e.ctx().stack_id).filter(|id| *id >= 0)
    }

    /// The shrinker callback a shrinker event refers to.
    pub fn scan_fn(&self) -> Option<u64> {
        match self.event()? {
            Event::Shrinker(e) => Some(e.data.scan_fn).filter(|a| *a != 0),
            _ => None,
        }
    }
}

/// The most frames a stack record keeps when read: the kernel's
/// PERF_MAX_STACK_DEPTH, the deepest stack the agent can record.
pub const MAX_FRAMES: usize = 127;

/// The longest symbol a frame keeps when read, in bytes: the kernel's
/// KSYM_NAME_LEN (512) with room for `+0x.../0x...` and ` [module]`.
pub const MAX_SYMBOL: usize = 640;

/// The most memory a JSON record may take once decoded, as [`json_cost`]
/// estimates it. A record over it is damage: the writer makes nothing close.
pub const MAX_JSON_COST: usize = 64 << 20;

/// An upper bound on the memory `payload` takes as a `serde_json::Value`:
/// its bytes, plus 64 for every value or key, each of which follows one of
/// `[{,:` (or is the first). A megabyte of `[0,0,...]` becomes half a million
/// 32-byte values; this is what keeps that out.
pub fn json_cost(payload: &[u8]) -> usize {
    let values = payload.iter().filter(|b| matches!(b, b'[' | b'{' | b',' | b':')).count();
    payload.len() + 64 * (values + 1)
}

/// Decodes a JSON payload once [`json_cost`] says it fits.
pub(crate) fn decode_json<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, String> {
    let cost = json_cost(payload);
    if cost > MAX_JSON_COST {
        return Err(format!(
            "{} bytes of JSON would take about {} MiB decoded, over the {} MiB limit",
            payload.len(),
            cost >> 20,
            MAX_JSON_COST >> 20
        ));
    }
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

/// A kernel stack with its symbols, so the file reads on another machine.
/// Written before the first event that uses `id` (in every file); if the
/// stack map reuses an id, a later record with the same id replaces it.
/// Read back, it keeps at most [`MAX_FRAMES`] frames of at most
/// [`MAX_SYMBOL`] bytes each, whatever the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRecord {
    pub id: i32,
    /// Innermost first.
    #[serde(deserialize_with = "bounded_frames")]
    pub frames: Vec<Frame>,
}

/// The first [`MAX_FRAMES`] frames, their symbols cut at [`MAX_SYMBOL`];
/// the rest is parsed (so the JSON is still checked) but not kept.
fn bounded_frames<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Frame>, D::Error> {
    struct Frames;
    impl<'de> serde::de::Visitor<'de> for Frames {
        type Value = Vec<Frame>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of frames")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Frame>, A::Error> {
            let mut frames = Vec::new();
            while frames.len() < MAX_FRAMES {
                let Some(mut f) = seq.next_element::<Frame>()? else { return Ok(frames) };
                let mut end = f.symbol.len().min(MAX_SYMBOL);
                while !f.symbol.is_char_boundary(end) {
                    end -= 1;
                }
                f.symbol.truncate(end);
                f.symbol.shrink_to_fit();
                frames.push(f);
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(frames)
        }
    }
    d.deserialize_seq(Frames)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub addr: u64,
    pub symbol: String,
}

/// The name of a kernel address an event holds outside a stack: a
/// shrinker's `scan_objects` callback. Written before the first event that
/// uses it, like stacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolRecord {
    pub addr: u64,
    pub symbol: String,
}

/// Every record after the header.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Event(EventRecord),
    Stack(StackRecord),
    Symbol(SymbolRecord),
    /// A finding of the detection engine, as the agent emitted it.
    Finding(Box<Finding>),
    /// A new topology snapshot, written when the storage stack changed.
    Topology(TopologyRecord),
}

impl Record {
    pub(crate) fn record_type(&self) -> RecordType {
        match self {
            Record::Event(_) => RecordType::Event,
            Record::Stack(_) => RecordType::Stack,
            Record::Symbol(_) => RecordType::Symbol,
            Record::Finding(_) => RecordType::Finding,
            Record::Topology(_) => RecordType::Topology,
        }
    }

    pub(crate) fn payload(&self) -> Result<Vec<u8>> {
        let json = match self {
            Record::Event(e) => {
                let mut p = Vec::with_capacity(8 + e.data.len());
                p.extend_from_slice(&e.unix_ns.to_le_bytes());
                p.extend_from_slice(&e.data);
                return Ok(p);
            }
            Record::Stack(s) => serde_json::to_vec(s),
            Record::Symbol(s) => serde_json::to_vec(s),
            Record::Finding(f) => serde_json::to_vec(f),
            Record::Topology(t) => serde_json::to_vec(t),
        };
        json.context("cannot encode a trace record")
    }

    /// Decodes a checksummed payload of a file of format `version`; the
    /// error says what is wrong with it.
    pub(crate) fn decode(ty: RecordType, payload: &[u8], version: u32) -> Result<Record, String> {
        Ok(match ty {
            RecordType::Event => {
                let (ts, data) = payload
                    .split_first_chunk::<8>()
                    .ok_or_else(|| format!("event record of {} bytes has no timestamp", payload.len()))?;
                Record::Event(EventRecord { unix_ns: u64::from_le_bytes(*ts), data: data.to_vec() })
            }
            RecordType::Stack => Record::Stack(decode_json(payload)?),
            RecordType::Symbol => Record::Symbol(decode_json(payload)?),
            RecordType::Finding if version == 1 => {
                Record::Finding(Box::new(decode_json::<FindingV1>(payload)?.into_finding()?))
            }
            RecordType::Finding => Record::Finding(decode_json(payload)?),
            RecordType::Topology => Record::Topology(decode_json(payload)?),
            RecordType::Header => return Err("a second header record".into()),
        })
    }
}
