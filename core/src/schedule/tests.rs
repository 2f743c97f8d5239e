//! Scenario tests: fleet's scheduling semantics and esfleet's zone/drain/ordering rules.

use std::collections::BTreeMap;

use super::*;
use crate::model::{unit_hash, DesiredState, HostFacts, MachineRecord, UnitRecord, UnitState};
use crate::options::{Distinct, MetadataCond, Resources, XFleet};

pub(super) const GIB: u64 = 1 << 30;

pub(super) fn machine(id: &str, meta: &[(&str, &str)]) -> MachineRecord {
    MachineRecord {
        id: id.to_string(),
        hostname: format!("{id}.example"),
        address: format!("10.0.0.{}", id.len()),
        agent_endpoint: String::new(),
        metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        facts: HostFacts {
            cpus: 8,
            memory_bytes: 32 * GIB,
            disk_free_bytes: 1024 * GIB,
            ..HostFacts::default()
        },
        agent_version: String::new(),
    }
}

pub(super) fn name(n: &str) -> UnitName {
    UnitName::new(n).unwrap()
}

pub(super) fn record(n: &str, desired: DesiredState, options: XFleet) -> UnitRecord {
    let text = format!("[Service]\nExecStart=/bin/sleep infinity\n# {n}\n");
    UnitRecord {
        name: name(n),
        hash: unit_hash(&text),
        text,
        desired,
        options,
        has_install: false,
    }
}

fn opts() -> XFleet {
    XFleet::default()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn meta(key: &str, negate: bool, values: &[&str]) -> MetadataCond {
    MetadataCond {
        key: key.to_string(),
        negate,
        values: strings(values),
    }
}

/// A view and helpers to step it the way the coordinator does.
pub(super) struct Sim {
    pub view: ClusterView,
}

impl Sim {
    pub fn new() -> Sim {
        Sim {
            view: ClusterView {
                revision: 1,
                ..ClusterView::default()
            },
        }
    }
    pub fn add_machine(&mut self, m: MachineRecord) {
        self.view.machines.insert(m.id.clone(), m);
    }
    pub fn add(&mut self, n: &str, desired: DesiredState, options: XFleet) {
        self.view.units.insert(name(n), record(n, desired, options));
    }
    /// One pass: schedule, apply, and check that scheduling again changes nothing.
    pub fn step(&mut self) -> Plan {
        let plan = schedule(&self.view, &Config::default());
        assert_eq!(plan, schedule(&self.view, &Config::default()), "same view, same plan");
        apply(&mut self.view, &plan);
        self.view.revision += 1;
        let again = schedule(&self.view, &Config::default());
        assert!(
            again.actions.is_empty(),
            "not idempotent: {:#?}\nfirst plan: {plan:#?}",
            again.actions
        );
        // The same units stay unplaceable (the wording may change: a lost machine is
        // mentioned only while its placements exist).
        assert!(again.unplaceable.keys().eq(plan.unplaceable.keys()));
        plan
    }
    pub fn machines_of(&self, n: &str) -> Vec<String> {
        let n = name(n);
        self.view
            .placements
            .iter()
            .filter(|(_, u)| u.contains_key(&n))
            .map(|(m, _)| m.clone())
            .collect()
    }
    pub fn machine_of(&self, n: &str) -> String {
        let ms = self.machines_of(n);
        assert_eq!(ms.len(), 1, "{n} on {ms:?}");
        ms[0].clone()
    }
    pub fn entry(&self, m: &str, n: &str) -> &ScheduleEntry {
        &self.view.placements[m][&name(n)]
    }
    /// The agent on every machine of `n` reports it active.
    pub fn activate(&mut self, n: &str) {
        for m in self.machines_of(n) {
            self.activate_on(&m, n);
        }
    }
    pub fn activate_on(&mut self, m: &str, n: &str) {
        let e = self.entry(m, n).clone();
        let state = UnitState {
            unit: n.to_string(),
            load: "loaded".into(),
            active: "active".into(),
            sub: "running".into(),
            hash: e.hash,
            generation: e.generation,
            ..UnitState::default()
        };
        self.view
            .states
            .entry(m.to_string())
            .or_default()
            .insert(name(n), state);
    }
    /// A machine's record and states vanish, and it is not suspect: it is lost.
    pub fn lose(&mut self, m: &str) {
        self.view.machines.remove(m);
        self.view.states.remove(m);
    }
}

fn load(sim: &Sim) -> BTreeMap<String, usize> {
    sim.view.placements.iter().map(|(m, u)| (m.clone(), u.len())).collect()
}

#[test]
fn places_on_least_loaded_with_id_tiebreak() {
    let mut sim = Sim::new();
    for m in ["m3", "m1", "m2"] {
        sim.add_machine(machine(m, &[]));
    }
    for i in 1..=4 {
        sim.add(&format!("u{i}.service"), DesiredState::Launched, opts());
    }
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty());
    assert_eq!(sim.machine_of("u1.service"), "m1");
    assert_eq!(sim.machine_of("u2.service"), "m2");
    assert_eq!(sim.machine_of("u3.service"), "m3");
    assert_eq!(sim.machine_of("u4.service"), "m1");
    let e = sim.entry("m1", "u1.service");
    assert_eq!(e.generation, 1);
    assert_eq!(e.desired, DesiredState::Launched);
    assert_eq!(e.env["ESFLEET_MACHINE_ID"], "m1");
    assert_eq!(e.env["ESFLEET_GENERATION"], "1");
}

