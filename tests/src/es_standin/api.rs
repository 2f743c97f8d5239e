//! Elasticsearch's REST endpoints (the few esfleet calls) answered from the [`Model`], as
//! seen from one node. Requests that wait (health with `wait_for_*`, voting exclusions)
//! return [`Reply::Pending`]; the caller polls them with [`Model::poll`] at later times,
//! which keeps this pure and testable with explicit time.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::http::{Request, Response};
use super::model::{accumulate, as_list, Cluster, CopyState, Enable, Exclusion, Health, Model, Status};

/// The version the stand-in claims: an Elasticsearch 8 REST API.
pub const VERSION: &str = "8.15.0";
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const MAX_EXCLUSIONS: usize = 10;

pub enum Reply {
    Done(Response),
    Pending(Pending),
}

/// A request waiting for the cluster to change, until `deadline` (model time).
#[derive(Debug, Clone)]
pub struct Pending {
    pub deadline: u64,
    pub from: Option<String>,
    kind: PendingKind,
}

#[derive(Debug, Clone)]
enum PendingKind {
    Health(HealthWait),
    ExclusionsApplied { cluster: String, ids: Vec<String> },
    ExclusionsCleared { cluster: String },
}

#[derive(Debug, Clone, Default)]
struct HealthWait {
    status: Option<Status>,
    nodes: Option<(String, usize)>,
    no_relocating: bool,
    no_initializing: bool,
}

/// Elasticsearch's error body.
pub fn es_error(status: u16, kind: &str, reason: &str) -> Value {
    json!({
        "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
        "status": status,
    })
}

fn error(status: u16, kind: &str, reason: &str) -> Response {
    Response::json(status, &es_error(status, kind, reason))
}

fn no_master() -> Response {
    error(
        503,
        "master_not_discovered_exception",
        "no elected master: this node has not joined a cluster with a quorum of master-eligible nodes",
    )
}

/// Elasticsearch time values: `500ms`, `1s`, `2m`, `1h`, `1d`, or plain milliseconds.
pub fn parse_time_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(n * factor)
}

fn timeout_of(req: &Request) -> Result<u64, Response> {
    match req.query.get("timeout") {
        None => Ok(DEFAULT_TIMEOUT_MS),
        Some(t) => parse_time_ms(t).ok_or_else(|| {
            error(
                400,
                "illegal_argument_exception",
                &format!("failed to parse setting [timeout] with value [{t}] as a time value"),
            )
        }),
    }
}

/// Nested JSON objects → dotted keys; scalars become strings as Elasticsearch stores them.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => {
            out.insert(prefix.to_string(), Value::Null);
        }
        Value::Array(a) => {
            let items = a
                .iter()
                .map(|x| Value::String(x.as_str().map_or_else(|| x.to_string(), String::from)));
            out.insert(prefix.to_string(), Value::Array(items.collect()));
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), Value::String(s.clone()));
        }
        other => {
            out.insert(prefix.to_string(), Value::String(other.to_string()));
        }
    }
}

fn nest(flat: &BTreeMap<String, Value>) -> Value {
    let mut root = Map::new();
    for (k, v) in flat {
        let parts: Vec<&str> = k.split('.').collect();
        let mut cur = &mut root;
        for p in &parts[..parts.len() - 1] {
            let entry = cur.entry(p.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            cur = entry.as_object_mut().expect("just made an object");
        }
        cur.insert(parts[parts.len() - 1].to_string(), v.clone());
    }
    Value::Object(root)
}

fn settings_out(flat: &BTreeMap<String, Value>, req: &Request) -> Value {
    if req
        .query
        .get("flat_settings")
        .is_some_and(|v| v == "true" || v.is_empty())
    {
        Value::Object(flat.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    } else {
        nest(flat)
    }
}

/// Dynamic cluster settings the stand-in accepts (it honours only allocation and awareness).
fn known_setting(key: &str) -> bool {
    [
        "cluster.",
        "indices.",
        "action.",
        "logger.",
        "search.",
        "xpack.",
        "ingest.",
        "transport.",
        "http.",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// Applies `filter_path` (comma list of dotted paths; `*` matches any key) to a response.
fn filter_path(v: &Value, filter: &str) -> Value {
    fn pick(v: &Value, path: &[&str]) -> Option<Value> {
        let Some((first, rest)) = path.split_first() else {
            return Some(v.clone());
        };
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, sub) in m {
                    if *first == "*" || first == k {
                        if let Some(x) = pick(sub, rest) {
                            out.insert(k.clone(), x);
                        }
                    }
                }
                (!out.is_empty()).then_some(Value::Object(out))
            }
            Value::Array(a) => {
                let items: Vec<Value> = a.iter().filter_map(|x| pick(x, path)).collect();
                (!items.is_empty()).then_some(Value::Array(items))
            }
            _ => None,
        }
    }
    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(existing) => merge(existing, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (slot, other) => *slot = other,
        }
    }
    let mut out = Value::Object(Map::new());
    for path in filter.split(',').filter(|p| !p.is_empty()) {
        let parts: Vec<&str> = path.split('.').collect();
        if let Some(x) = pick(v, &parts) {
            merge(&mut out, x);
        }
    }
    out
}

