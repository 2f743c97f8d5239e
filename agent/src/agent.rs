//! The agent, assembled: the [`Session`] task (lease, registration, fencing), the worker
//! task (schedule watch → reconcile → state reports), and the agent gRPC service.
//!
//! The worker keeps the schedule of this machine in memory, fed by one watch on its own
//! prefix. It re-reads the prefix in full (then watches from there) when it starts, after
//! every (re-)registration, and when the watch reports its start revision compacted, so
//! no change is ever missed. A reconcile pass runs after every change and every poll
//! interval (the safety net, DESIGN.md decision 6); systemd's change notices trigger a
//! state report between passes. Errors go to a backoff policy, never to a busy loop.
//!
//! Every full re-read also reads `retired/<machine>/`: data this machine's placements left
//! when the machine was lost and their units were placed elsewhere. Only records the
//! scheduler has released (the node is healthy elsewhere again) are acted on; while
//! any is not, every reconcile pass reads the prefix again. After a reconcile pass, released
//! records whose unit no longer runs here from that generation are handed to a background
//! task that removes the data ([`crate::retire`], inside `--data-root` only) and then the
//! record; the worker goes on reconciling meanwhile.
//!
//! Shutdown ([`Running::stop`]): stop the worker, stop the units if configured, then revoke
//! the lease (the machine disappears at once), then stop the gRPC service.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use esfleet_core::diff::check_entry;
use esfleet_core::keys;
use esfleet_core::model::{MachineRecord, RetiredRecord, ScheduleEntry};
use esfleet_core::UnitName;
use esfleet_proto::etcdserverpb as pb;
use esfleet_proto::mvccpb::event::EventType;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::client::{Client, ClientError, Watch};
use crate::config::Config;
use crate::configfiles::ConfigRoot;
use crate::health::Health;
use crate::inspect::{AgentService, Commands};
use crate::manager::UnitManager;
use crate::reconcile::{ReconcileError, Shared, UnitFencer};
use crate::report::{unit_states, Reporter};
use crate::session::{Session, Status};

/// A running agent.
pub struct Running<M> {
    /// The session as the worker sees it (for tests and logs).
    pub status: watch::Receiver<Status>,
    /// The systemd side, shared with the worker (tests read the agent's memory here).
    pub shared: Arc<Shared<M>>,
    stop_worker: watch::Sender<bool>,
    stop_session: watch::Sender<bool>,
    worker: JoinHandle<()>,
    session: JoinHandle<()>,
    server: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
    stop_units_on_exit: bool,
}

impl<M: UnitManager> Running<M> {
    /// Stops in order: worker, units (with `stop_units_on_exit`), lease, service.
    pub async fn stop(self) {
        let _ = self.stop_worker.send(true);
        if let Err(e) = self.worker.await {
            tracing::error!(error = %e, "worker task failed");
        }
        if self.stop_units_on_exit {
            self.shared.stop_all().await;
        }
        let _ = self.stop_session.send(true);
        if let Err(e) = self.session.await {
            tracing::error!(error = %e, "session task failed");
        }
        if let Some((tx, task)) = self.server {
            let _ = tx.send(());
            let _ = task.await;
        }
    }
}

/// The machine record this agent registers.
pub fn machine_record(cfg: &Config) -> MachineRecord {
    MachineRecord {
        id: cfg.machine_id.clone(),
        hostname: crate::facts::hostname(),
        address: cfg.address.clone(),
        agent_endpoint: cfg.agent_endpoint.clone(),
        metadata: cfg.metadata.clone(),
        facts: crate::facts::detect(&cfg.data_path),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// How often the agent re-reads its host's facts (sysctls, memory, CPUs, free disk).
pub const FACTS_EVERY: Duration = Duration::from_secs(30);

/// Re-reads the machine record every [`FACTS_EVERY`] and hands the session one that changed
/// in a way the scheduler cares about ([`crate::facts::worth_reporting`]): a sysctl raised
/// after the agent started makes the host eligible for Elasticsearch nodes without an
/// agent restart, and one lowered stops new placements there.
async fn refresh_facts(
    cfg: Config,
    mut sent: MachineRecord,
    tx: watch::Sender<String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FACTS_EVERY) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let now = machine_record(&cfg);
        if crate::facts::worth_reporting(&sent, &now) {
            tracing::info!(before = ?sent.facts, after = ?now.facts, "host facts changed; updating the machine record");
            tx.send_replace(serde_json::to_string(&now).expect("a MachineRecord always serializes"));
            sent = now;
        }
    }
}

