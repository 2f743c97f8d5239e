//! The scheduler's side of Elasticsearch clusters (issue 8): bootstrap checks gate new
//! placements, every node's config files come from its placement and the masters'
//! placements, and the cluster is marked bootstrapped once its masters formed it.

use super::tests::{machine, name, Sim};
use super::*;
use crate::es::{instances, parse_spec, templates, ClusterRecord};
use crate::model::{unit_hash, DesiredState, MachineRecord, UnitRecord};
use crate::unit::validate_unit;

const SPEC: &str = r#"
name = "logs"
zones = ["a", "b", "c"]
runtime = "plain"
[master]
count = 3
memory = "2g"
[data]
count = 3
memory = "2g"
"#;

fn es_machine(id: &str, zone: &str) -> MachineRecord {
    let mut m = machine(id, &[("zone", zone), ("rack", &format!("{zone}-r1"))]);
    m.address = format!(
        "10.0.{}.{}",
        zone.as_bytes()[0],
        id.len() + id.as_bytes()[id.len() - 1] as usize
    );
    m.facts.max_map_count = 262_144;
    m.facts.threads_max = 100_000;
    m
}

/// Nine machines in three zones, the cluster's record, its templates and instances.
fn es_sim() -> Sim {
    cluster_sim(SPEC, false)
}

/// Nine machines (a1..c3) in zones a, b, c passing the bootstrap checks, and the cluster
/// `spec` (TOML): its record, templates (inactive) and instances (launched); nothing placed.
pub(super) fn cluster_sim(spec: &str, bootstrapped: bool) -> Sim {
    let mut sim = Sim::new();
    for z in ["a", "b", "c"] {
        for i in 1..=3 {
            sim.add_machine(es_machine(&format!("{z}{i}"), z));
        }
    }
    let spec = parse_spec(spec).unwrap();
    for (unit, text) in templates(&spec) {
        add_text(&mut sim, unit.as_str(), &text, DesiredState::Inactive);
    }
    for unit in instances(&spec) {
        let template = sim.view.units[&UnitName::new(&format!("{}@.service", unit.prefix())).unwrap()]
            .text
            .clone();
        add_text(&mut sim, unit.as_str(), &template, DesiredState::Launched);
    }
    sim.view
        .es
        .insert(spec.name.clone(), ClusterRecord { spec, bootstrapped });
    sim
}

fn add_text(sim: &mut Sim, n: &str, text: &str, desired: DesiredState) {
    let unit = validate_unit(&name(n), text).unwrap();
    sim.view.units.insert(
        name(n),
        UnitRecord {
            name: name(n),
            text: text.to_string(),
            hash: unit_hash(text),
            desired,
            options: unit.options,
            has_install: false,
        },
    );
}

fn file<'s>(sim: &'s Sim, unit: &str, f: &str) -> &'s str {
    let m = sim.machine_of(unit);
    &sim.entry(&m, unit).files[f]
}

fn zone(m: &str) -> &str {
    &m[..1]
}

#[test]
fn nodes_get_zone_safe_placements_and_their_config() {
    let mut sim = es_sim();
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty(), "{:?}", plan.unplaceable);
    let mut master_zones: Vec<String> = (1..=3)
        .map(|i| zone(&sim.machine_of(&format!("logs-m@{i}.service"))).to_string())
        .collect();
    master_zones.sort();
    assert_eq!(master_zones, ["a", "b", "c"], "one master per zone");

    let m = sim.machine_of("logs-d@2.service");
    let yml = file(&sim, "logs-d@2.service", "elasticsearch.yml");
    let addr = &sim.view.machines[&m].address;
    assert!(yml.contains("node.name: \"logs-d2\""), "{yml}");
    assert!(yml.contains(&format!("node.attr.zone: \"{}\"", zone(&m))), "{yml}");
    assert!(
        yml.contains("cluster.routing.allocation.awareness.force.zone.values: [\"a\",\"b\",\"c\"]"),
        "{yml}"
    );
    assert!(yml.contains(&format!("network.publish_host: \"{addr}\"")), "{yml}");
    let gen = sim.entry(&m, "logs-d@2.service").generation;
    assert!(
        yml.contains(&format!("/logs-d2/{gen}\"")),
        "path.data has the generation: {yml}"
    );
    assert!(
        !yml.contains("initial_master_nodes"),
        "data nodes never bootstrap: {yml}"
    );

    // The seed file lists every master's transport address, the same for every node.
    let seeds = file(&sim, "logs-d@2.service", "unicast_hosts.txt");
    for i in 1..=3 {
        let mm = sim.machine_of(&format!("logs-m@{i}.service"));
        let a = &sim.view.machines[&mm].address;
        assert!(seeds.contains(&format!("{a}:9301")), "{seeds}");
    }
    assert_eq!(seeds, file(&sim, "logs-m@1.service", "unicast_hosts.txt"));
    let myml = file(&sim, "logs-m@1.service", "elasticsearch.yml");
    assert!(
        myml.contains("cluster.initial_master_nodes: [\"logs-m1\",\"logs-m2\",\"logs-m3\"]"),
        "{myml}"
    );
    assert!(plan.es_bootstrapped.is_empty());
}

