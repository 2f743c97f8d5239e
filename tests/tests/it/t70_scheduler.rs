//! The scheduler survives its leader: units launched through the Fleet API while the
//! leader is killed (kill -9) are each placed exactly once after the new leader takes over,
//! and none is lost. esfleet only (etcd has no Fleet service).

use std::collections::BTreeMap;
use std::time::Duration;

use esfleet_proto::fleet::{self as pb, fleet_client::FleetClient};
use esfleet_tests::{poll, Flavor, ProcessCluster};
use etcd_client::{GetOptions, PutOptions};

use crate::fixtures::{flavor, PATIENCE};

const UNITS: usize = 40;

/// A simulated agent's registration: a machine record on a long lease (no keepalive needed
/// within the test; a new leader extends every lease anyway).
async fn register(client: &mut etcd_client::Client, n: u32) -> String {
    let id = format!("{:032x}", 0xb000 + n);
    let lease = client.lease_grant(600, None).await.expect("lease grant").id();
    let rec = serde_json::json!({
        "id": id, "hostname": format!("host{n}"), "address": format!("10.1.0.{n}"),
    });
    client
        .put(
            format!("/esfleet/machines/{id}"),
            rec.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("register machine");
    id
}

/// unit → machines it is placed on.
async fn placements(client: &mut etcd_client::Client) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let resp = client
        .get("/esfleet/schedule/", Some(GetOptions::new().with_prefix()))
        .await?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let rest = key.trim_start_matches("/esfleet/schedule/");
        let (machine, unit) = rest.split_once('/').expect("schedule/<machine>/<unit>");
        out.entry(unit.to_string()).or_default().push(machine.to_string());
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_while_launching_places_every_unit_exactly_once() {
    if flavor() != Flavor::Esfleet {
        eprintln!("skipped: the Fleet service is esfleet's");
        return;
    }
    let mut c = ProcessCluster::start(flavor(), 3)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let leader = c.leader().await.unwrap_or_else(|e| panic!("{e:?}"));
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut etcd = ProcessCluster::connect(&followers.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>()).await;
    for n in 1..=3 {
        register(&mut etcd, n).await;
    }

    // The Fleet client talks to a follower: it needs no endpoint of the member killed.
    let channel = tonic::transport::Endpoint::from_shared(c.endpoint(followers[0]))
        .unwrap()
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("connect to a follower");
    let mut fleet = FleetClient::new(channel);
    fleet
        .submit_units(pb::SubmitUnitsRequest {
            units: vec![pb::UnitFile {
                name: "u@.service".into(),
                text: "[Service]\nExecStart=/bin/sleep infinity\n".into(),
            }],
            replace: false,
        })
        .await
        .expect("submit the template");

    // Launch units one by one, each retried until acknowledged (the request is idempotent).
    let launcher = tokio::spawn({
        let mut fleet = fleet.clone();
        async move {
            let mut retries = 0;
            for i in 1..=UNITS {
                loop {
                    let req = pb::SetDesiredStateRequest {
                        names: vec![format!("u@{i}.service")],
                        desired: "launched".into(),
                    };
                    match fleet.set_desired_state(req).await {
                        Ok(_) => break,
                        Err(_) => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            retries
        }
    });
    poll("a few units placed before the kill", PATIENCE, || async {
        let n = placements(&mut etcd.clone()).await?.len();
        anyhow::ensure!(n >= 8, "{n} placed");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.log_tails()));
    c.kill(leader).unwrap();

    let retries = tokio::time::timeout(PATIENCE * 2, launcher)
        .await
        .expect("every launch acknowledged after the failover")
        .unwrap();
    eprintln!("launches retried across the failover: {retries}");
    let new_leader = c.leader().await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_ne!(new_leader, leader);

    let placed = poll("every launched unit placed exactly once", PATIENCE, || async {
        let p = placements(&mut etcd.clone()).await?;
        let doubled: Vec<_> = p.iter().filter(|(_, m)| m.len() != 1).collect();
        anyhow::ensure!(doubled.is_empty(), "placed more than once: {doubled:?}");
        anyhow::ensure!(p.len() == UNITS, "{} of {UNITS} placed", p.len());
        Ok(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.log_tails()));
    // Stable: a later pass of the new leader changes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(placements(&mut etcd).await.unwrap(), placed);

    // The new leader took over scheduling with its own epoch.
    let status = fleet
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.scheduler_epoch, status.raft_term, "{status:?}");
    assert_eq!(status.members.iter().filter(|m| m.reachable).count(), 2);
    assert!(status.healthy);
}
