//! The health-gated Elasticsearch operations (`esfleet_cli::es::ops`) against a small fake
//! Elasticsearch served over real HTTP on loopback (only the endpoints the operations call)
//! and a fake esfleet ([`FleetOps`]) that stops, starts and destroys "nodes" in the same
//! simulated world. The world keeps a shard model (primaries, replicas, allocation setting,
//! exclusions), so health turns yellow or red the way Elasticsearch's would, and records
//! every state-changing call in one ordered log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esfleet_cli::es::http::EsHttp;
use esfleet_cli::es::ops::{self, FleetOps, OpsError, Target, UnitView, Waits};
use esfleet_core::es::{parse_spec, ClusterRecord, Role};
use esfleet_core::UnitName;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Copy {
    index: String,
    shard: u32,
    primary: bool,
    node: Option<String>,
}

#[derive(Default)]
struct World {
    /// Every state-changing call, fleet's and Elasticsearch's, in order.
    log: Vec<String>,
    /// unit → desired state (`launched`/`loaded`); absent: destroyed.
    units: BTreeMap<String, String>,
    /// Node names in the cluster (`_cat/nodes`).
    up: BTreeSet<String>,
    /// Started nodes that join after this many more `_cat/nodes` reads.
    joining: BTreeMap<String, u32>,
    rejoin_polls: u32,
    data: BTreeSet<String>,
    masters: BTreeSet<String>,
    elected: String,
    copies: Vec<Copy>,
    replicas: u32,
    settings: BTreeMap<String, Value>,
    transient: BTreeMap<String, Value>,
    voting_exclusions: BTreeSet<String>,
    /// A hidden index's replica count (listed by `_cat/indices` only with `expand_wildcards=all`).
    hidden_replicas: Option<u32>,
    /// `(after, node)`: on the first green health answer once `after` is in the log and
    /// allocation is back to normal, `node` crashes and comes back empty.
    crash: Option<(String, String)>,
    /// Health answers left during which the allocator is slow (copies stay unassigned).
    recovering: u32,
    /// Nodes stopped while the cluster was not green.
    stopped_not_green: Vec<String>,
    /// `"stop <unit>"` etc. → the error the fake esfleet answers instead.
    fleet_fails: BTreeMap<String, String>,
    /// The voting exclusion request fails (after adding the exclusion, as a timeout can).
    exclusion_fails: bool,
    /// Overrides the computed health (e.g. an index of someone else's is yellow).
    force_status: Option<String>,
    max_down: usize,
    saw_red: bool,
}

impl World {
    fn note(&mut self, s: impl Into<String>) {
        self.log.push(s.into());
    }

    fn node_of(unit: &str) -> String {
        // logs-d@3.service → logs-d3
        let (p, rest) = unit.split_once('@').unwrap();
        format!("{p}{}", rest.trim_end_matches(".service"))
    }

    fn down_count(&self) -> usize {
        self.units
            .keys()
            .filter(|u| !self.up.contains(&Self::node_of(u)))
            .count()
    }

    fn leave(&mut self, node: &str) {
        self.up.remove(node);
        self.joining.remove(node);
        for c in self.copies.iter_mut().filter(|c| c.node.as_deref() == Some(node)) {
            c.node = None;
        }
        // A lost primary's replica is promoted, as Elasticsearch does.
        let groups: BTreeSet<(String, u32)> = self.copies.iter().map(|c| (c.index.clone(), c.shard)).collect();
        for (i, s) in groups {
            let has_primary = self
                .copies
                .iter()
                .any(|c| c.index == i && c.shard == s && c.primary && c.node.is_some());
            if !has_primary {
                let (mut a, mut b) = (None, None);
                for (k, c) in self.copies.iter().enumerate() {
                    if c.index == i && c.shard == s {
                        if c.primary {
                            a = Some(k);
                        } else if c.node.is_some() && b.is_none() {
                            b = Some(k);
                        }
                    }
                }
                if let (Some(a), Some(b)) = (a, b) {
                    self.copies[a].primary = false;
                    self.copies[b].primary = true;
                }
            }
        }
        self.max_down = self.max_down.max(self.down_count());
    }

    fn excluded(&self) -> Vec<String> {
        self.settings
            .get("cluster.routing.allocation.exclude._name")
            .and_then(Value::as_str)
            .map(|v| v.split(',').map(|x| x.trim().to_string()).collect())
            .unwrap_or_default()
    }

