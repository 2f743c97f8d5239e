//! Real esfleet clusters on simulated hosts ([`RealCluster`]): the harness itself (boot,
//! CLI and etcdctl in hosts, one-way partitions, clean teardown), and one unit's life on a
//! real host's systemd: written, started and reported; a `kill -9` of its main process
//! reported as failed (`Restart=no`) or restarted by systemd (`Restart=always`);
//! destroyed, so stopped and its file removed.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise each test prints a skip line and passes.

use std::time::{Duration, Instant};

use esfleet_tests::hosts::skip_unless_root;
use esfleet_tests::realcluster::{shell_unit, wait_for, Direction, RealCluster, Spec, PATIENCE};
use esfleet_tests::Hosts;

#[test]
fn a_real_cluster_boots_answers_and_leaves_nothing_behind() {
    if skip_unless_root("t80_realcluster::a_real_cluster_boots_answers_and_leaves_nothing_behind") {
        return;
    }
    let t0 = Instant::now();
    let spec = Spec::zones(&["za", "zb", "zc"], 1);
    let c = RealCluster::boot(spec).expect("boot a 3-host cluster");
    println!(
        "boot of 3 hosts, 3 members and 3 agents until all machines are up: {:?}",
        t0.elapsed()
    );
    let id = c.id();

    let machines = c.list_machines().unwrap();
    assert_eq!(machines.len(), 3, "{machines:?}");
    for h in c.names() {
        let m = machines
            .iter()
            .find(|m| m.id == c.machine_id(&h))
            .expect("machine listed");
        assert_eq!(m.address, c.ip(&h));
        assert_eq!(m.hostname, h);
        assert_eq!(m.zone, h.trim_end_matches("-1"));
        assert_eq!(m.state, "up");
    }
    let leader = c.leader().unwrap().expect("a leader");
    assert!(
        c.coordinator_hosts().contains(&leader),
        "leader {leader} is not a coordinator host"
    );
    // etcdctl sees the machine records the agents wrote.
    let keys = c
        .etcdctl(&["get", "--prefix", "--keys-only", "/esfleet/machines/"])
        .unwrap();
    assert!(keys.success(), "etcdctl: {keys:?}");
    for h in c.names() {
        assert!(keys.stdout.contains(c.machine_id(&h)), "{h} missing in {}", keys.stdout);
    }

    // One-way partition: zb-1 drops what it receives; za-1 cannot reach it, and heal helps.
    let ping = |from: &str, to: &str| {
        c.hosts()
            .exec(from, &["ping", "-c", "1", "-W", "1", to])
            .map(|o| o.success())
            .unwrap_or(false)
    };
    assert!(ping("za-1", "zb-1"));
    c.drop_traffic("zb-1", Direction::Inbound).unwrap();
    assert!(!ping("za-1", "zb-1"), "zb-1 answered through an inbound drop");
    c.heal("zb-1").unwrap();
    assert!(ping("za-1", "zb-1"), "no answer after heal");
    c.drop_traffic("zb-1", Direction::Outbound).unwrap();
    assert!(!ping("zb-1", "za-1"), "zb-1 sent through an outbound drop");
    c.heal("zb-1").unwrap();

    c.teardown().expect("teardown");
    let left = Hosts::leftovers(&id);
    assert!(left.is_empty(), "teardown left behind: {left:#?}");
}

