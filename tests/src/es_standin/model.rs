//! The stand-in's whole simulated cluster as one pure state machine: nodes report in
//! ([`Event::Heartbeat`]), leave or go silent, and [`Model::apply`] advances discovery,
//! bootstrapping, master election, voting reconfiguration and shard allocation at an
//! explicit time `now` (milliseconds). No I/O and no clock, so unit tests are exact.
//!
//! The rules approximate Elasticsearch 8 closely enough to make esfleet's operations
//! observable (yellow/red, relocation, quorum), not to reproduce Elasticsearch.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type NodeId = String;
/// `(index name, shard number)`.
pub type ShardKey = (String, u32);

/// Placeholder voter ids for `initial_master_nodes` names not yet discovered at bootstrap,
/// as Elasticsearch writes them.
const PLACEHOLDER: &str = "{bootstrap-placeholder}-";
/// `cluster.routing.allocation.node_concurrent_incoming_recoveries`' default.
const MAX_INCOMING_RECOVERIES: usize = 2;
/// `index.unassigned.node_left.delayed_timeout`'s default.
pub const DEFAULT_DELAYED_TIMEOUT_MS: u64 = 60_000;

/// What a node tells the model about itself every heartbeat (from its `elasticsearch.yml`,
/// its seed file and its data directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub cluster_name: String,
    pub node_name: String,
    pub node_id: NodeId,
    /// Changes on every process start, so a restart within the fault-detection window is
    /// still seen as "left and joined again" (Elasticsearch's ephemeral id).
    #[serde(default)]
    pub incarnation: u64,
    pub roles: Vec<String>,
    /// `node.attr.*` without the prefix.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub publish_address: String,
    pub transport_port: u16,
    pub http_port: u16,
    /// `host:port` entries (seed file plus `discovery.seed_hosts`).
    #[serde(default)]
    pub seeds: Vec<String>,
    #[serde(default)]
    pub initial_master_nodes: Vec<String>,
    #[serde(default)]
    pub awareness_attributes: Vec<String>,
    /// attribute → forced values.
    #[serde(default)]
    pub forced_awareness: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub path_data: String,
}

impl NodeInfo {
    pub fn master_eligible(&self) -> bool {
        self.roles.iter().any(|r| r == "master")
    }
    pub fn data(&self) -> bool {
        self.roles.iter().any(|r| r == "data" || r.starts_with("data_"))
    }
    pub fn transport_address(&self) -> String {
        format!("{}:{}", self.publish_address, self.transport_port)
    }
}

/// Timing knobs of the simulation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ModelConfig {
    /// How long a peer recovery takes; a copy recovering from its own data takes a tenth.
    pub recovery_ms: u64,
    /// A node silent for this long is dropped (Elasticsearch's fault detection).
    pub fault_detect_ms: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            recovery_ms: 1000,
            fault_detect_ms: 1500,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    Heartbeat(Box<NodeInfo>),
    /// Graceful shutdown (SIGTERM).
    Leave {
        node_id: NodeId,
    },
    /// Something a node process found wrong (e.g. another node's data directory).
    Violation {
        message: String,
    },
    Tick,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub info: NodeInfo,
    pub alive: bool,
    pub last_seen: u64,
    /// uuid of the cluster it has joined.
    pub cluster: Option<String>,
}