    fn eligible(&self, index: &str, shard: u32, not: Option<&str>) -> Option<String> {
        let held: BTreeSet<&str> = self
            .copies
            .iter()
            .filter(|c| c.index == index && c.shard == shard)
            .filter_map(|c| c.node.as_deref())
            .collect();
        self.data
            .iter()
            .filter(|n| self.up.contains(*n) && !held.contains(n.as_str()) && Some(n.as_str()) != not)
            .find(|n| !self.excluded().contains(n))
            .cloned()
    }

    /// Elasticsearch's allocator, one pass: unassigned copies go to eligible data nodes
    /// (replicas only when allocation is not `primaries`).
    fn allocate(&mut self) {
        let primaries_only = self.settings.get("cluster.routing.allocation.enable") == Some(&json!("primaries"));
        for k in 0..self.copies.len() {
            let c = self.copies[k].clone();
            if c.node.is_some() || (primaries_only && !c.primary) {
                continue;
            }
            // An unassigned primary with no copy left cannot be recovered from anywhere.
            if c.primary {
                continue;
            }
            if let Some(n) = self.eligible(&c.index, c.shard, None) {
                self.copies[k].node = Some(n);
            }
        }
    }

    /// Moves one copy off the excluded node, if any.
    fn relocate_one(&mut self) {
        let excluded = self.excluded();
        let on_excluded = |c: &Copy| c.node.as_ref().is_some_and(|n| excluded.contains(n));
        if let Some(k) = self.copies.iter().position(on_excluded) {
            let c = self.copies[k].clone();
            if let Some(n) = self.eligible(&c.index, c.shard, c.node.as_deref()) {
                self.copies[k].node = Some(n);
            }
        }
    }

    fn status(&mut self) -> String {
        if self.recovering > 0 {
            self.recovering -= 1;
        } else {
            self.allocate();
        }
        self.computed_status()
    }

    /// Health from where the copies are now (no allocation pass).
    fn computed_status(&mut self) -> String {
        let groups: BTreeSet<(String, u32)> = self.copies.iter().map(|c| (c.index.clone(), c.shard)).collect();
        let mut status = "green";
        for (i, s) in groups {
            let assigned = self
                .copies
                .iter()
                .filter(|c| c.index == i && c.shard == s && c.node.is_some())
                .count();
            let total = self.copies.iter().filter(|c| c.index == i && c.shard == s).count();
            if assigned == 0 {
                status = "red";
            } else if assigned < total && status == "green" {
                status = "yellow";
            }
        }
        if status == "red" {
            self.saw_red = true;
        }
        self.force_status.clone().unwrap_or_else(|| status.to_string())
    }
}

type Shared = Arc<Mutex<World>>;

fn spec_toml(masters: u32, data: u32) -> String {
    format!(
        "name = \"logs\"\nzones = [\"a\", \"b\", \"c\"]\n[master]\ncount = {masters}\nmemory = \"2g\"\n[data]\ncount = {data}\nmemory = \"4g\"\n"
    )
}

/// A world with `masters` + `data` nodes all up, 2 indices × 2 shards × (1 + replicas).
fn world(masters: u32, data: u32, replicas: u32) -> (Shared, ClusterRecord) {
    let spec = parse_spec(&spec_toml(masters, data)).expect("a valid spec");
    let record = ClusterRecord {
        spec,
        bootstrapped: true,
    };
    let mut w = World {
        replicas,
        rejoin_polls: 2,
        ..Default::default()
    };
    for n in ops::nodes(&record) {
        w.units.insert(n.unit.to_string(), "launched".into());
        w.up.insert(n.name.clone());
        match n.role {
            Role::Master => w.masters.insert(n.name.clone()),
            _ => w.data.insert(n.name.clone()),
        };
    }
    w.elected = "logs-m1".into();
    let data: Vec<String> = w.data.iter().cloned().collect();
    let mut k = 0;
    for index in ["a-logs", "b-logs"] {
        for shard in 0..2 {
            for copy in 0..=replicas {
                w.copies.push(Copy {
                    index: index.into(),
                    shard,
                    primary: copy == 0,
                    node: Some(data[k % data.len()].clone()),
                });
                k += 1;
            }
        }
    }
    (Arc::new(Mutex::new(w)), record)
}

// ---- the fake Elasticsearch ----

