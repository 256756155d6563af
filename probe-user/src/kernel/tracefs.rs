//! tracefs: where it is, and the field offsets of the tracepoints we read.
//! Offsets differ between kernels, so they are always taken from the
//! tracepoint's `format` file, never compiled in.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

pub const DEFAULT: &str = "/sys/kernel/tracing";

#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

#[derive(Debug, Clone)]
pub struct Format {
    pub fields: HashMap<String, Field>,
    pub print_fmt: String,
}

impl Tracefs {
    /// Finds tracefs at `root`; when `root` is the default location and tracefs
    /// is not mounted there (as on this project's machines), mounts it.
    pub fn open(root: &Path) -> Result<Tracefs> {
        if root.join("events").is_dir() {
            return Ok(Tracefs { root: root.to_owned() });
        }
        if root == Path::new(DEFAULT) && root.is_dir() {
            mount_tracefs(root)?;
            if root.join("events").is_dir() {
                return Ok(Tracefs { root: root.to_owned() });
            }
        }
        bail!("tracefs not found at {} (mount it with: mount -t tracefs nodev {})", root.display(), root.display())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Functions ftrace can hook (`available_filter_functions`): kprobes on
    /// anything else are refused ("Could not probe notrace function"), and
    /// so are trampolines. None when the file cannot be read.
    pub fn traceable_functions(&self) -> Option<HashSet<String>> {
        let text = fs::read_to_string(self.root.join("available_filter_functions")).ok()?;
        Some(text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
    }

    pub fn exists(&self, category: &str, name: &str) -> bool {
        self.root.join("events").join(category).join(name).is_dir()
    }

    pub fn format(&self, category: &str, name: &str) -> Result<Format> {
        let path = self.root.join("events").join(category).join(name).join("format");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("tracepoint {category}:{name} is missing ({})", path.display()))?;
        Format::parse(&text).with_context(|| format!("bad format file {}", path.display()))
    }
}

fn mount_tracefs(root: &Path) -> Result<()> {
    let target = CString::new(root.as_os_str().as_encoded_bytes())?;
    let fstype = CString::new("tracefs")?;
    let source = CString::new("nodev")?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted at {} and mounting it failed: {err}", root.display());
    }
    Ok(())
}

impl Format {
    /// Parses lines like `\tfield:unsigned long gfp_flags;\toffset:16;\tsize:8;\tsigned:0;`.
    pub fn parse(text: &str) -> Result<Format> {
        let mut fields = HashMap::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                print_fmt = rest.trim().to_owned();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else { continue };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or_default()
                .split('[')
                .next()
                .unwrap_or_default();
            if let (Some(offset), Some(size)) = (offset, size) {
                fields.insert(name.to_owned(), Field { offset, size });
            }
        }
        if fields.is_empty() {
            bail!("no fields");
        }
        Ok(Format { fields, print_fmt })
    }

    pub fn offset(&self, field: &str) -> Result<u32> {
        self.fields.get(field).map(|f| f.offset).with_context(|| format!("field `{field}` not in format"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLIO_WAIT: &str = "name: folio_wait_writeback\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:char name[32];\toffset:8;\tsize:32;\tsigned:0;\n\tfield:ino_t ino;\toffset:40;\tsize:8;\tsigned:0;\n\tfield:unsigned long index;\toffset:48;\tsize:8;\tsigned:0;\n\nprint fmt: \"bdi %s: ino=%lu\", REC->name, REC->ino\n";

    #[test]
    fn parses_fields_arrays_and_print_fmt() {
        let f = Format::parse(FOLIO_WAIT).unwrap();
        assert_eq!(f.offset("name").unwrap(), 8);
        assert_eq!(f.fields["name"].size, 32);
        assert_eq!(f.offset("ino").unwrap(), 40);
        assert_eq!(f.offset("index").unwrap(), 48);
        assert!(f.print_fmt.starts_with("\"bdi"));
        assert!(f.offset("nope").is_err());
    }

    #[test]
    fn rejects_text_without_fields() {
        assert!(Format::parse("garbage").is_err());
    }
}
