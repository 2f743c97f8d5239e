//! Real systemd, in simulated hosts (network namespace + systemd-nspawn, systemd as PID 1):
//! the `UnitManager` conformance suite against the real D-Bus manager, and the harness
//! itself (names, network faults, crash and reboot, freeze, clean teardown).
//!
//! Root only: these run when `ESFLEET_ROOT_TESTS=1` (CI sets it) and otherwise print a skip
//! line and pass.

use std::time::{Duration, Instant};

use esfleet_tests::hosts::{skip_unless_root, BIN_IN_HOST};
use esfleet_tests::Hosts;

#[test]
fn unit_manager_conformance_against_real_systemd() {
    if skip_unless_root("t60_systemd::unit_manager_conformance_against_real_systemd") {
        return;
    }
    let hosts = Hosts::boot(&["conf"]).expect("boot one host");
    println!("boot of 1 host (until D-Bus answers): {:?}", hosts.boot_time());
    let bin = format!("{BIN_IN_HOST}/systemd_conformance");
    let out = hosts
        .exec("conf", &[&bin, "--yes-this-is-a-test-host", "--wait", "20s"])
        .expect("run the conformance binary in the host");
    println!("{}", out.stdout);
    assert!(
        out.success(),
        "conformance suite failed ({:?}):\n{}\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    // The suite cleans up after itself: no unit file, drop-in or link of ours is left.
    let left = hosts
        .exec_ok("conf", &["find", "/run/systemd/system", "-name", "esfleet-conf-*"])
        .expect("list the unit dir");
    assert!(left.trim().is_empty(), "the suite left files behind:\n{left}");
    hosts.teardown().expect("teardown");
}

#[test]
fn three_hosts_reach_each_other_by_name_and_leave_nothing_behind() {
    if skip_unless_root("t60_systemd::three_hosts_reach_each_other_by_name_and_leave_nothing_behind") {
        return;
    }
    let names = ["alpha", "beta", "gamma"];
    let hosts = Hosts::boot(&names).expect("boot three hosts");
    println!("boot of 3 hosts (until D-Bus answers): {:?}", hosts.boot_time());
    let id = hosts.id().to_string();
    let ping = |from: &str, to: &str| {
        hosts
            .exec(from, &["ping", "-c", "1", "-W", "1", to])
            .map(|o| o.success())
            .unwrap_or(false)
    };
    for from in names {
        let hostname = hosts.exec_ok(from, &["hostname"]).expect("hostname");
        assert_eq!(hostname.trim(), from);
        for to in names {
            assert!(ping(from, to), "{from} cannot ping {to} by name");
        }
    }
    assert_eq!(hosts.ip("beta").unwrap(), "10.88.0.12");

    // Pull beta's cable, then plug it back.
    hosts.partition("beta").unwrap();
    assert!(!ping("alpha", "beta"), "alpha reaches a partitioned beta");
    hosts.heal("beta").unwrap();
    assert!(ping("alpha", "beta"), "alpha cannot reach beta after heal");

    // A frozen host's systemd does not answer; thawed, it does.
    hosts.freeze("gamma").unwrap();
    let frozen = hosts.exec_timeout("gamma", &["systemctl", "is-system-running"], Duration::from_secs(2));
    assert!(frozen.is_err(), "a frozen host's systemd answered: {frozen:?}");
    hosts.thaw("gamma").unwrap();
    hosts
        .exec_timeout(
            "gamma",
            &["systemctl", "show", "-p", "Version"],
            Duration::from_secs(20),
        )
        .expect("systemd answers after thaw");

    // Crash gamma (its units die with it), reboot it, and it is back on the network.
    hosts.run_service("gamma", "sleeper", &["/bin/sleep", "1000"]).unwrap();
    let pid1 = hosts.leader_pid("gamma").unwrap();
    hosts.kill("gamma").unwrap();
    assert!(hosts.exec("gamma", &["true"]).map(|o| !o.success()).unwrap_or(true));
    let reboot = hosts.start("gamma").unwrap();
    println!("reboot of gamma (until D-Bus answers): {reboot:?}");
    assert_ne!(hosts.leader_pid("gamma").unwrap(), pid1);
    let sleeper = hosts.exec("gamma", &["systemctl", "is-active", "sleeper"]).unwrap();
    assert_eq!(sleeper.stdout.trim(), "inactive", "a unit survived the crash");
    assert!(ping("alpha", "gamma"), "alpha cannot reach gamma after its reboot");
    // Its journal from before the crash is still readable from outside.
    let journal = hosts.journal("gamma", &["-u", "sleeper", "--boot=-1"]).unwrap();
    assert!(journal.contains("sleeper"), "no journal of the first boot:\n{journal}");

    let t0 = Instant::now();
    hosts.teardown().expect("teardown");
    println!("teardown of 3 hosts: {:?}", t0.elapsed());
    let left = Hosts::leftovers(&id);
    assert!(left.is_empty(), "teardown left behind: {left:#?}");
}