fn role_letters(roles: &[String]) -> String {
    let mut letters: Vec<char> = roles
        .iter()
        .filter_map(|r| match r.as_str() {
            "data" => Some('d'),
            "data_cold" => Some('c'),
            "data_frozen" => Some('f'),
            "data_hot" => Some('h'),
            "data_content" => Some('s'),
            "data_warm" => Some('w'),
            "ingest" => Some('i'),
            "ml" => Some('l'),
            "master" => Some('m'),
            "remote_cluster_client" => Some('r'),
            "transform" => Some('t'),
            "voting_only" => Some('v'),
            _ => None,
        })
        .collect();
    letters.sort();
    if letters.is_empty() {
        "-".into()
    } else {
        letters.into_iter().collect()
    }
}

/// `_cat` output: JSON with `format=json`, else a text table (`v` adds the header); `h`
/// selects columns.
fn cat(req: &Request, columns: &[&str], rows: Vec<BTreeMap<&str, Value>>) -> Response {
    let cols: Vec<String> = match req.query.get("h") {
        Some(h) => h.split(',').map(String::from).collect(),
        None => columns.iter().map(|c| c.to_string()).collect(),
    };
    if req.query.get("format").is_some_and(|f| f == "json") {
        let arr: Vec<Value> = rows
            .iter()
            .map(|r| {
                Value::Object(
                    cols.iter()
                        .map(|c| (c.clone(), r.get(c.as_str()).cloned().unwrap_or(Value::Null)))
                        .collect(),
                )
            })
            .collect();
        return Response::json(200, &Value::Array(arr));
    }
    let cell = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let mut table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(r.get(c.as_str()))).collect())
        .collect();
    if req.query.contains_key("v") {
        table.insert(0, cols.clone());
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in table {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        out.push_str(line.join(" ").trim_end());
        out.push('\n');
    }
    Response::text(200, out)
}

fn health_body(c: &Cluster, h: &Health, timed_out: bool) -> Value {
    let total = h.active_shards + h.initializing_shards + h.unassigned_shards;
    let pct = if total == 0 {
        100.0
    } else {
        100.0 * h.active_shards as f64 / total as f64
    };
    json!({
        "cluster_name": c.name,
        "status": h.status.as_str(),
        "timed_out": timed_out,
        "number_of_nodes": h.number_of_nodes,
        "number_of_data_nodes": h.number_of_data_nodes,
        "active_primary_shards": h.active_primary_shards,
        "active_shards": h.active_shards,
        "relocating_shards": h.relocating_shards,
        "initializing_shards": h.initializing_shards,
        "unassigned_shards": h.unassigned_shards,
        "delayed_unassigned_shards": 0,
        "number_of_pending_tasks": 0,
        "number_of_in_flight_fetch": 0,
        "task_max_waiting_in_queue_millis": 0,
        "active_shards_percent_as_number": pct,
    })
}

impl HealthWait {
    fn parse(req: &Request) -> Result<HealthWait, Response> {
        let mut w = HealthWait::default();
        if let Some(s) = req.query.get("wait_for_status") {
            w.status = Some(Status::parse(s).ok_or_else(|| {
                error(
                    400,
                    "illegal_argument_exception",
                    &format!("unknown cluster health status [{s}]: use green, yellow or red"),
                )
            })?);
        }
        if let Some(n) = req.query.get("wait_for_nodes") {
            let op_len = n.find(|c: char| c.is_ascii_digit()).unwrap_or(n.len());
            let (op, num) = n.split_at(op_len);
            let num: usize = num.parse().map_err(|_| {
                error(
                    400,
                    "illegal_argument_exception",
                    &format!("wait_for_nodes [{n}]: expected N, >=N, <=N, >N or <N"),
                )
            })?;
            let op = match op.trim() {
                "" => "==",
                o @ (">=" | "<=" | ">" | "<") => o,
                "ge(" | "le(" | "gt(" | "lt(" => {
                    return Err(error(
                        400,
                        "illegal_argument_exception",
                        "use the >=N form of wait_for_nodes",
                    ))
                }
                _ => {
                    return Err(error(
                        400,
                        "illegal_argument_exception",
                        &format!("wait_for_nodes [{n}] not understood"),
                    ))
                }
            };
            w.nodes = Some((op.to_string(), num));
        }
        let flag = |k: &str| req.query.get(k).is_some_and(|v| v == "true" || v.is_empty());
        w.no_relocating = flag("wait_for_no_relocating_shards");
        w.no_initializing = flag("wait_for_no_initializing_shards");
        Ok(w)
    }

