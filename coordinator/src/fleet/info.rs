//! From the store's records (a [`StoreSnapshot`]) to the Fleet API's messages: the one
//! place that knows both.

use esfleet_core::model::{HostFacts, MachineRecord, ScheduleEntry};
use esfleet_core::UnitName;
use esfleet_proto::fleet as pb;

use crate::scheduler::snapshot::StoreSnapshot;

/// One placement of `unit` on `machine`, with what the machine reports.
pub fn placement(snap: &StoreSnapshot, machine: &str, unit: &UnitName, entry: &ScheduleEntry) -> pb::Placement {
    let m = snap.machines.get(machine);
    let mut p = pb::Placement {
        machine_id: machine.to_string(),
        machine_address: m.map(|m| m.address.clone()).unwrap_or_default(),
        machine_hostname: m.map(|m| m.hostname.clone()).unwrap_or_default(),
        desired: entry.desired.to_string(),
        hash: entry.hash.clone(),
        generation: entry.generation,
        ..Default::default()
    };
    if let Some(s) = snap.state_of(machine, unit) {
        p.load = s.load.clone();
        p.active = s.active.clone();
        p.sub = s.sub.clone();
        p.reported_hash = s.hash.clone();
        p.reported_generation = s.generation;
        p.since_usec = s.since_usec;
        p.n_restarts = s.n_restarts;
        p.error = s.error.clone().unwrap_or_default();
        p.reported = s.generation == entry.generation;
    }
    p
}

/// fleet's STATE column from the placements' reports: `launched` when any copy runs (or is
/// starting), else `failed`, `loaded`, or `inactive`.
pub fn current_state(placements: &[pb::Placement]) -> &'static str {
    let reported: Vec<&pb::Placement> = placements.iter().filter(|p| p.reported).collect();
    if reported
        .iter()
        .any(|p| p.error.is_empty() && matches!(p.active.as_str(), "active" | "activating" | "reloading"))
    {
        "launched"
    } else if reported.iter().any(|p| p.active == "failed" || !p.error.is_empty()) {
        "failed"
    } else if reported.iter().any(|p| p.load == "loaded") {
        "loaded"
    } else {
        "inactive"
    }
}

/// One unit as `list-unit-files` shows it; `full` adds the text and options (`cat`).
pub fn unit_info(snap: &StoreSnapshot, name: &UnitName, full: bool) -> pb::UnitInfo {
    let mut placements: Vec<pb::Placement> = snap
        .placements_of(name)
        .map(|(m, e)| placement(snap, m, name, e))
        .collect();
    placements.extend(
        snap.states
            .iter()
            .filter_map(|(machine, units)| leaving(snap, machine, name, units.get(name)?)),
    );
    with_placements(snap, name, placements, full)
}

/// [`unit_info`] (without text) of each of `names`: one pass over the machines instead of
/// one per unit (11,000 units on 1,000 machines took 2.9 s unit by unit).
pub fn unit_infos<'a>(
    snap: &StoreSnapshot,
    names: impl IntoIterator<Item = &'a UnitName>,
) -> std::collections::BTreeMap<UnitName, pb::UnitInfo> {
    let mut by_unit: std::collections::BTreeMap<&UnitName, Vec<pb::Placement>> =
        names.into_iter().map(|n| (n, Vec::new())).collect();
    // Machine by machine, as `unit_info` orders them: scheduled copies first, then leaving.
    for (machine, units) in &snap.placements {
        for (name, entry) in units {
            if let Some(v) = by_unit.get_mut(name) {
                v.push(placement(snap, machine, name, entry));
            }
        }
    }
    for (machine, units) in &snap.states {
        for (name, state) in units {
            if let Some(v) = by_unit.get_mut(name) {
                v.extend(leaving(snap, machine, name, state));
            }
        }
    }
    by_unit
        .into_iter()
        .map(|(name, placements)| (name.clone(), with_placements(snap, name, placements, false)))
        .collect()
}

fn with_placements(snap: &StoreSnapshot, name: &UnitName, placements: Vec<pb::Placement>, full: bool) -> pb::UnitInfo {
    let Some(rec) = snap.units.get(name) else {
        return pb::UnitInfo {
            name: name.to_string(),
            state: current_state(&placements).into(),
            is_template: name.is_template(),
            exists: false,
            placements,
            ..Default::default()
        };
    };
    pb::UnitInfo {
        name: name.to_string(),
        hash: rec.hash.clone(),
        desired: rec.desired.to_string(),
        state: current_state(&placements).to_string(),
        placements,
        unplaceable: snap.unplaceable.get(name).cloned().unwrap_or_default(),
        text: if full { rec.text.clone() } else { String::new() },
        options_json: if full {
            serde_json::to_string(&rec.options).unwrap_or_default()
        } else {
            String::new()
        },
        is_template: name.is_template(),
        exists: true,
    }
}

