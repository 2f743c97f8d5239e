//! What the agent's tests share: in-process coordinator members on loopback, an agent on
//! the fake systemd, a pausable TCP proxy (to cut the agent off), schedule entries, and
//! polling.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use esfleet_agent::client::{self, Client};
use esfleet_agent::config::{Config, Timing};
use esfleet_agent::fake::FakeUnitManager;
use esfleet_coordinator::server::{self, Running};
use esfleet_core::keys;
use esfleet_core::model::{unit_hash, DesiredState, MachineRecord, ScheduleEntry, UnitState};
use esfleet_core::options::Fence;
use esfleet_core::UnitName;
use esfleet_proto::etcdserverpb::request_op;
use esfleet_proto::mvccpb::KeyValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bound for anything that should happen "within a few seconds": it only keeps a broken
/// build from hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const SIMPLE: &str = "[Service]\nExecStart=/bin/sleep 1000\n";

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub fn n(s: &str) -> UnitName {
    UnitName::new(s).unwrap()
}

/// A machine id for test `i`.
pub fn machine_id(i: u8) -> String {
    format!("{:032x}", 0xabc0_0000_u64 + u64::from(i))
}

/// One in-process coordinator member.
pub struct Member {
    pub name: String,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub dir: std::path::PathBuf,
    pub initial_cluster: String,
    pub running: Option<Running>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    async fn boot(&mut self, listeners: Option<(TcpListener, TcpListener)>) -> anyhow::Result<()> {
        let client_url = format!("http://{}", self.client_addr);
        let peer_url = format!("http://{}", self.peer_addr);
        let flags = esfleet_coordinator::config::Flags::try_parse_from([
            "esfleet-coordinator",
            "--name",
            &self.name,
            "--data-dir",
            self.dir.to_str().unwrap(),
            "--listen-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-cluster",
            &self.initial_cluster,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "300",
            // These tests write schedules by hand: a scheduler would remove entries for
            // units it does not know.
            "--scheduler=false",
        ])
        .unwrap();
        let cfg = flags.validate().unwrap();
        let (c, p) = match listeners {
            Some(l) => l,
            None => (
                TcpListener::bind(self.client_addr).await?,
                TcpListener::bind(self.peer_addr).await?,
            ),
        };
        self.running = Some(server::start(cfg, c, p).await?);
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Starts the stopped member again on its ports and data. Tasks of the old instance
    /// serving open client streams may hold its store for a moment: retried until free.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match self.boot(None).await {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "member not restartable yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restarting {}: {e:?}", self.name),
            }
        }
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members and waits until they serve.
    pub async fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        for _ in 0..n {
            let c = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let p = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.push((c, p));
        }
        let initial_cluster = listeners
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://{}", p.local_addr().unwrap()))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = listeners
            .iter()
            .enumerate()
            .map(|(i, (c, p))| Member {
                name: format!("m{i}"),
                client_addr: c.local_addr().unwrap(),
                peer_addr: p.local_addr().unwrap(),
                dir: dir.path().join(format!("m{i}")),
                initial_cluster: initial_cluster.clone(),
                running: None,
            })
            .collect();
        // Members serve clients only once a leader exists: boot them together.
        futures::future::join_all(
            members
                .iter_mut()
                .zip(listeners)
                .map(|(m, l)| async move { m.boot(Some(l)).await.unwrap() }),
        )
        .await;
        Cluster { members, _dir: dir }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// A client for the test's own reads and writes.
    pub fn client(&self) -> Client {
        Client::new(self.endpoints(), Duration::from_secs(2))
    }

    /// The index of the current leader.
    pub fn leader(&self) -> usize {
        self.members
            .iter()
            .position(|m| {
                m.running.as_ref().is_some_and(|r| {
                    let metrics = r.node.raft.metrics();
                    let m = metrics.borrow();
                    m.current_leader == Some(m.id)
                })
            })
            .expect("a leader")
    }

    pub async fn stop(&mut self) {
        for m in &mut self.members {
            m.stop().await;
        }
    }
}

/// Fast clocks for tests: TTL 2 s, fence after 1 s, keepalive every 200 ms, poll every 1 s.
pub fn fast_timing() -> Timing {
    Timing {
        lease_ttl: Duration::from_secs(2),
        keepalive: Duration::from_millis(200),
        fence_margin: Duration::from_secs(1),
        poll: Duration::from_secs(1),
        request_timeout: Duration::from_millis(500),
    }
    .validate()
    .unwrap()
}