#[test]
fn templates_and_inactive_units_are_not_placed() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add("web@.service", DesiredState::Launched, opts());
    sim.add("web@1.service", DesiredState::Launched, opts());
    sim.add("idle.service", DesiredState::Inactive, opts());
    sim.step();
    assert!(sim.machines_of("web@.service").is_empty());
    assert!(sim.machines_of("idle.service").is_empty());
    assert_eq!(sim.machine_of("web@1.service"), "m1");

    // Made inactive: its placement goes.
    sim.view.units.get_mut(&name("web@1.service")).unwrap().desired = DesiredState::Inactive;
    let plan = sim.step();
    assert_eq!(
        plan.actions,
        vec![Action::Delete {
            machine: "m1".into(),
            unit: name("web@1.service")
        }]
    );
    assert!(sim.view.placements.is_empty());
}

#[test]
fn desired_loaded_and_record_changes_update_in_place() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add_machine(machine("m2", &[]));
    sim.add("a.service", DesiredState::Loaded, opts());
    sim.step();
    let m = sim.machine_of("a.service");
    assert_eq!(sim.entry(&m, "a.service").desired, DesiredState::Loaded);
    let generation = sim.entry(&m, "a.service").generation;

    // Start it: same machine, same generation, desired launched.
    sim.view.units.get_mut(&name("a.service")).unwrap().desired = DesiredState::Launched;
    let plan = sim.step();
    assert_eq!(plan.actions.len(), 1);
    assert!(matches!(&plan.actions[0], Action::Put { machine, entry }
        if *machine == m && entry.generation == generation && entry.desired == DesiredState::Launched));

    // A new unit file: updated in place.
    let rec = sim.view.units.get_mut(&name("a.service")).unwrap();
    rec.text.push_str("# v2\n");
    rec.hash = unit_hash(&rec.text);
    rec.has_install = true;
    let plan = sim.step();
    assert_eq!(plan.actions.len(), 1);
    let e = sim.entry(&m, "a.service");
    assert_eq!(e.generation, generation);
    assert!(e.text.ends_with("# v2\n"));
    assert!(e.enable);
}

#[test]
fn machine_of_pairs_land_together_and_move_together() {
    let mut sim = Sim::new();
    for m in ["m1", "m2", "m3"] {
        sim.add_machine(machine(m, &[]));
    }
    sim.add("filler.service", DesiredState::Launched, opts());
    sim.add("leader.service", DesiredState::Launched, opts());
    sim.add(
        "a-follower.service",
        DesiredState::Launched,
        XFleet {
            machine_of: strings(&["leader.service"]),
            ..opts()
        },
    );
    sim.step();
    let m = sim.machine_of("leader.service");
    assert_eq!(sim.machine_of("a-follower.service"), m);

    sim.lose(&m);
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty(), "{:?}", plan.unplaceable);
    let n = sim.machine_of("leader.service");
    assert_ne!(n, m);
    assert_eq!(sim.machine_of("a-follower.service"), n);
}