async fn serve(world: Shared) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let world = world.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).await.is_err() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let (method, target) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).await.unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let body: Value = if body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap()
                };
                let (status, answer) = handle(&world, &method, &target, body);
                let text = answer.to_string();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                let mut s = r.into_inner();
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn handle(world: &Shared, method: &str, target: &str, body: Value) -> (u16, Value) {
    let mut w = world.lock().unwrap();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has_master = w.up.iter().any(|n| w.masters.contains(n));
    match (method, path) {
        ("GET", "/") => (200, json!({"cluster_name": "logs", "version": {"number": "8.15.0"}})),
        ("GET", "/_cluster/health") => {
            if !has_master {
                return (
                    503,
                    json!({"error": {"type": "master_not_discovered_exception", "reason": "no master"}, "status": 503}),
                );
            }
            let status = w.status();
            let crash_now = match &w.crash {
                Some((after, _)) => {
                    status == "green"
                        && w.log.contains(after)
                        && !w.settings.contains_key("cluster.routing.allocation.enable")
                }
                None => false,
            };
            if crash_now {
                // After this answer: the node crashes and its service brings it straight
                // back, with no data; its copies take a while to rebuild.
                let (_, node) = w.crash.take().unwrap();
                w.note(format!("crash {node}: back empty"));
                w.leave(&node);
                w.up.insert(node);
                w.recovering = 5;
            }
            let unassigned = w.copies.iter().filter(|c| c.node.is_none()).count();
            let want_green = query.contains("wait_for_status=green");
            let timed_out = want_green && status != "green";
            (
                if timed_out { 408 } else { 200 },
                json!({"status": status, "number_of_nodes": w.up.len(), "unassigned_shards": unassigned, "timed_out": timed_out}),
            )
        }
        ("GET", "/_cluster/settings") => {
            let flat: serde_json::Map<String, Value> = w.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let transient: serde_json::Map<String, Value> =
                w.transient.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            (200, json!({"persistent": flat, "transient": transient}))
        }
        ("PUT", "/_cluster/settings") => {
            for scope in ["persistent", "transient"] {
                let Some(set) = body.get(scope).and_then(Value::as_object) else {
                    continue;
                };
                for (k, v) in set {
                    let (prefix, map) = if scope == "persistent" {
                        ("", &mut w.settings)
                    } else {
                        ("transient ", &mut w.transient)
                    };
                    if v.is_null() {
                        map.remove(k);
                    } else {
                        map.insert(k.clone(), v.clone());
                    }
                    w.note(format!("ES {prefix}{k}={v}"));
                }
            }
            (200, json!({"acknowledged": true}))
        }
        ("GET", "/_cat/nodes") => {
            // Started nodes join after a few looks.
            let ready: Vec<String> = w
                .joining
                .iter_mut()
                .filter_map(|(n, left)| {
                    if *left == 0 {
                        Some(n.clone())
                    } else {
                        *left -= 1;
                        None
                    }
                })
                .collect();
            for n in ready {
                w.joining.remove(&n);
                w.up.insert(n);
            }
            let rows: Vec<Value> = w
                .up
                .iter()
                .map(|n| {
                    json!({"name": n, "ip": "127.0.0.1", "node.role": if w.masters.contains(n) { "m" } else { "di" },
                           "master": if *n == w.elected { "*" } else { "-" }})
                })
                .collect();
            (200, Value::Array(rows))
        }
        ("GET", "/_cat/shards") => {
            w.relocate_one();
            let rows: Vec<Value> = w
                .copies
                .iter()
                .map(|c| {
                    json!({"index": c.index, "shard": c.shard.to_string(), "prirep": if c.primary { "p" } else { "r" },
                           "state": if c.node.is_some() { "STARTED" } else { "UNASSIGNED" }, "node": c.node})
                })
                .collect();
            (200, Value::Array(rows))
        }
        ("GET", "/_cat/indices") => {
            let rep = w.replicas.to_string();
            let mut rows = vec![
                json!({"index": "a-logs", "health": "green", "rep": rep}),
                json!({"index": "b-logs", "health": "green", "rep": rep}),
            ];
            if let Some(r) = w.hidden_replicas.filter(|_| query.contains("expand_wildcards=all")) {
                rows.push(json!({"index": ".ds-metrics-000001", "health": "green", "rep": r.to_string()}));
            }
            (200, Value::Array(rows))
        }
        ("GET", "/_nodes") => {
            let nodes: serde_json::Map<String, Value> =
                w.up.iter().map(|n| (format!("id-{n}"), json!({"name": n}))).collect();
            (200, json!({ "nodes": nodes }))
        }
        ("GET", "/_cluster/state/metadata") => {
            let config: Vec<String> = w
                .masters
                .iter()
                .filter(|m| !w.voting_exclusions.contains(*m))
                .map(|m| format!("id-{m}"))
                .collect();
            let excl: Vec<Value> = w
                .voting_exclusions
                .iter()
                .map(|m| json!({"node_id": format!("id-{m}"), "node_name": m}))
                .collect();
            (
                200,
                json!({"metadata": {"cluster_coordination": {"last_committed_config": config, "voting_config_exclusions": excl}}}),
            )
        }
        ("POST", "/_cluster/voting_config_exclusions") => {
            let name = query.strip_prefix("node_names=").unwrap().to_string();
            w.note(format!("ES voting exclusion {name}"));
            w.voting_exclusions.insert(name);
            if w.exclusion_fails {
                return (
                    503,
                    json!({"error": {"type": "process_cluster_event_timeout_exception", "reason": "timed out"}, "status": 503}),
                );
            }
            (200, Value::Null)
        }
        ("DELETE", "/_cluster/voting_config_exclusions") => {
            if query.contains("wait_for_removal=false") {
                w.note("ES clear voting exclusions (wait_for_removal=false)");
            } else {
                w.note("ES clear voting exclusions");
            }
            w.voting_exclusions.clear();
            (200, Value::Null)
        }
        _ => (
            404,
            json!({"error": {"type": "no_handler", "reason": format!("{method} {target}")}, "status": 404}),
        ),
    }
}

