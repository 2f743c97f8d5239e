//! The health-gated Elasticsearch operations: rolling restart and scale-down, one node at a
//! time. They drive two things: the units, through [`FleetOps`] (the Fleet service in the
//! CLI, a recording fake in tests), and Elasticsearch, through its REST API ([`Es`]).
//!
//! The gates (ECK's lessons, REFERENCE.md "Elasticsearch facts"):
//! - restart: refused while voting exclusions exist. Before each node is stopped, every node
//!   of the cluster is in `_cat/nodes` (so never more than one is down) and the cluster is
//!   green (no copy is rebuilding that the stop could take away); allocation `primaries`
//!   while it is down (no replica rebuilds); after it is started, wait until it is back in
//!   `_cat/nodes` (ECK #5449), re-enable allocation, wait for green; only then the next one.
//!   If anything fails while allocation is `primaries`, it is reset before the error returns.
//! - restart: refused while an index has no replica (its shards are unavailable while the
//!   node holding them restarts: red), unless forced.
//! - drain (a host's units move elsewhere): each data node on the host is excluded from
//!   allocation by node id (its replacement keeps the name, not the id) and its shards
//!   move off before the scheduler is asked to move it; refused when copies that would be
//!   the last of their shard cannot move, unless forced.
//! - scale-down: refused while allocation is restricted (`cluster.routing.allocation.enable`
//!   other than `all`): shards could not move and health could not recover.
//! - data scale-down (ECK #8195): green and core's `data_removal_check`, add the node to the
//!   allocation exclusions (keeping the operator's), wait until `_cat/shards` shows no copy on
//!   it, then stop and destroy, then take only its name out of the exclusions.
//! - master scale-down: core's `master_removal_check`, voting-configuration exclusion first,
//!   then stop and destroy, then clear the exclusion; on a failure after the exclusion it is
//!   cleared before the error returns (an exclusion left behind blocks restarts). Refused
//!   while other nodes are excluded from voting (clearing ours clears theirs).
//!
//! Both are resumable: a restart first resets allocation, starts a node an interrupted run
//! left stopped and waits for green; a scale-down finds an already-removed node and only
//! takes its name out of the exclusions and records the count.

use std::future::Future;
use std::time::Duration;

use esfleet_core::es::{self as core_es, ClusterRecord, Role};
use esfleet_core::UnitName;
use serde_json::Value;
use tokio::time::Instant;

use super::api::{CatShard, Es, Health, ALLOCATION_ENABLE, EXCLUDE_ID, EXCLUDE_NAME};
use super::http::{EsHttp, HttpError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A safety rule says no: the reason, and what to do.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Es(#[from] HttpError),
    /// The Fleet service refused or failed (its message).
    #[error("{0}")]
    Fleet(String),
    #[error("{0}")]
    Timeout(String),
    /// An operation failed after it changed the cluster; what was done (or is left to do)
    /// to put that change back.
    #[error("{error}\n{cleanup}")]
    CleanedUp { error: Box<OpsError>, cleanup: String },
}

/// A unit as the operations need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitView {
    pub name: String,
    /// False when the unit is not submitted.
    pub exists: bool,
    /// `inactive`, `loaded` or `launched`.
    pub desired: String,
    /// systemd's ActiveState on its machine (empty when not placed or not reported).
    pub active: String,
    /// The machine's address (empty when not placed).
    pub address: String,
}

/// What the operations ask of esfleet. Each call that changes a unit waits until the unit
/// got there (or fails with why).
#[allow(async_fn_in_trait)] // used with concrete types on one task: no Send bound needed
pub trait FleetOps {
    /// The current view of these units, in the same order.
    async fn units(&self, names: &[UnitName]) -> Result<Vec<UnitView>, OpsError>;
    /// Desired `loaded`; waits until the unit stopped.
    async fn stop(&self, unit: &UnitName) -> Result<(), OpsError>;
    /// Gives a stopped instance its template's current text; true if it changed.
    async fn refresh(&self, unit: &UnitName) -> Result<bool, OpsError>;
    /// Desired `launched`; waits until the unit runs.
    async fn start(&self, unit: &UnitName) -> Result<(), OpsError>;
    /// Removes the unit; waits until it is gone from its machine.
    async fn destroy(&self, unit: &UnitName) -> Result<(), OpsError>;
    /// Stores the cluster record if its key is still at `if_revision`; the new revision.
    async fn store(&self, record: &ClusterRecord, if_revision: i64) -> Result<i64, OpsError>;
    /// A progress line for the operator.
    fn say(&self, line: &str);
}