#[test]
fn machine_of_unplaced_leader_and_cycles_are_unplaceable() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add("off.service", DesiredState::Inactive, opts());
    sim.add(
        "f.service",
        DesiredState::Launched,
        XFleet {
            machine_of: strings(&["off.service"]),
            ..opts()
        },
    );
    sim.add(
        "x.service",
        DesiredState::Launched,
        XFleet {
            machine_of: strings(&["y.service"]),
            ..opts()
        },
    );
    sim.add(
        "y.service",
        DesiredState::Launched,
        XFleet {
            machine_of: strings(&["x.service"]),
            ..opts()
        },
    );
    let plan = sim.step();
    assert!(sim.view.placements.is_empty());
    assert!(plan.unplaceable[&name("f.service")].contains("off.service is not on any machine: it is inactive"));
    assert!(
        plan.unplaceable[&name("x.service")].contains("MachineOf cycle"),
        "{}",
        plan.unplaceable[&name("x.service")]
    );
    assert!(plan.unplaceable[&name("y.service")].contains("MachineOf cycle"));
}

#[test]
fn five_mutually_conflicting_units_on_three_machines() {
    let mut sim = Sim::new();
    for m in ["m1", "m2", "m3"] {
        sim.add_machine(machine(m, &[]));
    }
    for i in 1..=5 {
        sim.add(
            &format!("c@{i}.service"),
            DesiredState::Launched,
            XFleet {
                conflicts: strings(&["c@*.service"]),
                ..opts()
            },
        );
    }
    let plan = sim.step();
    let placed: Vec<_> = (1..=5)
        .filter(|i| !sim.machines_of(&format!("c@{i}.service")).is_empty())
        .collect();
    assert_eq!(placed, vec![1, 2, 3]);
    assert_eq!(plan.unplaceable.len(), 2);
    assert_eq!(
        plan.unplaceable[&name("c@4.service")],
        "conflicts with c@1.service, c@2.service, c@3.service on every eligible machine"
    );
    assert!(load(&sim).values().all(|&n| n == 1));
}

#[test]
fn one_way_conflict_is_checked_both_ways() {
    for (first, second) in [("a.service", "b.service"), ("b.service", "a.service")] {
        let mut sim = Sim::new();
        sim.add_machine(machine("m1", &[]));
        let options = |n: &str| {
            if n == "a.service" {
                XFleet {
                    conflicts: strings(&["b.service"]),
                    ..opts()
                }
            } else {
                opts()
            }
        };
        sim.add(first, DesiredState::Launched, options(first));
        sim.step();
        assert_eq!(sim.machine_of(first), "m1");
        sim.add(second, DesiredState::Launched, options(second));
        let plan = sim.step();
        assert!(sim.machines_of(second).is_empty());
        assert!(plan.unplaceable[&name(second)].contains(&format!("conflicts with {first}")));
        // With a second machine it goes there.
        sim.add_machine(machine("m2", &[]));
        sim.step();
        assert_eq!(sim.machine_of(second), "m2");
        assert_eq!(sim.machine_of(first), "m1");
    }
}

#[test]
fn a_new_conflict_moves_the_later_unit() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add("a.service", DesiredState::Launched, opts());
    sim.add("b.service", DesiredState::Launched, opts());
    sim.step();
    sim.add_machine(machine("m2", &[]));
    sim.view.units.get_mut(&name("b.service")).unwrap().options.conflicts = strings(&["a.service"]);
    sim.step();
    assert_eq!(sim.machine_of("a.service"), "m1");
    assert_eq!(sim.machine_of("b.service"), "m2");
}

#[test]
fn replaces_takes_the_machine_and_moves_the_replaced_unit() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add_machine(machine("m2", &[]));
    sim.add("old.service", DesiredState::Launched, opts());
    sim.add("other.service", DesiredState::Launched, opts());
    sim.step();
    let m = sim.machine_of("old.service");
    sim.add(
        "new.service",
        DesiredState::Launched,
        XFleet {
            replaces: strings(&["old.service"]),
            ..opts()
        },
    );
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty(), "{:?}", plan.unplaceable);
    assert_eq!(sim.machine_of("new.service"), m);
    let moved = sim.machine_of("old.service");
    assert_ne!(moved, m);
    assert_eq!(sim.entry(&moved, "old.service").generation, 2, "a fresh placement");
}

