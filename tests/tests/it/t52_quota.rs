//! etcd's storage quota (`--quota-backend-bytes`) and its NOSPACE alarm, judged by Debian's
//! `etcdctl` and run against etcd itself too (`ESFLEET_TEST_FLAVOR=etcd`): over its quota a
//! member raises the alarm, every member refuses writes that add data while reads and
//! deletes go on, `etcdctl alarm list` shows it and `etcdctl alarm disarm` clears it.

use esfleet_tests::{Flavor, Options, ProcessCluster};

use crate::fixtures::{flavor, status_of};

const QUOTA: &str = "4194304"; // 4 MiB

#[tokio::test(flavor = "multi_thread")]
async fn over_its_quota_the_store_raises_nospace_and_refuses_what_adds_data() {
    let var = match flavor() {
        Flavor::Esfleet => "ESFLEET_QUOTA_BACKEND_BYTES",
        Flavor::Etcd => "ETCD_QUOTA_BACKEND_BYTES",
    };
    let options = Options {
        env: vec![(var.into(), QUOTA.into())],
        ..Default::default()
    };
    let c = ProcessCluster::start_with(flavor(), 3, options).await.unwrap();
    let mut client = c.client_for(0).await;
    let value = vec![b'x'; 100 * 1024];
    let mut written = 0;
    let refused = loop {
        assert!(written < 400, "40 MiB written and no NOSPACE with a 4 MiB quota");
        match client.put(format!("/t52/{written:04}"), value.clone(), None).await {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
    };
    let status = status_of(&refused).unwrap_or_else(|| panic!("not a gRPC status: {refused:?}"));
    println!(
        "{}: refused after {written} puts of 100 KiB: {status:?}",
        c.flavor().name()
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("database space exceeded"), "{status:?}");

    let alarms = c.etcdctl_ok(&["alarm", "list"]).unwrap();
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    // Every member refuses writes that add data (puts, lease grants); reads and deletes go on.
    for i in 0..3 {
        let mut m = c.client_for(i).await;
        let e = m.put("/t52/more", "y", None).await.unwrap_err();
        assert!(e.to_string().contains("database space exceeded"), "member {i}: {e}");
        let e = m.lease_grant(30, None).await.unwrap_err();
        assert!(e.to_string().contains("database space exceeded"), "member {i}: {e}");
        let got = m.get("/t52/0000", None).await.unwrap();
        assert_eq!(got.kvs().len(), 1);
    }
    let deleted = client.delete("/t52/0000", None).await.unwrap();
    assert_eq!(deleted.deleted(), 1);

    // Disarmed, the alarm is gone; a store still over its quota raises it again at the
    // next write that adds data (as etcd: space comes back by compaction and defrag, or a
    // larger quota).
    c.etcdctl_ok(&["alarm", "disarm"]).unwrap();
    let alarms = c.etcdctl_ok(&["alarm", "list"]).unwrap();
    assert!(!alarms.contains("NOSPACE"), "{alarms}");
    let e = client.put("/t52/again", "z", None).await.unwrap_err();
    assert!(e.to_string().contains("database space exceeded"), "{e}");
    assert!(c.etcdctl_ok(&["alarm", "list"]).unwrap().contains("alarm:NOSPACE"));
    c.check_alive().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_negative_quota_is_no_quota() {
    if flavor() != Flavor::Esfleet {
        return; // etcd treats negative as its default
    }
    let options = Options {
        env: vec![("ESFLEET_QUOTA_BACKEND_BYTES".into(), "-1".into())],
        ..Default::default()
    };
    let c = ProcessCluster::start_with(flavor(), 1, options).await.unwrap();
    let mut client = c.client().await;
    let value = vec![b'x'; 100 * 1024];
    for i in 0..60 {
        client.put(format!("/t52/{i}"), value.clone(), None).await.unwrap();
    }
    assert_eq!(c.etcdctl_ok(&["alarm", "list"]).unwrap().trim(), "");
}
