//! What several tests share: booting a cluster of the flavor under test, a steady writer
//! that records every acknowledged write, and checks over what was written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use esfleet_tests::{poll, Flavor, ProcessCluster};
use etcd_client::{Client, GetOptions};

/// Generous bound for anything that should happen "within a few seconds": it only keeps a
/// broken build from hanging; performance is the benchmark's business.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The flavor under test (esfleet unless `ESFLEET_TEST_FLAVOR=etcd`).
pub fn flavor() -> Flavor {
    Flavor::under_test().expect("ESFLEET_TEST_FLAVOR")
}

/// Boots an `n`-member cluster of the flavor under test, serving.
pub async fn cluster(n: usize) -> ProcessCluster {
    ProcessCluster::start(flavor(), n)
        .await
        .unwrap_or_else(|e| panic!("starting a {n}-member cluster: {e:?}"))
}

/// Like [`cluster`], but esfleet members serve only the store (`--scheduler=false`): a
/// new leader's scheduler writes its epoch key, one revision the test did not make, and
/// some tests count every revision as their own. (etcd ignores the variable.)
pub async fn store_only_cluster(n: usize) -> ProcessCluster {
    let options = esfleet_tests::Options {
        env: vec![("ESFLEET_SCHEDULER".into(), "false".into())],
        ..Default::default()
    };
    ProcessCluster::start_with(flavor(), n, options)
        .await
        .unwrap_or_else(|e| panic!("starting a {n}-member cluster: {e:?}"))
}

/// The gRPC status inside an etcd-client error, if it is one.
pub fn status_of(err: &etcd_client::Error) -> Option<&tonic::Status> {
    match err {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        _ => None,
    }
}

/// Fails unless the cluster still serves a linearizable put and get (through `client`).
pub async fn assert_serves(client: &Client, key: &str) {
    let mut c = client.clone();
    let value = format!("still-serving-{}", std::process::id());
    c.put(key, value.as_str(), None)
        .await
        .unwrap_or_else(|e| panic!("put {key} after bad input: {e}"));
    let got = c
        .get(key, None)
        .await
        .unwrap_or_else(|e| panic!("get {key} after bad input: {e}"));
    assert_eq!(got.kvs().len(), 1, "get {key}: {:?}", got.kvs());
    assert_eq!(got.kvs()[0].value(), value.as_bytes());
}

/// One acknowledged write of a [`Writer`].
#[derive(Clone, Debug)]
pub struct Ack {
    pub key: String,
    pub value: String,
    /// The header revision of the put's response: the key's mod_revision.
    pub revision: i64,
    pub at: Instant,
}

/// A task that puts `{prefix}{seq:06}` = `v{seq}` one after another through one client,
/// recording every put the cluster acknowledged. Failed puts are not retried (their
/// outcome is unknown) and the writer moves on to the next key after a short pause.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<AtomicU64>,
    last_error: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(client: Client, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let last_error = Arc::new(Mutex::new(String::new()));
        let task = tokio::spawn({
            let (stop, acks, errors, last_error) = (stop.clone(), acks.clone(), errors.clone(), last_error.clone());
            let prefix = prefix.to_string();
            let mut client = client;
            async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("{prefix}{seq:06}");
                    let value = format!("v{seq}");
                    seq += 1;
                    match client.put(key.as_str(), value.as_str(), None).await {
                        Ok(resp) => {
                            let revision = resp.header().map_or(0, |h| h.revision());
                            let at = Instant::now();
                            acks.lock().unwrap().push(Ack {
                                key,
                                value,
                                revision,
                                at,
                            });
                            // A steady stream, not a flood.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            *last_error.lock().unwrap() = e.to_string();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
        Writer {
            stop,
            acks,
            errors,
            last_error,
            task,
        }
    }

    /// How many puts were acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// How many puts failed so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::SeqCst)
    }

    /// The time of the first acknowledgement after `t`, if any.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acks.lock().unwrap().iter().map(|a| a.at).find(|&at| at > t)
    }

    /// Waits (bounded by [`PATIENCE`]) until at least `n` puts were acknowledged.
    pub async fn wait_for_acks(&self, n: usize) -> anyhow::Result<()> {
        poll(&format!("{n} acknowledged writes"), PATIENCE, || async {
            let got = self.acked();
            ensure!(
                got >= n,
                "{got} acknowledged, {} failed, last error: {}",
                self.errors(),
                self.last_error.lock().unwrap()
            );
            Ok(())
        })
        .await
    }

    /// Stops the writer and returns every acknowledged write, in order.
    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer task panicked");
        let acks = self.acks.lock().unwrap().clone();
        acks
    }
}

