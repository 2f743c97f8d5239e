//! Compiled `Conflicts=` / `Replaces=` / `StartAfter=` globs for one scheduling pass.
//!
//! Template units share their pattern lists, so each distinct list is compiled once per pass,
//! and answers are memoised per (list, unit): conflict checks ask the same questions for
//! every candidate machine.

use std::collections::HashMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

/// Index of a compiled pattern list.
pub(super) type SetId = usize;

#[derive(Default)]
pub(super) struct Globs {
    sets: Vec<GlobSet>,
    by_patterns: HashMap<Vec<String>, Result<SetId, String>>,
    memo: HashMap<(SetId, usize), bool>,
}

impl Globs {
    /// Compiles `patterns` (or finds them compiled); `None` for an empty list. An invalid
    /// pattern gives an error naming it, for the unit's unplaceable reason.
    pub(super) fn intern(&mut self, option: &str, patterns: &[String]) -> Result<Option<SetId>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        if let Some(found) = self.by_patterns.get(patterns) {
            return found.clone().map(Some);
        }
        let compiled = compile(option, patterns).map(|set| {
            self.sets.push(set);
            self.sets.len() - 1
        });
        self.by_patterns.insert(patterns.to_vec(), compiled.clone());
        compiled.map(Some)
    }

    /// Does set `id` match unit `uid` (named `name`)? Memoised.
    pub(super) fn matches(&mut self, id: SetId, uid: usize, name: &str) -> bool {
        let sets = &self.sets;
        *self.memo.entry((id, uid)).or_insert_with(|| sets[id].is_match(name))
    }

    /// Unmemoised match, for scans over every unit (done once per set).
    pub(super) fn is_match(&self, id: SetId, name: &str) -> bool {
        self.sets[id].is_match(name)
    }
}

fn compile(option: &str, patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p)
            .map_err(|e| format!("{option}={p} is not a valid glob ({e}); fix the unit file and submit it again"))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| format!("{option}= globs cannot be compiled ({e}); fix the unit file and submit it again"))
}
