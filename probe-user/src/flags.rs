//! GFP mask and task flag names, spelled the way the kernel spells them.
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
use probe_common::flags::{PF_KSWAPD, PF_KTHREAD, PF_LOCAL_THROTTLE, PF_MEMALLOC, PF_MEMALLOC_NOFS, PF_MEMALLOC_NOIO};

/// The event whose print format carries the kernel's GFP table. Every
/// `gfp_flags` event prints the same table (`show_gfp_flags()`); this one is
/// the reclaim entry point the agent traces anyway.
const FORMAT_FILE: &str = "events/vmscan/mm_vmscan_direct_reclaim_begin/format";

/// The format captured from Linux 6.18, used when tracefs cannot be read.
const BUILTIN_FORMAT: &str = include_str!("../tests/data/gfp_print_fmt_6.18.txt");

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

/// The task flags that decide how an allocation may recurse, in bit order.
const TASK_FLAG_NAMES: [(u32, &str); 6] = [
    (PF_MEMALLOC, "MEMALLOC"),
    (PF_KSWAPD, "KSWAPD"),
    (PF_MEMALLOC_NOFS, "NOFS"),
    (PF_MEMALLOC_NOIO, "NOIO"),
    (PF_LOCAL_THROTTLE, "LOCAL_THROTTLE"),
    (PF_KTHREAD, "KTHREAD"),
];

/// Names the reclaim-relevant `PF_*` bits of a task's flags, e.g.
/// `NOIO|LOCAL_THROTTLE` for a PR_SET_IO_FLUSHER daemon, `-` when none is set.
/// Other `PF_*` bits say nothing about reclaim and are left out.
pub fn task_flags(flags: u32) -> String {
    let names: Vec<&str> = TASK_FLAG_NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, name)| *name).collect();
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join("|")
    }
}

/// An evaluated constant: its bits and the width of its C type, so that `~`
/// flips only as many bits as the kernel's compiler would have.
#[derive(Debug, Clone, Copy)]
struct Value {
    v: u64,
    bits: u32,
}

impl Value {
    fn new(v: u64, bits: u32) -> Value {
        let bits = bits.max(32); // integer promotion
        Value { v: v & width_mask(bits), bits }
    }
}

fn width_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// How deeply parentheses, casts and unary operators may nest. The
/// kernel's deepest GFP mask (GFP_TRANSHUGE_LIGHT) nests 9 levels; the
/// format can come from a stranger's trace file, and without a bound a
/// crafted one overflows the stack of `reclaimscope report`.
const MAX_NESTING: usize = 64;

