//! Schedule entries become running units and state records; removal unloads them; a new
//! text restarts; a crash is reported as failed (and left to systemd).

use std::time::Duration;

use esfleet_agent::fake::Op;
use esfleet_core::model::unit_hash;
use esfleet_core::options::Fence;

use crate::fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_to_running_unit_and_back() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(20);
    let (a, fake) = agent(agent_config(cluster.endpoints(), &id, fast_timing()));
    let e = entry("web.service", SIMPLE, Fence::Stop);
    schedule(&mut c, &id, &e).await;

    let (st, lease) = eventually("state active/running", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            state(&mut c, &id, "web.service")
                .await
                .filter(|(s, _)| s.active == "active")
        }
    })
    .await;
    assert_eq!((st.load.as_str(), st.sub.as_str()), ("loaded", "running"));
    assert_eq!(st.hash, e.hash);
    assert_eq!(st.generation, 1);
    assert!(st.error.is_none());
    assert_eq!(
        Some(lease),
        a.status.borrow().lease,
        "states live on the machine's lease"
    );
    let (text, dropin) = fake.file(&n("web.service")).unwrap();
    let dropin = dropin.expect("the esfleet drop-in");
    assert_eq!(text, SIMPLE);
    assert!(dropin.contains("Environment=\"ESFLEET_ZONE=a\""), "{dropin}");
    assert!(
        dropin.contains(r#"Environment="ESFLEET_NOTE=say \"hi\" 100%%""#),
        "{dropin}"
    );
    assert_eq!(live(&fake, "web.service").await, ("active".into(), "running".into()));

    unschedule(&mut c, &id, "web.service").await;
    eventually("state key deleted", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move { state(&mut c, &id, "web.service").await.is_none().then_some(()) }
    })
    .await;
    // The state record may go (a report on systemd's stop notice) a moment before the
    // reconciler's uninstall finishes: wait for the files, then check the order of calls.
    eventually("uninstalled and reloaded", || {
        let fake = fake.clone();
        async move {
            let last = fake.calls().into_iter().map(|c| c.op).rev().find(|o| *o != Op::States);
            (fake.file(&n("web.service")).is_none() && last == Some(Op::Reload)).then_some(())
        }
    })
    .await;
    assert_ne!(live(&fake, "web.service").await.0, "active");
    let ops: Vec<Op> = fake.calls().into_iter().map(|c| c.op).collect();
    let stop = ops.iter().position(|o| *o == Op::Stop).unwrap();
    let uninstall = ops.iter().position(|o| *o == Op::Uninstall).unwrap();
    assert!(stop < uninstall, "stopped before its files went: {ops:?}");
    assert_eq!(ops.iter().rev().find(|o| **o != Op::States), Some(&Op::Reload));

    a.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_text_restarts_and_a_crash_is_reported() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(21);
    let (a, fake) = agent(agent_config(cluster.endpoints(), &id, fast_timing()));
    schedule(&mut c, &id, &entry("db.service", SIMPLE, Fence::Stop)).await;
    eventually("running", || {
        let fake = fake.clone();
        async move { (live(&fake, "db.service").await.0 == "active").then_some(()) }
    })
    .await;

    let text2 = "[Service]\nExecStart=/bin/sleep 2000\n";
    schedule(&mut c, &id, &entry("db.service", text2, Fence::Stop)).await;
    let st = eventually("state with the new hash", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            state(&mut c, &id, "db.service")
                .await
                .filter(|(s, _)| s.hash == unit_hash(text2) && s.active == "active")
        }
    })
    .await;
    assert_eq!(st.0.sub, "running");
    assert_eq!(fake.file(&n("db.service")).unwrap().0, text2);
    assert_eq!(fake.count(Op::Restart), 1, "{:?}", fake.calls());
    assert_eq!(fake.count(Op::Start), 1);
    assert!(!fake.needs_reload(&n("db.service")), "reloaded before the restart");

    assert!(fake.crash(&n("db.service")));
    let st = eventually("state failed", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            state(&mut c, &id, "db.service")
                .await
                .filter(|(s, _)| s.active == "failed")
        }
    })
    .await;
    assert!(st.0.is_failed());
    // Trust systemd: the agent does not restart a crashed unit itself (Restart= decides),
    // and keeps reporting it failed across poll passes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fake.count(Op::Start) + fake.count(Op::Restart), 2);
    assert_eq!(state(&mut c, &id, "db.service").await.unwrap().0.active, "failed");
    a.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_are_run_and_reported() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(22);
    let (a, _fake) = agent(agent_config(cluster.endpoints(), &id, fast_timing()));
    // The check sees the placement facts, as the unit does.
    let good = "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nHealthCheck=test \"$ESFLEET_ZONE\" = a\n";
    let bad = "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nHealthCheck=exit 1\n";
    schedule(&mut c, &id, &entry("good.service", good, Fence::Stop)).await;
    schedule(&mut c, &id, &entry("bad.service", bad, Fence::Stop)).await;
    schedule(&mut c, &id, &entry("plain.service", SIMPLE, Fence::Stop)).await;
    for (unit, want) in [("good.service", true), ("bad.service", false)] {
        eventually(&format!("{unit} reported healthy={want}"), || {
            let mut c = cluster.client();
            let id = id.clone();
            async move {
                state(&mut c, &id, unit)
                    .await
                    .filter(|(s, _)| s.active == "active" && s.healthy == Some(want))
            }
        })
        .await;
    }
    let (plain, _) = state(&mut c, &id, "plain.service").await.expect("plain state");
    assert_eq!(plain.healthy, None, "a unit without a check reports no health");
    a.stop().await;
    cluster.stop().await;
}
