//! Property tests on random small clusters: determinism, idempotence, hard constraints
//! never violated, spread skew ≤ 1 and nothing unplaceable in instances built to be feasible.

use std::collections::BTreeMap;

use globset::Glob;
use proptest::prelude::*;

use super::tests::{machine, name, record, GIB};
use super::*;
use crate::model::DesiredState;
use crate::options::{Distinct, MetadataCond, Resources, XFleet};

const ZONES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
struct UnitSpec {
    group: u8,
    desired: u8,
    distinct_host: bool,
    distinct_zone: bool,
    spread_zone: bool,
    conflicts: Option<u8>,
    start_after: Option<u8>,
    zone_cond: Option<(bool, u8)>,
    memory: u8,
    machine_of: Option<u8>,
    machine_id: Option<u8>,
    global: bool,
}

fn unit_spec() -> impl Strategy<Value = UnitSpec> {
    (
        (
            0u8..5,
            0u8..6,
            any::<bool>(),
            prop::bool::weighted(0.2),
            any::<bool>(),
            prop::option::weighted(0.2, 0u8..5),
        ),
        (
            prop::option::weighted(0.2, 0u8..5),
            prop::option::weighted(0.2, (any::<bool>(), 0u8..3)),
            prop_oneof![4 => Just(0u8), 1 => 1u8..12],
            prop::option::weighted(0.1, 0u8..30),
            prop::option::weighted(0.05, 0u8..12),
            prop::bool::weighted(0.05),
        ),
    )
        .prop_map(
            |(
                (group, desired, distinct_host, distinct_zone, spread_zone, start_after),
                (conflicts, zone_cond, memory, machine_of, machine_id, global),
            )| {
                UnitSpec {
                    group,
                    desired,
                    distinct_host,
                    distinct_zone,
                    spread_zone,
                    conflicts,
                    start_after,
                    zone_cond,
                    memory,
                    machine_of,
                    machine_id,
                    global,
                }
            },
        )
}

fn unit_name(i: usize, s: &UnitSpec) -> String {
    // Group 4 is plain units; the rest are template instances of g0@ … g3@.
    if s.group == 4 {
        format!("p{i}.service")
    } else {
        format!("g{}@{i}.service", s.group)
    }
}

fn build(machines: &[(u8, u8)], units: &[UnitSpec]) -> ClusterView {
    let mut view = ClusterView {
        revision: 1,
        ..ClusterView::default()
    };
    for (i, &(zone, rack)) in machines.iter().enumerate() {
        let z = ZONES[zone as usize % 3];
        let mut m = machine(&format!("m{i:02}"), &[("zone", z), ("rack", &format!("{z}{rack}"))]);
        m.facts.memory_bytes = 16 * GIB;
        view.machines.insert(m.id.clone(), m);
    }
    let names: Vec<String> = units.iter().enumerate().map(|(i, s)| unit_name(i, s)).collect();
    for (i, s) in units.iter().enumerate() {
        let mut o = XFleet {
            max_unavailable: 1,
            ..XFleet::default()
        };
        if s.global {
            o.global = true;
        } else {
            if s.distinct_host {
                o.distinct_by.push(Distinct {
                    key: "host".into(),
                    max: 1,
                });
            }
            if s.distinct_zone {
                o.distinct_by.push(Distinct {
                    key: "zone".into(),
                    max: 2,
                });
            }
            if s.spread_zone {
                o.spread_by.push("zone".into());
            }
            o.resources = Resources {
                memory_bytes: u64::from(s.memory) * GIB,
                ..Resources::default()
            };
            if let Some(l) = s.machine_of {
                o.machine_of.push(names[l as usize % units.len()].clone());
            }
            if let Some(m) = s.machine_id {
                o.machine_id = Some(format!("m{m:02}"));
            }
        }
        if let Some(c) = s.conflicts {
            o.conflicts.push(if c == 4 {
                "p*.service".into()
            } else {
                format!("g{c}@*.service")
            });
        }
        if let Some(c) = s.start_after {
            o.start_after.push(if c == 4 {
                "p*.service".into()
            } else {
                format!("g{c}@*.service")
            });
        }
        if let Some((negate, z)) = s.zone_cond {
            o.machine_metadata.push(MetadataCond {
                key: "zone".into(),
                negate,
                values: vec![ZONES[z as usize].to_string()],
            });
        }
        let desired = match s.desired {
            0 => DesiredState::Inactive,
            1 => DesiredState::Loaded,
            _ => DesiredState::Launched,
        };
        view.units.insert(name(&names[i]), record(&names[i], desired, o));
    }
    view
}