#[test]
fn circular_replaces_runs_only_one() {
    let mut sim = Sim::new();
    for m in ["m1", "m2", "m3"] {
        sim.add_machine(machine(m, &[]));
    }
    sim.add(
        "a.service",
        DesiredState::Launched,
        XFleet {
            replaces: strings(&["b.service"]),
            ..opts()
        },
    );
    sim.add(
        "b.service",
        DesiredState::Launched,
        XFleet {
            replaces: strings(&["a.service"]),
            ..opts()
        },
    );
    let plan = sim.step();
    assert_eq!(sim.machine_of("a.service"), "m1");
    assert!(sim.machines_of("b.service").is_empty());
    assert!(plan.unplaceable[&name("b.service")].contains("Replaces cycle"));
}

#[test]
fn machine_id_pins_and_explains() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add_machine(machine("m2", &[]));
    sim.add(
        "p.service",
        DesiredState::Launched,
        XFleet {
            machine_id: Some("m2".into()),
            ..opts()
        },
    );
    sim.add(
        "q.service",
        DesiredState::Launched,
        XFleet {
            machine_id: Some("m9".into()),
            ..opts()
        },
    );
    let plan = sim.step();
    assert_eq!(sim.machine_of("p.service"), "m2");
    assert_eq!(
        plan.unplaceable[&name("q.service")],
        "MachineID=m9, but no registered machine has that id"
    );

    // MachineID changed: it moves.
    sim.view.units.get_mut(&name("p.service")).unwrap().options.machine_id = Some("m1".into());
    sim.step();
    assert_eq!(sim.machine_of("p.service"), "m1");
}

#[test]
fn global_units_run_on_every_matching_machine_and_new_ones() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[("role", "es")]));
    sim.add_machine(machine("m2", &[("role", "es")]));
    sim.add_machine(machine("m3", &[("role", "lb")]));
    sim.add(
        "node-exporter.service",
        DesiredState::Launched,
        XFleet {
            global: true,
            machine_metadata: vec![meta("role", false, &["es"])],
            ..opts()
        },
    );
    sim.add(
        "everywhere.service",
        DesiredState::Launched,
        XFleet { global: true, ..opts() },
    );
    sim.step();
    assert_eq!(sim.machines_of("node-exporter.service"), vec!["m1", "m2"]);
    assert_eq!(sim.machines_of("everywhere.service"), vec!["m1", "m2", "m3"]);

    sim.add_machine(machine("m4", &[("role", "es")]));
    let plan = sim.step();
    assert_eq!(plan.actions.len(), 2);
    assert_eq!(sim.machines_of("node-exporter.service"), vec!["m1", "m2", "m4"]);
    assert_eq!(sim.machines_of("everywhere.service"), vec!["m1", "m2", "m3", "m4"]);

    // Metadata changes on m1: the global unit leaves it.
    sim.view
        .machines
        .get_mut("m1")
        .unwrap()
        .metadata
        .insert("role".into(), "lb".into());
    sim.step();
    assert_eq!(sim.machines_of("node-exporter.service"), vec!["m2", "m4"]);
}

#[test]
fn metadata_and_or_and_negation() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[("zone", "a"), ("disk", "ssd")]));
    sim.add_machine(machine("m2", &[("zone", "b"), ("disk", "hdd")]));
    sim.add_machine(machine("m3", &[("zone", "c"), ("disk", "ssd")]));
    sim.add_machine(machine("m4", &[("disk", "ssd")]));
    let m = |conds: Vec<MetadataCond>| XFleet {
        machine_metadata: conds,
        global: true,
        ..opts()
    };
    // OR within a key.
    sim.add(
        "or.service",
        DesiredState::Launched,
        m(vec![meta("zone", false, &["a", "b"])]),
    );
    // AND across keys.
    sim.add(
        "and.service",
        DesiredState::Launched,
        m(vec![meta("zone", false, &["a", "b"]), meta("disk", false, &["ssd"])]),
    );
    // Negation: not zone a (a machine without a zone matches).
    sim.add(
        "not.service",
        DesiredState::Launched,
        m(vec![meta("zone", true, &["a"])]),
    );
    sim.add(
        "none.service",
        DesiredState::Launched,
        XFleet {
            machine_metadata: vec![meta("zone", false, &["d"])],
            ..opts()
        },
    );
    let plan = sim.step();
    assert_eq!(sim.machines_of("or.service"), vec!["m1", "m2"]);
    assert_eq!(sim.machines_of("and.service"), vec!["m1"]);
    assert_eq!(sim.machines_of("not.service"), vec!["m2", "m3", "m4"]);
    assert_eq!(
        plan.unplaceable[&name("none.service")],
        "no machine matches MachineMetadata zone=d (machines have zone: (none), a, b, c)"
    );

    // Metadata changed under a placed unit: it moves to a machine that still matches.
    sim.add(
        "z.service",
        DesiredState::Launched,
        XFleet {
            machine_metadata: vec![meta("zone", false, &["a", "c"])],
            ..opts()
        },
    );
    sim.step();
    let before = sim.machine_of("z.service");
    sim.view
        .machines
        .get_mut(&before)
        .unwrap()
        .metadata
        .insert("zone".into(), "b".into());
    sim.step();
    let after = sim.machine_of("z.service");
    assert_ne!(after, before);
    assert!(["m1", "m3"].contains(&after.as_str()));
}