/// How long the waits on Elasticsearch may take, and how often they look.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// Each wait (green, node rejoined, shards moved off); 0: no limit.
    pub timeout: Duration,
    pub poll: Duration,
}

/// The cluster being operated on: its stored record and the record's mod revision.
#[derive(Debug, Clone)]
pub struct Target {
    pub record: ClusterRecord,
    pub revision: i64,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub unit: UnitName,
    pub name: String,
    pub role: Role,
    pub ordinal: u32,
}

/// Every node the record defines, by role (masters, data, coordinating) then ordinal.
pub fn nodes(record: &ClusterRecord) -> Vec<NodeRef> {
    let mut v: Vec<NodeRef> = core_es::instances(&record.spec)
        .into_iter()
        .filter_map(|u| {
            core_es::node_of(&record.spec, &u).map(|n| NodeRef {
                unit: u,
                name: n.name,
                role: n.role,
                ordinal: n.ordinal,
            })
        })
        .collect();
    v.sort_by_key(|n| (n.role, n.ordinal));
    v
}

/// A probe's answer: done (with a value) or still waiting (why, for the progress line).
pub enum Step<T> {
    Done(T),
    Waiting(String),
}

/// Whether an Elasticsearch error means "not now" during a wait (a node restarting, no
/// master elected yet) rather than a refusal.
fn transient(e: &HttpError) -> bool {
    match e {
        HttpError::Unreachable { .. } => true,
        HttpError::Es { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        HttpError::BadAnswer { .. } => false,
    }
}

/// Polls `probe` until it is done, printing a line whenever what it waits for changes;
/// fails after `waits.timeout`.
pub async fn wait_until<F, T, P, Fut>(fleet: &F, waits: &Waits, what: &str, mut probe: P) -> Result<T, OpsError>
where
    F: FleetOps,
    P: FnMut() -> Fut,
    Fut: Future<Output = Result<Step<T>, OpsError>>,
{
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let why = match probe().await {
            Ok(Step::Done(v)) => return Ok(v),
            Ok(Step::Waiting(why)) => why,
            Err(OpsError::Es(e)) if transient(&e) => e.to_string(),
            Err(e) => return Err(e),
        };
        if why != last {
            fleet.say(&format!("  waiting for {what} ({}s): {why}", start.elapsed().as_secs()));
            last = why;
        }
        if !waits.timeout.is_zero() && start.elapsed() >= waits.timeout {
            return Err(OpsError::Timeout(format!(
                "gave up waiting for {what} after {} (--es-timeout); last seen: {last}",
                humantime::format_duration(waits.timeout)
            )));
        }
        tokio::time::sleep(waits.poll).await;
    }
}

async fn wait_green<F: FleetOps>(fleet: &F, es: &Es<'_>, waits: &Waits) -> Result<Health, OpsError> {
    wait_until(fleet, waits, "cluster health green", || async {
        let h = es.health_wait("green").await?;
        Ok(if h.status == "green" && !h.timed_out {
            Step::Done(h)
        } else {
            Step::Waiting(h.summary())
        })
    })
    .await
}

/// The names in `names` that are not in `_cat/nodes` now.
async fn missing_nodes(es: &Es<'_>, names: &[String]) -> Result<Vec<String>, OpsError> {
    let present = es.cat_nodes().await?;
    Ok(names
        .iter()
        .filter(|n| !present.iter().any(|p| &p.name == *n))
        .cloned()
        .collect())
}