/// What survives a node restart in its data directory, keyed by node id (a fresh data
/// directory means a fresh node id).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Disk {
    pub cluster_uuid: Option<String>,
    pub copies: BTreeSet<ShardKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exclusion {
    pub node_id: String,
    pub node_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CopyState {
    Initializing { done_at: u64 },
    Started,
}

#[derive(Debug, Clone, Serialize)]
pub struct Copy {
    pub node: NodeId,
    pub primary: bool,
    pub state: CopyState,
    /// A started copy being moved: the target's node.
    pub relocating_to: Option<NodeId>,
    /// A relocation target: the source's node (the target is not counted as its own copy).
    pub relocation_source: Option<NodeId>,
    /// A new index's first, empty primary (initializing it is yellow, not red).
    pub fresh: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Shard {
    pub copies: Vec<Copy>,
    pub ever_allocated: bool,
    /// Delayed allocation: `(node id, until)` for a copy lost when that node left. Until
    /// then the copy is rebuilt only on that node (it may come back with its data), not
    /// elsewhere (`index.unassigned.node_left.delayed_timeout`).
    pub delayed: Vec<(NodeId, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Index {
    pub uuid: String,
    pub replicas: u32,
    /// `index.hidden`: left out of `_cat/indices` unless `expand_wildcards` asks for it.
    pub hidden: bool,
    /// `index.unassigned.node_left.delayed_timeout` (Elasticsearch's default: 1 minute).
    pub delayed_timeout_ms: u64,
    pub shards: Vec<Shard>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub uuid: String,
    pub name: String,
    pub term: u64,
    pub voting: BTreeSet<NodeId>,
    pub members: BTreeSet<NodeId>,
    pub master: Option<NodeId>,
    pub exclusions: Vec<Exclusion>,
    pub persistent: BTreeMap<String, Value>,
    pub transient: BTreeMap<String, Value>,
    pub indices: BTreeMap<String, Index>,
}

impl Cluster {
    pub fn setting(&self, key: &str) -> Option<&Value> {
        self.transient.get(key).or_else(|| self.persistent.get(key))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Red,
    Yellow,
    Green,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Red => "red",
            Status::Yellow => "yellow",
            Status::Green => "green",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "red" => Some(Status::Red),
            "yellow" => Some(Status::Yellow),
            "green" => Some(Status::Green),
            _ => None,
        }
    }
}

/// `_cluster/health`'s numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub status: Status,
    pub number_of_nodes: usize,
    pub number_of_data_nodes: usize,
    pub active_primary_shards: usize,
    pub active_shards: usize,
    pub relocating_shards: usize,
    pub initializing_shards: usize,
    pub unassigned_shards: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub t_ms: u64,
    /// green/yellow/red, or `no_master` while the first cluster has no elected master.
    pub status: String,
    pub nodes: usize,
    pub data_nodes: usize,
    /// Names of nodes that were in the cluster and are not now (see [`Model::down_names`]).
    pub down: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub t_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enable {
    All,
    Primaries,
    NewPrimaries,
    None,
}

impl Enable {
    pub fn parse(s: &str) -> Option<Enable> {
        match s {
            "all" => Some(Enable::All),
            "primaries" => Some(Enable::Primaries),
            "new_primaries" => Some(Enable::NewPrimaries),
            "none" => Some(Enable::None),
            _ => None,
        }
    }
}

/// The whole simulated world. Everything is public so `/_standin/state` can dump it and
/// tests can inspect it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Model {
    #[serde(skip)]
    pub cfg: ModelConfig,
    pub nodes: BTreeMap<NodeId, Node>,
    pub disks: BTreeMap<NodeId, Disk>,
    /// In creation order; the first is "the" cluster for history.
    pub clusters: Vec<Cluster>,
    pub violations: Vec<Violation>,
    pub history: Vec<HistoryEntry>,
    /// Names that have been members of the first cluster → whether a data node.
    pub known: BTreeMap<String, bool>,
    pub max_nodes_down_at_once: usize,
    pub max_data_nodes_down_at_once: usize,
    next_uuid: u64,
}

/// Comma-separated string or JSON array → list of strings.
pub fn as_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().flat_map(as_list).collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Value::Null => vec![],
        other => vec![other.to_string()],
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((pre, rest)) => {
            if !s.starts_with(pre) {
                return false;
            }
            let s = &s[pre.len()..];
            if rest.is_empty() {
                return true;
            }
            (0..=s.len())
                .filter(|&i| s.is_char_boundary(i))
                .any(|i| glob(rest, &s[i..]))
        }
    }
}

impl Model {
    pub fn new(cfg: ModelConfig) -> Model {
        Model {
            cfg,
            ..Default::default()
        }
    }

    fn uuid(&mut self, kind: &str) -> String {
        self.next_uuid += 1;
        format!("standin-{kind}-{:04}", self.next_uuid)
    }

    pub fn apply(&mut self, event: Event, now: u64) {
        match event {
            Event::Heartbeat(info) => {
                let info = *info;
                let id = info.node_id.clone();
                let restarted = self
                    .nodes
                    .get(&id)
                    .is_some_and(|n| n.alive && n.info.incarnation != info.incarnation);
                if restarted {
                    self.node_gone(&id, false, now);
                }
                let node = self.nodes.entry(id.clone()).or_insert_with(|| Node {
                    info: info.clone(),
                    alive: true,
                    last_seen: now,
                    cluster: None,
                });
                if !node.alive {
                    node.alive = true;
                    node.cluster = None;
                }
                node.info = info;
                node.last_seen = now;
                self.disks.entry(id).or_default();
            }
            Event::Leave { node_id } => {
                if self.nodes.get(&node_id).is_some_and(|n| n.alive) {
                    self.node_gone(&node_id, true, now);
                }
            }
            Event::Violation { message } => self.violations.push(Violation { t_ms: now, message }),
            Event::Tick => {}
        }
        self.settle(now);
    }

