//! GFP mask names, spelled the way the kernel spells them.
//!
//! GFP names and their composite masks (`GFP_KERNEL`, `GFP_NOFS`, ...) change
//! between kernels, and the kernel already publishes its own table: every
//! tracepoint with a `gfp_flags` field prints it through
//! `__print_flags(REC->gfp_flags, "|", {mask, "NAME"}, ...)`, and tracefs shows
//! that table, after macro expansion, in the event's `print fmt:` line. So the
//! names here are read from there and the masks are computed by evaluating
//! those constant C expressions, never copied into this source. When tracefs
//! is not available, a format captured from a 6.18 kernel is used instead and
//! [`load`] says so.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::expr::Lexer;

/// The event whose print format carries the kernel's GFP table. Every
/// `gfp_flags` event prints the same table (`show_gfp_flags()`); this one is
/// the reclaim entry point the agent traces anyway.
const FORMAT_FILE: &str = "events/vmscan/mm_vmscan_direct_reclaim_begin/format";

/// The format captured from Linux 6.18, used when tracefs cannot be read.
const BUILTIN_FORMAT: &str = include_str!("../../tests/data/gfp_print_fmt_6.18.txt");

/// The kernel's GFP flag table, in the kernel's order (composites first), so
/// that [`GfpNames::decode`] prints exactly what the trace buffer would show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GfpNames {
    entries: Vec<(u64, String)>,
    /// Separator between names, `"|"` for GFP masks.
    delim: String,
    /// What the event prints for a zero mask: `show_gfp_flags()` wraps the
    /// table in `(flags) ? __print_flags(...) : "none"`; without such a
    /// ternary `__print_flags` prints nothing.
    zero: String,
}

/// Where the table in use came from, so the caller can warn when the names
/// may not match the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GfpSource {
    /// Read from the running kernel's tracefs.
    Kernel,
    /// The 6.18 fixture; `reason` says why tracefs was not used.
    Builtin { reason: String },
}

/// The kernel's table when tracefs has it, the built-in 6.18 table otherwise.
pub fn load(tracefs: &Path) -> (GfpNames, GfpSource) {
    match GfpNames::from_tracefs(tracefs) {
        Ok(names) => (names, GfpSource::Kernel),
        Err(e) => (GfpNames::builtin(), GfpSource::Builtin { reason: format!("{e:#}") }),
    }
}

/// The built-in table, as [`GfpNames::builtin`].
impl Default for GfpNames {
    fn default() -> GfpNames {
        GfpNames::builtin()
    }
}

