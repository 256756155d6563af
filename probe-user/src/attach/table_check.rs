//! The attach table names programs by string; a typo or a program renamed in
//! probe-ebpf would only show on a kernel that reaches that alternative. This
//! checks the table against the programs really in the embedded object,
//! without root or a kernel: only the ELF is parsed.

use std::collections::{BTreeMap, BTreeSet};

use aya_obj::{Object, ProgramSection};

use super::table::{Family, Target, HOOKS};
use crate::agent::session::BPF_OBJECT;

/// The programs the object defines, by name, with their section kind.
fn object_programs() -> BTreeMap<String, ProgramSection> {
    let obj = Object::parse(BPF_OBJECT).expect("the embedded eBPF object parses");
    obj.programs.into_iter().map(|(name, p)| (name, p.section)).collect()
}

/// Whether a program of this section kind can be attached the way the
/// loader attaches `target` (attach::loader::Loader::attach).
fn kind_fits(target: &Target, section: &ProgramSection) -> bool {
    use ProgramSection as S;
    match target {
        Target::BtfFn(_) => matches!(section, S::FEntry { .. } | S::FExit { .. }),
        Target::Ksym(_) => matches!(section, S::KProbe | S::KRetProbe),
        Target::Tp(_) => matches!(section, S::TracePoint),
        Target::BtfTp(_) => matches!(section, S::BtfTracePoint),
    }
}

/// The target shape each family's programs take.
fn family_fits(family: Family, target: &Target) -> bool {
    matches!(
        (family, target),
        (Family::Fentry, Target::BtfFn(_))
            | (Family::Kprobe, Target::Ksym(_))
            | (Family::Tracepoint, Target::Tp(_))
            | (Family::TpBtf, Target::BtfTp(_))
    )
}

#[test]
fn every_table_program_is_in_the_object_with_its_kind() {
    let programs = object_programs();
    let mut wrong = Vec::new();
    for hook in HOOKS {
        for imp in hook.impls {
            for prog in imp.progs {
                if !family_fits(imp.family, &prog.target) {
                    wrong.push(format!(
                        "{}: {} target under a {} implementation",
                        prog.program,
                        prog.target.describe(),
                        imp.family.name()
                    ));
                }
                match programs.get(prog.program) {
                    None => wrong.push(format!("{} ({}): not in the object", prog.program, hook.name)),
                    Some(section) if !kind_fits(&prog.target, section) => wrong.push(format!(
                        "{}: the object has {section:?} for target {}",
                        prog.program,
                        prog.target.describe()
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the attach table does not match the object:\n{}", wrong.join("\n"));
}

#[test]
fn every_object_program_is_in_the_table() {
    let named: BTreeSet<&str> = HOOKS.iter().flat_map(|h| h.impls).flat_map(|i| i.progs).map(|p| p.program).collect();
    let unused: Vec<String> = object_programs().into_keys().filter(|n| !named.contains(n.as_str())).collect();
    assert!(unused.is_empty(), "programs in the object that no hook attaches: {unused:?}");
}
