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
    voting_exclusions: BTreeSet<String>,
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

    fn excluded(&self) -> Option<String> {
        self.settings
            .get("cluster.routing.allocation.exclude._name")
            .and_then(Value::as_str)
            .map(str::to_string)
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
            .find(|n| Some(n.as_str()) != self.excluded().as_deref())
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
        let Some(x) = self.excluded() else { return };
        if let Some(k) = self.copies.iter().position(|c| c.node.as_deref() == Some(x.as_str())) {
            let c = self.copies[k].clone();
            if let Some(n) = self.eligible(&c.index, c.shard, Some(&x)) {
                self.copies[k].node = Some(n);
            }
        }
    }

    fn status(&mut self) -> String {
        self.allocate();
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
            (200, json!({"persistent": flat, "transient": {}}))
        }
        ("PUT", "/_cluster/settings") => {
            for (k, v) in body["persistent"].as_object().unwrap() {
                w.note(format!("ES {k}={v}"));
                if v.is_null() {
                    w.settings.remove(k);
                } else {
                    w.settings.insert(k.clone(), v.clone());
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
            (
                200,
                json!([{"index": "a-logs", "health": "green", "rep": rep}, {"index": "b-logs", "health": "green", "rep": rep}]),
            )
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
            (200, Value::Null)
        }
        ("DELETE", "/_cluster/voting_config_exclusions") => {
            w.note("ES clear voting exclusions");
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
        w.note(format!("fleet stop {unit}"));
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
        w.note(format!("fleet start {unit}"));
        w.units.insert(unit.to_string(), "launched".into());
        let polls = w.rejoin_polls;
        w.joining.insert(World::node_of(unit.as_str()), polls);
        Ok(())
    }

    async fn destroy(&self, unit: &UnitName) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
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
    let http = EsHttp::new(vec![addr], Duration::from_secs(5));
    let fleet = FakeFleet::new(world.clone());
    (world, fleet, http, Target { record, revision: 7 })
}

fn log(world: &Shared) -> Vec<String> {
    world.lock().unwrap().log.clone()
}

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
    ops::restart(&fleet, &http, &target, &WAITS).await.unwrap();
    let mut want = vec!["ES cluster.routing.allocation.enable=null".to_string()];
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
    ops::restart(&fleet, &http, &target, &WAITS).await.unwrap();
    let l = log(&world);
    assert_eq!(
        l[..2],
        [
            "ES cluster.routing.allocation.enable=null",
            "fleet start logs-d@2.service"
        ]
    );
    // Then the full round, from the first node.
    assert_eq!(l[2..7], node_steps("logs-d@1.service")[..]);
    assert_eq!(l.len(), 2 + 6 * 5);
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
    let e = ops::restart(&fleet, &http, &target, &waits).await.unwrap_err();
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