#[test]
fn lost_machines_lose_their_units_suspect_ones_keep_them() {
    let mut sim = Sim::new();
    for m in ["m1", "m2", "m3"] {
        sim.add_machine(machine(m, &[]));
    }
    for i in 1..=6 {
        sim.add(&format!("u{i}.service"), DesiredState::Launched, opts());
    }
    sim.step();
    // m1 stops renewing: suspect first. Its units stay; nothing new goes there.
    sim.view.machines.remove("m1");
    sim.view.suspect.insert("m1".into());
    sim.add("new.service", DesiredState::Launched, opts());
    let plan = sim.step();
    assert_eq!(plan.actions.len(), 1);
    assert_eq!(sim.machine_of("u1.service"), "m1");
    assert_eq!(sim.machine_of("new.service"), "m2");
    // Then lost: its units move, with a fresh generation.
    sim.view.suspect.clear();
    let rev = sim.view.revision;
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty());
    assert!(!sim.view.placements.contains_key("m1"));
    for u in ["u1.service", "u4.service"] {
        let m = sim.machine_of(u);
        assert_eq!(sim.entry(&m, u).generation, rev);
    }
    assert_eq!(load(&sim).values().sum::<usize>(), 7);
}

#[test]
fn avoid_moves_a_unit_off_and_keeps_it_off() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add_machine(machine("m2", &[]));
    sim.add("flaky.service", DesiredState::Launched, opts());
    sim.step();
    assert_eq!(sim.machine_of("flaky.service"), "m1");
    sim.view.avoid.insert((name("flaky.service"), "m1".into()));
    sim.step();
    assert_eq!(sim.machine_of("flaky.service"), "m2");
    sim.view.avoid.insert((name("flaky.service"), "m2".into()));
    let plan = sim.step();
    assert!(sim.machines_of("flaky.service").is_empty());
    assert!(plan.unplaceable[&name("flaky.service")].contains("failed too often on m1, m2"));
}

#[test]
fn resources_fit_and_explain() {
    let mut sim = Sim::new();
    let mut small = machine("m1", &[]);
    small.facts.memory_bytes = 6 * GIB;
    let mut big = machine("m2", &[]);
    big.facts.memory_bytes = 8 * GIB;
    sim.add_machine(small);
    sim.add_machine(big);
    let mem = |g: u64| XFleet {
        resources: Resources {
            memory_bytes: g * GIB,
            ..Resources::default()
        },
        ..opts()
    };
    sim.add("a.service", DesiredState::Launched, mem(4));
    sim.add("b.service", DesiredState::Launched, mem(4));
    sim.add("c.service", DesiredState::Launched, mem(4));
    sim.add("d.service", DesiredState::Launched, mem(4));
    sim.add("free.service", DesiredState::Launched, opts());
    let plan = sim.step();
    assert_eq!(sim.machine_of("a.service"), "m1");
    assert_eq!(sim.machine_of("b.service"), "m2");
    assert_eq!(sim.machine_of("c.service"), "m2", "exactly fits");
    assert!(sim.machines_of("d.service").is_empty());
    assert_eq!(
        plan.unplaceable[&name("d.service")],
        "needs 4 GiB memory; the most free on an eligible machine is 2 GiB (m1)"
    );
    assert_eq!(
        sim.machine_of("free.service"),
        "m1",
        "no request: unconstrained, least loaded"
    );
}

