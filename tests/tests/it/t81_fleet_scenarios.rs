//! fleet's cluster scenarios on real hosts: a unit runs; conflicting units spread; a
//! crashed host's unit moves while the others stay put, and the host rejoins after its
//! reboot; an agent stopped with `--stop-units-on-exit` stops its units; a second agent
//! with a machine id already in use is refused.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise each test prints a skip line and passes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use esfleet_tests::hosts::skip_unless_root;
use esfleet_tests::realcluster::{shell_unit, wait_for, RealCluster, Spec, PATIENCE};

/// `n` units `conflict-<i>.service` that refuse to share a machine.
fn conflicting(n: usize) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| {
            (
                format!("conflict-{i}.service"),
                shell_unit("conflicting unit", "Restart=on-failure", "Conflicts=conflict-*.service"),
            )
        })
        .collect()
}

fn refs(units: &[(String, String)]) -> Vec<(&str, &str)> {
    units.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect()
}

#[test]
fn a_unit_runs_and_conflicting_units_spread() {
    if skip_unless_root("t81_fleet_scenarios::a_unit_runs_and_conflicting_units_spread") {
        return;
    }
    let c = RealCluster::boot(Spec::new(&["s1", "s2", "s3"])).expect("boot");
    let hello = shell_unit("hello", "Restart=on-failure", "");
    let out = c
        .start_units(&[("hello.service", &hello)], &["--timeout", "60s"])
        .unwrap();
    assert!(out.contains("hello.service"), "esfleet start printed {out:?}");
    let at = c.wait_units_running(&["hello.service"], PATIENCE).unwrap();
    assert_eq!(
        c.where_active("hello.service").unwrap(),
        vec![at["hello.service"].clone()]
    );

    let units = conflicting(3);
    c.start_units(&refs(&units), &["--timeout", "60s"]).unwrap();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    let at = c.wait_units_running(&names, PATIENCE).unwrap();
    let copies = c.live_copies(&["conflict-*"]).unwrap();
    let mut hosts: Vec<String> = Vec::new();
    for n in &names {
        assert_eq!(
            copies.get(*n),
            Some(&vec![at[*n].clone()]),
            "{n}: one copy where reported"
        );
        hosts.push(at[*n].clone());
    }
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "conflicting units share a host: {at:?}");

    // A fourth cannot be placed anywhere: `start` says why instead of waiting.
    let fourth = conflicting(4).pop().unwrap();
    let paths = c.write_units(&[(&fourth.0, &fourth.1)]).unwrap();
    let out = c.esfleet(&["start", "--timeout", "30s", &paths[0]]).unwrap();
    assert!(!out.success(), "a fourth conflicting unit started on 3 hosts: {out:?}");
    println!("fourth conflicting unit: {}", out.stderr.trim());
    assert!(c.where_active("conflict-4.service").unwrap().is_empty());
    c.teardown().unwrap();
}

