//! Prometheus metrics for `reclaimscope monitor`; [`super::http`] serves them,
//! in the format the scraper asks for ([`super::exposition`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry, Unit};

use super::exposition::{self, Format};
use super::http::{Render, Rendered};
use crate::detect::finding::Finding;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    rule: String,
    severity: String,
}

/// One series of findings active now. Bounded: rules and severities are a
/// fixed set, `servicer` a sanitised command name, and at most
/// [`MAX_ACTIVE_SERIES`] label sets exist at once.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ActiveLabels {
    rule: String,
    severity: String,
    servicer: String,
}

/// Distinct (rule, severity, servicer) series of active findings; beyond
/// it, further servicers are counted under [`OTHER_SERVICERS`].
pub const MAX_ACTIVE_SERIES: usize = 32;
/// The `servicer` label of the overflow series.
pub const OTHER_SERVICERS: &str = "_other";

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
    /// `true` when the agent cannot run without the hook: an alert on a
    /// missing hook must tell these from optional hooks that a kernel
    /// may simply not have.
    required: String,
}

/// What the kernel or the agent could not follow, as the summaries count
/// it: each costs findings that are then silently missing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Losses {
    /// Events lost because the ring buffer was full.
    pub dropped_events: u64,
    /// Task states the kernel could not record (its TASKS map was full).
    pub task_state_full: u64,
    /// Events sent without their kernel stack (not walkable, or no free stack element).
    pub stacks_lost: u64,
    /// Reclaim starts whose end was never seen; the next start replaced them.
    pub stale_reclaim: u64,
    /// Ring-buffer events the agent could not decode.
    pub decode_errors: u64,
    /// Topology entries (servicer processes, backing files) left out of
    /// the kernel's filter maps, counted at every sync that left them out.
    pub filter_map_full: u64,
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
    findings_active: Family<ActiveLabels, Gauge>,
    /// The label sets `findings_active` holds now.
    active_series: Mutex<BTreeSet<ActiveLabels>>,
    topology_errors: Counter,
    topology_age: Gauge<f64, AtomicU64>,
    loop_lag: Gauge<f64, AtomicU64>,
    reclaim_events: Family<KindLabels, Counter>,
    dropped_events: Counter,
    task_state_full: Counter,
    stacks_lost: Counter,
    stale_reclaim: Counter,
    decode_errors: Counter,
    filter_map_full: Counter,
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
    /// Every family registered under "reclaimscope_", in the order the
    /// fields are written here, which is the order a scrape lists them.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("reclaimscope");
        Metrics {
            started: Instant::now(),
            findings: counted(&mut r, "findings"),
            findings_active: counted(&mut r, "findings_active"),
            active_series: Mutex::new(BTreeSet::new()),
            topology_errors: counted(&mut r, "topology_errors"),
            topology_age: seconds(&mut r, "topology_age"),
            loop_lag: seconds(&mut r, "event_loop_lag"),
            reclaim_events: counted(&mut r, "reclaim_events"),
            dropped_events: counted(&mut r, "dropped_events"),
            task_state_full: counted(&mut r, "task_state_full"),
            stacks_lost: counted(&mut r, "stacks_lost"),
            stale_reclaim: counted(&mut r, "stale_reclaim"),
            decode_errors: counted(&mut r, "decode_errors"),
            filter_map_full: counted(&mut r, "filter_map_full"),
            servicers: counted(&mut r, "servicers"),
            probe_attached: counted(&mut r, "probe_attached"),
            uptime: seconds(&mut r, "uptime"),
            kernel_totals: Mutex::new(HashMap::new()),
            registry: with_build(r),
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

    /// Sets the active-findings gauges from every finding so far: a finding
    /// is active when it was last seen at most `window` before `now_ns`
    /// (both on the kernel's monotonic clock, as `Finding::last_ns`). A
    /// deadlock finding is seen again at every D-state check while it
    /// lasts, so it stays active while it lasts. Series that are no longer
    /// active are removed, so an alert on them clears.
    pub fn set_active_findings(&self, findings: &[Finding], now_ns: u64, window: Duration) {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let mut counts: BTreeMap<ActiveLabels, i64> = BTreeMap::new();
        let mut active: Vec<&Finding> =
            findings.iter().filter(|f| now_ns.saturating_sub(f.last_ns) <= window_ns).collect();
        // The worst first, so that they keep their own series when the cap bites.
        active.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.rule.cmp(&b.rule)));
        for f in active {
            let mut labels = ActiveLabels {
                rule: label(&f.rule),
                severity: f.severity.name().to_string(),
                servicer: servicer_label(&f.servicer.comm),
            };
            if !counts.contains_key(&labels) && counts.len() >= MAX_ACTIVE_SERIES {
                labels.servicer = OTHER_SERVICERS.to_string();
            }
            *counts.entry(labels).or_default() += 1;
        }
        let mut series = self.active_series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for gone in series.iter().filter(|l| !counts.contains_key(*l)) {
            self.findings_active.remove(gone);
        }
        for (labels, n) in &counts {
            self.findings_active.get_or_create(labels).set(*n);
        }
        *series = counts.into_keys().collect();
    }

    /// Takes what the refresher and the loop say about themselves.
    pub fn set_agent_health(&self, topology_errors: u64, topology_age_s: Option<f64>, loop_lag_s: f64) {
        self.topology_errors.inner().fetch_max(topology_errors, Ordering::Relaxed);
        self.topology_age.set(topology_age_s.unwrap_or(f64::NAN));
        self.loop_lag.set(loop_lag_s);
    }

    /// Takes the kernel's own count of reclaim entries of `kind` (the per-CPU
    /// counters summed), which counts events the ring buffer dropped too.
    /// The series stays monotonic when the kernel's counters start again.
    pub fn set_reclaim_events(&self, kind: &str, total: u64) {
        let total = self.follow(&format!("reclaim/{kind}"), total);
        self.reclaim_events
            .get_or_create(&KindLabels { kind: label(kind) })
            .inner()
            .fetch_max(total, Ordering::Relaxed);
    }

    /// Takes the loss counters of a summary. The kernel's start again from
    /// zero when the BPF objects are loaded anew; the exported ones go on.
    pub fn set_losses(&self, l: &Losses) {
        for (key, counter, total) in [
            ("dropped", &self.dropped_events, l.dropped_events),
            ("task_state_full", &self.task_state_full, l.task_state_full),
            ("stacks_lost", &self.stacks_lost, l.stacks_lost),
            ("stale_reclaim", &self.stale_reclaim, l.stale_reclaim),
            ("decode_errors", &self.decode_errors, l.decode_errors),
            ("filter_map_full", &self.filter_map_full, l.filter_map_full),
        ] {
            let total = self.follow(key, total);
            counter.inner().fetch_max(total, Ordering::Relaxed);
        }
    }

    /// Sets how many servicer threads run with a given protection (for
    /// example `none`, `NOIO|LOCAL_THROTTLE`).
    pub fn set_servicers(&self, protection: &str, n: i64) {
        self.servicers.get_or_create(&ProtectionLabels { protection: label(protection) }).set(n);
    }

    /// Records whether a hook is attached through `implementation` (e.g.
    /// `tracepoint`, or `none`), and whether the agent requires it.
    pub fn set_probe(&self, hook: &str, implementation: &str, attached: bool, required: bool) {
        let labels =
            ProbeLabels { hook: label(hook), implementation: label(implementation), required: required.to_string() };
        self.probe_attached.get_or_create(&labels).set(i64::from(attached));
    }

    /// Every family, in `format`.
    pub fn render(&self, format: Format) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        match format {
            Format::OpenMetrics => out,
            Format::Text => exposition::openmetrics_to_text(&out),
        }
    }

    fn follow(&self, key: &str, now: u64) -> u64 {
        let mut totals = self.kernel_totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        totals.entry(key.to_string()).or_default().update(now)
    }
}

