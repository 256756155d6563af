//! What the running kernel offers: BTF, tracefs formats, kallsyms, privileges.
//! Everything kernel-version-specific is read here at run time.

pub mod btf;
pub mod kallsyms;
pub mod markers;
pub mod preflight;
pub mod proc_task;
pub mod tracefs;