/// Starts the agent; `listener` (if any) serves the agent gRPC service.
pub fn start<M: UnitManager>(cfg: Config, manager: M, listener: Option<TcpListener>) -> Running<M> {
    start_with(cfg, manager, listener, Commands::default())
}

/// [`start`], with the programs the gRPC service runs.
pub fn start_with<M: UnitManager>(
    cfg: Config,
    manager: M,
    listener: Option<TcpListener>,
    commands: Commands,
) -> Running<M> {
    start_inner(cfg, manager, listener, commands, None)
}

/// [`start`] without a gRPC service, talking over `channels` (one per endpoint, shared with
/// other agents in this process) instead of connections of its own. For simulations that
/// run many agents in one process.
pub fn start_with_channels<M: UnitManager>(
    cfg: Config,
    manager: M,
    channels: Vec<tonic::transport::Channel>,
) -> Running<M> {
    start_inner(cfg, manager, None, Commands::default(), Some(channels))
}

fn start_inner<M: UnitManager>(
    cfg: Config,
    manager: M,
    listener: Option<TcpListener>,
    commands: Commands,
    channels: Option<Vec<tonic::transport::Channel>>,
) -> Running<M> {
    if let Some(want) = cfg.set_max_map_count {
        // Before the machine record is built, so the facts report the new value.
        crate::facts::ensure_max_map_count(want);
    }
    let shared = Shared::new(manager, ConfigRoot::new(cfg.config_root.clone()));
    let machine = machine_record(&cfg);
    let record = serde_json::to_string(&machine).expect("a MachineRecord always serializes");
    let timeout = cfg.timing.request_timeout;
    let new_client: Arc<dyn Fn() -> Client + Send + Sync> = {
        let endpoints = cfg.endpoints.clone();
        Arc::new(move || match &channels {
            Some(ch) => Client::with_channels(endpoints.clone(), ch.clone(), timeout),
            None => Client::new(endpoints.clone(), timeout),
        })
    };
    let (record_tx, record_rx) = watch::channel(record.clone());
    let (mut session, status) = Session::new(
        new_client(),
        UnitFencer(shared.clone()),
        cfg.timing,
        keys::machine(&cfg.machine_id),
        record,
    );
    session = session.with_record_updates(record_rx);
    if let Some(dir) = &cfg.state_dir {
        session = session.with_handoff(dir.join("lease"), cfg.stop_units_on_exit);
        shared.keep_fence_list(dir.join("fence-stop"));
    }
    let (stop_session, session_rx) = watch::channel(false);
    let session = tokio::spawn(session.run(session_rx));

    let (stop_worker, worker_rx) = watch::channel(false);
    let health = Arc::new(Health::default());
    tokio::spawn(crate::health::run(
        health.clone(),
        {
            let shared = shared.clone();
            move || shared.local().desired.clone()
        },
        cfg.timing.poll,
        worker_rx.clone(),
    ));
    let worker = Worker {
        health,
        prefix: keys::schedule_prefix(&cfg.machine_id),
        client: new_client(),
        new_client,
        retired: Vec::new(),
        held: 0,
        handled: HashSet::new(),
        cleanup: Cleanup::default(),
        shared: shared.clone(),
        session: status.clone(),
        seen: Status::default(),
        desired: BTreeMap::new(),
        refused: BTreeMap::new(),
        errors: BTreeMap::new(),
        rev: 0,
        reporter: Reporter::default(),
        backoff: Backoff::new(Duration::from_millis(200), cfg.timing.poll),
        cfg: cfg.clone(),
    };
    tokio::spawn(refresh_facts(cfg.clone(), machine, record_tx, worker_rx.clone()));
    let worker = tokio::spawn(worker.run(worker_rx));

    let server = listener.map(|listener| {
        let scheduled_shared = shared.clone();
        let svc = AgentService::new(
            cfg.machine_id.clone(),
            Arc::new(move |u: &UnitName| scheduled_shared.local().desired.contains_key(u)),
            commands,
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                // Each request runs a process, and at most 16 run at once anyway.
                .max_concurrent_streams(64)
                .add_service(esfleet_proto::agent::agent_server::AgentServer::new(svc))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "agent service failed");
            }
        });
        (tx, task)
    });

    Running {
        status,
        shared,
        stop_worker,
        stop_session,
        worker,
        session,
        server,
        stop_units_on_exit: cfg.stop_units_on_exit,
    }
}