    /// A node stopped (gracefully or not): it leaves its cluster; its disk stays.
    fn node_gone(&mut self, id: &str, graceful: bool, now: u64) {
        let Some(node) = self.nodes.get_mut(id) else { return };
        node.alive = false;
        let cluster = node.cluster.take();
        let name = node.info.node_name.clone();
        let first = self.clusters.first().map(|c| c.uuid.clone());
        for c in &mut self.clusters {
            if c.members.remove(id) && c.master.as_deref() == Some(id) {
                c.master = None;
            }
        }
        // A node that leaves gracefully holding nothing the cluster needs (no shard copies,
        // not a voter) was decommissioned, not "down": it stops counting.
        if graceful && cluster.is_some() && cluster == first {
            let c = &self.clusters[0];
            let holds = c
                .indices
                .values()
                .flat_map(|i| &i.shards)
                .flat_map(|s| &s.copies)
                .any(|cp| cp.node == id);
            let name_still_up = c.members.iter().any(|m| self.nodes[m].info.node_name == name);
            if !holds && !c.voting.contains(id) && !name_still_up {
                self.known.remove(&name);
            }
        }
        // Its copies go now, not at the next allocation: a node that restarts within the
        // fault-detection window must not keep them (Elasticsearch fails them as well).
        // Those that leave a started copy behind are rebuilt elsewhere only after the
        // index's delay, in case the node comes back with its data.
        if let Some(c) = self.clusters.iter_mut().find(|c| Some(&c.uuid) == cluster.as_ref()) {
            for index in c.indices.values_mut() {
                let until = now + index.delayed_timeout_ms;
                for shard in &mut index.shards {
                    let held = shard
                        .copies
                        .iter()
                        .any(|cp| cp.node == id && cp.relocation_source.is_none());
                    let others = shard
                        .copies
                        .iter()
                        .any(|cp| cp.node != id && cp.state == CopyState::Started);
                    if held && others && index.delayed_timeout_ms > 0 {
                        shard.delayed.retain(|(n, _)| n != id);
                        shard.delayed.push((id.to_string(), until));
                    }
                }
            }
            drop_copies(c, &|n| n == id);
        }
    }

    fn seed_reaches(&self, from: &NodeInfo, cluster: &Cluster) -> bool {
        cluster.members.iter().any(|m| {
            let n = &self.nodes[m].info;
            n.master_eligible() && from.seeds.contains(&n.transport_address())
        })
    }

    fn join(&mut self, id: &str, ci: usize) {
        let uuid = self.clusters[ci].uuid.clone();
        self.clusters[ci].members.insert(id.to_string());
        self.nodes.get_mut(id).expect("joining node exists").cluster = Some(uuid.clone());
        self.disks.entry(id.to_string()).or_default().cluster_uuid = Some(uuid);
    }

