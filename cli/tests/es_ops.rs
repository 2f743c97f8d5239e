//! The health-gated Elasticsearch operations (`esfleet_cli::es::ops`) against the project's
//! one Elasticsearch stand-in (`esfleet_tests::es_standin`), served over real HTTP on
//! loopback, and a fake esfleet ([`FleetOps`]) that stops, starts and destroys the
//! stand-in's node processes. The stand-in's clock moves one step per request (and step by
//! step while a request waits), so the tests are deterministic and fast while the cluster
//! forms, recovers, relocates and turns yellow or red by the model's rules. Every
//! state-changing call, fleet's and Elasticsearch's, lands in one ordered log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esfleet_cli::es::http::EsHttp;
use esfleet_cli::es::ops::{self, FleetOps, OpsError, Target, UnitView, Waits};
use esfleet_core::es::{parse_spec, ClusterRecord, Role};
use esfleet_core::UnitName;
use esfleet_tests::es_standin::api::es_error;
use esfleet_tests::es_standin::http::{self as standin_http, Request, Response};
use esfleet_tests::es_standin::model::{ModelConfig, NodeInfo};
use esfleet_tests::es_standin::sim::{self, body_of, request, Sim, STEP_MS};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Fast recoveries (five requests' worth of model time) keep the tests short.
const CFG: ModelConfig = ModelConfig {
    recovery_ms: 500,
    fault_detect_ms: 1500,
};

struct World {
    sim: Sim,
    /// Every state-changing call, fleet's and Elasticsearch's, in order.
    log: Vec<String>,
    /// unit → desired state (`launched`/`loaded`); absent: destroyed.
    units: BTreeMap<String, String>,
    /// unit → its node process's identity (a fresh node id means an empty data dir).
    procs: BTreeMap<String, NodeInfo>,
    /// Started nodes never join (their process hangs before joining).
    no_rejoin: bool,
    /// `(after, node)`: on the first green health answer once `after` is in the log and
    /// allocation is back to normal, `node` crashes and comes back with an empty data dir.
    crash: Option<(String, String)>,
    /// Model time of that crash.
    crashed_at: Option<u64>,
    /// Nodes stopped while the cluster was not green.
    stopped_not_green: Vec<String>,
    /// `"stop <unit>"` etc. → the error the fake esfleet answers instead.
    fleet_fails: BTreeMap<String, String>,
    /// The voting exclusion request fails after the exclusion was added, as a timeout can.
    exclusion_fails: bool,
}

fn node_of(unit: &str) -> String {
    // logs-d@3.service → logs-d3
    let (p, rest) = unit.split_once('@').unwrap();
    format!("{p}{}", rest.trim_end_matches(".service"))
}

impl World {
    fn note(&mut self, s: impl Into<String>) {
        self.log.push(s.into());
    }

    /// A request straight to the stand-in (not logged): (status, body).
    fn es(&mut self, method: &str, target: &str, body: &str) -> (u16, Value) {
        let r = self.sim.rest(&request(method, target, body));
        (r.status, body_of(&r))
    }

    fn put_setting(&mut self, scope: &str, key: &str, value: Value) {
        let (s, b) = self.es(
            "PUT",
            "/_cluster/settings",
            &json!({ scope: { key: value } }).to_string(),
        );
        assert_eq!(s, 200, "{b}");
    }

    /// The health status now, or why there is none.
    fn status_now(&mut self) -> String {
        match self.es("GET", "/_cluster/health", "") {
            (200, b) => b["status"].as_str().unwrap_or("?").to_string(),
            (s, b) => format!("{s} {b}"),
        }
    }

    /// Lets model time pass until the cluster is green with nothing moving.
    fn settle(&mut self) {
        let (s, b) = self.es(
            "GET",
            "/_cluster/health?wait_for_status=green&wait_for_no_relocating_shards=true&wait_for_no_initializing_shards=true&timeout=120s",
            "",
        );
        assert_eq!(s, 200, "not settled: {b}");
    }

    fn start_node(&mut self, unit: &str) {
        let info = self.procs.get_mut(unit).expect("a known unit");
        info.incarnation += 1;
        let info = info.clone();
        self.sim.start(&info);
    }

    fn stop_node(&mut self, unit: &str) {
        let name = node_of(unit);
        if self.sim.up.iter().any(|n| n.node_name == name) {
            self.sim.stop(&name);
        }
    }

    /// The unit was stopped (or destroyed) by someone else before the test.
    fn gone_before(&mut self, unit: &str, destroyed: bool) {
        self.stop_node(unit);
        if destroyed {
            self.units.remove(unit);
        } else {
            self.units.insert(unit.into(), "loaded".into());
        }
    }

    fn allocation_setting(&self) -> Option<&Value> {
        let c = self.sim.cluster();
        let k = "cluster.routing.allocation.enable";
        c.transient.get(k).or(c.persistent.get(k))
    }

    fn exclusions(&self) -> Vec<String> {
        self.sim
            .cluster()
            .exclusions
            .iter()
            .map(|e| e.node_name.clone())
            .collect()
    }

    /// Names in the voting configuration, sorted.
    fn voting_names_now(&self) -> Vec<String> {
        let mut v = self.sim.voting_names();
        v.sort();
        v
    }

    fn saw_red(&self) -> bool {
        self.sim.statuses_seen().contains("red")
    }

    fn max_down(&self) -> usize {
        self.sim.m.max_nodes_down_at_once
    }

    /// Elasticsearch's side of one HTTP request: the clock moves one step, state-changing
    /// requests are logged, and the failures set up are injected.
    fn answer(&mut self, req: Request) -> Response {
        self.sim.advance(STEP_MS);
        let voting = req.path == "/_cluster/voting_config_exclusions";
        match (req.method.as_str(), req.path.as_str()) {
            ("PUT", "/_cluster/settings") => {
                let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                for scope in ["persistent", "transient"] {
                    let prefix = if scope == "persistent" { "" } else { "transient " };
                    for (k, v) in body.get(scope).and_then(Value::as_object).into_iter().flatten() {
                        self.note(format!("ES {prefix}{k}={v}"));
                    }
                }
            }
            ("POST", _) if voting => {
                let name = req.query.get("node_names").cloned().unwrap_or_default();
                self.note(format!("ES voting exclusion {name}"));
            }
            ("DELETE", _) if voting => {
                if req.query.get("wait_for_removal").is_some_and(|v| v == "false") {
                    self.note("ES clear voting exclusions (wait_for_removal=false)");
                } else {
                    self.note("ES clear voting exclusions");
                }
            }
            _ => {}
        }
        let resp = self.sim.rest(&req);
        if req.method == "POST" && voting && self.exclusion_fails {
            let reason = "failed to process cluster event within 30s";
            return Response::json(503, &es_error(503, "process_cluster_event_timeout_exception", reason));
        }
        if req.path == "/_cluster/health" && body_of(&resp)["status"] == "green" {
            self.maybe_crash();
        }
        resp
    }

    fn maybe_crash(&mut self) {
        let due = match &self.crash {
            Some((after, _)) => self.log.contains(after) && self.allocation_setting().is_none(),
            None => false,
        };
        if !due {
            return;
        }
        // After this answer the node crashes and its service brings it straight back with
        // an empty data dir (a new node id); its copies must be rebuilt from the others.
        let (_, node) = self.crash.take().unwrap();
        let unit = self.procs.keys().find(|u| node_of(u) == node).cloned().unwrap();
        self.note(format!("crash {node}: back empty"));
        self.stop_node(&unit);
        let info = self.procs.get_mut(&unit).unwrap();
        info.node_id = format!("{}-again", info.node_id);
        info.path_data = format!("{}-again", info.path_data);
        self.start_node(&unit);
        self.crashed_at = Some(self.sim.now);
    }
}

type Shared = Arc<Mutex<World>>;

fn spec_toml(masters: u32, data: u32) -> String {
    format!(
        "name = \"logs\"\nzones = [\"a\", \"b\", \"c\"]\n[master]\ncount = {masters}\nmemory = \"2g\"\n[data]\ncount = {data}\nmemory = \"4g\"\n"
    )
}

/// A formed, green cluster of `masters` + `data` nodes (zones a, b, c round-robin, forced
/// awareness on zone), with indices `a-logs` and `b-logs` of 2 shards × (1 + `replicas`).
fn world(masters: u32, data: u32, replicas: u32) -> (Shared, ClusterRecord) {
    let spec = parse_spec(&spec_toml(masters, data)).expect("a valid spec");
    let record = ClusterRecord {
        spec,
        bootstrapped: true,
    };
    let ms = sim::masters(masters as usize, true);
    let ds = sim::data(data as usize, &ms);
    let mut w = World {
        sim: Sim::new(CFG),
        log: vec![],
        units: BTreeMap::new(),
        procs: BTreeMap::new(),
        no_rejoin: false,
        crash: None,
        crashed_at: None,
        stopped_not_green: vec![],
        fleet_fails: BTreeMap::new(),
        exclusion_fails: false,
    };
    for n in ops::nodes(&record) {
        let info = ms
            .iter()
            .chain(&ds)
            .find(|i| i.node_name == n.name)
            .expect("a node per unit");
        w.units.insert(n.unit.to_string(), "launched".into());
        w.procs.insert(n.unit.to_string(), info.clone());
        w.sim.start(info);
    }
    w.sim.advance(10 * STEP_MS);
    for index in ["a-logs", "b-logs"] {
        let body = json!({"settings": {"number_of_shards": 2, "number_of_replicas": replicas}});
        let (s, b) = w.es("PUT", &format!("/{index}"), &body.to_string());
        assert_eq!(s, 200, "{b}");
    }
    w.settle();
    assert_eq!(w.sim.member_names().len(), (masters + data) as usize);
    (Arc::new(Mutex::new(w)), record)
}

/// Serves the world's Elasticsearch on loopback; the address.
async fn serve(world: Shared) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let handler = move |req: Request| {
        let world = world.clone();
        async move { world.lock().unwrap().answer(req) }
    };
    tokio::spawn(standin_http::serve(l, handler, std::future::pending()));
    addr
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
        if w.status_now() != "green" {
            w.stopped_not_green.push(unit.to_string());
        }
        w.units.insert(unit.to_string(), "loaded".into());
        w.stop_node(unit.as_str());
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
        if !w.no_rejoin {
            w.start_node(unit.as_str());
        }
        Ok(())
    }

    async fn destroy(&self, unit: &UnitName) -> Result<(), OpsError> {
        let mut w = self.world.lock().unwrap();
        fail(&mut w, "destroy", unit)?;
        w.note(format!("fleet destroy {unit}"));
        w.units.remove(unit.as_str());
        w.stop_node(unit.as_str());
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
    assert_eq!(w.max_down(), 1, "never more than one node down");
    assert!(!w.saw_red(), "never red");
    assert!(w.stopped_not_green.is_empty(), "{:?}", w.stopped_not_green);
    assert_eq!(w.sim.member_names().len(), 6);
}