/// Checks every hard constraint on `view.placements`, independently of the scheduler.
fn check_hard_constraints(view: &ClusterView) -> Result<(), String> {
    let mut where_: BTreeMap<&UnitName, Vec<&str>> = BTreeMap::new();
    for (m, units) in &view.placements {
        let rec = view
            .machines
            .get(m)
            .ok_or(format!("placement on unregistered machine {m}"))?;
        let mut used = 0u64;
        for (u, e) in units {
            let unit = view.units.get(u).ok_or(format!("{u} placed but has no record"))?;
            if e.unit != *u || unit.desired == DesiredState::Inactive || u.is_template() {
                return Err(format!("{u} should not be on {m}"));
            }
            let o = &unit.options;
            if o.machine_id.as_ref().is_some_and(|id| id != m) {
                return Err(format!("{u} has MachineID {:?} but is on {m}", o.machine_id));
            }
            for c in &o.machine_metadata {
                if !c.matches(rec.attribute(&c.key)) {
                    return Err(format!("{u} on {m} violates MachineMetadata {c:?}"));
                }
            }
            used += o.resources.memory_bytes;
            where_.entry(u).or_default().push(m);
            for v in units.keys() {
                if v == u {
                    continue;
                }
                let hit = |pats: &[String], n: &UnitName| {
                    pats.iter()
                        .any(|p| Glob::new(p).unwrap().compile_matcher().is_match(n.as_str()))
                };
                let vo = &view.units[v].options;
                if hit(&o.conflicts, v) || hit(&vo.conflicts, u) {
                    return Err(format!("{u} and {v} conflict but share {m}"));
                }
            }
        }
        if used > rec.facts.memory_bytes {
            return Err(format!(
                "{m}: {used} bytes of memory asked, {} there",
                rec.facts.memory_bytes
            ));
        }
    }
    // One placement per non-global unit; MachineOf followers with their leader.
    for (u, ms) in &where_ {
        let o = &view.units[*u].options;
        if !o.global && ms.len() != 1 {
            return Err(format!("{u} on {ms:?}"));
        }
        for l in &o.machine_of {
            let lm = where_
                .get(&name(l))
                .ok_or(format!("{u} placed but its MachineOf leader {l} is not"))?;
            if !ms.iter().all(|m| lm.contains(m)) {
                return Err(format!("{u} on {ms:?} but leader {l} on {lm:?}"));
            }
        }
    }
    // DistinctBy per group and value.
    let mut counts: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    for (u, ms) in &where_ {
        let o = &view.units[*u].options;
        if o.global {
            continue;
        }
        let group = if o.group.is_empty() {
            u.prefix().to_string()
        } else {
            o.group.clone()
        };
        for key in ["host", "zone"] {
            let value = view.machines[ms[0]].attribute(key).unwrap_or_default().to_string();
            *counts.entry((group.clone(), key.to_string(), value)).or_default() += 1;
        }
    }
    // The group's limit is the strictest any member states.
    let mut limits: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (u, rec) in &view.units {
        let o = &rec.options;
        if o.global {
            continue;
        }
        let group = if o.group.is_empty() {
            u.prefix().to_string()
        } else {
            o.group.clone()
        };
        for d in &o.distinct_by {
            let l = limits.entry((group.clone(), d.key.clone())).or_insert(d.max);
            *l = (*l).min(d.max);
        }
    }
    for ((group, key, value), n) in &counts {
        if let Some(max) = limits.get(&(group.clone(), key.clone())) {
            if n > max {
                return Err(format!("group {group} has {n} units at {key}={value}, max {max}"));
            }
        }
    }
    Ok(())
}

