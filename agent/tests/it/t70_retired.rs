//! Data a lost machine's placements left (`retired/<machine>/<unit>`): kept while the
//! record is not released; removed once it is and the machine's agent is back (and the unit
//! no longer runs there), then the record deleted; refused, and the record kept for an operator, when the path is not safely inside
//! `--data-root`; left alone for a unit scheduled there with that generation. Every test
//! removes only under a temporary data root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use esfleet_agent::client::Client;
use esfleet_agent::fake::Op;
use esfleet_core::keys;
use esfleet_core::model::RetiredRecord;
use esfleet_core::options::Fence;

use crate::fixtures::*;

/// Writes a released record (the node is healthy elsewhere again).
async fn tombstone(c: &mut Client, machine: &str, unit: &str, generation: u64, paths: &[&Path]) -> String {
    tombstone_as(c, machine, unit, generation, paths, true).await
}

async fn tombstone_as(
    c: &mut Client,
    machine: &str,
    unit: &str,
    generation: u64,
    paths: &[&Path],
    released: bool,
) -> String {
    let rec = RetiredRecord {
        unit: n(unit),
        generation,
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        cluster: "logs".into(),
        released,
    };
    let key = keys::retired(machine, &n(unit));
    put_raw(c, &key, &serde_json::to_vec(&rec).unwrap()).await;
    key
}

/// A data directory with something in it, as Elasticsearch leaves one.
fn data_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path.join("nodes/0/indices")).unwrap();
    std::fs::write(path.join("nodes/0/indices/segment"), "data").unwrap();
    path.to_path_buf()
}

