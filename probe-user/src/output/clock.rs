//! Wall-clock times for the JSON output. Events and findings carry the
//! kernel's CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns); a reader of a
//! log needs the date. The offset CLOCK_REALTIME - CLOCK_MONOTONIC is read
//! at each conversion, so a stepped clock is followed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// RFC 3339 (UTC, milliseconds) of a CLOCK_MONOTONIC time in ns.
pub fn wall_time(mono_ns: u64) -> String {
    let offset = crate::trace::monotonic_to_unix_ns().unwrap_or(0);
    rfc3339_unix_ns((mono_ns as i128 + offset as i128).max(0))
}

/// RFC 3339 (UTC, milliseconds) of now.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn rfc3339_unix_ns(ns: i128) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Adds wall-clock times to one JSON line (docs/json.md): `time` from
/// `first_ns` (findings) or `ts_ns` (events), else now (summaries and
/// other records); `last_time` from `last_ns`; and the same inside a
/// final summary's `findings`.
pub fn stamp(v: &mut Value) {
    let Some(o) = v.as_object_mut() else { return };
    let ns = |key: &str| o.get(key).and_then(Value::as_u64);
    let time = ns("first_ns").or(ns("ts_ns")).map_or_else(now, wall_time);
    let last = ns("last_ns").map(wall_time);
    o.insert("time".into(), Value::String(time));
    if let Some(last) = last {
        o.insert("last_time".into(), Value::String(last));
    }
    if let Some(Value::Array(findings)) = o.get_mut("findings") {
        findings.iter_mut().for_each(stamp);
    }
}

/// Writes `v` as one JSON line on stdout, of type `kind` (docs/json.md),
/// stamped with its times.
pub fn json_line(kind: &str, v: impl serde::Serialize) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(v)?;
    v["type"] = Value::String(kind.to_owned());
    stamp(&mut v);
    super::stdout::line(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mono_now() -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid timespec for clock_gettime to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn parse(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn monotonic_to_rfc3339() {
        let t = wall_time(mono_now());
        assert!(t.ends_with('Z') && t.len() == "2026-12-02T04:25:35.123Z".len(), "{t}");
        let d = SystemTime::now().duration_since(parse(&t)).unwrap_or_default();
        assert!(d < Duration::from_secs(2), "{t} is {d:?} from now");
        // A second earlier on the monotonic clock is a second earlier on the wall.
        let a = parse(&wall_time(mono_now() - 1_000_000_000));
        let b = parse(&wall_time(mono_now()));
        let gap = b.duration_since(a).unwrap();
        assert!(gap >= Duration::from_millis(990) && gap < Duration::from_millis(1100), "{gap:?}");
        assert_eq!(rfc3339_unix_ns(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn stamps_findings_events_and_summaries() {
        let m = mono_now();
        let mut f = serde_json::json!({"type": "finding", "first_ns": m, "last_ns": m + 2_000_000_000});
        stamp(&mut f);
        let (first, last) = (parse(f["time"].as_str().unwrap()), parse(f["last_time"].as_str().unwrap()));
        assert!(last.duration_since(first).unwrap() >= Duration::from_millis(1990));
        let mut e = serde_json::json!({"type": "event", "ts_ns": m});
        stamp(&mut e);
        assert!(e["time"].is_string() && e.get("last_time").is_none());
        let mut s = serde_json::json!({"type": "final_summary", "findings": [{"first_ns": m, "last_ns": m}]});
        stamp(&mut s);
        assert!(
            s["time"].is_string() && s["findings"][0]["time"].is_string() && s["findings"][0]["last_time"].is_string()
        );
    }
}