    /// Discovery: rejoin, join via seeds, bootstrap. Returns whether anything changed.
    fn discover(&mut self, now: u64) -> bool {
        let mut changed = false;
        let loose: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.alive && n.cluster.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &loose {
            let info = self.nodes[id].info.clone();
            let persisted = self.disks.get(id).and_then(|d| d.cluster_uuid.clone());
            let target = match &persisted {
                // A node that has been in a cluster only ever goes back to that one; a voter
                // is found by its peers from the cluster state even without a master.
                Some(uuid) => self.clusters.iter().position(|c| &c.uuid == uuid).filter(|&ci| {
                    let c = &self.clusters[ci];
                    (info.master_eligible() && c.voting.contains(id))
                        || (c.master.is_some() && self.seed_reaches(&info, c))
                }),
                None => self
                    .clusters
                    .iter()
                    .position(|c| c.name == info.cluster_name && c.master.is_some() && self.seed_reaches(&info, c)),
            };
            if let Some(ci) = target {
                self.join(id, ci);
                changed = true;
            }
        }
        // Bootstrapping: a master-eligible node with initial_master_nodes, no cluster state
        // and no reachable cluster forms one with the majority of its bootstrap set that it
        // can discover through seeds.
        let loose: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.alive && n.cluster.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &loose {
            if self.nodes[id].cluster.is_some() {
                continue;
            }
            let info = self.nodes[id].info.clone();
            let eligible = |m: &Node, disks: &BTreeMap<NodeId, Disk>| {
                m.alive
                    && m.cluster.is_none()
                    && m.info.master_eligible()
                    && !m.info.initial_master_nodes.is_empty()
                    && m.info.cluster_name == info.cluster_name
                    && disks.get(&m.info.node_id).is_none_or(|d| d.cluster_uuid.is_none())
            };
            if !eligible(&self.nodes[id], &self.disks) {
                continue;
            }
            let reachable_cluster = self
                .clusters
                .iter()
                .any(|c| c.name == info.cluster_name && self.seed_reaches(&info, c));
            if reachable_cluster {
                continue;
            }
            // peers discoverable through seeds (either direction), transitively
            let pool: Vec<&Node> = self
                .nodes
                .values()
                .filter(|m| eligible(m, &self.disks) && info.initial_master_nodes.contains(&m.info.node_name))
                .collect();
            let mut found: Vec<&Node> = pool.iter().copied().filter(|m| &m.info.node_id == id).collect();
            if found.is_empty() {
                continue; // it does not list itself: it only joins others' bootstrap
            }
            loop {
                let before = found.len();
                for m in &pool {
                    if found.iter().any(|f| f.info.node_id == m.info.node_id) {
                        continue;
                    }
                    let linked = found.iter().any(|f| {
                        f.info.seeds.contains(&m.info.transport_address())
                            || m.info.seeds.contains(&f.info.transport_address())
                    });
                    if linked {
                        found.push(m);
                    }
                }
                if found.len() == before {
                    break;
                }
            }
            let wanted: BTreeSet<&String> = info.initial_master_nodes.iter().collect();
            if found.len() * 2 <= wanted.len() {
                continue;
            }
            let ids: Vec<NodeId> = found.iter().map(|m| m.info.node_id.clone()).collect();
            let found_names: BTreeSet<&String> = found.iter().map(|m| &m.info.node_name).collect();
            let mut voting: BTreeSet<NodeId> = ids.iter().cloned().collect();
            for name in wanted.iter().filter(|n| !found_names.contains(*n)) {
                voting.insert(format!("{PLACEHOLDER}{name}"));
            }
            let mut names: Vec<String> = found_names.iter().map(|s| s.to_string()).collect();
            names.sort();
            if let Some(existing) = self.clusters.iter().find(|c| c.name == info.cluster_name) {
                let message = format!(
                    "second cluster bootstrapped: nodes {names:?} formed a new cluster named {:?} although cluster {} \
                     already exists (they still had cluster.initial_master_nodes and could not discover it)",
                    info.cluster_name, existing.uuid
                );
                self.violations.push(Violation { t_ms: now, message });
            }
            let uuid = self.uuid("cluster");
            self.clusters.push(Cluster {
                uuid,
                name: info.cluster_name.clone(),
                term: 0,
                voting,
                members: BTreeSet::new(),
                master: None,
                exclusions: vec![],
                persistent: BTreeMap::new(),
                transient: BTreeMap::new(),
                indices: BTreeMap::new(),
            });
            let ci = self.clusters.len() - 1;
            for m in ids {
                self.join(&m, ci);
            }
            changed = true;
        }
        changed
    }

    /// Elects (or keeps) a master where a majority of the voting configuration has joined,
    /// then reconfigures the voting configuration as Elasticsearch's Reconfigurator does.
    fn elect_and_reconfigure(&mut self, ci: usize) -> bool {
        let nodes = &self.nodes;
        let c = &mut self.clusters[ci];
        let before = (c.master.clone(), c.voting.clone());
        let live_voters: Vec<&NodeId> = c.voting.iter().filter(|v| c.members.contains(*v)).collect();
        if live_voters.len() * 2 > c.voting.len() {
            let keep = c
                .master
                .as_ref()
                .is_some_and(|m| c.members.contains(m) && c.voting.contains(m));
            if !keep {
                c.master = live_voters.first().map(|s| s.to_string());
                c.term += 1;
            }
        } else {
            c.master = None;
        }
        if let Some(master) = c.master.clone() {
            let retired: BTreeSet<&str> = c.exclusions.iter().map(|e| e.node_id.as_str()).collect();
            let eligible =
                |id: &NodeId| nodes.get(id).is_some_and(|n| n.info.master_eligible()) && !retired.contains(id.as_str());
            let mut live_in: Vec<NodeId> = c
                .voting
                .iter()
                .filter(|v| c.members.contains(*v) && eligible(v))
                .cloned()
                .collect();
            live_in.sort_by_key(|v| *v != master);
            let live_out: Vec<NodeId> = c
                .members
                .iter()
                .filter(|m| !c.voting.contains(*m) && eligible(m))
                .cloned()
                .collect();
            let dead_in: Vec<NodeId> = c
                .voting
                .iter()
                .filter(|v| !c.members.contains(*v) && !retired.contains(v.as_str()))
                .cloned()
                .collect();
            let live = live_in.len() + live_out.len();
            // Elasticsearch's Reconfigurator keeps at least 3 voters only while at least 3
            // members of the current configuration are not excluded: excluding one of
            // three masters shrinks the configuration to the master alone.
            let not_retired_in_config = c.voting.iter().filter(|v| !retired.contains(v.as_str())).count();
            let min_size = if not_retired_in_config < 3 { 1 } else { 3 };
            let target = (if live.is_multiple_of(2) {
                live.saturating_sub(1)
            } else {
                live
            })
            .max(min_size);
            let new: BTreeSet<NodeId> = live_in
                .into_iter()
                .chain(live_out)
                .chain(dead_in)
                .take(target)
                .collect();
            // The master only commits a configuration in which it still has a quorum.
            let live_new = new.iter().filter(|v| c.members.contains(*v)).count();
            if !new.is_empty() && new != c.voting && live_new * 2 > new.len() {
                c.voting = new;
                if !c.voting.contains(&master) {
                    c.master = None; // abdicates; the next round elects a voter
                }
            }
        }
        before != (c.master.clone(), c.voting.clone())
    }