/// Waits until every name in `names` is in `_cat/nodes` and the cluster is green: the gate
/// before a node is stopped. Both, at the moment of the stop: a node that crashed and came
/// back empty since the last pass is in `_cat/nodes` but its copies are still rebuilding,
/// and stopping another node then can take the last copy of a shard.
async fn wait_ready<F: FleetOps>(fleet: &F, es: &Es<'_>, waits: &Waits, names: &[String]) -> Result<Health, OpsError> {
    wait_until(
        fleet,
        waits,
        "every node to be in the cluster and the cluster green",
        || async {
            let missing = missing_nodes(es, names).await?;
            if !missing.is_empty() {
                return Ok(Step::Waiting(format!("not in _cat/nodes: {}", missing.join(", "))));
            }
            let h = es.health_wait("green").await?;
            Ok(if h.status == "green" && !h.timed_out {
                Step::Done(h)
            } else {
                Step::Waiting(h.summary())
            })
        },
    )
    .await
}

/// Waits until every name in `names` is in `_cat/nodes`.
async fn wait_joined<F: FleetOps>(fleet: &F, es: &Es<'_>, waits: &Waits, names: &[String]) -> Result<(), OpsError> {
    let what = if names.len() == 1 {
        format!("{} to join the cluster", names[0])
    } else {
        "every node to be in the cluster".to_string()
    };
    wait_until(fleet, waits, &what, || async {
        let missing = missing_nodes(es, names).await?;
        Ok(if missing.is_empty() {
            Step::Done(())
        } else {
            Step::Waiting(format!("not in _cat/nodes: {}", missing.join(", ")))
        })
    })
    .await
}

/// The ES endpoint of a node: its machine address and its role's http port.
pub fn endpoint(record: &ClusterRecord, role: Role, address: &str) -> String {
    format!("{address}:{}", record.spec.role(role).http_port)
}

/// `http://host:port` of a node esfleet talks to, for the commands it tells the operator.
fn es_url(es: &Es<'_>) -> String {
    let ep = es
        .http
        .endpoints()
        .into_iter()
        .next()
        .unwrap_or_else(|| "<node>:9200".into());
    format!("http://{ep}")
}

/// The command that clears every voting configuration exclusion without waiting.
fn clear_exclusions_cmd(es: &Es<'_>) -> String {
    format!(
        "curl -X DELETE '{}/_cluster/voting_config_exclusions?wait_for_removal=false'",
        es_url(es)
    )
}

/// After `error` while allocation was `primaries`: resets it (both scopes), best effort,
/// and says in the error what became of it.
async fn undo_primaries(es: &Es<'_>, cluster: &str, node: &NodeRef, error: OpsError) -> OpsError {
    let cleanup = match es.reset_setting(ALLOCATION_ENABLE).await {
        Ok(()) => format!(
            "{ALLOCATION_ENABLE} was reset from \"primaries\", so Elasticsearch rebuilds the replicas of {} \
             elsewhere if it stays down. Fix the cause, then run `esfleet es restart {cluster}` again: it starts \
             {} if it is stopped and restarts the cluster from the beginning",
            node.name, node.unit
        ),
        Err(e) => format!(
            "{ALLOCATION_ENABLE} is still \"primaries\" and could not be reset ({e}): no replica is rebuilt while \
             it is set. Run `esfleet es restart {cluster}` again (it resets it first), or reset it by hand: \
             curl -X PUT '{}/_cluster/settings' -H 'content-type: application/json' -d \
             '{{\"persistent\":{{\"{ALLOCATION_ENABLE}\":null}},\"transient\":{{\"{ALLOCATION_ENABLE}\":null}}}}'",
            es_url(es)
        ),
    };
    OpsError::CleanedUp {
        error: Box::new(error),
        cleanup,
    }
}

/// After `error` once `node` may be excluded from voting: clears the exclusions without
/// waiting (the node may still be in the cluster), best effort, and says so in the error.
async fn undo_voter_exclusion(es: &Es<'_>, cluster: &str, node: &NodeRef, error: OpsError) -> OpsError {
    let again = format!("`esfleet es scale-down {cluster} --masters N`");
    let cleanup = match es.clear_voter_exclusions(false).await {
        Ok(()) => format!(
            "the voting configuration exclusion of {} was cleared; fix the cause, then run {again} again",
            node.name
        ),
        Err(e) => format!(
            "the voting configuration exclusion of {} could not be cleared ({e}); while it exists \
             `esfleet es restart {cluster}` refuses to run. Run {again} again, or clear it by hand: {}",
            node.name,
            clear_exclusions_cmd(es)
        ),
    };
    OpsError::CleanedUp {
        error: Box::new(error),
        cleanup,
    }
}

