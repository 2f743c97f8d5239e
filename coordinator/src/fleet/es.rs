//! The Fleet service's Elasticsearch cluster records (`/esfleet/es/<name>`, a
//! `esfleet_core::es::ClusterRecord` in JSON): apply, get, list, delete.
//!
//! The record is validated here again (`ClusterSpec::validate`): the CLI is one client
//! among others. An apply is refused when it would change what a running cluster cannot:
//! its `zones` (forced awareness must not shrink, and the nodes' zone attributes were
//! rendered from them), the ports of a role with nodes (nodes would stop finding each
//! other), `runtime`, `data_root`, `user` and (nspawn) `image` (every node would restart
//! without its data), and its master count before it has formed (`initial_master_nodes`
//! would change mid-bootstrap). It is also refused when a role with nodes would use a port
//! that any role of another cluster has: the scheduler does not place by port, so the two
//! clusters' nodes could meet on one host. `bootstrapped` is the scheduler's: an apply
//! keeps the stored value. Every write is a compare-and-set Txn; an apply's also requires
//! that no cluster record changed since the read its port check used.

use std::collections::BTreeMap;

use esfleet_core::es::{self as core_es, ClusterRecord, ClusterSpec, Role, Runtime};
use esfleet_core::keys;
use esfleet_proto::etcdserverpb as etcd;
use esfleet_proto::fleet as pb;
use tonic::{Request, Response, Status};

use super::{FleetService, CAS_ATTEMPTS};
use crate::scheduler::snapshot::{read_prefix, StoreSnapshot};
use crate::scheduler::txn;
use crate::sync::Recover;

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

