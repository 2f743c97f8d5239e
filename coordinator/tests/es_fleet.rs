//! The Fleet service's Elasticsearch cluster RPCs (ApplyEsCluster, GetEsCluster,
//! ListEsClusters, DeleteEsCluster) on an in-process one-member cluster.

use std::time::Duration;

use esfleet_coordinator::config::Flags;
use esfleet_coordinator::server::{self, Running};
use esfleet_core::es::{parse_spec, templates, ClusterRecord, Runtime};
use esfleet_core::keys;
use esfleet_proto::etcdserverpb::{self as etcd, kv_client::KvClient};
use esfleet_proto::fleet::{self as pb, fleet_client::FleetClient};
use tonic::transport::Channel;
use tonic::Code;

struct Member {
    _running: Running,
    channel: Channel,
    _dir: tempfile::TempDir,
}

fn config(args: &[&str]) -> esfleet_coordinator::config::Config {
    use clap::Parser;
    let mut argv = vec!["esfleet-coordinator"];
    argv.extend_from_slice(args);
    Flags::try_parse_from(argv).unwrap().validate().unwrap()
}

async fn member() -> Member {
    let dir = tempfile::tempdir().unwrap();
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client_url = format!("http://{}", client.local_addr().unwrap());
    let peer_url = format!("http://{}", peer.local_addr().unwrap());
    let cfg = config(&[
        "--name",
        "n1",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--heartbeat-interval",
        "20",
        "--election-timeout",
        "200",
    ]);
    let running = server::start(cfg, client, peer).await.unwrap();
    let channel = Channel::from_shared(client_url).unwrap().connect().await.unwrap();
    // Wait until the member serves (it elects itself).
    let mut fleet = FleetClient::new(channel.clone());
    for _ in 0..200 {
        if fleet.list_es_clusters(pb::ListEsClustersRequest {}).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Member {
        _running: running,
        channel,
        _dir: dir,
    }
}

fn record(toml: &str) -> ClusterRecord {
    ClusterRecord {
        spec: parse_spec(toml).unwrap(),
        bootstrapped: false,
    }
}

const LOGS: &str = "name = \"logs\"\nzones = [\"a\", \"b\", \"c\"]\n[master]\ncount = 3\nmemory = \"2g\"\n[data]\ncount = 3\nmemory = \"4g\"\n";

/// Another cluster, on ports of its own (master 9211/9311, data 9210/9310; no coordinating
/// nodes, so its coordinating ports stay at the defaults 9202/9302).
const METRICS: &str = "name = \"metrics\"\nzones = [\"a\", \"b\", \"c\"]\n\
    [master]\ncount = 3\nmemory = \"2g\"\nhttp_port = 9211\ntransport_port = 9311\n\
    [data]\ncount = 3\nmemory = \"4g\"\nhttp_port = 9210\ntransport_port = 9310\n";

fn apply_req(rec: &ClusterRecord) -> pb::ApplyEsClusterRequest {
    pb::ApplyEsClusterRequest {
        record_json: serde_json::to_string(rec).unwrap(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_list_and_the_fields_that_never_change() {
    let m = member().await;
    let mut f = FleetClient::new(m.channel.clone());
    let rec = record(LOGS);

    let r = f.apply_es_cluster(apply_req(&rec)).await.unwrap().into_inner();
    assert!(r.created && r.changed);
    let stored = r.cluster.unwrap();
    assert_eq!(stored.name, "logs");
    let first_rev = stored.mod_revision;
    assert!(first_rev > 0);

    // The same record again: nothing written.
    let r = f.apply_es_cluster(apply_req(&rec)).await.unwrap().into_inner();
    assert!(!r.created && !r.changed);
    assert_eq!(r.cluster.unwrap().mod_revision, first_rev);

    // Stored where the scheduler reads it, as a ClusterRecord.
    let kv = KvClient::new(m.channel.clone())
        .range(etcd::RangeRequest {
            key: keys::es_cluster("logs").into_bytes().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let back: ClusterRecord = serde_json::from_slice(&kv.kvs[0].value).unwrap();
    assert_eq!(back, rec);

    // The scheduler marks it bootstrapped; an apply (which says false) keeps that.
    let mut booted = rec.clone();
    booted.bootstrapped = true;
    KvClient::new(m.channel.clone())
        .put(etcd::PutRequest {
            key: keys::es_cluster("logs").into_bytes().into(),
            value: serde_json::to_vec(&booted).unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut more = rec.clone();
    more.spec.data.count = 5;
    let r = f.apply_es_cluster(apply_req(&more)).await.unwrap().into_inner();
    assert!(r.changed && !r.created);
    let c = r.cluster.unwrap();
    assert!(c.bootstrapped);
    let got: ClusterRecord = serde_json::from_str(&c.record_json).unwrap();
    assert_eq!(got.spec.data.count, 5);
    assert!(got.bootstrapped);

    // Zones and ports are fixed.
    let mut zones = more.clone();
    zones.spec.zones = vec!["a".into(), "b".into()];
    let e = f.apply_es_cluster(apply_req(&zones)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("has zones [\"a\", \"b\", \"c\"]"),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("zones are fixed") || e.message().contains("Zones are fixed"),
        "{}",
        e.message()
    );
    let mut port = more.clone();
    port.spec.data.http_port = 9250;
    let e = f.apply_es_cluster(apply_req(&port)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("data nodes use http_port 9200"), "{}", e.message());

    // Compare-and-set on the revision the caller read.
    let mut stale = apply_req(&rec);
    stale.check_revision = true;
    stale.if_revision = first_rev;
    let e = f.apply_es_cluster(stale).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{}", e.message());
    let mut new = apply_req(&record(METRICS));
    new.check_revision = true;
    new.if_revision = 0;
    assert!(f.apply_es_cluster(new).await.unwrap().into_inner().created);

    let list = f
        .list_es_clusters(pb::ListEsClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["logs", "metrics"]);
    let got = f
        .get_es_cluster(pb::GetEsClusterRequest { name: "metrics".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.cluster.unwrap().name, "metrics");
    let e = f
        .get_es_cluster(pb::GetEsClusterRequest { name: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("esfleet es apply"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_refused_with_the_reason() {
    let m = member().await;
    let mut f = FleetClient::new(m.channel.clone());
    let e = f
        .apply_es_cluster(pb::ApplyEsClusterRequest {
            record_json: "{".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("not an Elasticsearch cluster record"),
        "{}",
        e.message()
    );

    // Validated server-side too: a heap above half the memory.
    let mut rec = record(LOGS);
    rec.spec.data.heap_bytes = rec.spec.data.memory_bytes;
    let e = f.apply_es_cluster(apply_req(&rec)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("cluster logs: "), "{}", e.message());

    let mut rec = record(LOGS);
    rec.spec.zones.clear();
    let e = f.apply_es_cluster(apply_req(&rec)).await.unwrap_err();
    assert!(e.message().contains("zones is empty"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_waits_until_no_node_is_submitted_and_takes_the_templates() {
    let m = member().await;
    let mut f = FleetClient::new(m.channel.clone());
    let rec = record(LOGS);
    f.apply_es_cluster(apply_req(&rec)).await.unwrap();
    let units: Vec<pb::UnitFile> = templates(&rec.spec)
        .into_iter()
        .map(|(n, t)| pb::UnitFile {
            name: n.to_string(),
            text: t,
        })
        .collect();
    let template_names: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
    f.submit_units(pb::SubmitUnitsRequest { units, replace: false })
        .await
        .unwrap();
    f.submit_units(pb::SubmitUnitsRequest {
        units: vec![pb::UnitFile {
            name: "logs-d@2.service".into(),
            text: String::new(),
        }],
        replace: false,
    })
    .await
    .unwrap();

    let e = f
        .delete_es_cluster(pb::DeleteEsClusterRequest { name: "logs".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("logs-d@2.service"), "{}", e.message());

    f.destroy_units(pb::DestroyUnitsRequest {
        names: vec!["logs-d@2.service".into()],
    })
    .await
    .unwrap();
    let r = f
        .delete_es_cluster(pb::DeleteEsClusterRequest { name: "logs".into() })
        .await
        .unwrap()
        .into_inner();
    let mut got = r.templates.clone();
    got.sort();
    let mut want = template_names.clone();
    want.sort();
    assert_eq!(got, want);
    let left = f
        .list_unit_files(pb::ListUnitFilesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(left.units.is_empty());
    let e = f
        .get_es_cluster(pb::GetEsClusterRequest { name: "logs".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = f
        .delete_es_cluster(pb::DeleteEsClusterRequest { name: "Logs".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// Marks a stored cluster bootstrapped, as the scheduler does once its masters formed it.
async fn mark_bootstrapped(m: &Member, rec: &ClusterRecord) {
    let mut booted = rec.clone();
    booted.bootstrapped = true;
    KvClient::new(m.channel.clone())
        .put(etcd::PutRequest {
            key: keys::es_cluster(&rec.spec.name).into_bytes().into(),
            value: serde_json::to_vec(&booted).unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn stored(f: &mut FleetClient<Channel>, name: &str) -> ClusterRecord {
    let c = f
        .get_es_cluster(pb::GetEsClusterRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    serde_json::from_str(&c.record_json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_never_share_a_port() {
    let m = member().await;
    let mut f = FleetClient::new(m.channel.clone());
    f.apply_es_cluster(apply_req(&record(LOGS))).await.unwrap();

    // Every port at its default: the first clash named is the masters' HTTP port, with both
    // clusters, the port and the fix.
    let e = f
        .apply_es_cluster(apply_req(&record(&LOGS.replace("logs", "metrics"))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let msg = e.message();
    assert!(
        msg.starts_with("cluster metrics: [master] http_port = 9201 is also [master] http_port of cluster logs."),
        "{msg}"
    );
    assert!(msg.contains("set a different http_port in [master]"), "{msg}");
    assert!(
        msg.contains("ports of other clusters: 9200, 9201, 9202, 9300, 9301, 9302"),
        "{msg}"
    );
    let e = f
        .get_es_cluster(pb::GetEsClusterRequest { name: "metrics".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "nothing stored");

    // Only a transport port in common is a clash too.
    let audit = record(
        &METRICS
            .replace("metrics", "audit")
            .replace("9211", "9221")
            .replace("9311", "9321")
            .replace("9210", "9220")
            .replace("9310", "9300"),
    );
    let e = f.apply_es_cluster(apply_req(&audit)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("cluster audit: [data] transport_port = 9300 is also [data] transport_port of cluster logs."),
        "{}",
        e.message()
    );

    // Ports of their own: accepted. Its coordinating role has no nodes, so its default ports
    // (the same as logs's) are not checked.
    let metrics = record(METRICS);
    assert!(
        f.apply_es_cluster(apply_req(&metrics))
            .await
            .unwrap()
            .into_inner()
            .created
    );

    // A role of another cluster without nodes still keeps its ports: metrics cannot add
    // coordinating nodes on logs's coordinating ports...
    let mut coord = metrics.clone();
    coord.spec.coordinating.count = 1;
    let e = f.apply_es_cluster(apply_req(&coord)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with(
            "cluster metrics: [coordinating] http_port = 9202 is also [coordinating] http_port of cluster logs \
             (it has no coordinating nodes now"
        ),
        "{}",
        e.message()
    );
    // ... but may move them, as the role has no nodes yet.
    coord.spec.coordinating.http_port = 9212;
    coord.spec.coordinating.transport_port = 9312;
    assert!(
        f.apply_es_cluster(apply_req(&coord))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    assert_eq!(stored(&mut f, "metrics").await.spec.coordinating.http_port, 9212);

    // Now logs cannot take 9212 for its coordinating nodes; its own default is free.
    let logs = record(LOGS);
    let mut lc = logs.clone();
    lc.spec.coordinating.count = 2;
    lc.spec.coordinating.http_port = 9212;
    let e = f.apply_es_cluster(apply_req(&lc)).await.unwrap_err();
    assert!(
        e.message().starts_with(
            "cluster logs: [coordinating] http_port = 9212 is also [coordinating] http_port of cluster metrics."
        ),
        "{}",
        e.message()
    );
    lc.spec.coordinating.http_port = 9202;
    assert!(f.apply_es_cluster(apply_req(&lc)).await.unwrap().into_inner().changed);

    // A clash stored before this rule (written directly) does not block the ports the
    // cluster already uses: its data nodes can still scale.
    let legacy = record(&LOGS.replace("logs", "old"));
    KvClient::new(m.channel.clone())
        .put(etcd::PutRequest {
            key: keys::es_cluster("old").into_bytes().into(),
            value: serde_json::to_vec(&legacy).unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut grow = legacy.clone();
    grow.spec.data.count = 4;
    assert!(f.apply_es_cluster(apply_req(&grow)).await.unwrap().into_inner().changed);
    // But a role starting up on a clashing port is refused.
    grow.spec.coordinating.count = 1;
    let e = f.apply_es_cluster(apply_req(&grow)).await.unwrap_err();
    assert!(
        e.message().contains("[coordinating] http_port = 9202"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_a_node_submitted_keeps_its_ports_even_at_count_zero() {
    let m = member().await;
    let mut f = FleetClient::new(m.channel.clone());
    let mut rec = record(LOGS);
    rec.spec.coordinating.count = 1;
    f.apply_es_cluster(apply_req(&rec)).await.unwrap();
    mark_bootstrapped(&m, &rec).await;
    let units: Vec<pb::UnitFile> = templates(&rec.spec)
        .into_iter()
        .map(|(n, t)| pb::UnitFile {
            name: n.to_string(),
            text: t,
        })
        .chain([pb::UnitFile {
            name: "logs-c@1.service".into(),
            text: String::new(),
        }])
        .collect();
    f.submit_units(pb::SubmitUnitsRequest { units, replace: false })
        .await
        .unwrap();
    // Scaled down to 0 while logs-c@1 still runs: its ports stay fixed.
    rec.spec.coordinating.count = 0;
    f.apply_es_cluster(apply_req(&rec)).await.unwrap();
    rec.spec.coordinating.http_port = 9212;
    let e = f.apply_es_cluster(apply_req(&rec)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("coordinating nodes use http_port 9202"),
        "{}",
        e.message()
    );
    f.destroy_units(pb::DestroyUnitsRequest {
        names: vec!["logs-c@1.service".into()],
    })
    .await
    .unwrap();
    assert!(f.apply_es_cluster(apply_req(&rec)).await.unwrap().into_inner().changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_data_lives_never_changes() {
    let m = member().await;
    let mut f = FleetClient::new(m.channel.clone());
    let rec = record(LOGS);
    f.apply_es_cluster(apply_req(&rec)).await.unwrap();

    let mut root = rec.clone();
    root.spec.data_root = "/srv/es".into();
    let mut runtime = rec.clone();
    runtime.spec.runtime = Runtime::Nspawn;
    let mut user = rec.clone();
    user.spec.user = "es2".into();
    for (changed, want) in [
        (
            &root,
            "keeps its nodes' data under data_root = \"/var/lib/esfleet/es\"; the definition asks for \"/srv/es\"",
        ),
        (
            &runtime,
            "runs its nodes with runtime = \"plain\"; the definition asks for \"nspawn\"",
        ),
        (&user, "nodes run as user = \"elasticsearch\""),
    ] {
        let e = f.apply_es_cluster(apply_req(changed)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        let msg = e.message();
        assert!(msg.contains(want), "{msg}");
        assert!(msg.contains("cannot change on an existing cluster"), "{msg}");
        assert!(msg.contains("define a new cluster"), "{msg}");
    }
    assert_eq!(stored(&mut f, "logs").await, rec, "nothing written");

    // What ExecStart runs may change (an upgrade), and so may the image of a plain cluster,
    // which it does not use.
    let mut exec = rec.clone();
    exec.spec.exec = "/opt/es-8.15/bin/elasticsearch".into();
    exec.spec.image = "/var/lib/machines/other".into();
    assert!(f.apply_es_cluster(apply_req(&exec)).await.unwrap().into_inner().changed);

    // An nspawn cluster's image is fixed.
    let ns = record(&format!("runtime = \"nspawn\"\n{}", METRICS));
    assert_eq!(ns.spec.runtime, Runtime::Nspawn);
    f.apply_es_cluster(apply_req(&ns)).await.unwrap();
    let mut image = ns.clone();
    image.spec.image = "/var/lib/machines/es-9".into();
    let e = f.apply_es_cluster(apply_req(&image)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("were created from image = \"/var/lib/machines/elasticsearch\""),
        "{}",
        e.message()
    );
    assert!(e.message().contains("define a new cluster"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_count_waits_until_the_cluster_has_formed() {
    let m = member().await;
    let mut f = FleetClient::new(m.channel.clone());
    let rec = record(LOGS);
    f.apply_es_cluster(apply_req(&rec)).await.unwrap();

    let mut five = rec.clone();
    five.spec.master.count = 5;
    let e = f.apply_es_cluster(apply_req(&five)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let msg = e.message();
    assert!(msg.starts_with("cluster logs has not formed yet"), "{msg}");
    assert!(
        msg.contains("cluster.initial_master_nodes = [\"logs-m1\", \"logs-m2\", \"logs-m3\"]"),
        "{msg}"
    );
    assert!(msg.contains("Keep [master] count = 3 until it has formed"), "{msg}");
    assert_eq!(stored(&mut f, "logs").await.spec.master.count, 3);

    // Other changes go through meanwhile.
    let mut data = rec.clone();
    data.spec.data.count = 4;
    assert!(f.apply_es_cluster(apply_req(&data)).await.unwrap().into_inner().changed);

    // Once formed, masters can be added.
    mark_bootstrapped(&m, &data).await;
    five.spec.data.count = 4;
    let r = f.apply_es_cluster(apply_req(&five)).await.unwrap().into_inner();
    assert!(r.changed);
    let got = stored(&mut f, "logs").await;
    assert_eq!(got.spec.master.count, 5);
    assert!(got.bootstrapped);
}