    fn settle(&mut self, now: u64) {
        let silent: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.alive && now.saturating_sub(n.last_seen) > self.cfg.fault_detect_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            self.node_gone(&id, false, now);
        }
        for _ in 0..10 {
            let mut changed = self.discover(now);
            for ci in 0..self.clusters.len() {
                changed |= self.elect_and_reconfigure(ci);
            }
            if !changed {
                break;
            }
        }
        for ci in 0..self.clusters.len() {
            if self.clusters[ci].master.is_some() {
                allocate(&mut self.clusters[ci], &self.nodes, &mut self.disks, self.cfg, now);
            }
        }
        self.record(now);
    }

    /// Names that were members of the first cluster and have no live member now.
    pub fn down_names(&self) -> Vec<String> {
        let Some(c) = self.clusters.first() else { return vec![] };
        let up: BTreeSet<&String> = c.members.iter().map(|m| &self.nodes[m].info.node_name).collect();
        self.known.keys().filter(|n| !up.contains(n)).cloned().collect()
    }

    fn record(&mut self, now: u64) {
        let Some(c) = self.clusters.first() else { return };
        for m in &c.members {
            let info = &self.nodes[m].info;
            self.known.insert(info.node_name.clone(), info.data());
        }
        let down = self.down_names();
        let data_down = down.iter().filter(|n| self.known[*n]).count();
        self.max_nodes_down_at_once = self.max_nodes_down_at_once.max(down.len());
        self.max_data_nodes_down_at_once = self.max_data_nodes_down_at_once.max(data_down);
        let h = self.health_of(0);
        let entry = HistoryEntry {
            t_ms: now,
            status: if c.master.is_some() {
                h.status.as_str().to_string()
            } else {
                "no_master".to_string()
            },
            nodes: h.number_of_nodes,
            data_nodes: h.number_of_data_nodes,
            down,
        };
        let same = self.history.last().is_some_and(|l| {
            (&l.status, l.nodes, l.data_nodes, &l.down) == (&entry.status, entry.nodes, entry.data_nodes, &entry.down)
        });
        if !same {
            self.history.push(entry);
        }
    }

    pub fn health_of(&self, ci: usize) -> Health {
        let c = &self.clusters[ci];
        let mut h = Health {
            status: Status::Green,
            number_of_nodes: c.members.len(),
            number_of_data_nodes: c.members.iter().filter(|m| self.nodes[*m].info.data()).count(),
            active_primary_shards: 0,
            active_shards: 0,
            relocating_shards: 0,
            initializing_shards: 0,
            unassigned_shards: 0,
        };
        for index in c.indices.values() {
            accumulate(&mut h, index);
        }
        h
    }
    /// The cluster index a request is answered from: the node's cluster if it has an elected
    /// master (`from` = node id), or the first cluster with a master for the model itself.
    pub fn view(&self, from: Option<&str>) -> Option<usize> {
        match from {
            Some(id) => {
                let node = self.nodes.get(id).filter(|n| n.alive)?;
                let uuid = node.cluster.as_ref()?;
                self.clusters.iter().position(|c| &c.uuid == uuid && c.master.is_some())
            }
            None => self.clusters.iter().position(|c| c.master.is_some()),
        }
    }

    pub fn create_index(&mut self, ci: usize, name: &str, shards: u32, replicas: u32, now: u64) {
        let uuid = self.uuid("index");
        let index = Index {
            uuid,
            replicas,
            hidden: false,
            delayed_timeout_ms: DEFAULT_DELAYED_TIMEOUT_MS,
            shards: (0..shards).map(|_| Shard::default()).collect(),
        };
        self.clusters[ci].indices.insert(name.to_string(), index);
        self.settle(now);
    }

    pub fn new_uuid(&mut self, kind: &str) -> String {
        self.uuid(kind)
    }

    pub fn resettle(&mut self, now: u64) {
        self.settle(now);
    }
}