/// Rolling restart: data and coordinating nodes first, masters last, the elected master
/// at the very end (why: Elastic's rolling-upgrade order restarts master-eligible nodes
/// last, and the elected one last of all costs one election instead of up to one per master).
pub async fn restart<F: FleetOps>(
    fleet: &F,
    http: &EsHttp,
    target: &Target,
    waits: &Waits,
    force: bool,
) -> Result<(), OpsError> {
    let es = Es { http };
    let all = nodes(&target.record);
    let units: Vec<UnitName> = all.iter().map(|n| n.unit.clone()).collect();
    let views = fleet.units(&units).await?;
    let present: Vec<(NodeRef, UnitView)> = all
        .into_iter()
        .zip(views)
        .filter(|(_, v)| v.exists && v.desired != "inactive")
        .collect();
    let name = &target.record.spec.name;
    if present.is_empty() {
        return Err(OpsError::Refused(format!(
            "cluster {name} has no submitted node to restart; run `esfleet es apply` first"
        )));
    }

    // A voter excluded from the voting configuration (a master scale-down that stopped
    // half-way) leaves fewer voters: restarting one more master can lose the quorum.
    let excluded = es.coordination().await?.exclusions;
    if !excluded.is_empty() {
        return Err(OpsError::Refused(format!(
            "cluster {name} has voting configuration exclusions ({}): restarting a master now could leave too few \
             voters to elect one. If `esfleet es scale-down {name} --masters N` was interrupted, run it again to \
             finish; if the excluded nodes are to stay, clear the exclusions with `{}`; then run the restart again",
            excluded.join(", "),
            clear_exclusions_cmd(&es)
        )));
    }

    // Resume: an interrupted run may have left allocation at `primaries` and a node stopped.
    if let Some(v) = es.setting(ALLOCATION_ENABLE).await? {
        fleet.say(&format!(
            "{ALLOCATION_ENABLE} is {v:?} (left by an interrupted restart?): resetting it"
        ));
    }
    es.reset_setting(ALLOCATION_ENABLE).await?;
    for (n, _) in present.iter().filter(|(_, v)| v.desired == "loaded") {
        fleet.say(&format!(
            "{} ({}) is stopped (left by an interrupted restart?): starting it",
            n.name, n.unit
        ));
        fleet.start(&n.unit).await?;
        wait_joined(fleet, &es, waits, std::slice::from_ref(&n.name)).await?;
    }
    let h = wait_green(fleet, &es, waits).await?;
    fleet.say(&format!("cluster {name} is {}", h.summary()));
    let unreplicated = unreplicated_indices(&es).await?;
    if !unreplicated.is_empty() {
        let list = unreplicated.join(", ");
        if !force {
            return Err(OpsError::Refused(format!(
                "index(es) {list} of cluster {name} have no replica: while the node holding a shard of them \
                 restarts, that shard is unavailable and the cluster is red. Add a replica first \
                 (PUT /<index>/_settings {{\"index.number_of_replicas\": 1}}), or run again with --force to accept it"
            )));
        }
        fleet.say(&format!(
            "--force: index(es) {list} have no replica; the cluster goes red while their nodes restart"
        ));
    }

    // Order: non-masters by role and ordinal, then masters with the elected one last.
    let elected = es.cat_nodes().await?.into_iter().find(|n| n.master).map(|n| n.name);
    let mut order: Vec<&NodeRef> = present.iter().map(|(n, _)| n).collect();
    order.sort_by_key(|n| {
        (
            n.role == Role::Master,
            Some(&n.name) == elected.as_ref(),
            n.role,
            n.ordinal,
        )
    });
    let names: Vec<String> = order.iter().map(|n| n.name.clone()).collect();
    let total = order.len();
    fleet.say(&format!("rolling restart of {total} nodes: {}", names.join(", ")));
    for (i, n) in order.iter().enumerate() {
        fleet.say(&format!("[{}/{total}] {} ({})", i + 1, n.name, n.unit));
        // Never two down, and never from a degraded cluster: checked now, not at the end of
        // the previous pass, as a node may have crashed and come back empty in between.
        wait_ready(fleet, &es, waits, &names).await?;
        let views = fleet.units(std::slice::from_ref(&n.unit)).await?;
        if let Some(addr) = views.first().map(|v| v.address.clone()).filter(|a| !a.is_empty()) {
            http.avoid(&endpoint(&target.record, n.role, &addr));
        }
        // From the moment `primaries` may be set until it is reset, a failure resets it
        // before returning: left set, no replica would be rebuilt anywhere in the cluster.
        let pass = async {
            es.set_persistent(ALLOCATION_ENABLE, Value::from("primaries")).await?;
            fleet.say(&format!("  {ALLOCATION_ENABLE}: primaries; stopping {}", n.unit));
            fleet.stop(&n.unit).await?;
            if fleet.refresh(&n.unit).await? {
                fleet.say(&format!("  {} takes its template's new unit file", n.unit));
            }
            fleet.say(&format!("  starting {}", n.unit));
            fleet.start(&n.unit).await?;
            wait_joined(fleet, &es, waits, std::slice::from_ref(&n.name)).await?;
            es.set_persistent(ALLOCATION_ENABLE, Value::Null).await?;
            Ok::<(), OpsError>(())
        };
        if let Err(e) = pass.await {
            return Err(undo_primaries(&es, name, n, e).await);
        }
        fleet.say(&format!("  {} rejoined; {ALLOCATION_ENABLE} reset", n.name));
        let h = wait_green(fleet, &es, waits).await?;
        fleet.say(&format!("  {} restarted; cluster {}", n.name, h.summary()));
    }
    fleet.say(&format!("rolling restart of cluster {name} done: {total} nodes"));
    Ok(())
}

