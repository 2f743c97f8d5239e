//! The coordinator leader dies (SIGKILL) in the middle of an `esfleet start` of 30 units
//! (issue 6 #5): the CLI carries on through another member, a new leader's scheduler
//! finishes the placement, and every unit ends up running exactly once — checked in every
//! host's systemd, also at moments sampled all along.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise the test prints a skip line and passes.

use std::time::{Duration, Instant};

use esfleet_tests::hosts::skip_unless_root;
use esfleet_tests::realcluster::{shell_unit, wait_for, RealCluster, Spec, PATIENCE};

#[test]
fn killing_the_leader_during_a_30_unit_start_runs_each_unit_exactly_once() {
    if skip_unless_root(
        "t85_leader_kill_during_start::killing_the_leader_during_a_30_unit_start_runs_each_unit_exactly_once",
    ) {
        return;
    }
    let c = RealCluster::boot(Spec::new(&["k1", "k2", "k3", "k4"])).expect("boot");
    let leader = c.leader().unwrap().expect("a leader");
    let names: Vec<String> = (1..=30).map(|i| format!("many-{i:02}.service")).collect();
    // A second of ExecStartPre keeps the units activating for a while, so the CLI is
    // surely still waiting when the leader dies.
    let text = shell_unit("one of thirty", "Restart=on-failure\nExecStartPre=/bin/sleep 1", "");
    let units: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), text.as_str())).collect();

    let (cli, samples) = c.sample_while(&["many-*"], Duration::from_millis(300), || {
        std::thread::scope(|s| {
            let t0 = Instant::now();
            let (cr, units) = (&c, &units);
            let cli = s.spawn(move || (cr.start_units(units, &["--timeout", "120s"]), t0.elapsed()));
            // Kill the leader as soon as the first unit is submitted.
            wait_for("the first submitted unit", PATIENCE, Duration::from_millis(10), || {
                let keys = c.etcdctl(&["get", "--prefix", "--keys-only", "/esfleet/units/many-"])?;
                Ok(keys
                    .stdout
                    .lines()
                    .any(|l| l.starts_with("/esfleet/units/"))
                    .then_some(()))
            })
            .unwrap();
            c.kill_coordinator(&leader).unwrap();
            let killed = t0.elapsed();
            assert!(
                !cli.is_finished(),
                "esfleet start finished before the leader was killed"
            );
            println!("killed leader {leader} {killed:?} into the start");
            cli.join().expect("the CLI thread")
        })
    });
    let (result, took) = cli;
    let out = result.expect("esfleet start through a leader's death");
    println!("esfleet start of 30 units returned after {took:?}");
    assert_eq!(out.matches("launched on").count(), 30, "esfleet start printed:\n{out}");

    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    c.wait_units_running(&refs, PATIENCE).unwrap();
    let copies = c.live_copies(&["many-*"]).unwrap();
    for n in &names {
        assert_eq!(copies.get(n).map(Vec::len), Some(1), "{n}: {:?}", copies.get(n));
    }
    let rows = c.list_units().unwrap();
    assert_eq!(rows.len(), 30, "placements: {rows:?}");
    let dups = samples.duplicates();
    assert!(dups.is_empty(), "units ran twice: {dups:?}");
    println!(
        "{} samples, max gap {:?}, {} failed; new leader {:?}",
        samples.taken.len(),
        samples.max_gap(),
        samples.failed,
        c.leader().ok().flatten()
    );
    c.teardown().unwrap();
}