#[tokio::test]
async fn an_interrupted_restart_resumes_by_resetting_allocation_and_starting_the_stopped_node() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    {
        let mut w = world.lock().unwrap();
        w.put_setting("persistent", "cluster.routing.allocation.enable", json!("primaries"));
        w.gone_before("logs-d@2.service", false);
    }
    ops::restart(&fleet, &http, &target, &WAITS, false).await.unwrap();
    let l = log(&world);
    assert_eq!(l[..2], RESET_ALLOCATION);
    assert_eq!(l[2], "fleet start logs-d@2.service");
    // Then the full round, from the first node.
    assert_eq!(l[3..8], node_steps("logs-d@1.service")[..]);
    assert_eq!(l.len(), 3 + 6 * 5);
    assert!(!world.lock().unwrap().saw_red());
}

#[tokio::test]
async fn a_restart_never_stops_a_node_while_another_is_missing() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    {
        let mut w = world.lock().unwrap();
        // logs-d3's unit runs, but the node is not in the cluster (it crashed and systemd
        // has not noticed, or it cannot join).
        w.stop_node("logs-d@3.service");
        // Allocation puts its copies elsewhere: green again.
        w.settle();
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
    let mut w = world.lock().unwrap();
    assert!(!w.saw_red(), "never red");
    assert_eq!(w.status_now(), "green");
    let copies = w.sim.copies();
    assert!(copies.iter().flatten().all(|c| c.0 != "logs-d4"), "{copies:?}");
    assert_eq!(target.record.spec.data.count, 3);
    assert_eq!(target.revision, 8);
}

