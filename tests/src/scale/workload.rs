//! The units the scale bench runs, and what "converged" means for them.
//!
//! The mix: two `Global=true` units (one copy on every machine), one `Conflicts=` family
//! (`cache@N`, at most one per machine, as many as half the machines), and the rest in
//! groups of ten instances of a template with `DistinctBy=host` and `SpreadBy=zone`
//! (Elasticsearch-like: one node of a cluster per host, spread over the zones).

use std::collections::{BTreeMap, BTreeSet};

use esfleet_core::model::UnitState;
use esfleet_proto::fleet as pb;
use esfleet_proto::mvccpb::KeyValue;

pub const GLOBALS: [&str; 2] = ["exporter.service", "shipper.service"];
pub const GROUP_SIZE: usize = 10;

const BODY: &str = "[Unit]\nDescription=scale bench %n\n\n[Service]\nExecStart=/bin/sleep infinity\n";

/// The unit files: templates first (with text), then instances (empty text: the
/// template's). Every name is to be launched.
#[derive(Debug, Clone)]
pub struct Workload {
    pub templates: Vec<pb::UnitFile>,
    pub instances: Vec<pb::UnitFile>,
    /// Names of the non-global units to launch.
    pub singles: BTreeSet<String>,
}

impl Workload {
    /// `units` unit records in total (templates not counted) for `machines` machines.
    pub fn new(units: usize, machines: usize) -> Workload {
        let caches = (machines / 2).min(units.saturating_sub(GLOBALS.len()));
        let rest = units.saturating_sub(GLOBALS.len() + caches);
        let mut templates = vec![pb::UnitFile {
            name: "cache@.service".into(),
            text: format!("{BODY}\n[X-Fleet]\nConflicts=cache@*.service\n"),
        }];
        let mut instances = Vec::new();
        let mut singles = BTreeSet::new();
        for g in GLOBALS {
            templates.push(pb::UnitFile {
                name: g.into(),
                text: format!("{BODY}\n[X-Fleet]\nGlobal=true\n"),
            });
        }
        for i in 0..caches {
            let name = format!("cache@{i}.service");
            singles.insert(name.clone());
            instances.push(pb::UnitFile {
                name,
                text: String::new(),
            });
        }
        for g in 0..rest.div_ceil(GROUP_SIZE) {
            templates.push(pb::UnitFile {
                name: format!("es{g}@.service"),
                text: format!("{BODY}\n[X-Fleet]\nDistinctBy=host\nSpreadBy=zone\n"),
            });
            for i in 0..GROUP_SIZE.min(rest - g * GROUP_SIZE) {
                let name = format!("es{g}@{i}.service");
                singles.insert(name.clone());
                instances.push(pb::UnitFile {
                    name,
                    text: String::new(),
                });
            }
        }
        Workload {
            templates,
            instances,
            singles,
        }
    }

    /// The globs that launch everything.
    pub fn launch_globs() -> Vec<String> {
        let mut v: Vec<String> = vec!["cache@*.service".into(), "es*@*.service".into()];
        v.extend(GLOBALS.iter().map(|g| g.to_string()));
        v
    }

    pub fn unit_count(&self) -> usize {
        self.singles.len() + GLOBALS.len()
    }
}

/// What the agents report: unit → machines where it is active/running (or anything else).
#[derive(Debug, Default)]
pub struct Observed {
    pub running: BTreeMap<String, Vec<String>>,
    /// (machine, unit) reported but not active/running.
    pub other: usize,
}

impl Observed {
    /// From the records under `/esfleet/states/`.
    pub fn from_states(kvs: &[KeyValue]) -> Observed {
        let mut o = Observed::default();
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let Some((machine, unit)) = esfleet_core::keys::split_two(&key, esfleet_core::keys::STATES) else {
                continue;
            };
            let st: UnitState = serde_json::from_slice(&kv.value).unwrap_or_default();
            if st.active == "active" && st.sub == "running" && st.error.is_none() {
                o.running.entry(unit.to_string()).or_default().push(machine.to_string());
            } else {
                o.other += 1;
            }
        }
        o
    }
}

/// How far from converged: every single unit running on exactly one live machine, every
/// global unit on every live machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Placements running as expected.
    pub good: usize,
    /// Placements expected.
    pub expected: usize,
    /// Single units running on more than one machine (must never stay above 0).
    pub duplicates: usize,
    /// Units running on a machine that is not live.
    pub on_dead: usize,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.good == self.expected && self.duplicates == 0 && self.on_dead == 0
    }
}

pub fn progress(w: &Workload, o: &Observed, live: &BTreeSet<String>) -> Progress {
    let mut p = Progress {
        good: 0,
        expected: w.singles.len() + GLOBALS.len() * live.len(),
        duplicates: 0,
        on_dead: 0,
    };
    for (unit, machines) in &o.running {
        let alive = machines.iter().filter(|m| live.contains(*m)).count();
        p.on_dead += machines.len() - alive;
        if GLOBALS.contains(&unit.as_str()) {
            let distinct: BTreeSet<&String> = machines.iter().filter(|m| live.contains(*m)).collect();
            p.good += distinct.len();
        } else if w.singles.contains(unit) {
            if alive >= 1 {
                p.good += 1;
            }
            if alive > 1 {
                p.duplicates += 1;
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_adds_up() {
        let w = Workload::new(10_000, 1_000);
        assert_eq!(w.unit_count(), 10_000);
        assert_eq!(w.instances.len(), 10_000 - GLOBALS.len());
        let w = Workload::new(1_000, 100);
        assert_eq!(w.unit_count(), 1_000);
    }
}