#[test]
fn zone_spread_distinct_host_zone_loss_and_return() {
    let mut sim = Sim::new();
    let mut zone_machines: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for zone in ["a", "b", "c"] {
        for rack in 1..=2 {
            for host in 1..=2 {
                let id = format!("{zone}-r{rack}-h{host}");
                sim.add_machine(machine(&id, &[("zone", zone), ("rack", &format!("{zone}{rack}"))]));
                zone_machines.entry(zone).or_default().push(id);
            }
        }
    }
    let es = || XFleet {
        group: "es-data".into(),
        distinct_by: vec![Distinct {
            key: "host".into(),
            max: 1,
        }],
        spread_by: strings(&["zone"]),
        ..opts()
    };
    for i in 1..=9 {
        sim.add(&format!("es-data@{i}.service"), DesiredState::Launched, es());
    }
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty());
    let zone_of = |m: &str| m[..1].to_string();
    let per_zone = |sim: &Sim| {
        let mut z: BTreeMap<String, usize> = BTreeMap::new();
        for i in 1..=9 {
            for m in sim.machines_of(&format!("es-data@{i}.service")) {
                *z.entry(zone_of(&m)).or_default() += 1;
            }
        }
        z
    };
    assert_eq!(
        per_zone(&sim),
        [("a".into(), 3), ("b".into(), 3), ("c".into(), 3)].into()
    );
    assert!(load(&sim).values().all(|&n| n == 1), "never two on one host");

    // Zone c is lost.
    let before: BTreeMap<String, String> = (1..=9)
        .map(|i| format!("es-data@{i}.service"))
        .map(|u| (u.clone(), sim.machine_of(&u)))
        .collect();
    for m in &zone_machines["c"] {
        sim.lose(m);
    }
    let plan = sim.step();
    let in_c: Vec<&String> = before
        .iter()
        .filter(|(_, m)| m.starts_with('c'))
        .map(|(u, _)| u)
        .collect();
    assert_eq!(in_c.len(), 3);
    let moved: Vec<&&String> = in_c.iter().filter(|u| !sim.machines_of(u).is_empty()).collect();
    assert_eq!(moved.len(), 2, "two move to the two free hosts");
    assert_eq!(plan.unplaceable.len(), 1);
    let (stuck, reason) = plan.unplaceable.iter().next().unwrap();
    assert_eq!(stuck.as_str(), in_c[2].as_str());
    assert!(
        reason.contains("DistinctBy=host allows 1 es-data unit per machine"),
        "{reason}"
    );
    assert!(reason.contains("8 of the 8 eligible machines"), "{reason}");
    assert!(reason.contains("the eligible machines are in zone a, b"), "{reason}");
    assert!(reason.contains("3 lost (c-r1-h1, c-r1-h2, c-r2-h1)"), "{reason}");
    for (u, m) in &before {
        if !m.starts_with('c') {
            assert_eq!(&sim.machine_of(u), m, "{u} stays put");
        }
    }
    assert!(load(&sim).values().all(|&n| n == 1));

    // Zone c returns: the third runs there; nothing else moves.
    for zone in ["c"] {
        for rack in 1..=2 {
            for host in 1..=2 {
                let id = format!("{zone}-r{rack}-h{host}");
                sim.add_machine(machine(&id, &[("zone", zone), ("rack", &format!("{zone}{rack}"))]));
            }
        }
    }
    let placed_before: BTreeMap<String, String> = before
        .keys()
        .filter(|u| u.as_str() != stuck.as_str())
        .map(|u| (u.clone(), sim.machine_of(u)))
        .collect();
    let plan = sim.step();
    assert!(plan.unplaceable.is_empty());
    assert_eq!(plan.actions.len(), 1);
    assert!(sim.machine_of(stuck.as_str()).starts_with('c'));
    for (u, m) in &placed_before {
        assert_eq!(&sim.machine_of(u), m);
    }
}

#[test]
fn spread_picks_the_emptiest_zone_then_least_loaded_machine() {
    let mut sim = Sim::new();
    sim.add_machine(machine("a1", &[("zone", "a")]));
    sim.add_machine(machine("a2", &[("zone", "a")]));
    sim.add_machine(machine("b1", &[("zone", "b")]));
    let s = || XFleet {
        spread_by: strings(&["zone"]),
        ..opts()
    };
    sim.add("g@1.service", DesiredState::Launched, s());
    sim.add("g@2.service", DesiredState::Launched, s());
    sim.add("g@3.service", DesiredState::Launched, s());
    sim.add("g@4.service", DesiredState::Launched, s());
    sim.step();
    assert_eq!(sim.machine_of("g@1.service"), "a1");
    assert_eq!(sim.machine_of("g@2.service"), "b1");
    assert_eq!(sim.machine_of("g@3.service"), "a2");
    assert_eq!(sim.machine_of("g@4.service"), "b1");
}

