//! Elasticsearch clusters as a workload (issue 8), on nine real hosts in three zones with
//! real systemd, real coordinators and agents, and `esfleet es ...` run in a host.
//!
//! Elasticsearch itself cannot be installed here, so every node runs the test stand-in
//! (`es_standin`, tests/src/es_standin/: a test double of the REST endpoints esfleet
//! calls over a simplified shard model, one `model` process on a tenth host that never
//! fails). The nodes are real systemd services of the generated `plain` units, configured
//! only by the files esfleet renders: a node with a wrong seed file never joins, a node
//! started on another node's data is recorded as a violation, and the model's health turns
//! red when every copy of a shard is lost.
//!
//! One boot, the issue's scenarios in turn:
//! 0. hosts failing Elasticsearch's bootstrap check (vm.max_map_count) get no node, and
//!    `es apply` fails fast saying so; with the sysctl raised, everything is placed;
//! 1. each host's rendered elasticsearch.yml carries its zone, the forced awareness values
//!    and seed hosts pointing at the masters' placements;
//! 2. a rolling restart of all nine nodes: never red, never more than one node down;
//! 3. data nodes 6 → 3, one at a time after their shards moved; 3 → 2 refused with the
//!    replicas rule;
//! 4. a whole zone crashes: never red, its data node waits for its home zone (saying so)
//!    while the cluster goes green on the zones left; when the zone's hosts return, the
//!    node is recreated there with a fresh data directory;
//! 5. a data node's host is cut off: the node is recreated on another host of its zone,
//!    and the old data directory is removed once the host returns.
//!
//! Root only (`ESFLEET_ROOT_TESTS=1`); otherwise the test prints a skip line and passes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use esfleet_tests::hosts::{skip_unless_root, MaxMapCount};
use esfleet_tests::realcluster::{wait_for, HostSpec, RealCluster, Spec, PATIENCE};
use serde_json::Value;

const MODEL_PORT: u16 = 9250;
const ZONES: [&str; 3] = ["za", "zb", "zc"];

fn cluster_toml(model: &str) -> String {
    format!(
        r#"name = "logs"
zones = ["za", "zb", "zc"]
runtime = "plain"
user = "root"
exec = "/opt/esfleet/es_standin"
config_template = "/etc/elasticsearch"
data_root = "/var/lib/esfleet/es"
[env]
STANDIN_MODEL_URL = "http://{model}:{MODEL_PORT}"
[master]
count = 3
[data]
count = 6
"#
    )
}

struct Es<'c> {
    c: &'c RealCluster,
    model: String,
}

impl Es<'_> {
    /// A GET or PUT against the stand-in model, from the control host.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Value> {
        let url = format!("http://{}:{MODEL_PORT}{path}", self.model);
        let mut args = vec!["curl", "-sS", "--max-time", "10", "-X", method, &url];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "-d", b]);
        }
        let out = self.c.hosts().exec_ok("ctl", &args)?;
        serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{method} {path}: {e}: {out}"))
    }

    fn health(&self) -> String {
        self.call("GET", "/_cluster/health", None)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn wait_green(&self, what: &str) {
        wait_for(what, Duration::from_secs(120), Duration::from_millis(500), || {
            Ok((self.health() == "green").then_some(()))
        })
        .unwrap();
    }

    fn history(&self) -> Value {
        self.call("GET", "/_standin/history", None).unwrap()
    }
}

fn esfleet(c: &RealCluster, args: &[&str]) -> (bool, String) {
    let out = c.esfleet(args).unwrap();
    let text = format!("{}{}", out.stdout, out.stderr);
    println!("$ esfleet {}\n{text}", args.join(" "));
    (out.success(), text)
}