// ---- the fake esfleet ----

/// The failure set up for `op` on `unit`, logged, if any.
fn fail(w: &mut World, op: &str, unit: &UnitName) -> Result<(), OpsError> {
    match w.fleet_fails.get(&format!("{op} {unit}")).cloned() {
        Some(msg) => {
            w.note(format!("fleet {op} {unit} failed"));
            Err(OpsError::Fleet(msg))
        }
        None => Ok(()),
    }
}

struct FakeFleet {
    world: Shared,
    revision: Mutex<i64>,
    stored: Mutex<Vec<ClusterRecord>>,
}

impl FakeFleet {
    fn new(world: Shared) -> FakeFleet {
        FakeFleet {
            world,
            revision: Mutex::new(7),
            stored: Mutex::new(Vec::new()),
        }
    }
}

impl FleetOps for FakeFleet {
    async fn units(&self, names: &[UnitName]) -> Result<Vec<UnitView>, OpsError> {
        let w = self.world.lock().unwrap();
        Ok(names
            .iter()
            .map(|n| match w.units.get(n.as_str()) {
                Some(d) => UnitView {
                    name: n.to_string(),
                    exists: true,
                    desired: d.clone(),
                    active: if d == "launched" { "active" } else { "inactive" }.into(),
                    address: "127.0.0.1".into(),
                },
                None => UnitView {
                    name: n.to_string(),
                    ..Default::default()
                },
            })
            .collect())
    }

    async fn stop(&self, unit: &UnitName) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
        fail(&mut w, "stop", unit)?;
        w.note(format!("fleet stop {unit}"));
        if w.computed_status() != "green" {
            w.stopped_not_green.push(unit.to_string());
        }
        w.units.insert(unit.to_string(), "loaded".into());
        w.leave(&World::node_of(unit.as_str()));
        Ok(())
    }

    async fn refresh(&self, unit: &UnitName) -> Result<bool, OpsError> {
        self.world.lock().unwrap().note(format!("fleet refresh {unit}"));
        Ok(false)
    }

    async fn start(&self, unit: &UnitName) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
        fail(&mut w, "start", unit)?;
        w.note(format!("fleet start {unit}"));
        w.units.insert(unit.to_string(), "launched".into());
        let polls = w.rejoin_polls;
        w.joining.insert(World::node_of(unit.as_str()), polls);
        Ok(())
    }

    async fn destroy(&self, unit: &UnitName) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
        fail(&mut w, "destroy", unit)?;
        w.note(format!("fleet destroy {unit}"));
        w.units.remove(unit.as_str());
        let node = World::node_of(unit.as_str());
        w.leave(&node);
        w.data.remove(&node);
        w.masters.remove(&node);
        Ok(())
    }

    async fn store(&self, record: &ClusterRecord, if_revision: i64) -> Result<i64, OpsError> {
        let mut rev = self.revision.lock().unwrap();
        assert_eq!(
            if_revision, *rev,
            "the store is compare-and-set on the revision last seen"
        );
        *rev += 1;
        self.world.lock().unwrap().note(format!(
            "fleet store masters={} data={}",
            record.spec.master.count, record.spec.data.count
        ));
        self.stored.lock().unwrap().push(record.clone());
        Ok(*rev)
    }

    fn say(&self, _line: &str) {}
}