/// Adds one index's shards to `h` (its status only ever gets worse).
pub fn accumulate(h: &mut Health, index: &Index) {
    for shard in &index.shards {
        let own: Vec<&Copy> = shard.copies.iter().filter(|c| c.relocation_source.is_none()).collect();
        match own.iter().find(|c| c.primary) {
            None => h.status = Status::Red,
            Some(p) if p.state != CopyState::Started && !p.fresh => h.status = Status::Red,
            _ => {}
        }
        for cp in &own {
            if cp.state == CopyState::Started {
                h.active_shards += 1;
                h.active_primary_shards += usize::from(cp.primary);
                h.relocating_shards += usize::from(cp.relocating_to.is_some());
            } else {
                h.initializing_shards += 1;
            }
        }
        h.unassigned_shards += (index.replicas as usize + 1).saturating_sub(own.len());
    }
    if h.status != Status::Red && (h.unassigned_shards > 0 || h.initializing_shards > 0) {
        h.status = Status::Yellow;
    }
}

/// The allocation deciders' inputs, read once per pass.
struct Deciders<'a> {
    data_nodes: Vec<&'a NodeInfo>,
    disks: &'a BTreeMap<NodeId, Disk>,
    enable: Enable,
    /// attribute → value patterns
    exclude: Vec<(String, Vec<String>)>,
    /// attribute → all values (forced ∪ present)
    awareness: Vec<(String, BTreeSet<String>)>,
}

impl Deciders<'_> {
    fn excluded(&self, n: &NodeInfo) -> bool {
        self.exclude.iter().any(|(attr, pats)| {
            let value = match attr.as_str() {
                "_name" => Some(n.node_name.as_str()),
                "_id" => Some(n.node_id.as_str()),
                "_ip" | "_host" | "_publish_ip" | "_host_ip" => Some(n.publish_address.as_str()),
                other => n.attributes.get(other).map(String::as_str),
            };
            value.is_some_and(|v| pats.iter().any(|p| glob(p, v)))
        })
    }
}

fn deciders<'a>(c: &Cluster, nodes: &'a BTreeMap<NodeId, Node>, disks: &'a BTreeMap<NodeId, Disk>) -> Deciders<'a> {
    let mut data_nodes: Vec<&NodeInfo> = c.members.iter().map(|m| &nodes[m].info).filter(|n| n.data()).collect();
    data_nodes.sort_by(|a, b| (&a.node_name, &a.node_id).cmp(&(&b.node_name, &b.node_id)));
    let enable = c
        .setting("cluster.routing.allocation.enable")
        .and_then(Value::as_str)
        .and_then(Enable::parse)
        .unwrap_or(Enable::All);
    let mut keys: BTreeSet<&String> = c.persistent.keys().collect();
    keys.extend(c.transient.keys());
    let exclude = keys
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix("cluster.routing.allocation.exclude.")
                .map(|attr| (k, attr))
        })
        .filter_map(|(k, attr)| {
            let pats = as_list(c.setting(k)?);
            (!pats.is_empty()).then(|| (attr.to_string(), pats))
        })
        .collect();
    let master = c.master.as_ref().and_then(|m| nodes.get(m)).map(|n| &n.info);
    let attrs = match c.setting("cluster.routing.allocation.awareness.attributes") {
        Some(v) => as_list(v),
        None => master.map(|m| m.awareness_attributes.clone()).unwrap_or_default(),
    };
    let awareness = attrs
        .into_iter()
        .map(|attr| {
            let key = format!("cluster.routing.allocation.awareness.force.{attr}.values");
            let forced = match c.setting(&key) {
                Some(v) => as_list(v),
                None => master
                    .and_then(|m| m.forced_awareness.get(&attr).cloned())
                    .unwrap_or_default(),
            };
            let mut values: BTreeSet<String> = forced.into_iter().collect();
            values.extend(data_nodes.iter().filter_map(|n| n.attributes.get(&attr).cloned()));
            (attr, values)
        })
        .collect();
    Deciders {
        data_nodes,
        disks,
        enable,
        exclude,
        awareness,
    }
}

