//! `esfleet es ...` with the built binary: parse errors with file:line (no cluster needed),
//! and `es apply` against a real coordinator with simulated machines: the record stored
//! with zones from the machines, templates submitted, instances launched; counts that go
//! down are kept and the operator is pointed at `es scale-down`; changed zones refused;
//! `es status` without a reachable Elasticsearch; `es delete` refused while nodes exist.

mod support;

use esfleet_core::es::ClusterRecord;
use support::{esfleet, FakeAgent};

const LOGS: &str = "name = \"logs\"\n[master]\ncount = 1\nmemory = \"2g\"\n[data]\ncount = 2\nmemory = \"4g\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cluster_toml_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.toml");
    std::fs::write(&path, "name = \"logs\"\n[master]\ncont = 3\n").unwrap();
    let p = path.to_str().unwrap();
    // Checked before any coordinator is asked: a dead endpoint does not matter.
    let r = esfleet(Some("http://127.0.0.1:1"), &["es", "apply", p]).await.expect(1);
    assert!(
        r.stderr.contains(&format!("{p}:3:1: unknown key \"cont\" in [master]")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("count"), "the nearest key is suggested: {}", r.stderr);

    std::fs::write(
        &path,
        "name = \"logs\"\n[master]\ncount = 1\n[data]\ncount = 2\nheap = \"40g\"\nmemory = \"100g\"\n",
    )
    .unwrap();
    let r = esfleet(Some("http://127.0.0.1:1"), &["es", "apply", p]).await.expect(1);
    assert!(
        r.stderr.contains(&format!("{p}:6:")) && r.stderr.contains("heap"),
        "{}",
        r.stderr
    );

    let r = esfleet(Some("http://127.0.0.1:1"), &["es", "apply", "/nonexistent/x.toml"])
        .await
        .expect(1);
    assert!(r.stderr.contains("/nonexistent/x.toml: cannot read"), "{}", r.stderr);

    let r = esfleet(Some("http://127.0.0.1:1"), &["es", "scale-down", "logs"])
        .await
        .expect(2);
    assert!(
        r.stderr.contains("--data") || r.stderr.contains("--masters"),
        "{}",
        r.stderr
    );
}

async fn stored(ep: &str) -> ClusterRecord {
    let mut c = esfleet_tests::ProcessCluster::connect(&[ep.to_string()]).await;
    let resp = c.get(esfleet_core::keys::es_cluster("logs"), None).await.unwrap();
    serde_json::from_slice(resp.kvs()[0].value()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_stores_the_record_submits_templates_and_starts_the_nodes() {
    let c = support::cluster().await;
    let ep = c.endpoint(0);
    let _agents = [
        FakeAgent::start(&c.endpoints(), 1, &[("zone", "b")], false).await,
        FakeAgent::start(&c.endpoints(), 2, &[("zone", "a")], false).await,
        FakeAgent::start(&c.endpoints(), 3, &[("zone", "c")], false).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.toml");
    std::fs::write(&path, LOGS).unwrap();
    let p = path.to_str().unwrap();

    let r = esfleet(Some(&ep), &["es", "apply", "--no-block", p]).await.expect(0);
    assert!(
        r.stdout
            .starts_with("Cluster logs defined (zones a, b, c from the machines' zone metadata)\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Template logs-m@.service submitted\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Template logs-d@.service submitted\n"),
        "{}",
        r.stdout
    );
    for u in ["logs-m@1.service", "logs-d@1.service", "logs-d@2.service"] {
        assert!(
            r.stdout.contains(&format!("Triggered unit {u} launched\n")),
            "{}",
            r.stdout
        );
    }
    let rec = stored(&ep).await;
    assert_eq!(rec.spec.zones, ["a", "b", "c"]);
    assert_eq!((rec.spec.master.count, rec.spec.data.count), (1, 2));
    assert!(!rec.bootstrapped);

    let r = esfleet(
        Some(&ep),
        &["list-unit-files", "--no-legend", "--fields", "unit,dstate"],
    )
    .await
    .expect(0);
    assert_eq!(
        r.stdout,
        "logs-d@.service   inactive\nlogs-d@1.service  launched\nlogs-d@2.service  launched\n\
         logs-m@.service   inactive\nlogs-m@1.service  launched\n"
    );

    // Again, unchanged.
    let r = esfleet(Some(&ep), &["es", "apply", "--no-block", p]).await.expect(0);
    assert!(
        r.stdout
            .starts_with("Cluster logs unchanged (zones a, b, c from the stored definition)\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Template logs-d@.service unchanged\n"),
        "{}",
        r.stdout
    );

    // Fewer data nodes: nothing removed, the operator is told how.
    std::fs::write(&path, LOGS.replace("count = 2", "count = 1")).unwrap();
    let r = esfleet(Some(&ep), &["es", "apply", "--no-block", p]).await.expect(0);
    assert!(
        r.stdout
            .contains("logs has 2 data nodes and cluster.toml asks for 1: nothing was removed")
            && r.stdout.contains("esfleet es scale-down logs --data 1"),
        "{}",
        r.stdout
    );
    assert_eq!(stored(&ep).await.spec.data.count, 2);

    // Zones are fixed once the cluster exists.
    std::fs::write(&path, format!("zones = [\"a\", \"b\"]\n{LOGS}")).unwrap();
    let r = esfleet(Some(&ep), &["es", "apply", "--no-block", p]).await.expect(1);
    assert!(
        r.stderr.contains("Zones are fixed once a cluster exists"),
        "{}",
        r.stderr
    );

    // Status without a reachable Elasticsearch (the simulated machines run nothing).
    let r = esfleet(Some(&ep), &["es", "status", "logs", "--es-request-timeout", "1s"])
        .await
        .expect(0);
    assert!(r.stdout.starts_with("Cluster logs\nUNIT"), "{}", r.stdout);
    assert!(r.stdout.contains("logs-d@2.service  logs-d2  data"), "{}", r.stdout);
    assert!(r.stdout.contains("Elasticsearch: unreachable"), "{}", r.stdout);

    let r = esfleet(Some(&ep), &["es", "delete", "logs"]).await.expect(1);
    assert!(r.stderr.contains("still has 3 node units submitted"), "{}", r.stderr);
    let r = esfleet(Some(&ep), &["es", "status", "nope"]).await.expect(1);
    assert!(r.stderr.contains("no Elasticsearch cluster nope"), "{}", r.stderr);
}
