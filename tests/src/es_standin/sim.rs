//! The stand-in driven in one process at explicit time: the [`Model`], a clock, and the node
//! "processes" that keep heartbeating. Unit tests of the model use it directly; the CLI's
//! operation tests serve it over HTTP with the clock advanced per request, so both sets of
//! tests judge esfleet against the same simulated Elasticsearch and stay deterministic.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::api::Reply;
use super::http::{split_target, Request, Response};
use super::model::{Cluster, CopyState, Event, Model, ModelConfig, NodeInfo};

/// How far one [`Sim::advance`] step moves the clock; live nodes heartbeat once per step.
pub const STEP_MS: u64 = 100;

/// A node of cluster `logs` named `name` with `roles`, zone attribute `zone` (forced
/// awareness over zones a, b, c), published on `10.0.0.<n>`.
pub fn node(name: &str, roles: &[&str], zone: &str, n: u8) -> NodeInfo {
    NodeInfo {
        cluster_name: "logs".into(),
        node_name: name.into(),
        node_id: format!("id-{name}"),
        incarnation: 1,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        attributes: BTreeMap::from([("zone".to_string(), zone.to_string())]),
        publish_address: format!("10.0.0.{n}"),
        transport_port: 9300,
        http_port: 9200,
        seeds: vec![],
        initial_master_nodes: vec![],
        awareness_attributes: vec!["zone".into()],
        forced_awareness: BTreeMap::from([("zone".to_string(), vec!["a".into(), "b".into(), "c".into()])]),
        path_data: format!("/data/{name}"),
    }
}

/// `n` master-eligible nodes `logs-m1..`, zones round-robin, seeding each other;
/// `with_bootstrap`: all of them name all of them as initial master nodes.
pub fn masters(n: usize, with_bootstrap: bool) -> Vec<NodeInfo> {
    let zones = ["a", "b", "c"];
    let names: Vec<String> = (1..=n).map(|i| format!("logs-m{i}")).collect();
    let mut out: Vec<NodeInfo> = (0..n)
        .map(|i| node(&names[i], &["master"], zones[i % 3], 1 + i as u8))
        .collect();
    let seeds: Vec<String> = out.iter().map(NodeInfo::transport_address).collect();
    for m in &mut out {
        m.seeds = seeds.clone();
        if with_bootstrap {
            m.initial_master_nodes = names.clone();
        }
    }
    out
}

/// `n` data nodes `logs-d1..`, zones round-robin, seeded with the masters `ms`.
pub fn data(n: usize, ms: &[NodeInfo]) -> Vec<NodeInfo> {
    let zones = ["a", "b", "c"];
    (0..n)
        .map(|i| {
            let mut d = node(
                &format!("logs-d{}", i + 1),
                &["data", "ingest"],
                zones[i % 3],
                11 + i as u8,
            );
            d.seeds = ms.iter().map(NodeInfo::transport_address).collect();
            d
        })
        .collect()
}

/// A request as a client sends it (`target` with its query string).
pub fn request(method: &str, target: &str, body: &str) -> Request {
    let (path, query) = split_target(target);
    Request {
        method: method.into(),
        target: target.into(),
        path,
        query,
        headers: vec![],
        body: body.as_bytes().to_vec(),
    }
}

/// A response body as JSON (`Null` when empty, a string when not JSON).
pub fn body_of(r: &Response) -> Value {
    if r.body.is_empty() {
        Value::Null
    } else {
        r.body_json()
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into()))
    }
}

/// The model, its clock, and which nodes keep heartbeating.
pub struct Sim {
    pub m: Model,
    /// Model time, milliseconds.
    pub now: u64,
    /// Nodes whose process runs (they heartbeat on every step).
    pub up: Vec<NodeInfo>,
}

impl Sim {
    pub fn new(cfg: ModelConfig) -> Sim {
        Sim {
            m: Model::new(cfg),
            now: 0,
            up: vec![],
        }
    }

    /// Starts (or restarts, with the same info) a node process: it heartbeats from now on.
    pub fn start(&mut self, n: &NodeInfo) {
        self.up.retain(|u| u.node_id != n.node_id);
        self.up.push(n.clone());
        self.m.apply(Event::Heartbeat(Box::new(n.clone())), self.now);
    }