#[test]
fn bootstrapped_once_a_master_majority_is_healthy_then_never_rendered_again() {
    let mut sim = es_sim();
    sim.step();
    for i in 1..=2 {
        let u = format!("logs-m@{i}.service");
        sim.activate(&u);
        let m = sim.machine_of(&u);
        sim.view.states.get_mut(&m).unwrap().get_mut(&name(&u)).unwrap().healthy = Some(true);
    }
    // Sim::step checks that applying the plan leaves nothing to do: the masters' files
    // are rendered without initial_master_nodes in the same plan that marks the cluster.
    let plan = sim.step();
    assert_eq!(plan.es_bootstrapped, ["logs".to_string()].into());
    assert!(sim.view.es["logs"].bootstrapped);
    for i in 1..=3 {
        let u = format!("logs-m@{i}.service");
        assert!(!file(&sim, &u, "elasticsearch.yml").contains("initial_master_nodes"));
        let m = sim.machine_of(&u);
        assert_eq!(
            sim.entry(&m, &u).generation,
            1,
            "files change in place, no new placement"
        );
    }
}

#[test]
fn a_lost_master_moves_and_every_seed_file_follows() {
    let mut sim = es_sim();
    sim.view.es.get_mut("logs").unwrap().bootstrapped = true;
    // Two machines per zone only for masters' zone a: lose the master's machine in zone a.
    sim.step();
    let old = sim.machine_of("logs-m@1.service");
    let old_addr = sim.view.machines[&old].address.clone();
    sim.lose(&old);
    let plan = sim.step();
    let new = sim.machine_of("logs-m@1.service");
    assert_ne!(new, old);
    assert_eq!(zone(&new), zone(&old), "DistinctBy=zone keeps it in the zone it had");
    let new_addr = &sim.view.machines[&new].address;
    for unit in instances(&sim.view.es["logs"].spec) {
        let seeds = file(&sim, unit.as_str(), "unicast_hosts.txt");
        assert!(seeds.contains(&format!("{new_addr}:9301")), "{unit}: {seeds}");
        assert!(!seeds.contains(&format!("{old_addr}:9301")), "{unit}: {seeds}");
    }
    let rewritten = plan.actions.iter().filter(|a| matches!(a, Action::Put { .. })).count();
    assert!(rewritten >= 6, "every node's seed file was rewritten: {plan:#?}");
    let yml = file(&sim, "logs-m@1.service", "elasticsearch.yml");
    assert!(
        !yml.contains("initial_master_nodes"),
        "a recreated master joins, never bootstraps: {yml}"
    );
}

#[test]
fn machines_failing_bootstrap_checks_get_no_new_node_and_the_reason_says_why() {
    let mut sim = es_sim();
    for m in sim.view.machines.values_mut() {
        if m.id.starts_with('c') {
            m.facts.max_map_count = 65_530;
        }
    }
    let plan = sim.step();
    // Zone c fails the checks: its master cannot go anywhere else (one per zone), nor can
    // its data node (its home zone).
    let unplaced: Vec<&str> = plan.unplaceable.keys().map(UnitName::as_str).collect();
    assert_eq!(
        unplaced,
        ["logs-d@3.service", "logs-m@3.service"],
        "{:?}",
        plan.unplaceable
    );
    for why in plan.unplaceable.values() {
        assert!(
            why.contains("bootstrap checks") && why.contains("vm.max_map_count"),
            "{why}"
        );
        assert_eq!(
            why.matches("vm.max_map_count is").count(),
            1,
            "one entry per reason: {why}"
        );
        assert!(why.contains("(on 3 machine(s): c1, c2, c3)"), "{why}");
    }
    for (m, units) in &sim.view.placements {
        assert!(!m.starts_with('c'), "{m} got {:?}", units.keys().collect::<Vec<_>>());
    }
    // A running node is not moved when its machine's facts turn bad later.
    let mut sim = es_sim();
    sim.step();
    let at = sim.machine_of("logs-d@1.service");
    sim.view.machines.get_mut(&at).unwrap().facts.max_map_count = 0;
    sim.step();
    assert_eq!(sim.machine_of("logs-d@1.service"), at);
}