const WAITS: Waits = Waits {
    timeout: Duration::from_secs(10),
    poll: Duration::from_millis(2),
};

async fn setup(masters: u32, data: u32, replicas: u32) -> (Shared, FakeFleet, EsHttp, Target) {
    let (world, record) = world(masters, data, replicas);
    let addr = serve(world.clone()).await;
    let http = EsHttp::new(
        vec![addr],
        Duration::from_secs(5),
        esfleet_core::http::Transport::plain(),
    );
    let fleet = FakeFleet::new(world.clone());
    (world, fleet, http, Target { record, revision: 7 })
}

fn log(world: &Shared) -> Vec<String> {
    world.lock().unwrap().log.clone()
}

/// Allocation reset in both scopes (one request).
const RESET_ALLOCATION: [&str; 2] = [
    "ES cluster.routing.allocation.enable=null",
    "ES transient cluster.routing.allocation.enable=null",
];

fn node_steps(unit: &str) -> Vec<String> {
    vec![
        "ES cluster.routing.allocation.enable=\"primaries\"".into(),
        format!("fleet stop {unit}"),
        format!("fleet refresh {unit}"),
        format!("fleet start {unit}"),
        "ES cluster.routing.allocation.enable=null".into(),
    ]
}

#[tokio::test]
async fn rolling_restart_one_node_at_a_time_masters_last_elected_last() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    ops::restart(&fleet, &http, &target, &WAITS, false).await.unwrap();
    let mut want = RESET_ALLOCATION.map(String::from).to_vec();
    for u in [
        "logs-d@1.service",
        "logs-d@2.service",
        "logs-d@3.service",
        "logs-m@2.service",
        "logs-m@3.service",
        "logs-m@1.service",
    ] {
        want.extend(node_steps(u));
    }
    assert_eq!(log(&world), want);
    let w = world.lock().unwrap();
    assert_eq!(w.max_down, 1, "never more than one node down");
    assert!(!w.saw_red, "never red");
    assert_eq!(w.up.len(), 6);
}

#[tokio::test]
async fn an_interrupted_restart_resumes_by_resetting_allocation_and_starting_the_stopped_node() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    {
        let mut w = world.lock().unwrap();
        w.settings
            .insert("cluster.routing.allocation.enable".into(), json!("primaries"));
        w.units.insert("logs-d@2.service".into(), "loaded".into());
        w.leave("logs-d2");
    }
    ops::restart(&fleet, &http, &target, &WAITS, false).await.unwrap();
    let l = log(&world);
    assert_eq!(l[..2], RESET_ALLOCATION);
    assert_eq!(l[2], "fleet start logs-d@2.service");
    // Then the full round, from the first node.
    assert_eq!(l[3..8], node_steps("logs-d@1.service")[..]);
    assert_eq!(l.len(), 3 + 6 * 5);
    assert!(!world.lock().unwrap().saw_red);
}

#[tokio::test]
async fn a_restart_never_stops_a_node_while_another_is_missing() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    {
        let mut w = world.lock().unwrap();
        // logs-d3's unit runs, but the node is not in the cluster (it crashed and systemd
        // has not noticed, or it cannot join).
        w.leave("logs-d3");
        // Allocation puts its copies elsewhere: green again.
        w.allocate();
    }
    let waits = Waits {
        timeout: Duration::from_millis(300),
        ..WAITS
    };
    let e = ops::restart(&fleet, &http, &target, &waits, false).await.unwrap_err();
    assert!(
        e.to_string().contains("every node to be in the cluster") && e.to_string().contains("logs-d3"),
        "{e}"
    );
    assert!(
        !log(&world).iter().any(|l| l.starts_with("fleet stop")),
        "nothing stopped: {:?}",
        log(&world)
    );
}

