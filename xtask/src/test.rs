//! `cargo xtask test`: what CI runs. Set-up, build, unit tests, the kernel
//! integration tests one at a time (they build real storage stacks), and a
//! short fuzz run of each fuzz target.

use std::process::Command;

use anyhow::Result;

use crate::{
    build::{ebpf_object, run_build},
    setup::run_setup,
    util::{cargo, exec, path_env, root},
};

fn fuzz_smoke(seconds: u64) -> Result<()> {
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", path_env())
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("xtask: installing cargo-fuzz");
        exec(
            Command::new("cargo")
                .args(["install", "cargo-fuzz", "--locked", "--version", "0.13.1"])
                .env("PATH", path_env()),
        )?;
    }
    let dir = root().join("fuzz");
    for target in ["trace_reader", "ftrace_import", "replay"] {
        // libFuzzer refuses a corpus directory that does not exist.
        std::fs::create_dir_all(dir.join("corpus").join(target))?;
        let (corpus, seeds, dict) =
            (format!("corpus/{target}"), format!("seeds/{target}"), format!("-dict={target}.dict"));
        exec(
            Command::new("cargo")
                .args([
                    "+nightly",
                    "fuzz",
                    "run",
                    target,
                    &corpus,
                    &seeds,
                    "--",
                    &format!("-max_total_time={seconds}"),
                    &dict,
                ])
                .current_dir(&dir)
                .env("PATH", path_env())
                .env("RECLAIMSCOPE_BPF_OBJ", ebpf_object()),
        )?;
    }
    Ok(())
}

pub fn run_tests(fuzz_seconds: u64) -> Result<()> {
    run_setup()?;
    run_build(false)?;
    let obj = ebpf_object();
    exec(cargo().args(["test", "--workspace", "--lib", "--bins"]).env("RECLAIMSCOPE_BPF_OBJ", &obj))?;
    exec(
        cargo()
            .args(["test", "--workspace", "--test", "*", "--", "--test-threads=1"])
            .env("RECLAIMSCOPE_BPF_OBJ", &obj),
    )?;
    if fuzz_seconds > 0 {
        fuzz_smoke(fuzz_seconds)?;
    }
    eprintln!("xtask: all tests passed");
    Ok(())
}