    fn waits(&self) -> bool {
        self.status.is_some() || self.nodes.is_some() || self.no_relocating || self.no_initializing
    }

    fn met(&self, h: &Health) -> bool {
        let nodes_ok = self.nodes.as_ref().is_none_or(|(op, n)| {
            let x = h.number_of_nodes;
            match op.as_str() {
                ">=" => x >= *n,
                "<=" => x <= *n,
                ">" => x > *n,
                "<" => x < *n,
                _ => x == *n,
            }
        });
        self.status.is_none_or(|s| h.status >= s)
            && nodes_ok
            && (!self.no_relocating || h.relocating_shards == 0)
            && (!self.no_initializing || h.initializing_shards == 0)
    }
}

impl Model {
    /// Answers one REST request as node `from` (`None`: the model itself, as the first
    /// cluster's master) at time `now`.
    pub fn rest(&mut self, req: &Request, from: Option<&str>, now: u64) -> Reply {
        let resp = match self.route(req, from, now) {
            Ok(reply) => return reply,
            Err(resp) => resp,
        };
        Reply::Done(resp)
    }

    /// Re-evaluates a pending request at `now`.
    pub fn poll(&mut self, p: &Pending, now: u64) -> Reply {
        let expired = now >= p.deadline;
        match &p.kind {
            PendingKind::Health(wait) => {
                let Some(ci) = self.view(p.from.as_deref()) else {
                    return Reply::Done(no_master());
                };
                let h = self.health_of(ci);
                if wait.met(&h) {
                    Reply::Done(Response::json(200, &health_body(&self.clusters[ci], &h, false)))
                } else if expired {
                    Reply::Done(Response::json(408, &health_body(&self.clusters[ci], &h, true)))
                } else {
                    Reply::Pending(p.clone())
                }
            }
            PendingKind::ExclusionsApplied { cluster, ids } => {
                let Some(c) = self.clusters.iter().find(|c| &c.uuid == cluster) else {
                    return Reply::Done(no_master());
                };
                if ids.iter().all(|id| !c.voting.contains(id)) {
                    Reply::Done(Response {
                        status: 200,
                        content_type: "application/json",
                        body: vec![],
                    })
                } else if expired {
                    let names: Vec<String> = c
                        .exclusions
                        .iter()
                        .filter(|e| ids.contains(&e.node_id))
                        .map(|e| format!("{{{}}}{{{}}}", e.node_name, e.node_id))
                        .collect();
                    Reply::Done(error(
                        500,
                        "timeout_exception",
                        &format!(
                            "timed out waiting for voting config exclusions [{}] to take effect",
                            names.join(", ")
                        ),
                    ))
                } else {
                    Reply::Pending(p.clone())
                }
            }
            PendingKind::ExclusionsCleared { cluster } => {
                let Some(ci) = self.clusters.iter().position(|c| &c.uuid == cluster) else {
                    return Reply::Done(no_master());
                };
                let c = &self.clusters[ci];
                let remaining: Vec<&Exclusion> =
                    c.exclusions.iter().filter(|e| c.members.contains(&e.node_id)).collect();
                if remaining.is_empty() {
                    self.clusters[ci].exclusions.clear();
                    self.resettle(now);
                    Reply::Done(Response {
                        status: 200,
                        content_type: "application/json",
                        body: vec![],
                    })
                } else if expired {
                    let names: Vec<String> = remaining.iter().map(|e| e.node_name.clone()).collect();
                    Reply::Done(error(
                        500,
                        "timeout_exception",
                        &format!(
                            "timed out waiting for removal of nodes; if nodes should not be removed, set \
                             wait_for_removal to false. {names:?}"
                        ),
                    ))
                } else {
                    Reply::Pending(p.clone())
                }
            }
        }
    }

    fn master_view(&self, from: Option<&str>) -> Result<usize, Response> {
        self.view(from).ok_or_else(no_master)
    }

