//! Draining a host (issue 6 #6): three units of one group with `MaxUnavailable=1` on one
//! host; `esfleet machine drain` moves them one at a time, make-before-break (the
//! scheduler's drain semantics: a unit's old copy stops only once its replacement is
//! active, so a drained unit is never down, and only one unit of the group is mid-move at
//! any moment); the host ends empty, listed `drained`, and gets no new unit even though it
//! is the least loaded.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise the test prints a skip line and passes.

use std::time::{Duration, Instant};

use esfleet_tests::hosts::skip_unless_root;
use esfleet_tests::realcluster::{shell_unit, RealCluster, Spec, PATIENCE};

#[test]
fn draining_a_host_moves_its_units_one_at_a_time_and_leaves_it_empty() {
    if skip_unless_root("t86_drain::draining_a_host_moves_its_units_one_at_a_time_and_leaves_it_empty") {
        return;
    }
    let names = ["n1", "n2", "n3", "old"];
    let c = RealCluster::boot(Spec::new(&names).without_agents()).expect("boot");
    c.start_agent("old").unwrap();
    c.wait_machines_up(&["old"], PATIENCE).unwrap();
    let text = shell_unit("drained one at a time", "Restart=on-failure", "MaxUnavailable=1");
    let paths = c.write_units(&[("mover@.service", &text)]).unwrap();
    c.esfleet_ok(&["submit", &paths[0]]).unwrap();
    let units = ["mover@1.service", "mover@2.service", "mover@3.service"];
    let mut args = vec!["start", "--timeout", "60s"];
    args.extend(units);
    c.esfleet_ok(&args).unwrap();
    let at = c.wait_units_running(&units, PATIENCE).unwrap();
    assert!(at.values().all(|h| h == "old"), "{at:?}");
    for h in &names[..3] {
        c.start_agent(h).unwrap();
    }
    c.wait_machines_up(&names[..3], PATIENCE).unwrap();

    let id = c.machine_id("old").to_string();
    let (drain, samples) = c.sample_while(&["mover@*"], Duration::from_millis(150), || {
        let t0 = Instant::now();
        let out = c.esfleet(&["machine", "drain", "--timeout", "120s", "--reason", "test", &id]);
        (out, t0.elapsed())
    });
    let (out, took) = drain;
    let out = out.unwrap();
    assert!(out.success(), "esfleet machine drain failed: {out:?}");
    println!("drain of 3 units took {took:?}");

    // Make-before-break, one unit at a time: in every sample each unit runs somewhere, at
    // most one of them twice (old copy and replacement), none three times.
    for s in &samples.taken {
        for u in units {
            assert!(
                s.copies.contains_key(u),
                "at {:?} {u} ran nowhere: {:?}",
                s.at,
                s.copies
            );
        }
        let moving: Vec<(&String, &Vec<String>)> = s.copies.iter().filter(|(_, hs)| hs.len() > 1).collect();
        assert!(
            moving.len() <= 1,
            "at {:?} more than one unit mid-move: {moving:?}",
            s.at
        );
        assert!(moving.iter().all(|(_, hs)| hs.len() == 2), "at {:?}: {moving:?}", s.at);
    }
    println!(
        "{} samples, max gap {:?}, {} failed",
        samples.taken.len(),
        samples.max_gap(),
        samples.failed
    );

    // From the hosts' own clocks: each old copy stopped only after its replacement was
    // active, and each move began (replacement start) only after the previous one ended
    // (old copy stopped).
    let after = c.wait_units_running(&units, PATIENCE).unwrap();
    let mut moves: Vec<(u64, u64, String)> = units
        .iter()
        .map(|u| {
            let host = &after[*u];
            assert_ne!(host, "old", "{u} still on the drained host");
            let stopped = c
                .stopped_at("old", u)
                .unwrap()
                .unwrap_or_else(|| panic!("old never stopped {u}"));
            let started = c.unit_times(host, u).unwrap().active_enter_us;
            (started, stopped, u.to_string())
        })
        .collect();
    moves.sort();
    for (started, stopped, u) in &moves {
        assert!(
            started <= stopped,
            "{u} stopped on old before its replacement was active"
        );
    }
    for w in moves.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "{}'s replacement started at {} µs, before {}'s old copy stopped at {} µs: two moves at once",
            w[1].2,
            w[1].0,
            w[0].2,
            w[0].1
        );
    }
    for (started, stopped, u) in &moves {
        println!(
            "{u}: replacement active, old copy stopped {:.3} s later",
            (stopped - started) as f64 / 1e6
        );
    }

    // Empty and unschedulable.
    assert!(c
        .live_copies(&["mover@*"])
        .unwrap()
        .values()
        .all(|hs| !hs.contains(&"old".to_string())));
    let m = c
        .list_machines()
        .unwrap()
        .into_iter()
        .find(|m| m.id == id)
        .expect("old listed");
    assert_eq!((m.state.as_str(), m.units), ("drained", 0), "{m:?}");
    // The drained host is the least loaded, yet a new unit goes elsewhere.
    let next = shell_unit("after the drain", "Restart=no", "");
    c.start_units(&[("after-drain.service", &next)], &["--timeout", "60s"])
        .unwrap();
    let placed = c.wait_units_running(&["after-drain.service"], PATIENCE).unwrap();
    assert_ne!(placed["after-drain.service"], "old");
    c.teardown().unwrap();
}
