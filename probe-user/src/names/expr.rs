//! The constant C expressions tracefs prints for a flag table's masks
//! (macros already expanded), evaluated as the kernel's compiler would.

use anyhow::{bail, Context, Result};

/// An evaluated constant: its bits and the width of its C type, so that `~`
/// flips only as many bits as the kernel's compiler would have.
#[derive(Debug, Clone, Copy)]
pub(super) struct Value {
    pub(super) v: u64,
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
pub(super) struct Lexer<'a> {
    s: &'a str,
    /// Current nesting of [`Lexer::unary`], bounded by [`MAX_NESTING`].
    depth: usize,
}

impl<'a> Lexer<'a> {
    pub(super) fn new(s: &'a str) -> Lexer<'a> {
        Lexer { s, depth: 0 }
    }

    fn skip_ws(&mut self) {
        self.s = self.s.trim_start();
    }

    /// Consumes `tok` if the input starts with it.
    pub(super) fn eat(&mut self, tok: &str) -> bool {
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

    pub(super) fn expect(&mut self, tok: &str) -> Result<()> {
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
    pub(super) fn skip_first_argument(&mut self) -> Result<()> {
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
    pub(super) fn skip_to_closing_paren(&mut self) -> Result<()> {
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
    pub(super) fn string(&mut self) -> Result<Option<String>> {
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

    pub(super) fn expect_str(&mut self) -> Result<String> {
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

    pub(super) fn expr(&mut self) -> Result<Value> {
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
    use crate::names::GfpNames;

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
}