    fn route(&mut self, req: &Request, from: Option<&str>, now: u64) -> Result<Reply, Response> {
        let path = req.path.trim_end_matches('/');
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let done = |r: Response| -> Result<Reply, Response> {
            let r = match (req.query.get("filter_path"), r.body_json()) {
                (Some(f), Ok(v)) if r.content_type == "application/json" => {
                    Response::json(r.status, &filter_path(&v, f))
                }
                _ => r,
            };
            Ok(Reply::Done(r))
        };
        let m = req.method.as_str();
        match (m, segs.as_slice()) {
            ("GET" | "HEAD", []) => done(self.root(from)),
            ("GET", ["_cluster", "health", ..]) => {
                let ci = self.master_view(from)?;
                let wait = HealthWait::parse(req)?;
                let timeout = timeout_of(req)?;
                if !wait.waits() {
                    let h = self.health_of(ci);
                    return done(Response::json(200, &health_body(&self.clusters[ci], &h, false)));
                }
                let pending = Pending {
                    deadline: now + timeout,
                    from: from.map(String::from),
                    kind: PendingKind::Health(wait),
                };
                Ok(self.poll(&pending, now))
            }
            ("GET", ["_cluster", "settings"]) => {
                let ci = self.master_view(from)?;
                let c = &self.clusters[ci];
                done(Response::json(
                    200,
                    &json!({"persistent": settings_out(&c.persistent, req), "transient": settings_out(&c.transient, req)}),
                ))
            }
            ("PUT", ["_cluster", "settings"]) => {
                let ci = self.master_view(from)?;
                done(self.put_settings(ci, req, now))
            }
            ("GET", ["_nodes", ..]) => done(self.nodes_info(from)),
            ("GET", ["_cat", "nodes"]) => {
                let ci = self.master_view(from)?;
                done(self.cat_nodes(ci, req))
            }
            ("GET", ["_cat", "shards", ..]) => {
                let ci = self.master_view(from)?;
                done(self.cat_shards(ci, req))
            }
            ("GET", ["_cat", "indices", ..]) => {
                let ci = self.master_view(from)?;
                done(self.cat_indices(ci, req))
            }
            ("GET", ["_cat", "health"]) => {
                let ci = self.master_view(from)?;
                let c = &self.clusters[ci];
                let h = self.health_of(ci);
                let row = BTreeMap::from([
                    ("epoch", json!((now / 1000).to_string())),
                    ("cluster", json!(c.name)),
                    ("status", json!(h.status.as_str())),
                    ("node.total", json!(h.number_of_nodes.to_string())),
                    ("node.data", json!(h.number_of_data_nodes.to_string())),
                    ("shards", json!(h.active_shards.to_string())),
                    ("pri", json!(h.active_primary_shards.to_string())),
                    ("relo", json!(h.relocating_shards.to_string())),
                    ("init", json!(h.initializing_shards.to_string())),
                    ("unassign", json!(h.unassigned_shards.to_string())),
                ]);
                done(cat(
                    req,
                    &[
                        "epoch",
                        "cluster",
                        "status",
                        "node.total",
                        "node.data",
                        "shards",
                        "pri",
                        "relo",
                        "init",
                        "unassign",
                    ],
                    vec![row],
                ))
            }
            ("POST", ["_cluster", "voting_config_exclusions"]) => {
                let ci = self.master_view(from)?;
                self.add_exclusions(ci, req, from, now)
            }
            ("DELETE", ["_cluster", "voting_config_exclusions"]) => {
                let ci = self.master_view(from)?;
                let wait = req.query.get("wait_for_removal").is_none_or(|v| v != "false");
                if !wait {
                    self.clusters[ci].exclusions.clear();
                    self.resettle(now);
                    return done(Response {
                        status: 200,
                        content_type: "application/json",
                        body: vec![],
                    });
                }
                let timeout = timeout_of(req)?;
                let pending = Pending {
                    deadline: now + timeout,
                    from: from.map(String::from),
                    kind: PendingKind::ExclusionsCleared {
                        cluster: self.clusters[ci].uuid.clone(),
                    },
                };
                Ok(self.poll(&pending, now))
            }
            ("GET", ["_cluster", "state", ..]) => {
                let ci = self.master_view(from)?;
                let c = &self.clusters[ci];
                let cfg: Vec<&String> = c.voting.iter().collect();
                let excl: Vec<Value> = c
                    .exclusions
                    .iter()
                    .map(|e| json!({"node_id": e.node_id, "node_name": e.node_name}))
                    .collect();
                let body = json!({
                    "cluster_name": c.name,
                    "cluster_uuid": c.uuid,
                    "master_node": c.master,
                    "metadata": {
                        "cluster_uuid": c.uuid,
                        "cluster_uuid_committed": true,
                        "cluster_coordination": {
                            "term": c.term,
                            "last_committed_config": cfg,
                            "last_accepted_config": cfg,
                            "voting_config_exclusions": excl,
                        },
                        "persistent": nest(&c.persistent),
                    },
                });
                done(Response::json(200, &body))
            }
            ("PUT", [index]) if !index.starts_with('_') => {
                let ci = self.master_view(from)?;
                done(self.create_index_req(ci, index, req, now))
            }
            ("PUT", [index, "_settings"]) if !index.starts_with('_') => {
                let ci = self.master_view(from)?;
                done(self.update_index_settings(ci, index, req, now))
            }
            ("DELETE", [index]) if !index.starts_with('_') => {
                let ci = self.master_view(from)?;
                if self.clusters[ci].indices.remove(*index).is_none() {
                    return done(error(
                        404,
                        "index_not_found_exception",
                        &format!("no such index [{index}]"),
                    ));
                }
                for d in self.disks.values_mut() {
                    d.copies.retain(|(i, _)| i != index);
                }
                self.resettle(now);
                done(Response::json(200, &json!({"acknowledged": true})))
            }
            _ => done(error(
                400,
                "illegal_argument_exception",
                &format!(
                    "no handler found for uri [{}] and method [{m}] (the Elasticsearch stand-in serves only the \
                     endpoints esfleet calls)",
                    req.target
                ),
            )),
        }
    }

