//! /proc/kallsyms: resolving probe targets that carry compiler suffixes
//! (`__alloc_pages_slowpath.constprop.0`), and symbolizing kernel stacks.

use std::{fs, path::Path};

use anyhow::{Context, Result};

use super::markers::function;

pub const DEFAULT: &str = "/proc/kallsyms";

/// One text symbol; its name is `names[start..start + len]`.
#[derive(Debug, Clone, Copy)]
struct Sym {
    addr: u64,
    start: u32,
    len: u32,
}

/// Text symbols sorted by address. The agent keeps this for its whole life
/// to name stack frames, so the 120,000-odd names share one string instead
/// of one allocation each (about half the memory).
#[derive(Debug, Clone, Default)]
pub struct Kallsyms {
    syms: Vec<Sym>,
    names: String,
}

/// Suffixes GCC and Clang add to specialised copies of a function.
const SUFFIXES: &[&str] = &[".constprop.", ".isra.", ".part.", ".llvm."];

impl Kallsyms {
    pub fn load(path: &Path) -> Result<Kallsyms> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Kallsyms {
        let mut names = String::new();
        let mut syms: Vec<Sym> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                matches!(kind, "t" | "T" | "W" | "w").then(|| {
                    let start = names.len() as u32;
                    names.push_str(name);
                    Sym { addr, start, len: name.len() as u32 }
                })
            })
            .collect();
        syms.sort_by_key(|s| s.addr);
        syms.shrink_to_fit();
        names.shrink_to_fit();
        Kallsyms { syms, names }
    }

    fn name(&self, s: &Sym) -> &str {
        &self.names[s.start as usize..(s.start + s.len) as usize]
    }

    fn is_copy_of(&self, s: &Sym, name: &str) -> bool {
        self.name(s).strip_prefix(name).is_some_and(|rest| SUFFIXES.iter().any(|suf| rest.starts_with(suf)))
    }

    /// The attachable symbol for `name`: the exact name if present, otherwise
    /// the first compiler-suffixed copy (`name.constprop.0`, `name.isra.0`, ...).
    pub fn resolve(&self, name: &str) -> Option<&str> {
        if let Some(s) = self.syms.iter().find(|s| self.name(s) == name) {
            return Some(self.name(s));
        }
        self.syms.iter().filter(|s| self.is_copy_of(s, name)).map(|s| self.name(s)).min()
    }

    /// Every copy of `name`: itself, then its compiler-suffixed copies.
    pub fn copies<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let exact = self.syms.iter().filter(move |s| self.name(s) == name);
        let suffixed = self.syms.iter().filter(move |s| self.is_copy_of(s, name));
        exact.chain(suffixed).map(|s| self.name(s))
    }

    pub fn addr_of(&self, name: &str) -> Option<u64> {
        self.syms.iter().find(|s| self.name(s) == name).map(|s| s.addr).filter(|&a| a != 0)
    }

    /// `function+0xoff` for a kernel address.
    pub fn symbolize(&self, addr: u64) -> String {
        let idx = self.syms.partition_point(|s| s.addr <= addr);
        match idx.checked_sub(1).map(|i| &self.syms[i]) {
            Some(s) if s.addr != 0 => format!("{}+0x{:x}", self.name(s), addr - s.addr),
            _ => format!("0x{addr:x}"),
        }
    }
}

/// A stack taken from inside a probe, without the probe's own frames on
/// top: the tracepoint's `__traceiter_*`, `bpf_trace_run*`, and the BPF
/// program itself, whose JIT address kallsyms names after the nearest
/// symbol below it (`_einittext+0x3ca3f5c9`) or not at all. What remains
/// starts at the kernel function that was traced.
pub fn without_probe_frames<S: AsRef<str>>(frames: &[S]) -> &[S] {
    let probe = |f: &S| {
        let f = function(f.as_ref());
        ["__traceiter_", "bpf_", "__bpf_", "_einittext", "0x"].iter().any(|p| f.starts_with(p))
    };
    let skip = frames.iter().take_while(|f| probe(f)).count();
    &frames[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/data/kallsyms_sample.txt");

    #[test]
    fn a_stack_starts_at_the_traced_function() {
        let frames = [
            "_einittext+0x3ca3f5c9",
            "bpf_trace_run2+0x103",
            "__traceiter_folio_wait_writeback+0x31",
            "folio_wait_writeback+0x6f",
            "shrink_folio_list+0xaba",
        ];
        assert_eq!(without_probe_frames(&frames), &frames[3..]);
        assert_eq!(without_probe_frames(&frames[3..]), &frames[3..]);
        assert!(without_probe_frames::<&str>(&[]).is_empty());
    }

    #[test]
    fn resolves_exact_and_suffixed_names() {
        let k = Kallsyms::parse(FIXTURE);
        assert_eq!(k.resolve("try_to_free_pages"), Some("try_to_free_pages"));
        assert_eq!(k.resolve("__alloc_pages_slowpath"), Some("__alloc_pages_slowpath.constprop.0"));
        assert_eq!(k.resolve("shrink_node"), Some("shrink_node"));
        // A prefix that is a different function is not a suffixed copy.
        assert_eq!(k.resolve("shrink"), None);
        assert_eq!(k.resolve("no_such_function"), None);
    }

    #[test]
    fn symbolizes_addresses() {
        let k = Kallsyms::parse(FIXTURE);
        let base = k.addr_of("try_to_free_pages").unwrap();
        assert_eq!(k.symbolize(base + 0x10), "try_to_free_pages+0x10");
        assert!(k.symbolize(1).starts_with("0x"));
    }

    #[test]
    fn data_symbols_are_ignored() {
        let k = Kallsyms::parse("ffffffff81000000 D some_data\nffffffff81000010 T f\n");
        assert_eq!(k.resolve("some_data"), None);
        assert_eq!(k.resolve("f"), Some("f"));
    }
}