/// A lexer and recursive-descent evaluator for the constant expressions
/// tracefs prints: literals with C suffixes, casts, parentheses and the
/// operators `| ^ & << >> + - ~`. Arithmetic is unsigned, as in the kernel's
/// flag tables.
struct Lexer<'a> {
    s: &'a str,
    /// Current nesting of [`Lexer::unary`], bounded by [`MAX_NESTING`].
    depth: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str) -> Lexer<'a> {
        Lexer { s, depth: 0 }
    }

    fn skip_ws(&mut self) {
        self.s = self.s.trim_start();
    }

    /// Consumes `tok` if the input starts with it.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        // `|` and `&` must not match the start of `||` and `&&`.
        let doubled = matches!(tok, "|" | "&") && self.s.get(tok.len()..).is_some_and(|r| r.starts_with(tok));
        if self.s.starts_with(tok) && !doubled {
            self.s = &self.s[tok.len()..];
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Result<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            bail!("expected `{tok}` at `{}`", self.context())
        }
    }

    /// A few characters of the remaining input, for error messages.
    fn context(&self) -> &str {
        let end = self.s.char_indices().nth(40).map_or(self.s.len(), |(i, _)| i);
        &self.s[..end]
    }

    /// Skips `REC->gfp_flags,` (everything up to the first top-level comma).
    fn skip_first_argument(&mut self) -> Result<()> {
        let mut depth = 0i32;
        for (i, c) in self.s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    self.s = &self.s[i + 1..];
                    return Ok(());
                }
                _ => {}
            }
        }
        bail!("__print_flags has no table")
    }

    /// Skips the rest of the terminator entry up to, not including, the `)`
    /// that closes `__print_flags(`.
    fn skip_to_closing_paren(&mut self) -> Result<()> {
        let mut depth = 1i32; // inside the entry's `{`
        for (i, c) in self.s.char_indices() {
            match c {
                '(' | '{' => depth += 1,
                '}' => depth -= 1,
                ')' if depth == 0 => {
                    self.s = &self.s[i..];
                    return Ok(());
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        bail!("__print_flags( is not closed")
    }

    /// A string literal, or `None` (nothing consumed) if the next token is not one.
    fn string(&mut self) -> Result<Option<String>> {
        self.skip_ws();
        let Some(rest) = self.s.strip_prefix('"') else {
            return Ok(None);
        };
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.s = &rest[i + 1..];
                    return Ok(Some(out));
                }
                '\\' => out.push(chars.next().context("unterminated string")?.1),
                c => out.push(c),
            }
        }
        bail!("unterminated string")
    }

    fn expect_str(&mut self) -> Result<String> {
        self.string()?.with_context(|| format!("expected a string at `{}`", self.context()))
    }

    fn ident(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let end = self.s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(self.s.len());
        if end == 0 || self.s.as_bytes()[0].is_ascii_digit() {
            return None;
        }
        let (id, rest) = self.s.split_at(end);
        self.s = rest;
        Some(id)
    }

    fn expr(&mut self) -> Result<Value> {
        self.binary(0)
    }

    /// Precedence climbing over the binary operators, loosest first.
    fn binary(&mut self, level: usize) -> Result<Value> {
        const LEVELS: [&[&str]; 5] = [&["|"], &["^"], &["&"], &["<<", ">>"], &["+", "-"]];
        let Some(ops) = LEVELS.get(level) else {
            return self.unary();
        };
        let mut lhs = self.binary(level + 1)?;
        'more: loop {
            for op in ops.iter() {
                if self.eat(op) {
                    let rhs = self.binary(level + 1)?;
                    let bits = lhs.bits.max(rhs.bits);
                    let v = match *op {
                        "|" => lhs.v | rhs.v,
                        "^" => lhs.v ^ rhs.v,
                        "&" => lhs.v & rhs.v,
                        "<<" | ">>" => {
                            if rhs.v >= u64::from(lhs.bits) {
                                bail!("shift by {} of a {}-bit value", rhs.v, lhs.bits);
                            }
                            let v = if *op == "<<" { lhs.v << rhs.v } else { lhs.v >> rhs.v };
                            lhs = Value::new(v, lhs.bits);
                            continue 'more;
                        }
                        "+" => lhs.v.wrapping_add(rhs.v),
                        _ => lhs.v.wrapping_sub(rhs.v),
                    };
                    lhs = Value::new(v, bits);
                    continue 'more;
                }
            }
            return Ok(lhs);
        }
    }

    /// A unary expression; counts the nesting its recursion builds up.
    fn unary(&mut self) -> Result<Value> {
        if self.depth >= MAX_NESTING {
            bail!("expression nested deeper than {MAX_NESTING} levels at `{}`", self.context());
        }
        self.depth += 1;
        let v = self.unary_inner();
        self.depth -= 1;
        v
    }

    fn unary_inner(&mut self) -> Result<Value> {
        if self.eat("~") {
            let x = self.unary()?;
            return Ok(Value::new(!x.v, x.bits));
        }
        if self.eat("-") {
            let x = self.unary()?;
            return Ok(Value::new(x.v.wrapping_neg(), x.bits));
        }
        if self.eat("(") {
            // In a constant expression an identifier right after `(` can
            // only start a type name, so this is a cast.
            if let Some(first) = self.ident() {
                let bits = self.cast_width(first)?;
                let x = self.unary()?;
                return Ok(Value::new(x.v & width_mask(bits), bits));
            }
            let x = self.expr()?;
            self.expect(")")?;
            return Ok(x);
        }
        self.number()
    }

    /// Reads the rest of a cast's type name through `)` and returns its width.
    fn cast_width(&mut self, first: &str) -> Result<u32> {
        let mut words = vec![first];
        let mut pointer = false;
        loop {
            if self.eat(")") {
                break;
            } else if self.eat("*") {
                pointer = true;
            } else if let Some(w) = self.ident() {
                words.push(w);
            } else {
                bail!("bad cast at `{}`", self.context());
            }
        }
        if pointer || words.contains(&"long") {
            return Ok(64);
        }
        let bits = match words.last().copied().unwrap_or_default() {
            "char" | "u8" | "s8" | "__u8" => 8,
            "short" | "u16" | "s16" | "__u16" => 16,
            "int" | "unsigned" | "signed" | "gfp_t" | "u32" | "s32" | "__u32" => 32,
            "u64" | "s64" | "__u64" | "size_t" => 64,
            other => bail!("unknown type `{other}` in a cast"),
        };
        Ok(bits)
    }

    fn number(&mut self) -> Result<Value> {
        self.skip_ws();
        let end = self.s.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(self.s.len());
        let tok = &self.s[..end];
        let digits = tok.trim_end_matches(['u', 'U', 'l', 'L']);
        let suffix = &tok[digits.len()..];
        let parsed = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
            u64::from_str_radix(hex, 16)
        } else if digits.len() > 1 && digits.starts_with('0') {
            u64::from_str_radix(&digits[1..], 8)
        } else {
            digits.parse()
        };
        let v = parsed.with_context(|| format!("expected a number at `{}`", self.context()))?;
        self.s = &self.s[end..];
        let long = suffix.contains(['l', 'L']) || v > u64::from(u32::MAX);
        Ok(Value::new(v, if long { 64 } else { 32 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> u64 {
        Lexer::new(s).expr().unwrap().v
    }

    #[test]
    fn evaluates_c_constant_expressions() {
        assert_eq!(eval("((((1UL))) << (10))|((((1UL))) << (11))"), 0xc00);
        assert_eq!(eval("(( gfp_t)(0x400u|0x800u)) | ((gfp_t)0x40u)"), 0xc40);
        assert_eq!(eval("0x100cca & ~(( gfp_t)0x80u)"), 0x100c4a);
        // `~` of a 32-bit gfp_t flips 32 bits, not 64.
        assert_eq!(eval("( unsigned long)(~(( gfp_t)0x80u))"), 0xffff_ff7f);
        assert_eq!(eval("~0UL"), u64::MAX);
        assert_eq!(eval("010 + 0x10 - 2"), 22);
        assert_eq!(eval("( unsigned char)0x1ff"), 0xff);
        assert!(Lexer::new("(struct foo)1").expr().is_err());
        assert!(Lexer::new("1 << 40").expr().is_err());
        assert!(Lexer::new("(1UL").expr().is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // The kernel's own deepest nesting still parses.
        let nested = |n: usize, open: &str, close: &str| format!("{}1{}", open.repeat(n), close.repeat(n));
        assert_eq!(eval(&nested(MAX_NESTING - 1, "(", ")")), 1);
        for (open, close) in [("(", ")"), ("~", ""), ("-", ""), ("(int)", ""), ("(~(", "))")] {
            let deep = nested(1_000_000, open, close);
            let err = format!("{:#}", Lexer::new(&deep).expr().unwrap_err());
            assert!(err.contains("nested deeper than 64 levels"), "{open}: {err}");
            assert!(!err.contains('\n') && err.len() < 200, "{err}");
        }
        let format =
            format!(r#"print fmt: "%s", __print_flags(REC->gfp_flags, "|", {{{}, "X"}})"#, nested(500_000, "(", ")"));
        let err = format!("{:#}", GfpNames::parse_format(&format).unwrap_err());
        assert!(err.contains("nested deeper"), "{err}");
    }

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

    #[test]
    fn names_task_flags() {
        assert_eq!(task_flags(0), "-");
        assert_eq!(task_flags(0x0040_0000), "-"); // PF_RANDOMIZE says nothing about reclaim
        assert_eq!(task_flags(PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE), "NOIO|LOCAL_THROTTLE");
        assert_eq!(task_flags(PF_MEMALLOC_NOFS | PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE), "NOFS|NOIO|LOCAL_THROTTLE");
        assert_eq!(task_flags(PF_KTHREAD | PF_KSWAPD | PF_MEMALLOC), "MEMALLOC|KSWAPD|KTHREAD");
    }

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

        /// A mounted tracefs, mounting it if needed; `None` (with the reason
        /// printed) when the test cannot run here.
        pub fn tracefs() -> Option<PathBuf> {
            let path = PathBuf::from("/sys/kernel/tracing");
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("skipped: needs root to use tracefs");
                return None;
            }
            if !path.join("instances").exists() {
                let mounted = Command::new("timeout")
                    .args(["10", "mount", "-t", "tracefs", "nodev"])
                    .arg(&path)
                    .status()
                    .is_ok_and(|s| s.success());
                if !mounted {
                    eprintln!("skipped: tracefs cannot be mounted at {}", path.display());
                    return None;
                }
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
}
