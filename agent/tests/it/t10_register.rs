//! The machine record: on the agent's lease, with metadata and facts; a second agent with
//! the same machine id is refused until the first one is gone.

use std::time::Duration;

use crate::fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_on_a_lease_and_refuses_a_duplicate_id() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(10);
    let (a, _fake_a) = agent(agent_config(cluster.endpoints(), &id, fast_timing()));
    let (record, lease) = eventually("machine record", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move { machine(&mut c, &id).await }
    })
    .await;
    assert_eq!(record.id, id);
    assert_eq!(record.metadata["zone"], "a");
    assert_eq!(record.metadata["rack"], "r1");
    assert_eq!(record.address, "127.0.0.1");
    assert!(record.facts.cpus > 0 && record.facts.memory_bytes > 0 && record.facts.disk_free_bytes > 0);
    assert!(!record.hostname.is_empty());
    assert_ne!(lease, 0, "the record is on a lease");
    let status_lease = eventually("the agent's status", || {
        let l = a.status.borrow().lease;
        async move { l }
    })
    .await;
    assert_eq!(status_lease, lease);

    // Same id, another agent: refused, the record stays on the first agent's lease.
    let (b, _fake_b) = agent(agent_config(cluster.endpoints(), &id, fast_timing()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(b.status.borrow().epoch, 0, "the duplicate never registered");
    assert_eq!(machine(&mut c, &id).await.unwrap().1, lease);

    // The first agent exits: its lease is revoked at once, and the second takes over.
    a.stop().await;
    let (_, lease_b) = eventually("the second agent registers", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move { machine(&mut c, &id).await.filter(|(_, l)| *l != lease) }
    })
    .await;
    // The record lands a moment before the agent publishes its status.
    let status_lease = eventually("the second agent's status", || {
        let l = b.status.borrow().lease;
        async move { l }
    })
    .await;
    assert_eq!(status_lease, lease_b);
    b.stop().await;
    assert!(machine(&mut c, &id).await.is_none(), "gone at once after the revoke");
    cluster.stop().await;
}

/// A restarted agent (same state dir) takes the previous process's lease over: the machine
/// record never disappears, so the scheduler moves nothing, and no unit is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_takes_its_lease_over() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(11);
    let state = tempfile::tempdir().unwrap();
    let cfg = || esfleet_agent::config::Config {
        state_dir: Some(state.path().to_path_buf()),
        ..agent_config(cluster.endpoints(), &id, fast_timing())
    };
    let (a, fake) = agent(cfg());
    schedule(
        &mut c,
        &id,
        &entry("es.service", SIMPLE, esfleet_core::options::Fence::Stop),
    )
    .await;
    eventually("running", || {
        let fake = fake.clone();
        async move { (live(&fake, "es.service").await.0 == "active").then_some(()) }
    })
    .await;
    let (_, lease) = machine(&mut c, &id).await.expect("registered");

    // Exit without --stop-units-on-exit: the lease is left for the successor.
    a.stop().await;
    assert_eq!(
        machine(&mut c, &id).await.map(|(_, l)| l),
        Some(lease),
        "record kept on exit"
    );

    // The successor (same systemd: the fake is shared) registers on the same lease.
    let b = esfleet_agent::agent::start(cfg(), fake.clone(), None);
    eventually("the successor registers", || {
        let status = b.status.clone();
        async move { (status.borrow().epoch > 0).then_some(()) }
    })
    .await;
    assert_eq!(b.status.borrow().lease, Some(lease), "took the lease over");
    // Longer than the TTL: the record stays, nothing stopped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(machine(&mut c, &id).await.map(|(_, l)| l), Some(lease));
    assert_eq!(live(&fake, "es.service").await.0, "active");
    assert_eq!(fake.count(esfleet_agent::fake::Op::Stop), 0);
    b.stop().await;
    cluster.stop().await;
}