    fn root(&self, from: Option<&str>) -> Response {
        let (name, cluster_name, uuid) = match from.and_then(|id| self.nodes.get(id)) {
            Some(n) => {
                let uuid = n.cluster.clone().unwrap_or_else(|| "_na_".into());
                (n.info.node_name.clone(), n.info.cluster_name.clone(), uuid)
            }
            None => match self.clusters.first() {
                Some(c) => ("standin-model".into(), c.name.clone(), c.uuid.clone()),
                None => ("standin-model".into(), "elasticsearch".into(), "_na_".into()),
            },
        };
        Response::json(
            200,
            &json!({
                "name": name,
                "cluster_name": cluster_name,
                "cluster_uuid": uuid,
                "version": {
                    "number": VERSION,
                    "build_flavor": "default",
                    "build_type": "standin",
                    "build_snapshot": false,
                    "lucene_version": "9.11.1",
                    "minimum_wire_compatibility_version": "7.17.0",
                    "minimum_index_compatibility_version": "7.0.0",
                },
                "tagline": "You Know, for Search",
            }),
        )
    }

    fn put_settings(&mut self, ci: usize, req: &Request, now: u64) -> Response {
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return error(400, "parse_exception", &format!("request body is not JSON: {e}")),
        };
        let Some(obj) = body.as_object() else {
            return error(
                400,
                "parse_exception",
                "request body must be an object with persistent and/or transient",
            );
        };
        if let Some(k) = obj.keys().find(|k| *k != "persistent" && *k != "transient") {
            return error(
                400,
                "illegal_argument_exception",
                &format!("unknown key [{k}]: use persistent or transient"),
            );
        }
        let mut updates: Vec<(&str, BTreeMap<String, Value>)> = vec![];
        for scope in ["persistent", "transient"] {
            let mut flat = BTreeMap::new();
            if let Some(v) = obj.get(scope) {
                flatten("", v, &mut flat);
            }
            for (k, v) in &flat {
                if !known_setting(k) {
                    return error(
                        400,
                        "illegal_argument_exception",
                        &format!("{scope} setting [{k}], not recognized"),
                    );
                }
                if k == "cluster.routing.allocation.enable" {
                    if let Some(s) = v.as_str().filter(|s| Enable::parse(s).is_none()) {
                        return error(
                            400,
                            "illegal_argument_exception",
                            &format!(
                                "Illegal allocation.enable value [{}]: use all, primaries, new_primaries or none",
                                s.to_uppercase()
                            ),
                        );
                    }
                }
            }
            updates.push((scope, flat));
        }
        let c = &mut self.clusters[ci];
        let mut applied = Map::new();
        for (scope, flat) in updates {
            let target = if scope == "persistent" {
                &mut c.persistent
            } else {
                &mut c.transient
            };
            let mut changed = BTreeMap::new();
            for (k, v) in flat {
                if v.is_null() {
                    // `null` resets; a trailing `*` resets a whole group, as in Elasticsearch
                    match k.strip_suffix('*') {
                        Some(prefix) => target.retain(|key, _| !key.starts_with(prefix)),
                        None => {
                            target.remove(&k);
                        }
                    }
                } else {
                    target.insert(k.clone(), v.clone());
                    changed.insert(k, v);
                }
            }
            applied.insert(scope.to_string(), nest(&changed));
        }
        self.resettle(now);
        let mut body = Map::new();
        body.insert("acknowledged".into(), json!(true));
        body.extend(applied);
        Response::json(200, &Value::Object(body))
    }

    fn nodes_info(&self, from: Option<&str>) -> Response {
        // Nodes info works from the node's last known cluster state, even without a master.
        let (cluster_name, ids): (String, Vec<String>) = match from {
            Some(id) => match self.nodes.get(id) {
                Some(n) => match n
                    .cluster
                    .as_ref()
                    .and_then(|u| self.clusters.iter().find(|c| &c.uuid == u))
                {
                    Some(c) => (c.name.clone(), c.members.iter().cloned().collect()),
                    None => (n.info.cluster_name.clone(), vec![id.to_string()]),
                },
                None => return no_master(),
            },
            None => match self.view(None) {
                Some(ci) => (
                    self.clusters[ci].name.clone(),
                    self.clusters[ci].members.iter().cloned().collect(),
                ),
                None => return no_master(),
            },
        };
        let mut nodes = Map::new();
        for id in &ids {
            let n = &self.nodes[id].info;
            let mut roles = n.roles.clone();
            roles.sort();
            nodes.insert(
                id.clone(),
                json!({
                    "name": n.node_name,
                    "transport_address": n.transport_address(),
                    "host": n.publish_address,
                    "ip": n.publish_address,
                    "version": VERSION,
                    "roles": roles,
                    "attributes": n.attributes,
                    "http": {"publish_address": format!("{}:{}", n.publish_address, n.http_port)},
                    "settings": {"path": {"data": n.path_data}},
                }),
            );
        }
        Response::json(
            200,
            &json!({
                "_nodes": {"total": ids.len(), "successful": ids.len(), "failed": 0},
                "cluster_name": cluster_name,
                "nodes": nodes,
            }),
        )
    }

    fn cat_nodes(&self, ci: usize, req: &Request) -> Response {
        let c = &self.clusters[ci];
        let mut rows = vec![];
        for id in &c.members {
            let n = &self.nodes[id].info;
            rows.push(BTreeMap::from([
                ("ip", json!(n.publish_address)),
                ("heap.percent", json!("10")),
                ("ram.percent", json!("50")),
                ("cpu", json!("1")),
                ("load_1m", json!("0.00")),
                ("load_5m", json!("0.00")),
                ("load_15m", json!("0.00")),
                ("node.role", json!(role_letters(&n.roles))),
                ("master", json!(if c.master.as_ref() == Some(id) { "*" } else { "-" })),
                ("name", json!(n.node_name)),
                ("id", json!(id)),
                ("port", json!(n.transport_port.to_string())),
                ("http_address", json!(format!("{}:{}", n.publish_address, n.http_port))),
                ("version", json!(VERSION)),
            ]));
        }
        rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        cat(
            req,
            &[
                "ip",
                "heap.percent",
                "ram.percent",
                "cpu",
                "load_1m",
                "load_5m",
                "load_15m",
                "node.role",
                "master",
                "name",
            ],
            rows,
        )
    }

    fn cat_shards(&self, ci: usize, req: &Request) -> Response {
        let c = &self.clusters[ci];
        let wanted = req
            .path
            .trim_end_matches('/')
            .split('/')
            .nth(3)
            .map(|s| s.split(',').collect::<BTreeSet<_>>());
        let info = |id: &str| self.nodes.get(id).map(|n| &n.info);
        let mut rows = vec![];
        for (name, index) in &c.indices {
            if wanted.as_ref().is_some_and(|w| !w.contains(name.as_str())) {
                continue;
            }
            for (n, shard) in index.shards.iter().enumerate() {
                let own: Vec<_> = shard
                    .copies
                    .iter()
                    .filter(|cp| cp.relocation_source.is_none())
                    .collect();
                let mut shard_rows = vec![];
                for cp in &own {
                    let node = info(&cp.node);
                    let state = match (&cp.state, &cp.relocating_to) {
                        (CopyState::Started, Some(_)) => "RELOCATING",
                        (CopyState::Started, None) => "STARTED",
                        _ => "INITIALIZING",
                    };
                    // Elasticsearch shows a relocation as "<source> -> <target ip> <target id> <target name>".
                    let node_col = match (&cp.relocating_to, node) {
                        (Some(t), Some(src)) => match info(t) {
                            Some(tn) => format!(
                                "{} -> {} {} {}",
                                src.node_name, tn.publish_address, tn.node_id, tn.node_name
                            ),
                            None => src.node_name.clone(),
                        },
                        (_, Some(src)) => src.node_name.clone(),
                        (_, None) => cp.node.clone(),
                    };
                    shard_rows.push(BTreeMap::from([
                        ("index", json!(name)),
                        ("shard", json!(n.to_string())),
                        ("prirep", json!(if cp.primary { "p" } else { "r" })),
                        ("state", json!(state)),
                        ("docs", json!("0")),
                        ("store", json!("225b")),
                        ("ip", json!(node.map(|x| x.publish_address.clone()))),
                        ("id", json!(cp.node)),
                        ("node", json!(node_col)),
                    ]));
                }
                let missing = (index.replicas as usize + 1).saturating_sub(own.len());
                let primary_missing = !own.iter().any(|cp| cp.primary);
                for i in 0..missing {
                    shard_rows.push(BTreeMap::from([
                        ("index", json!(name)),
                        ("shard", json!(n.to_string())),
                        ("prirep", json!(if primary_missing && i == 0 { "p" } else { "r" })),
                        ("state", json!("UNASSIGNED")),
                        ("docs", Value::Null),
                        ("store", Value::Null),
                        ("ip", Value::Null),
                        ("id", Value::Null),
                        ("node", Value::Null),
                    ]));
                }
                shard_rows.sort_by_key(|r| r["prirep"].as_str() != Some("p"));
                rows.extend(shard_rows);
            }
        }
        cat(
            req,
            &["index", "shard", "prirep", "state", "docs", "store", "ip", "node"],
            rows,
        )
    }

    fn cat_indices(&self, ci: usize, req: &Request) -> Response {
        let c = &self.clusters[ci];
        // Hidden indices are listed only when asked for, as Elasticsearch does.
        let with_hidden = req
            .query
            .get("expand_wildcards")
            .is_some_and(|w| w.split(',').any(|x| x == "all" || x == "hidden"));
        let mut rows = vec![];
        for (name, index) in c.indices.iter().filter(|(_, i)| with_hidden || !i.hidden) {
            let mut h = Health {
                status: Status::Green,
                number_of_nodes: 0,
                number_of_data_nodes: 0,
                active_primary_shards: 0,
                active_shards: 0,
                relocating_shards: 0,
                initializing_shards: 0,
                unassigned_shards: 0,
            };
            accumulate(&mut h, index);
            rows.push(BTreeMap::from([
                ("health", json!(h.status.as_str())),
                ("status", json!("open")),
                ("index", json!(name)),
                ("uuid", json!(index.uuid)),
                ("pri", json!(index.shards.len().to_string())),
                ("rep", json!(index.replicas.to_string())),
                ("docs.count", json!("0")),
                ("docs.deleted", json!("0")),
                ("store.size", json!("225b")),
                ("pri.store.size", json!("225b")),
            ]));
        }
        cat(
            req,
            &[
                "health",
                "status",
                "index",
                "uuid",
                "pri",
                "rep",
                "docs.count",
                "docs.deleted",
                "store.size",
                "pri.store.size",
            ],
            rows,
        )
    }

    fn add_exclusions(&mut self, ci: usize, req: &Request, from: Option<&str>, now: u64) -> Result<Reply, Response> {
        let names = req.query.get("node_names").filter(|s| !s.is_empty());
        let ids = req.query.get("node_ids").filter(|s| !s.is_empty());
        let wanted: Vec<(Option<String>, Option<String>)> =
            match (names, ids) {
                (Some(n), None) => n.split(',').map(|x| (Some(x.trim().to_string()), None)).collect(),
                (None, Some(i)) => i.split(',').map(|x| (None, Some(x.trim().to_string()))).collect(),
                _ => return Err(error(
                    400,
                    "action_request_validation_exception",
                    "Validation Failed: 1: Please set node identifiers correctly. One and only one of [node_name], \
                     [node_names] and [node_ids] has to be set;",
                )),
            };
        let timeout = timeout_of(req)?;
        let c = &self.clusters[ci];
        let mut resolved = vec![];
        for (name, id) in wanted {
            let found = c.members.iter().map(|m| &self.nodes[m].info).find(|n| {
                name.as_ref().is_some_and(|x| &n.node_name == x) || id.as_ref().is_some_and(|x| &n.node_id == x)
            });
            resolved.push(match found {
                Some(n) => Exclusion {
                    node_id: n.node_id.clone(),
                    node_name: n.node_name.clone(),
                },
                None => Exclusion {
                    node_id: id.unwrap_or_else(|| "_absent_".into()),
                    node_name: name.unwrap_or_else(|| "_absent_".into()),
                },
            });
        }
        let fresh: Vec<&Exclusion> = resolved.iter().filter(|e| !c.exclusions.contains(e)).collect();
        let max = c
            .setting("cluster.max_voting_config_exclusions")
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(MAX_EXCLUSIONS);
        if c.exclusions.len() + fresh.len() > max {
            return Err(error(
                400,
                "illegal_argument_exception",
                &format!(
                    "add voting config exclusions request for {:?} would add [{}] exclusions to the existing [{}] which \
                     would exceed the maximum of [{max}] set by [cluster.max_voting_config_exclusions]",
                    resolved.iter().map(|e| &e.node_name).collect::<Vec<_>>(),
                    fresh.len(),
                    c.exclusions.len()
                ),
            ));
        }
        let fresh: Vec<Exclusion> = fresh.into_iter().cloned().collect();
        let uuid = c.uuid.clone();
        self.clusters[ci].exclusions.extend(fresh);
        self.resettle(now);
        let pending = Pending {
            deadline: now + timeout,
            from: from.map(String::from),
            kind: PendingKind::ExclusionsApplied {
                cluster: uuid,
                ids: resolved.into_iter().map(|e| e.node_id).collect(),
            },
        };
        Ok(self.poll(&pending, now))
    }

    fn create_index_req(&mut self, ci: usize, index: &str, req: &Request, now: u64) -> Response {
        let bad = index
            .chars()
            .any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#:".contains(c))
            || index.starts_with(['-', '+', '_'])
            || index == "."
            || index == "..";
        if bad {
            return error(400, "invalid_index_name_exception", &format!("Invalid index name [{index}], must be lowercase and not contain \\, /, *, ?, \", <, >, |, space, comma, #, :"));
        }
        if self.clusters[ci].indices.contains_key(index) {
            let uuid = &self.clusters[ci].indices[index].uuid;
            return error(
                400,
                "resource_already_exists_exception",
                &format!("index [{index}/{uuid}] already exists"),
            );
        }
        let settings = match index_settings(&req.body) {
            Ok(s) => s,
            Err(resp) => return resp,
        };
        let shards = match settings
            .get("index.number_of_shards")
            .map(|v| as_list(v).join("").parse::<u32>())
        {
            None => 1,
            Some(Ok(n)) if n >= 1 => n,
            Some(_) => {
                return error(
                    400,
                    "illegal_argument_exception",
                    "index.number_of_shards must be an integer >= 1",
                )
            }
        };
        let replicas = match replicas_of(&settings) {
            Ok(r) => r.unwrap_or(1),
            Err(resp) => return resp,
        };
        let hidden = match settings.get("index.hidden").map(|v| as_list(v).join("")) {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => {
                return error(
                    400,
                    "illegal_argument_exception",
                    &format!("Failed to parse value [{v}] as only [true] or [false] are allowed."),
                )
            }
        };
        let delay = match delayed_timeout_of(&settings) {
            Ok(d) => d,
            Err(resp) => return resp,
        };
        self.create_index(ci, index, shards, replicas, now);
        if let Some(i) = self.clusters[ci].indices.get_mut(index) {
            i.hidden = hidden;
            if let Some(d) = delay {
                i.delayed_timeout_ms = d;
            }
        }
        Response::json(
            200,
            &json!({"acknowledged": true, "shards_acknowledged": true, "index": index}),
        )
    }

    fn update_index_settings(&mut self, ci: usize, index: &str, req: &Request, now: u64) -> Response {
        let settings = match index_settings(&req.body) {
            Ok(s) => s,
            Err(resp) => return resp,
        };
        let Some(idx) = self.clusters[ci].indices.get_mut(index) else {
            return error(404, "index_not_found_exception", &format!("no such index [{index}]"));
        };
        match delayed_timeout_of(&settings) {
            Ok(Some(d)) => idx.delayed_timeout_ms = d,
            Ok(None) => {}
            Err(resp) => return resp,
        }
        match replicas_of(&settings) {
            Ok(Some(r)) => {
                idx.replicas = r;
                // Surplus replicas go first (highest node id first: deterministic).
                for shard in &mut idx.shards {
                    while shard.copies.iter().filter(|c| c.relocation_source.is_none()).count() > r as usize + 1 {
                        let victim = shard
                            .copies
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| !c.primary && c.relocation_source.is_none())
                            .max_by(|a, b| a.1.node.cmp(&b.1.node))
                            .map(|(i, _)| i);
                        match victim {
                            Some(i) => {
                                let gone = shard.copies.remove(i);
                                shard
                                    .copies
                                    .retain(|c| c.relocation_source.as_ref() != Some(&gone.node));
                            }
                            None => break,
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(resp) => return resp,
        }
        self.resettle(now);
        Response::json(200, &json!({"acknowledged": true}))
    }
}

/// Index settings from a create-index or update-settings body, flattened with `index.` keys.
fn index_settings(body: &[u8]) -> Result<BTreeMap<String, Value>, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeMap::new());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| error(400, "parse_exception", &format!("request body is not JSON: {e}")))?;
    let settings = v.get("settings").cloned().unwrap_or(v);
    let mut flat = BTreeMap::new();
    flatten("", &settings, &mut flat);
    Ok(flat
        .into_iter()
        .map(|(k, v)| {
            if k.starts_with("index.") {
                (k, v)
            } else {
                (format!("index.{k}"), v)
            }
        })
        .collect())
}

/// `index.unassigned.node_left.delayed_timeout`, if given.
fn delayed_timeout_of(settings: &BTreeMap<String, Value>) -> Result<Option<u64>, Response> {
    let key = "index.unassigned.node_left.delayed_timeout";
    match settings.get(key).map(|v| as_list(v).join("")) {
        None => Ok(None),
        Some(v) => parse_time_ms(&v).map(Some).ok_or_else(|| {
            error(
                400,
                "illegal_argument_exception",
                &format!("failed to parse setting [{key}] with value [{v}] as a time value"),
            )
        }),
    }
}

fn replicas_of(settings: &BTreeMap<String, Value>) -> Result<Option<u32>, Response> {
    match settings.get("index.number_of_replicas") {
        None => Ok(None),
        Some(v) => as_list(v).join("").parse::<u32>().map(Some).map_err(|_| {
            error(
                400,
                "illegal_argument_exception",
                "index.number_of_replicas must be an integer >= 0",
            )
        }),
    }
}
