//! The Fleet service's Elasticsearch cluster records (`/esfleet/es/<name>`, a
//! `esfleet_core::es::ClusterRecord` in JSON): apply, get, list, delete.
//!
//! The record is validated here again (`ClusterSpec::validate`): the CLI is one client
//! among others. Two fields of a running cluster never change through an apply: its
//! `zones` (forced awareness must not shrink, and the nodes' zone attributes were rendered
//! from them) and its roles' ports (nodes would stop finding each other). `bootstrapped` is
//! the scheduler's: an apply keeps the stored value. Every write is a compare-and-set Txn.

use std::collections::BTreeMap;

use esfleet_core::es::{self as core_es, ClusterRecord, Role};
use esfleet_core::keys;
use esfleet_proto::etcdserverpb as etcd;
use esfleet_proto::fleet as pb;
use tonic::{Request, Response, Status};

use super::{FleetService, CAS_ATTEMPTS};
use crate::scheduler::snapshot::{read_prefix, StoreSnapshot};
use crate::scheduler::txn;

/// Every stored cluster record with its key's mod revision, and the units, at one revision.
struct EsSnapshot {
    units: StoreSnapshot,
    clusters: BTreeMap<String, (ClusterRecord, i64)>,
}

/// `[a-z][a-z0-9]*` (ES_CONTRACT.md "Names"); the spec's own validation says more.
fn check_name(name: &str) -> Result<(), Status> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{name:?} is not a cluster name; a cluster name is a lower-case letter followed by lower-case letters and digits"
        )))
    }
}

fn message(name: &str, rec: &ClusterRecord, mod_revision: i64) -> pb::EsCluster {
    pb::EsCluster {
        name: name.to_string(),
        record_json: serde_json::to_string(rec).expect("a cluster record serializes"),
        mod_revision,
        bootstrapped: rec.bootstrapped,
    }
}

/// Why `new` may not replace `old`: the fields a running cluster cannot change.
fn immutable_change(old: &ClusterRecord, new: &ClusterRecord) -> Option<String> {
    let name = &old.spec.name;
    if old.spec.zones != new.spec.zones {
        return Some(format!(
            "cluster {name} has zones {:?}; the definition asks for {:?}. Zones are fixed once a cluster exists \
             (forced awareness and every node's zone were set from them): put zones = {:?} in cluster.toml \
             (or leave zones out to keep them)",
            old.spec.zones, new.spec.zones, old.spec.zones
        ));
    }
    for role in Role::ALL {
        let (o, n) = (old.spec.role(role), new.spec.role(role));
        for (what, a, b) in [
            ("http_port", o.http_port, n.http_port),
            ("transport_port", o.transport_port, n.transport_port),
        ] {
            if a != b {
                return Some(format!(
                    "cluster {name}'s {role} nodes use {what} {a}; the definition asks for {b}. Ports cannot change \
                     on an existing cluster (its nodes would stop finding each other): set [{role}] {what} = {a}"
                ));
            }
        }
    }
    None
}

