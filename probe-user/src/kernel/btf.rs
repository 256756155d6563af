//! Kernel struct offsets from /sys/kernel/btf/vmlinux. Rust emits no CO-RE
//! relocations, so these are read at start-up and handed to the programs.

use std::path::Path;

use anyhow::{Context, Result};
use btf_rs::{Btf, Type};
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

/// (struct, member path, found bit, what breaks without it)
const FIELDS: &[(&str, &str, u32, &str)] = &[
    ("task_struct", "flags", found::TASK_FLAGS, "task PF_MEMALLOC_* flags in events"),
    ("shrinker", "private_data", found::SHRINKER_PRIVATE_DATA, "naming the filesystem behind a shrinker"),
    ("super_block", "s_dev", found::SB_S_DEV, "naming the filesystem behind a shrinker or folio"),
    ("super_block", "s_type", found::SB_S_TYPE, "naming the filesystem type behind a shrinker"),
    ("file_system_type", "name", found::FSTYPE_NAME, "naming the filesystem type behind a shrinker"),
    ("folio", "mapping", found::FOLIO_MAPPING, "mapping folios written by reclaim to their device"),
    ("address_space", "host", found::MAPPING_HOST, "mapping folios and writepages to their inode"),
    ("inode", "i_sb", found::INODE_I_SB, "mapping folios and writepages to their device"),
    ("inode", "i_ino", found::INODE_I_INO, "mapping folios and writepages to their inode"),
    ("scan_control", "gfp_mask", found::SCAN_CONTROL_GFP, "the gfp mask of shrink_node()"),
];

impl KernelBtf {
    pub fn load(path: &Path) -> Result<KernelBtf> {
        if !path.exists() {
            anyhow::bail!("no kernel BTF at {} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)", path.display());
        }
        let btf = Btf::from_file(path).with_context(|| format!("cannot parse BTF at {}", path.display()))?;
        Ok(KernelBtf { btf })
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions (struct folio keeps `mapping` inside one).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => self.find_member(s, member, 0),
            _ => None,
        })
    }

    fn find_member(&self, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<u32> {
        for m in &s.members {
            let bits = base_bits + m.bit_offset();
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                return Some(bits / 8);
            }
            if name.is_empty() {
                if let Ok(Type::Struct(inner) | Type::Union(inner)) = self.btf.resolve_chained_type(m) {
                    if let Some(off) = self.find_member(&inner, member, bits) {
                        return Some(off);
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

    /// All the offsets the programs need, and what is missing on this kernel.
    pub fn offsets(&self) -> (KernelOffsets, Vec<MissingField>) {
        let mut k = KernelOffsets::default();
        let mut missing = Vec::new();
        for &(st, member, bit, disables) in FIELDS {
            match self.member_offset(st, member) {
                Some(off) => {
                    let slot = match bit {
                        found::TASK_FLAGS => &mut k.task_flags,
                        found::SHRINKER_PRIVATE_DATA => &mut k.shrinker_private_data,
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
                    k.found |= bit;
                }
                None => missing.push(MissingField { field: format!("{st}.{member}"), disables }),
            }
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
        assert_eq!(k.shrinker_private_data % 8, 0);
        assert!(btf.has_function("try_to_free_pages"));
        assert!(!btf.has_function("no_such_function_here"));
        assert!(btf.member_offset("task_struct", "no_such_member").is_none());
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = KernelBtf::load(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(err.to_string().contains("no kernel BTF"));
    }
}