#[test]
fn a_unit_of_an_undefined_cluster_is_unplaceable() {
    let mut sim = es_sim();
    sim.view.es.clear();
    let plan = sim.step();
    let why = &plan.unplaceable[&name("logs-d@1.service")];
    assert!(why.contains("no Elasticsearch cluster logs is defined"), "{why}");
    assert!(sim.view.placements.is_empty());
}

#[test]
fn a_cluster_record_that_vanishes_stops_nothing() {
    let mut sim = es_sim();
    sim.step();
    let before = sim.view.placements.clone();
    // Deleted (or garbled: the snapshot skips what does not parse) with etcdctl.
    sim.view.es.clear();
    let plan = sim.step();
    assert!(plan.actions.is_empty(), "{plan:#?}");
    assert_eq!(
        sim.view.placements, before,
        "running nodes keep their placements and files"
    );
    // A lost machine's node is not placed anew without its cluster's definition.
    let m = sim.machine_of("logs-d@1.service");
    sim.lose(&m);
    let plan = sim.step();
    assert!(sim.machines_of("logs-d@1.service").is_empty());
    let why = &plan.unplaceable[&name("logs-d@1.service")];
    assert!(why.contains("no Elasticsearch cluster logs is defined"), "{why}");
}

/// Under forced awareness a data node lives in its home zone (`zones[(ordinal-1) % n]`):
/// placed there first, placed anew on another host of that zone when its host is lost,
/// and, when the whole zone is gone, left unplaced with the reason (elsewhere it could hold
/// none of its zone's copies, and the zone would have no data node once it returns).
#[test]
fn data_nodes_stay_in_their_home_zone() {
    let spec = SPEC.replace("[data]\ncount = 3", "[data]\ncount = 6");
    let mut sim = cluster_sim(&spec, true);
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty(), "{:?}", plan.unplaceable);
    for (i, z) in (1..=6).zip(["a", "b", "c", "a", "b", "c"]) {
        let u = format!("logs-d@{i}.service");
        assert_eq!(zone(&sim.machine_of(&u)), z, "{u}");
    }

    // Its host lost: the node is placed anew in the same zone.
    let old = sim.machine_of("logs-d@3.service");
    sim.lose(&old);
    sim.step();
    let new = sim.machine_of("logs-d@3.service");
    assert_ne!(new, old);
    assert_eq!(zone(&new), "c");

    // The whole zone lost: its data nodes wait, saying why; the other zones' stay put.
    let before: Vec<String> = [1, 2, 4, 5]
        .iter()
        .map(|i| sim.machine_of(&format!("logs-d@{i}.service")))
        .collect();
    for m in ["c1", "c2", "c3"] {
        if sim.view.machines.contains_key(m) {
            sim.lose(m);
        }
    }
    let plan = sim.step();
    for u in ["logs-d@3.service", "logs-d@6.service"] {
        assert!(
            sim.machines_of(u).is_empty(),
            "{u} left its zone: {:?}",
            sim.machines_of(u)
        );
        let why = &plan.unplaceable[&name(u)];
        assert!(
            why.contains("its home zone is c") && why.contains("no eligible machine is in zone c"),
            "{why}"
        );
    }
    let after: Vec<String> = [1, 2, 4, 5]
        .iter()
        .map(|i| sim.machine_of(&format!("logs-d@{i}.service")))
        .collect();
    assert_eq!(before, after);

    // The zone returns: its nodes go back there.
    for i in 1..=3 {
        sim.add_machine(es_machine(&format!("c{i}"), "c"));
    }
    sim.step();
    for u in ["logs-d@3.service", "logs-d@6.service"] {
        assert_eq!(zone(&sim.machine_of(u)), "c", "{u}");
    }
}
