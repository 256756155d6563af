//! Options given in seconds. Each is bounded, because the loop adds them to
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
}