#[tokio::test]
async fn data_scale_down_is_refused_unless_green() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    {
        // Someone else's index asks for more copies than there are data nodes: yellow.
        let mut w = world.lock().unwrap();
        let (s, b) = w.es("PUT", "/other", r#"{"settings":{"number_of_replicas":4}}"#);
        assert_eq!(s, 200, "{b}");
        w.sim.advance(2000);
        assert_eq!(w.status_now(), "yellow");
    }
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
    // Each node left empty: a decommission, never a node down.
    assert_eq!(world.lock().unwrap().max_down(), 0);
    assert!(!world.lock().unwrap().saw_red());
    assert_eq!(fleet.stored.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn master_scale_down_uses_voting_exclusions_one_master_at_a_time() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    // Down to one master: once logs-m3 is excluded, Elasticsearch shrinks the voting
    // configuration to the elected master alone, so logs-m2 can leave safely too.
    ops::scale_down(&fleet, &http, &mut target, Role::Master, 1, &WAITS)
        .await
        .unwrap();
    assert_eq!(
        log(&world),
        [
            "ES voting exclusion logs-m3",
            "fleet stop logs-m@3.service",
            "fleet destroy logs-m@3.service",
            "ES clear voting exclusions",
            "fleet store masters=2 data=3",
            "ES voting exclusion logs-m2",
            "fleet stop logs-m@2.service",
            "fleet destroy logs-m@2.service",
            "ES clear voting exclusions",
            "fleet store masters=1 data=3",
        ]
    );
    assert_eq!(target.record.spec.master.count, 1);
    let mut w = world.lock().unwrap();
    assert_eq!(w.voting_names_now(), ["logs-m1"]);
    assert_eq!(w.status_now(), "green");
    assert!(!w.saw_red());
}

#[tokio::test]
async fn master_scale_down_refuses_below_the_voting_quorum() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    {
        // logs-m2's process hangs: its unit runs, but it has left the cluster; the voting
        // configuration keeps it (three voters, two live).
        let mut w = world.lock().unwrap();
        w.sim.kill("logs-m2");
        w.sim.advance(3000);
        assert_eq!(w.voting_names_now(), ["logs-m1", "logs-m2", "logs-m3"]);
    }
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Master, 2, &WAITS)
        .await
        .unwrap_err();
    assert!(matches!(e, OpsError::Refused(_)), "{e}");
    assert!(e.to_string().contains("logs-m3 cannot be removed"), "{e}");
    assert!(e.to_string().contains("below its quorum of 2"), "{e}");
    assert!(log(&world).is_empty(), "nothing done: {:?}", log(&world));
    assert_eq!(target.record.spec.master.count, 3);
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
        // The previous run moved the shards and destroyed the unit, then stopped.
        w.put_setting(
            "persistent",
            "cluster.routing.allocation.exclude._name",
            json!("logs-d4"),
        );
        w.settle();
        w.gone_before("logs-d@4.service", true);
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
    let crashed_at = w.crashed_at.unwrap();
    assert!(
        w.sim
            .m
            .history
            .iter()
            .any(|h| h.t_ms >= crashed_at && h.status == "yellow"),
        "the crash made the cluster yellow for a while: {:?}",
        w.sim.m.history
    );
    assert!(
        w.stopped_not_green.is_empty(),
        "stopped while not green: {:?}",
        w.stopped_not_green
    );
    assert!(!w.saw_red(), "never red");
    assert_eq!(w.sim.member_names().len(), 6);
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
    assert_eq!(w.allocation_setting(), None);
}