#[test]
fn distinct_zone_reason_names_the_full_zones() {
    let mut sim = Sim::new();
    sim.add_machine(machine("a1", &[("zone", "a")]));
    sim.add_machine(machine("b1", &[("zone", "b")]));
    let d = || XFleet {
        distinct_by: vec![Distinct {
            key: "zone".into(),
            max: 1,
        }],
        ..opts()
    };
    for i in 1..=3 {
        sim.add(&format!("m@{i}.service"), DesiredState::Launched, d());
    }
    let plan = sim.step();
    assert_eq!(
        plan.unplaceable[&name("m@3.service")],
        "DistinctBy=zone allows 1 m unit per zone, and every zone with an eligible machine is full (a: 1, b: 1)"
    );
}

#[test]
fn drain_moves_one_at_a_time_after_the_replacement_is_active() {
    let mut sim = Sim::new();
    for m in ["m1", "m2", "m3"] {
        sim.add_machine(machine(m, &[]));
    }
    let es = || XFleet {
        distinct_by: vec![Distinct {
            key: "host".into(),
            max: 1,
        }],
        ..opts()
    };
    sim.add("es@1.service", DesiredState::Launched, es());
    sim.add("es@2.service", DesiredState::Launched, es());
    sim.add("other.service", DesiredState::Launched, opts());
    sim.step();
    assert_eq!(sim.machine_of("es@1.service"), "m1");
    assert_eq!(sim.machine_of("other.service"), "m3");
    sim.activate("es@1.service");
    sim.activate("es@2.service");
    sim.activate("other.service");

    // Drain m1 and m2: both es units must leave, one at a time.
    sim.add_machine(machine("m4", &[]));
    sim.add_machine(machine("m5", &[]));
    sim.view.draining.insert("m1".into());
    sim.view.draining.insert("m2".into());
    let plan = sim.step();
    assert_eq!(plan.actions.len(), 1, "{plan:#?}");
    assert_eq!(
        sim.machines_of("es@1.service"),
        vec!["m1", "m4"],
        "replacement first, old kept"
    );
    assert_eq!(sim.machines_of("es@2.service"), vec!["m2"], "waits: MaxUnavailable=1");

    // The replacement is not active yet: nothing happens.
    assert!(sim.step().actions.is_empty());

    // Active with the wrong generation (a stale report): still nothing.
    sim.activate_on("m4", "es@1.service");
    sim.view
        .states
        .get_mut("m4")
        .unwrap()
        .get_mut(&name("es@1.service"))
        .unwrap()
        .generation = 99;
    assert!(sim.step().actions.is_empty());

    // Active: the old placement goes, and the next unit starts its move.
    sim.activate_on("m4", "es@1.service");
    let plan = sim.step();
    assert_eq!(
        plan.actions
            .iter()
            .filter(|a| matches!(a, Action::Delete { .. }))
            .count(),
        1,
        "{plan:#?}"
    );
    assert_eq!(sim.machines_of("es@1.service"), vec!["m4"]);
    assert_eq!(sim.machines_of("es@2.service"), vec!["m2", "m5"]);
    assert_eq!(
        sim.machine_of("other.service"),
        "m3",
        "not on a draining machine: stays"
    );

    sim.activate_on("m5", "es@2.service");
    sim.step();
    assert_eq!(sim.machines_of("es@2.service"), vec!["m5"]);
    assert!(!sim.view.placements.contains_key("m1"));
    assert!(!sim.view.placements.contains_key("m2"));
}