impl GfpNames {
    /// Reads the table from a mounted tracefs (e.g. `/sys/kernel/tracing`).
    pub fn from_tracefs(tracefs: &Path) -> Result<GfpNames> {
        let path = tracefs.join(FORMAT_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is tracefs mounted?)", path.display()))?;
        Self::parse_format(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses an event format file (or just its `print fmt:` line) and
    /// evaluates the mask expressions of its `__print_flags` table.
    pub fn parse_format(text: &str) -> Result<GfpNames> {
        let line =
            text.lines().find_map(|l| l.trim_start().strip_prefix("print fmt:")).context("no `print fmt:` line")?;
        const CALL: &str = "__print_flags(";
        let start = line
            .find("__print_flags(REC->gfp_flags")
            .context("no __print_flags(REC->gfp_flags, ...) in the print format")?;
        let mut lx = Lexer::new(&line[start + CALL.len()..]);
        lx.skip_first_argument()?;
        let delim = lx.expect_str()?;
        let mut entries = Vec::new();
        while lx.eat(",") {
            lx.expect("{")?;
            let mask = lx.expr()?;
            lx.expect(",")?;
            let Some(name) = lx.string()? else {
                // `{ 0, ((void *)0) }` or `{ -1, NULL }`: the table's terminator.
                lx.skip_to_closing_paren()?;
                break;
            };
            lx.expect("}")?;
            entries.push((mask.v, name));
        }
        lx.expect(")")?;
        let zero = if lx.eat(":") { lx.string()?.unwrap_or_default() } else { String::new() };
        if entries.is_empty() {
            bail!("the __print_flags table is empty");
        }
        Ok(GfpNames { entries, delim, zero })
    }

    /// The table captured from Linux 6.18 (probe-user/tests/data).
    /// The 6.18 table, for masks whose kernel did not say its own.
    pub fn builtin() -> GfpNames {
        // The fixture is a constant checked by the unit tests below.
        Self::parse_format(BUILTIN_FORMAT).expect("the built-in 6.18 GFP table parses")
    }

    /// Formats `gfp` as the kernel's trace output does
    /// (kernel/trace/trace_output.c, trace_print_flags_seq()): walk the table
    /// in order, print every entry whose bits are all still set and clear
    /// them, then print what is left as `0x...`.
    pub fn decode(&self, gfp: u64) -> String {
        if gfp == 0 {
            return self.zero.clone();
        }
        let mut out = String::new();
        let mut rest = gfp;
        let mut first = true;
        for (mask, name) in &self.entries {
            if rest == 0 {
                break;
            }
            if rest & mask != *mask {
                continue;
            }
            rest &= !mask;
            if !first {
                out.push_str(&self.delim);
            }
            first = false;
            out.push_str(name);
        }
        if rest != 0 {
            if !first {
                out.push_str(&self.delim);
            }
            let _ = write!(out, "{rest:#x}");
        }
        out
    }

    /// The reverse of [`decode`](Self::decode), for masks read back from
    /// trace text: `"GFP_NOFS|__GFP_HIGHMEM"` gives the bits, leftover
    /// `0x...` parts are accepted, and any unknown name gives `None`.
    pub fn encode(&self, s: &str) -> Option<u64> {
        let s = s.trim();
        if s == self.zero {
            return Some(0);
        }
        s.split(self.delim.as_str()).try_fold(0u64, |acc, part| {
            let bits = match self.entries.iter().find(|(_, n)| n == part) {
                Some((mask, _)) => *mask,
                None => u64::from_str_radix(part.strip_prefix("0x")?, 16).ok()?,
            };
            Some(acc | bits)
        })
    }

    /// The table, composites first, as the kernel lists it.
    pub fn entries(&self) -> &[(u64, String)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_is_the_kernels() {
        let g = GfpNames::builtin();
        assert_eq!(g.entries().len(), 38);
        assert_eq!(g.entries()[0].1, "GFP_TRANSHUGE");
        assert_eq!(g.entries().last().unwrap().1, "__GFP_NO_OBJ_EXT");
        let mask = |name: &str| g.entries().iter().find(|(_, n)| n == name).unwrap().0;
        // Values from include/linux/gfp_types.h, 6.18.
        assert_eq!(mask("GFP_KERNEL"), 0xcc0);
        assert_eq!(mask("GFP_NOFS"), 0xc40);
        assert_eq!(mask("GFP_NOIO"), 0xc00);
        assert_eq!(mask("GFP_HIGHUSER_MOVABLE"), 0x100cca);
        assert_eq!(mask("GFP_ATOMIC"), 0x820);
        // (GFP_HIGHUSER_MOVABLE | __GFP_COMP | __GFP_NOMEMALLOC | __GFP_NOWARN) & ~__GFP_RECLAIM
        assert_eq!(mask("GFP_TRANSHUGE_LIGHT"), (0x100cca | 1 << 18 | 1 << 19 | 1 << 13) & !0xc00);
        assert_eq!(mask("__GFP_NO_OBJ_EXT"), 1 << 24);
    }

    #[test]
    fn decodes_like_the_kernel() {
        let g = GfpNames::builtin();
        assert_eq!(g.decode(0x100cca), "GFP_HIGHUSER_MOVABLE");
        assert_eq!(g.decode(0xcc0), "GFP_KERNEL");
        assert_eq!(g.decode(0xc40), "GFP_NOFS");
        assert_eq!(g.decode(0xc00), "GFP_NOIO");
        assert_eq!(g.decode(0xc42), "GFP_NOFS|__GFP_HIGHMEM");
        // Strings seen in this kernel's own trace output (mm_page_alloc).
        assert_eq!(g.decode(0x440dc0), "GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP");
        assert_eq!(
            g.decode(0x152c4a),
            "GFP_NOFS|__GFP_HIGHMEM|__GFP_MOVABLE|__GFP_NOWARN|__GFP_NORETRY|__GFP_COMP|__GFP_HARDWALL"
        );
        assert_eq!(g.decode(0xd2800), "GFP_NOWAIT|__GFP_NORETRY|__GFP_COMP|__GFP_NOMEMALLOC");
        // Bits no entry names are printed as hex after the names, alone if
        // nothing else matched.
        assert_eq!(g.decode(0xcc0 | 1 << 30), "GFP_KERNEL|0x40000000");
        assert_eq!(g.decode(1 << 40), "0x10000000000");
        // The tracepoint prints "none" for an empty mask.
        assert_eq!(g.decode(0), "none");
    }

    #[test]
    fn encode_reverses_decode() {
        let g = GfpNames::builtin();
        for (mask, name) in g.entries() {
            assert_eq!(g.encode(name), Some(*mask), "{name}");
            assert_eq!(g.encode(&g.decode(*mask)), Some(*mask), "{name}");
        }
        // A fixed pseudo-random walk over masks with known and unknown bits.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let gfp = (x >> 16) & 0x7fff_ffff;
            assert_eq!(g.encode(&g.decode(gfp)), Some(gfp), "{gfp:#x}");
        }
        assert_eq!(g.encode("GFP_NOFS|__GFP_HIGHMEM"), Some(0xc42));
        assert_eq!(g.encode("none"), Some(0));
        assert_eq!(g.encode("GFP_KERNEL|0x40000000"), Some(0x4000_0cc0));
        assert_eq!(g.encode("GFP_KERNEL|__GFP_BOGUS"), None);
        assert_eq!(g.encode("GFP_KERNEL|"), None);
        assert_eq!(g.encode("0xzz"), None);
    }

    #[test]
    fn parses_other_table_shapes() {
        // Already-numeric masks, a `{ -1, NULL }` terminator and no ternary.
        let g = GfpNames::parse_format(
            r#"print fmt: "gfp=%s", __print_flags(REC->gfp_flags, "|", {( unsigned long)((( gfp_t)(0x400u|0x800u)) | (( gfp_t)0x40u)), "GFP_NOFS"}, {(unsigned long)(( gfp_t)0x2u), "__GFP_HIGHMEM"}, { -1, NULL })"#,
        )
        .unwrap();
        assert_eq!(g.entries().len(), 2);
        assert_eq!(g.decode(0xc42), "GFP_NOFS|__GFP_HIGHMEM");
        assert_eq!(g.decode(0), "");
        assert_eq!(g.encode(""), Some(0));

        let err = |text: &str| format!("{:#}", GfpNames::parse_format(text).unwrap_err());
        assert!(err("name: x\n").contains("no `print fmt:`"));
        assert!(err(r#"print fmt: "%d", REC->order"#).contains("no __print_flags"));
        assert!(err(r#"print fmt: "%s", __print_flags(REC->gfp_flags, "|", {(foo_t)1, "X"})"#)
            .contains("unknown type `foo_t`"));
        assert!(err(r#"print fmt: "%s", __print_flags(REC->gfp_flags, "|", {1, "X"}"#).contains("expected `)`"));
        assert!(err(r#"print fmt: "%s", __print_flags(REC->gfp_flags, "|", { 0, ((void *)0) })"#).contains("empty"));
    }

    #[test]
    fn load_falls_back_to_the_builtin_table() {
        let dir = tempfile::tempdir().unwrap();
        let (names, source) = load(dir.path());
        assert_eq!(names, GfpNames::builtin());
        match source {
            GfpSource::Builtin { reason } => {
                assert!(reason.contains("is tracefs mounted"), "{reason}")
            }
            GfpSource::Kernel => panic!("an empty directory is not tracefs"),
        }
    }
}
