//! What the CLI's live tests share: a real coordinator cluster (the tests crate's
//! `ProcessCluster`), fake agents that register a machine and report unit states through
//! the etcd API exactly as the real agent's keys look, and a runner for the built `esfleet`.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esfleet_core::keys;
use esfleet_core::model::{DesiredState, MachineRecord, ScheduleEntry, UnitState};
use esfleet_tests::{Flavor, ProcessCluster};
use etcd_client::{GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::task::JoinHandle;

/// A one-member coordinator cluster.
pub async fn cluster() -> ProcessCluster {
    ProcessCluster::start(Flavor::Esfleet, 1)
        .await
        .expect("starting a coordinator")
}

/// `esfleet`'s outcome.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the output unless the exit code is `code`.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the built `esfleet` with `args`, the endpoints in `ESFLEET_ENDPOINTS` (when given),
/// and a clean environment otherwise (no ESFLEET_* leaks in from the test's shell).
pub async fn esfleet(endpoints: Option<&str>, args: &[&str]) -> Run {
    esfleet_in(endpoints, args, None).await
}

pub async fn esfleet_in(endpoints: Option<&str>, args: &[&str], dir: Option<&Path>) -> Run {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("ESFLEET_") {
            cmd.env_remove(k);
        }
    }
    if let Some(e) = endpoints {
        cmd.env("ESFLEET_ENDPOINTS", e);
    }
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.env("NO_COLOR", "1");
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("esfleet did not finish within 120 s")
        .expect("running esfleet");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The built `esfleet`: cargo says where for tests; an example finds it in its profile dir.
pub fn bin() -> std::path::PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_esfleet") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the running executable");
    let mut dir = exe.parent().expect("a parent dir");
    if dir.ends_with("examples") || dir.ends_with("deps") {
        dir = dir.parent().expect("the profile dir");
    }
    dir.join("esfleet")
}

/// A 32-hex machine id whose first character is `n`'s (so short ids differ).
pub fn machine_id(n: u8) -> String {
    format!("{n:x}0123456789abcdef0123456789abcde")
}

/// Monotonic "since" timestamps, so a restart shows as a new active-enter time.
static CLOCK: AtomicU64 = AtomicU64::new(1_714_557_600_000_000);

/// A simulated agent: registers `/esfleet/machines/<id>` on a lease and, for every entry
/// of its schedule, reports the state a well-behaved systemd would reach (`launched` →
/// active/running, `loaded` → loaded/inactive/dead), deleting states of entries that went.
pub struct FakeAgent {
    pub id: String,
    pub address: String,
    task: JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    /// Registers machine `n` with `metadata` and starts reporting, if `report`.
    pub async fn start(endpoints: &[String], n: u8, metadata: &[(&str, &str)], report: bool) -> FakeAgent {
        let id = machine_id(n);
        let address = format!("10.88.0.{}", 10 + n);
        let mut c = ProcessCluster::connect(endpoints).await;
        let lease = c.lease_grant(30, None).await.expect("lease grant").id();
        let rec = MachineRecord {
            id: id.clone(),
            hostname: format!("host{n}"),
            address: address.clone(),
            agent_endpoint: String::new(),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            facts: Default::default(),
            agent_version: "test".into(),
        };
        c.put(
            keys::machine(&id),
            serde_json::to_vec(&rec).unwrap(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("registering the machine");
        let (mut keeper, mut acks) = c.lease_keep_alive(lease).await.expect("keepalive");
        let me = id.clone();
        let task = tokio::spawn(async move {
            let keepalive = async move {
                loop {
                    if keeper.keep_alive().await.is_err() {
                        return;
                    }
                    let _ = acks.message().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            let reporter = async move {
                if !report {
                    return std::future::pending().await;
                }
                let prefix = keys::schedule_prefix(&me);
                let mut w = c
                    .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
                    .await
                    .expect("watching the schedule");
                let reported = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
                loop {
                    reconcile(&mut c, &me, lease, &reported).await;
                    match w.message().await {
                        Ok(Some(_)) => {}
                        _ => return,
                    }
                }
            };
            tokio::join!(keepalive, reporter);
        });
        FakeAgent { id, address, task }
    }
}

type Reported = Arc<std::sync::Mutex<std::collections::BTreeMap<String, (String, u64, DesiredState)>>>;

async fn reconcile(c: &mut etcd_client::Client, me: &str, lease: i64, reported: &Reported) {
    let prefix = keys::schedule_prefix(me);
    let Ok(resp) = c.get(prefix.clone(), Some(GetOptions::new().with_prefix())).await else {
        return;
    };
    let mut want = std::collections::BTreeMap::new();
    for kv in resp.kvs() {
        if let Ok(e) = serde_json::from_slice::<ScheduleEntry>(kv.value()) {
            want.insert(e.unit.to_string(), e);
        }
    }
    let before = reported.lock().unwrap().clone();
    let mut puts = Vec::new();
    for (unit, e) in &want {
        let key = (e.hash.clone(), e.generation, e.desired);
        if before.get(unit) == Some(&key) {
            continue;
        }
        let running = e.desired == DesiredState::Launched;
        let state = UnitState {
            unit: unit.clone(),
            load: "loaded".into(),
            active: if running { "active" } else { "inactive" }.into(),
            sub: if running { "running" } else { "dead" }.into(),
            since_usec: CLOCK.fetch_add(1_000_000, Ordering::Relaxed),
            hash: e.hash.clone(),
            generation: e.generation,
            n_restarts: 0,
            error: None,
            healthy: None,
        };
        puts.push(TxnOp::put(
            format!("{}{unit}", keys::states_prefix(me)),
            serde_json::to_vec(&state).unwrap(),
            Some(PutOptions::new().with_lease(lease)),
        ));
        reported.lock().unwrap().insert(unit.clone(), key);
    }
    // In Txns of at most 100 operations (etcd's default limit is 128).
    while !puts.is_empty() {
        let rest = puts.split_off(puts.len().min(100));
        let _ = c.txn(Txn::new().and_then(std::mem::replace(&mut puts, rest))).await;
    }
    for unit in before.keys().filter(|u| !want.contains_key(*u)) {
        let _ = c.delete(format!("{}{unit}", keys::states_prefix(me)), None).await;
        reported.lock().unwrap().remove(unit);
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn unit_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

pub const HELLO: &str =
    "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/bin/sh -c 'while true; do echo hello; sleep 1; done'\n";