impl FleetService {
    async fn es_snapshot(&self) -> Result<EsSnapshot, Status> {
        self.node.linearizable().await?;
        let m = self.node.store.mvcc.read().expect("poisoned");
        // One read lock: the units and the records are at the same revision.
        let units = StoreSnapshot::read(&m).map_err(crate::api::kv::mvcc_status)?;
        let (_, kvs) = read_prefix(&m, keys::ES).map_err(crate::api::kv::mvcc_status)?;
        let mut clusters = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let name = key.strip_prefix(keys::ES).unwrap_or_default().to_string();
            match serde_json::from_slice::<ClusterRecord>(&kv.value) {
                Ok(rec) if rec.spec.name == name => {
                    clusters.insert(name, (rec, kv.mod_revision));
                }
                Ok(rec) => {
                    tracing::warn!(%key, named = %rec.spec.name, "an Elasticsearch record sits at another cluster's key; skipped")
                }
                Err(e) => tracing::warn!(%key, error = %e, "an Elasticsearch record does not parse; skipped"),
            }
        }
        Ok(EsSnapshot { units, clusters })
    }

    pub(super) async fn es_apply(
        &self,
        req: Request<pb::ApplyEsClusterRequest>,
    ) -> Result<Response<pb::ApplyEsClusterResponse>, Status> {
        let req = req.into_inner();
        let mut rec: ClusterRecord = serde_json::from_str(&req.record_json).map_err(|e| {
            Status::invalid_argument(format!(
                "record_json is not an Elasticsearch cluster record ({e}); send esfleet_core::es::ClusterRecord as JSON"
            ))
        })?;
        let name = rec.spec.name.clone();
        check_name(&name)?;
        rec.spec
            .validate()
            .map_err(|e| Status::invalid_argument(format!("cluster {name}: {e}")))?;
        if rec.spec.zones.is_empty() {
            return Err(Status::invalid_argument(format!(
                "cluster {name}: zones is empty; list them in cluster.toml, or give the machines zone metadata \
                 (esfleet es apply fills zones from it)"
            )));
        }
        let key = keys::es_cluster(&name);
        for _ in 0..CAS_ATTEMPTS {
            let snap = self.es_snapshot().await?;
            let old = snap.clusters.get(&name);
            let old_rev = old.map_or(0, |(_, r)| *r);
            if req.check_revision && old_rev != req.if_revision {
                return Err(Status::aborted(format!(
                    "cluster {name} changed since it was read (revision {} then, {old_rev} now); run the command again",
                    req.if_revision
                )));
            }
            if let Some((o, _)) = old {
                if let Some(why) = immutable_change(o, &rec) {
                    return Err(Status::invalid_argument(why));
                }
            }
            rec.bootstrapped = old.is_some_and(|(o, _)| o.bootstrapped);
            if let Some((o, r)) = old {
                if *o == rec {
                    return Ok(Response::new(pb::ApplyEsClusterResponse {
                        cluster: Some(message(&name, o, *r)),
                        created: false,
                        changed: false,
                        revision: snap.units.revision,
                    }));
                }
            }
            let value = serde_json::to_vec(&rec).expect("a cluster record serializes");
            let (resp, revision) = txn::propose(
                &self.node,
                etcd::TxnRequest {
                    compare: vec![txn::mod_is(&key, old_rev)],
                    success: vec![txn::put(&key, value)],
                    failure: vec![],
                },
            )
            .await?;
            if !resp.succeeded {
                continue;
            }
            return Ok(Response::new(pb::ApplyEsClusterResponse {
                cluster: Some(message(&name, &rec, revision)),
                created: old.is_none(),
                changed: true,
                revision,
            }));
        }
        Err(Self::conflict())
    }

    pub(super) async fn es_get(
        &self,
        req: Request<pb::GetEsClusterRequest>,
    ) -> Result<Response<pb::GetEsClusterResponse>, Status> {
        let name = req.into_inner().name;
        check_name(&name)?;
        let snap = self.es_snapshot().await?;
        let (rec, rev) = snap.clusters.get(&name).ok_or_else(|| not_found(&name))?;
        Ok(Response::new(pb::GetEsClusterResponse {
            cluster: Some(message(&name, rec, *rev)),
            revision: snap.units.revision,
        }))
    }

    pub(super) async fn es_list(
        &self,
        _req: Request<pb::ListEsClustersRequest>,
    ) -> Result<Response<pb::ListEsClustersResponse>, Status> {
        let snap = self.es_snapshot().await?;
        Ok(Response::new(pb::ListEsClustersResponse {
            clusters: snap
                .clusters
                .iter()
                .map(|(n, (rec, rev))| message(n, rec, *rev))
                .collect(),
            revision: snap.units.revision,
        }))
    }

    pub(super) async fn es_delete(
        &self,
        req: Request<pb::DeleteEsClusterRequest>,
    ) -> Result<Response<pb::DeleteEsClusterResponse>, Status> {
        let name = req.into_inner().name;
        check_name(&name)?;
        for _ in 0..CAS_ATTEMPTS {
            let snap = self.es_snapshot().await?;
            let (rec, rev) = snap.clusters.get(&name).ok_or_else(|| not_found(&name))?;
            let instances: Vec<String> = snap
                .units
                .units
                .keys()
                .filter(|u| !u.is_template() && core_es::node_of(&rec.spec, u).is_some())
                .map(|u| u.to_string())
                .collect();
            if !instances.is_empty() {
                const SHOWN: usize = 10;
                let mut list = instances.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
                if instances.len() > SHOWN {
                    list.push_str(&format!(" and {} more", instances.len() - SHOWN));
                }
                return Err(Status::failed_precondition(format!(
                    "cluster {name} still has {} node unit{} submitted ({list}); destroy them first, e.g. \
                     esfleet destroy '{name}-?@?*.service'",
                    instances.len(),
                    if instances.len() == 1 { "" } else { "s" }
                )));
            }
            let key = keys::es_cluster(&name);
            let mut compare = vec![txn::mod_is(&key, *rev)];
            let mut ops = vec![txn::delete(&key)];
            let mut templates = Vec::new();
            for role in Role::ALL {
                let t = rec.spec.template(role);
                if let Some(r) = snap.units.unit_revisions.get(&t) {
                    compare.push(txn::mod_is(&keys::unit(&t), *r));
                    ops.push(txn::delete(&keys::unit(&t)));
                    templates.push(t.to_string());
                }
            }
            // No instance may appear meanwhile: nothing under units/ changed since the read.
            compare.push(txn::prefix_unchanged_since(keys::UNITS, snap.units.revision));
            let (resp, revision) = txn::propose(
                &self.node,
                etcd::TxnRequest {
                    compare,
                    success: ops,
                    failure: vec![],
                },
            )
            .await?;
            if resp.succeeded {
                return Ok(Response::new(pb::DeleteEsClusterResponse { templates, revision }));
            }
        }
        Err(Self::conflict())
    }
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!(
        "no Elasticsearch cluster {name}; define it with esfleet es apply <cluster.toml> (esfleet es status lists them)"
    ))
}
