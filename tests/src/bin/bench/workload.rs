//! The workload: the same four measurements, through the same client, against any
//! etcd-v3-compatible cluster given by its client endpoints.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, WatchOptions};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::stats::{Latencies, Throughput};

/// What to run; filled from the command line.
#[derive(Debug, Clone)]
pub struct Params {
    /// Puts before the sequential measurement, not counted (connections, leader, caches).
    pub warmup_puts: usize,
    /// Sequential puts, one at a time, each one's latency recorded.
    pub seq_puts: usize,
    /// How long each closed-loop throughput phase runs.
    pub duration: Duration,
    /// Requests in flight in the throughput phases.
    pub concurrency: usize,
    /// gRPC connections the concurrent requests and the watchers are spread over.
    pub connections: usize,
    /// Bytes in each value written.
    pub value_size: usize,
    /// Distinct keys the concurrent puts cycle through and the gets read.
    pub key_space: usize,
    /// Watchers, each on its own watch stream, all watching one prefix.
    pub watchers: usize,
    /// Puts whose delivery to every watcher is timed.
    pub watch_events: usize,
    /// A single request that takes longer than this fails the measurement.
    pub op_timeout: Duration,
}

/// The figures of one system; each measurement on its own, so one failure does not hide the
/// others.
#[derive(Debug)]
pub struct Measurements {
    pub seq_put: Result<Latencies, String>,
    pub conc_put: Result<Throughput, String>,
    pub lin_get: Result<Throughput, String>,
    pub watch: Result<Latencies, String>,
}

impl Measurements {
    pub fn all_failed(reason: &str) -> Self {
        Self {
            seq_put: Err(reason.to_string()),
            conc_put: Err(reason.to_string()),
            lin_get: Err(reason.to_string()),
            watch: Err(reason.to_string()),
        }
    }
}

pub async fn run(endpoints: &[String], p: &Params) -> Measurements {
    let clients = match connect(endpoints, p).await {
        Ok(clients) => clients,
        Err(e) => return Measurements::all_failed(&e),
    };
    let value = vec![b'v'; p.value_size];

    let seq_put = sequential_puts(&clients[0], &value, p).await;
    let conc_put = closed_loop(&clients, Op::Put(value.clone()), p).await;
    let lin_get = match populate(&clients, &value, p).await {
        Ok(()) => closed_loop(&clients, Op::Get, p).await,
        Err(e) => Err(format!("writing the keys to read: {e}")),
    };
    let watch = watch_latency(&clients, &value, p).await;
    Measurements {
        seq_put,
        conc_put,
        lin_get,
        watch,
    }
}

/// One client per connection, each balanced over every endpoint the way an application would
/// use the cluster.
async fn connect(endpoints: &[String], p: &Params) -> Result<Vec<Client>, String> {
    let mut clients = Vec::with_capacity(p.connections);
    for _ in 0..p.connections.max(1) {
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        let client = timeout(p.op_timeout, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| format!("connecting to {endpoints:?}: timed out"))?
            .map_err(|e| format!("connecting to {endpoints:?}: {e}"))?;
        clients.push(client);
    }
    Ok(clients)
}

async fn put(client: &mut Client, key: String, value: &[u8], p: &Params) -> Result<(), String> {
    match timeout(p.op_timeout, client.put(key.clone(), value, None)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("put {key}: {e}")),
        Err(_) => Err(format!("put {key}: no answer within {:?}", p.op_timeout)),
    }
}

