//! Text from a file someone else made, made safe for a terminal.
//!
//! A trace header, a comm or a stack symbol can hold escape sequences that
//! clear the screen, retitle the window or hide lines when printed raw.
//! Every control character (Unicode's Cc: C0, DEL and C1) is printed as its
//! Rust escape instead (`\u{1b}`), except the newlines and tabs the report's
//! own layout uses.

use std::{
    borrow::Cow,
    io::{self, Write},
};

/// `s` with every control character but `\n` and `\t` escaped.
pub fn text(s: &str) -> Cow<'_, str> {
    escape(s, |c| c.is_control() && c != '\n' && c != '\t', |c, out| out.extend(c.escape_default()))
}

/// `s`, a line of its own (an error message): every control character escaped, newlines too.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, char::is_control, |c, out| out.extend(c.escape_default()))
}

/// A writer of JSON text that escapes DEL and the C1 controls as `\u00XX`
/// inside its strings: serde_json escapes only C0, and a terminal takes
/// U+009B for CSI. Outside strings JSON holds only ASCII punctuation, so
/// every byte can be looked at alike; it streams, so a report of any size
/// is written without being held.
pub struct Json<W: Write> {
    inner: W,
    /// The last byte given was 0xC2, the lead byte of U+0080..U+00BF.
    lead: bool,
}

impl<W: Write> Json<W> {
    pub fn new(inner: W) -> Self {
        Json { inner, lead: false }
    }
}

impl<W: Write> Write for Json<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut from = 0;
        for (i, &b) in buf.iter().enumerate() {
            if std::mem::take(&mut self.lead) {
                if (0x80..=0x9f).contains(&b) {
                    write!(self.inner, "\\u{b:04x}")?;
                    from = i + 1;
                    continue;
                }
                self.inner.write_all(&[0xc2])?;
            }
            match b {
                0x7f => {
                    self.inner.write_all(&buf[from..i])?;
                    self.inner.write_all(b"\\u007f")?;
                    from = i + 1;
                }
                0xc2 => {
                    self.inner.write_all(&buf[from..i])?;
                    self.lead = true;
                    from = i + 1;
                }
                _ => {}
            }
        }
        self.inner.write_all(&buf[from..])
    }

    fn flush(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.lead) {
            self.inner.write_all(&[0xc2])?;
        }
        self.inner.flush()
    }
}

fn escape(s: &str, bad: impl Fn(char) -> bool, put: impl Fn(char, &mut String)) -> Cow<'_, str> {
    if !s.chars().any(&bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if bad(c) {
            put(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_obey() {
        let hostile = "6.18\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{7f}\ta\nb";
        assert_eq!(text(hostile), "6.18\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{9b}31m\\u{7f}\ta\nb");
        assert_eq!(line("a\nb\rc"), "a\\nb\\rc");
        assert!(matches!(text("plain text, é\n"), Cow::Borrowed(_)));
        let mut j = Json::new(Vec::new());
        // Cut at every byte: a C1 character split between two writes too.
        for b in serde_json::to_vec(&serde_json::json!({"k": hostile})).unwrap() {
            j.write_all(&[b]).unwrap();
        }
        j.flush().unwrap();
        let safe = String::from_utf8(j.inner).unwrap();
        assert!(!safe.chars().any(|c| c.is_control()), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["k"], hostile, "the escapes are JSON's own: the data is unchanged");
    }
}