#[tokio::test]
async fn data_scale_down_moves_shards_off_first_and_refuses_at_the_replicas_rule() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Data, 2, &WAITS)
        .await
        .unwrap_err();
    // d4 went; d3 would leave 2 data nodes for 2 copies of each shard.
    assert!(matches!(e, OpsError::Refused(_)), "{e}");
    assert!(e.to_string().contains("logs-d3 cannot be removed"), "{e}");
    assert!(e.to_string().contains("keep at least 3 data nodes"), "{e}");
    assert_eq!(
        log(&world),
        [
            "ES cluster.routing.allocation.exclude._name=\"logs-d4\"",
            "fleet stop logs-d@4.service",
            "fleet destroy logs-d@4.service",
            "ES cluster.routing.allocation.exclude._name=null",
            "fleet store masters=3 data=3",
        ]
    );
    let w = world.lock().unwrap();
    assert!(!w.saw_red, "never red");
    assert!(w
        .copies
        .iter()
        .all(|c| c.node.is_some() && c.node.as_deref() != Some("logs-d4")));
    assert_eq!(target.record.spec.data.count, 3);
    assert_eq!(target.revision, 8);
}

#[tokio::test]
async fn data_scale_down_is_refused_unless_green() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    world.lock().unwrap().force_status = Some("yellow".into());
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the cluster is yellow, not green"), "{e}");
    assert!(log(&world).is_empty(), "nothing done: {:?}", log(&world));
}

#[tokio::test]
async fn data_scale_down_several_nodes_one_at_a_time() {
    let (world, fleet, http, mut target) = setup(3, 5, 1).await;
    ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap();
    let l = log(&world);
    let order: Vec<&String> = l.iter().filter(|x| x.starts_with("fleet")).collect();
    assert_eq!(
        order,
        [
            "fleet stop logs-d@5.service",
            "fleet destroy logs-d@5.service",
            "fleet store masters=3 data=4",
            "fleet stop logs-d@4.service",
            "fleet destroy logs-d@4.service",
            "fleet store masters=3 data=3",
        ]
    );
    assert_eq!(world.lock().unwrap().max_down, 1);
    assert_eq!(fleet.stored.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn master_scale_down_uses_voting_exclusions_and_keeps_a_quorum() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Master, 1, &WAITS)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("logs-m2 cannot be removed"), "{e}");
    assert!(e.to_string().contains("below its quorum"), "{e}");
    assert_eq!(
        log(&world),
        [
            "ES voting exclusion logs-m3",
            "fleet stop logs-m@3.service",
            "fleet destroy logs-m@3.service",
            "ES clear voting exclusions",
            "fleet store masters=2 data=3",
        ]
    );
    assert_eq!(target.record.spec.master.count, 2);
}

#[tokio::test]
async fn scale_down_cannot_add_nodes() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Data, 5, &WAITS)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("esfleet es apply"), "{e}");
    assert!(log(&world).is_empty());
}

#[tokio::test]
async fn a_scale_down_interrupted_after_the_destroy_only_records_the_count() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    {
        let mut w = world.lock().unwrap();
        w.settings
            .insert("cluster.routing.allocation.exclude._name".into(), json!("logs-d4"));
        // The previous run moved the shards and destroyed the unit, then stopped.
        for k in 0..w.copies.len() {
            if w.copies[k].node.as_deref() == Some("logs-d4") {
                let c = w.copies[k].clone();
                let n = w.eligible(&c.index, c.shard, Some("logs-d4")).unwrap();
                w.copies[k].node = Some(n);
            }
        }
        w.units.remove("logs-d@4.service");
        w.leave("logs-d4");
        w.data.remove("logs-d4");
    }
    ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap();
    assert_eq!(
        log(&world),
        [
            "ES cluster.routing.allocation.exclude._name=null",
            "fleet store masters=3 data=3"
        ]
    );
}

// ---- the review's findings ----

#[tokio::test]
async fn a_restart_waits_for_green_before_each_stop_not_just_for_every_node_to_be_back() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    // Once logs-d1's pass is over (green, allocation back to normal), logs-d3 crashes and
    // comes straight back, empty: every node is in _cat/nodes, but its copies are rebuilding.
    world.lock().unwrap().crash = Some(("fleet start logs-d@1.service".into(), "logs-d3".into()));
    ops::restart(&fleet, &http, &target, &WAITS, false).await.unwrap();
    let l = log(&world);
    let crash = l
        .iter()
        .position(|x| x == "crash logs-d3: back empty")
        .expect("the crash happened");
    let next_stop = l.iter().position(|x| x == "fleet stop logs-d@2.service").unwrap();
    assert!(crash < next_stop, "{l:?}");
    let w = world.lock().unwrap();
    assert_eq!(w.recovering, 0, "the yellow spell was waited out");
    assert!(
        w.stopped_not_green.is_empty(),
        "stopped while not green: {:?}",
        w.stopped_not_green
    );
    assert!(!w.saw_red, "never red");
    assert_eq!(w.up.len(), 6);
}

