//! The real engine (issue 16): an OpenSearch 2.19 cluster (the Apache-2.0 fork of
//! Elasticsearch 7.10: same coordination, allocation awareness and REST APIs) run by
//! esfleet on seven hosts with real systemd, judged by the engine itself, not by our
//! stand-in. The engine comes from Maven Central through `scripts/es-engine` (the test's
//! only input outside this repo); every node is a generated `plain` unit, configured only by
//! the files esfleet renders.
//!
//! One boot, three zones of two hosts plus a control host without a zone:
//! 1. `esfleet es apply` → green. Every node's settings carry forced awareness over the
//!    three zones, `_cat/nodeattrs` shows each node's real zone, the elected master shows in
//!    `esfleet es status`, and every shard's three copies sit in three distinct zones.
//! 7. An index without replicas: `es restart` refuses; the host of a data node is drained:
//!    its shards move off before the node moves (within its zone), never red.
//! 2. A whole zone crashes (hosts killed, cables cut). Sampled every 500 ms from surviving
//!    nodes: never red, yellow while the zone is gone (forced awareness keeps the third
//!    copies unassigned rather than doubling up in one zone), every document still readable.
//!    The zone's hosts come back (empty disks, as a re-imaged host): green again, and no
//!    node ever ran in two places.
//!
//! 4. The elected master's host crashes: a new master is elected, the lost one is
//!    recreated in its zone and joins, it leaves the voting configuration, one cluster
//!    UUID everywhere, and every seed file follows the move.
//!
//! The cluster is secured as its operators would run it: the engine's security plugin
//! (from Maven Central, as the distribution ships it) with TLS on HTTP and transport and a
//! user whose password exists only in root-only files. Every call above (esfleet's CLI, the
//! agents' health checks, the test's own curl) goes over https with that CA and password;
//! a call without credentials gets 401, a credentials file others can read is refused.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise the test prints a skip line and passes.
//! With root tests on, a missing engine fails the test: `scripts/test` builds it first.
//! t89 applies the same cluster in nspawn containers.

use std::time::{Duration, Instant};

use esfleet_tests::engine::{
    boot_zones, check_zone_safety, cluster_toml, engine_home, sample_health, secure, tally, wait_formed, zone_of,
    Engine, Secured, SECURE_USER, ZONES,
};
use esfleet_tests::hosts::{skip_unless_root, MaxMapCount};
use esfleet_tests::realcluster::{wait_for, RealCluster, PATIENCE};
/// The zone this test loses: no coordinator lives there, so its hosts can be rebooted.
const LOST: &str = "zc";
const DOCS: usize = 200;

pub(crate) fn esfleet(c: &RealCluster, args: &[&str]) -> (bool, String) {
    let out = c.esfleet(args).unwrap();
    let text = format!("{}{}", out.stdout, out.stderr);
    println!("$ esfleet {}\n{text}", args.join(" "));
    (out.success(), text)
}

/// `es apply`, then the checks of scenario 1; returns where everything runs.
pub(crate) fn apply_and_check(c: &RealCluster, os: &Engine<'_>) -> esfleet_tests::engine::Applied {
    let t = Instant::now();
    let (ok, text) = esfleet(c, &["es", "apply", "/root/es/logs.toml", "--timeout", "120s"]);
    assert!(ok, "{text}");
    let a = wait_formed(c, os, "logs", (3, 3), (9201, 9200));
    println!("apply → six nodes joined: {:?}", t.elapsed());
    os.index_docs(&a.everyone, "docs", 3, 2, DOCS);
    os.wait_status(&a.everyone, "green", "green after indexing", Duration::from_secs(120));
    println!("apply → green with {DOCS} documents: {:?}", t.elapsed());
    assert_eq!(os.count(&a.everyone, "docs").unwrap(), DOCS as u64);
    check_zone_safety(os, &a, &ZONES, "docs");
    // Three copies over three zones: one in each.
    for z in ZONES {
        assert_eq!(a.at.values().filter(|h| zone_of(h) == z).count(), 2, "{:?}", a.at);
    }
    // The CLI reads the same cluster: OpenSearch's `cluster_manager` column names the
    // elected master.
    let (ok, text) = esfleet(c, &["es", "status", "logs"]);
    assert!(ok && text.contains("green") && text.contains("joined*"), "{text}");
    a
}

