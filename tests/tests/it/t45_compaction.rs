//! Auto-compaction with etcd's flags: in revision mode the leader keeps the last N revisions,
//! and a read or watch below the compaction point gets etcd's "compacted" answer. esfleet
//! checks every second; etcd 3.4 every five minutes, so this runs against esfleet only.

use esfleet_tests::{poll, Flavor, Options, ProcessCluster};
use etcd_client::GetOptions;

use crate::fixtures::{flavor, status_of, PATIENCE};

#[tokio::test(flavor = "multi_thread")]
async fn revision_mode_keeps_the_last_revisions_only() {
    if flavor() != Flavor::Esfleet {
        eprintln!("skipped: etcd compacts on a five-minute timer");
        return;
    }
    let options = Options {
        env: vec![
            ("ESFLEET_AUTO_COMPACTION_MODE".into(), "revision".into()),
            ("ESFLEET_AUTO_COMPACTION_RETENTION".into(), "20".into()),
        ],
        ..Default::default()
    };
    let c = ProcessCluster::start_with(flavor(), 3, options)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut client = c.client().await;
    let first = client
        .put("/t45/k", "0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut last = first;
    for i in 1..100 {
        last = client
            .put("/t45/k", i.to_string(), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    // The leader compacts to within the window, in steps of a tenth of it.
    poll("auto-compaction of the first revision", PATIENCE, || {
        let mut client = client.clone();
        async move {
            match client.get("/t45/k", Some(GetOptions::new().with_revision(first))).await {
                Err(e) if status_of(&e).is_some_and(|s| s.message().contains("compacted")) => Ok(()),
                other => Err(anyhow::anyhow!("an old revision is still readable: {other:?}")),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.log_tails()));
    // The window itself is kept: the value 20 revisions back is still there.
    let kept = client
        .get("/t45/k", Some(GetOptions::new().with_revision(last - 19)))
        .await
        .unwrap_or_else(|e| panic!("revision {} should be kept: {e}", last - 19));
    assert_eq!(kept.kvs()[0].value_str().unwrap(), "80");
}
