//! Losing a whole zone (issue 6 #3): nine hosts in three zones run an Elasticsearch-shaped
//! set of units — three masters (`DistinctBy=zone`) and six data nodes (`SpreadBy=zone`,
//! `DistinctBy=host`), simple shell services with those options. Every host of one zone
//! crashes at once. The surviving units keep running untouched, the lost data nodes start
//! in the other zones (still one per host), the lost master stays unplaced (no zone is left
//! for it) with the scheduler's reason, and at no sampled moment (every ~200 ms, all
//! hosts' systemd) does any unit run twice.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise the test prints a skip line and passes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use esfleet_tests::hosts::skip_unless_root;
use esfleet_tests::realcluster::{shell_unit, wait_for, RealCluster, Spec, PATIENCE};

#[test]
fn losing_a_zone_moves_its_data_nodes_and_nothing_runs_twice() {
    if skip_unless_root("t83_zone_loss::losing_a_zone_moves_its_data_nodes_and_nothing_runs_twice") {
        return;
    }
    let t0 = Instant::now();
    let c = RealCluster::boot(Spec::zones(&["za", "zb", "zc"], 3)).expect("boot 9 hosts");
    println!("boot of 9 hosts, 3 members, 9 agents: {:?}", t0.elapsed());
    let zone_of = |h: &str| h.split('-').next().unwrap_or_default().to_string();

    let master = shell_unit("ES master stand-in %i", "Restart=on-failure", "DistinctBy=zone");
    let data = shell_unit(
        "ES data stand-in %i",
        "Restart=on-failure",
        "SpreadBy=zone\nDistinctBy=host",
    );
    // Submit both templates (one path per argument), then start the instances.
    let paths = c
        .write_units(&[("es-master@.service", &master), ("es-data@.service", &data)])
        .unwrap();
    let mut args = vec!["submit"];
    args.extend(paths.iter().map(String::as_str));
    c.esfleet_ok(&args).unwrap();
    let masters: Vec<String> = (1..=3).map(|i| format!("es-master@{i}.service")).collect();
    let datas: Vec<String> = (1..=6).map(|i| format!("es-data@{i}.service")).collect();
    let all: Vec<&str> = masters.iter().chain(&datas).map(String::as_str).collect();
    let mut args = vec!["start", "--timeout", "90s"];
    args.extend(all.iter());
    c.esfleet_ok(&args).unwrap();
    let before = c.wait_units_running(&all, PATIENCE).unwrap();

    // Placement rules hold: one master per zone, two data nodes per zone, one per host.
    let per_zone = |units: &[String], at: &BTreeMap<String, String>| {
        let mut z: BTreeMap<String, usize> = BTreeMap::new();
        for u in units {
            if let Some(h) = at.get(u) {
                *z.entry(zone_of(h)).or_default() += 1;
            }
        }
        z
    };
    assert_eq!(
        per_zone(&masters, &before).values().collect::<Vec<_>>(),
        vec![&1, &1, &1]
    );
    assert_eq!(per_zone(&datas, &before).values().collect::<Vec<_>>(), vec![&2, &2, &2]);
    let mut data_hosts: Vec<&String> = datas.iter().map(|u| &before[u]).collect();
    data_hosts.sort();
    data_hosts.dedup();
    assert_eq!(data_hosts.len(), 6, "two data nodes share a host: {before:?}");

    let lost_zone = "zc";
    let lost: Vec<String> = before
        .iter()
        .filter(|(_, h)| zone_of(h) == lost_zone)
        .map(|(u, _)| u.clone())
        .collect();
    let lost_data: Vec<String> = lost.iter().filter(|u| u.starts_with("es-data@")).cloned().collect();
    let lost_master: Vec<String> = lost.iter().filter(|u| u.starts_with("es-master@")).cloned().collect();
    let survivors: BTreeMap<String, (String, u64)> = before
        .iter()
        .filter(|(u, _)| !lost.contains(u))
        .map(|(u, h)| (u.clone(), (h.clone(), c.unit_times(h, u).unwrap().active_enter_us)))
        .collect();
    println!("zone {lost_zone} runs {lost:?}");

    let ((moved_after, new_at), samples) = c.sample_while(&["es-*"], Duration::from_millis(200), || {
        let crash0 = Instant::now();
        for h in c.names().iter().filter(|h| zone_of(h) == lost_zone) {
            c.crash(h).unwrap();
        }
        let crashed = crash0.elapsed();
        let moved = wait_for("lost data nodes active elsewhere", PATIENCE, Duration::from_millis(100), || {
            let copies = c.live_copies(&["es-data@*"])?;
            Ok(lost_data
                .iter()
                .all(|u| copies.get(u).is_some_and(|hs| hs.iter().all(|h| zone_of(h) != lost_zone)))
                .then_some(()))
        });
        moved.unwrap();
        let took = crash0.elapsed();
        println!("crash of zone {lost_zone} (crashing its 3 hosts took {crashed:?}) → lost data nodes active elsewhere: {took:?}");
        let survivors_names: Vec<&str> = survivors.keys().chain(&lost_data).map(String::as_str).collect();
        let at = c.wait_units_running(&survivors_names, PATIENCE).unwrap();
        // Keep watching a little: nothing may start twice late.
        std::thread::sleep(Duration::from_secs(2));
        (took, at)
    });

    // Never two live copies of one unit.
    let dups = samples.duplicates();
    assert!(dups.is_empty(), "units ran twice: {dups:?}");
    println!(
        "{} samples of all live hosts, max gap {:?}, {} failed",
        samples.taken.len(),
        samples.max_gap(),
        samples.failed
    );
    // Survivors untouched: same host, same start, live in every sample.
    for (u, (h, started)) in &survivors {
        assert_eq!(&new_at[u], h, "{u} moved");
        assert_eq!(
            c.unit_times(h, u).unwrap().active_enter_us,
            *started,
            "{u} restarted on {h}"
        );
        assert!(samples.absent(u).is_empty(), "{u} was down at {:?}", samples.absent(u));
    }
    // Lost data nodes: in the surviving zones, spread evenly, one per host.
    let after_datas: BTreeMap<String, String> = datas.iter().map(|u| (u.clone(), new_at[u].clone())).collect();
    let z = per_zone(&datas, &after_datas);
    assert_eq!(z.get(lost_zone), None);
    assert_eq!(
        z.values().collect::<Vec<_>>(),
        vec![&3, &3],
        "uneven spread: {after_datas:?}"
    );
    let mut hosts: Vec<&String> = after_datas.values().collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 6, "two data nodes share a host: {after_datas:?}");
    // The lost master cannot go anywhere (every surviving zone has one) and says why.
    for m in &lost_master {
        assert!(
            c.where_active(m).unwrap().is_empty(),
            "{m} runs in a zone that has a master"
        );
        let files = c
            .esfleet_ok(&["list-unit-files", "--fields", "unit,reason", "--no-legend"])
            .unwrap();
        println!("{}", files.trim());
        assert!(files.contains(m.as_str()), "{m} not listed: {files}");
    }
    println!("lost data nodes placed {moved_after:?} after the crash began");
    c.teardown().unwrap();
}