/// Runs the agent until `shutdown` completes.
pub async fn run<M: UnitManager>(
    cfg: Config,
    manager: M,
    listener: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let running = start(cfg, manager, listener);
    shutdown.await;
    tracing::info!("shutting down");
    running.stop().await;
}

/// Doubling delays between `min` and `max`, for anything that failed.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: crate::jitter::Rng,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
            rng: crate::jitter::Rng::seeded(),
        }
    }
    /// The next wait: doubling, jittered over its upper half, so that agents failing
    /// together (an overloaded or failed-over leader) do not retry in lockstep.
    fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        self.rng.jitter(d)
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Where the worker's view of the schedule stands.
enum Feed {
    /// Read the prefix in full, then watch from there.
    Resync,
    /// Open the watch again from the last revision seen (the stream broke).
    Resume,
    Watching(Box<Watch>),
}

/// What a watch response meant.
enum Seen {
    Changed,
    Nothing,
    /// The watch was canceled (compacted history, or another reason): read everything.
    Canceled,
}

/// A `retired/<machine>/<unit>` record as read.
struct Tombstone {
    key: String,
    mod_revision: i64,
    rec: RetiredRecord,
}

/// The background removal of retired data; aborted with the worker (a removal cut short
/// is done again at the next full re-read: removing is idempotent).
#[derive(Default)]
struct Cleanup(Option<JoinHandle<()>>);

