//! The nspawn runtime for real (issue 16): the same OpenSearch cluster as t88, each node in
//! its own systemd-nspawn container made from the image `scripts/es-image` builds (Debian
//! 12 minbase, a JRE, the engine), nested in the test hosts' own systemd. Before this test
//! the nspawn units had never started a container.
//!
//! 1. `es apply` → green, zone-safe (as t88: forced awareness, zone attributes, copies in
//!    distinct zones); each node is a registered machine named after it, running the
//!    engine as the image's `opensearch` user, on a data directory of this placement.
//! 8. (first) Bad input refused by `es apply`, nothing stored or started: an image
//!    without the engine, a heap larger than half the unit's memory.
//! 6. `es scale-down --data 2` refused by the replicas rule (3 copies need > 3 data nodes).
//! 2. `es restart` of every node: each container is halted (its stub init hands the engine
//!    SIGTERM) and started again from its machine directory; never red, documents intact.
//! 3. One data host lost (its cable pulled, not its zone): the node is recreated on the
//!    zone's other host with an empty data directory, joins, green, never red. When the
//!    cable is back, the old placement's data directory is removed from the returned host
//!    and the node runs in one place only.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); a missing image fails the test (`scripts/test`
//! builds it first).

use std::time::{Duration, Instant};

use esfleet_tests::engine::{
    boot_zones, cluster_toml, image, rolling_restart, sample_health, tally, zone_of, Endpoint, Engine,
};
use esfleet_tests::hosts::{skip_unless_root, MaxMapCount};

use esfleet_tests::realcluster::wait_for;

use super::t88_real_engine::apply_and_check;

