//! The rules, as data: stable ids and severities (`output::finding` says
//! what each one means). docs/rules.md documents the same ids; never
//! renumber or reuse one.

use super::finding::Severity;

pub struct Rule {
    pub id: &'static str,
    pub severity: Severity,
}

pub const HAZARD_FS_IO: Rule = Rule { id: "RS001", severity: Severity::Hazard };
pub const HAZARD_DIRTY_THROTTLE: Rule = Rule { id: "RS002", severity: Severity::Hazard };
pub const SHRINKER_UPPER: Rule = Rule { id: "RS101", severity: Severity::Recursion };
pub const WAIT_UPPER_WRITEBACK: Rule = Rule { id: "RS102", severity: Severity::Recursion };
pub const WRITE_UPPER_FOLIO: Rule = Rule { id: "RS103", severity: Severity::Recursion };
pub const BLOCKED_IN_RECLAIM: Rule = Rule { id: "RS201", severity: Severity::Deadlock };

pub const SERVICER_OOM_KILLED: Rule = Rule { id: "RS301", severity: Severity::Failure };

pub const ALL: &[&Rule] = &[
    &HAZARD_FS_IO,
    &HAZARD_DIRTY_THROTTLE,
    &SHRINKER_UPPER,
    &WAIT_UPPER_WRITEBACK,
    &WRITE_UPPER_FOLIO,
    &BLOCKED_IN_RECLAIM,
    &SERVICER_OOM_KILLED,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique_and_documented() {
        let doc = include_str!("../../../docs/rules.md");
        let mut ids: Vec<&str> = ALL.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), ALL.len());
        for r in ALL {
            assert!(doc.contains(r.id), "{} missing from docs/rules.md", r.id);
        }
    }
}
