//! The scheduler loop: runs only on the Raft leader (DESIGN.md decision 2).
//!
//! On becoming leader in term `T`, the loop writes `/esfleet/scheduler/epoch = T` (only if
//! the stored epoch is older). Then, on every relevant change (units/, machines/, states/,
//! drain/, debounced) and at least every `resync` interval, one *pass*:
//!
//! 1. checks it leads with a quorum (else it waits: a minority leader schedules nothing),
//!    makes a read index and reads everything under `/esfleet/` at one revision `R`;
//! 2. adds what only the leader knows ([`tracker`]): machines unregistered for less than
//!    the loss margin (`suspect`) and (unit, machine) pairs that failed too often (`avoid`);
//! 3. calls the pure `esfleet_core::schedule::schedule(&view, &cfg)`;
//! 4. writes the plan's actions to `schedule/<machine>/<unit>` and the unplaceable reasons to
//!    `unplaceable/<unit>`, in Txns of at most `max_txn_bytes`, each guarded by
//!    `epoch == T` (a deposed leader cannot write) and "nothing under units/ or drain/ was
//!    modified after `R`" (a stale view cannot land; on failure the pass starts over);
//! 5. updates each drain record's progress (`remaining`, `done`) when it changed.
//!
//! The loop stops as soon as this member is no longer leader of term `T`.

pub mod snapshot;
pub mod tracker;
pub mod txn;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use esfleet_core::keys;
use esfleet_core::model::ScheduleEntry;
use esfleet_core::schedule::{self, Action, ClusterView, Plan};
use esfleet_core::UnitName;
use esfleet_proto::etcdserverpb as pb;
use openraft::ServerState;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::node::Node;
use crate::store::WatchBatch;
use crate::sync::Recover;
use snapshot::{encode_epoch, StoreSnapshot};
use tracker::Trackers;

/// The scheduler's settings (flags `--scheduler-*`, `--unit-failure-*`).
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long a machine whose registration disappeared keeps its units before they are
    /// placed elsewhere (counted from when this leader noticed).
    pub loss_margin: Duration,
    /// A full pass runs at least this often, even without a change (watches alone can lose
    /// events under load: fleet's lesson).
    pub resync: Duration,
    /// How long to wait after a change for more changes, to batch bursts into one pass.
    pub debounce: Duration,
    /// After this many failures of a unit on one machine within `failure_window`, the unit
    /// is moved elsewhere.
    pub failure_limit: u32,
    pub failure_window: Duration,
    /// Largest Txn one plan chunk may take (one Raft entry).
    pub max_txn_bytes: usize,
    /// The core scheduler's own settings.
    pub core: schedule::Config,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            loss_margin: Duration::from_secs(1),
            resync: Duration::from_secs(5),
            debounce: Duration::from_millis(10),
            failure_limit: 5,
            failure_window: Duration::from_secs(600),
            max_txn_bytes: 1024 * 1024,
            core: schedule::Config::default(),
        }
    }
}

/// Why a pass did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("this member does not lead with a quorum")]
    NoQuorum,
    #[error("a newer leader took over scheduling (epoch {0})")]
    Deposed(u64),
    #[error("the store changed under the plan; reading again")]
    Stale,
    #[error("cannot read or write the store: {0}")]
    Store(String),
}

/// What a completed pass did, for logs and tests.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub revision: i64,
    pub actions: usize,
    pub unplaceable: usize,
    /// When the view changes by time alone: run a pass then.
    pub wake_at: Option<Instant>,
}

/// Runs the scheduler whenever this member leads, until `stop` turns true.
pub async fn run(node: Arc<Node>, cfg: SchedulerConfig, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.raft.metrics();
    loop {
        if *stop.borrow() {
            return;
        }
        let term = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader).then_some(m.current_term)
        };
        let Some(term) = term else {
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        };
        let deposed = {
            let mut metrics = node.raft.metrics();
            async move {
                loop {
                    {
                        let m = metrics.borrow_and_update();
                        if m.state != ServerState::Leader || m.current_term != term {
                            return;
                        }
                    }
                    if metrics.changed().await.is_err() {
                        return;
                    }
                }
            }
        };
        tracing::info!(term, "leading: scheduler started");
        let mut leading = Leading::new(node.clone(), cfg.clone(), term);
        tokio::select! {
            _ = deposed => tracing::info!(term, "no longer leading: scheduler stopped"),
            _ = leading.run() => {}
            _ = stop.changed() => return,
        }
    }
}