#[test]
fn a_real_opensearch_cluster_runs_in_nspawn_containers() {
    if skip_unless_root("t89_nspawn_engine::a_real_opensearch_cluster_runs_in_nspawn_containers") {
        return;
    }
    let image = image();
    let _map_count = MaxMapCount::set(262_144);
    let nspawn = format!("runtime = \"nspawn\"\nimage = \"{}\"", image.display());
    let c = boot_zones(&cluster_toml(&nspawn, "")).unwrap();
    let os = Engine {
        tls: None,
        c: &c,
        from: "ctl".into(),
    };

    // 8. Bad input, refused by es apply before anything is stored or started: an image
    //    without the engine, and a heap larger than half the unit's memory.
    let ctl = c.control_host().unwrap();
    let bad = [
        (
            cluster_toml("runtime = \"nspawn\"\nimage = \"/var/cache/esfleet/engine\"", ""),
            "has no /usr/share/opensearch/bin/opensearch",
        ),
        (
            cluster_toml(&nspawn, "").replace("heap = \"384m\"", "heap = \"900m\""),
            "heap 900m is more than half of memory 1g",
        ),
    ];
    for (toml, want) in bad {
        c.write_file(&ctl, "/root/es/bad.toml", &toml).unwrap();
        let out = c
            .esfleet(&["es", "apply", "/root/es/bad.toml", "--timeout", "30s"])
            .unwrap();
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(!out.success() && text.contains(want), "{text}");
        println!("refused as it should be: {}", text.trim());
    }
    let listed = c.esfleet_ok(&["list-unit-files", "--no-legend"]).unwrap();
    assert!(!listed.contains("logs-"), "a refused apply submitted units: {listed}");

    // 1. Apply: the containers start, the cluster forms, green and zone-safe.
    let a = apply_and_check(&c, &os);
    let mut per_host: std::collections::BTreeMap<&str, usize> = Default::default();
    for (unit, host) in &a.at {
        *per_host.entry(host).or_default() += 1;
        // A registered machine named after the node, made from the image.
        let node = unit.replace('@', "").replace(".service", "");
        let state = c
            .hosts()
            .exec_ok(host, &["machinectl", "show", "--property=State", "--value", &node])
            .unwrap();
        assert_eq!(state.trim(), "running", "{unit} on {host}");
        c.hosts()
            .exec_ok(
                host,
                &[
                    "test",
                    "-x",
                    &format!("/var/lib/machines/{node}/usr/share/opensearch/bin/opensearch"),
                ],
            )
            .unwrap();
    }
    // Each host runs one engine process per node placed there, none of them as root.
    for (host, n) in per_host {
        let ps = c.hosts().exec_ok(host, &["ps", "-eo", "uid=,args="]).unwrap();
        let engines: Vec<&str> = ps
            .lines()
            .filter(|l| l.contains("dev.esfleet.engine.Launcher"))
            .collect();
        assert_eq!(engines.len(), n, "{host}: {engines:?}");
        for l in engines {
            assert!(
                !l.trim_start().starts_with("0 "),
                "{host}: the engine runs as root: {l}"
            );
        }
    }

    // 6. (the refusal) Three copies of each shard need more than three data nodes to lose
    //    one: es scale-down --data 2 is refused by the replicas rule, nothing removed.
    let out = c
        .esfleet(&["es", "scale-down", "logs", "--data", "2", "--timeout", "60s"])
        .unwrap();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.success() && text.contains("replica"), "{text}");
    assert_eq!(c.live_copies(&["logs-d@*"]).unwrap().len(), 3, "{text}");

    // 2. A rolling restart of every container.
    let before: Vec<u64> =
        a.at.iter()
            .map(|(u, h)| c.unit_times(h, u).unwrap().active_enter_us)
            .collect();
    rolling_restart(&c, &os, &a.everyone, "6 nspawn nodes", 200);
    // Every node was restarted, and each stop was the engine's own clean shutdown: the
    // stub init handed it SIGTERM (a SIGKILL leaves no "closed" line).
    for ((u, h), was) in a.at.iter().zip(before) {
        assert!(
            c.unit_times(h, u).unwrap().active_enter_us > was,
            "{u} was not restarted"
        );
        let journal = c.unit_journal(h, u).unwrap();
        assert!(
            journal
                .iter()
                .any(|(_, l)| l.contains("[o.o.n.Node") && l.ends_with("] closed")),
            "{u} on {h}: the engine never closed cleanly"
        );
    }

    // 3. A data host lost: zone zc's data node (no coordinator lives in zc, so the cut
    //    costs the store nothing).
    let unit = "logs-d@3.service";
    let lost = a.at[unit].clone();
    assert_eq!(zone_of(&lost), "zc");
    let node_dir = "/var/lib/esfleet/es/logs-d3";
    // The placements' directories under the node's; none when the node's directory is
    // absent. A host that cannot be asked is an error, never "no directories".
    let generations = |host: &str| -> anyhow::Result<Vec<String>> {
        let script = format!("if [ -d {node_dir} ]; then ls -1 {node_dir}; fi");
        let out = c.hosts().exec_ok(host, &["sh", "-c", &script])?;
        Ok(out.lines().map(str::to_string).collect())
    };
    let old_generations = generations(&lost).unwrap();
    assert_eq!(old_generations.len(), 1, "{old_generations:?}");
    let old_id = os
        .node_ids(&a.everyone)
        .unwrap()
        .into_iter()
        .find(|(_, n)| n == "logs-d3")
        .unwrap()
        .0;
    let survivors: Vec<Endpoint> = a.everyone.iter().filter(|(h, _)| *h != lost).cloned().collect();
    let t = Instant::now();
    let (_, statuses) = sample_health(&os, &survivors, Duration::from_millis(500), || {
        c.partition(&lost).unwrap();
        os.wait_recreated(&survivors, "logs-d3", &old_id, Duration::from_secs(240))
            .unwrap();
        println!("data host {lost} cut → logs-d3 recreated and joined: {:?}", t.elapsed());
        // Node names need not be unique: the replacement can join while the cut-off node
        // is still a member (until the master's follower checks give up on it), and the
        // cluster is green only once the old node's copies live on the new one.
        wait_for(
            "the cut-off logs-d3 removed from the cluster",
            Duration::from_secs(240),
            Duration::from_millis(500),
            || Ok((!os.node_ids(&survivors)?.iter().any(|(id, _)| *id == old_id)).then_some(())),
        )
        .unwrap();
        println!(
            "data host {lost} cut → the old logs-d3 left the cluster: {:?}",
            t.elapsed()
        );
        os.wait_status(
            &survivors,
            "green",
            "green with the replacement",
            Duration::from_secs(240),
        );
    });
    println!(
        "data host {lost} cut → green: {:?}; health: {}",
        t.elapsed(),
        tally(&statuses)
    );
    assert!(
        !statuses.iter().any(|s| s == "red"),
        "red after losing a data host: {statuses:?}"
    );
    assert_eq!(os.count(&survivors, "docs").unwrap(), 200);
    let copies = c.live_copies(&[unit]).unwrap();
    let now_at = copies.get(unit).cloned().unwrap_or_default();
    assert!(
        now_at.len() == 1 && now_at[0] != lost && zone_of(&now_at[0]) == "zc",
        "{unit} should run once, on zc's other host: {now_at:?}"
    );
    let fresh = generations(&now_at[0]).unwrap();
    assert!(
        !fresh.is_empty() && fresh.iter().all(|g| !old_generations.contains(g)),
        "the replacement's data directory is of a new placement: {fresh:?} vs {old_generations:?}"
    );
    // The cable comes back: the returned agent removes the old placement's directory.
    let t = Instant::now();
    c.heal(&lost).unwrap();
    wait_for(
        "the old data directory removed from the returned host",
        Duration::from_secs(180),
        Duration::from_secs(1),
        || {
            Ok(generations(&lost)?
                .iter()
                .all(|g| !old_generations.contains(g))
                .then_some(()))
        },
    )
    .unwrap();
    println!("{lost} back → old data directory removed: {:?}", t.elapsed());
    let copies = c.live_copies(&[unit]).unwrap();
    assert_eq!(copies.get(unit).map(Vec::len), Some(1), "{copies:?}");
    os.wait_status(
        &a.everyone,
        "green",
        "green with every host back",
        Duration::from_secs(120),
    );
    c.teardown().unwrap();
}
