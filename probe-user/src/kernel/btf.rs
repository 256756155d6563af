//! Kernel struct offsets from /sys/kernel/btf/vmlinux. Rust emits no CO-RE
//! relocations, so these are read at start-up and handed to the programs.

use std::path::Path;

use anyhow::{Context, Result};
use btf_rs::{Backend, Btf, Type};
use probe_common::config::{found, KernelOffsets};

pub const DEFAULT: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

/// A field the programs want that this kernel's BTF does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingField {
    pub field: String,
    pub disables: &'static str,
}

/// What a member must be to be usable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Any,
    /// An embedded struct, not a pointer to one (super_block.s_shrink before 6.7).
    EmbeddedStruct,
}

/// One offset the programs need: where to look, first match wins.
struct Field {
    at: &'static [(&'static str, &'static str)],
    want: Want,
    bit: u32,
    /// What breaks without it (None: an alternative to another field, whose
    /// absence alone breaks nothing).
    disables: Option<&'static str>,
}

const FIELDS: &[Field] = &[
    Field {
        at: &[("task_struct", "flags")],
        want: Want::Any,
        bit: found::TASK_FLAGS,
        disables: Some("task PF_MEMALLOC_* flags in events"),
    },
    Field { at: &[("shrinker", "private_data")], want: Want::Any, bit: found::SHRINKER_PRIVATE_DATA, disables: None },
    Field {
        at: &[("super_block", "s_shrink")],
        want: Want::EmbeddedStruct,
        bit: found::SB_S_SHRINK_EMBEDDED,
        disables: None,
    },
    Field {
        at: &[("super_block", "s_dev")],
        want: Want::Any,
        bit: found::SB_S_DEV,
        disables: Some("naming the filesystem behind a shrinker or folio"),
    },
    Field {
        at: &[("super_block", "s_type")],
        want: Want::Any,
        bit: found::SB_S_TYPE,
        disables: Some("naming the filesystem type behind a shrinker"),
    },
    Field {
        at: &[("file_system_type", "name")],
        want: Want::Any,
        bit: found::FSTYPE_NAME,
        disables: Some("naming the filesystem type behind a shrinker"),
    },
    // struct folio mirrors struct page up to `mapping`; kernels before 5.16
    // have only the page.
    Field {
        at: &[("folio", "mapping"), ("page", "mapping")],
        want: Want::Any,
        bit: found::FOLIO_MAPPING,
        disables: Some("mapping folios written by reclaim to their device"),
    },
    Field {
        at: &[("address_space", "host")],
        want: Want::Any,
        bit: found::MAPPING_HOST,
        disables: Some("mapping folios and writepages to their inode"),
    },
    Field {
        at: &[("inode", "i_sb")],
        want: Want::Any,
        bit: found::INODE_I_SB,
        disables: Some("mapping folios and writepages to their device"),
    },
    Field {
        at: &[("inode", "i_ino")],
        want: Want::Any,
        bit: found::INODE_I_INO,
        disables: Some("mapping folios and writepages to their inode"),
    },
    Field {
        at: &[("scan_control", "gfp_mask")],
        want: Want::Any,
        bit: found::SCAN_CONTROL_GFP,
        disables: Some("the gfp mask of shrink_node()"),
    },
];

impl KernelBtf {
    pub fn load(path: &Path) -> Result<KernelBtf> {
        if !path.exists() {
            anyhow::bail!("no kernel BTF at {} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)", path.display());
        }
        // Mapped, not parsed: the parsed cache costs 40 MiB for 6.18's 5.5 MiB
        // of BTF, the start-up peak an operator's memory limit must allow,
        // for a few dozen lookups. Kernels before 6.16 cannot map
        // /sys/kernel/btf/vmlinux; they get the parse.
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .with_context(|| format!("cannot parse BTF at {}", path.display()))?;
        Ok(KernelBtf { btf })
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions (struct folio keeps `mapping` inside one).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        self.member(name, member).map(|(off, _)| off)
    }