#[tokio::test]
async fn a_node_that_does_not_rejoin_resets_allocation_and_the_restart_resumes() {
    let (world, fleet, http, target) = setup(3, 3, 1).await;
    world.lock().unwrap().no_rejoin = true;
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
        assert_eq!(w.allocation_setting(), None);
        // With allocation back, the missing node's replicas are rebuilt on the others.
        w.settle();
        // logs-d1 finally joins; the next run goes round the whole cluster.
        w.no_rejoin = false;
        w.start_node("logs-d@1.service");
        w.log.clear();
    }
    ops::restart(&fleet, &http, &target, &WAITS, false).await.unwrap();
    let l = log(&world);
    assert_eq!(l[..2], RESET_ALLOCATION);
    assert_eq!(l.len(), 2 + 6 * 5, "{l:?}");
    assert!(!world.lock().unwrap().saw_red());
}

#[tokio::test]
async fn scale_down_refuses_while_allocation_is_restricted() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    world
        .lock()
        .unwrap()
        .put_setting("transient", "cluster.routing.allocation.enable", json!("primaries"));
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
        w.put_setting("transient", "cluster.routing.allocation.enable", Value::Null);
        w.put_setting("persistent", "cluster.routing.allocation.enable", json!("all"));
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
    assert!(world.lock().unwrap().exclusions().is_empty());
    assert_eq!(target.record.spec.master.count, 3, "nothing recorded");

    // Fixed, the same command finishes the job.
    world.lock().unwrap().fleet_fails.clear();
    ops::scale_down(&fleet, &http, &mut target, Role::Master, 2, &WAITS)
        .await
        .unwrap();
    assert_eq!(target.record.spec.master.count, 2);
    assert!(world.lock().unwrap().exclusions().is_empty());
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
    assert!(world.lock().unwrap().exclusions().is_empty());
}

