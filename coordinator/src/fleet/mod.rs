//! The `esfleet.v1.Fleet` service (proto/proto/esfleet/fleet.proto): the API the CLI uses,
//! served by every member on the client port next to etcd's services.
//!
//! Everything a client sends is validated here (unit names, unit files with
//! `esfleet_core::unit::validate_unit`, states, machine ids), with errors that name the
//! problem and the fix. Writes are etcd Txns through Raft with compare-and-set guards
//! (retried when a concurrent write got in between); reads are linearizable and come from
//! one consistent snapshot of `/esfleet/`. Unit records are written here; schedule entries
//! only by the scheduler; `Status`/`Journal` are forwarded to the unit's agent.

mod es;
pub mod info;

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use esfleet_core::keys;
use esfleet_core::model::{unit_hash, DesiredState, DrainRecord, UnitRecord};
use esfleet_core::name::validate_machine_id;
use esfleet_core::unit::{validate_unit, MAX_UNIT_FILE_BYTES};
use esfleet_core::UnitName;
use esfleet_proto::agent as agentpb;
use esfleet_proto::agent::agent_client::AgentClient;
use esfleet_proto::etcdserverpb as etcd;
use esfleet_proto::fleet::{self as pb, fleet_server::Fleet};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::scheduler::snapshot::{decode_epoch, StoreSnapshot};
use crate::scheduler::txn;
use crate::store::WatchBatch;
use crate::sync::Recover;

/// How often a compare-and-set write is retried when another write got in between.
pub(crate) const CAS_ATTEMPTS: usize = 8;
/// Most units one WatchUnitStates stream may follow.
pub const MAX_WATCHED_UNITS: usize = 10_000;
/// How long connecting to an agent or a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded status request may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a WatchUnitStates stream gathers applied batches before reading the store.
const FOLLOW_COALESCE: Duration = Duration::from_millis(100);

