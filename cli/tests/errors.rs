//! Every error path of issue 5 prints a message that names the problem and the fix, and
//! exits 1 (operation failed) or 2 (usage error).

mod support;

use support::{esfleet, unit_file, FakeAgent, HELLO};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_without_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = esfleet_tests::free_port().unwrap();
    let p2 = esfleet_tests::free_port().unwrap();
    let eps = format!("http://127.0.0.1:{p1},127.0.0.1:{p2}");

    // An unreachable cluster: every endpoint tried, with what it said, and the fix.
    let r = esfleet(Some(&eps), &["list-units"]).await.expect(1);
    assert!(
        r.stderr
            .starts_with("error: could not reach the esfleet cluster for ListUnits; tried 2 endpoints:\n"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&format!("  http://127.0.0.1:{p1}: ")), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("  http://127.0.0.1:{p2}: ")), "{}", r.stderr);
    assert!(r.stderr.contains("Connection refused"), "{}", r.stderr);
    assert!(
        r.stderr.contains("fix: check that the coordinators are running"),
        "{}",
        r.stderr
    );

    // A syntax error: file:line:column, the text, and nothing sent (the cluster is down,
    // so reaching it would have been a different error).
    let bad = unit_file(
        dir.path(),
        "bad.service",
        "[Unit]\nDescription=x\n[Service\nExecStart=/bin/true\n",
    );
    let r = esfleet(Some(&eps), &["submit", &bad]).await.expect(1);
    assert!(r.stderr.starts_with(&format!("error: {bad}:3")), "{}", r.stderr);
    assert!(r.stderr.contains("    3 | [Service"), "{}", r.stderr);
    assert!(r.stderr.contains("nothing was submitted"), "{}", r.stderr);

    // An unknown [X-Fleet] key: the nearest one suggested.
    let typo = unit_file(
        dir.path(),
        "typo.service",
        &format!("{HELLO}\n[X-Fleet]\nConflict=other.service\n"),
    );
    let r = esfleet(Some(&eps), &["start", &typo]).await.expect(1);
    assert!(
        r.stderr
            .contains(&format!("{typo}:8: unknown [X-Fleet] key \"Conflict\"")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Conflicts"), "{}", r.stderr);
    assert!(r.stderr.contains("    8 | Conflict=other.service"), "{}", r.stderr);

    // A file that is not there.
    let r = esfleet(Some(&eps), &["submit", "./nope.service"]).await.expect(1);
    assert!(
        r.stderr.contains("./nope.service: cannot read the unit file"),
        "{}",
        r.stderr
    );

    // Usage errors: exit 2.
    let r = esfleet(Some(&eps), &["start", "hello"]).await.expect(2);
    assert!(
        r.stderr.contains("no unit type suffix") && r.stderr.contains("hello.service"),
        "{}",
        r.stderr
    );
    let r = esfleet(Some(&eps), &["list-units", "--fields", "unit,mahcine"])
        .await
        .expect(2);
    assert!(r.stderr.contains("did you mean \"machine\"?"), "{}", r.stderr);
    let r = esfleet(Some(&eps), &["strat", "hello.service"]).await.expect(2);
    assert!(r.stderr.contains("start"), "clap suggests the verb: {}", r.stderr);
    let r = esfleet(Some(&eps), &["start", "--timeout", "soon", "a.service"])
        .await
        .expect(2);
    assert!(r.stderr.contains("write e.g. 30s"), "{}", r.stderr);
    let r = esfleet(Some(&eps), &["machine", "drain", "m1"]).await.expect(2);
    assert!(r.stderr.contains("32 lowercase hex"), "{}", r.stderr);
    let r = esfleet(Some("http://[::1"), &["list-units"]).await.expect(2);
    assert!(r.stderr.contains("is not a URL"), "{}", r.stderr);

    // Completions and the manual need no cluster.
    for shell in ["bash", "zsh", "fish"] {
        let r = esfleet(Some(&eps), &["completions", shell]).await.expect(0);
        assert!(r.stdout.contains("list-unit-files"), "{shell}");
    }
    let r = esfleet(Some(&eps), &["man"]).await.expect(0);
    assert!(r.stdout.contains(".TH esfleet 1") && r.stdout.contains("ESFLEET_ENDPOINTS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_the_cluster() {
    let c = support::cluster().await;
    let ep = c.endpoint(0);
    let dir = tempfile::tempdir().unwrap();

    // Unknown unit.
    let r = esfleet(Some(&ep), &["start", "nope.service"]).await.expect(1);
    assert!(
        r.stderr.contains("nope.service not found; submit it first"),
        "{}",
        r.stderr
    );

    // A unit no machine can take fails fast with the scheduler's reason (fleet #559).
    let _agent = FakeAgent::start(&c.endpoints(), 1, &[("zone", "a")], true).await;
    let picky = unit_file(
        dir.path(),
        "picky.service",
        &format!("{HELLO}\n[X-Fleet]\nMachineMetadata=zone=z9\n"),
    );
    let started = std::time::Instant::now();
    let r = esfleet(Some(&ep), &["start", "--timeout", "60s", &picky])
        .await
        .expect(1);
    assert!(r.stderr.contains("picky.service cannot be placed: "), "{}", r.stderr);
    assert!(
        r.stderr.contains("zone"),
        "the reason names the constraint: {}",
        r.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "did not fail fast"
    );
    let r = esfleet(
        Some(&ep),
        &["list-unit-files", "--no-legend", "--fields", "unit,target"],
    )
    .await
    .expect(0);
    assert_eq!(r.stdout, "picky.service  unplaceable\n");
    let r = esfleet(Some(&ep), &["list-unit-files"]).await.expect(0);
    assert!(r.stdout.contains("\npicky.service cannot be placed: "), "{}", r.stdout);

    // A template cannot be started.
    let tpl = unit_file(dir.path(), "web@.service", HELLO);
    esfleet(Some(&ep), &["submit", &tpl]).await.expect(0);
    let r = esfleet(Some(&ep), &["start", "web@.service"]).await.expect(1);
    assert!(
        r.stderr.contains("is a template") && r.stderr.contains("web@1.service"),
        "{}",
        r.stderr
    );

    // A machine that never reports: --timeout gives up, saying where each unit is.
    let _silent = FakeAgent::start(&c.endpoints(), 2, &[("zone", "q")], false).await;
    let quiet = unit_file(
        dir.path(),
        "quiet.service",
        &format!("{HELLO}\n[X-Fleet]\nMachineMetadata=zone=q\n"),
    );
    let r = esfleet(Some(&ep), &["start", "--timeout", "2s", &quiet])
        .await
        .expect(1);
    assert!(
        r.stderr
            .contains("gave up after 2s (--timeout); 1 unit is not there yet:"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("quiet.service: placed on 20123456..."),
        "{}",
        r.stderr
    );
    // --no-block returns at once.
    let r = esfleet(Some(&ep), &["stop", "--no-block", "quiet.service"])
        .await
        .expect(0);
    assert_eq!(r.stdout, "Triggered unit quiet.service loaded\n");

    // Changing a unit without --replace.
    let hello = unit_file(dir.path(), "hello.service", HELLO);
    esfleet(Some(&ep), &["submit", &hello]).await.expect(0);
    std::fs::write(&hello, HELLO.replace("hello", "bye")).unwrap();
    let r = esfleet(Some(&ep), &["submit", &hello]).await.expect(1);
    assert!(
        r.stderr.contains("exists with different content; use --replace"),
        "{}",
        r.stderr
    );
    // status/journal of a unit that is not placed.
    let r = esfleet(Some(&ep), &["status", "hello.service"]).await.expect(1);
    assert!(r.stderr.contains("not placed on any machine"), "{}", r.stderr);
}