#[test]
fn a_crashed_hosts_unit_moves_the_others_stay_and_the_host_rejoins() {
    if skip_unless_root("t81_fleet_scenarios::a_crashed_hosts_unit_moves_the_others_stay_and_the_host_rejoins") {
        return;
    }
    // Coordinators on m1..m3; w1 and w2 run only agents (so they can be rebooted).
    let c = RealCluster::boot(Spec::new(&["m1", "m2", "m3", "w1", "w2"])).expect("boot");
    let units = conflicting(4);
    c.start_units(&refs(&units), &["--timeout", "60s"]).unwrap();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    let before = c.wait_units_running(&names, PATIENCE).unwrap();
    // Four units on five hosts, at most one per host: a worker runs one.
    let (victim_unit, victim) = before
        .iter()
        .find(|(_, h)| h.starts_with('w'))
        .map(|(u, h)| (u.clone(), h.clone()))
        .expect("a unit on a worker");
    let free = c
        .names()
        .into_iter()
        .find(|h| !before.values().any(|v| v == h))
        .expect("one free host");
    let mut started: BTreeMap<String, u64> = BTreeMap::new();
    for (u, h) in &before {
        started.insert(u.clone(), c.unit_times(h, u).unwrap().active_enter_us);
    }

    let t0 = Instant::now();
    c.crash(&victim).unwrap();
    let moved = wait_for(
        &format!("{victim_unit} active on {free}"),
        PATIENCE,
        Duration::from_millis(100),
        || Ok((c.where_active(&victim_unit)? == vec![free.clone()]).then_some(())),
    );
    moved.unwrap();
    println!("crash of {victim} → {victim_unit} active on {free}: {:?}", t0.elapsed());
    let after = c.wait_units_running(&names, PATIENCE).unwrap();
    for (u, h) in &before {
        if *u == victim_unit {
            assert_eq!(after[u], free);
            continue;
        }
        assert_eq!(after[u], *h, "{u} moved though its host is fine");
        let t = c.unit_times(h, u).unwrap();
        assert_eq!(t.active_enter_us, started[u], "{u} was restarted on {h}");
    }
    let machines = c.list_machines().unwrap();
    let lost = machines.iter().find(|m| m.id == c.machine_id(&victim));
    assert!(
        lost.is_none_or(|m| m.state != "up"),
        "the crashed host is still listed up: {lost:?}"
    );

    // Reboot: the host rejoins, and nothing moves (back) to it.
    let took = c.reboot(&victim).unwrap();
    println!("reboot of {victim} until D-Bus answers: {took:?}");
    c.wait_machines_up(&[&victim], PATIENCE).unwrap();
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        let copies = c.live_copies(&["conflict-*"]).unwrap();
        for u in &names {
            assert_eq!(copies.get(*u), Some(&vec![after[*u].clone()]), "{u} after the rejoin");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(c.wait_units_running(&names, PATIENCE).unwrap(), after);
    c.teardown().unwrap();
}

#[test]
fn stopping_an_agent_with_stop_units_on_exit_stops_its_units() {
    if skip_unless_root("t81_fleet_scenarios::stopping_an_agent_with_stop_units_on_exit_stops_its_units") {
        return;
    }
    let spec = Spec::new(&["x1", "x2", "x3"]).agent_args(&["--stop-units-on-exit"]);
    let c = RealCluster::boot(spec).expect("boot");
    let unit = shell_unit("stopped with its agent", "Restart=on-failure", "");
    c.start_units(&[("leaving.service", &unit)], &["--timeout", "60s"])
        .unwrap();
    let host = c.wait_units_running(&["leaving.service"], PATIENCE).unwrap()["leaving.service"].clone();
    c.stop_agent(&host).unwrap();
    // The agent stopped the unit before it exited (`systemctl stop` waited for it).
    let old = c.unit_times(&host, "leaving.service").unwrap();
    assert!(
        !esfleet_tests::realcluster::is_live_state(&old.active_state),
        "leaving.service still {} on {host} after its agent stopped",
        old.active_state
    );
    let stopped = c
        .stopped_at(&host, "leaving.service")
        .unwrap()
        .unwrap_or_else(|| panic!("no stop of leaving.service in the journal of {host}"));
    // The machine left (its lease revoked), so the unit runs elsewhere, never twice.
    let new = wait_for(
        "leaving.service elsewhere",
        PATIENCE,
        Duration::from_millis(100),
        || {
            let at = c.where_active("leaving.service")?;
            assert!(at.len() <= 1, "two copies: {at:?}");
            Ok(at.into_iter().find(|h| *h != host))
        },
    )
    .unwrap();
    let t = c.unit_times(&new, "leaving.service").unwrap();
    assert!(
        t.active_enter_us > stopped,
        "the new copy started before the old one stopped"
    );
    c.teardown().unwrap();
}

#[test]
fn a_duplicate_machine_id_is_refused() {
    if skip_unless_root("t81_fleet_scenarios::a_duplicate_machine_id_is_refused") {
        return;
    }
    let spec = Spec::new(&["d1", "d2", "d3", "dup"]);
    let c = RealCluster::boot(spec).expect("boot");
    let id = c.machine_id("d1").to_string();
    let pinned = shell_unit("pinned to d1", "Restart=on-failure", &format!("MachineID={id}"));
    c.start_units(&[("pinned.service", &pinned)], &["--timeout", "60s"])
        .unwrap();
    assert_eq!(
        c.wait_units_running(&["pinned.service"], PATIENCE).unwrap()["pinned.service"],
        "d1"
    );

    // A host cloned with d1's machine id: its agent must not take d1's place.
    c.stop_agent("dup").unwrap();
    c.hosts()
        .exec_ok(
            "dup",
            &["sh", "-c", "printf '%s\\n' \"$1\" > /root/cloned-machine-id", "_", &id],
        )
        .unwrap();
    c.start_agent_with("dup", &["--machine-id-file", "/root/cloned-machine-id"])
        .unwrap();
    wait_for(
        "the refusal in dup's journal",
        PATIENCE,
        Duration::from_millis(200),
        || {
            let j = c.journal("dup", &["-b", "0", "-u", "esfleet-agent.service", "--no-pager"])?;
            Ok(j.contains("another live agent holds this machine id").then_some(()))
        },
    )
    .unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let machines = c.list_machines().unwrap();
        let m = machines.iter().find(|m| m.id == id).expect("d1 listed");
        assert_eq!(m.address, c.ip("d1"), "the duplicate took d1's record");
        assert_eq!(m.hostname, "d1");
        assert_eq!(c.where_active("pinned.service").unwrap(), vec!["d1".to_string()]);
        std::thread::sleep(Duration::from_millis(300));
    }
    c.teardown().unwrap();
}