async fn sequential_puts(client: &Client, value: &[u8], p: &Params) -> Result<Latencies, String> {
    let mut client = client.clone();
    for i in 0..p.warmup_puts {
        put(&mut client, format!("/bench/warmup/{i:08}"), value, p).await?;
    }
    let mut latencies = Latencies::with_capacity(p.seq_puts);
    for i in 0..p.seq_puts {
        let start = Instant::now();
        put(&mut client, format!("/bench/seq/{i:08}"), value, p).await?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

fn get_key(i: usize) -> String {
    format!("/bench/get/{i:08}")
}

/// Writes the keys the linearizable gets read, `concurrency` at a time.
async fn populate(clients: &[Client], value: &[u8], p: &Params) -> Result<(), String> {
    let mut tasks = JoinSet::new();
    for w in 0..p.concurrency {
        let mut client = clients[w % clients.len()].clone();
        let (value, p) = (value.to_vec(), p.clone());
        tasks.spawn(async move {
            for i in (w..p.key_space).step_by(p.concurrency) {
                put(&mut client, get_key(i), &value, &p).await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| e.to_string())??;
    }
    Ok(())
}

#[derive(Clone)]
enum Op {
    Put(Vec<u8>),
    /// A default (linearizable) single-key range.
    Get,
}

/// `concurrency` workers, each with one request in flight, until `duration` has passed.
/// The first failed request fails the measurement.
async fn closed_loop(clients: &[Client], op: Op, p: &Params) -> Result<Throughput, String> {
    let start = Instant::now();
    let deadline = start + p.duration;
    let mut tasks = JoinSet::new();
    for w in 0..p.concurrency {
        let mut client = clients[w % clients.len()].clone();
        let (op, p) = (op.clone(), p.clone());
        tasks.spawn(async move {
            let mut latencies = Latencies::with_capacity(4096);
            // Workers start at different keys so they do not all hit the same one.
            let mut i = w * p.key_space / p.concurrency;
            while Instant::now() < deadline {
                let key = i % p.key_space;
                i += 1;
                let t = Instant::now();
                match &op {
                    Op::Put(value) => put(&mut client, format!("/bench/conc/{key:08}"), value, &p).await?,
                    Op::Get => {
                        let key = get_key(key);
                        match timeout(p.op_timeout, client.get(key.clone(), None)).await {
                            Ok(Ok(resp)) if resp.kvs().len() == 1 => {}
                            Ok(Ok(resp)) => return Err(format!("get {key}: expected 1 key, got {}", resp.kvs().len())),
                            Ok(Err(e)) => return Err(format!("get {key}: {e}")),
                            Err(_) => return Err(format!("get {key}: no answer within {:?}", p.op_timeout)),
                        }
                    }
                }
                latencies.push(t.elapsed());
            }
            Ok::<Latencies, String>(latencies)
        });
    }
    let mut all = Latencies::with_capacity(p.concurrency * 4096);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(latencies)) => all.extend(latencies),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
                tasks.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let elapsed = start.elapsed();
    Ok(Throughput {
        ops: all.len() as u64,
        elapsed,
        latencies: all,
    })
}

const WATCH_PREFIX: &str = "/bench/watch/";

/// Opens `watchers` watch streams on one prefix, then puts `watch_events` keys one at a time;
/// each put's latency to each watcher runs from just before the put is sent to the moment
/// that watcher receives the event (so it includes the put's commit). The next put is sent
/// once every watcher has the previous one.
async fn watch_latency(clients: &[Client], value: &[u8], p: &Params) -> Result<Latencies, String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(usize, Instant), String>>();
    let mut tasks = JoinSet::new();
    for w in 0..p.watchers {
        let mut client = clients[w % clients.len()].clone();
        let options = WatchOptions::new().with_prefix();
        let mut stream = timeout(p.op_timeout, client.watch(WATCH_PREFIX, Some(options)))
            .await
            .map_err(|_| format!("watcher {w}: creating the watch timed out"))?
            .map_err(|e| format!("watcher {w}: creating the watch: {e}"))?;
        // Events are only counted once every watch is known to be in place.
        match timeout(p.op_timeout, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.created() => {}
            Ok(Ok(Some(resp))) => return Err(format!("watcher {w}: first response is not `created`: {resp:?}")),
            Ok(Ok(None)) => return Err(format!("watcher {w}: stream closed before `created`")),
            Ok(Err(e)) => return Err(format!("watcher {w}: {e}")),
            Err(_) => return Err(format!("watcher {w}: no `created` response")),
        }
        let tx = tx.clone();
        // The task owns the whole stream: dropping its request half would end the watch.
        tasks.spawn(async move {
            loop {
                let resp = match stream.message().await {
                    Ok(Some(resp)) => resp,
                    Ok(None) => {
                        let _ = tx.send(Err(format!("watcher {w}: stream closed")));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("watcher {w}: {e}")));
                        return;
                    }
                };
                let now = Instant::now();
                if resp.canceled() {
                    let _ = tx.send(Err(format!(
                        "watcher {w}: canceled by the server: {:?}",
                        resp.cancel_reason()
                    )));
                    return;
                }
                for event in resp.events() {
                    let index = event
                        .kv()
                        .and_then(|kv| kv.key_str().ok())
                        .and_then(|key| key.strip_prefix(WATCH_PREFIX))
                        .and_then(|suffix| suffix.parse::<usize>().ok());
                    let msg = index
                        .map(|i| (i, now))
                        .ok_or_else(|| format!("watcher {w}: unexpected event {event:?}"));
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);

    let mut writer = clients[0].clone();
    let mut latencies = Latencies::with_capacity(p.watchers * p.watch_events);
    let mut early: HashMap<usize, Vec<Instant>> = HashMap::new();
    let result = async {
        for i in 0..p.watch_events {
            let sent = Instant::now();
            put(&mut writer, format!("{WATCH_PREFIX}{i:08}"), value, p).await?;
            let mut received = early.remove(&i).unwrap_or_default();
            let deadline = tokio::time::Instant::now() + p.op_timeout;
            while received.len() < p.watchers {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Ok((index, at)))) if index == i => received.push(at),
                    Ok(Some(Ok((index, at)))) if index > i => early.entry(index).or_default().push(at),
                    Ok(Some(Ok((index, _)))) => {
                        return Err(format!("event {index} delivered again while waiting for event {i}"))
                    }
                    Ok(Some(Err(e))) => return Err(e),
                    Ok(None) => return Err("every watcher has stopped".to_string()),
                    Err(_) => {
                        return Err(format!(
                            "event {i} reached {} of {} watchers within {:?}",
                            received.len(),
                            p.watchers,
                            p.op_timeout
                        ))
                    }
                }
            }
            for at in received {
                latencies.push(at.duration_since(sent));
            }
        }
        Ok(())
    }
    .await;
    tasks.abort_all();
    result.map(|()| latencies)
}