/// Removes the highest-ordinal nodes of `role` one at a time until `to` are left.
pub async fn scale_down<F: FleetOps>(
    fleet: &F,
    http: &EsHttp,
    target: &mut Target,
    role: Role,
    to: u32,
    waits: &Waits,
) -> Result<(), OpsError> {
    let es = Es { http };
    let name = target.record.spec.name.clone();
    let mut count = target.record.spec.role(role).count;
    let word = role.as_str();
    if to > count {
        return Err(OpsError::Refused(format!(
            "cluster {name} has {count} {word} nodes; scale-down cannot add any: raise the count in cluster.toml and run `esfleet es apply`"
        )));
    }
    if to == count {
        fleet.say(&format!("cluster {name} already has {count} {word} nodes"));
        return Ok(());
    }
    // With allocation restricted, shards cannot move off a data node and the cluster cannot
    // get back to green after any removal. Whoever set it may need it: say so, change nothing.
    if let Some(v) = es.setting(ALLOCATION_ENABLE).await?.filter(|v| v != "all") {
        return Err(OpsError::Refused(format!(
            "{ALLOCATION_ENABLE} is {v:?} on cluster {name}: shards cannot move while it is set, so no node can be \
             removed safely. If an `esfleet es restart {name}` was interrupted, run it again to finish (it resets \
             the setting); otherwise reset it when its reason is gone: curl -X PUT '{}/_cluster/settings' -H \
             'content-type: application/json' -d \
             '{{\"persistent\":{{\"{ALLOCATION_ENABLE}\":null}},\"transient\":{{\"{ALLOCATION_ENABLE}\":null}}}}'",
            es_url(&es)
        )));
    }
    fleet.say(&format!(
        "scaling {word} nodes of cluster {name} from {count} to {to}, one at a time, highest ordinal first"
    ));
    while count > to {
        let node = nodes(&target.record)
            .into_iter()
            .filter(|n| n.role == role)
            .max_by_key(|n| n.ordinal)
            .expect("count > 0: a node of this role exists");
        let view = fleet
            .units(std::slice::from_ref(&node.unit))
            .await?
            .pop()
            .unwrap_or_default();
        // Master removal ends by clearing every voting exclusion: refused while there are
        // others than ours (an operator's, or a failed run's that could not be cleared).
        let exclusions = if role == Role::Master {
            let ex = es.coordination().await?.exclusions;
            let others: Vec<&str> = ex.iter().filter(|x| **x != node.name).map(String::as_str).collect();
            if !others.is_empty() {
                return Err(OpsError::Refused(format!(
                    "cluster {name} has voting configuration exclusions ({}) besides {}: removing a master clears \
                     them all. When those are no longer needed, clear them with `{}` and run the scale-down again",
                    others.join(", "),
                    node.name,
                    clear_exclusions_cmd(&es)
                )));
            }
            ex
        } else {
            Vec::new()
        };
        fleet.say(&format!("removing {} ({})", node.name, node.unit));
        if view.exists {
            match role {
                Role::Data => remove_data(fleet, &es, waits, &node).await?,
                Role::Master => remove_master(fleet, &es, &name, &node, count).await?,
                Role::Coordinating => {
                    fleet.stop(&node.unit).await?;
                    fleet.destroy(&node.unit).await?;
                }
            }
        } else {
            fleet.say(&format!("  {} is already destroyed (an interrupted run?)", node.unit));
            if role == Role::Data && exclude_remove(&es, &node.name).await? {
                fleet.say(&format!("  {} taken out of {EXCLUDE_NAME}", node.name));
            }
            if role == Role::Master && !exclusions.is_empty() {
                es.clear_voter_exclusions(false).await?;
                fleet.say(&format!("  voting exclusion of {} cleared", node.name));
            }
        }
        count -= 1;
        target.record.spec.role_mut(role).count = count;
        target.revision = fleet.store(&target.record, target.revision).await?;
        fleet.say(&format!("  cluster {name} now defines {count} {word} nodes"));
        let h = wait_green(fleet, &es, waits).await?;
        fleet.say(&format!("  {} removed; cluster {}", node.name, h.summary()));
    }
    Ok(())
}

