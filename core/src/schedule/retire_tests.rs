//! Tombstones for data left on lost machines (`Plan::retired`): an Elasticsearch node whose
//! placement on a lost machine is deleted (and placed anew elsewhere) names the data
//! directory it used there; nothing else does — not a suspect machine, not a drain, not an
//! unload, not a unit that is not an Elasticsearch node.

use super::tests::{name, Sim};
use super::*;
use crate::es::data_dir;
use crate::model::{DesiredState, RetiredRecord};
use crate::options::XFleet;

const SPEC: &str = r#"
name = "logs"
zones = ["a", "b", "c"]
runtime = "plain"
data_root = "/srv/es"
[master]
count = 3
memory = "2g"
[data]
count = 3
memory = "2g"
"#;

/// Nine machines in three zones running the cluster `logs`, plus `web.service` (not an
/// Elasticsearch node), everything placed.
fn placed() -> Sim {
    let mut sim = super::es_tests::cluster_sim(SPEC, true);
    sim.add("web.service", DesiredState::Launched, XFleet::default());
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty(), "{:?}", plan.unplaceable);
    assert!(plan.retired.is_empty(), "{:?}", plan.retired);
    sim
}

/// Every unit reports active and healthy where it is placed (a drain's replacement counts
/// as up only then).
fn all_healthy(sim: &mut Sim) {
    let placed: Vec<(String, String)> = sim
        .view
        .placements
        .iter()
        .flat_map(|(m, units)| units.keys().map(move |u| (m.clone(), u.to_string())))
        .collect();
    for (m, u) in placed {
        sim.activate_on(&m, &u);
        sim.view.states.get_mut(&m).unwrap().get_mut(&name(&u)).unwrap().healthy = Some(true);
    }
}

