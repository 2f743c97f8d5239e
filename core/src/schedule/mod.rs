//! The scheduler: `schedule(&ClusterView, &Config) -> Plan`. Pure and deterministic: the
//! same view gives the same plan. The coordinator's leader loop builds the view from one
//! consistent read of the store, and writes the plan in a guarded Txn.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{MachineRecord, RetiredRecord, ScheduleEntry, UnitRecord, UnitState};
use crate::name::UnitName;

#[cfg(test)]
mod es_tests;
mod globs;
mod pass;
#[cfg(test)]
mod proptests;
mod reason;
#[cfg(test)]
mod retire_tests;
#[cfg(test)]
mod tests;

/// Everything the scheduler may look at, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The store revision the view was read at. New placements take it as their generation.
    pub revision: u64,
    /// Every unit record (templates included; they are never placed themselves).
    pub units: BTreeMap<UnitName, UnitRecord>,
    /// Registered machines (their lease is alive), by machine id.
    pub machines: BTreeMap<String, MachineRecord>,
    /// Machines with a drain request: nothing new goes there, their units move away.
    pub draining: BTreeSet<String>,
    /// Machines whose record disappeared less than the loss margin ago: their placements
    /// stay, nothing new goes there. A machine with placements that is neither registered
    /// nor suspect is lost: its units are placed elsewhere.
    pub suspect: BTreeSet<String>,
    /// Current placements: machine → unit → entry (a unit may sit on two machines while a
    /// drain brings its replacement up).
    pub placements: BTreeMap<String, BTreeMap<UnitName, ScheduleEntry>>,
    /// What the agents report: machine → unit → state.
    pub states: BTreeMap<String, BTreeMap<UnitName, UnitState>>,
    /// (unit, machine) pairs where the unit failed too often: move it off and never back
    /// while the pair is listed.
    pub avoid: BTreeSet<(UnitName, String)>,
    /// Elasticsearch cluster definitions (`es/<name>`), by name.
    pub es: BTreeMap<String, crate::es::ClusterRecord>,
    /// Data left on lost machines (`retired/<machine>/<unit>`): machine → unit → record.
    pub retired: BTreeMap<String, BTreeMap<UnitName, crate::model::RetiredRecord>>,
}

/// Scheduler settings (none yet beyond the defaults; kept so callers pass one place).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {}

/// One change to `schedule/<machine>/<unit>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Write (create or update) the entry on `machine`.
    Put { machine: String, entry: ScheduleEntry },
    /// Remove `unit` from `machine`.
    Delete { machine: String, unit: UnitName },
}

/// The result of one pass: the writes to make and, for every unit that should run but
/// cannot, the reason in words an operator understands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub unplaceable: BTreeMap<UnitName, String>,
    /// Elasticsearch clusters whose masters have formed the cluster: mark them
    /// bootstrapped (their records' `bootstrapped` becomes true).
    #[serde(default)]
    pub es_bootstrapped: BTreeSet<String>,
    /// Data left behind on lost machines, (machine, record), sorted: for every Elasticsearch
    /// node whose placement on a lost machine this plan deletes (the unit still wanted, so
    /// it is placed anew elsewhere), the data directory of that placement. Written to
    /// `retired/<machine>/<unit>`; the machine's agent cleans up when it returns. [`apply`]
    /// ignores it (it is not a placement).
    #[serde(default)]
    pub retired: Vec<(String, RetiredRecord)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.es_bootstrapped.is_empty() && self.retired.is_empty()
    }
}

/// One scheduling pass: what to write so that every unit that should run is placed validly.
///
/// Running units stay where they are as long as their placement is still valid (moving an
/// Elasticsearch node costs a full copy of its data); only unplaced units, units on lost
/// machines, units whose machine no longer satisfies them and units on draining machines
/// (at most `MaxUnavailable` per group at a time) get new placements. Applying the plan
/// with [`apply`] and scheduling again gives an empty plan while agents report nothing new.
pub fn schedule(view: &ClusterView, cfg: &Config) -> Plan {
    pass::run(view, cfg)
}

/// Applies `plan`'s writes to `view`, as the coordinator's Txn does to the store.
pub fn apply(view: &mut ClusterView, plan: &Plan) {
    for (machine, rec) in &plan.retired {
        view.retired
            .entry(machine.clone())
            .or_default()
            .insert(rec.unit.clone(), rec.clone());
    }
    for c in &plan.es_bootstrapped {
        if let Some(rec) = view.es.get_mut(c) {
            rec.bootstrapped = true;
        }
    }
    for action in &plan.actions {
        match action {
            Action::Put { machine, entry } => {
                view.placements
                    .entry(machine.clone())
                    .or_default()
                    .insert(entry.unit.clone(), entry.clone());
            }
            Action::Delete { machine, unit } => {
                if let Some(units) = view.placements.get_mut(machine) {
                    units.remove(unit);
                    if units.is_empty() {
                        view.placements.remove(machine);
                    }
                }
            }
        }
    }
}

impl Action {
    /// The machine the action writes to.
    pub fn machine(&self) -> &str {
        match self {
            Action::Put { machine, .. } | Action::Delete { machine, .. } => machine,
        }
    }

    /// The unit the action is about.
    pub fn unit(&self) -> &UnitName {
        match self {
            Action::Put { entry, .. } => &entry.unit,
            Action::Delete { unit, .. } => unit,
        }
    }
}
