//! A watcher that resumes from `last seen + 1` after its stream breaks misses no event,
//! across a leader change.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esfleet_tests::{poll, ProcessCluster};
use etcd_client::{EventType, WatchOptions};

use crate::fixtures::{store_only_cluster, PATIENCE};

const PREFIX: &str = "/t40/";

/// One event: (revision, kind, key, value).
type Seen = (i64, &'static str, String, String);

/// A watcher over [`PREFIX`] that, whenever its stream ends or fails, reconnects to the
/// next endpoint (round robin, starting with `endpoints[0]`) with `start_revision` = the
/// last revision it saw + 1.
struct Watcher {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Set if the server canceled the watch, which it must not.
    canceled: Arc<Mutex<Option<String>>>,
    reconnects: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(endpoints: Vec<String>, start_revision: i64) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reconnects = Arc::new(AtomicUsize::new(0));
        let canceled = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (seen, reconnects, canceled) = (seen.clone(), reconnects.clone(), canceled.clone());
            async move {
                let mut next = start_revision;
                for endpoint in endpoints.iter().cycle() {
                    let mut client = ProcessCluster::connect(std::slice::from_ref(endpoint)).await;
                    let options = WatchOptions::new().with_prefix().with_start_revision(next);
                    if let Ok(mut stream) = client.watch(PREFIX, Some(options)).await {
                        while let Ok(Some(resp)) = stream.message().await {
                            if resp.canceled() {
                                *canceled.lock().unwrap() = Some(format!(
                                    "watch from {next} canceled: {:?} (compact revision {})",
                                    resp.cancel_reason(),
                                    resp.compact_revision()
                                ));
                                return;
                            }
                            for ev in resp.events() {
                                let kv = ev.kv().expect("an event has a kv");
                                let kind = match ev.event_type() {
                                    EventType::Put => "PUT",
                                    EventType::Delete => "DELETE",
                                };
                                seen.lock().unwrap().push((
                                    kv.mod_revision(),
                                    kind,
                                    String::from_utf8_lossy(kv.key()).into_owned(),
                                    String::from_utf8_lossy(kv.value()).into_owned(),
                                ));
                                next = kv.mod_revision() + 1;
                            }
                        }
                    }
                    reconnects.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Watcher {
            seen,
            canceled,
            reconnects,
            task,
        }
    }

    fn last_revision(&self) -> i64 {
        self.seen.lock().unwrap().last().map_or(0, |s| s.0)
    }
}

/// Writes puts and deletes over a few keys under [`PREFIX`] until stopped, recording
/// every acknowledged operation as the event the watcher should see.
struct Churn {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    fn start(mut client: etcd_client::Client) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, acked) = (stop.clone(), acked.clone());
            async move {
                let mut op = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    op += 1;
                    let result = if op.is_multiple_of(5) {
                        let key = format!("{PREFIX}k{}", (op + 3) % 8);
                        client.delete(key.as_str(), None).await.map(|r| {
                            (r.deleted() > 0).then(|| (r.header().unwrap().revision(), "DELETE", key, String::new()))
                        })
                    } else {
                        let key = format!("{PREFIX}k{}", op % 8);
                        let value = format!("op{op}");
                        client
                            .put(key.as_str(), value.as_str(), None)
                            .await
                            .map(|r| Some((r.header().unwrap().revision(), "PUT", key, value)))
                    };
                    match result {
                        Ok(Some(seen)) => acked.lock().unwrap().push(seen),
                        Ok(None) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Churn { stop, acked, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize) {
        poll(&format!("{n} acknowledged writes"), PATIENCE, || async {
            anyhow::ensure!(self.acked() >= n, "{} so far", self.acked());
            Ok(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    }

    async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer task panicked");
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Runs churn while the watcher watches from the current revision, kills `victim` (which
/// the caller chose), and checks the watcher saw every revision exactly once, in order,
/// each matching what was written. Returns how often the watcher reconnected.
async fn watch_across_a_kill(mut c: ProcessCluster, watch_first: usize, victim: usize) -> usize {
    let survivors: Vec<usize> = (0..c.len()).filter(|&i| i != victim).collect();
    let writers = ProcessCluster::connect(&survivors.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>()).await;
    let start = writers
        .clone()
        .get(PREFIX, None)
        .await
        .expect("read the start revision")
        .header()
        .unwrap()
        .revision()
        + 1;
    // The watcher starts on `watch_first` and then goes round the others.
    let mut order = vec![c.endpoint(watch_first)];
    order.extend((0..c.len()).filter(|&i| i != watch_first).map(|i| c.endpoint(i)));
    let watcher = Watcher::start(order, start);
    let churn = Churn::start(writers.clone());

    churn.wait_for(60).await;
    c.kill(victim).unwrap();
    let at_kill = churn.acked();
    churn.wait_for(at_kill + 100).await;
    let acked = churn.stop().await;

    let last = writers
        .clone()
        .get(PREFIX, None)
        .await
        .expect("read the final revision")
        .header()
        .unwrap()
        .revision();
    poll("the watcher to reach the last revision", PATIENCE, || async {
        if let Some(why) = watcher.canceled.lock().unwrap().clone() {
            panic!("{why}");
        }
        let at = watcher.last_revision();
        anyhow::ensure!(at >= last, "watcher at {at}, last write at {last}");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
    watcher.task.abort();
    let seen = watcher.seen.lock().unwrap().clone();

    // Nothing else writes, so every revision from `start` to `last` is one event of ours.
    let revisions: Vec<i64> = seen.iter().map(|s| s.0).collect();
    let expected: Vec<i64> = (start..=last).collect();
    if revisions != expected {
        let missing: Vec<_> = expected.iter().filter(|r| !revisions.contains(r)).collect();
        let mut dupes = revisions.clone();
        dupes.dedup();
        panic!(
            "watcher saw {} events for revisions {start}..={last}; missing {missing:?}; \
             {} duplicates; out of order: {}",
            revisions.len(),
            revisions.len() - dupes.len(),
            revisions.windows(2).any(|w| w[0] >= w[1])
        );
    }
    for ack in &acked {
        let event = &seen[(ack.0 - start) as usize];
        assert_eq!(event, ack, "the event at revision {} is not what was written", ack.0);
    }
    println!(
        "{}: watcher saw {} events ({} acknowledged writes), reconnected {} times",
        c.flavor().name(),
        seen.len(),
        acked.len(),
        watcher.reconnects.load(Ordering::SeqCst)
    );
    watcher.reconnects.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_on_the_killed_leader_resumes_elsewhere_without_a_gap() {
    let c = store_only_cluster(3).await;
    let leader = c.leader().await.unwrap_or_else(|e| panic!("{e:?}"));
    let reconnects = watch_across_a_kill(c, leader, leader).await;
    assert!(reconnects >= 1, "the watcher's stream did not break");
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_on_a_follower_misses_nothing_across_a_leader_kill() {
    let c = store_only_cluster(3).await;
    let leader = c.leader().await.unwrap_or_else(|e| panic!("{e:?}"));
    let follower = (0..3).find(|&i| i != leader).unwrap();
    watch_across_a_kill(c, follower, leader).await;
}
