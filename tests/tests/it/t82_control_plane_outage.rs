//! A control-plane outage is not a reason to stop units (DESIGN.md decision 5, fleet
//! #1289): a host cut off for less than its lease keeps its units, a coordinator leader
//! change stops nothing, and a majority of coordinator members down for 20 s stops nothing
//! on any host (within the outage grace, 30 s at the 5 s TTL: `esfleet_core::lease`); when
//! they are back, the cluster carries on with nothing moved.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise each test prints a skip line and passes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use esfleet_tests::hosts::skip_unless_root;
use esfleet_tests::realcluster::{shell_unit, RealCluster, Samples, Spec, PATIENCE};

/// `keep-<host>.service` pinned to each host (by machine id); returns unit → host once all
/// run, and each one's ActiveEnterTimestampMonotonic.
fn one_unit_per_host(c: &RealCluster) -> (BTreeMap<String, String>, BTreeMap<String, u64>) {
    let units: Vec<(String, String)> = c
        .names()
        .iter()
        .map(|h| {
            (
                format!("keep-{h}.service"),
                shell_unit(
                    "must survive control-plane trouble",
                    "Restart=no",
                    &format!("MachineID={}", c.machine_id(h)),
                ),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = units.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    c.start_units(&refs, &["--timeout", "60s"]).unwrap();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    let at = c.wait_units_running(&names, PATIENCE).unwrap();
    let started = at
        .iter()
        .map(|(u, h)| (u.clone(), c.unit_times(h, u).unwrap().active_enter_us))
        .collect();
    (at, started)
}

/// Every unit still runs where it ran, never restarted (same start time), its host's
/// journal shows no stop, and no sample missed it or saw it twice.
fn assert_untouched(c: &RealCluster, at: &BTreeMap<String, String>, started: &BTreeMap<String, u64>, s: &Samples) {
    for (u, h) in at {
        let t = c.unit_times(h, u).unwrap();
        assert_eq!(t.active_state, "active", "{u} on {h} is {}", t.active_state);
        assert_eq!(t.active_enter_us, started[u], "{u} was restarted on {h}");
        let stops: Vec<String> = c
            .lifecycle_lines(h, u)
            .unwrap()
            .into_iter()
            .filter(|l| l.contains("Stopping") || l.contains("Stopped") || l.contains("Deactivated"))
            .collect();
        assert!(stops.is_empty(), "{h} stopped {u}: {stops:#?}");
        let absent = s.absent(u);
        assert!(absent.is_empty(), "{u} was not running at {absent:?}");
    }
    assert!(s.duplicates().is_empty(), "duplicates: {:?}", s.duplicates());
    println!(
        "{} samples of every host (max gap {:?}, {} failed)",
        s.taken.len(),
        s.max_gap(),
        s.failed
    );
}

#[test]
fn a_host_cut_off_for_less_than_its_lease_keeps_its_units() {
    if skip_unless_root("t82_control_plane_outage::a_host_cut_off_for_less_than_its_lease_keeps_its_units") {
        return;
    }
    let c = RealCluster::boot(Spec::new(&["o1", "o2", "o3", "lonely"])).expect("boot");
    let (at, started) = one_unit_per_host(&c);
    // 2.5 s without the coordinators: with keepalives every second the agent goes at most
    // 3.5 s without an acknowledgment, under the 4 s fence point (TTL 5 s − margin 1 s).
    let ((), samples) = c.sample_while(&["keep-*"], Duration::from_millis(200), || {
        c.partition("lonely").unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        c.heal("lonely").unwrap();
        // Past the point where a fence or a move would have shown.
        std::thread::sleep(Duration::from_secs(5));
    });
    assert_untouched(&c, &at, &started, &samples);
    assert_eq!(
        c.wait_units_running(&at.keys().map(String::as_str).collect::<Vec<_>>(), PATIENCE)
            .unwrap(),
        at
    );
    c.teardown().unwrap();
}

#[test]
fn a_coordinator_leader_change_stops_nothing() {
    if skip_unless_root("t82_control_plane_outage::a_coordinator_leader_change_stops_nothing") {
        return;
    }
    let c = RealCluster::boot(Spec::new(&["l1", "l2", "l3", "l4"])).expect("boot");
    let (at, started) = one_unit_per_host(&c);
    let old = c.leader().unwrap().expect("a leader");
    let ((), samples) = c.sample_while(&["keep-*"], Duration::from_millis(200), || {
        c.kill_coordinator(&old).unwrap();
        let t0 = Instant::now();
        let new = c.wait_new_leader(&old, PATIENCE).unwrap();
        println!("leader {old} killed; {new} leads after {:?}", t0.elapsed());
        assert_ne!(new, old);
        // Longer than a lease: a fence or an expiry would have happened by now.
        std::thread::sleep(Duration::from_secs(7));
        c.start_coordinator(&old).unwrap();
    });
    assert_untouched(&c, &at, &started, &samples);
    assert_eq!(
        c.wait_units_running(&at.keys().map(String::as_str).collect::<Vec<_>>(), PATIENCE)
            .unwrap(),
        at
    );
    c.teardown().unwrap();
}

/// Stops two of three members (`survivor_leads`: the leader survives, else a follower),
/// waits 20 s (less the outage grace), starts them again.
fn majority_down_for_20s(survivor_leads: bool, names: &[&str]) {
    let c = RealCluster::boot(Spec::new(names)).expect("boot");
    let (at, started) = one_unit_per_host(&c);
    let leader = c.leader().unwrap().expect("a leader");
    let survivor = if survivor_leads {
        leader.clone()
    } else {
        c.coordinator_hosts().iter().find(|h| **h != leader).unwrap().clone()
    };
    let stopped: Vec<String> = c
        .coordinator_hosts()
        .iter()
        .filter(|h| **h != survivor)
        .cloned()
        .collect();
    println!("leader {leader}; stopping {stopped:?}, {survivor} survives");
    let ((), samples) = c.sample_while(&["keep-*"], Duration::from_millis(250), || {
        for h in &stopped {
            c.kill_coordinator(h).unwrap();
        }
        std::thread::sleep(Duration::from_secs(20));
        for h in &stopped {
            c.start_coordinator(h).unwrap();
        }
        let t0 = Instant::now();
        let l = c.wait_leader(PATIENCE).unwrap();
        println!("members back; {l} leads after {:?}", t0.elapsed());
        // A lease and a margin after the quorum is back: anything that would move, moved.
        std::thread::sleep(Duration::from_secs(7));
    });
    assert_untouched(&c, &at, &started, &samples);
    let names: Vec<&str> = at.keys().map(String::as_str).collect();
    assert_eq!(c.wait_units_running(&names, PATIENCE).unwrap(), at, "something moved");
    let all: Vec<String> = c.names();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    c.wait_machines_up(&all, PATIENCE).unwrap();
    // The cluster carries on: a new unit is placed and runs.
    let next = shell_unit("after the outage", "Restart=no", "");
    c.start_units(&[("after-outage.service", &next)], &["--timeout", "60s"])
        .unwrap();
    c.wait_units_running(&["after-outage.service"], PATIENCE).unwrap();
    c.teardown().unwrap();
}

#[test]
fn a_majority_of_coordinators_down_for_20s_stops_nothing_when_a_follower_survives() {
    if skip_unless_root(
        "t82_control_plane_outage::a_majority_of_coordinators_down_for_20s_stops_nothing_when_a_follower_survives",
    ) {
        return;
    }
    majority_down_for_20s(false, &["f1", "f2", "f3", "f4"]);
}

#[test]
fn a_majority_of_coordinators_down_for_20s_stops_nothing_when_the_leader_survives() {
    if skip_unless_root(
        "t82_control_plane_outage::a_majority_of_coordinators_down_for_20s_stops_nothing_when_the_leader_survives",
    ) {
        return;
    }
    majority_down_for_20s(true, &["g1", "g2", "g3", "g4"]);
}
