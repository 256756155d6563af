//! What the kernel side must and must not do on every event, checked in the
//! embedded eBPF object itself (only the ELF is parsed: no root, no kernel),
//! since neither shows on a machine until a long run or an overflow.

use aya_obj::{generated::bpf_insn, Object};

use crate::agent::session::BPF_OBJECT;

/// bpf_get_stackid's helper number (include/uapi/linux/bpf.h).
const BPF_FUNC_GET_STACKID: i32 = 27;
/// BPF_F_REUSE_STACKID, the same header.
const BPF_F_REUSE_STACKID: i32 = 1 << 10;

const BPF_CLASS: u8 = 0x07;
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_ALU: u8 = 0x04;
const BPF_ALU64: u8 = 0x07;
/// BPF_JMP | BPF_CALL
const CALL: u8 = 0x85;
/// BPF_ALU64 | BPF_MOV | BPF_K: `rD = imm`
const MOV64_IMM: u8 = 0xb7;

fn object() -> Object {
    Object::parse(BPF_OBJECT).expect("the embedded eBPF object parses")
}

fn writes(insn: &bpf_insn, reg: u8) -> bool {
    insn.dst_reg() == reg && matches!(insn.code & BPF_CLASS, BPF_LD | BPF_LDX | BPF_ALU | BPF_ALU64)
}

/// The flags of every bpf_get_stackid() call in the object: the value the
/// nearest instruction before the call puts in r3 (its third argument), or
/// None when that is not a constant.
fn stackid_flags() -> Vec<(String, Option<i32>)> {
    let mut out = Vec::new();
    for f in object().functions.values() {
        let insns = &f.instructions;
        for (i, insn) in insns.iter().enumerate() {
            if insn.code != CALL || insn.src_reg() != 0 || insn.imm != BPF_FUNC_GET_STACKID {
                continue;
            }
            // A call clobbers r1-r5: r3 is set after the previous call.
            let set = insns[..i].iter().rev().take_while(|p| p.code != CALL).find(|p| writes(p, 3));
            out.push((f.name.clone(), set.filter(|p| p.code == MOV64_IMM).map(|p| p.imm)));
        }
    }
    out
}

/// Every stack is taken with BPF_F_REUSE_STACKID (probe-ebpf's context.rs,
/// STACK_FLAGS, says why): without it a stack whose bucket is taken is
/// lost, and over a long run the stack map fills and nearly every new stack
/// is.
#[test]
fn every_stack_is_taken_with_reuse_stackid() {
    let calls = stackid_flags();
    assert!(!calls.is_empty(), "the object calls bpf_get_stackid nowhere");
    let wrong: Vec<_> = calls.iter().filter(|(_, flags)| flags.is_none_or(|f| f & BPF_F_REUSE_STACKID == 0)).collect();
    assert!(wrong.is_empty(), "bpf_get_stackid without BPF_F_REUSE_STACKID (flags by function): {wrong:?}");
}

/// The kernel side counts what it loses and never logs (aya-log): a log
/// line in a hook is a ring-buffer write per event, and the one that said
/// "ring buffer full" per dropped event flooded the log during an
/// overflow. The agent logs drops from EVENTS_DROPPED, rate-limited.
#[test]
fn the_kernel_side_has_no_log_channel() {
    let obj = object();
    let mut logs: Vec<&String> = obj.maps.keys().filter(|m| m.starts_with("AYA_LOG")).collect();
    logs.sort();
    assert!(logs.is_empty(), "the eBPF object logs through aya-log ({logs:?})");
}
