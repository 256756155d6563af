//! What the running kernel offers: BTF, tracefs formats, kallsyms, privileges.
//! Everything kernel-version-specific is read here at run time.

pub mod btf;
pub mod kallsyms;
pub mod preflight;
pub mod tracefs;