/// The scheduler of one leadership term.
pub struct Leading {
    node: Arc<Node>,
    cfg: SchedulerConfig,
    term: u64,
    trackers: Trackers,
    /// Keys already reported as unparseable (logged once per leadership).
    reported: HashSet<String>,
}

/// Whether an applied batch can change the scheduler's view.
fn relevant(b: &WatchBatch) -> bool {
    b.resync
        || b.events.iter().any(|e| {
            let key = e.kv.as_ref().map(|kv| kv.key.as_ref()).unwrap_or_default();
            [keys::UNITS, keys::MACHINES, keys::STATES, keys::DRAIN, keys::ES]
                .iter()
                .any(|p| key.starts_with(p.as_bytes()))
        })
}

impl Leading {
    pub fn new(node: Arc<Node>, cfg: SchedulerConfig, term: u64) -> Self {
        let trackers = Trackers::new(cfg.loss_margin, cfg.failure_limit, cfg.failure_window);
        Self {
            node,
            cfg,
            term,
            trackers,
            reported: HashSet::new(),
        }
    }

    /// Passes until cancelled (the caller cancels when leadership ends).
    pub async fn run(&mut self) {
        // Subscribed before the first read, so no change can fall between read and wait.
        let mut live = self.node.store.watch_tx.subscribe();
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            // After a pass that found nothing to do, a change waits as long as that pass took:
            // at 2,500 machines agents' state reports trigger a pass every few milliseconds,
            // and back-to-back passes of seconds each took a whole core from the leader's
            // Raft, keepalives and watches. A pass that acted is followed at once.
            let mut idle = Duration::ZERO;
            let wake_at = match self.pass().await {
                Ok(r) => {
                    failures = 0;
                    if r.actions == 0 {
                        idle = started.elapsed().min(self.cfg.resync);
                    }
                    if r.actions > 0 || r.unplaceable > 0 {
                        tracing::debug!(
                            revision = r.revision,
                            actions = r.actions,
                            unplaceable = r.unplaceable,
                            "scheduled"
                        );
                    }
                    r.wake_at
                }
                Err(PassError::Stale) => {
                    failures += 1;
                    // Somebody else is writing right now: read again soon, backing off a bit.
                    Some(Instant::now() + Duration::from_millis(5 * u64::from(failures.min(20))))
                }
                Err(PassError::NoQuorum) => {
                    // Not spinning: wait for Raft's metrics to change (or a while).
                    let mut m = self.node.raft.metrics();
                    let _ = tokio::time::timeout(Duration::from_millis(500), m.changed()).await;
                    Some(Instant::now())
                }
                Err(e @ PassError::Deposed(_)) => {
                    tracing::info!(term = self.term, "{e}");
                    // Leadership ends with the next metrics change; stop scheduling now.
                    std::future::pending::<()>().await;
                    return;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "scheduling pass failed");
                    Some(Instant::now() + Duration::from_millis(100 * u64::from(failures.min(20))))
                }
            };
            let resync_at = Instant::now() + self.cfg.resync;
            let deadline = wake_at.map_or(resync_at, |w| w.min(resync_at));
            self.wait(&mut live, deadline, idle).await;
        }
    }

    /// Waits until `deadline` or a relevant change, then a short debounce, or `idle` if
    /// longer (never past `deadline`).
    async fn wait(&self, live: &mut broadcast::Receiver<Arc<WatchBatch>>, deadline: Instant, idle: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                b = live.recv() => match b {
                    Ok(b) if !relevant(&b) => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep_until(deadline).await;
                        return;
                    }
                },
            }
        }
        let now = Instant::now();
        // A deadline (a suspect machine's margin ending) cuts a long pause short, never the
        // debounce.
        let until = (now + self.cfg.debounce.max(idle))
            .min(deadline)
            .max(now + self.cfg.debounce);
        tokio::time::sleep_until(until).await;
        // Everything that arrived meanwhile is covered by the pass about to run.
        while !matches!(
            live.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
    }

    /// Reads one consistent snapshot as the leader of this term.
    async fn read(&mut self) -> Result<StoreSnapshot, PassError> {
        if !self.node.is_leader_with_quorum() {
            return Err(PassError::NoQuorum);
        }
        // A read index from this member as leader (it has committed in its term and heard
        // from a quorum), then the local apply catching up: the local read is linearizable.
        let index = self.node.leader_read_index().await.map_err(|_| PassError::NoQuorum)?;
        self.node
            .raft
            .wait(Some(self.node.request_timeout))
            .applied_index_at_least(Some(index), "scheduler read")
            .await
            .map_err(|e| PassError::Store(e.to_string()))?;
        // Reading and parsing everything is CPU work (hundreds of ms at 10,000 units): off
        // the async workers, which also carry Raft's heartbeats.
        let node = self.node.clone();
        let snap = tokio::task::spawn_blocking(move || StoreSnapshot::read(&node.store.mvcc.read().or_recover()))
            .await
            .map_err(|e| PassError::Store(e.to_string()))?
            .map_err(|e| PassError::Store(e.to_string()))?;
        for (key, why) in &snap.skipped {
            if self.reported.insert(key.clone()) {
                tracing::warn!(key, why, "ignoring a record the scheduler cannot read");
            }
        }
        Ok(snap)
    }

    /// Whether this member still leads in the scheduler's term, confirmed by a quorum now:
    /// then no later term has a majority, so no later leader can have written an epoch.
    async fn still_leading(&self) -> bool {
        self.node.leader_read_index().await.is_ok() && self.node.raft.metrics().borrow().current_term == self.term
    }

    /// Overwrites an epoch no leader wrote (`why`), unless it changed since `snap`.
    async fn replace_forged_epoch(&mut self, snap: &StoreSnapshot, why: &str) -> Result<(), PassError> {
        let Some(rev) = snap.epoch_revision else { return Ok(()) };
        tracing::warn!(
            term = self.term,
            "the stored scheduler epoch is {why}: no leader wrote it; replacing it (who can write {}?)",
            keys::SCHEDULER_EPOCH
        );
        let txn = pb::TxnRequest {
            compare: vec![txn::mod_is(keys::SCHEDULER_EPOCH, rev)],
            success: vec![txn::put(keys::SCHEDULER_EPOCH, encode_epoch(self.term))],
            failure: vec![],
        };
        txn::propose(&self.node, txn)
            .await
            .map_err(|s| PassError::Store(s.message().to_string()))?;
        Ok(())
    }

    /// Writes `epoch = term` unless a newer epoch is stored.
    async fn write_epoch(&mut self) -> Result<(), PassError> {
        let mine = encode_epoch(self.term);
        let txn = pb::TxnRequest {
            compare: vec![txn::mod_is(keys::SCHEDULER_EPOCH, 0)],
            success: vec![txn::put(keys::SCHEDULER_EPOCH, mine.clone())],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest {
                    compare: vec![txn::value_below(keys::SCHEDULER_EPOCH, mine.clone())],
                    success: vec![txn::put(keys::SCHEDULER_EPOCH, mine.clone())],
                    failure: vec![],
                })),
            }],
        };
        txn::propose(&self.node, txn)
            .await
            .map_err(|s| PassError::Store(s.message().to_string()))?;
        Ok(())
    }

    /// One scheduling pass.
    pub async fn pass(&mut self) -> Result<PassReport, PassError> {
        let started = Instant::now();
        let mut snap = self.read().await?;
        if snap.epoch != Some(self.term) {
            // A newer term took over: stand down. A missing or older epoch (deleted by
            // hand) is written again: `write_epoch` never lowers a newer one. An epoch
            // that is no term at all (garbled, or above every term while this leader
            // still holds a quorum: written by a client, never by a leader) would park
            // scheduling for good; it is overwritten.
            let garbled = snap.epoch.is_none() && snap.epoch_revision.is_some();
            if let Some(e) = snap.epoch.filter(|e| *e > self.term) {
                if !self.still_leading().await {
                    return Err(PassError::Deposed(e));
                }
                self.replace_forged_epoch(&snap, &format!("{e}, above the current term {}", self.term))
                    .await?;
            } else if garbled && self.still_leading().await {
                self.replace_forged_epoch(&snap, "not a number").await?;
            }
            self.write_epoch().await?;
            snap = self.read().await?;
            if snap.epoch != Some(self.term) {
                return Err(PassError::Deposed(snap.epoch.unwrap_or(0)));
            }
        }
        let read = started.elapsed();
        let tracked = self.trackers.observe(&snap, Instant::now());
        let view = build_view(&snap, tracked.suspect, tracked.avoid);
        let core = self.cfg.core.clone();
        let (view, plan) = tokio::task::spawn_blocking(move || {
            let plan = schedule::schedule(&view, &core);
            (view, plan)
        })
        .await
        .map_err(|e| PassError::Store(e.to_string()))?;
        let ops = plan_ops(&snap, &plan);
        let planned = started.elapsed();
        let report = PassReport {
            revision: snap.revision,
            actions: plan.actions.len(),
            unplaceable: plan.unplaceable.len(),
            wake_at: tracked.wake_at,
        };
        self.write_guarded(ops, snap.revision).await?;
        let progress = drain_progress(&snap, &placements_after(&view, &plan));
        self.write_guarded(progress, snap.revision).await?;
        // One line per pass that wrote something or took long: the scale bench reads the
        // durations from here (`scheduler pass total_ms=…`).
        let total = started.elapsed();
        if report.actions > 0 || total >= Duration::from_millis(100) {
            tracing::info!(
                total_ms = total.as_millis() as u64,
                read_ms = read.as_millis() as u64,
                plan_ms = (planned - read).as_millis() as u64,
                actions = report.actions,
                units = snap.units.len(),
                "scheduler pass"
            );
        }
        Ok(report)
    }

    /// Writes `ops` in chunks, each guarded by the epoch and by "units/ and drain/ are as
    /// read at `revision`".
    async fn write_guarded(&self, ops: Vec<pb::RequestOp>, revision: i64) -> Result<(), PassError> {
        for chunk in txn::chunk_ops(ops, self.cfg.max_txn_bytes) {
            let t = guarded(self.term, revision, chunk);
            let (resp, _) = txn::propose(&self.node, t)
                .await
                .map_err(|s| PassError::Store(s.message().to_string()))?;
            if !resp.succeeded {
                return Err(stale_or_deposed(&resp, self.term));
            }
        }
        Ok(())
    }
}

