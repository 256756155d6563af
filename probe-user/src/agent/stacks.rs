//! Kernel stacks from the STACKS map, symbolized with /proc/kallsyms.
//!
//! The programs take stacks with BPF_F_REUSE_STACKID (probe-ebpf's
//! context.rs, STACK_FLAGS, says why): a newer stack whose hash falls in a
//! taken bucket replaces the older one under the same id. An id is therefore
//! read from the map for every event, never answered from a cache by id,
//! which would name an event with a stack its bucket held long ago. What is
//! read is what the bucket holds when the agent handles the event,
//! milliseconds after the kernel took it: the agent accepts that another
//! servicer stack may have replaced it in between, as the kernel gives it no
//! way to tell (no hash or generation reaches user space). Symbolizing is
//! the costly part, so it is cached by the frames themselves.

use std::collections::HashMap;

use aya::maps::{MapData, StackTraceMap};
use probe_common::maps::MAX_STACKS;

use crate::kernel::kallsyms::Kallsyms;

/// Where stacks are read: the STACKS map, or a stand-in in tests.
pub trait StackSource {
    /// The frame addresses of the stack under `id`, innermost first; None
    /// when the bucket is empty.
    fn ips(&self, id: u32) -> Option<Vec<u64>>;
}

impl StackSource for StackTraceMap<MapData> {
    fn ips(&self, id: u32) -> Option<Vec<u64>> {
        self.get(&id, 0).ok().map(|st| st.frames().iter().map(|f| f.ip).collect())
    }
}

/// Symbolized stacks kept at most: as many as the map holds.
const MAX_SYMBOLIZED: usize = MAX_STACKS as usize;

pub struct Stacks<M = StackTraceMap<MapData>> {
    map: M,
    /// Symbolized stacks by their frame addresses.
    symbolized: HashMap<Vec<u64>, Vec<(u64, String)>>,
}

impl<M: StackSource> Stacks<M> {
    pub fn new(map: M) -> Stacks<M> {
        Stacks { map, symbolized: HashMap::new() }
    }

    /// (address, symbol) frames of the stack the map holds under `id` now,
    /// innermost first; empty when the id is negative (no stack taken) or
    /// the bucket is empty.
    pub fn frames(&mut self, id: i32, syms: &Kallsyms) -> &[(u64, String)] {
        let Some(ips) = u32::try_from(id).ok().and_then(|id| self.map.ips(id)) else {
            return &[];
        };
        if self.symbolized.len() >= MAX_SYMBOLIZED && !self.symbolized.contains_key(&ips) {
            // Bounded: start afresh rather than grow with every stack ever
            // seen over a months-long run.
            self.symbolized.clear();
        }
        self.symbolized.entry(ips).or_insert_with_key(|ips| ips.iter().map(|&ip| (ip, syms.symbolize(ip))).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::HashMap};

    use super::*;

    #[derive(Default)]
    struct FakeStacks(RefCell<HashMap<u32, Vec<u64>>>);

    impl StackSource for FakeStacks {
        fn ips(&self, id: u32) -> Option<Vec<u64>> {
            self.0.borrow().get(&id).cloned()
        }
    }

    fn syms() -> Kallsyms {
        Kallsyms::parse("ffffffff81000000 T shrink_node\nffffffff81001000 T folio_wait_writeback\n")
    }

    fn names(frames: &[(u64, String)]) -> Vec<&str> {
        frames.iter().map(|(_, s)| s.as_str()).collect()
    }

    /// The kernel reuses an id for a newer stack (BPF_F_REUSE_STACKID): the
    /// next event with that id gets the newer stack, not the one read before.
    #[test]
    fn a_reused_id_gives_the_stack_the_map_holds_now() {
        let k = syms();
        let mut s = Stacks::new(FakeStacks::default());
        s.map.0.borrow_mut().insert(5, vec![0xffffffff81000010]);
        assert_eq!(names(s.frames(5, &k)), ["shrink_node+0x10"]);
        s.map.0.borrow_mut().insert(5, vec![0xffffffff81001008, 0xffffffff81000020]);
        assert_eq!(names(s.frames(5, &k)), ["folio_wait_writeback+0x8", "shrink_node+0x20"]);
        s.map.0.borrow_mut().remove(&5);
        assert!(s.frames(5, &k).is_empty());
        assert!(s.frames(-14, &k).is_empty(), "a failed get_stackid (-EFAULT) has no stack");
    }

    #[test]
    fn symbolized_stacks_stay_bounded() {
        let k = syms();
        let mut s = Stacks::new(FakeStacks::default());
        for id in 0..(MAX_SYMBOLIZED as u32 + 10) {
            s.map.0.borrow_mut().insert(id % 8, vec![0xffffffff81000000 + u64::from(id)]);
            assert_eq!(s.frames((id % 8) as i32, &k).len(), 1);
            assert!(s.symbolized.len() <= MAX_SYMBOLIZED);
        }
    }
}