/// The engine asks who is calling, and esfleet answers only with private credentials.
fn check_security(c: &RealCluster, os: &Engine<'_>, sec: &Secured, a: &esfleet_tests::engine::Applied) {
    let (host, port) = &a.everyone[0];
    let url = format!("https://{}:{port}/_cluster/health", c.ip(host));
    let ca = sec.ca_file();
    let code = |args: &[&str]| {
        let mut all = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"];
        all.extend(args);
        let out = c.hosts().exec(&os.from, &all).unwrap();
        out.stdout.trim().to_string()
    };
    assert_eq!(code(&["--cacert", &ca, &url]), "401", "no credentials");
    assert_eq!(
        code(&["--cacert", &ca, "-u", &format!("{SECURE_USER}:wrong"), &url]),
        "401"
    );
    assert_eq!(code(&[&url.replace("https://", "http://")]), "000", "no plain http");
    assert_eq!(
        code(&["--cacert", &ca, "-u", &format!("{SECURE_USER}:{}", sec.password), &url]),
        "200"
    );
    // The CLI refuses a credentials file others can read, naming it and the fix.
    let cli = c.control_host().unwrap();
    c.write_file(
        &cli,
        "/root/es/loose.credentials",
        &format!("{SECURE_USER}:{}", sec.password),
    )
    .unwrap();
    c.hosts()
        .exec_ok(&cli, &["chmod", "0644", "/root/es/loose.credentials"])
        .unwrap();
    let (ok, text) = esfleet(
        c,
        &[
            "--es-credentials-file",
            "/root/es/loose.credentials",
            "es",
            "status",
            "logs",
        ],
    );
    assert!(
        !ok && text.contains("/root/es/loose.credentials can be read or written by others (mode 0644); chmod 600 it"),
        "{text}"
    );
    // A wrong password: the engine's 401 is shown.
    c.write_file(&cli, "/root/es/wrong.credentials", &format!("{SECURE_USER}:wrong"))
        .unwrap();
    c.hosts()
        .exec_ok(&cli, &["chmod", "0600", "/root/es/wrong.credentials"])
        .unwrap();
    let (_, text) = esfleet(
        c,
        &[
            "--es-credentials-file",
            "/root/es/wrong.credentials",
            "es",
            "status",
            "logs",
        ],
    );
    assert!(text.contains("401"), "{text}");
    // The stored cluster names the files, never the password.
    let (ok, text) = esfleet(c, &["es", "status", "logs"]);
    assert!(ok && !text.contains(&sec.password), "{text}");
    let stored = c.etcdctl(&["get", "--prefix", "/esfleet/"]).unwrap();
    assert!(
        stored.success() && stored.stdout.contains("logs.credentials"),
        "{}",
        stored.stderr
    );
    assert!(!stored.stdout.contains(&sec.password), "the password is in the store");
}