/// Statuses the model went through since `from_ms` (its own clock).
fn statuses_since(history: &Value, from_ms: u64) -> Vec<String> {
    history["history"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["t_ms"].as_u64().unwrap_or(0) >= from_ms)
                .filter_map(|t| t["status"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn model_now(history: &Value) -> u64 {
    history["now_ms"].as_u64().unwrap_or(0)
}

#[test]
fn an_elasticsearch_cluster_is_placed_configured_restarted_scaled_and_survives_a_zone() {
    if skip_unless_root(
        "t87_elasticsearch::an_elasticsearch_cluster_is_placed_configured_restarted_scaled_and_survives_a_zone",
    ) {
        return;
    }
    let low = MaxMapCount::set(65_530);
    let mut spec = Spec::zones(&ZONES, 3);
    spec.hosts.push(HostSpec {
        name: "ctl".into(),
        metadata: Vec::new(),
    });
    let t0 = Instant::now();
    let c = RealCluster::boot(spec).expect("boot 10 hosts");
    println!("boot of 10 hosts: {:?}", t0.elapsed());
    let zone_of = |h: &str| h.split('-').next().unwrap_or_default().to_string();
    let es = Es {
        c: &c,
        model: c.ip("ctl").to_string(),
    };
    let toml = cluster_toml(&es.model);
    // The CLI runs in the control host.
    c.write_file(&c.control_host().unwrap(), "/root/es/logs.toml", &toml)
        .unwrap();

    // 0. Bootstrap checks: every host fails vm.max_map_count, so nothing is placed.
    let (ok, text) = esfleet(&c, &["es", "apply", "/root/es/logs.toml", "--timeout", "60s"]);
    assert!(!ok, "apply succeeded with vm.max_map_count 65530: {text}");
    assert!(text.contains("vm.max_map_count"), "{text}");
    // Take the nodes back (inactive), or they would be placed on each host the moment it
    // passes the check, all on the first zone's hosts (running nodes are never moved to
    // rebalance).
    let instances: Vec<String> = (1..=3)
        .map(|i| format!("logs-m@{i}.service"))
        .chain((1..=6).map(|i| format!("logs-d@{i}.service")))
        .collect();
    let mut args = vec!["unload", "--timeout", "60s"];
    args.extend(instances.iter().map(String::as_str));
    let (ok, text) = esfleet(&c, &args);
    assert!(ok, "{text}");
    drop(low);
    let _high = MaxMapCount::set(262_144);
    // The agents re-read their host's facts while they run (every 30 s): no restart.
    wait_for(
        "facts with the raised sysctl",
        PATIENCE,
        Duration::from_millis(300),
        || {
            let out = c.etcdctl(&["get", "--prefix", "/esfleet/machines/", "--print-value-only"])?;
            let low = out
                .stdout
                .lines()
                .filter(|l| l.starts_with('{'))
                .filter(|l| !l.contains("\"max_map_count\":262144"))
                .count();
            Ok((low == 0 && out.success()).then_some(()))
        },
    )
    .unwrap();
    c.hosts()
        .exec_ok(
            "ctl",
            &[
                "systemd-run",
                "--unit=es-standin-model",
                "/opt/esfleet/es_standin",
                "model",
                "--listen",
                &format!("0.0.0.0:{MODEL_PORT}"),
                "--recovery-ms",
                "500",
                // Elasticsearch waits ~30 s before dropping a silent node; 1.5 s (the
                // stand-in's default) dropped every live node during a CPU stall on CI.
                "--fault-detect-ms",
                "5000",
            ],
        )
        .unwrap();
    wait_for("the stand-in model up", PATIENCE, Duration::from_millis(200), || {
        Ok(es.call("GET", "/", None).is_ok().then_some(()))
    })
    .unwrap();
    let (ok, text) = esfleet(&c, &["es", "apply", "/root/es/logs.toml", "--timeout", "120s"]);
    assert!(ok, "{text}");
    let masters: Vec<String> = (1..=3).map(|i| format!("logs-m@{i}.service")).collect();
    let datas: Vec<String> = (1..=6).map(|i| format!("logs-d@{i}.service")).collect();
    let nodes: Vec<&str> = masters.iter().chain(&datas).map(String::as_str).collect();
    let at = c.wait_units_running(&nodes, PATIENCE).unwrap();
    assert!(
        at.values().all(|h| h != "ctl"),
        "a node on the host without a zone: {at:?}"
    );
    es.call(
        "PUT",
        "/logs-2026",
        // Like Elasticsearch, the stand-in rebuilds a lost node's copies elsewhere only
        // after `delayed_timeout` (1 minute by default); 5 s keeps this test short.
        Some(
            r#"{"settings":{"number_of_shards":6,"number_of_replicas":1,"index.unassigned.node_left.delayed_timeout":"5s"}}"#,
        ),
    )
    .unwrap();
    es.wait_green("the new cluster green");

    // 1. The rendered configuration, read in each host.
    let master_ips: Vec<String> = masters.iter().map(|m| format!("{}:9301", c.ip(&at[m]))).collect();
    for unit in &nodes {
        let host = &at[*unit];
        let dir = format!("/etc/esfleet/units/{unit}");
        let yml = c
            .hosts()
            .exec_ok(host, &["cat", &format!("{dir}/elasticsearch.yml")])
            .unwrap();
        let seeds = c
            .hosts()
            .exec_ok(host, &["cat", &format!("{dir}/unicast_hosts.txt")])
            .unwrap();
        assert!(
            yml.contains(&format!("node.attr.zone: \"{}\"", zone_of(host))),
            "{unit} on {host}:\n{yml}"
        );
        assert!(
            yml.contains("cluster.routing.allocation.awareness.force.zone.values: [\"za\",\"zb\",\"zc\"]"),
            "{unit}:\n{yml}"
        );
        assert!(
            yml.contains(&format!("network.publish_host: \"{}\"", c.ip(host))),
            "{unit}:\n{yml}"
        );
        for ip in &master_ips {
            assert!(seeds.contains(ip), "{unit}: {ip} missing from\n{seeds}");
        }
    }
    let mut master_zones: Vec<String> = masters.iter().map(|m| zone_of(&at[m])).collect();
    master_zones.sort();
    assert_eq!(master_zones, ZONES, "one master per zone");
    // Bootstrapped once the masters formed the cluster: initial_master_nodes is gone.
    wait_for("bootstrapped", PATIENCE, Duration::from_millis(500), || {
        let yml = c.hosts().exec_ok(
            &at[&masters[0]],
            &["cat", &format!("/etc/esfleet/units/{}/elasticsearch.yml", masters[0])],
        )?;
        Ok((!yml.contains("initial_master_nodes")).then_some(()))
    })
    .unwrap();
    let (ok, text) = esfleet(&c, &["es", "status", "logs"]);
    assert!(ok && text.contains("green"), "{text}");

    // 2. Rolling restart of all nine nodes.
    let from = model_now(&es.history());
    let before: BTreeMap<&str, u64> = nodes
        .iter()
        .map(|u| (*u, c.unit_times(&at[*u], u).unwrap().active_enter_us))
        .collect();
    let t = Instant::now();
    let (ok, text) = esfleet(
        &c,
        &["es", "restart", "logs", "--timeout", "120s", "--es-timeout", "120s"],
    );
    assert!(ok, "{text}");
    println!("rolling restart of 9 nodes: {:?}", t.elapsed());
    for u in &nodes {
        assert!(
            c.unit_times(&at[*u], u).unwrap().active_enter_us > before[u],
            "{u} was not restarted"
        );
    }
    let h = es.history();
    let seen = statuses_since(&h, from);
    assert!(!seen.iter().any(|s| s == "red"), "red during the restart: {seen:?}");
    let most_down = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["t_ms"].as_u64().unwrap_or(0) >= from)
        .map(|t| t["down"].as_array().map_or(0, Vec::len))
        .max()
        .unwrap_or(0);
    let over: Vec<&Value> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["t_ms"].as_u64().unwrap_or(0) >= from && t["down"].as_array().map_or(0, Vec::len) > 1)
        .collect();
    assert!(
        most_down <= 1,
        "more than one node down at once during the restart: {most_down}: {over:#?}"
    );

    // 3. Scale data nodes 6 → 3, then refuse 3 → 2 (replicas 1: 1 + 1 < 2 is false).
    let from = model_now(&es.history());
    let (ok, text) = esfleet(
        &c,
        &[
            "es",
            "scale-down",
            "logs",
            "--data",
            "3",
            "--timeout",
            "120s",
            "--es-timeout",
            "120s",
        ],
    );
    assert!(ok, "{text}");
    let copies = c.live_copies(&["logs-d@*"]).unwrap();
    let mut left: Vec<&String> = copies.keys().collect();
    left.sort();
    assert_eq!(
        left,
        ["logs-d@1.service", "logs-d@2.service", "logs-d@3.service"],
        "{copies:?}"
    );
    let seen = statuses_since(&es.history(), from);
    assert!(!seen.iter().any(|s| s == "red"), "red during the scale-down: {seen:?}");
    es.wait_green("green after the scale-down");
    let (ok, text) = esfleet(&c, &["es", "scale-down", "logs", "--data", "2", "--timeout", "60s"]);
    assert!(!ok, "3 → 2 data nodes with 1 replica was allowed: {text}");
    assert!(text.contains("replica"), "{text}");
    assert_eq!(c.live_copies(&["logs-d@*"]).unwrap().len(), 3);

    // 4. Zone zc crashes. Its data node's home is zc (forced awareness): it waits for the
    //    zone instead of moving, and says why; the cluster goes green on the two zones left
    //    (one replica: both copies fit there). Two of zc's hosts come back (the third ran a
    //    coordinator member, whose data a reboot would lose): the node is placed there anew
    //    on a fresh data directory, and the cluster is green.
    let at = c.wait_units_running(&nodes[..6], PATIENCE).unwrap();
    let lost_zone = "zc";
    let lost_data: Vec<&str> = nodes[3..6]
        .iter()
        .copied()
        .filter(|u| zone_of(&at[*u]) == lost_zone)
        .collect();
    assert_eq!(
        lost_data,
        ["logs-d@3.service"],
        "data nodes in their home zones: {at:?}"
    );
    let unit = lost_data[0];
    let path_data = |host: &str, unit: &str| -> String {
        let yml = c
            .hosts()
            .exec_ok(host, &["cat", &format!("/etc/esfleet/units/{unit}/elasticsearch.yml")])
            .unwrap();
        yml.lines()
            .find_map(|l| l.strip_prefix("path.data: "))
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    let lost_path = path_data(&at[unit], unit);
    let from = model_now(&es.history());
    let t = Instant::now();
    let zone_hosts: Vec<String> = c.names().into_iter().filter(|h| zone_of(h) == lost_zone).collect();
    for h in &zone_hosts {
        c.crash(h).unwrap();
    }
    wait_for(
        "the lost data node's reason naming its home zone",
        PATIENCE,
        Duration::from_millis(500),
        || {
            let files = c.esfleet_ok(&["list-unit-files", "--fields", "unit,reason", "--no-legend"])?;
            let line = files.lines().find(|l| l.contains(unit)).unwrap_or_default().to_string();
            Ok(line.contains("home zone is zc").then_some(line))
        },
    )
    .map(|line| println!("{line}"))
    .unwrap();
    es.wait_green("green on the two zones left");
    println!("zone {lost_zone} crashed → green on two zones: {:?}", t.elapsed());
    assert!(
        c.live_copies(&[unit]).unwrap().get(unit).is_none_or(|hs| hs.is_empty()),
        "{unit} left its home zone"
    );
    let rebooted: Vec<&String> = zone_hosts
        .iter()
        .filter(|h| !c.coordinator_hosts().contains(h))
        .collect();
    for h in &rebooted {
        c.reboot(h).unwrap();
    }
    let moved = wait_for(
        "the lost data node active in its zone again",
        PATIENCE,
        Duration::from_millis(200),
        || {
            let copies = c.live_copies(&[unit])?;
            Ok(copies
                .get(unit)
                .and_then(|hs| hs.iter().find(|h| zone_of(h) == lost_zone).cloned()))
        },
    )
    .unwrap();
    println!("zone {lost_zone} back → {unit} active on {moved}: {:?}", t.elapsed());
    es.wait_green("green with the zone back");
    let h = es.history();
    let seen = statuses_since(&h, from);
    let entries: Vec<&Value> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["t_ms"].as_u64().unwrap_or(0) >= from)
        .collect();
    assert!(
        !seen.iter().any(|s| s == "red"),
        "red after the zone loss: {entries:#?}"
    );
    assert!(
        seen.iter().any(|s| s == "yellow"),
        "losing copies never showed: {seen:?}"
    );
    let violations = h["violations"].as_array().cloned().unwrap_or_default();
    assert!(violations.is_empty(), "the stand-in saw violations: {violations:?}");
    // The recreated node got a fresh data directory (a new generation).
    let path = path_data(&moved, unit);
    assert_ne!(path, lost_path, "recreated on its old data dir");
    let listing = c.hosts().exec_ok(&moved, &["ls", "-A", &path]).unwrap();
    assert!(
        listing.lines().all(|f| f.starts_with("standin-node")),
        "the recreated node's data dir holds old data: {listing}"
    );
    let (ok, text) = esfleet(&c, &["es", "status", "logs"]);
    assert!(ok && text.contains("green"), "{text}");

    // 5. A data node's host is cut off past its lease: the node is fenced there and
    //    recreated on another host of its zone, and the scheduler leaves a tombstone for its old data dir,
    //    released once the node is healthy elsewhere. When the host comes back, its agent
    //    removes that dir and the tombstone.
    let at = c
        .wait_units_running(&["logs-d@1.service", "logs-d@2.service", "logs-d@3.service"], PATIENCE)
        .unwrap();
    // Not a coordinator's host: with zc's member gone, cutting another would lose quorum.
    let (unit, host) = at
        .iter()
        .find(|(_, h)| !c.coordinator_hosts().contains(h))
        .map(|(u, h)| (u.clone(), h.clone()))
        .expect("a data node on a host without a coordinator");
    let yml = c
        .hosts()
        .exec_ok(&host, &["cat", &format!("/etc/esfleet/units/{unit}/elasticsearch.yml")])
        .unwrap();
    let old_path = yml
        .lines()
        .find_map(|l| l.strip_prefix("path.data: "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    c.hosts().exec_ok(&host, &["test", "-d", &old_path]).unwrap();
    let from = model_now(&es.history());
    c.partition(&host).unwrap();
    let tombstone = format!("/esfleet/retired/{}/{unit}", c.machine_id(&host));
    wait_for("the tombstone", PATIENCE, Duration::from_millis(300), || {
        let out = c.etcdctl(&["get", &tombstone, "--print-value-only"])?;
        Ok(out.stdout.contains(&old_path).then_some(()))
    })
    .unwrap();
    let moved = wait_for(
        "the cut-off data node active elsewhere",
        PATIENCE,
        Duration::from_millis(200),
        || {
            let copies = c.live_copies(&[unit.as_str()])?;
            Ok(copies
                .get(&unit)
                .and_then(|hs| hs.iter().find(|h| **h != host).cloned()))
        },
    )
    .unwrap();
    println!("{unit} cut off on {host} → active on {moved}");
    assert_eq!(zone_of(&moved), zone_of(&host), "{unit} left its home zone");
    es.wait_green("green with the node recreated");
    // Written held; released by the scheduler once the node is healthy again elsewhere (a
    // data node's check means green), before the host returns.
    wait_for("the tombstone released", PATIENCE, Duration::from_millis(300), || {
        let out = c.etcdctl(&["get", &tombstone, "--print-value-only"])?;
        Ok(out.stdout.contains("\"released\":true").then_some(()))
    })
    .unwrap();
    c.heal(&host).unwrap();
    wait_for(
        "the old data dir removed and the tombstone gone",
        PATIENCE,
        Duration::from_millis(300),
        || {
            let gone = !c.hosts().exec(&host, &["test", "-e", &old_path])?.success();
            let key = c.etcdctl(&["get", &tombstone, "--print-value-only"])?;
            Ok((gone && key.success() && key.stdout.trim().is_empty()).then_some(()))
        },
    )
    .unwrap();
    let seen = statuses_since(&es.history(), from);
    assert!(!seen.iter().any(|s| s == "red"), "red during the cut-off: {seen:?}");
    assert_eq!(c.where_active(&unit).unwrap(), [moved], "{unit} runs twice");
}
