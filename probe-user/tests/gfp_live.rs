//! The GFP names decoded by reclaimscope against the running kernel's own
//! trace output (root: it makes tracing instances in tracefs).

use reclaimscope::names::GfpNames;

/// Decodes what the running kernel really traced and compares the result
/// with the kernel's own text. Two tracing instances record the same
/// event, mm_page_alloc (it carries the same gfp table); one prints the
/// usual text, the other, with the `fields` option, the raw mask.
#[test]
fn decode_matches_the_running_kernels_trace_output() {
    let Some(tracefs) = kernel_trace::tracefs() else {
        return;
    };
    let live = GfpNames::from_tracefs(&tracefs).unwrap();
    let (named, raw) = kernel_trace::record_page_allocs(&tracefs).unwrap();
    assert!(!named.is_empty(), "no allocation was traced");
    assert_eq!(named.len(), raw.len(), "the two instances saw different event counts");
    // Compared as multisets: the two instances are written one after
    // the other, so an interrupt can reorder their events.
    let count = |names: &mut dyn Iterator<Item = String>| {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        names.for_each(|n| *counts.entry(n).or_default() += 1);
        counts
    };
    let decoded = count(&mut raw.iter().map(|gfp| live.decode(*gfp)));
    assert_eq!(decoded, count(&mut named.into_iter()));
    let distinct: std::collections::BTreeSet<_> = raw.iter().collect();
    eprintln!("{} events, {} distinct masks decoded as the kernel does", raw.len(), distinct.len());
}

mod kernel_trace {
    use std::fs;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{ensure, Context, Result};

    /// A mounted tracefs, mounting it if needed (the test fails when it
    /// cannot); `None`, with the reason printed, when this kernel has no
    /// `fields` trace option to print raw masks with.
    pub fn tracefs() -> Option<PathBuf> {
        testbed::require_root("decode_matches_the_running_kernels_trace_output");
        let path = PathBuf::from("/sys/kernel/tracing");
        if !path.join("instances").exists() {
            let mounted = Command::new("timeout")
                .args(["10", "mount", "-t", "tracefs", "nodev"])
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
            assert!(mounted, "tracefs cannot be mounted at {}", path.display());
        }
        if !path.join("options/fields").exists() {
            eprintln!("skipped: this kernel has no `fields` trace option");
            return None;
        }
        Some(path)
    }

    /// A tracing instance that is removed again when dropped, even when
    /// the test fails half-way.
    struct Instance(PathBuf);

    impl Instance {
        fn create(tracefs: &Path, name: &str) -> Result<Instance> {
            let dir = tracefs.join("instances").join(name);
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(Instance(dir))
        }

        fn write(&self, file: &str, value: &str) -> Result<()> {
            let path = self.0.join(file);
            fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
        }

        fn gfp_fields(&self) -> Result<Vec<String>> {
            let text = fs::read_to_string(self.0.join("trace"))?;
            ensure!(!text.contains("LOST"), "the trace buffer lost events");
            Ok(text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split(" gfp_flags=").nth(1))
                .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
                .collect())
        }
    }

    impl Drop for Instance {
        fn drop(&mut self) {
            let _ = fs::write(self.0.join("tracing_on"), "0");
            let _ = fs::write(self.0.join("events/kmem/mm_page_alloc/enable"), "0");
            let _ = fs::remove_dir(&self.0);
        }
    }

    /// Kills and reaps the child if the test leaves early.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Traces the page allocations of a `dd ... conv=fsync` child,
    /// returning the kernel's text for each mask and the raw masks.
    ///
    /// Both instances filter on the child's pid and are on for its whole
    /// life, so they must see the same events; switching two instances on
    /// or off is not atomic, which makes system-wide counts differ.
    pub fn record_page_allocs(tracefs: &Path) -> Result<(Vec<String>, Vec<u64>)> {
        let dir = tempfile::tempdir_in("/var/tmp")?;
        let script = format!(
            "read go && exec dd if=/dev/zero of={}/f bs=64k count=64 conv=fsync status=none",
            dir.path().display()
        );
        let mut child =
            Child(Command::new("sh").args(["-c", &script]).stdin(Stdio::piped()).spawn().context("spawning sh")?);
        let tag = std::process::id();
        let text = Instance::create(tracefs, &format!("reclaimscope-gfp-text-{tag}"))?;
        let raw = Instance::create(tracefs, &format!("reclaimscope-gfp-raw-{tag}"))?;
        let filter = format!("common_pid == {}", child.0.id());
        for inst in [&text, &raw] {
            inst.write("tracing_on", "0")?;
            inst.write("events/kmem/mm_page_alloc/filter", &filter)?;
            inst.write("events/kmem/mm_page_alloc/enable", "1")?;
        }
        raw.write("options/fields", "1")?;
        text.write("tracing_on", "1")?;
        raw.write("tracing_on", "1")?;
        child.0.stdin.take().context("child stdin")?.write_all(b"go\n")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.0.try_wait()? {
                break status;
            }
            ensure!(Instant::now() < deadline, "dd did not finish in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        text.write("tracing_on", "0")?;
        raw.write("tracing_on", "0")?;
        ensure!(status.success(), "dd failed: {status}");
        let named = text.gfp_fields()?;
        let masks = raw
            .gfp_fields()?
            .iter()
            .map(|f| {
                let hex = f.strip_prefix("0x").with_context(|| format!("raw field `{f}`"))?;
                u64::from_str_radix(hex, 16).with_context(|| format!("raw field `{f}`"))
            })
            .collect::<Result<Vec<u64>>>()?;
        Ok((named, masks))
    }
}
