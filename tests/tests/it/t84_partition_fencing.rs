//! A host cut off from the coordinators for longer than its lease fences its units before
//! their replacements start elsewhere (issue 6 #4, fleet #1690), whether its cable is
//! pulled or only its inbound traffic is dropped; after the heal the old copies stay
//! stopped and nothing runs twice. The old copy's stop time (the cut-off host's journal)
//! and the new copy's start time (`ActiveEnterTimestampMonotonic`) come from one kernel
//! clock, so they compare.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise each test prints a skip line and passes.

use std::time::{Duration, Instant};

use esfleet_tests::hosts::skip_unless_root;
use esfleet_tests::realcluster::{shell_unit, wait_for, Direction, RealCluster, Spec, PATIENCE};

#[derive(Debug, Clone, Copy)]
enum Cut {
    Cable,
    InboundOnly,
}

/// `victim` indexes `names`; the first three hosts also run the coordinator members.
fn fence_before_replacement(cut: Cut, names: &[&str], victim: usize) {
    let c = RealCluster::boot(Spec::new(names).without_agents()).expect("boot");
    let others: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != victim)
        .map(|(_, h)| *h)
        .collect();
    let victim = names[victim];
    // Only the victim's agent first, so both units land on it.
    c.start_agent(victim).unwrap();
    c.wait_machines_up(&[victim], PATIENCE).unwrap();
    let units = ["fenced-1.service", "fenced-2.service"];
    let text = shell_unit("fenced when cut off", "Restart=on-failure", "");
    c.start_units(&[(units[0], &text), (units[1], &text)], &["--timeout", "60s"])
        .unwrap();
    let at = c.wait_units_running(&units, PATIENCE).unwrap();
    assert!(at.values().all(|h| h == victim), "{at:?}");
    for h in &others {
        c.start_agent(h).unwrap();
    }
    c.wait_machines_up(&others, PATIENCE).unwrap();

    let (moved, samples) = c.sample_while(&["fenced-*"], Duration::from_millis(200), || {
        let t0 = Instant::now();
        match cut {
            Cut::Cable => c.partition(victim).unwrap(),
            Cut::InboundOnly => c.drop_traffic(victim, Direction::Inbound).unwrap(),
        }
        let moved = wait_for(
            "both units active elsewhere",
            PATIENCE,
            Duration::from_millis(100),
            || {
                let copies = c.live_copies(&["fenced-*"])?;
                let mut at = Vec::new();
                for u in units {
                    match copies.get(u).map(Vec::as_slice) {
                        Some([h]) if h != victim => at.push((u.to_string(), h.clone())),
                        _ => return Ok(None),
                    }
                }
                Ok(Some(at))
            },
        )
        .unwrap();
        println!(
            "{cut:?} cut of {victim} → both units active elsewhere: {:?}",
            t0.elapsed()
        );
        // Stay cut off a while longer, then heal and watch the host come back.
        std::thread::sleep(Duration::from_secs(2));
        c.heal(victim).unwrap();
        c.wait_machines_up(&[victim], PATIENCE).unwrap();
        std::thread::sleep(Duration::from_secs(4));
        moved
    });

    let dups = samples.duplicates();
    assert!(dups.is_empty(), "units ran twice: {dups:?}");
    println!(
        "{} samples, max gap {:?}, {} failed",
        samples.taken.len(),
        samples.max_gap(),
        samples.failed
    );
    for (u, host) in &moved {
        let stopped = c
            .stopped_at(victim, u)
            .unwrap()
            .unwrap_or_else(|| panic!("{victim} never stopped {u}"));
        let started = c.unit_times(host, u).unwrap().active_enter_us;
        assert!(
            stopped < started,
            "{u}: the new copy on {host} started at {started} µs, before {victim} stopped the old one at {stopped} µs"
        );
        println!(
            "{u}: fenced on {victim} {:.2} s before its replacement on {host} started",
            (started - stopped) as f64 / 1e6
        );
        // Healed: the old copy stays stopped; the new one runs alone.
        assert_eq!(c.where_active(u).unwrap(), vec![host.clone()], "{u} after the heal");
    }
    let fence = c
        .journal(
            victim,
            &["-b", "0", "-u", "esfleet-agent.service", "--grep", "fenc", "--no-pager"],
        )
        .unwrap_or_default();
    println!(
        "{victim}'s agent on fencing:\n{}",
        fence.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    let units_now: Vec<&str> = units.to_vec();
    let at = c.wait_units_running(&units_now, PATIENCE).unwrap();
    for (u, h) in &moved {
        assert_eq!(&at[u], h, "{u} moved again after the heal");
    }
    c.teardown().unwrap();
}

#[test]
fn a_partitioned_host_fences_its_units_before_they_start_elsewhere() {
    if skip_unless_root("t84_partition_fencing::a_partitioned_host_fences_its_units_before_they_start_elsewhere") {
        return;
    }
    fence_before_replacement(Cut::Cable, &["pa", "pb", "pc", "cut"], 3);
}

#[test]
fn a_host_that_hears_nothing_fences_its_units_before_they_start_elsewhere() {
    if skip_unless_root("t84_partition_fencing::a_host_that_hears_nothing_fences_its_units_before_they_start_elsewhere")
    {
        return;
    }
    fence_before_replacement(Cut::InboundOnly, &["qa", "qb", "qc", "deaf"], 3);
}

/// The host cut off also runs a coordinator member: its agent still reaches that member,
/// which is in a minority and can only say "there is no leader". That must not keep the
/// units up while the majority moves them.
#[test]
fn a_partitioned_member_host_fences_its_units_before_they_start_elsewhere() {
    if skip_unless_root("t84_partition_fencing::a_partitioned_member_host_fences_its_units_before_they_start_elsewhere")
    {
        return;
    }
    fence_before_replacement(Cut::Cable, &["ma", "mb", "mc", "md"], 0);
}