#[test]
fn a_unit_is_written_started_reported_restarted_and_destroyed() {
    if skip_unless_root("t80_realcluster::a_unit_is_written_started_reported_restarted_and_destroyed") {
        return;
    }
    // A long poll interval: whatever the agent reports within it, it learned from systemd's
    // change notices, not from the safety-net poll.
    let spec = Spec::new(&["u1", "u2", "u3"]).agent_args(&["--poll-interval", "60s"]);
    let c = RealCluster::boot(spec).expect("boot");
    let once = shell_unit("exits for good when killed", "Restart=no", "");
    let always = shell_unit("restarted by systemd", "Restart=always\nRestartSec=100ms", "");
    c.start_units(
        &[("once.service", &once), ("always.service", &always)],
        &["--timeout", "60s"],
    )
    .expect("esfleet start");
    let at = c
        .wait_units_running(&["once.service", "always.service"], PATIENCE)
        .expect("both units reported active/running");
    for (unit, host) in &at {
        assert_eq!(
            c.where_active(unit).unwrap(),
            vec![host.clone()],
            "{unit}: ground truth"
        );
        c.hosts()
            .exec_ok(host, &["test", "-f", &format!("/run/systemd/system/{unit}")])
            .unwrap_or_else(|e| panic!("{unit}'s file is not in /run/systemd/system on {host}: {e:#}"));
    }

    // status and journal come from the unit's own host, through a coordinator.
    let status = c.esfleet_ok(&["status", "always.service"]).expect("esfleet status");
    assert!(
        status.contains("always.service") && status.contains("Active: active (running)"),
        "esfleet status:\n{status}"
    );
    let journal = c
        .esfleet_ok(&["journal", "-n", "20", "always.service"])
        .expect("esfleet journal");
    assert!(journal.contains("restarted by systemd"), "esfleet journal:\n{journal}");

    // kill -9 of the main process of a Restart=no unit: reported failed.
    let host = &at["once.service"];
    let pid = c.unit_times(host, "once.service").unwrap().main_pid;
    assert!(pid > 0);
    let t0 = Instant::now();
    c.hosts().exec_ok(host, &["kill", "-9", &pid.to_string()]).unwrap();
    wait_for(
        "once.service reported failed",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let rows = c.list_units()?;
            Ok(rows
                .iter()
                .any(|p| p.unit == "once.service" && p.active == "failed")
                .then_some(()))
        },
    )
    .unwrap();
    println!("kill -9 → list-units shows failed: {:?}", t0.elapsed());
    assert!(c.where_active("once.service").unwrap().is_empty());

    // kill -9 of a Restart=always unit: systemd restarts it, on the same host, and the
    // agent reports it running again with its restart count.
    let host = &at["always.service"];
    let before = c.unit_times(host, "always.service").unwrap();
    let t0 = Instant::now();
    c.hosts()
        .exec_ok(host, &["kill", "-9", &before.main_pid.to_string()])
        .unwrap();
    let after = wait_for("always.service restarted", PATIENCE, Duration::from_millis(50), || {
        let t = c.unit_times(host, "always.service")?;
        Ok((t.active_state == "active" && t.main_pid != before.main_pid && t.main_pid != 0).then_some(t))
    })
    .unwrap();
    println!("kill -9 → systemd restarted it: {:?}", t0.elapsed());
    assert_eq!(after.n_restarts, before.n_restarts + 1);
    wait_for(
        "restart reported",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let rows = c.list_units()?;
            Ok(rows
                .iter()
                .any(|p| p.unit == "always.service" && p.active == "active" && p.sub == "running" && p.restarts >= 1)
                .then_some(()))
        },
    )
    .unwrap();
    println!(
        "kill -9 → list-units shows it running with restarts ≥ 1: {:?}",
        t0.elapsed()
    );
    assert_eq!(c.where_active("always.service").unwrap(), vec![host.clone()]);

    // Destroy: stopped, file removed, no longer listed.
    c.esfleet_ok(&["destroy", "--timeout", "60s", "once.service", "always.service"])
        .expect("esfleet destroy");
    for (unit, host) in &at {
        wait_for(
            &format!("{unit} gone from {host}"),
            PATIENCE,
            Duration::from_millis(100),
            || {
                let t = c.unit_times(host, unit)?;
                let file = c
                    .hosts()
                    .exec(host, &["test", "-e", &format!("/run/systemd/system/{unit}")])?;
                Ok((t.active_state != "active" && !file.success()).then_some(()))
            },
        )
        .unwrap();
    }
    assert!(c.live_copies(&["once.service", "always.service"]).unwrap().is_empty());
    let rows = c.list_units().unwrap();
    assert!(rows.is_empty(), "destroyed units still listed: {rows:?}");
    c.teardown().expect("teardown");
}
