//! Prometheus metrics for `reclaimscope monitor`; [`super::http`] serves them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// The exposition format prometheus-client writes (`# EOF`, `_total` samples
/// under a family named without it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    rule: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtectionLabels {
    protection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    hook: String,
    implementation: String,
}

/// Follows a total the kernel keeps in a per-CPU BPF counter. Such a total
/// starts again from zero when the BPF objects are loaded anew, while a
/// Prometheus counter must only go up, so what was counted before each reset
/// is carried over.
#[derive(Debug, Default)]
struct KernelTotal {
    last: u64,
    before_resets: u64,
}

impl KernelTotal {
    fn update(&mut self, now: u64) -> u64 {
        if now < self.last {
            self.before_resets += self.last;
        }
        self.last = now;
        self.before_resets + now
    }
}

/// The agent's metric families. Cheap to update from any task: every family
/// is a set of atomics, and the registry only reads them when rendering.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Instant,
    findings: Family<FindingLabels, Counter>,
    reclaim_events: Family<KindLabels, Counter>,
    dropped_events: Counter,
    servicers: Family<ProtectionLabels, Gauge>,
    probe_attached: Family<ProbeLabels, Gauge>,
    uptime: Gauge<f64, AtomicU64>,
    /// Kernel counters followed so far, by metric series.
    kernel_totals: Mutex<HashMap<String, KernelTotal>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("reclaimscope");
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "findings",
            "Findings reported, by rule and severity (hazard, recursion, deadlock)",
            findings.clone(),
        );
        let reclaim_events = Family::<KindLabels, Counter>::default();
        registry.register(
            "reclaim_events",
            "Reclaim entries seen, by kind (direct, memcg, ...), including those the ring buffer dropped",
            reclaim_events.clone(),
        );
        let dropped_events = Counter::default();
        registry.register("dropped_events", "Events lost because the BPF ring buffer was full", dropped_events.clone());
        let servicers = Family::<ProtectionLabels, Gauge>::default();
        registry.register(
            "servicers",
            "Storage servicer threads watched, by their reclaim protection",
            servicers.clone(),
        );
        let probe_attached = Family::<ProbeLabels, Gauge>::default();
        registry.register(
            "probe_attached",
            "1 when the hook is attached with this implementation, 0 when it is not",
            probe_attached.clone(),
        );
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit("uptime", "Time since the agent started", Unit::Seconds, uptime.clone());
        Metrics {
            registry,
            started: Instant::now(),
            findings,
            reclaim_events,
            dropped_events,
            servicers,
            probe_attached,
            uptime,
            kernel_totals: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one finding (a new one or a repeat).
    pub fn finding(&self, rule: &str, severity: &str) {
        self.findings.get_or_create(&finding_labels(rule, severity)).inc();
    }

    /// Exports a (rule, severity) series at zero before anything is found.
    /// `increase()` cannot see a counter's first sample, so without this the
    /// first finding of a kind would never fire an alert.
    pub fn declare_finding(&self, rule: &str, severity: &str) {
        drop(self.findings.get_or_create(&finding_labels(rule, severity)));
    }

    /// Counts one reclaim entry the agent decoded from the ring buffer.
    pub fn reclaim_event(&self, kind: &str) {
        self.reclaim_events.get_or_create(&KindLabels { kind: label(kind) }).inc();
    }

    /// Takes the kernel's own count of reclaim entries of `kind` (the per-CPU
    /// counters summed). The kernel counts events the ring buffer dropped, so
    /// it is the better number; the series becomes the larger of it and what
    /// [`reclaim_event`](Self::reclaim_event) counted, which stays monotonic
    /// and never counts an event twice whichever of the two the caller uses.
    pub fn set_reclaim_events(&self, kind: &str, total: u64) {
        let total = self.follow(&format!("reclaim/{kind}"), total);
        self.reclaim_events
            .get_or_create(&KindLabels { kind: label(kind) })
            .inner()
            .fetch_max(total, Ordering::Relaxed);
    }

    /// Takes the kernel's count of events lost to a full ring buffer.
    pub fn set_dropped_events(&self, total: u64) {
        let total = self.follow("dropped", total);
        self.dropped_events.inner().fetch_max(total, Ordering::Relaxed);
    }

    /// Sets how many servicer threads run with a given protection (for
    /// example `none`, `NOIO|LOCAL_THROTTLE`).
    pub fn set_servicers(&self, protection: &str, n: i64) {
        self.servicers.get_or_create(&ProtectionLabels { protection: label(protection) }).set(n);
    }

    /// Records whether a hook is attached through `implementation` (e.g.
    /// `tracepoint`). Report every implementation tried so that a fallback
    /// shows as 0 for the better one and 1 for the one in use.
    pub fn set_probe(&self, hook: &str, implementation: &str, attached: bool) {
        self.probe_attached
            .get_or_create(&ProbeLabels { hook: label(hook), implementation: label(implementation) })
            .set(i64::from(attached));
    }

    /// The OpenMetrics text exposition of every family.
    pub fn render(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    fn follow(&self, key: &str, now: u64) -> u64 {
        let mut totals = self.kernel_totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        totals.entry(key.to_string()).or_default().update(now)
    }
}

fn finding_labels(rule: &str, severity: &str) -> FindingLabels {
    FindingLabels { rule: label(rule), severity: label(severity) }
}

/// Escapes a label value for the text format; prometheus-client writes label
/// values verbatim.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl super::http::Render for Metrics {
    fn content_type(&self) -> &'static str {
        CONTENT_TYPE
    }

    fn render(&self) -> String {
        Metrics::render(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample whose line starts with `series` (name and
    /// labels, as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map(|v| v.parse().unwrap())
    }

    #[test]
    fn renders_every_family_with_its_labels() {
        let m = Metrics::new();
        m.declare_finding("servicer-fs-reclaim", "deadlock");
        m.finding("servicer-fs-reclaim", "hazard");
        m.finding("servicer-fs-reclaim", "hazard");
        m.reclaim_event("memcg");
        m.set_servicers("none", 2);
        m.set_servicers("NOIO|LOCAL_THROTTLE", 1);
        m.set_probe("reclaim", "fentry", false);
        m.set_probe("reclaim", "tracepoint", true);
        let text = m.render();
        for line in [
            "# TYPE reclaimscope_findings counter",
            "# TYPE reclaimscope_servicers gauge",
            "# TYPE reclaimscope_uptime_seconds gauge",
            "# UNIT reclaimscope_uptime_seconds seconds",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        let f = r#"reclaimscope_findings_total{rule="servicer-fs-reclaim",severity="#;
        assert_eq!(sample(&text, &format!(r#"{f}"hazard"}}"#)), Some(2.0));
        assert_eq!(sample(&text, &format!(r#"{f}"deadlock"}}"#)), Some(0.0));
        assert_eq!(sample(&text, r#"reclaimscope_reclaim_events_total{kind="memcg"}"#), Some(1.0));
        assert_eq!(sample(&text, "reclaimscope_dropped_events_total"), Some(0.0));
        assert_eq!(sample(&text, r#"reclaimscope_servicers{protection="none"}"#), Some(2.0));
        assert_eq!(sample(&text, r#"reclaimscope_servicers{protection="NOIO|LOCAL_THROTTLE"}"#), Some(1.0));
        let p = r#"reclaimscope_probe_attached{hook="reclaim",implementation="#;
        assert_eq!(sample(&text, &format!(r#"{p}"tracepoint"}}"#)), Some(1.0));
        assert_eq!(sample(&text, &format!(r#"{p}"fentry"}}"#)), Some(0.0));
        assert!(sample(&text, "reclaimscope_uptime_seconds").unwrap() >= 0.0);
    }

    #[test]
    fn kernel_totals_stay_monotonic() {
        let m = Metrics::new();
        let direct = |m: &Metrics| sample(&m.render(), r#"reclaimscope_reclaim_events_total{kind="direct"}"#).unwrap();
        // Decoded events and the kernel's total do not add up: the larger wins.
        m.reclaim_event("direct");
        m.reclaim_event("direct");
        assert_eq!(direct(&m), 2.0);
        m.set_reclaim_events("direct", 5);
        assert_eq!(direct(&m), 5.0);
        m.reclaim_event("direct");
        m.set_reclaim_events("direct", 6);
        assert_eq!(direct(&m), 6.0);
        // BPF objects loaded again: the kernel starts from 0, the series goes on.
        m.set_reclaim_events("direct", 4);
        assert_eq!(direct(&m), 10.0);

        let dropped = |m: &Metrics| sample(&m.render(), "reclaimscope_dropped_events_total").unwrap();
        m.set_dropped_events(3);
        m.set_dropped_events(3);
        assert_eq!(dropped(&m), 3.0);
        m.set_dropped_events(1);
        assert_eq!(dropped(&m), 4.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.finding("a\"b\\c\nd", "hazard");
        assert!(m.render().contains(r#"rule="a\"b\\c\nd""#));
    }
}