/// Where a copy of `shard` may go: a data node without a copy, not excluded, within the
/// awareness limit, with a free incoming-recovery slot. Prefers a node holding the shard's
/// data, then the least loaded, then by name. `moving` is the node a relocating copy leaves.
fn pick(
    d: &Deciders,
    shard: &Shard,
    key: &ShardKey,
    total_copies: u32,
    moving: Option<&str>,
    load: &BTreeMap<NodeId, (usize, usize)>,
    throttle: bool,
) -> Option<NodeId> {
    let disks = d.disks;
    let on = |n: &NodeInfo| shard.copies.iter().any(|c| c.node == n.node_id);
    let aware_ok = |n: &NodeInfo| {
        d.awareness.iter().all(|(attr, values)| {
            let Some(v) = n.attributes.get(attr) else { return false };
            let limit = (total_copies as usize).div_ceil(values.len().max(1));
            let in_zone = shard
                .copies
                .iter()
                .filter(|c| c.relocating_to.is_none() && Some(c.node.as_str()) != moving)
                .filter(|c| {
                    d.data_nodes
                        .iter()
                        .any(|m| m.node_id == c.node && m.attributes.get(attr) == Some(v))
                })
                .count();
            in_zone < limit
        })
    };
    let has_data = |n: &NodeInfo| disks.get(&n.node_id).is_some_and(|dk| dk.copies.contains(key));
    d.data_nodes
        .iter()
        .filter(|n| !on(n) && !d.excluded(n) && aware_ok(n))
        .filter(|n| !throttle || load.get(&n.node_id).map_or(0, |l| l.1) < MAX_INCOMING_RECOVERIES)
        .min_by_key(|n| {
            (
                !has_data(n),
                load.get(&n.node_id).map_or(0, |l| l.0),
                &n.node_name,
                &n.node_id,
            )
        })
        .map(|n| n.node_id.clone())
}

/// Drops the copies on nodes for which `gone` holds; a lost primary is replaced by a
/// started replica at once, or the shard loses all its copies (red).
fn drop_copies(c: &mut Cluster, gone: &dyn Fn(&str) -> bool) {
    for index in c.indices.values_mut() {
        for shard in &mut index.shards {
            let lost_primary = shard.copies.iter().any(|cp| cp.primary && gone(&cp.node));
            shard
                .copies
                .retain(|cp| !gone(&cp.node) && !cp.relocation_source.as_deref().is_some_and(gone));
            let present: BTreeSet<NodeId> = shard.copies.iter().map(|cp| cp.node.clone()).collect();
            for cp in &mut shard.copies {
                if cp.relocating_to.as_ref().is_some_and(|t| !present.contains(t)) {
                    cp.relocating_to = None;
                }
            }
            if lost_primary {
                let promoted = shard
                    .copies
                    .iter_mut()
                    .filter(|cp| cp.state == CopyState::Started && cp.relocation_source.is_none())
                    .min_by(|a, b| a.node.cmp(&b.node));
                match promoted {
                    Some(cp) => cp.primary = true,
                    None => shard.copies.clear(),
                }
            }
        }
    }
}