/// A copy on `machine` that is no longer scheduled but that the machine still reports
/// running: the agent has not stopped it yet. It counts as a placement (desired
/// `inactive`), so `esfleet stop/unload/destroy` waits until the unit has really stopped.
fn leaving(
    snap: &StoreSnapshot,
    machine: &str,
    name: &UnitName,
    s: &esfleet_core::model::UnitState,
) -> Option<pb::Placement> {
    let scheduled = snap.placements.get(machine).is_some_and(|p| p.contains_key(name));
    let running = matches!(
        s.active.as_str(),
        "active" | "activating" | "deactivating" | "reloading"
    );
    if scheduled || !running {
        return None;
    }
    let m = snap.machines.get(machine);
    Some(pb::Placement {
        machine_id: machine.to_string(),
        machine_address: m.map(|m| m.address.clone()).unwrap_or_default(),
        machine_hostname: m.map(|m| m.hostname.clone()).unwrap_or_default(),
        desired: "inactive".into(),
        load: s.load.clone(),
        active: s.active.clone(),
        sub: s.sub.clone(),
        reported_hash: s.hash.clone(),
        reported_generation: s.generation,
        generation: s.generation,
        since_usec: s.since_usec,
        n_restarts: s.n_restarts,
        error: s.error.clone().unwrap_or_default(),
        reported: true,
        ..Default::default()
    })
}

fn facts(f: &HostFacts) -> pb::HostFacts {
    pb::HostFacts {
        cpus: f.cpus,
        memory_bytes: f.memory_bytes,
        disk_free_bytes: f.disk_free_bytes,
        max_map_count: f.max_map_count,
        nofile_limit: f.nofile_limit,
        threads_max: f.threads_max,
    }
}

/// Every machine that is registered or still holds placements, by id.
pub fn machines(snap: &StoreSnapshot) -> Vec<pb::Machine> {
    let ids: std::collections::BTreeSet<&String> = snap
        .machines
        .keys()
        .chain(snap.placements.iter().filter(|(_, u)| !u.is_empty()).map(|(m, _)| m))
        .collect();
    ids.into_iter()
        .map(|id| {
            let rec: Option<&MachineRecord> = snap.machines.get(id);
            let drain = snap.drains.get(id);
            let state = match (rec, drain) {
                (None, _) => "suspect",
                (Some(_), Some(d)) if d.done => "drained",
                (Some(_), Some(_)) => "draining",
                (Some(_), None) => "up",
            };
            pb::Machine {
                id: id.clone(),
                address: rec.map(|r| r.address.clone()).unwrap_or_default(),
                hostname: rec.map(|r| r.hostname.clone()).unwrap_or_default(),
                metadata: rec
                    .map(|r| r.metadata.clone().into_iter().collect())
                    .unwrap_or_default(),
                facts: rec.map(|r| facts(&r.facts)),
                agent_version: rec.map(|r| r.agent_version.clone()).unwrap_or_default(),
                agent_endpoint: rec.map(|r| r.agent_endpoint.clone()).unwrap_or_default(),
                unit_count: snap.placements.get(id).map_or(0, |u| u.len() as u32),
                state: state.into(),
                drain: drain.map(|d| pb::DrainInfo {
                    reason: d.reason.clone(),
                    remaining: d.remaining.clone(),
                    done: d.done,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use esfleet_core::model::{DesiredState, UnitState};

    fn entry(unit: &UnitName, generation: u64) -> ScheduleEntry {
        ScheduleEntry {
            unit: unit.clone(),
            text: String::new(),
            hash: "h".into(),
            desired: DesiredState::Launched,
            generation,
            fence: Default::default(),
            enable: false,
            env: Default::default(),
            files: Default::default(),
        }
    }

    #[test]
    fn all_units_at_once_equal_unit_by_unit() {
        let mut snap = StoreSnapshot::default();
        let names: Vec<UnitName> = ["a.service", "b.service", "gone.service"]
            .iter()
            .map(|n| UnitName::new(n).unwrap())
            .collect();
        for n in &names[..2] {
            snap.units.insert(
                n.clone(),
                esfleet_core::model::UnitRecord {
                    name: n.clone(),
                    text: String::new(),
                    hash: "h".into(),
                    desired: DesiredState::Launched,
                    options: Default::default(),
                    has_install: false,
                },
            );
        }
        for (i, m) in ["m1", "m2", "m3"].iter().enumerate() {
            let placed = snap.placements.entry(m.to_string()).or_default();
            placed.insert(names[0].clone(), entry(&names[0], i as u64));
            let states = snap.states.entry(m.to_string()).or_default();
            let running = UnitState {
                active: "active".into(),
                generation: i as u64,
                ..Default::default()
            };
            states.insert(names[0].clone(), running.clone());
            // b and gone: no longer scheduled, still running on m2 and m3.
            if i > 0 {
                states.insert(names[1].clone(), running.clone());
                states.insert(names[2].clone(), running);
            }
        }
        let at_once = unit_infos(&snap, &names);
        for n in &names {
            assert_eq!(at_once[n], unit_info(&snap, n, false), "{n}");
        }
        assert_eq!(at_once[&names[0]].placements.len(), 3);
        assert_eq!(at_once[&names[1]].placements.len(), 2, "leaving copies count");
        assert!(!at_once[&names[2]].exists);
    }
}
