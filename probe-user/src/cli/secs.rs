//! Options given as durations: plain seconds (`30`, `2.5`) or humantime's
//! forms (`10m`, `1h30m`, `500ms`). Each is bounded, because the loop adds them to
//! clock readings (`Instant + Duration` panics on overflow) and
//! `Duration::from_secs_f64` panics on values it cannot hold.

use std::time::Duration;

use anyhow::{bail, Result};

/// The longest accepted: ten years, far beyond any real run.
pub const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// A positive number of seconds, at most [`MAX_SECS`].
pub fn positive(option: &str, secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        bail!("{option} must be a positive number of seconds");
    }
    at_most(option, secs, &secs.to_string())
}

/// A whole number of seconds, at most [`MAX_SECS`] (0 allowed).
pub fn whole(option: &str, secs: u64) -> Result<Duration> {
    at_most(option, secs as f64, &secs.to_string())
}

/// The clap value parser of a duration option: plain seconds or a
/// humantime duration, as seconds. The bounds (and NaN, infinities) are
/// checked by [`positive`] and [`whole`], whose messages name the option.
pub fn parse(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Ok(secs);
    }
    human(s).map(|d| d.as_secs_f64())
}

/// [`parse`] for options kept in whole seconds: `1m30s` is 90, `1.5` is refused.
pub fn parse_whole(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    if s.parse::<f64>().is_ok() {
        return Err(format!("`{s}` is not a whole number of seconds"));
    }
    let d = human(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("`{s}` is not a whole number of seconds"));
    }
    Ok(d.as_secs())
}

fn human(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration ({e}); e.g. 30, 2.5, 10m, 1h30m"))
}

fn at_most(option: &str, secs: f64, given: &str) -> Result<Duration> {
    if secs > MAX_SECS as f64 {
        bail!("{option} must be at most {MAX_SECS} seconds (ten years), not {given}");
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(positive("--x", 2.5).unwrap(), Duration::from_millis(2500));
        assert_eq!(whole("--x", 0).unwrap(), Duration::ZERO);
        assert_eq!(whole("--x", MAX_SECS).unwrap(), Duration::from_secs(MAX_SECS));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e20] {
            assert!(positive("--x", bad).is_err(), "{bad}");
        }
        let e = whole("--duration", u64::MAX).unwrap_err().to_string();
        assert!(e.starts_with("--duration must be at most") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn human_durations() {
        assert_eq!(parse("30"), Ok(30.0));
        assert_eq!(parse("2.5"), Ok(2.5));
        assert_eq!(parse("10m"), Ok(600.0));
        assert_eq!(parse("1h"), Ok(3600.0));
        assert_eq!(parse("1h 30m"), Ok(5400.0));
        assert_eq!(parse("500ms"), Ok(0.5));
        assert_eq!(parse_whole("10m"), Ok(600));
        assert_eq!(parse_whole("45"), Ok(45));
        assert_eq!(parse_whole("0"), Ok(0));
        for bad in ["", "ten", "10 parsecs", "-1", "1.5", "1500ms"] {
            assert!(parse_whole(bad).is_err(), "{bad}");
        }
        assert!(parse("1x").unwrap_err().contains("e.g. 30, 2.5, 10m"));
        // Too long: refused by whole(), with the option's name.
        assert!(whole("--duration", parse_whole("11y").unwrap()).unwrap_err().to_string().contains("ten years"));
        // Negative and non-finite values still reach positive()'s own message.
        for v in ["-1", "inf", "NaN", "1e20"] {
            assert!(positive("--x", parse(v).unwrap()).is_err(), "{v}");
        }
    }
}