    /// Offset and type of a member (typedefs and qualifiers resolved).
    fn member(&self, name: &str, member: &str) -> Option<(u32, Type)> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => self.find_member(s, member, 0),
            _ => None,
        })
    }

    fn find_member(&self, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<(u32, Type)> {
        for m in &s.members {
            let bits = base_bits + m.bit_offset();
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                return Some((bits / 8, self.btf.resolve_chained_type(m).ok()?));
            }
            if name.is_empty() {
                if let Ok(Type::Struct(inner) | Type::Union(inner)) = self.btf.resolve_chained_type(m) {
                    if let Some(found) = self.find_member(&inner, member, bits) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// Whether the kernel has a function by this name (fentry needs it in BTF).
    pub fn has_function(&self, name: &str) -> bool {
        self.btf.resolve_types_by_name(name).map(|ts| ts.iter().any(|t| matches!(t, Type::Func(_)))).unwrap_or(false)
    }

    /// Whether `enum name` has a value called `value`: how this kernel says
    /// which BPF helpers it has.
    fn has_enum_value(&self, name: &str, value: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name(name) else { return false };
        types.iter().any(|t| match t {
            Type::Enum(e) => e.members.iter().any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == value)),
            _ => false,
        })
    }

    /// Whether the kernel has `AS_WRITEBACK_MAY_DEADLOCK_ON_RECLAIM` (Linux
    /// 6.16): legacy-memcg reclaim then skips waiting on the writeback of
    /// mappings that carry it (FUSE with writeback_cache).
    pub fn skips_flagged_writeback(&self) -> bool {
        self.has_enum_value("mapping_flags", "AS_WRITEBACK_MAY_DEADLOCK_ON_RECLAIM")
    }

    /// Whether the kernel has a BTF-enabled tracepoint by this name (its
    /// `btf_trace_<name>` typedef).
    pub fn has_btf_tracepoint(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .map(|ts| ts.iter().any(|t| matches!(t, Type::Typedef(_))))
            .unwrap_or(false)
    }

    fn lookup(&self, f: &Field) -> Option<u32> {
        f.at.iter().find_map(|(st, member)| {
            let (off, ty) = self.member(st, member)?;
            match (f.want, ty) {
                (Want::Any, _) | (Want::EmbeddedStruct, Type::Struct(_)) => Some(off),
                _ => None,
            }
        })
    }

    /// All the offsets the programs need, and what is missing on this kernel.
    pub fn offsets(&self) -> (KernelOffsets, Vec<MissingField>) {
        let mut k = KernelOffsets::default();
        let mut missing = Vec::new();
        for f in FIELDS {
            let Some(off) = self.lookup(f) else {
                if let Some(disables) = f.disables {
                    let (st, member) = f.at[0];
                    missing.push(MissingField { field: format!("{st}.{member}"), disables });
                }
                continue;
            };
            let slot = match f.bit {
                found::TASK_FLAGS => &mut k.task_flags,
                found::SHRINKER_PRIVATE_DATA => &mut k.shrinker_private_data,
                found::SB_S_SHRINK_EMBEDDED => &mut k.sb_s_shrink,
                found::SB_S_DEV => &mut k.sb_s_dev,
                found::SB_S_TYPE => &mut k.sb_s_type,
                found::FSTYPE_NAME => &mut k.fstype_name,
                found::FOLIO_MAPPING => &mut k.folio_mapping,
                found::MAPPING_HOST => &mut k.mapping_host,
                found::INODE_I_SB => &mut k.inode_i_sb,
                found::INODE_I_INO => &mut k.inode_i_ino,
                _ => &mut k.scan_control_gfp,
            };
            *slot = off;
            k.found |= f.bit;
        }
        if self.has_enum_value("bpf_func_id", "BPF_FUNC_get_current_task_btf") {
            k.found |= found::CURRENT_TASK_BTF;
        }
        if k.found & (found::SHRINKER_PRIVATE_DATA | found::SB_S_SHRINK_EMBEDDED) == 0 {
            missing.push(MissingField {
                field: "shrinker.private_data or an embedded super_block.s_shrink".into(),
                disables: "naming the filesystem behind a shrinker",
            });
        }
        (k, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets from this machine's BTF: the values must be the kernel's, so
    /// only properties that hold on every 6.x kernel are asserted.
    #[test]
    fn reads_offsets_from_this_kernels_btf() {
        let path = Path::new(DEFAULT);
        if !path.exists() {
            eprintln!("skipping: no {DEFAULT}");
            return;
        }
        let btf = KernelBtf::load(path).unwrap();
        let (k, missing) = btf.offsets();
        assert!(missing.is_empty(), "missing: {missing:?}");
        assert_ne!(k.task_flags, 0);
        // struct folio mirrors struct page: mapping is the word after flags and lru.
        assert_eq!(k.folio_mapping, 24);
        // Exactly one way from a shrinker to its super_block: a pointer in
        // the shrinker (6.7+) or the shrinker embedded in the super_block.
        let via_private = k.found & found::SHRINKER_PRIVATE_DATA != 0;
        let embedded = k.found & found::SB_S_SHRINK_EMBEDDED != 0;
        assert!(via_private != embedded, "private_data {via_private}, embedded s_shrink {embedded}");
        if via_private {
            assert_eq!(k.shrinker_private_data % 8, 0);
        } else {
            assert!(k.sb_s_shrink > k.sb_s_type);
        }
        assert!(btf.has_function("try_to_free_pages"));
        assert!(!btf.has_function("no_such_function_here"));
        assert!(btf.member_offset("task_struct", "no_such_member").is_none());
        // Every kernel with BTF has the first helper; this one (6.x) the 5.11 one.
        assert!(btf.has_enum_value("bpf_func_id", "BPF_FUNC_map_lookup_elem"));
        assert!(!btf.has_enum_value("bpf_func_id", "BPF_FUNC_no_such_helper"));
        assert_ne!(k.found & found::CURRENT_TASK_BTF, 0);
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = KernelBtf::load(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(err.to_string().contains("no kernel BTF"));
    }
}
