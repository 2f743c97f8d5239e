//! Why a unit cannot be placed, in words an operator understands.
//!
//! Run only when placement failed, so it may be slow: it applies the hard filters one at a
//! time, in the order an operator would check them, and describes the filter that removed
//! the last candidates, with the facts that made it do so.

use std::collections::BTreeMap;

use super::pass::{MState, Mid, Pass, Res, Uid};

/// How many names a message lists before `…`.
const LIST: usize = 6;

fn list<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    let items: Vec<S> = items.into_iter().collect();
    let mut out: Vec<&str> = items.iter().take(LIST).map(AsRef::as_ref).collect();
    if items.len() > LIST {
        out.push("…");
    }
    out.join(", ")
}

pub(super) fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if (v - v.round()).abs() < 0.05 {
        format!("{} {}", v.round(), UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn cpus(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{} CPUs", millis / 1000)
    } else {
        format!("{:.1} CPUs", millis as f64 / 1000.0)
    }
}

fn state_words(s: MState) -> &'static str {
    match s {
        MState::Ready => "is ready",
        MState::Draining => "is draining",
        MState::Suspect => "is not responding",
        MState::Lost => "is lost",
    }
}

impl Pass<'_> {
    /// The reason for a unit that `find` could not place (`only`: the one machine its
    /// MachineOf/MachineID allows).
    pub(super) fn unplaceable_reason(&mut self, u: Uid, only: Option<Mid>) -> String {
        let reason = self.diagnose(u, only);
        match only {
            Some(m) if !self.units[u].leaders.is_empty() => {
                let leaders: Vec<&str> = self.units[u]
                    .leaders
                    .iter()
                    .map(|&l| self.units[l].name.as_str())
                    .collect();
                format!(
                    "MachineOf={} puts it on {}, but {reason}",
                    leaders.join(","),
                    self.machines[m].id
                )
            }
            _ => reason,
        }
    }

    /// Which filter left no machine for `u`, and why; plus which machines are unavailable.
    pub(super) fn diagnose(&mut self, u: Uid, only: Option<Mid>) -> String {
        let base = self.filters(u, only);
        let mut by_state: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for m in &self.machines {
            let word = match m.state {
                MState::Ready => continue,
                MState::Draining => "draining",
                MState::Suspect => "not responding",
                MState::Lost => "lost",
            };
            by_state.entry(word).or_default().push(m.id);
        }
        if by_state.is_empty() {
            return base;
        }
        let parts: Vec<String> = by_state
            .iter()
            .map(|(word, ids)| format!("{} {word} ({})", ids.len(), list(ids.iter())))
            .collect();
        format!("{base}; unavailable machines: {}", parts.join(", "))
    }

    fn filters(&mut self, u: Uid, only: Option<Mid>) -> String {
        let n = self.machines.len();
        let all: Vec<Mid> = match only {
            Some(m) => vec![m],
            None => (0..n).collect(),
        };
        let unit = &self.units[u];
        if let Some(why) = &unit.es_missing {
            return why.clone();
        }
        let pinned_id = unit.rec.options.machine_id.clone().unwrap_or_default();
        if unit.pin == Some(None) {
            return format!("MachineID={pinned_id}, but no registered machine has that id");
        }
        let ready: Vec<Mid> = all
            .iter()
            .copied()
            .filter(|&m| self.machines[m].state == MState::Ready)
            .collect();
        if ready.is_empty() {
            return match (only, n) {
                (Some(m), _) => format!(
                    "machine {} {}",
                    self.machines[m].id,
                    state_words(self.machines[m].state)
                ),
                (None, 0) => "no machine is registered".to_string(),
                (None, _) => "no machine takes new units".to_string(),
            };
        }
        let pinned: Vec<Mid> = ready
            .iter()
            .copied()
            .filter(|&m| !matches!(unit.pin, Some(Some(p)) if p != m))
            .collect();
        if pinned.is_empty() {
            return format!("MachineID={pinned_id} does not allow that machine");
        }

        let meta: Vec<Mid> = pinned.iter().copied().filter(|&m| self.meta_ok(u, m)).collect();
        if meta.is_empty() {
            let conds: Vec<String> = unit
                .meta
                .iter()
                .zip(&unit.rec.options.machine_metadata)
                .map(|(_, c)| format!("{}{}{}", c.key, if c.negate { "!=" } else { "=" }, c.values.join("|")))
                .collect();
            let have: Vec<String> = unit
                .meta
                .iter()
                .map(|c| {
                    let mut vals: Vec<&str> = pinned
                        .iter()
                        .map(|&m| match self.attr[c.kid][m] {
                            0 => "(none)",
                            v => self.values[c.kid][v as usize].as_str(),
                        })
                        .collect();
                    vals.sort_unstable();
                    vals.dedup();
                    format!("{}: {}", self.keys[c.kid], list(vals))
                })
                .collect();
            let whose = if pinned.len() == 1 {
                "the machine has"
            } else {
                "machines have"
            };
            return format!(
                "no machine matches MachineMetadata {} ({whose} {})",
                conds.join(" "),
                have.join("; ")
            );
        }

        let avoided: Vec<Mid> = meta.iter().copied().filter(|&m| !unit.avoid.contains(&m)).collect();
        if avoided.is_empty() {
            return format!(
                "it failed too often on {}, the only machine(s) it may run on, so it is kept off them",
                list(meta.iter().map(|&m| self.machines[m].id))
            );
        }

        let mut conflicting: Vec<&str> = Vec::new();
        let mut free = Vec::new();
        for &m in &avoided {
            match self.conflict_on(u, m) {
                Some(v) => conflicting.push(self.units[v].name.as_str()),
                None => free.push(m),
            }
        }
        if free.is_empty() {
            conflicting.sort_unstable();
            conflicting.dedup();
            let every = if avoided.len() == 1 {
                "on the only eligible machine"
            } else {
                "on every eligible machine"
            };
            return format!("conflicts with {} {every}", list(conflicting));
        }

        if let Some(zone) = self.home_zone(u) {
            let in_zone: Vec<Mid> = free.iter().copied().filter(|&m| self.home_zone_ok(u, m)).collect();
            if in_zone.is_empty() {
                return format!(
                    "its home zone is {zone} (a data node under forced zone awareness holds only its own zone's \
                     copies, so it waits for a machine there), and no eligible machine is in zone {zone}"
                );
            }
            free = in_zone;
        }
        let checked: Vec<Mid> = free.iter().copied().filter(|&m| self.host_ok(u, m)).collect();
        if checked.is_empty() {
            let every = if free.len() == 1 {
                "the only eligible machine fails"
            } else {
                "no eligible machine passes"
            };
            return format!("{every} Elasticsearch's bootstrap checks: {}", self.unfit_groups(&free));
        }
        let reason = self.capacity_reason(u, &checked);
        let failing: Vec<Mid> = free.iter().copied().filter(|&m| !self.host_ok(u, m)).collect();
        if failing.is_empty() {
            reason
        } else {
            format!(
                "{reason}; {} more machine(s) fail Elasticsearch's bootstrap checks: {}",
                failing.len(),
                self.unfit_groups(&failing)
            )
        }
    }

    /// Why machines fail the bootstrap checks, one entry per distinct reason with the
    /// machines that have it (a fleet-wide sysctl names the fix once, not per machine).
    fn unfit_groups(&self, machines: &[Mid]) -> String {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for &m in machines {
            let why = self.machines[m]
                .es_unfit
                .as_deref()
                .unwrap_or("its facts are not reported");
            groups.entry(why).or_default().push(self.machines[m].id);
        }
        groups
            .into_iter()
            .map(|(why, ids)| format!("{why} (on {} machine(s): {})", ids.len(), list(ids)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Resources, then DistinctBy, over the machines every earlier filter left.
    fn capacity_reason(&self, u: Uid, checked: &[Mid]) -> String {
        let fitting: Vec<Mid> = checked.iter().copied().filter(|&m| self.fits(u, m)).collect();
        if fitting.is_empty() {
            return self.resources_reason(u, checked);
        }

        let distinct: Vec<Mid> = fitting.iter().copied().filter(|&m| self.distinct_ok(u, m)).collect();
        if distinct.is_empty() {
            return self.distinct_reason(u, &fitting);
        }
        format!(
            "{} eligible machine(s) pass every filter, yet none was chosen (a scheduler bug; please report it)",
            distinct.len()
        )
    }

    fn resources_reason(&self, u: Uid, machines: &[Mid]) -> String {
        let req = self.units[u].res;
        let free = |m: Mid| -> Res {
            let cap = self.machines[m].cap;
            let used = self.used[m];
            Res {
                cpu: cap.cpu.saturating_sub(used.cpu),
                mem: cap.mem.saturating_sub(used.mem),
                disk: cap.disk.saturating_sub(used.disk),
            }
        };
        type Dim = (&'static str, fn(Res) -> u64, fn(u64) -> String);
        let dims: [Dim; 3] = [
            ("memory", |r| r.mem, bytes),
            ("CPU", |r| r.cpu, cpus),
            ("disk", |r| r.disk, bytes),
        ];
        for (what, get, show) in dims {
            let want = get(req);
            if want == 0 {
                continue;
            }
            // The most free, ties to the first machine id.
            let best = machines
                .iter()
                .copied()
                .map(|m| (get(free(m)), std::cmp::Reverse(m)))
                .max();
            if let Some((most, std::cmp::Reverse(m))) = best {
                if most < want {
                    return format!(
                        "needs {} {what}; the most free on an eligible machine is {} ({})",
                        show(want),
                        show(most),
                        self.machines[m].id
                    );
                }
            }
        }
        let mut asks = Vec::new();
        if req.cpu > 0 {
            asks.push(cpus(req.cpu));
        }
        if req.mem > 0 {
            asks.push(format!("{} memory", bytes(req.mem)));
        }
        if req.disk > 0 {
            asks.push(format!("{} disk", bytes(req.disk)));
        }
        format!(
            "needs {} at once; each is free somewhere, but no eligible machine has all of it",
            asks.join(" and ")
        )
    }

    fn distinct_reason(&self, u: Uid, machines: &[Mid]) -> String {
        let unit = &self.units[u];
        let group = &self.groups[unit.group];
        let mut parts = Vec::new();
        for &(kid, max, slot) in &unit.distinct {
            let key = self.keys[kid].as_str();
            let full: Vec<Mid> = machines
                .iter()
                .copied()
                .filter(|&m| self.counts[slot][self.attr[kid][m] as usize] >= max)
                .collect();
            if full.is_empty() {
                continue;
            }
            let per = if max == 1 {
                format!("1 {group} unit")
            } else {
                format!("{max} {group} units")
            };
            if key == "host" || key == "machine" {
                // Where the eligible machines are, by the group's SpreadBy keys: tells the
                // operator which failure domains are missing.
                let mut whereabouts = Vec::new();
                for &(skid, _) in &unit.spread {
                    let mut vals: Vec<&str> = machines
                        .iter()
                        .map(|&m| match self.attr[skid][m] as usize {
                            0 => "(none)",
                            v => self.values[skid][v].as_str(),
                        })
                        .collect();
                    vals.sort_unstable();
                    vals.dedup();
                    whereabouts.push(format!("{} {}", self.keys[skid], list(vals)));
                }
                let whereabouts = if whereabouts.is_empty() {
                    String::new()
                } else {
                    format!("; the eligible machines are in {}", whereabouts.join(", "))
                };
                parts.push(format!(
                    "DistinctBy={key} allows {per} per machine, and {} of the {} eligible machines already have {max}{whereabouts}",
                    full.len(),
                    machines.len()
                ));
            } else {
                let mut by_value: BTreeMap<&str, u32> = BTreeMap::new();
                for &m in &full {
                    let v = self.attr[kid][m] as usize;
                    let name = if v == 0 { "(none)" } else { self.values[kid][v].as_str() };
                    by_value.insert(name, self.counts[slot][v]);
                }
                parts.push(format!(
                    "DistinctBy={key} allows {per} per {key}, and every {key} with an eligible machine is full ({})",
                    list(by_value.iter().map(|(v, c)| format!("{v}: {c}")))
                ));
            }
        }
        parts.join("; and ")
    }
}