#[tokio::test]
async fn a_failed_stop_during_a_restart_resets_allocation() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    world.lock().unwrap().fleet_fails.insert(
        "stop logs-d@2.service".into(),
        "logs-d@2.service did not stop within 1m".into(),
    );
    let e = ops::restart(&fleet, &http, &target, &WAITS, false).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("logs-d@2.service did not stop within 1m"), "{msg}");
    assert!(msg.contains("cluster.routing.allocation.enable was reset"), "{msg}");
    assert!(msg.contains("esfleet es restart logs"), "{msg}");
    let l = log(&world);
    assert_eq!(
        l[l.len() - 4..],
        [
            "ES cluster.routing.allocation.enable=\"primaries\"",
            "fleet stop logs-d@2.service failed",
            RESET_ALLOCATION[0],
            RESET_ALLOCATION[1],
        ]
    );
    let w = world.lock().unwrap();
    assert!(w.settings.is_empty() && w.transient.is_empty(), "{:?}", w.settings);
}

#[tokio::test]
async fn a_node_that_does_not_rejoin_resets_allocation_and_the_restart_resumes() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    world.lock().unwrap().rejoin_polls = u32::MAX;
    let waits = Waits {
        timeout: Duration::from_millis(200),
        ..WAITS
    };
    let e = ops::restart(&fleet, &http, &target, &waits, false).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("gave up waiting for logs-d1 to join the cluster"), "{msg}");
    assert!(msg.contains("cluster.routing.allocation.enable was reset"), "{msg}");
    {
        let mut w = world.lock().unwrap();
        assert!(!w.settings.contains_key("cluster.routing.allocation.enable"));
        // With allocation back, the missing node's replicas are rebuilt on the others.
        assert_eq!(w.status(), "green");
        // logs-d1 finally joins; the next run goes round the whole cluster.
        w.rejoin_polls = 2;
        w.joining.insert("logs-d1".into(), 0);
        w.log.clear();
    }
    ops::restart(&fleet, &http, &target, &WAITS, false).await.unwrap();
    let l = log(&world);
    assert_eq!(l[..2], RESET_ALLOCATION);
    assert_eq!(l.len(), 2 + 6 * 5, "{l:?}");
    assert!(!world.lock().unwrap().saw_red);
}

#[tokio::test]
async fn scale_down_refuses_while_allocation_is_restricted() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    world
        .lock()
        .unwrap()
        .transient
        .insert("cluster.routing.allocation.enable".into(), json!("primaries"));
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OpsError::Refused(_)), "{msg}");
    assert!(
        msg.contains("cluster.routing.allocation.enable is \"primaries\"") && msg.contains("esfleet es restart logs"),
        "{msg}"
    );
    assert!(log(&world).is_empty(), "nothing done: {:?}", log(&world));
    assert_eq!(target.record.spec.data.count, 4);

    // `all` is the default spelled out: fine.
    {
        let mut w = world.lock().unwrap();
        w.transient.clear();
        w.settings
            .insert("cluster.routing.allocation.enable".into(), json!("all"));
    }
    ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap();
    assert_eq!(target.record.spec.data.count, 3);
}

#[tokio::test]
async fn a_failed_master_stop_clears_the_voting_exclusion() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    world
        .lock()
        .unwrap()
        .fleet_fails
        .insert("stop logs-m@3.service".into(), "machine m3 is unreachable".into());
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Master, 2, &WAITS)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("machine m3 is unreachable"), "{msg}");
    assert!(
        msg.contains("voting configuration exclusion of logs-m3 was cleared"),
        "{msg}"
    );
    assert_eq!(
        log(&world),
        [
            "ES voting exclusion logs-m3",
            "fleet stop logs-m@3.service failed",
            "ES clear voting exclusions (wait_for_removal=false)",
        ]
    );
    assert!(world.lock().unwrap().voting_exclusions.is_empty());
    assert_eq!(target.record.spec.master.count, 3, "nothing recorded");

    // Fixed, the same command finishes the job.
    world.lock().unwrap().fleet_fails.clear();
    ops::scale_down(&fleet, &http, &mut target, Role::Master, 2, &WAITS)
        .await
        .unwrap();
    assert_eq!(target.record.spec.master.count, 2);
    assert!(world.lock().unwrap().voting_exclusions.is_empty());
}