/// A plan chunk as a Txn that lands only if `epoch == term` and nothing under `units/`,
/// `drain/` or `es/` changed after `revision`; otherwise it reads the epoch (to tell why).
pub fn guarded(term: u64, revision: i64, ops: Vec<pb::RequestOp>) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![
            txn::value_is(keys::SCHEDULER_EPOCH, encode_epoch(term)),
            txn::prefix_unchanged_since(keys::UNITS, revision),
            txn::prefix_unchanged_since(keys::DRAIN, revision),
            txn::prefix_unchanged_since(keys::ES, revision),
        ],
        success: ops,
        failure: vec![txn::get(keys::SCHEDULER_EPOCH)],
    }
}

fn stale_or_deposed(resp: &pb::TxnResponse, term: u64) -> PassError {
    let epoch = resp.responses.first().and_then(|r| match &r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => {
            r.kvs.first().and_then(|kv| snapshot::decode_epoch(&kv.value))
        }
        _ => None,
    });
    match epoch {
        Some(e) if e != term => PassError::Deposed(e),
        _ => PassError::Stale,
    }
}

/// The core's view of a snapshot plus the leader's trackers.
pub fn build_view(snap: &StoreSnapshot, suspect: BTreeSet<String>, avoid: BTreeSet<(UnitName, String)>) -> ClusterView {
    ClusterView {
        revision: snap.revision.max(0) as u64,
        units: snap.units.clone(),
        machines: snap.machines.clone(),
        draining: snap.drains.keys().cloned().collect(),
        suspect,
        placements: snap.placements.clone(),
        states: snap.states.clone(),
        avoid,
        es: snap.es.clone(),
        retired: snap.retired.clone(),
    }
}