fn converge(view: &mut ClusterView) -> Plan {
    let plan = schedule(view, &Config::default());
    apply(view, &plan);
    view.revision += 1;
    plan
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn deterministic_idempotent_and_valid(
        machines in prop::collection::vec((0u8..3, 0u8..2), 1..12),
        units in prop::collection::vec(unit_spec(), 0..30),
        lose in prop::collection::vec(0u8..12, 0..4),
        rezone in prop::option::of((0u8..12, 0u8..3)),
    ) {
        let mut view = build(&machines, &units);
        let plan = schedule(&view, &Config::default());
        prop_assert_eq!(&plan, &schedule(&view.clone(), &Config::default()));
        apply(&mut view, &plan);
        view.revision += 1;
        if let Err(e) = check_hard_constraints(&view) {
            return Err(TestCaseError::fail(format!("{e}\nplan: {plan:#?}")));
        }
        let again = schedule(&view, &Config::default());
        prop_assert!(again.actions.is_empty(), "not idempotent: {:#?}", again.actions);
        // Every wanted unit is placed or has a reason.
        for (u, rec) in &view.units {
            if rec.desired != DesiredState::Inactive && !u.is_template() {
                let placed = view.placements.values().any(|p| p.contains_key(u));
                prop_assert!(placed || plan.unplaceable.get(u).is_some_and(|r| !r.is_empty()), "{u} silently unplaced");
            }
        }

        // Machines lost and a machine's zone changed: units move, constraints still hold.
        let ids: Vec<String> = view.machines.keys().cloned().collect();
        for l in lose {
            view.machines.remove(&ids[l as usize % ids.len()]);
        }
        if let Some((m, z)) = rezone {
            if let Some(rec) = view.machines.get_mut(&ids[m as usize % ids.len()]) {
                rec.metadata.insert("zone".into(), ZONES[z as usize].to_string());
            }
        }
        let plan = schedule(&view, &Config::default());
        prop_assert_eq!(&plan, &schedule(&view.clone(), &Config::default()));
        converge(&mut view);
        if let Err(e) = check_hard_constraints(&view) {
            return Err(TestCaseError::fail(format!("after loss: {e}\nplan: {plan:#?}")));
        }
        let again = schedule(&view, &Config::default());
        prop_assert!(again.actions.is_empty(), "not idempotent after loss: {:#?}", again.actions);
    }

    #[test]
    fn feasible_groups_are_fully_placed_with_spread_skew_at_most_one(
        per_zone in 1usize..5,
        groups in prop::collection::vec(0usize..16, 1..4),
        plain in 0usize..10,
    ) {
        // Equal zones of equally eligible machines; each group fits (≤ one unit per host).
        let machines: Vec<(u8, u8)> = (0..3 * per_zone).map(|i| ((i % 3) as u8, 0)).collect();
        let mut view = build(&machines, &[]);
        let mut add = |n: String, o: XFleet| {
            view.units.insert(name(&n), record(&n, DesiredState::Launched, o));
        };
        for (g, &size) in groups.iter().enumerate() {
            let size = size.min(3 * per_zone);
            for i in 0..size {
                add(format!("g{g}@{i}.service"), XFleet {
                    distinct_by: vec![Distinct { key: "host".into(), max: 1 }],
                    spread_by: vec!["zone".into()],
                    max_unavailable: 1,
                    ..XFleet::default()
                });
            }
        }
        for i in 0..plain {
            add(format!("p{i}.service"), XFleet::default());
        }
        let plan = converge(&mut view);
        prop_assert!(plan.unplaceable.is_empty(), "{:?}", plan.unplaceable);
        check_hard_constraints(&view).map_err(TestCaseError::fail)?;
        for g in 0..groups.len() {
            let mut per: BTreeMap<String, usize> = ZONES.iter().map(|z| (z.to_string(), 0)).collect();
            for (m, units) in &view.placements {
                let n = units.keys().filter(|u| u.prefix() == format!("g{g}")).count();
                *per.get_mut(view.machines[m].attribute("zone").unwrap()).unwrap() += n;
            }
            let (lo, hi) = (per.values().min().unwrap(), per.values().max().unwrap());
            prop_assert!(hi - lo <= 1, "group g{g} skew: {per:?}");
        }
    }

    #[test]
    fn drains_converge_one_move_per_group_at_a_time(
        machines in prop::collection::vec((0u8..3, 0u8..2), 2..12),
        units in prop::collection::vec(unit_spec(), 0..30),
        drain in prop::collection::vec(0u8..12, 1..3),
    ) {
        let mut view = build(&machines, &units);
        converge(&mut view);
        let activate = |view: &mut ClusterView| {
            view.states.clear();
            for (m, units) in &view.placements {
                for (u, e) in units {
                    let state = crate::model::UnitState {
                        unit: u.to_string(),
                        active: "active".into(),
                        generation: e.generation,
                        ..Default::default()
                    };
                    view.states.entry(m.clone()).or_default().insert(u.clone(), state);
                }
            }
        };
        activate(&mut view);
        let ids: Vec<String> = view.machines.keys().cloned().collect();
        for d in drain {
            view.draining.insert(ids[d as usize % ids.len()].clone());
        }
        let mut steps = 0;
        let last = loop {
            let plan = schedule(&view, &Config::default());
            prop_assert_eq!(&plan, &schedule(&view.clone(), &Config::default()));
            apply(&mut view, &plan);
            view.revision += 1;
            // States unchanged: nothing more to do until agents report.
            let again = schedule(&view, &Config::default());
            prop_assert!(again.actions.is_empty(), "not idempotent: {:?}\nafter {:?}\nplacements {:?}\ndraining {:?}", again, plan.actions.iter().map(|a| (a.machine().to_string(), a.unit().to_string(), matches!(a, Action::Put{..}))).collect::<Vec<_>>(), view.placements.iter().map(|(m, u)| (m, u.keys().map(|u| u.as_str()).collect::<Vec<_>>())).collect::<Vec<_>>(), view.draining);
            // At most MaxUnavailable (1) of a group mid-move.
            let mut moving: BTreeMap<String, u32> = BTreeMap::new();
            for (u, rec) in &view.units {
                let n = view.placements.values().filter(|p| p.contains_key(u)).count();
                if !rec.options.global && n > 1 {
                    *moving.entry(u.prefix().to_string()).or_default() += 1;
                }
            }
            prop_assert!(moving.values().all(|&n| n <= 1), "{moving:?}");
            if plan.actions.is_empty() {
                break plan;
            }
            activate(&mut view);
            steps += 1;
            prop_assert!(steps < 100, "drain does not converge");
        };
        check_hard_constraints(&view).map_err(TestCaseError::fail)?;
        // Whatever is left on a draining machine says why.
        for m in &view.draining {
            for u in view.placements.get(m).map(|p| p.keys().collect::<Vec<_>>()).unwrap_or_default() {
                let reason = last.unplaceable.get(u);
                prop_assert!(reason.is_some_and(|r| r.starts_with("stays on draining machine")), "{u} left on {m}: {reason:?}");
            }
        }
    }
}
