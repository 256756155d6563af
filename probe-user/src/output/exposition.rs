//! The two text formats a scraper may ask for, chosen from its Accept header.
//!
//! prometheus-client writes OpenMetrics only. Prometheus before 2.5, many
//! other scrapers and `promtool check metrics` read the older Prometheus
//! text format (0.0.4), where that same output is wrong: a counter's HELP
//! and TYPE name `x` while its samples are `x_total`, so the samples read
//! as untyped and without help, and `info` is no type at all. The two
//! formats differ only in those descriptor lines and in `# UNIT`/`# EOF`,
//! so the older one is made from the newer by rewriting them.

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Text,
    /// OpenMetrics 1.0.0, as prometheus-client writes it.
    OpenMetrics,
}

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT,
            Format::OpenMetrics => OPENMETRICS,
        }
    }

    /// What an Accept header asks for. OpenMetrics only when the header
    /// prefers it (a higher weight, or the same weight named more
    /// precisely) to the text format, as Prometheus 2.5 and later do; the
    /// text format otherwise, and without a header, as Prometheus's own
    /// client libraries answer.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let om = preference(accept, "application", "openmetrics-text", "1.0.0");
        let text = preference(accept, "text", "plain", "0.0.4");
        if om > text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// How much `accept` wants `type/subtype` in `version`: the weight of the
/// most precise media range that covers it, and that precision (3 for the
/// type with this version, 2 for the type, 1 for `type/*`, 0 for `*/*`).
/// A range naming another version does not cover it. None: not wanted.
fn preference(accept: &str, ty: &str, subtype: &str, version: &str) -> Option<(u16, u8)> {
    let mut best: Option<(u8, u16)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let Some((t, s)) = parts.next().and_then(|m| m.split_once('/')) else { continue };
        let (mut q, mut precision) = (1000u16, 0u8);
        let mut other_version = false;
        for param in parts {
            let Some((k, v)) = param.split_once('=') else { continue };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = weight(v),
                "version" if v == version => precision = 3,
                "version" => other_version = true,
                _ => {}
            }
        }
        let precision = match (t.eq_ignore_ascii_case(ty), s.eq_ignore_ascii_case(subtype)) {
            _ if other_version => continue,
            (true, true) => precision.max(2),
            (true, false) if s == "*" => 1,
            (false, false) if t == "*" && s == "*" => 0,
            _ => continue,
        };
        if best.is_none_or(|(p, _)| precision > p) {
            best = Some((precision, q));
        }
    }
    best.filter(|&(_, q)| q > 0).map(|(p, q)| (q, p))
}

/// A q-value in thousandths (`0.5` → 500); unreadable ones count as 0.
fn weight(v: &str) -> u16 {
    v.parse::<f64>().map_or(0, |q| (q.clamp(0.0, 1.0) * 1000.0).round() as u16)
}

/// Rewrites prometheus-client's OpenMetrics into the text format: a
/// counter's HELP and TYPE name its `_total` samples, an info family
/// becomes a gauge named after its `_info` sample, and `# UNIT` and
/// `# EOF` go (the unit is already in the name).
pub fn openmetrics_to_text(om: &str) -> String {
    // Descriptors come before their samples: find each family's type first.
    let mut renamed: Vec<(&str, String, &str)> = Vec::new();
    for line in om.lines() {
        if let Some((name, ty)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            let (suffix, ty) = match ty {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                other => ("", other),
            };
            renamed.push((name, format!("{name}{suffix}"), ty));
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match descriptor.and_then(|(p, rest)| Some((p, rest.split_once(' ')?))) {
            Some((p, (name, rest))) => {
                let (new_name, ty) =
                    renamed.iter().find(|(n, ..)| *n == name).map_or((name, rest), |(_, new, ty)| (new.as_str(), ty));
                let rest = if p == "# TYPE " { ty } else { rest };
                out.push_str(&format!("{p}{new_name} {rest}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_as_prometheus_asks() {
        use Format::*;
        let cases = [
            (None, Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("application/openmetrics-text"), OpenMetrics),
            // Prometheus 2.x's default scrape header.
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                OpenMetrics,
            ),
            // Prometheus 3 told to prefer the text format.
            (
                Some("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.1"),
                Text,
            ),
            // Only a version of OpenMetrics we do not write.
            (Some("application/openmetrics-text;version=0.0.1,*/*;q=0.1"), Text),
            // Refused outright.
            (Some("application/openmetrics-text;q=0, text/plain;q=0.2"), Text),
            (Some("Application/OpenMetrics-Text; Version=\"1.0.0\"; Q=0.9, text/*;q=0.8"), OpenMetrics),
            // Same weight: the one named precisely wins.
            (Some("application/openmetrics-text, */*"), OpenMetrics),
            (Some("text/plain;version=0.0.4, application/openmetrics-text"), Text),
            (Some("garbage, ;;, /"), Text),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn text_names_counters_and_infos_by_their_samples() {
        let om = "# HELP rs_findings New findings.\n# TYPE rs_findings counter\nrs_findings_total{rule=\"RS001\"} 2\n\
                  # HELP rs_build Build.\n# TYPE rs_build info\nrs_build_info{version=\"0.1.0\"} 1\n\
                  # HELP rs_uptime_seconds Up.\n# TYPE rs_uptime_seconds gauge\n# UNIT rs_uptime_seconds seconds\n\
                  rs_uptime_seconds 1.5\n# EOF\n";
        let want = "# HELP rs_findings_total New findings.\n# TYPE rs_findings_total counter\nrs_findings_total{rule=\"RS001\"} 2\n\
                    # HELP rs_build_info Build.\n# TYPE rs_build_info gauge\nrs_build_info{version=\"0.1.0\"} 1\n\
                    # HELP rs_uptime_seconds Up.\n# TYPE rs_uptime_seconds gauge\nrs_uptime_seconds 1.5\n";
        assert_eq!(openmetrics_to_text(om), want);
    }
}