#[tokio::test]
async fn a_master_scale_down_resumed_after_the_destroy_clears_the_stale_exclusion() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    {
        let mut w = world.lock().unwrap();
        // The previous run excluded and destroyed logs-m3, then stopped before clearing.
        let (s, b) = w.es("POST", "/_cluster/voting_config_exclusions?node_names=logs-m3", "");
        assert_eq!(s, 200, "{b}");
        w.gone_before("logs-m@3.service", true);
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
    assert!(world.lock().unwrap().exclusions().is_empty());
}

#[tokio::test]
async fn a_master_scale_down_refuses_while_someone_elses_voting_exclusion_exists() {
    let (world, fleet, http, mut target) = setup(3, 3, 1).await;
    let (s, b) = world
        .lock()
        .unwrap()
        .es("POST", "/_cluster/voting_config_exclusions?node_names=logs-m1", "");
    assert_eq!(s, 200, "{b}");
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
    let (s, b) = world
        .lock()
        .unwrap()
        .es("POST", "/_cluster/voting_config_exclusions?node_names=logs-m3", "");
    assert_eq!(s, 200, "{b}");
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
        .put_setting("persistent", "cluster.routing.allocation.exclude._name", json!("old-x"));
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
    assert!(!world.lock().unwrap().saw_red());
}

#[tokio::test]
async fn a_resumed_data_scale_down_takes_only_its_node_out_of_the_exclusions() {
    let (world, fleet, http, mut target) = setup(3, 4, 1).await;
    {
        let mut w = world.lock().unwrap();
        w.put_setting(
            "persistent",
            "cluster.routing.allocation.exclude._name",
            json!("old-x,logs-d4"),
        );
        w.settle();
        w.gone_before("logs-d@4.service", true);
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
    {
        let mut w = world.lock().unwrap();
        let body = r#"{"settings":{"index.hidden":true,"number_of_replicas":2}}"#;
        let (s, b) = w.es("PUT", "/.ds-metrics-000001", body);
        assert_eq!(s, 200, "{b}");
        w.settle();
    }
    let e = ops::scale_down(&fleet, &http, &mut target, Role::Data, 3, &WAITS)
        .await
        .unwrap_err();
    assert!(matches!(e, OpsError::Refused(_)), "{e}");
    assert!(e.to_string().contains("logs-d4 cannot be removed"), "{e}");
    assert!(e.to_string().contains("keep at least 4 data nodes"), "{e}");
    assert!(log(&world).is_empty());
}