#[test]
fn a_real_opensearch_cluster_spans_zones_and_survives_losing_one() {
    if skip_unless_root("t88_real_engine::a_real_opensearch_cluster_spans_zones_and_survives_losing_one") {
        return;
    }
    let engine = engine_home();
    let _map_count = MaxMapCount::set(262_144);
    let e = engine.display();
    // Before the boot: the hosts' roots are overlays of this machine's.
    let sec = secure(&engine).unwrap();
    let c = boot_zones(&cluster_toml(
        &format!(
            "runtime = \"plain\"\nexec = \"{e}/bin/opensearch\"\n{}",
            sec.toml_lines()
        ),
        &Secured::settings(),
    ))
    .unwrap();
    let os = Engine {
        c: &c,
        from: "ctl".into(),
        tls: Some((sec.ca_file(), format!("{SECURE_USER}:{}", sec.password))),
    };

    // 1. Apply: placed, formed, green, zone-safe (over https, with credentials).
    let a = apply_and_check(&c, &os);
    check_security(&c, &os, &sec, &a);

    // 7. An index without replicas: es restart refuses (its shards would be unavailable
    //    while their node restarts); a drain of a data node's host moves its shards off
    //    first: never red, every document readable, the node recreated in its zone.
    os.index_docs(&a.everyone, "solo", 3, 0, 50);
    os.wait_status(
        &a.everyone,
        "green",
        "green with the unreplicated index",
        Duration::from_secs(60),
    );
    let (ok, text) = esfleet(&c, &["es", "restart", "logs", "--timeout", "60s"]);
    assert!(!ok && text.contains("solo") && text.contains("no replica"), "{text}");
    let d1 = "logs-d@1.service";
    let drained = a.at[d1].clone();
    let machine = c.machine_id(&drained).to_string();
    let t = Instant::now();
    let (out, statuses) = sample_health(&os, &a.everyone, Duration::from_millis(500), || {
        let ctl = c.control_host().unwrap();
        let args = [
            "machine",
            "drain",
            "--timeout",
            "300s",
            "--es-timeout",
            "300s",
            machine.as_str(),
        ];
        c.esfleet_within(&ctl, Duration::from_secs(600), &args).unwrap()
    });
    let text = format!("{}{}", out.stdout, out.stderr);
    println!("$ esfleet machine drain {machine}\n{text}");
    assert!(out.success(), "{text}");
    println!(
        "drain of {drained} ({d1}): {:?}; health: {}",
        t.elapsed(),
        tally(&statuses)
    );
    assert!(
        !statuses.iter().any(|s| s == "red"),
        "red during the drain: {statuses:?}"
    );
    let moved = c.wait_units_running(&[d1], PATIENCE).unwrap()[d1].clone();
    assert_ne!(moved, drained);
    assert_eq!(zone_of(&moved), zone_of(&drained), "{d1} left its home zone");
    let a = wait_formed(&c, &os, "logs", (3, 3), (9201, 9200));
    os.wait_status(&a.everyone, "green", "green after the drain", Duration::from_secs(120));
    assert_eq!(os.count(&a.everyone, "docs").unwrap(), DOCS as u64);
    assert_eq!(os.count(&a.everyone, "solo").unwrap(), 50);
    let settings = os
        .any(&a.everyone, "GET", "/_cluster/settings?flat_settings=true", None)
        .unwrap();
    assert!(
        settings["persistent"]
            .get("cluster.routing.allocation.exclude._id")
            .is_none(),
        "the drain left its exclusion: {settings}"
    );
    c.esfleet_ok(&["machine", "undrain", &machine]).unwrap();
    os.any(&a.everyone, "DELETE", "/solo", None).unwrap();

    // 2. Lose a whole zone.
    let lost: Vec<String> = c.names().into_iter().filter(|h| zone_of(h) == LOST).collect();
    let survivors: Vec<_> = a.everyone.iter().filter(|(h, _)| zone_of(h) != LOST).cloned().collect();
    let mut counts = Vec::new();
    let ((), statuses) = sample_health(&os, &survivors, Duration::from_millis(500), || {
        let t = Instant::now();
        for h in &lost {
            c.crash(h).unwrap();
        }
        // Yellow while the zone is gone: the third copies have nowhere to go.
        os.wait_status(
            &survivors,
            "yellow",
            "yellow with the zone gone",
            Duration::from_secs(120),
        );
        println!("zone {LOST} lost → yellow: {:?}", t.elapsed());
        counts.push(os.count(&survivors, "docs").unwrap());
        // It stays yellow (never green by crowding a zone) while the zone is away.
        std::thread::sleep(Duration::from_secs(10));
        assert_eq!(os.health(&survivors), "yellow");
        counts.push(os.count(&survivors, "docs").unwrap());

        let t = Instant::now();
        for h in &lost {
            c.reboot(h).unwrap();
        }
        os.wait_status(
            &survivors,
            "green",
            "green after the zone returned",
            Duration::from_secs(240),
        );
        println!("zone {LOST} back → green: {:?}", t.elapsed());
        counts.push(os.count(&survivors, "docs").unwrap());
    });
    println!("health during the zone loss: {}", tally(&statuses));
    assert!(
        !statuses.iter().any(|s| s == "red"),
        "red during the zone loss: {statuses:?}"
    );
    assert!(statuses.iter().any(|s| s == "yellow"), "{statuses:?}");
    assert_eq!(counts, vec![DOCS as u64; 3], "documents lost");

    // The zone's nodes run again, each in exactly one place, masters one per zone.
    let units: Vec<&str> = a.at.keys().map(String::as_str).collect();
    let back = c.wait_units_running(&units, PATIENCE).unwrap();
    for u in &units {
        let hosts = c.where_active(u).unwrap();
        assert_eq!(hosts.len(), 1, "{u} runs on {hosts:?}");
    }
    let master_zones: std::collections::BTreeSet<String> = back
        .iter()
        .filter(|(u, _)| u.contains("-m@"))
        .map(|(_, h)| zone_of(h))
        .collect();
    assert_eq!(master_zones.len(), 3, "one master per zone again: {back:?}");

    // 4. The elected master's host is lost: another master is elected, the lost one is
    //    recreated (same name, new node id) on its zone's other host and joins, the voting
    //    configuration no longer holds the lost node, every node has one cluster UUID, and
    //    every node's seed file names the recreated master, not the lost one.
    let a = wait_formed(&c, &os, "logs", (3, 3), (9201, 9200));
    os.wait_status(
        &a.everyone,
        "green",
        "green before the master loss",
        Duration::from_secs(120),
    );
    let nodes = os.any(&a.everyone, "GET", "/_cat/nodes?format=json", None).unwrap();
    let elected = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["cluster_manager"] == "*")
        .and_then(|n| n["name"].as_str())
        .expect("an elected master")
        .to_string();
    let host = a.host_of_node(&elected).unwrap();
    let old_id = os
        .node_ids(&a.everyone)
        .unwrap()
        .into_iter()
        .find(|(_, n)| *n == elected)
        .map(|(id, _)| id)
        .unwrap();
    let survivors: Vec<_> = a.everyone.iter().filter(|(h, _)| *h != host).cloned().collect();
    let t = Instant::now();
    let ((), statuses) = sample_health(&os, &survivors, Duration::from_millis(500), || {
        c.crash(&host).unwrap();
        os.wait_recreated(&survivors, &elected, &old_id, Duration::from_secs(240))
            .unwrap();
        os.wait_status(
            &survivors,
            "green",
            "green after the master loss",
            Duration::from_secs(240),
        );
    });
    println!(
        "elected master {elected} lost with {host} → replaced and green: {:?}; health: {}",
        t.elapsed(),
        tally(&statuses)
    );
    assert!(
        !statuses.iter().any(|s| s == "red"),
        "red during the master loss: {statuses:?}"
    );
    let a = wait_formed(&c, &os, "logs", (3, 3), (9201, 9200));
    let moved = a.host_of_node(&elected).unwrap();
    assert_eq!(zone_of(&moved), zone_of(&host), "{elected} left its zone");
    let coord = os
        .any(
            &a.everyone,
            "GET",
            "/_cluster/state/metadata?filter_path=metadata.cluster_coordination",
            None,
        )
        .unwrap();
    let voters = coord["metadata"]["cluster_coordination"]["last_committed_config"].to_string();
    assert!(
        !voters.contains(&old_id),
        "the lost master {old_id} still votes: {voters}"
    );
    let uuids: std::collections::BTreeSet<String> = a
        .everyone
        .iter()
        .map(|n| {
            // A node that just joined serves requests once it has read the security
            // plugin's configuration from the cluster (until then: 503, "not initialized").
            wait_for(
                &format!("{n:?} answers GET /"),
                Duration::from_secs(60),
                Duration::from_millis(500),
                || Ok(os.call(n, "GET", "/", None).ok()),
            )
            .unwrap()["cluster_uuid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(uuids.len(), 1, "more than one cluster: {uuids:?}");
    for (unit, h) in &a.at {
        let seeds = c
            .hosts()
            .exec_ok(h, &["cat", &format!("/etc/esfleet/units/{unit}/unicast_hosts.txt")])
            .unwrap();
        assert!(seeds.contains(&format!("{}:9301", c.ip(&moved))), "{unit}: {seeds}");
        assert!(!seeds.contains(&format!("{}:9301", c.ip(&host))), "{unit}: {seeds}");
    }
    c.teardown().unwrap();
}