/// The plan as KV operations: tombstones of data left on lost machines, schedule entries,
/// unplaceable reasons that changed, then cluster records marked bootstrapped.
pub fn plan_ops(snap: &StoreSnapshot, plan: &Plan) -> Vec<pb::RequestOp> {
    let mut ops = Vec::with_capacity(plan.retired.len() + plan.actions.len());
    let mut touched = BTreeSet::new();
    // Before the deletions they go with: chunks land in order, so a placement is never
    // gone without its tombstone (a failed later chunk only means both are written again).
    for (machine, rec) in &plan.retired {
        let key = keys::retired(machine, &rec.unit);
        if touched.insert(key.clone()) {
            let value = serde_json::to_vec(rec).expect("a retired record serializes");
            if rec.released {
                // A release goes only onto the record that was read: one an operator deleted
                // (or replaced) since must not come back released.
                ops.push(only_if_unchanged(&key, snap.revision, txn::put(&key, value)));
            } else {
                ops.push(txn::put(&key, value));
            }
        }
    }
    for a in &plan.actions {
        match a {
            Action::Put { machine, entry } => {
                let key = keys::schedule(machine, &entry.unit);
                if !touched.insert(key.clone()) {
                    continue; // the core never writes a key twice; a Txn must not either
                }
                let value = serde_json::to_vec(entry).expect("a schedule entry serializes");
                ops.push(txn::put(&key, value));
            }
            Action::Delete { machine, unit } => {
                let key = keys::schedule(machine, unit);
                if touched.insert(key.clone()) {
                    ops.push(txn::delete(&key));
                }
            }
        }
    }
    for (unit, why) in &plan.unplaceable {
        if snap.unplaceable.get(unit) != Some(why) {
            ops.push(txn::put(&keys::unplaceable(unit), why.clone()));
        }
    }
    for unit in snap.unplaceable.keys() {
        if !plan.unplaceable.contains_key(unit) {
            ops.push(txn::delete(&keys::unplaceable(unit)));
        }
    }
    // Last: a write under es/ makes every later chunk's guard fail, and chunks go in order.
    for c in &plan.es_bootstrapped {
        if let Some(rec) = snap.es.get(c) {
            let rec = esfleet_core::es::ClusterRecord {
                bootstrapped: true,
                ..rec.clone()
            };
            let value = serde_json::to_vec(&rec).expect("a cluster record serializes");
            ops.push(txn::put(&keys::es_cluster(c), value));
        }
    }
    ops
}

