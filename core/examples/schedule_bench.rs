//! Scheduler benchmark: 10,000 units on 1,000 machines (5 zones × 20 racks × 10 hosts).
//!
//! `cargo run --release -p esfleet-core --example schedule_bench`
//!
//! Prints the time of a pass from empty (and placements/s), of a no-op second pass, and of
//! a pass after 100 machines are lost (and how many units moved).

use std::time::Instant;

use esfleet_core::model::{unit_hash, DesiredState, HostFacts, MachineRecord, UnitRecord};
use esfleet_core::options::{Distinct, XFleet};
use esfleet_core::schedule::{apply, schedule, Action, ClusterView, Config};
use esfleet_core::UnitName;

fn main() {
    let mut view = ClusterView {
        revision: 1,
        ..ClusterView::default()
    };
    for zone in 0..5 {
        for rack in 0..20 {
            for host in 0..10 {
                let id = format!("m-z{zone}-r{rack:02}-h{host}");
                let rec = MachineRecord {
                    id: id.clone(),
                    hostname: id.clone(),
                    address: format!("10.{zone}.{rack}.{host}"),
                    agent_endpoint: String::new(),
                    metadata: [
                        ("zone".to_string(), format!("z{zone}")),
                        ("rack".to_string(), format!("z{zone}r{rack}")),
                    ]
                    .into(),
                    facts: HostFacts {
                        cpus: 32,
                        memory_bytes: 256 << 30,
                        disk_free_bytes: 8 << 40,
                        ..Default::default()
                    },
                    agent_version: String::new(),
                };
                view.machines.insert(id, rec);
            }
        }
    }
    let mut add = |name: String, options: XFleet| {
        let text = format!("[Service]\nExecStart=/usr/bin/sleep infinity\n# {name}\n");
        let name = UnitName::new(&name).expect("valid name");
        let rec = UnitRecord {
            name: name.clone(),
            hash: unit_hash(&text),
            text,
            desired: DesiredState::Launched,
            options,
            has_install: true,
        };
        view.units.insert(name, rec);
    };
    // 600 Elasticsearch-like groups of 10: spread over zones, never two on one host.
    for g in 0..600 {
        for i in 0..10 {
            add(
                format!("es{g:03}@{i}.service"),
                XFleet {
                    group: format!("es{g:03}"),
                    distinct_by: vec![Distinct {
                        key: "host".into(),
                        max: 1,
                    }],
                    spread_by: vec!["zone".into()],
                    max_unavailable: 1,
                    ..XFleet::default()
                },
            );
        }
    }
    // 100 groups of 20 units that conflict with their own group.
    for g in 0..100 {
        for i in 0..20 {
            add(
                format!("web{g:03}@{i}.service"),
                XFleet {
                    conflicts: vec![format!("web{g:03}@*.service")],
                    max_unavailable: 1,
                    ..XFleet::default()
                },
            );
        }
    }
    // 2,000 plain units.
    for i in 0..2000 {
        add(
            format!("plain{i:04}.service"),
            XFleet {
                max_unavailable: 1,
                ..XFleet::default()
            },
        );
    }
    let cfg = Config::default();
    println!("{} machines, {} units", view.machines.len(), view.units.len());

    let t = Instant::now();
    let plan = schedule(&view, &cfg);
    let first = t.elapsed();
    let puts = plan.actions.iter().filter(|a| matches!(a, Action::Put { .. })).count();
    println!(
        "pass 1 (from empty): {:.1} ms, {} placements, {} unplaceable, {:.0} placements/s",
        first.as_secs_f64() * 1e3,
        puts,
        plan.unplaceable.len(),
        puts as f64 / first.as_secs_f64()
    );
    apply(&mut view, &plan);
    view.revision += 1;

    let t = Instant::now();
    let plan = schedule(&view, &cfg);
    let second = t.elapsed();
    println!(
        "pass 2 (no-op): {:.1} ms, {} actions",
        second.as_secs_f64() * 1e3,
        plan.actions.len()
    );

    // Lose 100 machines: all of zone 0's first 10 racks.
    let lost: Vec<String> = view
        .machines
        .keys()
        .filter(|m| m.starts_with("m-z0-r0"))
        .cloned()
        .collect();
    for m in &lost {
        view.machines.remove(m);
    }
    let t = Instant::now();
    let plan = schedule(&view, &cfg);
    let third = t.elapsed();
    let moves = plan.actions.iter().filter(|a| matches!(a, Action::Put { .. })).count();
    let deletes = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Delete { .. }))
        .count();
    println!(
        "pass 3 (lost {} machines): {:.1} ms, {} units moved ({} deletes), {} unplaceable, {:.0} moves/s",
        lost.len(),
        third.as_secs_f64() * 1e3,
        moves,
        deletes,
        plan.unplaceable.len(),
        moves as f64 / third.as_secs_f64()
    );
    apply(&mut view, &plan);
    view.revision += 1;
    let t = Instant::now();
    let plan = schedule(&view, &cfg);
    println!(
        "pass 4 (no-op after the loss): {:.1} ms, {} actions",
        t.elapsed().as_secs_f64() * 1e3,
        plan.actions.len()
    );
}
