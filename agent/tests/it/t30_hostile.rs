//! Hostile or broken schedule entries never reach systemd; each is reported in a state
//! record with the reason, and the good units beside them run.

use esfleet_agent::fake::Op;
use esfleet_core::diff::MAX_UNIT_FILE_BYTES;
use esfleet_core::keys;
use esfleet_core::model::unit_hash;
use esfleet_core::options::Fence;

use crate::fixtures::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_entries_are_refused_and_reported() {
    init_logs();
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(30);
    let prefix = keys::schedule_prefix(&id);
    let good = entry("good.service", SIMPLE, Fence::Stop);
    let (a, fake) = agent(agent_config(cluster.endpoints(), &id, fast_timing()));

    // A path in the key (the entry itself names a valid unit).
    let passwd = entry("passwd.service", SIMPLE, Fence::Stop);
    put_raw(
        &mut c,
        &format!("{prefix}../../etc/passwd.service"),
        &serde_json::to_vec(&passwd).unwrap(),
    )
    .await;
    put_raw(
        &mut c,
        &format!("{prefix}a/b.service"),
        &serde_json::to_vec(&passwd).unwrap(),
    )
    .await;
    // The key and the entry disagree.
    put_raw(
        &mut c,
        &format!("{prefix}other.service"),
        &serde_json::to_vec(&passwd).unwrap(),
    )
    .await;
    // Oversized.
    schedule(
        &mut c,
        &id,
        &entry("big.service", &"#".repeat(MAX_UNIT_FILE_BYTES + 1), Fence::Stop),
    )
    .await;
    // Hash mismatch.
    let mut forged = entry("forged.service", SIMPLE, Fence::Stop);
    forged.hash = unit_hash("[Service]\nExecStart=/bin/true\n");
    schedule(&mut c, &id, &forged).await;
    // A newline smuggled into the environment.
    let mut smuggled = entry("env.service", SIMPLE, Fence::Stop);
    smuggled.env.insert("X".into(), "1\nExecStartPre=/bin/evil".into());
    schedule(&mut c, &id, &smuggled).await;
    // A name the host already uses for a service of its own: writing it would shadow
    // /lib/systemd/system/ssh.service, and stopping it would stop sshd.
    fake.add_host_unit(&n("ssh.service"), "[Service]\nExecStart=/usr/sbin/sshd -D\n");
    schedule(&mut c, &id, &entry("ssh.service", SIMPLE, Fence::Stop)).await;
    schedule(&mut c, &id, &good).await;

    let all = eventually("seven refusals and one running unit", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            let s = states(&mut c, &id).await;
            let refused = s.get("ssh.service").is_some_and(|u| u.error.is_some());
            (s.len() == 8 && refused && s.get("good.service").is_some_and(|g| g.active == "active")).then_some(s)
        }
    })
    .await;
    let reason = |raw: &str| all[raw].error.clone().unwrap_or_else(|| panic!("{raw}: no error"));
    assert!(reason("../../etc/passwd.service").contains("not a valid unit name"));
    assert!(reason("a/b.service").contains("not a valid unit name"));
    assert!(reason("other.service").contains("the two must be the same"));
    assert!(reason("big.service").contains("256 KiB"));
    assert!(reason("forged.service").contains("hashes to"));
    assert!(reason("env.service").contains("newline"));
    assert!(
        reason("ssh.service").contains("already a unit on this host"),
        "{}",
        reason("ssh.service")
    );
    assert!(fake.file(&n("ssh.service")).is_none(), "ssh.service was shadowed");
    for call in fake.calls() {
        if call.unit.as_ref().is_some_and(|u| u.as_str() == "ssh.service") {
            assert!(
                matches!(call.op, Op::Install | Op::States),
                "the host's ssh.service was acted on: {call:?}"
            );
        }
    }
    assert!(all["good.service"].error.is_none());

    for bad in [
        "passwd.service",
        "other.service",
        "big.service",
        "forged.service",
        "env.service",
    ] {
        assert!(fake.file(&n(bad)).is_none(), "{bad} reached the disk");
        assert!(
            fake.calls()
                .iter()
                .all(|call| call.unit.as_ref().is_none_or(|u| u.as_str() != bad)),
            "{bad} reached the manager"
        );
    }
    a.stop().await;
    cluster.stop().await;
}