/// The placements once the plan is written.
pub fn placements_after(view: &ClusterView, plan: &Plan) -> BTreeMap<String, BTreeMap<UnitName, ScheduleEntry>> {
    let mut after = ClusterView {
        placements: view.placements.clone(),
        ..Default::default()
    };
    schedule::apply(&mut after, plan);
    after.placements
}

/// `op` as a nested Txn that runs only if `key` exists and was not modified after `revision`.
fn only_if_unchanged(key: &str, revision: i64, op: pb::RequestOp) -> pb::RequestOp {
    let exists = pb::Compare {
        result: pb::compare::CompareResult::Greater as i32,
        ..txn::mod_is(key, 0)
    };
    let unchanged = pb::Compare {
        result: pb::compare::CompareResult::Less as i32,
        ..txn::mod_is(key, revision + 1)
    };
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest {
            compare: vec![exists, unchanged],
            success: vec![op],
            failure: vec![],
        })),
    }
}

/// Drain records whose progress changed: `remaining` = units still placed on the machine.
pub fn drain_progress(
    snap: &StoreSnapshot,
    after: &BTreeMap<String, BTreeMap<UnitName, ScheduleEntry>>,
) -> Vec<pb::RequestOp> {
    let mut ops = Vec::new();
    for (machine, rec) in &snap.drains {
        let remaining: Vec<String> = after
            .get(machine)
            .map(|u| u.keys().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        let mut next = rec.clone();
        next.done = remaining.is_empty();
        next.remaining = remaining;
        if next != *rec {
            let key = keys::drain(machine);
            let value = serde_json::to_vec(&next).expect("a drain record serializes");
            // Only onto the record that was read: the prefix guard cannot see a deletion, and
            // an undrain after the read must not be undone by this write.
            ops.push(only_if_unchanged(&key, snap.revision, txn::put(&key, value)));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use esfleet_core::model::RetiredRecord;

    use super::*;

    fn key_of(op: &pb::RequestOp) -> (&'static str, String, Vec<u8>) {
        match op.request.as_ref().unwrap() {
            pb::request_op::Request::RequestPut(p) => {
                ("put", String::from_utf8(p.key.to_vec()).unwrap(), p.value.to_vec())
            }
            pb::request_op::Request::RequestDeleteRange(d) => {
                ("delete", String::from_utf8(d.key.to_vec()).unwrap(), Vec::new())
            }
            other => panic!("unexpected op {other:?}"),
        }
    }

    #[test]
    fn tombstones_are_written_before_the_deletions_they_go_with() {
        let unit = UnitName::new("logs-d@1.service").unwrap();
        let rec = RetiredRecord {
            unit: unit.clone(),
            generation: 17,
            paths: vec!["/var/lib/esfleet/es/logs-d1/17".into()],
            cluster: "logs".into(),
            released: false,
        };
        let plan = Plan {
            actions: vec![Action::Delete {
                machine: "m1".into(),
                unit: unit.clone(),
            }],
            retired: vec![("m1".into(), rec.clone())],
            ..Plan::default()
        };
        let ops = plan_ops(&StoreSnapshot::default(), &plan);
        let ops: Vec<_> = ops.iter().map(key_of).collect();
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert_eq!(
            (ops[0].0, ops[0].1.as_str()),
            ("put", "/esfleet/retired/m1/logs-d@1.service")
        );
        assert_eq!(serde_json::from_slice::<RetiredRecord>(&ops[0].2).unwrap(), rec);
        assert_eq!(
            (ops[1].0, ops[1].1.as_str()),
            ("delete", "/esfleet/schedule/m1/logs-d@1.service")
        );
    }

    #[test]
    fn a_release_lands_only_on_the_record_that_was_read() {
        let rec = RetiredRecord {
            unit: UnitName::new("logs-d@1.service").unwrap(),
            generation: 17,
            paths: vec!["/var/lib/esfleet/es/logs-d1/17".into()],
            cluster: "logs".into(),
            released: true,
        };
        let plan = Plan {
            retired: vec![("m1".into(), rec)],
            ..Plan::default()
        };
        let snap = StoreSnapshot {
            revision: 40,
            ..StoreSnapshot::default()
        };
        let ops = plan_ops(&snap, &plan);
        assert_eq!(ops.len(), 1);
        let Some(pb::request_op::Request::RequestTxn(t)) = &ops[0].request else {
            panic!("a nested Txn: {ops:?}")
        };
        let key = b"/esfleet/retired/m1/logs-d@1.service".to_vec();
        assert!(t.compare.iter().all(|c| c.key == key) && t.compare.len() == 2, "{t:?}");
        assert!(t
            .compare
            .iter()
            .any(|c| c.result == pb::compare::CompareResult::Less as i32
                && c.target_union == Some(pb::compare::TargetUnion::ModRevision(41))));
        assert_eq!(key_of(&t.success[0]).0, "put");
    }
}
