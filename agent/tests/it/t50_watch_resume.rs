//! The schedule watch resumes from the last revision seen; when that revision is
//! compacted away, the agent reads the schedule in full and misses nothing.

use std::time::Duration;

use esfleet_core::options::Fence;
use esfleet_proto::etcdserverpb::{kv_client::KvClient, CompactionRequest};

use crate::fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_history_leads_to_a_full_read() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let proxy = Proxy::start(cluster.members[0].client_addr).await;
    let id = machine_id(50);
    // A long TTL: the cut below must not fence.
    let timing = esfleet_agent::config::Timing {
        lease_ttl: Duration::from_secs(10),
        ..fast_timing()
    };
    let (a, fake) = agent(agent_config(vec![proxy.url()], &id, timing));
    schedule(&mut c, &id, &entry("old.service", SIMPLE, Fence::Stop)).await;
    schedule(&mut c, &id, &entry("stays.service", SIMPLE, Fence::Stop)).await;
    eventually("both running", || {
        let fake = fake.clone();
        async move {
            (live(&fake, "old.service").await.0 == "active" && live(&fake, "stays.service").await.0 == "active")
                .then_some(())
        }
    })
    .await;

    // Cut the agent off, change the schedule, and compact the history it would resume from.
    proxy.cut();
    unschedule(&mut c, &id, "old.service").await;
    schedule(&mut c, &id, &entry("new1.service", SIMPLE, Fence::Stop)).await;
    schedule(&mut c, &id, &entry("new2.service", SIMPLE, Fence::Stop)).await;
    let (_, rev) = c.range_prefix("/esfleet/").await.unwrap();
    KvClient::connect(cluster.members[0].url())
        .await
        .unwrap()
        .compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();

    eventually("the schedule as it is now", || {
        let fake = fake.clone();
        async move {
            (live(&fake, "new1.service").await.0 == "active"
                && live(&fake, "new2.service").await.0 == "active"
                && live(&fake, "stays.service").await.0 == "active"
                && fake.file(&n("old.service")).is_none())
            .then_some(())
        }
    })
    .await;
    assert!(!a.status.borrow().fenced);
    let s = eventually("states follow", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            let s = states(&mut c, &id).await;
            (s.len() == 3 && s.values().all(|u| u.active == "active")).then_some(s)
        }
    })
    .await;
    assert!(!s.contains_key("old.service"));

    // And a live change after that still arrives through the new watch.
    unschedule(&mut c, &id, "new2.service").await;
    eventually("new2 unloaded", || {
        let fake = fake.clone();
        async move { fake.file(&n("new2.service")).is_none().then_some(()) }
    })
    .await;
    a.stop().await;
    drop(proxy);
    cluster.stop().await;
}