/// The names in an `exclude._name` value (a comma list; Elasticsearch allows spaces).
fn name_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Adds `name` to the allocation exclusions, keeping any already there.
async fn exclude_add<F: FleetOps>(fleet: &F, es: &Es<'_>, name: &str) -> Result<(), OpsError> {
    exclusion_add(fleet, es, EXCLUDE_NAME, name).await
}

/// Takes `name` (only) out of the allocation exclusions; false if it was not there.
async fn exclude_remove(es: &Es<'_>, name: &str) -> Result<bool, OpsError> {
    exclusion_remove(es, EXCLUDE_NAME, name).await
}

/// Adds `value` to the comma list in exclusion setting `key`, keeping any already there.
async fn exclusion_add<F: FleetOps>(fleet: &F, es: &Es<'_>, key: &str, value: &str) -> Result<(), OpsError> {
    let mut values = es.setting(key).await?.map(|v| name_list(&v)).unwrap_or_default();
    if values.iter().any(|n| n == value) {
        return Ok(());
    }
    if !values.is_empty() {
        fleet.say(&format!("  {key} already lists {}; adding {value}", values.join(",")));
    }
    values.push(value.to_string());
    es.set_persistent(key, Value::from(values.join(","))).await?;
    Ok(())
}

/// Takes `value` (only) out of exclusion setting `key`; false if it was not there.
async fn exclusion_remove(es: &Es<'_>, key: &str, value: &str) -> Result<bool, OpsError> {
    let Some(v) = es.setting(key).await? else {
        return Ok(false);
    };
    let values = name_list(&v);
    if !values.iter().any(|n| n == value) {
        return Ok(false);
    }
    let rest: Vec<String> = values.into_iter().filter(|n| n != value).collect();
    let value = if rest.is_empty() {
        Value::Null
    } else {
        Value::from(rest.join(","))
    };
    es.set_persistent(key, value).await?;
    Ok(true)
}

/// Indices whose `number_of_replicas` is 0 (hidden ones included).
async fn unreplicated_indices(es: &Es<'_>) -> Result<Vec<String>, OpsError> {
    let mut v: Vec<String> = es
        .cat_indices()
        .await?
        .into_iter()
        .filter(|i| i.replicas == 0)
        .map(|i| i.index)
        .collect();
    v.sort();
    Ok(v)
}

