//! The Fleet service's Elasticsearch cluster RPCs (ApplyEsCluster, GetEsCluster,
//! ListEsClusters, DeleteEsCluster) on an in-process one-member cluster.

use std::time::Duration;

use esfleet_coordinator::config::Flags;
use esfleet_coordinator::server::{self, Running};
use esfleet_core::es::{parse_spec, templates, ClusterRecord};
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
    let mut new = apply_req(&record(&LOGS.replace("logs", "metrics")));
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