/// Why `new` may not replace `old`: the fields a running cluster cannot change. `units`
/// tells which roles have nodes submitted: the ports of a role without nodes (count 0 and
/// no instance unit) are free to change, so that a role another cluster's ports block can
/// still be given its own before it scales up.
fn immutable_change(old: &ClusterRecord, new: &ClusterRecord, units: &StoreSnapshot) -> Option<String> {
    let name = &old.spec.name;
    let (o, n) = (&old.spec, &new.spec);
    if o.zones != n.zones {
        return Some(format!(
            "cluster {name} has zones {:?}; the definition asks for {:?}. Zones are fixed once a cluster exists \
             (forced awareness and every node's zone were set from them): put zones = {:?} in cluster.toml \
             (or leave zones out to keep them)",
            o.zones, n.zones, o.zones
        ));
    }
    // Where the nodes' data lives and who owns it: changing any of these under running
    // nodes re-renders path.data (or the unit) at once, and each node comes back empty
    // on its next restart, a full re-copy of its shards and lost data where an index has
    // no replica.
    let migrate = "define a new cluster (another name) with the new value and move the indices to it \
                   (snapshot and restore, or reindex from remote), then delete this one";
    if o.runtime != n.runtime {
        return Some(format!(
            "cluster {name} runs its nodes with runtime = \"{}\"; the definition asks for \"{}\". The runtime \
             cannot change on an existing cluster (the nodes' units, data directories and users were laid out for \
             it, and the nodes would restart without their data): put runtime = \"{}\" in cluster.toml, or {migrate}",
            o.runtime.as_str(),
            n.runtime.as_str(),
            o.runtime.as_str()
        ));
    }
    if o.data_root != n.data_root {
        return Some(format!(
            "cluster {name} keeps its nodes' data under data_root = {:?}; the definition asks for {:?}. data_root \
             cannot change on an existing cluster: every node's path.data would point at an empty directory from \
             its next restart (a full re-copy of its shards, and lost data for indices without replicas). Put \
             data_root = {:?} in cluster.toml, or {migrate}",
            o.data_root, n.data_root, o.data_root
        ));
    }
    if o.user != n.user {
        return Some(format!(
            "cluster {name}'s nodes run as user = {:?}, who owns their data directories; the definition asks for \
             {:?}. The user cannot change on an existing cluster (nodes running as {:?} could not use the data \
             they hold): put user = {:?} in cluster.toml, or {migrate}",
            o.user, n.user, n.user, o.user
        ));
    }
    if o.runtime == Runtime::Nspawn && o.image != n.image {
        return Some(format!(
            "cluster {name}'s nodes were created from image = {:?}; the definition asks for {:?}. The image cannot \
             change on an existing cluster (each node's machine directory is copied from it once, so only nodes \
             created later would get the new one, next to their data in the old layout): put image = {:?} in \
             cluster.toml, or {migrate}",
            o.image, n.image, o.image
        ));
    }
    for role in Role::ALL {
        let (or, nr) = (o.role(role), n.role(role));
        if or.count == 0 && !has_nodes(o, role, units) {
            continue;
        }
        for (what, a, b) in [
            ("http_port", or.http_port, nr.http_port),
            ("transport_port", or.transport_port, nr.transport_port),
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

/// Whether an instance unit of `role` of this cluster is submitted (a scale-down to 0 may
/// still have its nodes running).
fn has_nodes(spec: &ClusterSpec, role: Role, units: &StoreSnapshot) -> bool {
    units
        .units
        .keys()
        .any(|u| !u.is_template() && core_es::node_of(spec, u).is_some_and(|n| n.role == role))
}

/// Why the master count may not change yet: until the cluster has formed, its masters
/// run with `cluster.initial_master_nodes` naming exactly `old`'s masters, and rewriting
/// that list mid-bootstrap can leave masters disagreeing on the voting configuration (no
/// cluster, or two).
fn master_count_change(old: &ClusterRecord, new: &ClusterRecord) -> Option<String> {
    let (a, b) = (old.spec.master.count, new.spec.master.count);
    if old.bootstrapped || a == b {
        return None;
    }
    let name = &old.spec.name;
    Some(format!(
        "cluster {name} has not formed yet (it counts as formed once a majority of its {a} master nodes run), and \
         its masters bootstrap with cluster.initial_master_nodes = {:?}; changing [master] count to {b} now would \
         rewrite that list mid-bootstrap and could split the cluster or keep it from forming. Keep [master] \
         count = {a} until it has formed, then apply again (if it can never form, destroy its nodes, \
         esfleet es delete {name}, and apply the new definition)",
        old.spec.master_names()
    ))
}

/// Why `new`'s ports clash with another stored cluster: a port of a role that has nodes in
/// `new` which any role of another cluster also uses (a role without nodes keeps its ports
/// reserved, as it may scale up). The scheduler places without regard to ports, so nodes
/// of two such clusters can share a host, and whoever connects to the port may reach
/// either. Only ports this apply starts using are checked (`old` is the stored record, if
/// any): a clash stored before this rule existed cannot be undone by an apply (ports are
/// fixed), and refusing would only block that cluster's scaling.
fn port_clash(
    old: Option<&ClusterRecord>,
    new: &ClusterSpec,
    clusters: &BTreeMap<String, (ClusterRecord, i64)>,
) -> Option<String> {
    let ports = |s: &ClusterSpec, role: Role| {
        let r = s.role(role);
        [("http_port", r.http_port), ("transport_port", r.transport_port)]
    };
    let in_use = |s: &ClusterSpec, role: Role, port: u16| {
        s.role(role).count > 0 && ports(s, role).iter().any(|(_, p)| *p == port)
    };
    let others = || clusters.iter().filter(|(n, _)| **n != new.name);
    for role in Role::ALL {
        if new.role(role).count == 0 {
            continue;
        }
        for (what, port) in ports(new, role) {
            if old.is_some_and(|o| in_use(&o.spec, role, port)) {
                continue;
            }
            for (other, (rec, _)) in others() {
                for orole in Role::ALL {
                    let Some((owhat, _)) = ports(&rec.spec, orole).into_iter().find(|(_, p)| *p == port) else {
                        continue;
                    };
                    let idle = if rec.spec.role(orole).count == 0 {
                        format!(" (it has no {orole} nodes now, but keeps the port for when it scales up)")
                    } else {
                        String::new()
                    };
                    let mut taken: Vec<u16> = others()
                        .flat_map(|(_, (r, _))| Role::ALL.into_iter().flat_map(|ro| ports(&r.spec, ro)))
                        .map(|(_, p)| p)
                        .collect();
                    taken.sort_unstable();
                    taken.dedup();
                    let taken = taken.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
                    return Some(format!(
                        "cluster {}: [{role}] {what} = {port} is also [{orole}] {owhat} of cluster {other}{idle}. \
                         esfleet places nodes without regard to ports, so nodes of both clusters on one host would \
                         clash, and a client of one could reach the other: set a different {what} in [{role}] of \
                         the cluster.toml of {} (ports of other clusters: {taken})",
                        new.name, new.name
                    ));
                }
            }
        }
    }
    None
}

impl FleetService {
    async fn es_snapshot(&self) -> Result<EsSnapshot, Status> {
        self.node.linearizable().await?;
        let m = self.node.store.mvcc.read().or_recover();
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
                if let Some(why) = immutable_change(o, &rec, &snap.units) {
                    return Err(Status::invalid_argument(why));
                }
                if let Some(why) = master_count_change(o, &rec) {
                    return Err(Status::failed_precondition(why));
                }
            }
            if let Some(why) = port_clash(old.map(|(o, _)| o), &rec.spec, &snap.clusters) {
                return Err(Status::invalid_argument(why));
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
                    // The other clusters' ports were checked at this read: none may have
                    // been applied meanwhile (a deleted one only frees ports).
                    compare: vec![
                        txn::mod_is(&key, old_rev),
                        txn::prefix_unchanged_since(keys::ES, snap.units.revision),
                    ],
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
