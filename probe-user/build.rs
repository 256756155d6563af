//! Embeds the eBPF object built by `cargo xtask build`, so the agent binary
//! alone is enough on a server. RECLAIMSCOPE_BPF_OBJ overrides the path.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=RECLAIMSCOPE_BPF_OBJ");
    let obj = std::env::var_os("RECLAIMSCOPE_BPF_OBJ").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../probe-ebpf/target/bpfel-unknown-none/release/reclaimscope")
    });
    if !obj.exists() {
        println!("cargo:error=the eBPF object {} is missing: build it with `cargo xtask build`", obj.display());
        return;
    }
    println!("cargo:rerun-if-changed={}", obj.display());
    println!("cargo:rustc-env=RECLAIMSCOPE_BPF_OBJ={}", obj.canonicalize().unwrap_or(obj).display());
}
