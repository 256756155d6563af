//! `reclaimscope probes` as tables: the hook each implementation serves,
//! what the verifier said, and what each costs per call.

use anyhow::Result;

use super::{fit, stdout};
use crate::attach::{
    loader::{AttachReport, Verified},
    measure::ImplCost,
};

pub fn print_report(r: &AttachReport) -> Result<()> {
    let mut rows = Vec::new();
    for c in &r.hooks {
        let chosen = c.family.map(|f| f.name()).unwrap_or(if c.required { "MISSING" } else { "missing" });
        let skipped: Vec<String> = c.skipped.iter().map(|s| format!("{}: {}", s.family.name(), s.reason)).collect();
        rows.push(vec![c.hook.to_string(), chosen.to_owned(), c.targets.join("\n"), skipped.join("\n")]);
    }
    let titles = ["HOOK", "CHOSEN", "TARGET", "SKIPPED (kernel's reason)"];
    stdout::write(&fit::table(&titles, &rows, fit::terminal_width()).to_string())?;
    // The notes wrap too, their continuation lines indented.
    let note = |s: String| fit::wrap(&s, fit::terminal_width().saturating_sub(2)).replace('\n', "\n  ");
    for c in &r.hooks {
        if let (Some(f), Some(lacks)) = (c.family, c.lacks) {
            stdout::line(note(format!("limited: {} through {}: {lacks}", c.hook, f.name())))?;
        }
    }
    for (hook, lost) in r.weakened() {
        stdout::line(note(format!("weakened: {hook} missing, {lost}")))?;
    }
    Ok(())
}

pub fn print_verified(v: &[Verified]) -> Result<()> {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|x| {
            let res =
                if x.loaded { "loaded".to_owned() } else { format!("failed: {}", x.error.as_deref().unwrap_or("")) };
            vec![x.program.to_string(), x.family.name().to_owned(), x.target.to_string(), res]
        })
        .collect();
    let titles = ["PROGRAM", "FAMILY", "TARGET", "VERIFIER"];
    stdout::write(&fit::table(&titles, &rows, fit::terminal_width()).to_string())
}

pub fn print_costs(costs: &[ImplCost]) -> Result<()> {
    let mut rows = Vec::new();
    for c in costs {
        let ns = match (&c.error, c.ns_per_call) {
            (Some(_), _) => "not attached".to_owned(),
            (None, Some(ns)) => format!("{ns:.0}"),
            (None, None) => "-".to_owned(),
        };
        rows.push(vec![c.hook.to_string(), c.family.name().to_owned(), c.calls.to_string(), ns, c.targets.join(" ")]);
    }
    let titles = ["HOOK", "IMPLEMENTATION", "CALLS", "NS/CALL", "TARGET"];
    stdout::write(&fit::table(&titles, &rows, fit::terminal_width()).to_string())
}