#[tokio::test]
async fn a_failed_voting_exclusion_request_is_cleared_too() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    world.lock().unwrap().exclusion_fails = true;
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Master, 2, &WAITS)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("process_cluster_event_timeout_exception"), "{e}");
    assert_eq!(
        log(&world),
        [
            "ES voting exclusion logs-m3",
            "ES clear voting exclusions (wait_for_removal=false)",
        ]
    );
    assert!(world.lock().unwrap().voting_exclusions.is_empty());
}

#[tokio::test]
async fn a_master_scale_down_resumed_after_the_destroy_clears_the_stale_exclusion() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    {
        let mut w = world.lock().unwrap();
        // The previous run excluded and destroyed logs-m3, then stopped before clearing.
        w.voting_exclusions.insert("logs-m3".into());
        w.units.remove("logs-m@3.service");
        w.leave("logs-m3");
        w.masters.remove("logs-m3");
    }
    ops::scale_down(&fleet, &http, &mut target, Role::Master, 2, &WAITS)
        .await
        .unwrap();
    assert_eq!(
        log(&world),
        [
            "ES clear voting exclusions (wait_for_removal=false)",
            "fleet store masters=2 data=3",
        ]
    );
    assert!(world.lock().unwrap().voting_exclusions.is_empty());
}

#[tokio::test]
async fn a_master_scale_down_refuses_while_someone_elses_voting_exclusion_exists() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    world.lock().unwrap().voting_exclusions.insert("logs-m1".into());
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Master, 2, &WAITS)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OpsError::Refused(_)), "{msg}");
    assert!(msg.contains("(logs-m1) besides logs-m3"), "{msg}");
    assert!(msg.contains("voting_config_exclusions?wait_for_removal=false"), "{msg}");
    assert!(log(&world).is_empty());
}

#[tokio::test]
async fn a_restart_refuses_while_voting_exclusions_exist() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    world.lock().unwrap().voting_exclusions.insert("logs-m3".into());
    let e = ops::restart(&fleet, &http, &target, &WAITS, false).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OpsError::Refused(_)), "{msg}");
    assert!(msg.contains("voting configuration exclusions (logs-m3)"), "{msg}");
    assert!(msg.contains("esfleet es scale-down logs --masters"), "{msg}");
    assert!(
        msg.contains("curl -X DELETE 'http://127.0.0.1:")
            && msg.contains("voting_config_exclusions?wait_for_removal=false"),
        "{msg}"
    );
    assert!(log(&world).is_empty(), "nothing done: {:?}", log(&world));
}

#[tokio::test]
async fn data_scale_down_keeps_the_operators_allocation_exclusions() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    world
        .lock()
        .unwrap()
        .settings
        .insert("cluster.routing.allocation.exclude._name".into(), json!("old-x"));
    ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap();
    assert_eq!(
        log(&world),
        [
            "ES cluster.routing.allocation.exclude._name=\"old-x,logs-d4\"",
            "fleet stop logs-d@4.service",
            "fleet destroy logs-d@4.service",
            "ES cluster.routing.allocation.exclude._name=\"old-x\"",
            "fleet store masters=3 data=3",
        ]
    );
    assert!(!world.lock().unwrap().saw_red);
}

#[tokio::test]
async fn a_resumed_data_scale_down_takes_only_its_node_out_of_the_exclusions() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    {
        let mut w = world.lock().unwrap();
        w.settings.insert(
            "cluster.routing.allocation.exclude._name".into(),
            json!("old-x,logs-d4"),
        );
        for k in 0..w.copies.len() {
            if w.copies[k].node.as_deref() == Some("logs-d4") {
                let c = w.copies[k].clone();
                let n = w.eligible(&c.index, c.shard, Some("logs-d4")).unwrap();
                w.copies[k].node = Some(n);
            }
        }
        w.units.remove("logs-d@4.service");
        w.leave("logs-d4");
        w.data.remove("logs-d4");
    }
    ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap();
    assert_eq!(
        log(&world),
        [
            "ES cluster.routing.allocation.exclude._name=\"old-x\"",
            "fleet store masters=3 data=3"
        ]
    );
}

#[tokio::test]
async fn hidden_indices_count_for_the_replicas_rule() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    // A hidden data stream backing index with 2 replicas needs all 4 data nodes.
    world.lock().unwrap().hidden_replicas = Some(2);
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap_err();
    assert!(matches!(e, OpsError::Refused(_)), "{e}");
    assert!(e.to_string().contains("logs-d4 cannot be removed"), "{e}");
    assert!(e.to_string().contains("keep at least 4 data nodes"), "{e}");
    assert!(log(&world).is_empty());
}
