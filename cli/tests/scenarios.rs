//! fleet's client scenarios, run with the built `esfleet` against a real coordinator and
//! simulated agents (tests/support): submit/destroy/resubmit, load/unload/load, start three
//! units, `--replace` on a running unit, restart, `cat`, sorted list-unit-files, endpoints
//! from the environment, and a dead endpoint that the user never notices.

mod support;

use esfleet_cli::render::{MachineRow, UnitFileRow, UnitRow};
use support::{esfleet, esfleet_in, unit_file, FakeAgent, HELLO};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_destroy_resubmit_and_cat() {
    let c = support::cluster().await;
    let ep = c.endpoint(0);
    let dir = tempfile::tempdir().unwrap();
    let hello = unit_file(dir.path(), "hello.service", HELLO);

    // The endpoint comes from ESFLEET_ENDPOINTS only.
    let r = esfleet(Some(&ep), &["submit", &hello]).await.expect(0);
    assert_eq!(r.stdout, "Unit hello.service submitted\n");
    let r = esfleet(Some(&ep), &["submit", &hello]).await.expect(0);
    assert_eq!(r.stdout, "Unit hello.service unchanged\n");
    let r = esfleet(Some(&ep), &["cat", "hello.service"]).await.expect(0);
    assert_eq!(r.stdout, HELLO, "cat prints the file exactly");
    let r = esfleet(
        Some(&ep),
        &["list-unit-files", "--no-legend", "--fields", "unit,dstate,state"],
    )
    .await
    .expect(0);
    assert_eq!(r.stdout, "hello.service  inactive  inactive\n");

    let r = esfleet(Some(&ep), &["destroy", "hello.service"]).await.expect(0);
    assert_eq!(r.stdout, "Unit hello.service destroyed\n");
    let r = esfleet(Some(&ep), &["list-unit-files", "--no-legend"]).await.expect(0);
    assert_eq!(r.stdout, "");
    let r = esfleet(Some(&ep), &["cat", "hello.service"]).await.expect(1);
    assert!(r.stderr.contains("hello.service not found"), "{}", r.stderr);

    let r = esfleet(Some(&ep), &["submit", &hello]).await.expect(0);
    assert_eq!(r.stdout, "Unit hello.service submitted\n");
    // --endpoints overrides the environment.
    let r = esfleet(
        Some("http://127.0.0.1:1"),
        &["--endpoints", &ep, "cat", "hello.service"],
    )
    .await
    .expect(0);
    assert_eq!(r.stdout, HELLO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_unload_load() {
    let c = support::cluster().await;
    let ep = c.endpoint(0);
    let agent = FakeAgent::start(&c.endpoints(), 1, &[("zone", "a")], true).await;
    let dir = tempfile::tempdir().unwrap();
    let hello = unit_file(dir.path(), "hello.service", HELLO);
    let at = format!("{}.../{}", &agent.id[..8], agent.address);

    let r = esfleet(Some(&ep), &["load", &hello]).await.expect(0);
    assert_eq!(r.stdout, format!("Unit hello.service loaded on {at}\n"));
    let r = esfleet(
        Some(&ep),
        &["list-units", "--no-legend", "--fields", "unit,load,active,sub"],
    )
    .await
    .expect(0);
    assert_eq!(r.stdout, "hello.service  loaded  inactive  dead\n");

    let r = esfleet(Some(&ep), &["unload", "hello.service"]).await.expect(0);
    assert_eq!(r.stdout, "Unit hello.service unloaded\n");
    let r = esfleet(Some(&ep), &["list-units", "--no-legend"]).await.expect(0);
    assert_eq!(r.stdout, "");

    let r = esfleet(Some(&ep), &["load", "hello.service"]).await.expect(0);
    assert_eq!(r.stdout, format!("Unit hello.service loaded on {at}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_three_units_then_list() {
    let c = support::cluster().await;
    let ep = c.endpoint(0);
    let a1 = FakeAgent::start(&c.endpoints(), 1, &[("zone", "a"), ("rack", "r1")], true).await;
    let a2 = FakeAgent::start(
        &c.endpoints(),
        2,
        &[("zone", "b"), ("rack", "r2"), ("disk", "ssd")],
        true,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = ["c.service", "a.service", "b.service"]
        .iter()
        .map(|n| unit_file(dir.path(), n, HELLO))
        .collect();

    let mut args = vec!["start"];
    args.extend(files.iter().map(String::as_str));
    let r = esfleet(Some(&ep), &args).await.expect(0);
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    for (line, name) in lines.iter().zip(["a.service", "b.service", "c.service"]) {
        assert!(line.starts_with(&format!("Unit {name} launched on ")), "{line}");
        assert!(line.contains(".../10.88.0.1"), "{line}");
    }

    // list-unit-files: sorted by name, desired and current both launched.
    let r = esfleet(Some(&ep), &["list-unit-files"]).await.expect(0);
    let names: Vec<&str> = r
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["a.service", "b.service", "c.service"], "{}", r.stdout);
    assert!(
        r.stdout.starts_with("UNIT       HASH     DSTATE    STATE     TARGET\n"),
        "{}",
        r.stdout
    );
    let r = esfleet(Some(&ep), &["list-unit-files", "-o", "json"]).await.expect(0);
    let rows: Vec<UnitFileRow> = serde_json::from_str(&r.stdout).unwrap();
    assert!(rows
        .iter()
        .all(|u| u.desired == "launched" && u.state == "launched" && u.targets.len() == 1));
    assert_eq!(rows[0].hash, esfleet_core::model::unit_hash(HELLO));

    // list-units: one line per placement, systemd's states.
    let r = esfleet(Some(&ep), &["list-units", "-o", "json"]).await.expect(0);
    let rows: Vec<UnitRow> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|u| u.active == "active" && u.sub == "running"));
    assert!(rows.iter().all(|u| u.machine_id == a1.id || u.machine_id == a2.id));
    let r = esfleet(Some(&ep), &["list-units"]).await.expect(0);
    assert!(
        r.stdout.starts_with("UNIT       MACHINE                 ACTIVE  SUB\n"),
        "{}",
        r.stdout
    );

    // list-machines: both machines, their zone/rack/metadata and unit counts.
    let r = esfleet(Some(&ep), &["list-machines", "-o", "json"]).await.expect(0);
    let rows: Vec<MachineRow> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        rows.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [a1.id.as_str(), a2.id.as_str()]
    );
    assert_eq!(rows.iter().map(|m| m.units).sum::<u32>(), 3);
    assert_eq!((rows[1].zone.as_str(), rows[1].rack.as_str()), ("b", "r2"));
    let r = esfleet(Some(&ep), &["list-machines"]).await.expect(0);
    let mut lines = r.stdout.lines();
    assert_eq!(
        lines.next().unwrap(),
        "MACHINE      IP          ZONE  RACK  METADATA  UNITS  STATE"
    );
    let second = lines.nth(1).unwrap();
    assert!(
        second.starts_with("20123456...  10.88.0.12  b     r2    disk=ssd  "),
        "{second}"
    );
    assert!(second.ends_with("  up"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_updates_a_running_unit_and_restart() {
    let c = support::cluster().await;
    let ep = c.endpoint(0);
    let _agent = FakeAgent::start(&c.endpoints(), 1, &[], true).await;
    let dir = tempfile::tempdir().unwrap();
    let hello = unit_file(dir.path(), "hello.service", HELLO);
    esfleet(Some(&ep), &["start", &hello]).await.expect(0);

    let changed = HELLO.replace("echo hello", "echo hello again");
    std::fs::write(&hello, &changed).unwrap();
    let r = esfleet(Some(&ep), &["submit", &hello]).await.expect(1);
    assert!(
        r.stderr.contains("--replace"),
        "the refusal names the fix: {}",
        r.stderr
    );
    let r = esfleet(Some(&ep), &["start", "--replace", &hello]).await.expect(0);
    assert!(
        r.stdout
            .starts_with("Unit hello.service replaced\nUnit hello.service launched on "),
        "{}",
        r.stdout
    );
    let r = esfleet(Some(&ep), &["cat", "hello.service"]).await.expect(0);
    assert_eq!(r.stdout, changed);
    let r = esfleet(Some(&ep), &["list-units", "-o", "json"]).await.expect(0);
    let rows: Vec<UnitRow> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rows[0].hash, esfleet_core::model::unit_hash(&changed));
    assert_eq!(rows[0].active, "active");
    let before = rows[0].since_usec;

    // restart: stopped, then started again (a new active-enter time).
    let r = esfleet(Some(&ep), &["restart", "hello.service"]).await.expect(0);
    assert!(r.stdout.contains("Unit hello.service loaded on "), "{}", r.stdout);
    assert!(r.stdout.contains("Unit hello.service launched on "), "{}", r.stdout);
    let r = esfleet(Some(&ep), &["list-units", "-o", "json"]).await.expect(0);
    let rows: Vec<UnitRow> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rows[0].active, "active");
    assert!(rows[0].since_usec > before, "restart did not restart");

    // stop keeps it loaded on its machine.
    let r = esfleet(Some(&ep), &["stop", "hello.service"]).await.expect(0);
    assert!(r.stdout.starts_with("Unit hello.service loaded on "), "{}", r.stdout);
    let r = esfleet_in(
        Some(&ep),
        &["list-units", "--no-legend", "--fields", "active"],
        Some(dir.path()),
    )
    .await
    .expect(0);
    assert_eq!(r.stdout, "inactive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_is_invisible_and_cluster_commands_work() {
    let c = support::cluster().await;
    let dead = format!("http://127.0.0.1:{}", esfleet_tests::free_port().unwrap());
    let eps = format!("{dead},{}", c.endpoint(0));
    let r = esfleet(Some(&eps), &["list-unit-files"]).await.expect(0);
    assert_eq!(r.stdout, "UNIT  HASH  DSTATE  STATE  TARGET\n");

    let r = esfleet(Some(&eps), &["cluster", "status"]).await.expect(0);
    assert!(r.stdout.contains(" is healthy\nleader: "), "{}", r.stdout);
    assert!(r.stdout.contains("  n1  "), "{}", r.stdout);
    let r = esfleet(Some(&eps), &["cluster", "status", "-o", "json"])
        .await
        .expect(0);
    let v: esfleet_cli::render::ClusterView = serde_json::from_str(&r.stdout).unwrap();
    assert!(v.healthy && !v.leader.is_empty() && v.members.len() == 1 && v.members[0].leader);

    let r = esfleet(Some(&eps), &["cluster", "member", "list", "-o", "json"])
        .await
        .expect(0);
    let m: Vec<esfleet_cli::render::MemberRow> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].client_urls, [c.endpoint(0)]);
    assert_eq!(m[0].id, format!("{:016x}", c.member_id(0).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_units_off_and_undrain_gives_the_machine_back() {
    let c = support::cluster().await;
    let ep = c.endpoint(0);
    let _a1 = FakeAgent::start(&c.endpoints(), 1, &[], true).await;
    let _a2 = FakeAgent::start(&c.endpoints(), 2, &[], true).await;
    let dir = tempfile::tempdir().unwrap();
    let hello = unit_file(dir.path(), "hello.service", HELLO);
    esfleet(Some(&ep), &["start", &hello]).await.expect(0);
    let r = esfleet(Some(&ep), &["list-units", "-o", "json"]).await.expect(0);
    let rows: Vec<UnitRow> = serde_json::from_str(&r.stdout).unwrap();
    let from = rows[0].machine_id.clone();

    let r = esfleet(Some(&ep), &["machine", "drain", "--reason", "test", &from])
        .await
        .expect(0);
    assert!(
        r.stdout.starts_with(&format!("Machine {from} is draining\n")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .ends_with(&format!("Machine {from} is drained: no units left on it\n")),
        "{}",
        r.stdout
    );
    let r = esfleet(Some(&ep), &["list-units", "-o", "json"]).await.expect(0);
    let rows: Vec<UnitRow> = serde_json::from_str(&r.stdout).unwrap();
    assert!(rows.iter().all(|u| u.machine_id != from), "{rows:?}");
    let r = esfleet(Some(&ep), &["list-machines", "-o", "json"]).await.expect(0);
    let m: Vec<MachineRow> = serde_json::from_str(&r.stdout).unwrap();
    let drained = m.iter().find(|m| m.id == from).unwrap();
    assert_eq!(
        (drained.state.as_str(), drained.drain_reason.as_str()),
        ("drained", "test")
    );

    let r = esfleet(Some(&ep), &["machine", "undrain", &from]).await.expect(0);
    assert_eq!(r.stdout, format!("Machine {from} takes units again\n"));
    let r = esfleet(Some(&ep), &["machine", "undrain", &from]).await.expect(0);
    assert_eq!(r.stdout, format!("Machine {from} was not draining\n"));
}