/// Shard copies on `node` that are the only started copy of their shard: stopping the node
/// would make those shards unavailable (red).
pub fn last_copies<'s>(shards: &'s [CatShard], node: &str) -> Vec<&'s CatShard> {
    shards
        .iter()
        .filter(|s| s.involves(node))
        .filter(|s| {
            !shards
                .iter()
                .any(|o| o.index == s.index && o.shard == s.shard && o.state == "STARTED" && !o.involves(node))
        })
        .collect()
}

/// How long shard movement may show no progress (nothing relocating or initializing,
/// copies still on the node) before the copies left are taken as unable to move.
const STUCK_POLLS: u32 = 5;

/// Before a drain moves data node `node` off its host: excludes it from allocation by its
/// node id and waits until its shards moved off. Copies Elasticsearch will not move (no
/// room elsewhere, forced awareness) are acceptable when every one of them has another
/// started copy (stopping the node leaves the cluster yellow, never red); a copy that is
/// the last of its shard refuses the drain, the exclusion taken back, unless `force`.
/// Returns the excluded node id ([`drain_release`] takes it out once the node moved), or
/// `None` when the node is not in the cluster (nothing on it to protect).
pub async fn drain_evacuate<F: FleetOps>(
    fleet: &F,
    es: &Es<'_>,
    waits: &Waits,
    cluster: &str,
    node: &str,
    force: bool,
) -> Result<Option<String>, OpsError> {
    let ids = es.node_ids().await?;
    let mine: Vec<&String> = ids
        .iter()
        .filter(|(_, n)| n.as_str() == node)
        .map(|(id, _)| id)
        .collect();
    let [id] = mine[..] else {
        if mine.is_empty() {
            fleet.say(&format!("  {node} is not in cluster {cluster}: no shards to move off"));
            return Ok(None);
        }
        return Err(OpsError::Refused(format!(
            "{} nodes of cluster {cluster} are named {node} (a drain already under way?); wait until one has left, \
             then drain again",
            mine.len()
        )));
    };
    let id = id.clone();
    exclusion_add(fleet, es, EXCLUDE_ID, &id).await?;
    fleet.say(&format!(
        "  {node} ({id}) added to {EXCLUDE_ID}; waiting for its shards to move"
    ));
    let quiet = std::cell::Cell::new(0u32);
    let waited = wait_until(fleet, waits, &format!("the shards to leave {node}"), || {
        let quiet = &quiet;
        async move {
            let shards = es.cat_shards().await?;
            let left: Vec<CatShard> = shards.into_iter().filter(|s| s.involves(node)).collect();
            if left.is_empty() {
                return Ok(Step::Done(Vec::new()));
            }
            let h = es.health().await?;
            quiet.set(if h.relocating_shards == 0 && h.initializing_shards == 0 {
                quiet.get() + 1
            } else {
                0
            });
            Ok(if quiet.get() >= STUCK_POLLS {
                Step::Done(left)
            } else {
                Step::Waiting(format!("{} shard copies still on {node}", left.len()))
            })
        }
    })
    .await;
    let stuck = match waited {
        Ok(stuck) => stuck,
        Err(error) => {
            let cleanup = match exclusion_remove(es, EXCLUDE_ID, &id).await {
                Ok(_) => format!("{node} was taken out of {EXCLUDE_ID} again; nothing was moved"),
                Err(e) => format!("{node} ({id}) is still in {EXCLUDE_ID} and could not be taken out ({e})"),
            };
            return Err(OpsError::CleanedUp {
                error: Box::new(error),
                cleanup,
            });
        }
    };
    if stuck.is_empty() {
        fleet.say(&format!("  no shard copies left on {node}"));
        return Ok(Some(id));
    }
    let shards = es.cat_shards().await?;
    let last: Vec<String> = last_copies(&shards, node)
        .iter()
        .map(|s| format!("{}[{}]", s.index, s.shard))
        .collect();
    if last.is_empty() {
        fleet.say(&format!(
            "  {} shard copies cannot leave {node}, each with another started copy: stopping it leaves the \
             cluster yellow until they are rebuilt",
            stuck.len()
        ));
        return Ok(Some(id));
    }
    if force {
        fleet.say(&format!(
            "  --force: {node} holds the only copy of {}; the cluster goes red when it stops",
            last.join(", ")
        ));
        return Ok(Some(id));
    }
    let undo = match exclusion_remove(es, EXCLUDE_ID, &id).await {
        Ok(_) => format!("{node} was taken out of {EXCLUDE_ID} again"),
        Err(e) => format!("{node} ({id}) is still in {EXCLUDE_ID} and could not be taken out ({e})"),
    };
    Err(OpsError::Refused(format!(
        "{node} holds the only copy of {} and Elasticsearch will not move {} elsewhere (see \
         GET /_cluster/allocation/explain): stopping it would make cluster {cluster} red. Add room or replicas, \
         or drain with --force to accept it; {undo}",
        last.join(", "),
        if last.len() == 1 { "it" } else { "them" },
    )))
}

