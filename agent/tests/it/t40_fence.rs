//! Self-fencing (DESIGN.md decision 5): cut off from every member, the agent stops its
//! Fence=stop units before its lease could expire, keeps Fence=keep ones, and starts them
//! again once it has registered; a cluster that answers "no leader" stops nothing.

use std::time::Duration;

use esfleet_agent::fake::Op;
use esfleet_core::options::Fence;
use tokio::time::Instant;

use crate::fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_fences_stop_units_and_they_come_back() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(40);
    // Through a proxy: an in-process member cannot release its store while connections it
    // accepted stay open, so the test cuts them when it stops the member.
    let proxy = Proxy::start(cluster.members[0].client_addr).await;
    let (a, fake) = agent(agent_config(vec![proxy.url()], &id, fast_timing()));
    fenced_and_kept_running(&mut c, &id, &fake).await;
    let epoch = a.status.borrow().epoch;

    // The member refuses connections at once; its stop() then takes a while (open streams).
    let down = Instant::now();
    proxy.cut();
    cluster.members[0].stop().await;
    eventually("the Fence=stop unit is stopped", || {
        let fake = fake.clone();
        async move { (live(&fake, "fenced.service").await.0 == "inactive").then_some(()) }
    })
    .await;
    // Fence after TTL − margin (1 s) without an acknowledgment: not before.
    assert!(
        down.elapsed() >= Duration::from_millis(500),
        "fenced after {:?}",
        down.elapsed()
    );
    assert!(a.status.borrow().fenced);
    assert_eq!(live(&fake, "kept.service").await.0, "active", "Fence=keep stays up");
    // Fenced means fenced: nothing starts it again while the cluster is away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(live(&fake, "fenced.service").await.0, "inactive");

    cluster.members[0].restart().await;
    proxy.restore();
    eventually("registered again and the unit restarted", || {
        let fake = fake.clone();
        let fenced = a.status.borrow().fenced;
        async move { (!fenced && live(&fake, "fenced.service").await.0 == "active").then_some(()) }
    })
    .await;
    assert!(a.status.borrow().epoch > epoch);
    eventually("state record says active again", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            state(&mut c, &id, "fenced.service")
                .await
                .filter(|(s, _)| s.active == "active")
                .map(|_| ())
        }
    })
    .await;
    assert!(machine(&mut c, &id).await.is_some(), "machine record back");
    assert_eq!(
        fake.count(Op::Stop),
        1,
        "only the fence stopped anything: {:?}",
        fake.calls()
    );
    a.stop().await;
    drop(proxy);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_answers_keep_units_running() {
    init_logs();
    let mut cluster = Cluster::start(3).await;
    let mut c = cluster.client();
    let id = machine_id(41);
    // TTL 3 s: fence after 2 s without an acknowledgment.
    let timing = esfleet_agent::config::Timing {
        lease_ttl: Duration::from_secs(3),
        ..fast_timing()
    };
    // Through proxies, cut when their member stops: a stopped in-process member would
    // otherwise keep the connections it accepted (a stopped process closes them).
    let mut proxies = Vec::new();
    for m in &cluster.members {
        proxies.push(Proxy::start(m.client_addr).await);
    }
    let (a, fake) = agent(agent_config(proxies.iter().map(Proxy::url).collect(), &id, timing));
    schedule(&mut c, &id, &entry("es.service", SIMPLE, Fence::Stop)).await;
    eventually("running", || {
        let fake = fake.clone();
        async move { (live(&fake, "es.service").await.0 == "active").then_some(()) }
    })
    .await;

    // Stop both followers: the leader has lost its quorum, and says "no leader" to every
    // keepalive. (The case of a lone surviving *follower*, which answers "no leader" when it
    // cannot reach its leader, runs with real processes in tests/tests/it/t8x: stopped
    // in-process members keep accepted peer connections open.)
    let leader = cluster.leader();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for f in &followers {
        proxies[*f].cut();
        cluster.members[*f].stop().await;
    }
    // Twice the lease TTL: a fence would have happened long before.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(
            live(&fake, "es.service").await.0,
            "active",
            "stopped although no leader could expire the lease"
        );
        assert!(!a.status.borrow().fenced);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.count(Op::Stop), 0);

    futures::future::join_all(
        cluster
            .members
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, m)| m.restart()),
    )
    .await;
    for f in &followers {
        proxies[*f].restore();
    }
    eventually("the state record is written again", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            state(&mut c, &id, "es.service")
                .await
                .filter(|(s, _)| s.active == "active")
        }
    })
    .await;
    assert_eq!(fake.count(Op::Stop), 0);
    a.stop().await;
    drop(proxies);
    cluster.stop().await;
}

/// An agent restarted while its host is cut off from every member cannot read its
/// schedule, yet its fence clock goes on from the previous process's last acknowledgment:
/// the Fence=stop units that process left running are stopped (from the fence list it kept
/// in the state dir), before the lease could expire. Fence=keep units stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_while_cut_off_fences_what_its_predecessor_left() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(41);
    let proxy = Proxy::start(cluster.members[0].client_addr).await;
    let state = tempfile::tempdir().unwrap();
    let cfg = || esfleet_agent::config::Config {
        state_dir: Some(state.path().to_path_buf()),
        ..agent_config(vec![proxy.url()], &id, fast_timing())
    };
    let (a, fake) = agent(cfg());
    fenced_and_kept_running(&mut c, &id, &fake).await;
    // Exit without --stop-units-on-exit (units stay up), and the host is cut off.
    a.stop().await;
    proxy.cut();
    let down = Instant::now();
    // The successor, on the same systemd (the fake is shared) and state dir.
    let b = esfleet_agent::agent::start(cfg(), fake.clone(), None);
    eventually("the Fence=stop unit the first process left is stopped", || {
        let fake = fake.clone();
        async move { (live(&fake, "fenced.service").await.0 == "inactive").then_some(()) }
    })
    .await;
    // TTL 2 s − margin 1 s after the first process's last acknowledgment, which was sent
    // at most one keepalive interval (200 ms) before the cut.
    assert!(
        down.elapsed() < Duration::from_secs(2),
        "fenced only {:?} after the cut",
        down.elapsed()
    );
    assert!(b.status.borrow().fenced);
    assert_eq!(live(&fake, "kept.service").await.0, "active", "Fence=keep stays up");
    b.stop().await;
    drop(proxy);
    cluster.stop().await;
}

/// Schedules `fenced.service` (Fence=stop) and `kept.service` (Fence=keep) on machine `id`
/// and waits until both run.
async fn fenced_and_kept_running(
    c: &mut esfleet_agent::client::Client,
    id: &str,
    fake: &esfleet_agent::fake::FakeUnitManager,
) {
    schedule(c, id, &entry("fenced.service", SIMPLE, Fence::Stop)).await;
    schedule(c, id, &entry("kept.service", SIMPLE, Fence::Keep)).await;
    eventually("both running", || {
        let fake = fake.clone();
        async move {
            (live(&fake, "fenced.service").await.0 == "active" && live(&fake, "kept.service").await.0 == "active")
                .then_some(())
        }
    })
    .await;
}