/// Each family's help text, by name: what a scrape's HELP line says.
const HELP: &[(&str, &str)] = &[
    ("findings", "New findings reported, by rule and severity (hazard, recursion, deadlock); repeats are not counted"),
    ("findings_active", "Findings seen within the active window (a deadlock: while it lasts), by rule, severity and servicer"),
    ("topology_errors", "Topology discoveries that failed; the view before them stayed in force"),
    ("topology_age", "Time since the topology in force was discovered"),
    ("event_loop_lag", "The event loop's worst lag over the last summary interval"),
    ("reclaim_events", "Reclaim entries seen, by kind (direct, memcg, ...), including those the ring buffer dropped"),
    ("dropped_events", "Events lost because the BPF ring buffer was full"),
    ("task_state_full", "Reclaim entries whose task state the kernel could not record because its TASKS map was full"),
    ("stacks_lost", "Events sent without their kernel stack (the kernel could not walk it, or had no free stack element)"),
    ("stale_reclaim", "Reclaim starts whose end was never seen (a missed return probe); the next start replaced them"),
    ("decode_errors", "Ring-buffer events the agent could not decode"),
    ("filter_map_full", "Servicer processes and backing files left out of the kernel's filter maps because they were full, counted at every topology sync that left them out; their reclaim is not followed"),
    ("servicers", "Storage servicer threads watched, by their reclaim protection"),
    ("probe_attached", "1 when the hook is attached with this implementation, 0 when it is not"),
    ("uptime", "Time since the agent started"),
];