fn allocate(
    c: &mut Cluster,
    nodes: &BTreeMap<NodeId, Node>,
    disks: &mut BTreeMap<NodeId, Disk>,
    cfg: ModelConfig,
    now: u64,
) {
    let members = c.members.clone();
    let gone = |n: &str| !members.contains(n);
    // 1. copies on nodes that left (usually gone already: see Model::node_gone)
    drop_copies(c, &gone);
    // 2. finished recoveries
    for (name, index) in c.indices.iter_mut() {
        for (n, shard) in index.shards.iter_mut().enumerate() {
            let key = (name.clone(), n as u32);
            let mut finished_sources = vec![];
            for cp in &mut shard.copies {
                if matches!(cp.state, CopyState::Initializing { done_at } if done_at <= now) {
                    cp.state = CopyState::Started;
                    cp.fresh = false;
                    disks.entry(cp.node.clone()).or_default().copies.insert(key.clone());
                    if let Some(src) = cp.relocation_source.take() {
                        finished_sources.push((src, cp.node.clone()));
                    }
                }
            }
            for (src, target) in finished_sources {
                let was_primary = shard.copies.iter().any(|cp| cp.node == src && cp.primary);
                shard.copies.retain(|cp| cp.node != src);
                if let Some(t) = shard.copies.iter_mut().find(|cp| cp.node == target) {
                    t.primary |= was_primary;
                }
                if let Some(d) = disks.get_mut(&src) {
                    d.copies.remove(&key);
                }
            }
        }
    }
    // 3. assign: primaries, replicas, moves off excluded nodes
    let disks: &BTreeMap<NodeId, Disk> = disks;
    let d = deciders(c, nodes, disks);
    // node → (copies held, incoming recoveries)
    let mut load: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
    for shard in c.indices.values().flat_map(|i| &i.shards) {
        for cp in &shard.copies {
            let l = load.entry(cp.node.clone()).or_default();
            l.0 += 1;
            if matches!(cp.state, CopyState::Initializing { .. }) && !cp.fresh {
                l.1 += 1;
            }
        }
    }
    let quick = cfg.recovery_ms / 10;
    for (name, index) in c.indices.iter_mut() {
        let total = index.replicas + 1;
        for (n, shard) in index.shards.iter_mut().enumerate() {
            let key = (name.clone(), n as u32);
            if !shard.copies.iter().any(|cp| cp.primary) {
                let target = if !shard.ever_allocated {
                    if d.enable == Enable::None {
                        None
                    } else {
                        pick(&d, shard, &key, total, None, &load, false)
                    }
                } else {
                    // Only a node with the shard's data can bring a lost primary back; this
                    // ignores filters and `enable`, as Elasticsearch does for local primaries.
                    d.data_nodes
                        .iter()
                        .find(|m| disks.get(&m.node_id).is_some_and(|dk| dk.copies.contains(&key)))
                        .map(|m| m.node_id.clone())
                };
                if let Some(node) = target {
                    let fresh = !shard.ever_allocated;
                    shard.ever_allocated = true;
                    load.entry(node.clone()).or_default().0 += 1;
                    shard.copies.push(Copy {
                        node,
                        primary: true,
                        state: CopyState::Initializing { done_at: now + quick },
                        relocating_to: None,
                        relocation_source: None,
                        fresh,
                    });
                }
            }
            let primary_active = shard
                .copies
                .iter()
                .any(|cp| cp.primary && cp.state == CopyState::Started);
            // Delays end when they expire or their node holds a copy again.
            let now_copies: BTreeSet<NodeId> = shard.copies.iter().map(|cp| cp.node.clone()).collect();
            shard
                .delayed
                .retain(|(n, until)| *until > now && !now_copies.contains(n));
            if d.enable == Enable::All && primary_active {
                loop {
                    let own = shard.copies.iter().filter(|cp| cp.relocation_source.is_none()).count() as u32;
                    if own >= total {
                        break;
                    }
                    // A delayed copy goes back only to its own node, once that node is back;
                    // the others wait for their delay.
                    let Some(node) = pick(&d, shard, &key, total, None, &load, true) else {
                        break;
                    };
                    let back = shard.delayed.iter().any(|(n, _)| *n == node);
                    let free = total.saturating_sub(own) as usize > shard.delayed.len();
                    if back {
                        shard.delayed.retain(|(n, _)| *n != node);
                    } else if !free {
                        break;
                    }
                    let has_data = disks.get(&node).is_some_and(|dk| dk.copies.contains(&key));
                    let l = load.entry(node.clone()).or_default();
                    l.0 += 1;
                    l.1 += 1;
                    shard.copies.push(Copy {
                        node,
                        primary: false,
                        state: CopyState::Initializing {
                            done_at: now + if has_data { quick } else { cfg.recovery_ms },
                        },
                        relocating_to: None,
                        relocation_source: None,
                        fresh: false,
                    });
                }
            }
            let movable: Vec<(NodeId, bool)> = shard
                .copies
                .iter()
                .filter(|cp| cp.state == CopyState::Started && cp.relocating_to.is_none())
                .filter(|cp| nodes.get(&cp.node).is_some_and(|n| d.excluded(&n.info)))
                .map(|cp| (cp.node.clone(), cp.primary))
                .collect();
            for (src, primary) in movable {
                let allowed = match d.enable {
                    Enable::All => true,
                    Enable::Primaries => primary,
                    Enable::NewPrimaries | Enable::None => false,
                };
                if !allowed {
                    continue;
                }
                let Some(node) = pick(&d, shard, &key, total, Some(&src), &load, true) else {
                    continue;
                };
                let l = load.entry(node.clone()).or_default();
                l.0 += 1;
                l.1 += 1;
                if let Some(cp) = shard.copies.iter_mut().find(|cp| cp.node == src) {
                    cp.relocating_to = Some(node.clone());
                }
                shard.copies.push(Copy {
                    node,
                    primary: false,
                    state: CopyState::Initializing {
                        done_at: now + cfg.recovery_ms,
                    },
                    relocating_to: None,
                    relocation_source: Some(src),
                    fresh: false,
                });
            }
        }
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