#[test]
fn drain_waits_for_a_health_checked_replacement_to_be_healthy() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add_machine(machine("m2", &[]));
    let es = XFleet {
        health_check: Some(crate::options::HealthCheck::Http("http://127.0.0.1:9200/".into())),
        ..opts()
    };
    sim.add("es@1.service", DesiredState::Launched, es);
    sim.step();
    let from = sim.machine_of("es@1.service").to_string();
    sim.activate("es@1.service");
    sim.view.draining.insert(from.clone());
    sim.step();
    let to = if from == "m1" { "m2" } else { "m1" };
    assert_eq!(sim.machines_of("es@1.service").len(), 2, "replacement placed");

    let set_health = |sim: &mut Sim, healthy: Option<bool>| {
        sim.activate_on(to, "es@1.service");
        sim.view
            .states
            .get_mut(to)
            .unwrap()
            .get_mut(&name("es@1.service"))
            .unwrap()
            .healthy = healthy;
    };
    // Active but not checked yet, then checked and failing: the old copy stays.
    set_health(&mut sim, None);
    assert!(sim.step().actions.is_empty());
    set_health(&mut sim, Some(false));
    assert!(sim.step().actions.is_empty());
    // Healthy: the old copy goes.
    set_health(&mut sim, Some(true));
    sim.step();
    assert_eq!(sim.machines_of("es@1.service"), vec![to]);
}

#[test]
fn drain_without_room_stays_and_says_why() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add_machine(machine("m2", &[]));
    let es = || XFleet {
        distinct_by: vec![Distinct {
            key: "host".into(),
            max: 1,
        }],
        ..opts()
    };
    sim.add("es@1.service", DesiredState::Launched, es());
    sim.add("es@2.service", DesiredState::Launched, es());
    sim.step();
    sim.view.draining.insert("m1".into());
    let plan = sim.step();
    assert!(plan.actions.is_empty());
    assert_eq!(sim.machine_of("es@1.service"), "m1");
    let reason = &plan.unplaceable[&name("es@1.service")];
    assert!(
        reason.starts_with("stays on draining machine m1: DistinctBy=host"),
        "{reason}"
    );
}

#[test]
fn start_after_gates_launch_until_the_others_are_active() {
    let mut sim = Sim::new();
    sim.add_machine(machine("m1", &[]));
    sim.add_machine(machine("m2", &[]));
    sim.add("es-master@1.service", DesiredState::Launched, opts());
    sim.add("es-master@2.service", DesiredState::Launched, opts());
    let after = XFleet {
        start_after: strings(&["es-master@*.service", "es-data@*.service"]),
        ..opts()
    };
    sim.add("es-data@1.service", DesiredState::Launched, after);
    sim.step();
    let m = sim.machine_of("es-data@1.service");
    assert_eq!(sim.entry(&m, "es-data@1.service").desired, DesiredState::Loaded);

    sim.activate("es-master@1.service");
    assert!(sim.step().actions.is_empty(), "one master is not enough");
    sim.activate("es-master@2.service");
    let plan = sim.step();
    assert_eq!(plan.actions.len(), 1);
    assert_eq!(sim.entry(&m, "es-data@1.service").desired, DesiredState::Launched);
    assert_eq!(sim.entry(&m, "es-data@1.service").generation, 1, "updated in place");
}

#[test]
fn start_after_quorum_waits_for_a_majority_only() {
    let mut sim = Sim::new();
    for m in ["m1", "m2", "m3", "m4"] {
        sim.add_machine(machine(m, &[]));
    }
    for i in 1..=3 {
        sim.add(&format!("es-master@{i}.service"), DesiredState::Launched, opts());
    }
    let after = XFleet {
        start_after: strings(&["es-master@*.service"]),
        start_after_quorum: true,
        ..opts()
    };
    sim.add("es-data@1.service", DesiredState::Launched, after);
    sim.step();
    let m = sim.machine_of("es-data@1.service");
    assert_eq!(sim.entry(&m, "es-data@1.service").desired, DesiredState::Loaded);
    sim.activate("es-master@1.service");
    assert!(sim.step().actions.is_empty(), "one master of three is no quorum");
    sim.activate("es-master@3.service");
    sim.step();
    assert_eq!(
        sim.entry(&m, "es-data@1.service").desired,
        DesiredState::Launched,
        "two of three masters are a quorum; the third is not waited for"
    );
    // The gate is for starting only: masters failing later stop no data node.
    let mut failed = sim.view.states[&sim.machine_of("es-master@1.service")][&name("es-master@1.service")].clone();
    failed.active = "failed".into();
    for n in ["es-master@1.service", "es-master@3.service"] {
        let mm = sim.machine_of(n);
        sim.view.states.get_mut(&mm).unwrap().insert(name(n), failed.clone());
    }
    sim.step();
    assert_eq!(sim.entry(&m, "es-data@1.service").desired, DesiredState::Launched);
}