impl Cleanup {
    fn busy(&self) -> bool {
        self.0.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

struct Worker<M> {
    cfg: Config,
    /// `HealthCheck=` results, reported with the states.
    health: Arc<Health>,
    prefix: String,
    client: Client,
    /// Another connection like `client`, for the cleanup task.
    new_client: Arc<dyn Fn() -> Client + Send + Sync>,
    /// Released retired records read at the last read, not yet handed to the cleanup.
    retired: Vec<Tombstone>,
    /// Records not released yet at the last read: read again after every pass.
    held: usize,
    /// Records (key, mod_revision) already handed to the cleanup or logged since the last
    /// full re-read: the re-reads between full ones skip them (a failed removal is retried
    /// at the next full re-read, and nothing is logged twice).
    handled: HashSet<(String, i64)>,
    cleanup: Cleanup,
    shared: Arc<Shared<M>>,
    session: watch::Receiver<Status>,
    /// The session as last acted on.
    seen: Status,
    /// Valid entries.
    desired: BTreeMap<UnitName, ScheduleEntry>,
    /// Refused entries: raw name under the prefix → why.
    refused: BTreeMap<String, String>,
    /// Per-unit errors (actions that failed, refused updates of a running unit).
    errors: BTreeMap<UnitName, String>,
    /// The last revision of the schedule seen.
    rev: i64,
    reporter: Reporter,
    backoff: Backoff,
}

impl<M: UnitManager> Worker<M> {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = match self.shared.manager.changes().await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "no change notices from systemd; relying on the poll");
                mpsc::channel(1).1
            }
        };
        let mut sync = Feed::Resync;
        let mut next_pass = Instant::now();
        let mut report_at: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let st = *self.session.borrow_and_update();
            if st.epoch != self.seen.epoch {
                // (Re-)registered: the schedule may have changed while we were away, and
                // the states must be written on the new lease.
                sync = Feed::Resync;
                self.reporter.clear();
                if !st.fenced {
                    self.shared.unfence();
                }
            }
            self.seen = st;
            if st.epoch == 0 || st.fenced {
                tokio::select! {
                    _ = self.session.changed() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            match sync {
                Feed::Resync | Feed::Resume => {
                    let res = if matches!(sync, Feed::Resync) {
                        self.full_read().await
                    } else {
                        self.client.watch(&self.prefix, self.rev + 1).await
                    };
                    match res {
                        Ok(w) => {
                            if matches!(sync, Feed::Resync) {
                                next_pass = Instant::now();
                            }
                            sync = Feed::Watching(Box::new(w));
                            self.backoff.reset();
                        }
                        Err(e) => {
                            let d = self.backoff.fail();
                            tracing::warn!(error = %e, retry_in = ?d, "cannot read the schedule");
                            tokio::select! {
                                _ = sleep(d) => {}
                                _ = self.session.changed() => {}
                                _ = shutdown.changed() => {}
                            }
                        }
                    }
                    continue;
                }
                Feed::Watching(_) => {}
            }
            let Feed::Watching(w) = &mut sync else { continue };
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = self.session.changed() => {}
                _ = shutdown.changed() => {}
                msg = w.responses.message() => match msg {
                    Ok(Some(resp)) => match self.on_watch(resp) {
                        Seen::Changed => next_pass = Instant::now(),
                        Seen::Nothing => {}
                        Seen::Canceled => sync = Feed::Resync,
                    },
                    Ok(None) => {
                        tracing::warn!(endpoint = self.client.endpoint(), "schedule watch ended; resuming");
                        self.client.rotate();
                        sync = Feed::Resume;
                    }
                    Err(status) => {
                        let e = self.client.stream_error(status);
                        tracing::warn!(error = %e, "schedule watch failed; resuming");
                        sync = Feed::Resume;
                    }
                },
                _ = self.health.changed.notified() => {
                    report_at.get_or_insert(Instant::now() + Duration::from_millis(50));
                }
                Some(unit) = changes.recv() => {
                    // systemd announces every unit on the host; only ours lead to a report,
                    // and a burst of notices becomes one batched read.
                    if self.desired.contains_key(&unit) {
                        report_at.get_or_insert(Instant::now() + Duration::from_millis(50));
                    }
                }
                _ = sleep_until(report_at.unwrap_or(far)), if report_at.is_some() => {
                    report_at = None;
                    while changes.try_recv().is_ok() {}
                    if let Err(e) = self.report().await {
                        tracing::warn!(error = %e, "cannot report unit states; the next pass retries");
                    }
                }
                _ = sleep_until(next_pass) => {
                    next_pass = Instant::now() + self.pass().await;
                }
            }
        }
    }

    /// One reconcile pass and report; returns when to run again.
    async fn pass(&mut self) -> Duration {
        let mut ok = true;
        match self.shared.reconcile(&self.desired, &mut self.errors).await {
            Ok(n) if n > 0 => tracing::info!(tasks = n, "reconciled"),
            Ok(_) => {}
            Err(ReconcileError::Fenced) => return self.cfg.timing.poll,
            Err(e) => {
                ok = false;
                tracing::warn!(error = %e, "reconcile pass incomplete");
            }
        }
        // Only after a complete pass: a failed one may not have adopted what runs here (an
        // old generation could still be running on the data a record names).
        if ok {
            if self.held > 0 && !self.cleanup.busy() {
                self.reread_retired().await;
            }
            self.retire();
        }
        if let Err(e) = self.report().await {
            ok = false;
            tracing::warn!(error = %e, "cannot report unit states");
        }
        if ok {
            self.backoff.reset();
            self.cfg.timing.poll
        } else {
            self.backoff.fail()
        }
    }

    async fn report(&mut self) -> Result<usize, ReportError> {
        let Some(lease) = self.seen.lease else {
            return Ok(0); // between leases: the next registration rewrites everything
        };
        let names: Vec<UnitName> = self.desired.keys().cloned().collect();
        let live = self.shared.states(&names).await?;
        let shared = &self.shared;
        let health = &self.health;
        let states = unit_states(
            &self.desired,
            &self.refused,
            &live,
            |u| shared.written(u),
            &self.errors,
            |u| health.get(u),
        );
        Ok(self
            .reporter
            .publish(&mut self.client, &self.cfg.machine_id, lease, states)
            .await?)
    }

    /// Reads the whole schedule (and the states already published), then opens the watch
    /// right after the revision read.
    async fn full_read(&mut self) -> Result<Watch, ClientError> {
        let (kvs, rev) = self.client.range_prefix(&self.prefix).await?;
        // Start from an empty schedule, but remember the last good entries: a unit whose
        // stored entry is now refused keeps running on its last good one (as on the watch
        // path), instead of being unloaded by a re-read.
        let previous = std::mem::take(&mut self.desired);
        self.refused.clear();
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if let Some((name, good)) = UnitName::new(key.strip_prefix(&self.prefix).unwrap_or(&key))
                .ok()
                .and_then(|n| previous.get(&n).map(|e| (n, e.clone())))
            {
                self.desired.insert(name, good);
            }
            self.apply_put(&key, &kv.value);
        }
        self.rev = rev;
        let (found, _) = self
            .client
            .range_prefix(&keys::states_prefix(&self.cfg.machine_id))
            .await?;
        self.reporter
            .reset(&self.cfg.machine_id, &found, self.seen.lease.unwrap_or(0));
        let (found, _) = self
            .client
            .range_prefix(&keys::retired_prefix(&self.cfg.machine_id))
            .await?;
        self.handled.clear();
        self.retired = self.tombstones(found);
        tracing::info!(
            units = self.desired.len(),
            refused = self.refused.len(),
            retired = self.retired.len(),
            retired_held = self.held,
            revision = rev,
            "schedule read"
        );
        self.client.watch(&self.prefix, rev + 1).await
    }

    /// Reads `retired/<machine>/` again, while some record waits for its release.
    async fn reread_retired(&mut self) {
        match self
            .client
            .range_prefix(&keys::retired_prefix(&self.cfg.machine_id))
            .await
        {
            Ok((found, _)) => {
                let before = self.held;
                // New ones only: those seen before are still in `retired` or handled.
                let new = self.tombstones(found);
                self.retired.extend(new);
                if self.held < before {
                    tracing::info!(held = self.held, ready = self.retired.len(), "retired data released");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read this machine's retired records; the next pass retries"),
        }
    }

    /// The released retired records among `kvs` (counting the others in `held`); the
    /// unreadable ones are logged and left alone.
    fn tombstones(&mut self, kvs: Vec<esfleet_proto::mvccpb::KeyValue>) -> Vec<Tombstone> {
        let prefix = keys::retired_prefix(&self.cfg.machine_id);
        let mut out = Vec::new();
        self.held = 0;
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if !self.handled.insert((key.clone(), kv.mod_revision)) {
                continue;
            }
            let raw = key.strip_prefix(&prefix).unwrap_or(&key);
            match serde_json::from_slice::<RetiredRecord>(&kv.value) {
                Ok(rec) if rec.unit.as_str() == raw && !rec.released => {
                    // Not handled yet: looked at again at every re-read until released.
                    self.handled.remove(&(key, kv.mod_revision));
                    self.held += 1;
                }
                Ok(rec) if rec.unit.as_str() == raw => out.push(Tombstone {
                    key,
                    mod_revision: kv.mod_revision,
                    rec,
                }),
                Ok(rec) => tracing::error!(
                    key,
                    unit = %rec.unit,
                    "a retired-data record names another unit than its key; not acting on it. \
                     The key stays for an operator: check it, then delete it"
                ),
                Err(e) => tracing::error!(
                    key,
                    error = %e,
                    "cannot read a retired-data record; not acting on it. \
                     The key stays for an operator: check it, then delete it"
                ),
            }
        }
        out
    }

    /// Hands the retired records whose unit no longer runs here from their generation to a
    /// cleanup task (unless one is still running). A record whose unit is scheduled here
    /// with that generation is left alone, key and data; one whose unit is still installed
    /// from it (a reconcile pass has not removed it yet) waits for a later pass.
    fn retire(&mut self) {
        if self.retired.is_empty() || self.cleanup.busy() {
            return;
        }
        let mut ready = Vec::new();
        {
            let local = self.shared.local();
            for t in std::mem::take(&mut self.retired) {
                let unit = &t.rec.unit;
                if self.desired.get(unit).is_some_and(|e| e.generation == t.rec.generation) {
                    tracing::info!(
                        key = t.key,
                        "the retired placement is scheduled here with its generation; its data and the record stay"
                    );
                    continue;
                }
                let installed = local.installed.contains_key(unit)
                    && local.generation.get(unit).is_none_or(|g| *g == t.rec.generation);
                if installed {
                    self.retired.push(t);
                } else {
                    ready.push(t);
                }
            }
        }
        if ready.is_empty() {
            return;
        }
        let in_use: Vec<String> = self
            .desired
            .values()
            .filter_map(|e| e.files.get(esfleet_core::es::ELASTICSEARCH_YML))
            .filter_map(|yml| crate::retire::path_data(yml))
            .collect();
        let root = self.cfg.data_root.clone();
        let mut client = (self.new_client)();
        self.cleanup.0 = Some(tokio::spawn(async move {
            for t in ready {
                match crate::retire::remove_record(root.clone(), t.rec.clone(), in_use.clone()).await {
                    Ok(removed) => match client.delete_if_unchanged(&t.key, t.mod_revision).await {
                        Ok(deleted) => tracing::info!(
                            key = t.key,
                            paths = ?t.rec.paths,
                            removed,
                            deleted,
                            "removed the data a retired placement left here"
                        ),
                        Err(e) => tracing::warn!(
                            key = t.key,
                            error = %e,
                            "removed a retired placement's data, but cannot delete its record; the next full re-read retries"
                        ),
                    },
                    Err(e) if e.is_refusal() => tracing::error!(
                        key = t.key,
                        error = %e,
                        "not removing a retired placement's data. The key stays for an operator: \
                         check the path, remove what should go by hand, then delete the key"
                    ),
                    Err(e) => tracing::warn!(
                        key = t.key,
                        error = %e,
                        "cannot remove a retired placement's data; the next full re-read retries"
                    ),
                }
            }
        }));
    }

    fn on_watch(&mut self, resp: pb::WatchResponse) -> Seen {
        if resp.canceled {
            if resp.compact_revision > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision,
                    from = self.rev + 1,
                    "schedule history compacted past our revision; reading it in full"
                );
            } else {
                tracing::warn!(
                    reason = resp.cancel_reason,
                    "schedule watch canceled; reading it in full"
                );
            }
            return Seen::Canceled;
        }
        let mut changed = false;
        for ev in resp.events {
            let Some(kv) = ev.kv else { continue };
            self.rev = self.rev.max(kv.mod_revision);
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if ev.r#type == EventType::Delete as i32 {
                self.apply_delete(&key);
            } else {
                self.apply_put(&key, &kv.value);
            }
            changed = true;
        }
        if changed {
            Seen::Changed
        } else {
            Seen::Nothing
        }
    }

    fn apply_put(&mut self, key: &str, value: &[u8]) {
        let raw = key.strip_prefix(&self.prefix).unwrap_or(key).to_string();
        match check_entry(&raw, value) {
            Ok((name, mut entry)) => {
                self.shared.config_root().place(&mut entry);
                self.refused.remove(&raw);
                self.errors.remove(&name);
                self.desired.insert(name, entry);
            }
            Err(e) => {
                tracing::error!(key, error = %e, "refusing schedule entry");
                match UnitName::new(&raw) {
                    // A bad update of a unit we run: keep running the last good entry.
                    Ok(name) if self.desired.contains_key(&name) => {
                        self.errors.insert(name, e.to_string());
                    }
                    _ => {
                        self.refused.insert(raw, e.to_string());
                    }
                }
            }
        }
    }

    fn apply_delete(&mut self, key: &str) {
        let raw = key.strip_prefix(&self.prefix).unwrap_or(key);
        self.refused.remove(raw);
        if let Ok(name) = UnitName::new(raw) {
            self.desired.remove(&name);
            self.errors.remove(&name);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error("reading unit states from systemd: {0}")]
    Manager(#[from] crate::manager::ManagerError),
    #[error("writing unit states: {0}")]
    Client(#[from] ClientError),
}
