//! Membership changes while the cluster serves writes: a member joins and serves all the
//! data, another (a follower, or the leader itself) leaves, and writes keep succeeding.

use std::collections::BTreeSet;

use std::time::{Duration, Instant};

use esfleet_tests::{poll, Flavor, ProcessCluster};
use etcd_client::GetOptions;

use crate::fixtures::{assert_all_acked_present, cluster, flavor, read_prefix, AgentSession, Writer, PATIENCE};

/// Waits until the member list (read through `client`) has exactly the members `expected`
/// (by index), each with its name, peer URL and client URL.
async fn assert_members(c: &ProcessCluster, client: &etcd_client::Client, expected: &[usize]) {
    let want: BTreeSet<(String, String, String)> = expected
        .iter()
        .map(|&i| (c.name(i).to_string(), c.peer_url(i), c.endpoint(i)))
        .collect();
    poll("the member list to settle", PATIENCE, || async {
        let list = client.clone().member_list().await?;
        let got: BTreeSet<(String, String, String)> = list
            .members()
            .iter()
            .map(|m| (m.name().to_string(), m.peer_urls().join(","), m.client_urls().join(",")))
            .collect();
        anyhow::ensure!(got == want, "member list {got:?}, expected {want:?}");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn add_a_member_and_remove_another_under_writes() {
    let mut c = cluster(3).await;
    let leader = c.leader().await.unwrap_or_else(|e| panic!("{e:?}"));
    let leaving = (0..3).rev().find(|&i| i != leader).unwrap();
    let staying: Vec<usize> = (0..3).filter(|&i| i != leaving).collect();
    let stayers = ProcessCluster::connect(&staying.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>()).await;
    let writer = Writer::start(stayers.clone(), "/t30/w/");
    writer.wait_for_acks(50).await.unwrap_or_else(|e| panic!("{e:?}"));

    let joined = c.add_member("n4").await.unwrap_or_else(|e| panic!("{e:?}"));
    writer
        .wait_for_acks(writer.acked() + 30)
        .await
        .unwrap_or_else(|e| panic!("writes with four members: {e:?}"));

    c.remove_member(leaving).await.unwrap_or_else(|e| panic!("{e:?}"));
    writer
        .wait_for_acks(writer.acked() + 50)
        .await
        .unwrap_or_else(|e| panic!("writes after the removal: {e:?}\n{}", c.log_tails()));
    println!(
        "{}: {} writes acknowledged, {} failed during the membership changes",
        c.flavor().name(),
        writer.acked(),
        writer.errors()
    );

    let mut now = staying.clone();
    now.push(joined);
    assert_members(&c, &stayers, &now).await;
    let newcomer = c.client_for(joined).await;
    assert_members(&c, &newcomer, &now).await;
    assert!(!c.is_running(leaving));

    let acks = writer.stop().await;
    // The new member serves every write, linearizably...
    assert_all_acked_present(&newcomer, "/t30/w/", &acks)
        .await
        .unwrap_or_else(|e| panic!("read through the new member: {e:?}"));
    // ...and, once caught up, from its own copy (a serializable read).
    let expected = read_prefix(&stayers, "/t30/w/").await.unwrap();
    poll("the new member's own copy to catch up", PATIENCE, || async {
        let local = newcomer
            .clone()
            .get("/t30/w/", Some(GetOptions::new().with_prefix().with_serializable()))
            .await?;
        anyhow::ensure!(
            local.kvs().len() == expected.len(),
            "{} of {} keys",
            local.kvs().len(),
            expected.len()
        );
        for kv in local.kvs() {
            let want = &expected[String::from_utf8_lossy(kv.key()).as_ref()];
            anyhow::ensure!(
                kv.value() == want.value() && kv.mod_revision() == want.mod_revision(),
                "{:?} differs",
                String::from_utf8_lossy(kv.key())
            );
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_the_leader_under_writes() {
    let mut c = cluster(3).await;
    let leader = c.leader().await.unwrap_or_else(|e| panic!("{e:?}"));
    let staying: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let stayers = ProcessCluster::connect(&staying.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>()).await;
    let writer = Writer::start(stayers.clone(), "/t30/l/");
    writer.wait_for_acks(50).await.unwrap_or_else(|e| panic!("{e:?}"));

    c.remove_member(leader).await.unwrap_or_else(|e| panic!("{e:?}"));
    writer
        .wait_for_acks(writer.acked() + 50)
        .await
        .unwrap_or_else(|e| panic!("writes after removing the leader: {e:?}\n{}", c.log_tails()));
    let new_leader = c.leader().await.unwrap_or_else(|e| panic!("{e:?}"));
    assert!(staying.contains(&new_leader), "leader {new_leader}");
    assert_members(&c, &stayers, &staying).await;

    let acks = writer.stop().await;
    for &i in &staying {
        assert_all_acked_present(&c.client_for(i).await, "/t30/l/", &acks)
            .await
            .unwrap_or_else(|e| panic!("read through {}: {e:?}", c.name(i)));
    }
}

/// A member removed while it still runs is no longer sent anything (openraft stops
/// replicating to it before it learns of its removal), so it tells its agents "there is no
/// leader", and they keep their units. The leader keeps doubting it, so an agent that can
/// reach only that member fences before its lease expires: never two copies of its units.
/// (Before, the lease expired 8 s after the removal and the agent fenced at 30 s.)
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_member_still_running_lets_no_lease_expire_before_its_agent_fences() {
    removed_member_still_running(false).await;
}

/// The same when the leader that removed the member loses its leadership right after
/// (frozen 4 s, then back as a follower): every member notes the removal, so the next
/// leader keeps doubting the removed one too. Four members, so that the two left after the
/// removal and the freeze still make a quorum; the old leader comes back, so that only the
/// removed member can be what keeps the new leader in doubt.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_member_stays_doubted_by_the_next_leader() {
    removed_member_still_running(true).await;
}

async fn removed_member_still_running(depose_the_leader: bool) {
    if flavor() != Flavor::Esfleet {
        println!("skip: the fence clock is esfleet's agent talking to esfleet's members");
        return;
    }
    let c = cluster(if depose_the_leader { 4 } else { 3 }).await;
    let leader = c.leader().await.unwrap_or_else(|e| panic!("{e:?}"));
    let leaving = (leader + 1) % c.len();
    let agent = AgentSession::start(vec![c.endpoint(leaving)], "/t30/machine").await;
    let lease = agent.lease;

    // Removed through the leader; the process is left running (unlike `remove_member`).
    let id = c.member_id(leaving).await.unwrap_or_else(|e| panic!("{e:?}"));
    c.client_for(leader)
        .await
        .member_remove(id)
        .await
        .expect("member remove");
    let removed = Instant::now();
    let staying: Vec<usize> = (0..c.len()).filter(|&i| i != leaving).collect();
    if depose_the_leader {
        // The others have the removal by now (it was committed before the answer).
        c.freeze(leader).unwrap_or_else(|e| panic!("{e:?}"));
        tokio::time::sleep(Duration::from_secs(4)).await;
        c.thaw(leader).unwrap_or_else(|e| panic!("{e:?}"));
        // Right after the thaw the old leader may still think it leads, for a moment.
        poll("another member to lead", PATIENCE, || async {
            let now = c.leader().await?;
            anyhow::ensure!(now != leader && now != leaving, "member {now} leads");
            Ok(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", c.log_tails()));
    }
    let mut client = ProcessCluster::connect(&staying.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>()).await;
    // The fence at its own time; the expiry when first seen: no earlier than it happened,
    // up to a poll (200 ms) and a request later.
    let mut expired = None;
    while (agent.fenced_at().is_none() || expired.is_none()) && removed.elapsed() < Duration::from_secs(60) {
        if expired.is_none() {
            match client.lease_time_to_live(lease, None).await {
                Ok(r) if r.ttl() < 0 => expired = Some(removed.elapsed()),
                Ok(_) => {}
                Err(e) => println!("lease time to live: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fenced = agent.fenced_at().map(|at| at - removed);
    println!("after the removal: agent fenced at {fenced:?}, lease expired at {expired:?}");
    let fenced = fenced.unwrap_or_else(|| panic!("the agent never fenced\n{}", c.log_tails()));
    let expired = expired.unwrap_or_else(|| panic!("the lease never expired\n{}", c.log_tails()));
    assert!(
        fenced < expired,
        "the lease expired ({expired:?} after the removal) while the agent still ran its units \
         (fenced at {fenced:?}): {:?}\n{}",
        agent.fence_reasons(),
        c.log_tails()
    );
    agent.stop().await;
}