pub struct FleetService {
    pub node: Arc<Node>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn unit_name(s: &str) -> Result<UnitName, Status> {
    UnitName::new(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn not_found(name: &UnitName) -> Status {
    Status::not_found(format!("unit {name} not found; submit it first (esfleet submit)"))
}

fn template_refused(name: &UnitName) -> Status {
    Status::failed_precondition(format!(
        "{name} is a template; it cannot be loaded or launched itself. Start an instance, e.g. {}@1.{}",
        name.prefix(),
        name.unit_type()
    ))
}

/// A validated record for `name` with `text` (a template's text for an instance).
fn build_record(name: &UnitName, text: &str, desired: DesiredState) -> Result<UnitRecord, Status> {
    if text.len() > MAX_UNIT_FILE_BYTES {
        return Err(Status::invalid_argument(format!(
            "{name}: the unit file is {} bytes; at most {MAX_UNIT_FILE_BYTES} are allowed",
            text.len()
        )));
    }
    let v = validate_unit(name, text).map_err(|e| Status::invalid_argument(format!("{name}: {e}")))?;
    Ok(UnitRecord {
        name: name.clone(),
        text: text.to_string(),
        hash: unit_hash(text),
        desired,
        options: v.options,
        has_install: v.has_install,
    })
}

fn record_bytes(rec: &UnitRecord) -> Vec<u8> {
    serde_json::to_vec(rec).expect("a unit record serializes")
}

/// Expands names and globs against the stored units. `skip_templates` drops templates a
/// glob matched; literal names are returned as given (stored or not).
fn expand(snap: &StoreSnapshot, patterns: &[String], skip_templates: bool) -> Result<Vec<(UnitName, bool)>, Status> {
    if patterns.is_empty() {
        return Err(Status::invalid_argument("no unit names given"));
    }
    let mut out: BTreeMap<UnitName, bool> = BTreeMap::new();
    for p in patterns {
        if is_glob(p) {
            let glob = globset::Glob::new(p)
                .map_err(|e| Status::invalid_argument(format!("{p:?} is not a valid glob: {e}")))?
                .compile_matcher();
            let mut any = false;
            for name in snap.units.keys() {
                if glob.is_match(name.as_str()) && !(skip_templates && name.is_template()) {
                    out.insert(name.clone(), false);
                    any = true;
                }
            }
            if !any {
                return Err(Status::not_found(format!("no unit matches {p:?}")));
            }
        } else {
            out.insert(unit_name(p)?, true);
        }
    }
    Ok(out.into_iter().collect())
}

impl FleetService {
    /// A linearizable snapshot of `/esfleet/`.
    async fn snapshot(&self) -> Result<StoreSnapshot, Status> {
        self.node.linearizable().await?;
        let m = self.node.store.mvcc.read().or_recover();
        StoreSnapshot::read(&m).map_err(crate::api::kv::mvcc_status)
    }

    fn local_snapshot(&self) -> Result<StoreSnapshot, Status> {
        let m = self.node.store.mvcc.read().or_recover();
        StoreSnapshot::read(&m).map_err(crate::api::kv::mvcc_status)
    }

    /// Proposes a compare-and-set Txn: Ok(Some(revision)) if it landed, Ok(None) if a
    /// compare failed (the caller reads again and retries).
    /// Writes `ops` if every compare still holds: `Some(revision)` on success, `None` when
    /// the units changed since `snap` was read (the caller re-reads and retries). With
    /// nothing to write, the answer is the snapshot's revision.
    async fn cas(
        &self,
        snap: &StoreSnapshot,
        compare: Vec<etcd::Compare>,
        ops: Vec<etcd::RequestOp>,
    ) -> Result<Option<i64>, Status> {
        if ops.is_empty() {
            return Ok(Some(snap.revision));
        }
        let (resp, rev) = txn::propose(
            &self.node,
            etcd::TxnRequest {
                compare,
                success: ops,
                failure: vec![],
            },
        )
        .await?;
        Ok(resp.succeeded.then_some(rev))
    }

    fn conflict() -> Status {
        Status::aborted("esfleet: the units kept changing during the request; try again")
    }

    /// The agent serving `machine`'s status and journal.
    async fn agent(
        &self,
        snap: &StoreSnapshot,
        name: &UnitName,
        want: &str,
    ) -> Result<(String, AgentClient<tonic::transport::Channel>), Status> {
        let mut placed = snap.placements_of(name).map(|(m, _)| m.to_string()).collect::<Vec<_>>();
        if placed.is_empty() {
            return Err(if snap.units.contains_key(name) {
                Status::failed_precondition(format!("unit {name} is not placed on any machine"))
            } else {
                not_found(name)
            });
        }
        if !want.is_empty() {
            if !placed.iter().any(|m| m == want) {
                return Err(Status::failed_precondition(format!(
                    "unit {name} is not placed on machine {want}; it is on {}",
                    placed.join(", ")
                )));
            }
            placed = vec![want.to_string()];
        }
        let machine = placed.swap_remove(0);
        let rec = snap.machines.get(&machine).ok_or_else(|| {
            Status::unavailable(format!(
                "machine {machine} (where {name} is placed) is not registered: its agent is gone"
            ))
        })?;
        if rec.agent_endpoint.is_empty() {
            return Err(Status::unavailable(format!(
                "the agent on machine {machine} serves no status endpoint"
            )));
        }
        let url = if rec.agent_endpoint.contains("://") {
            rec.agent_endpoint.clone()
        } else {
            format!("http://{}", rec.agent_endpoint)
        };
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| {
                Status::internal(format!(
                    "machine {machine} advertises a bad agent endpoint {url:?}: {e}"
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            // Enforced here, not only announced to the agent: a frozen agent must not hang
            // the operator's `esfleet status`. (Covers the answer's headers, so a followed
            // journal keeps streaming.)
            .timeout(AGENT_TIMEOUT)
            // A followed journal ends when the agent's host goes away.
            .http2_keep_alive_interval(std::time::Duration::from_secs(5))
            .keep_alive_timeout(std::time::Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the agent on machine {machine} at {url}: {e}")))?;
        Ok((machine, AgentClient::new(channel)))
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    type WatchUnitStatesStream = BoxStream<pb::WatchUnitStatesResponse>;
    type JournalStream = BoxStream<pb::JournalLine>;

    async fn submit_units(
        &self,
        req: Request<pb::SubmitUnitsRequest>,
    ) -> Result<Response<pb::SubmitUnitsResponse>, Status> {
        let req = req.into_inner();
        if req.units.is_empty() {
            return Err(Status::invalid_argument("no units given"));
        }
        let mut given: BTreeMap<UnitName, String> = BTreeMap::new();
        let mut order = Vec::new();
        for u in &req.units {
            let name = unit_name(&u.name)?;
            if given.insert(name.clone(), u.text.clone()).is_some() {
                return Err(Status::invalid_argument(format!("unit {name} is given twice")));
            }
            order.push(name);
        }
        for _ in 0..CAS_ATTEMPTS {
            let snap = self.snapshot().await?;
            let mut results = Vec::new();
            let mut compare = Vec::new();
            let mut ops = Vec::new();
            for name in &order {
                let text = match given[name].as_str() {
                    "" => match name.template() {
                        Some(t) => match given.get(&t).filter(|x| !x.is_empty()) {
                            Some(x) => x.clone(),
                            None => snap.units.get(&t).map(|r| r.text.clone()).ok_or_else(|| {
                                Status::not_found(format!(
                                    "{name} has no unit file and its template {t} is not submitted; submit {t} first"
                                ))
                            })?,
                        },
                        None => return Err(Status::invalid_argument(format!("{name}: the unit file is empty"))),
                    },
                    t => t.to_string(),
                };
                let hash = unit_hash(&text);
                let (outcome, desired) = match snap.units.get(name) {
                    Some(rec) if rec.hash == hash => (pb::submit_result::Outcome::Unchanged, rec.desired),
                    Some(_) if !req.replace => {
                        return Err(Status::already_exists(format!(
                            "unit {name} exists with different content; use --replace"
                        )))
                    }
                    Some(rec) => (pb::submit_result::Outcome::Replaced, rec.desired),
                    None => (pb::submit_result::Outcome::Created, DesiredState::Inactive),
                };
                // Validated even when unchanged: the answer must not depend on history.
                let rec = build_record(name, &text, desired)?;
                if outcome != pb::submit_result::Outcome::Unchanged {
                    let key = keys::unit(name);
                    compare.push(txn::mod_is(&key, snap.unit_revisions.get(name).copied().unwrap_or(0)));
                    ops.push(txn::put(&key, record_bytes(&rec)));
                }
                results.push(pb::SubmitResult {
                    name: name.to_string(),
                    hash,
                    outcome: outcome as i32,
                });
            }
            let Some(revision) = self.cas(&snap, compare, ops).await? else {
                continue;
            };
            return Ok(Response::new(pb::SubmitUnitsResponse { results, revision }));
        }
        Err(Self::conflict())
    }

    async fn set_desired_state(
        &self,
        req: Request<pb::SetDesiredStateRequest>,
    ) -> Result<Response<pb::SetDesiredStateResponse>, Status> {
        let req = req.into_inner();
        let desired: DesiredState = req.desired.parse().map_err(Status::invalid_argument)?;
        for _ in 0..CAS_ATTEMPTS {
            let snap = self.snapshot().await?;
            let names = expand(&snap, &req.names, desired != DesiredState::Inactive)?;
            let mut changes = Vec::new();
            let mut compare = Vec::new();
            let mut ops = Vec::new();
            for (name, literal) in names {
                if name.is_template() && desired != DesiredState::Inactive {
                    debug_assert!(literal);
                    return Err(template_refused(&name));
                }
                let key = keys::unit(&name);
                let (previous, rec) = match snap.units.get(&name) {
                    Some(rec) => (rec.desired.to_string(), rec.clone()),
                    None => {
                        // An instance of a stored template is created from it (fleet's `start foo@1`).
                        let template = name.template().and_then(|t| snap.units.get(&t));
                        match template {
                            Some(t) if desired != DesiredState::Inactive => {
                                (String::new(), build_record(&name, &t.text, DesiredState::Inactive)?)
                            }
                            _ => return Err(not_found(&name)),
                        }
                    }
                };
                if rec.desired != desired || previous.is_empty() {
                    let mut next = rec;
                    next.desired = desired;
                    compare.push(txn::mod_is(&key, snap.unit_revisions.get(&name).copied().unwrap_or(0)));
                    ops.push(txn::put(&key, record_bytes(&next)));
                }
                changes.push(pb::DesiredChange {
                    name: name.to_string(),
                    previous,
                    desired: desired.to_string(),
                });
            }
            let Some(revision) = self.cas(&snap, compare, ops).await? else {
                continue;
            };
            return Ok(Response::new(pb::SetDesiredStateResponse { changes, revision }));
        }
        Err(Self::conflict())
    }

    async fn destroy_units(
        &self,
        req: Request<pb::DestroyUnitsRequest>,
    ) -> Result<Response<pb::DestroyUnitsResponse>, Status> {
        let req = req.into_inner();
        let snap = self.snapshot().await?;
        let names = expand(&snap, &req.names, false)?;
        let mut destroyed = Vec::new();
        let mut ops = Vec::new();
        for (name, _) in names {
            if !snap.units.contains_key(&name) {
                return Err(not_found(&name));
            }
            ops.push(txn::delete(&keys::unit(&name)));
            destroyed.push(name.to_string());
        }
        let (_, revision) = txn::propose(
            &self.node,
            etcd::TxnRequest {
                success: ops,
                ..Default::default()
            },
        )
        .await?;
        Ok(Response::new(pb::DestroyUnitsResponse { destroyed, revision }))
    }

    async fn get_unit(&self, req: Request<pb::GetUnitRequest>) -> Result<Response<pb::GetUnitResponse>, Status> {
        let name = unit_name(&req.into_inner().name)?;
        let snap = self.snapshot().await?;
        if !snap.units.contains_key(&name) {
            return Err(not_found(&name));
        }
        Ok(Response::new(pb::GetUnitResponse {
            unit: Some(info::unit_info(&snap, &name, true)),
            revision: snap.revision,
        }))
    }

    async fn list_unit_files(
        &self,
        _req: Request<pb::ListUnitFilesRequest>,
    ) -> Result<Response<pb::ListUnitFilesResponse>, Status> {
        let snap = self.snapshot().await?;
        let units = info::unit_infos(&snap, snap.units.keys()).into_values().collect();
        Ok(Response::new(pb::ListUnitFilesResponse {
            units,
            revision: snap.revision,
        }))
    }

    async fn list_units(&self, _req: Request<pb::ListUnitsRequest>) -> Result<Response<pb::ListUnitsResponse>, Status> {
        let snap = self.snapshot().await?;
        let mut units: Vec<pb::UnitStatus> = snap
            .placements
            .iter()
            .flat_map(|(m, us)| {
                us.iter().map(|(u, e)| pb::UnitStatus {
                    name: u.to_string(),
                    placement: Some(info::placement(&snap, m, u, e)),
                })
            })
            .collect();
        units.sort_by(|a, b| {
            (&a.name, a.placement.as_ref().map(|p| &p.machine_id))
                .cmp(&(&b.name, b.placement.as_ref().map(|p| &p.machine_id)))
        });
        Ok(Response::new(pb::ListUnitsResponse {
            units,
            revision: snap.revision,
        }))
    }

    async fn list_machines(
        &self,
        _req: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        let snap = self.snapshot().await?;
        Ok(Response::new(pb::ListMachinesResponse {
            machines: info::machines(&snap),
            revision: snap.revision,
        }))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let req = req.into_inner();
        validate_machine_id(&req.machine_id).map_err(Status::invalid_argument)?;
        let snap = self.snapshot().await?;
        let known = snap.machines.contains_key(&req.machine_id)
            || snap.placements.get(&req.machine_id).is_some_and(|u| !u.is_empty());
        if !known {
            return Err(Status::not_found(format!(
                "machine {} is not registered and has no units (see esfleet list-machines)",
                req.machine_id
            )));
        }
        let key = keys::drain(&req.machine_id);
        let rec = DrainRecord {
            reason: req.reason,
            ..Default::default()
        };
        let value = serde_json::to_vec(&rec).expect("a drain record serializes");
        let (resp, revision) = txn::propose(
            &self.node,
            etcd::TxnRequest {
                compare: vec![txn::mod_is(&key, 0)],
                success: vec![txn::put(&key, value)],
                failure: vec![],
            },
        )
        .await?;
        Ok(Response::new(pb::DrainResponse {
            created: resp.succeeded,
            revision,
        }))
    }

    async fn undrain(&self, req: Request<pb::UndrainRequest>) -> Result<Response<pb::UndrainResponse>, Status> {
        let req = req.into_inner();
        validate_machine_id(&req.machine_id).map_err(Status::invalid_argument)?;
        let (resp, revision) = txn::propose(
            &self.node,
            etcd::TxnRequest {
                success: vec![txn::delete(&keys::drain(&req.machine_id))],
                ..Default::default()
            },
        )
        .await?;
        let removed = resp
            .responses
            .iter()
            .any(|r| matches!(&r.response, Some(etcd::response_op::Response::ResponseDeleteRange(d)) if d.deleted > 0));
        Ok(Response::new(pb::UndrainResponse { removed, revision }))
    }

    async fn get_drain(&self, req: Request<pb::GetDrainRequest>) -> Result<Response<pb::GetDrainResponse>, Status> {
        let req = req.into_inner();
        validate_machine_id(&req.machine_id).map_err(Status::invalid_argument)?;
        let snap = self.snapshot().await?;
        Ok(Response::new(pb::GetDrainResponse {
            drain: snap.drains.get(&req.machine_id).map(|d| pb::DrainInfo {
                reason: d.reason.clone(),
                remaining: d.remaining.clone(),
                done: d.done,
            }),
            revision: snap.revision,
        }))
    }

    async fn watch_unit_states(
        &self,
        req: Request<pb::WatchUnitStatesRequest>,
    ) -> Result<Response<Self::WatchUnitStatesStream>, Status> {
        let req = req.into_inner();
        if req.names.is_empty() {
            return Err(Status::invalid_argument("no unit names given"));
        }
        if req.names.len() > MAX_WATCHED_UNITS {
            return Err(Status::invalid_argument(format!(
                "{} units asked for; one stream follows at most {MAX_WATCHED_UNITS}",
                req.names.len()
            )));
        }
        let names: BTreeSet<UnitName> = req.names.iter().map(|n| unit_name(n)).collect::<Result<_, _>>()?;
        // Subscribed before the first read: nothing applied after it can be missed.
        let live = self.node.store.watch_tx.subscribe();
        let first = self.snapshot().await?;
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(follow_units(FleetService { node }, names, first, live, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let req = req.into_inner();
        let name = unit_name(&req.name)?;
        validate_machine_id(&req.machine_id)
            .or_else(|e| if req.machine_id.is_empty() { Ok(()) } else { Err(e) })
            .map_err(Status::invalid_argument)?;
        let snap = self.snapshot().await?;
        let (machine, mut client) = self.agent(&snap, &name, &req.machine_id).await?;
        let mut r = tonic::Request::new(agentpb::StatusRequest { unit: name.to_string() });
        r.set_timeout(AGENT_TIMEOUT);
        let resp = client.status(r).await?.into_inner();
        Ok(Response::new(pb::StatusResponse {
            machine_id: if resp.machine_id.is_empty() {
                machine
            } else {
                resp.machine_id
            },
            text: resp.text,
        }))
    }

    async fn journal(&self, req: Request<pb::JournalRequest>) -> Result<Response<Self::JournalStream>, Status> {
        let req = req.into_inner();
        let name = unit_name(&req.name)?;
        validate_machine_id(&req.machine_id)
            .or_else(|e| if req.machine_id.is_empty() { Ok(()) } else { Err(e) })
            .map_err(Status::invalid_argument)?;
        let snap = self.snapshot().await?;
        let (_, mut client) = self.agent(&snap, &name, &req.machine_id).await?;
        let mut r = tonic::Request::new(agentpb::JournalRequest {
            unit: name.to_string(),
            lines: req.lines,
            follow: req.follow,
        });
        if !req.follow {
            r.set_timeout(AGENT_TIMEOUT);
        }
        let stream = client.journal(r).await?.into_inner();
        Ok(Response::new(Box::pin(
            stream.map(|l| l.map(|l| pb::JournalLine { line: l.line })),
        )))
    }

    async fn apply_es_cluster(
        &self,
        req: Request<pb::ApplyEsClusterRequest>,
    ) -> Result<Response<pb::ApplyEsClusterResponse>, Status> {
        self.es_apply(req).await
    }

    async fn get_es_cluster(
        &self,
        req: Request<pb::GetEsClusterRequest>,
    ) -> Result<Response<pb::GetEsClusterResponse>, Status> {
        self.es_get(req).await
    }

    async fn list_es_clusters(
        &self,
        req: Request<pb::ListEsClustersRequest>,
    ) -> Result<Response<pb::ListEsClustersResponse>, Status> {
        self.es_list(req).await
    }

    async fn delete_es_cluster(
        &self,
        req: Request<pb::DeleteEsClusterRequest>,
    ) -> Result<Response<pb::DeleteEsClusterResponse>, Status> {
        self.es_delete(req).await
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let (leader, term, index, applied, voters) = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader.unwrap_or(0),
                m.current_term,
                m.last_log_index.unwrap_or(0),
                m.last_applied.map_or(0, |l| l.index),
                m.membership_config.membership().voter_ids().count(),
            )
        };
        let members = crate::api::cluster::members(&self.node);
        let probes = members.iter().map(|m| probe_member(m.clone(), leader));
        let members: Vec<pb::MemberStatus> = futures::future::join_all(probes).await;
        let healthy_voters = members.iter().filter(|m| m.reachable && !m.is_learner).count();
        let (revision, epoch) = {
            let m = self.node.store.mvcc.read().or_recover();
            let epoch = crate::scheduler::snapshot::read_prefix(&m, keys::SCHEDULER_EPOCH)
                .ok()
                .and_then(|(_, kvs)| {
                    kvs.into_iter()
                        .find(|kv| kv.key.as_ref() == keys::SCHEDULER_EPOCH.as_bytes())
                })
                .and_then(|kv| decode_epoch(&kv.value))
                .unwrap_or(0);
            (m.revision(), epoch)
        };
        let header = self.node.header(revision);
        Ok(Response::new(pb::ClusterStatusResponse {
            cluster_id: header.cluster_id,
            member_id: self.node.id,
            leader_id: leader,
            raft_term: term,
            raft_index: index,
            raft_applied_index: applied,
            revision,
            healthy: leader != 0 && healthy_voters > voters / 2,
            members,
            scheduler_epoch: epoch,
        }))
    }
}

/// Asks one member for etcd's Maintenance status through its first client URL.
async fn probe_member(m: etcd::Member, leader: u64) -> pb::MemberStatus {
    use esfleet_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    let mut out = pb::MemberStatus {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_ur_ls.clone(),
        client_urls: m.client_ur_ls.clone(),
        is_learner: m.is_learner,
        is_leader: m.id == leader,
        ..Default::default()
    };
    let Some(url) = m.client_ur_ls.first() else {
        out.error = "the member has not published its client URLs (not started yet?)".into();
        return out;
    };
    let channel = match tonic::transport::Endpoint::from_shared(url.clone()) {
        Ok(e) => {
            e.connect_timeout(CONNECT_TIMEOUT)
                .timeout(CONNECT_TIMEOUT)
                .connect()
                .await
        }
        Err(e) => {
            out.error = format!("bad client URL {url:?}: {e}");
            return out;
        }
    };
    let channel = match channel {
        Ok(c) => c,
        Err(e) => {
            out.error = format!("cannot reach {url}: {e}");
            return out;
        }
    };
    match MaintenanceClient::new(channel).status(etcd::StatusRequest {}).await {
        Ok(r) => {
            let r = r.into_inner();
            out.reachable = true;
            out.raft_term = r.raft_term;
            out.raft_index = r.raft_index;
            out.raft_applied_index = r.raft_applied_index;
            out.db_size = r.db_size;
            out.error = r.errors.join("; ");
        }
        Err(e) => out.error = format!("{url}: {}", e.message()),
    }
    out
}

/// Which of `names` an applied batch may have changed (all of them for a snapshot install
/// or a machine change, which changes placement addresses).
fn touched(b: &WatchBatch, names: &BTreeSet<UnitName>) -> BTreeSet<UnitName> {
    if b.resync {
        return names.clone();
    }
    let mut out = BTreeSet::new();
    for e in &b.events {
        let key =
            e.kv.as_ref()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .unwrap_or_default();
        let unit = if let Some(u) = key.strip_prefix(keys::UNITS) {
            Some(u)
        } else if let Some(u) = key.strip_prefix(keys::UNPLACEABLE) {
            Some(u)
        } else if key.starts_with(keys::MACHINES) {
            return names.clone();
        } else {
            keys::split_two(&key, keys::SCHEDULE)
                .or_else(|| keys::split_two(&key, keys::STATES))
                .map(|(_, u)| u)
        };
        if let Some(n) = unit.and_then(|u| UnitName::new(u).ok()) {
            if names.contains(&n) {
                out.insert(n);
            }
        }
    }
    out
}

/// Feeds one WatchUnitStates stream: the first view, then every change.
async fn follow_units(
    svc: FleetService,
    names: BTreeSet<UnitName>,
    first: StoreSnapshot,
    mut live: broadcast::Receiver<Arc<WatchBatch>>,
    tx: mpsc::Sender<Result<pb::WatchUnitStatesResponse, Status>>,
) {
    let mut last: BTreeMap<UnitName, pb::UnitInfo> = info::unit_infos(&first, &names);
    let msg = pb::WatchUnitStatesResponse {
        units: last.values().cloned().collect(),
        revision: first.revision,
    };
    if tx.send(Ok(msg)).await.is_err() {
        return;
    }
    loop {
        let mut affected = tokio::select! {
            _ = tx.closed() => return,
            b = live.recv() => match b {
                Ok(b) => touched(&b, &names),
                Err(broadcast::error::RecvError::Lagged(_)) => names.clone(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if affected.is_empty() {
            continue;
        }
        // A read of everything costs far more than one applied batch (hundreds of ms at
        // 10,000 units), and batches come by the hundred while a fleet converges: gather
        // what arrives for a moment and answer all of it from one read.
        tokio::time::sleep(FOLLOW_COALESCE).await;
        loop {
            match live.try_recv() {
                Ok(b) if affected.len() < names.len() => affected.extend(touched(&b, &names)),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => affected = names.clone(),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return,
            }
        }
        // The batches were applied here before they were broadcast: the local state has
        // them. Reading and comparing is CPU work: off the async workers, which also carry
        // Raft's heartbeats.
        let node = svc.node.clone();
        let prev = std::mem::take(&mut last);
        let work = tokio::task::spawn_blocking(move || {
            let snap = FleetService { node }.local_snapshot()?;
            let mut last = prev;
            let mut changed = Vec::new();
            for (n, now) in info::unit_infos(&snap, &affected) {
                if last.get(&n) != Some(&now) {
                    last.insert(n, now.clone());
                    changed.push(now);
                }
            }
            Ok::<_, Status>((snap.revision, last, changed))
        })
        .await;
        let (revision, next, changed) = match work {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(Status::internal(format!("following units: {e}")))).await;
                return;
            }
        };
        last = next;
        if !changed.is_empty()
            && tx
                .send(Ok(pb::WatchUnitStatesResponse {
                    units: changed,
                    revision,
                }))
                .await
                .is_err()
        {
            return;
        }
    }
}