async fn wait_deleted(cluster: &Cluster, key: &str) {
    eventually(&format!("{key} deleted"), || {
        let mut c = cluster.client();
        let key = key.to_string();
        async move { get(&mut c, &key).await.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_machine_removes_its_retired_data_once_the_unit_is_gone() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let proxy = Proxy::start(cluster.members[0].client_addr).await;
    let id = machine_id(70);
    let other = machine_id(71);
    let cfg = esfleet_agent::config::Config {
        data_root: root.clone(),
        ..agent_config(vec![proxy.url()], &id, fast_timing())
    };
    let (a, fake) = agent(cfg);
    let mut e = entry("logs-d@1.service", SIMPLE, Fence::Stop);
    e.generation = 5;
    schedule(&mut c, &id, &e).await;
    let old = data_dir(&root.join("es/logs-d1/5"));
    std::fs::create_dir_all(root.join("es/logs-d1/logs")).unwrap();
    eventually("running", || {
        let fake = fake.clone();
        async move { (live(&fake, "logs-d@1.service").await.0 == "active").then_some(()) }
    })
    .await;
    let epoch = a.status.borrow().epoch;

    // The machine is cut off until its record is gone; meanwhile the scheduler (played by
    // the test) moves the node away and leaves a tombstone. Another machine's tombstone is
    // not this agent's business.
    proxy.cut();
    eventually("the machine record expired", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move { machine(&mut c, &id).await.is_none().then_some(()) }
    })
    .await;
    unschedule(&mut c, &id, "logs-d@1.service").await;
    // Not released yet: the node is not healthy elsewhere yet.
    let key = tombstone_as(&mut c, &id, "logs-d@1.service", 5, &[&old], false).await;
    let theirs_dir = data_dir(&root.join("es/logs-d2/6"));
    let theirs = tombstone(&mut c, &other, "logs-d@2.service", 6, &[&theirs_dir]).await;
    // The unit's removal fails a few times: its data stays while it is installed.
    for _ in 0..3 {
        fake.fail_next(Op::Uninstall, "injected");
    }
    proxy.restore();

    while fake.file(&n("logs-d@1.service")).is_some() {
        assert!(
            old.join("nodes/0/indices/segment").exists(),
            "removed while the unit is installed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Passes go on (1 s apart here) and read the record again each time; it stays, and so
    // does the data, until the scheduler releases it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        old.join("nodes/0/indices/segment").exists(),
        "removed before its release"
    );
    assert!(get(&mut c, &key).await.is_some(), "the held record stays");
    tombstone_as(&mut c, &id, "logs-d@1.service", 5, &[&old], true).await;
    wait_deleted(&cluster, &key).await;
    assert!(a.status.borrow().epoch > epoch, "registered again");
    assert!(!old.exists(), "the retired generation's directory is gone");
    assert!(
        root.join("es/logs-d1/logs").is_dir(),
        "only the generation's directory goes"
    );
    assert!(theirs_dir.exists(), "another machine's tombstone is not acted on");
    assert!(get(&mut c, &theirs).await.is_some());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_and_their_records_kept() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let outside = tmp.path().join("outside");
    let cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(72);

    let escaped = data_dir(&outside.join("7"));
    let dotdot = root.join("es/logs-d1/../../../outside/7");
    let beyond = data_dir(&outside.join("8"));
    let linked = data_dir(&outside.join("9"));
    std::fs::create_dir_all(root.join("es")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("es/link")).unwrap();
    let through_link = root.join("es/link/9");
    let last_link_target = data_dir(&outside.join("10"));
    std::fs::create_dir_all(root.join("es/logs-d4")).unwrap();
    std::os::unix::fs::symlink(&last_link_target, root.join("es/logs-d4/10")).unwrap();
    let named = data_dir(&root.join("es/logs-d5/data"));
    let the_root = root.clone();
    let good = data_dir(&root.join("es/zz1/12"));

    let mut kept = vec![
        tombstone(&mut c, &id, "a@1.service", 7, &[&dotdot]).await,
        tombstone(&mut c, &id, "b@1.service", 8, &[&beyond]).await,
        tombstone(&mut c, &id, "c@1.service", 9, &[&through_link]).await,
        tombstone(&mut c, &id, "d@1.service", 10, &[&root.join("es/logs-d4/10")]).await,
        tombstone(&mut c, &id, "e@1.service", 11, &[&named]).await,
        tombstone(&mut c, &id, "f@1.service", 11, &[&the_root]).await,
        // A record whose path does not end in its own generation.
        tombstone(&mut c, &id, "g@1.service", 3, &[&root.join("es/zz1/12")]).await,
    ];
    // A record naming another unit than its key, and one that is not a record at all.
    let mismatched = keys::retired(&id, &n("h@1.service"));
    let rec = RetiredRecord {
        unit: n("zz@1.service"),
        generation: 12,
        paths: vec![good.display().to_string()],
        cluster: "logs".into(),
        released: true,
    };
    put_raw(&mut c, &mismatched, &serde_json::to_vec(&rec).unwrap()).await;
    let garbage = keys::retired(&id, &n("i@1.service"));
    put_raw(&mut c, &garbage, b"{not json").await;
    kept.extend([mismatched, garbage]);
    // Last in key order: once it is handled, so are the others.
    let ok = tombstone(&mut c, &id, "zz@1.service", 12, &[&good]).await;

    let cfg = esfleet_agent::config::Config {
        data_root: root.clone(),
        ..agent_config(cluster.endpoints(), &id, fast_timing())
    };
    let (a, _fake) = agent(cfg);
    wait_deleted(&cluster, &ok).await;
    assert!(!good.exists());
    for key in &kept {
        assert!(get(&mut c, key).await.is_some(), "{key} kept for an operator");
    }
    for dir in [&escaped, &beyond, &linked, &last_link_target, &named] {
        assert!(
            dir.join("nodes/0/indices/segment").exists(),
            "{} untouched",
            dir.display()
        );
    }
    assert!(root.join("es/logs-d4/10").is_symlink());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_unit_scheduled_here_with_its_generation_is_left_alone() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(73);

    // Scheduled here with the record's generation: data and record stay.
    let mut e = entry("logs-d@1.service", SIMPLE, Fence::Stop);
    e.generation = 5;
    schedule(&mut c, &id, &e).await;
    let here = data_dir(&root.join("es/logs-d1/5"));
    let same = tombstone(&mut c, &id, "logs-d@1.service", 5, &[&here]).await;
    // Scheduled here with a newer generation: the old generation's directory goes.
    let mut e = entry("logs-d@2.service", SIMPLE, Fence::Stop);
    e.generation = 9;
    e.files = [(
        "elasticsearch.yml".to_string(),
        format!("path.data: \"{}\"\n", root.join("es/logs-d2/9").display()),
    )]
    .into();
    schedule(&mut c, &id, &e).await;
    let live_dir = data_dir(&root.join("es/logs-d2/9"));
    let older = data_dir(&root.join("es/logs-d2/4"));
    let moved = tombstone(&mut c, &id, "logs-d@2.service", 4, &[&older]).await;
    // A record naming the data directory a scheduled unit uses (path.data): refused.
    let other = tombstone(&mut c, &id, "logs-d@3.service", 9, &[&live_dir]).await;
    let last = data_dir(&root.join("es/zz1/1"));
    let ok = tombstone(&mut c, &id, "zz@1.service", 1, &[&last]).await;

    let cfg = esfleet_agent::config::Config {
        data_root: root.clone(),
        config_root: tmp.path().join("units"),
        ..agent_config(cluster.endpoints(), &id, fast_timing())
    };
    let (a, fake) = agent(cfg);
    wait_deleted(&cluster, &ok).await;
    wait_deleted(&cluster, &moved).await;
    assert!(!older.exists() && !last.exists());
    assert!(here.join("nodes/0/indices/segment").exists());
    assert!(live_dir.join("nodes/0/indices/segment").exists());
    assert!(get(&mut c, &same).await.is_some());
    assert!(get(&mut c, &other).await.is_some());
    assert_eq!(live(&fake, "logs-d@2.service").await.0, "active");
    a.stop().await;
}
