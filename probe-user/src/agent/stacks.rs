//! Kernel stacks from the STACKS map, symbolized with /proc/kallsyms.

use std::collections::HashMap;

use aya::maps::{MapData, StackTraceMap};

use crate::kernel::kallsyms::Kallsyms;

pub struct Stacks {
    map: StackTraceMap<MapData>,
    cache: HashMap<u32, Vec<(u64, String)>>,
}

impl Stacks {
    pub fn new(map: StackTraceMap<MapData>) -> Stacks {
        Stacks { map, cache: HashMap::new() }
    }

    /// (address, symbol) frames of a stack id, innermost first; empty when
    /// the id is negative or the stack was evicted.
    pub fn frames(&mut self, id: i32, syms: &Kallsyms) -> &[(u64, String)] {
        if id < 0 {
            return &[];
        }
        let map = &self.map;
        self.cache.entry(id as u32).or_insert_with(|| match map.get(&(id as u32), 0) {
            Ok(st) => st.frames().iter().map(|f| (f.ip, syms.symbolize(f.ip))).collect(),
            Err(_) => Vec::new(),
        })
    }
}