#[test]
fn a_lost_machines_es_placements_leave_a_tombstone_naming_their_data_dir() {
    let mut sim = placed();
    let lost = sim.machine_of("logs-d@1.service");
    let on_it: Vec<(UnitName, u64)> = sim.view.placements[&lost]
        .iter()
        .map(|(u, e)| (u.clone(), e.generation))
        .collect();
    sim.lose(&lost);
    let plan = sim.step();
    assert_ne!(sim.machine_of("logs-d@1.service"), lost, "placed anew elsewhere");

    let spec = &sim.view.es["logs"].spec;
    let want: Vec<(String, RetiredRecord)> = on_it
        .iter()
        .filter(|(u, _)| u.as_str().starts_with("logs-"))
        .map(|(u, gen)| {
            let node = crate::es::node_of(spec, u).unwrap().name;
            (
                lost.clone(),
                RetiredRecord {
                    unit: u.clone(),
                    generation: *gen,
                    paths: vec![data_dir(spec, &node, *gen)],
                    cluster: "logs".into(),
                    released: false,
                },
            )
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(plan.retired, want);
    let d1 = want
        .iter()
        .find(|(_, r)| r.unit.as_str() == "logs-d@1.service")
        .unwrap();
    assert_eq!(
        d1.1.paths,
        vec![format!("/srv/es/logs-d1/{}", d1.1.generation)],
        "the placement's path.data"
    );
    for (_, r) in &plan.retired {
        assert!(
            plan.actions
                .iter()
                .any(|a| matches!(a, Action::Delete { machine, unit } if *machine == lost && *unit == r.unit)),
            "a tombstone only with the deletion of its placement: {plan:#?}"
        );
    }
    // The node's new placement renders a new generation's directory, never the old one.
    let new = sim.machine_of("logs-d@1.service");
    let yml = &sim.entry(&new, "logs-d@1.service").files["elasticsearch.yml"];
    assert!(!yml.contains(&d1.1.paths[0]), "{yml}");
    // Written once: the next pass has no placement there left to retire (and the cluster
    // is not whole yet: nothing to release).
    assert!(schedule(&sim.view, &Config::default()).retired.is_empty());
}

/// The records now stored for `machine`.
fn stored(sim: &Sim, machine: &str) -> Vec<RetiredRecord> {
    sim.view
        .retired
        .get(machine)
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default()
}

/// Everything placed and healthy, then the machine of `logs-d@1` lost: its tombstones
/// written (not released).
fn lost_with_tombstones() -> (Sim, String) {
    let mut sim = placed();
    all_healthy(&mut sim);
    let lost = sim.machine_of("logs-d@1.service");
    sim.lose(&lost);
    sim.step();
    (sim, lost)
}

#[test]
fn a_tombstone_is_released_only_once_its_node_is_healthy_elsewhere() {
    let (mut sim, lost) = lost_with_tombstones();
    assert!(!stored(&sim, &lost).is_empty());
    assert!(stored(&sim, &lost).iter().all(|r| !r.released));

    // The recreated node runs but is not healthy yet (recovering its shards: yellow).
    let new = sim.machine_of("logs-d@1.service");
    sim.activate_on(&new, "logs-d@1.service");
    sim.view
        .states
        .get_mut(&new)
        .unwrap()
        .get_mut(&name("logs-d@1.service"))
        .unwrap()
        .healthy = Some(false);
    let plan = sim.step();
    assert!(
        plan.retired.is_empty(),
        "not whole: nothing released: {:?}",
        plan.retired
    );

    // Healthy in its new generation (a data node: the cluster is green): released, once.
    all_healthy(&mut sim);
    let plan = sim.step();
    let before: Vec<RetiredRecord> = plan
        .retired
        .iter()
        .map(|(_, r)| RetiredRecord {
            released: false,
            ..r.clone()
        })
        .collect();
    assert!(!plan.retired.is_empty());
    assert!(
        plan.retired.iter().all(|(m, r)| *m == lost && r.released),
        "{:?}",
        plan.retired
    );
    let mut was = stored(&sim, &lost);
    was.iter_mut().for_each(|r| r.released = false);
    assert_eq!(before, was, "the same records, only marked released");
    assert!(sim.step().retired.is_empty(), "released once");
}

#[test]
fn a_stopped_or_deleted_cluster_holds_its_tombstones() {
    let (mut sim, lost) = lost_with_tombstones();
    assert!(!stored(&sim, &lost).is_empty());

    // Every node unloaded: no healthy data node vouches for the shards; the data stays.
    for rec in sim.view.units.values_mut() {
        if rec.options.elasticsearch.is_some() {
            rec.desired = DesiredState::Inactive;
        }
    }
    sim.step();
    assert!(sim.step().retired.is_empty());

    // Destroyed, definition and all: still held (as a unit destroyed while its machine was
    // away keeps its data); an operator deletes the record.
    sim.view.units.retain(|_, r| r.options.elasticsearch.is_none());
    sim.view.es.clear();
    assert!(sim.step().retired.is_empty());
}

#[test]
fn a_record_without_its_cluster_name_is_judged_by_its_units_option() {
    let (mut sim, lost) = lost_with_tombstones();
    // As written before records named their cluster.
    for r in sim.view.retired.get_mut(&lost).unwrap().values_mut() {
        r.cluster.clear();
    }
    assert!(sim.step().retired.is_empty(), "the cluster is not whole yet");
    all_healthy(&mut sim);
    let plan = sim.step();
    assert!(!plan.retired.is_empty());
    assert!(
        plan.retired.iter().all(|(_, r)| r.released && r.cluster == "logs"),
        "{:?}",
        plan.retired
    );
}

#[test]
fn without_health_checks_nothing_vouches_for_the_shards() {
    let mut sim = placed();
    for rec in sim.view.units.values_mut() {
        rec.options.health_check = None;
    }
    all_healthy(&mut sim);
    let lost = sim.machine_of("logs-d@1.service");
    sim.lose(&lost);
    sim.step();
    all_healthy(&mut sim);
    assert!(sim.step().retired.is_empty(), "held: running says nothing about green");
}

#[test]
fn a_non_es_unit_on_a_lost_machine_leaves_none() {
    let mut sim = placed();
    let lost = sim.machine_of("web.service");
    sim.lose(&lost);
    let plan = sim.step();
    assert_ne!(sim.machine_of("web.service"), lost);
    assert!(
        plan.retired.iter().all(|(_, r)| r.unit.as_str() != "web.service"),
        "{:?}",
        plan.retired
    );
}

#[test]
fn a_suspect_machine_keeps_its_placements_and_leaves_none() {
    let mut sim = placed();
    let m = sim.machine_of("logs-d@1.service");
    sim.lose(&m);
    sim.view.suspect.insert(m.clone());
    let plan = sim.step();
    assert!(plan.retired.is_empty(), "{:?}", plan.retired);
    assert_eq!(sim.machine_of("logs-d@1.service"), m);
}

#[test]
fn a_drain_leaves_none() {
    let mut sim = placed();
    let m = sim.machine_of("logs-d@1.service");
    sim.view.draining.insert(m.clone());
    for _ in 0..10 {
        all_healthy(&mut sim);
        let plan = sim.step();
        assert!(plan.retired.is_empty(), "{:?}", plan.retired);
        if !sim.view.placements.contains_key(&m) {
            return;
        }
    }
    panic!("the drain never finished: {:?}", sim.view.placements[&m].keys());
}

#[test]
fn an_unload_leaves_none_on_a_live_or_a_lost_machine() {
    let mut sim = placed();
    sim.view.units.get_mut(&name("logs-d@1.service")).unwrap().desired = DesiredState::Inactive;
    let plan = sim.step();
    assert!(sim.machines_of("logs-d@1.service").is_empty());
    assert!(plan.retired.is_empty(), "{:?}", plan.retired);

    // Unloaded while its machine is away: the data stays, as with an unload on a live one.
    let mut sim = placed();
    let m2 = sim.machine_of("logs-d@2.service");
    sim.lose(&m2);
    sim.view.units.get_mut(&name("logs-d@2.service")).unwrap().desired = DesiredState::Inactive;
    let plan = sim.step();
    assert!(sim.machines_of("logs-d@2.service").is_empty());
    assert!(
        plan.retired.iter().all(|(_, r)| r.unit.as_str() != "logs-d@2.service"),
        "{:?}",
        plan.retired
    );
}