pub fn agent_config(endpoints: Vec<String>, machine: &str, timing: Timing) -> Config {
    Config {
        endpoints,
        machine_id: machine.to_string(),
        address: "127.0.0.1".into(),
        agent_endpoint: "127.0.0.1:1".into(),
        metadata: [
            ("zone".to_string(), "a".to_string()),
            ("rack".to_string(), "r1".to_string()),
        ]
        .into(),
        unit_dir: "/nonexistent".into(),
        // Never /etc: a test that writes config files gives a temporary root of its own.
        config_root: std::env::temp_dir().join("esfleet-agent-tests-no-files"),
        // Never /var/lib: a test that removes retired data gives a temporary root of its own.
        data_root: std::env::temp_dir().join("esfleet-agent-tests-no-data"),
        set_max_map_count: None,
        data_path: "/".into(),
        timing,
        stop_units_on_exit: false,
        state_dir: None,
    }
}

pub type Agent = esfleet_agent::agent::Running<FakeUnitManager>;

/// Starts an agent on a fresh fake systemd.
pub fn agent(cfg: Config) -> (Agent, FakeUnitManager) {
    let fake = FakeUnitManager::new();
    (esfleet_agent::agent::start(cfg, fake.clone(), None), fake)
}

pub fn entry(name: &str, text: &str, fence: Fence) -> ScheduleEntry {
    ScheduleEntry {
        unit: n(name),
        text: text.to_string(),
        hash: unit_hash(text),
        desired: DesiredState::Launched,
        generation: 1,
        fence,
        enable: false,
        env: [
            ("ESFLEET_ZONE".to_string(), "a".to_string()),
            ("ESFLEET_NOTE".to_string(), "say \"hi\" 100%".to_string()),
        ]
        .into(),
        files: Default::default(),
    }
}

pub async fn put_raw(c: &mut Client, key: &str, value: &[u8]) {
    c.txn(client::txn(
        vec![],
        vec![request_op::Request::RequestPut(client::put(key, value, 0))],
        vec![],
    ))
    .await
    .unwrap();
}

pub async fn schedule(c: &mut Client, machine: &str, e: &ScheduleEntry) {
    put_raw(c, &keys::schedule(machine, &e.unit), &serde_json::to_vec(e).unwrap()).await;
}

pub async fn unschedule(c: &mut Client, machine: &str, unit: &str) {
    c.txn(client::txn(
        vec![],
        vec![request_op::Request::RequestDeleteRange(client::delete(
            &keys::schedule(machine, &n(unit)),
        ))],
        vec![],
    ))
    .await
    .unwrap();
}

pub async fn get(c: &mut Client, key: &str) -> Option<KeyValue> {
    let (kvs, _) = c.range_prefix(key).await.unwrap();
    kvs.into_iter().find(|kv| kv.key.as_ref() == key.as_bytes())
}

pub async fn machine(c: &mut Client, id: &str) -> Option<(MachineRecord, i64)> {
    get(c, &keys::machine(id))
        .await
        .map(|kv| (serde_json::from_slice(&kv.value).unwrap(), kv.lease))
}

/// The state record under `states/<machine>/<raw>`, with its lease.
pub async fn state(c: &mut Client, machine: &str, raw: &str) -> Option<(UnitState, i64)> {
    get(c, &format!("{}{raw}", keys::states_prefix(machine)))
        .await
        .map(|kv| (serde_json::from_slice(&kv.value).unwrap(), kv.lease))
}

/// Every state record of a machine, by raw name.
pub async fn states(c: &mut Client, machine: &str) -> BTreeMap<String, UnitState> {
    let prefix = keys::states_prefix(machine);
    let (kvs, _) = c.range_prefix(&prefix).await.unwrap();
    kvs.into_iter()
        .map(|kv| {
            let k = String::from_utf8(kv.key.to_vec()).unwrap();
            (
                k[prefix.len()..].to_string(),
                serde_json::from_slice(&kv.value).unwrap(),
            )
        })
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fake's live state of a unit: (active, sub).
pub async fn live(fake: &FakeUnitManager, unit: &str) -> (String, String) {
    use esfleet_agent::manager::UnitManager;
    let s = fake.states(&[n(unit)]).await.unwrap().remove(0);
    (s.active, s.sub)
}

/// A TCP proxy to one upstream that the test can cut (every connection dropped, new ones
/// refused) and restore: the agent loses the cluster while the test keeps it.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection reset
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            up,
            conns,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