/// Every key under `prefix` (linearizable read through `client`), by key.
pub async fn read_prefix(client: &Client, prefix: &str) -> anyhow::Result<BTreeMap<String, etcd_client::KeyValue>> {
    let resp = client
        .clone()
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .with_context(|| format!("reading {prefix}*"))?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.clone()))
        .collect())
}

/// Checks that every acknowledged write is readable (through `client`) with its value and
/// with the mod_revision its put answered.
pub async fn assert_all_acked_present(client: &Client, prefix: &str, acks: &[Ack]) -> anyhow::Result<()> {
    let stored = read_prefix(client, prefix).await?;
    let mut missing = Vec::new();
    for ack in acks {
        match stored.get(&ack.key) {
            None => missing.push(ack.key.clone()),
            Some(kv) => {
                ensure!(
                    kv.value() == ack.value.as_bytes(),
                    "{}: value {:?}, acknowledged {:?}",
                    ack.key,
                    String::from_utf8_lossy(kv.value()),
                    ack.value
                );
                ensure!(
                    kv.mod_revision() == ack.revision,
                    "{}: mod_revision {}, but its put answered revision {}",
                    ack.key,
                    kv.mod_revision(),
                    ack.revision
                );
            }
        }
    }
    if !missing.is_empty() {
        return Err(anyhow!(
            "{} of {} acknowledged writes are missing, e.g. {:?}",
            missing.len(),
            acks.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    Ok(())
}

/// A fencer for a real agent session that only records when and why it fenced.
#[derive(Clone, Default)]
pub struct Fences(pub std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>);

impl esfleet_agent::session::Fencer for Fences {
    async fn fence(&self, why: &str) {
        self.0
            .lock()
            .unwrap()
            .push((std::time::Instant::now(), why.to_string()));
    }
}

/// A real agent session (lease, keepalives, fence clock; no units) on `endpoints`,
/// registered under `key`, with default timing.
pub struct AgentSession {
    pub fences: Fences,
    pub status: tokio::sync::watch::Receiver<esfleet_agent::session::Status>,
    pub lease: i64,
    stop: tokio::sync::watch::Sender<bool>,
    running: tokio::task::JoinHandle<()>,
}

impl AgentSession {
    /// Starts the session and waits until it has registered.
    pub async fn start(endpoints: Vec<String>, key: &str) -> AgentSession {
        let timing = esfleet_agent::config::Timing::default();
        let api = esfleet_agent::client::Client::new(endpoints, timing.request_timeout);
        let fences = Fences::default();
        let (session, status) =
            esfleet_agent::session::Session::new(api, fences.clone(), timing, key.into(), "{}".into());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(session.run(stopped));
        poll("the session to register", PATIENCE, || async {
            anyhow::ensure!(status.borrow().lease.is_some(), "not yet");
            Ok(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
        let lease = status.borrow().lease.expect("registered");
        AgentSession {
            fences,
            status,
            lease,
            stop,
            running,
        }
    }

    /// When the session first fenced, if it did.
    pub fn fenced_at(&self) -> Option<std::time::Instant> {
        self.fences.0.lock().unwrap().first().map(|(at, _)| *at)
    }

    pub fn fence_reasons(&self) -> Vec<String> {
        self.fences
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, why)| why.clone())
            .collect()
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.running.await.unwrap();
    }
}
