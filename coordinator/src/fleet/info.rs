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
    placements.extend(leaving(snap, name));
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

/// Copies that are no longer scheduled but that their machine still reports running: the
/// agent has not stopped them yet. They count as placements (desired `inactive`), so
/// `esfleet stop/unload/destroy` waits until the unit has really stopped there.
fn leaving<'a>(snap: &'a StoreSnapshot, name: &'a UnitName) -> impl Iterator<Item = pb::Placement> + 'a {
    snap.states.iter().filter_map(move |(machine, units)| {
        let s = units.get(name)?;
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
            machine_id: machine.clone(),
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