/// The help text of family `name` (every registered name has a row).
fn help(name: &str) -> &'static str {
    HELP.iter().find(|(n, _)| *n == name).map_or("", |(_, h)| h)
}

/// A family (or single metric) registered with its help text.
fn counted<M: Metric + Clone + Default>(r: &mut Registry, name: &str) -> M {
    let m = M::default();
    r.register(name, help(name), m.clone());
    m
}

/// A gauge of seconds, registered with its unit and help text.
fn seconds(r: &mut Registry, name: &str) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    r.register_with_unit(name, help(name), Unit::Seconds, g.clone());
    g
}

/// `r` with the constant build info, registered last.
fn with_build(mut r: Registry) -> Registry {
    r.register(
        "build",
        "The agent's version, as a constant 1 labelled with it",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    r
}

fn finding_labels(rule: &str, severity: &str) -> FindingLabels {
    FindingLabels { rule: label(rule), severity: label(severity) }
}

/// A servicer's command name as a label: at most 15 characters (the
/// kernel's TASK_COMM_LEN less its NUL) of `[A-Za-z0-9_.-]`, anything else
/// replaced by `_`, so a process cannot name itself into the label syntax.
fn servicer_label(comm: &str) -> String {
    let s: String = comm
        .chars()
        .take(15)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' })
        .collect();
    if s.is_empty() {
        "_unnamed".into()
    } else {
        s
    }
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

impl Render for Metrics {
    fn render(&self, accept: Option<&str>) -> Rendered {
        let format = Format::negotiate(accept);
        Rendered { content_type: format.content_type(), body: Metrics::render(self, format) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::finding::ServicerDesc;

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
        m.set_reclaim_events("memcg", 1);
        m.set_servicers("none", 2);
        m.set_servicers("NOIO|LOCAL_THROTTLE", 1);
        m.set_probe("reclaim", "fentry", false, true);
        m.set_probe("reclaim", "tracepoint", true, true);
        m.set_probe("alloc_slowpath", "none", false, false);
        let text = m.render(Format::OpenMetrics);
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
        assert_eq!(sample(&text, &format!(r#"{p}"tracepoint",required="true"}}"#)), Some(1.0));
        assert_eq!(sample(&text, &format!(r#"{p}"fentry",required="true"}}"#)), Some(0.0));
        let slowpath = r#"reclaimscope_probe_attached{hook="alloc_slowpath",implementation="none",required="false"}"#;
        assert_eq!(sample(&text, slowpath), Some(0.0));
        let build = format!(r#"reclaimscope_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&text, &build), Some(1.0));
        assert!(sample(&text, "reclaimscope_uptime_seconds").unwrap() >= 0.0);
    }

    #[test]
    fn kernel_totals_stay_monotonic() {
        let m = Metrics::new();
        let direct = |m: &Metrics| {
            sample(&m.render(Format::OpenMetrics), r#"reclaimscope_reclaim_events_total{kind="direct"}"#).unwrap()
        };
        m.set_reclaim_events("direct", 5);
        assert_eq!(direct(&m), 5.0);
        m.set_reclaim_events("direct", 6);
        assert_eq!(direct(&m), 6.0);
        // BPF objects loaded again: the kernel starts from 0, the series goes on.
        m.set_reclaim_events("direct", 4);
        assert_eq!(direct(&m), 10.0);

        let lost = |m: &Metrics, name: &str| sample(&m.render(Format::OpenMetrics), name).unwrap();
        let losses = |n| Losses {
            dropped_events: n,
            task_state_full: n + 1,
            stacks_lost: n + 2,
            stale_reclaim: n + 3,
            decode_errors: n + 4,
            filter_map_full: n + 5,
        };
        m.set_losses(&losses(3));
        m.set_losses(&losses(3));
        assert_eq!(lost(&m, "reclaimscope_dropped_events_total"), 3.0);
        assert_eq!(lost(&m, "reclaimscope_task_state_full_total"), 4.0);
        m.set_losses(&losses(1));
        assert_eq!(lost(&m, "reclaimscope_dropped_events_total"), 4.0);
        assert_eq!(lost(&m, "reclaimscope_stacks_lost_total"), 5.0 + 3.0);
        assert_eq!(lost(&m, "reclaimscope_stale_reclaim_total"), 6.0 + 4.0);
        assert_eq!(lost(&m, "reclaimscope_decode_errors_total"), 7.0 + 5.0);
        assert_eq!(lost(&m, "reclaimscope_filter_map_full_total"), 8.0 + 6.0);
    }

    fn finding(rule: &str, severity: &str, comm: &str, tid: u32, last_ns: u64) -> Finding {
        let severity = serde_json::from_value(serde_json::json!(severity)).unwrap();
        let servicer = ServicerDesc { name: String::new(), comm: comm.into(), tgid: 1, tid, task_flags: 0 };
        Finding { servicer, last_ns, ..Finding::sample(rule, severity) }
    }

    #[test]
    fn active_findings_follow_the_window_and_stay_bounded() {
        let m = Metrics::new();
        let s = 1_000_000_000u64;
        let window = Duration::from_secs(60);
        let deadlock = r#"reclaimscope_findings_active{rule="RS201",severity="deadlock",servicer="qemu-storage-da"}"#;
        let hazard = r#"reclaimscope_findings_active{rule="RS001",severity="hazard",servicer="qemu-storage-da"}"#;
        let mut found = vec![
            finding("RS001", "hazard", "qemu-storage-da", 10, 100 * s),
            finding("RS001", "hazard", "qemu-storage-da", 11, 150 * s),
            finding("RS201", "deadlock", "qemu-storage-da", 10, 150 * s),
        ];
        m.set_active_findings(&found, 150 * s, window);
        let text = m.render(Format::OpenMetrics);
        assert_eq!(sample(&text, hazard), Some(2.0));
        assert_eq!(sample(&text, deadlock), Some(1.0));
        // The deadlock lasts: the D-state check sees it again every second.
        found[2].last_ns = 400 * s;
        m.set_active_findings(&found, 400 * s, window);
        let text = m.render(Format::OpenMetrics);
        assert_eq!(sample(&text, deadlock), Some(1.0), "{text}");
        assert_eq!(sample(&text, hazard), None, "a hazard not seen for 250 s is not active");
        // It ends: a window later the series is gone and an alert on it clears.
        m.set_active_findings(&found, 461 * s, window);
        assert_eq!(sample(&m.render(Format::OpenMetrics), deadlock), None);

        // Hostile names are sanitised, and the series are capped.
        let many: Vec<Finding> =
            (0..100).map(|i| finding("RS001", "hazard", &format!("d\"}} {i}"), i, 500 * s)).collect();
        m.set_active_findings(&many, 500 * s, window);
        let text = m.render(Format::OpenMetrics);
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("reclaimscope_findings_active{")).collect();
        assert_eq!(series.len(), MAX_ACTIVE_SERIES + 1, "{text}");
        let other = r#"reclaimscope_findings_active{rule="RS001",severity="hazard",servicer="_other"}"#;
        assert_eq!(sample(&text, other), Some((100 - MAX_ACTIVE_SERIES) as f64));
        assert!(series.iter().all(|l| !l.contains(' ') || l.rsplit_once(' ').unwrap().0.matches('"').count() == 6));
        assert!(text.contains(r#"servicer="d___0""#), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.finding("a\"b\\c\nd", "hazard");
        assert!(m.render(Format::OpenMetrics).contains(r#"rule="a\"b\\c\nd""#));
    }

    /// The text format names every family by its samples, with HELP and
    /// TYPE, and OpenMetrics' own lines are gone.
    #[test]
    fn text_format_describes_every_sample() {
        let m = Metrics::new();
        m.declare_finding("RS301", "failure");
        m.set_reclaim_events("direct", 1);
        m.set_probe("reclaim", "tracepoint", true, true);
        m.set_servicers("unprotected", 1);
        m.set_active_findings(&[finding("RS001", "hazard", "qsd", 1, 0)], 0, Duration::from_secs(60));
        let text = m.render(Format::Text);
        let mut described = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
                described.insert(rest.split(' ').next().unwrap().to_string());
            } else {
                assert!(!line.starts_with('#'), "`{line}` in the text format");
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(described.contains(name), "{name} has no HELP or TYPE before it:\n{text}");
            }
        }
        for line in ["# TYPE reclaimscope_findings_total counter", "# TYPE reclaimscope_build_info gauge"] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert_eq!(sample(&text, r#"reclaimscope_findings_total{rule="RS301",severity="failure"}"#), Some(0.0));
    }
}
