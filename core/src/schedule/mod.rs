//! The scheduler: `schedule(&ClusterView, &Config) -> Plan`. Pure and deterministic: the
//! same view gives the same plan. The coordinator's leader loop builds the view from one
//! consistent read of the store, and writes the plan in a guarded Txn.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{MachineRecord, ScheduleEntry, UnitRecord, UnitState};
use crate::name::UnitName;

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
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// One scheduling pass: what to write so that every unit that should run is placed validly.
pub fn schedule(view: &ClusterView, cfg: &Config) -> Plan {
    let _ = (view, cfg);
    Plan::default()
}