    /// SIGKILL: heartbeats stop, the model notices after fault detection.
    pub fn kill(&mut self, name: &str) {
        self.up.retain(|u| u.node_name != name);
    }

    /// SIGTERM: leaves at once.
    pub fn stop(&mut self, name: &str) {
        let id = self
            .up
            .iter()
            .find(|u| u.node_name == name)
            .map(|u| u.node_id.clone())
            .expect("node is up");
        self.kill(name);
        self.m.apply(Event::Leave { node_id: id }, self.now);
    }

    /// Advances time in [`STEP_MS`] steps; live nodes heartbeat every step.
    pub fn advance(&mut self, ms: u64) {
        for _ in 0..ms / STEP_MS {
            self.now += STEP_MS;
            for n in self.up.clone() {
                self.m.apply(Event::Heartbeat(Box::new(n)), self.now);
            }
            self.m.apply(Event::Tick, self.now);
        }
    }

    /// One REST request at the current time, as node `from` (`None`: the first cluster's
    /// master); a waiting request is returned pending.
    pub fn req(&mut self, method: &str, target: &str, body: &str, from: Option<&str>) -> Reply {
        self.m.rest(&request(method, target, body), from, self.now)
    }

    /// Answers `req` as the first cluster's master, advancing the clock step by step while
    /// the request waits (health `wait_for_*`, voting exclusions), as a real client would
    /// see it block.
    pub fn rest(&mut self, req: &Request) -> Response {
        let mut reply = self.m.rest(req, None, self.now);
        loop {
            match reply {
                Reply::Done(r) => return r,
                Reply::Pending(p) => {
                    self.advance(STEP_MS);
                    reply = self.m.poll(&p, self.now);
                }
            }
        }
    }

    /// A request that must not wait: (status, body).
    pub fn call(&mut self, method: &str, target: &str, body: &str) -> (u16, Value) {
        match self.req(method, target, body, None) {
            Reply::Done(r) => (r.status, body_of(&r)),
            Reply::Pending(_) => panic!("{method} {target} is still pending"),
        }
    }

    pub fn health(&mut self) -> Value {
        let (status, body) = self.call("GET", "/_cluster/health", "");
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn status(&mut self) -> String {
        self.health()["status"].as_str().unwrap().to_string()
    }

    /// The first cluster (the one the history follows).
    pub fn cluster(&self) -> &Cluster {
        &self.m.clusters[0]
    }

    pub fn voting_names(&self) -> Vec<String> {
        self.cluster()
            .voting
            .iter()
            .map(|id| self.m.nodes.get(id).map_or(id.clone(), |n| n.info.node_name.clone()))
            .collect()
    }

    /// Names of the first cluster's members.
    pub fn member_names(&self) -> BTreeSet<String> {
        self.cluster()
            .members
            .iter()
            .filter_map(|id| self.m.nodes.get(id).map(|n| n.info.node_name.clone()))
            .collect()
    }

    /// (index, shard) → [(node name, zone, primary, state)]
    pub fn copies(&self) -> Vec<Vec<(String, String, bool, String)>> {
        let c = self.cluster();
        c.indices
            .values()
            .flat_map(|i| &i.shards)
            .map(|s| {
                s.copies
                    .iter()
                    .map(|cp| {
                        let info = &self.m.nodes[&cp.node].info;
                        let state = match (&cp.state, &cp.relocating_to, &cp.relocation_source) {
                            (_, _, Some(_)) => "TARGET",
                            (CopyState::Started, Some(_), _) => "RELOCATING",
                            (CopyState::Started, None, _) => "STARTED",
                            _ => "INITIALIZING",
                        };
                        (
                            info.node_name.clone(),
                            info.attributes["zone"].clone(),
                            cp.primary,
                            state.to_string(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    /// Every health status the first cluster has had.
    pub fn statuses_seen(&self) -> BTreeSet<String> {
        self.m.history.iter().map(|h| h.status.clone()).collect()
    }
}