/// After a drain: takes node id `id` out of the allocation exclusions.
pub async fn drain_release(es: &Es<'_>, id: &str) -> Result<bool, OpsError> {
    exclusion_remove(es, EXCLUDE_ID, id).await
}

async fn remove_data<F: FleetOps>(fleet: &F, es: &Es<'_>, waits: &Waits, node: &NodeRef) -> Result<(), OpsError> {
    let health = es.health().await?;
    let max_replicas = es.cat_indices().await?.iter().map(|i| i.replicas).max().unwrap_or(0);
    let data_after = es
        .cat_nodes()
        .await?
        .iter()
        .filter(|n| n.is_data() && n.name != node.name)
        .count() as u32;
    core_es::data_removal_check(&health.status, max_replicas, data_after)
        .map_err(|e| OpsError::Refused(format!("{} cannot be removed: {e}", node.name)))?;
    exclude_add(fleet, es, &node.name).await?;
    fleet.say(&format!(
        "  {} added to {EXCLUDE_NAME}; waiting for its shards to move",
        node.name
    ));
    wait_until(fleet, waits, &format!("the shards to leave {}", node.name), || async {
        let left = es.cat_shards().await?.iter().filter(|s| s.involves(&node.name)).count();
        Ok(if left == 0 {
            Step::Done(())
        } else {
            Step::Waiting(format!("{left} shard copies still on {}", node.name))
        })
    })
    .await?;
    fleet.stop(&node.unit).await?;
    fleet.destroy(&node.unit).await?;
    exclude_remove(es, &node.name).await?;
    fleet.say(&format!("  {} destroyed; taken out of {EXCLUDE_NAME}", node.unit));
    Ok(())
}

async fn remove_master<F: FleetOps>(
    fleet: &F,
    es: &Es<'_>,
    cluster: &str,
    node: &NodeRef,
    masters: u32,
) -> Result<(), OpsError> {
    let coord = es.coordination().await?;
    let ids = es.node_ids().await?;
    let me = ids.iter().find(|(_, n)| **n == node.name).map(|(id, _)| id.clone());
    let live_voters_after = coord
        .voting_config
        .iter()
        .filter(|id| ids.contains_key(*id) && Some(*id) != me.as_ref())
        .count();
    core_es::master_removal_check(coord.voting_config.len(), live_voters_after, masters - 1)
        .map_err(|e| OpsError::Refused(format!("{} cannot be removed: {e}", node.name)))?;
    // From the exclusion request on (a failed or timed-out request may still have added it),
    // a failure clears the exclusions before returning: one left behind blocks restarts.
    let steps = async {
        es.exclude_voter(&node.name).await?;
        fleet.say(&format!("  {} excluded from the voting configuration", node.name));
        fleet.stop(&node.unit).await?;
        fleet.destroy(&node.unit).await?;
        es.clear_voter_exclusions(true).await?;
        Ok::<(), OpsError>(())
    };
    if let Err(e) = steps.await {
        return Err(undo_voter_exclusion(es, cluster, node, e).await);
    }
    fleet.say(&format!("  {} destroyed; voting exclusions cleared", node.unit));
    Ok(())
}
