//! The real search engine in root tests: where `scripts/es-engine` and `scripts/es-image`
//! left it, a client for its REST API (curl run in a host of the cluster), a health
//! sampler, and the checks every real-engine cluster must pass once applied.
//!
//! The engine is OpenSearch 2.19 (tests/es-engine/); nodes run as esfleet's generated
//! units, plain or in nspawn containers, configured only by the files esfleet renders.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde_json::Value;

use crate::realcluster::{wait_for, HostSpec, RealCluster, Spec, PATIENCE};

/// The engine's install (`bin/opensearch`, `lib/`, `config/`): `ESFLEET_ENGINE`, else where
/// `scripts/es-engine` puts it. Panics, naming the fix, when it is not there: with root
/// tests on, a missing engine is a failure, not a skip.
pub fn engine_home() -> PathBuf {
    built(
        "ESFLEET_ENGINE",
        "/var/cache/esfleet/engine/opensearch",
        "bin/opensearch",
        "scripts/es-engine",
    )
}

/// The nspawn image (Debian 12 + a JRE + the engine): `ESFLEET_IMAGE`, else where
/// `scripts/es-image` puts it.
pub fn image() -> PathBuf {
    built(
        "ESFLEET_IMAGE",
        "/var/cache/esfleet/images/opensearch",
        "usr/share/opensearch/bin/opensearch",
        "scripts/es-image",
    )
}

fn built(var: &str, default: &str, inside: &str, script: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.join(inside).is_file(),
        "no {inside} in {}: build it with {script} (scripts/test does), or point {var} at one",
        path.display()
    );
    std::fs::canonicalize(&path).unwrap()
}

/// The zones of [`boot_zones`]'s hosts.
pub const ZONES: [&str; 3] = ["za", "zb", "zc"];

/// The real-engine topology: zones za, zb, zc of two hosts each (`za-1` ...) and `ctl`
/// without a zone; coordinator members on ctl, za-1 and zb-1, so zone zc's hosts can be
/// crashed and rebooted (a rebooted host comes back with an empty disk, which a member
/// cannot survive). `toml` is written to `/root/es/logs.toml` in the control host.
pub fn boot_zones(toml: &str) -> anyhow::Result<RealCluster> {
    let mut spec = Spec::zones(&ZONES, 2);
    spec.hosts.push(HostSpec {
        name: "ctl".into(),
        metadata: Vec::new(),
    });
    let spec = spec.coordinators_on(&["ctl", "za-1", "zb-1"]);
    let t0 = Instant::now();
    let c = RealCluster::boot(spec).context("booting 7 hosts")?;
    println!("boot of 7 hosts: {:?}", t0.elapsed());
    c.write_file(&c.control_host()?, "/root/es/logs.toml", toml)?;
    Ok(c)
}

/// Cluster `logs` of OpenSearch over [`ZONES`]: 3 masters (one per zone) and 3 data nodes
/// (one per home zone), small heaps. `runtime`: the `runtime = ...` line and its
/// `exec`/`image`/`config_template` lines; `settings`: `[settings]` lines.
pub fn cluster_toml(runtime: &str, settings: &str) -> String {
    format!(
        "name = \"logs\"\nflavor = \"opensearch\"\nzones = [\"za\", \"zb\", \"zc\"]\n{runtime}\n\
         [master]\ncount = 3\nmemory = \"768m\"\nheap = \"256m\"\n\
         [data]\ncount = 3\nmemory = \"1g\"\nheap = \"384m\"\n[settings]\n{settings}"
    )
}

/// A node's REST endpoint: (host, http port).
pub type Endpoint = (String, u16);

/// The engine's REST API, called with curl from `from` (a host that never fails).
pub struct Engine<'c> {
    pub c: &'c RealCluster,
    pub from: String,
}

impl Engine<'_> {
    /// One call to one node; the body parsed as JSON (an HTTP error is an error).
    pub fn call(&self, to: &Endpoint, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Value> {
        let url = format!("http://{}:{}{path}", self.c.ip(&to.0), to.1);
        let mut args = vec!["curl", "-sS", "--fail-with-body", "--max-time", "5", "-X", method, &url];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = self.c.hosts().exec_ok(&self.from, &args)?;
        serde_json::from_str(&out).map_err(|e| anyhow!("{method} {path}: {e}: {out}"))
    }

    /// The first of `nodes` that answers.
    pub fn any(&self, nodes: &[Endpoint], method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Value> {
        let mut last = anyhow!("no node to ask");
        for n in nodes {
            match self.call(n, method, path, body) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `green`, `yellow`, `red`, or `unreachable` when no node answers.
    pub fn health(&self, nodes: &[Endpoint]) -> String {
        self.any(nodes, "GET", "/_cluster/health", None)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_string))
            .unwrap_or_else(|| "unreachable".into())
    }

    pub fn wait_status(&self, nodes: &[Endpoint], want: &str, what: &str, timeout: Duration) {
        wait_for(what, timeout, Duration::from_millis(500), || {
            Ok((self.health(nodes) == want).then_some(()))
        })
        .unwrap();
    }

    /// Every node in the cluster: (node id, node name), from `GET /_nodes`.
    pub fn node_ids(&self, nodes: &[Endpoint]) -> anyhow::Result<Vec<(String, String)>> {
        let v = self.any(nodes, "GET", "/_nodes", None)?;
        let m = v["nodes"].as_object().ok_or_else(|| anyhow!("no nodes in {v}"))?;
        Ok(m.iter()
            .map(|(id, n)| (id.clone(), n["name"].as_str().unwrap_or_default().to_string()))
            .collect())
    }

    /// Waits until a node named `name` with an id other than `old_id` is in the cluster (a
    /// node recreated on an empty data directory); returns when it was seen.
    pub fn wait_recreated(
        &self,
        nodes: &[Endpoint],
        name: &str,
        old_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_for(
            &format!("{name} recreated and joined"),
            timeout,
            Duration::from_millis(250),
            || {
                let ids = self.node_ids(nodes)?;
                Ok(ids.iter().any(|(id, n)| n == name && id != old_id).then_some(()))
            },
        )
    }

    /// Documents in `index` (`_count`).
    pub fn count(&self, nodes: &[Endpoint], index: &str) -> anyhow::Result<u64> {
        let v = self.any(nodes, "GET", &format!("/{index}/_count"), None)?;
        v["count"].as_u64().ok_or_else(|| anyhow!("no count in {v}"))
    }

    /// Creates `index` with `shards` × (1 + `replicas`) copies and `docs` documents.
    pub fn index_docs(&self, nodes: &[Endpoint], index: &str, shards: u32, replicas: u32, docs: usize) {
        let settings = format!(r#"{{"settings":{{"number_of_shards":{shards},"number_of_replicas":{replicas}}}}}"#);
        self.any(nodes, "PUT", &format!("/{index}"), Some(&settings)).unwrap();
        let mut bulk = String::new();
        for i in 0..docs {
            bulk.push_str(&format!("{{\"index\":{{\"_id\":\"{i}\"}}}}\n{{\"n\":{i}}}\n"));
        }
        let v = self
            .any(nodes, "POST", &format!("/{index}/_bulk?refresh=true"), Some(&bulk))
            .unwrap();
        assert_eq!(v["errors"], false, "{v}");
    }
}

/// Samples the cluster's health every `every` from `nodes` while `f` runs.
pub fn sample_health<T>(
    e: &Engine<'_>,
    nodes: &[Endpoint],
    every: Duration,
    f: impl FnOnce() -> T,
) -> (T, Vec<String>) {
    let stop = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let h = e.health(nodes);
                samples.lock().unwrap().push(h);
                if let Some(rest) = every.checked_sub(started.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        // Stops the sampler also when `f` panics, or the scope would wait for it forever.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _guard = StopOnDrop(&stop);
        f()
    });
    (out, samples.into_inner().unwrap())
}

/// How many samples had each status, for the test's output.
pub fn tally(samples: &[String]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for s in samples {
        *by.entry(s.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{} samples ({})", samples.len(), parts.join(", "))
}

/// The zone of a host named `<zone>-<n>` ([`crate::realcluster::Spec::zones`]).
pub fn zone_of(host: &str) -> String {
    host.split('-').next().unwrap_or_default().to_string()
}

/// A cluster as `es apply` left it: where each node's unit runs, and every node's endpoint.
pub struct Applied {
    /// unit → host.
    pub at: BTreeMap<String, String>,
    pub everyone: Vec<Endpoint>,
}

impl Applied {
    /// The host of node `logs-d2` (`<cluster>-<letter><n>`).
    pub fn host_of_node(&self, node: &str) -> anyhow::Result<String> {
        let (cluster, rest) = node.rsplit_once('-').context("a node name has a '-'")?;
        let (letter, n) = rest.split_at(1);
        self.at
            .get(&format!("{cluster}-{letter}@{n}.service"))
            .cloned()
            .with_context(|| format!("no unit runs node {node}"))
    }
}

/// Waits until the `masters` + `datas` units of cluster `name` run and all their nodes have
/// joined one cluster.
pub fn wait_formed(
    c: &RealCluster,
    e: &Engine<'_>,
    name: &str,
    (masters, datas): (u32, u32),
    (master_http, data_http): (u16, u16),
) -> Applied {
    let units: Vec<String> = (1..=masters)
        .map(|i| format!("{name}-m@{i}.service"))
        .chain((1..=datas).map(|i| format!("{name}-d@{i}.service")))
        .collect();
    let refs: Vec<&str> = units.iter().map(String::as_str).collect();
    let at = c.wait_units_running(&refs, PATIENCE).unwrap();
    let everyone: Vec<Endpoint> = units
        .iter()
        .map(|u| {
            let port = if u.contains("-m@") { master_http } else { data_http };
            (at[u].clone(), port)
        })
        .collect();
    let want = u64::from(masters + datas);
    wait_for(
        "every node in one cluster",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || {
            let v = e.any(&everyone, "GET", "/_cluster/health", None)?;
            Ok((v["number_of_nodes"].as_u64() == Some(want)).then_some(()))
        },
    )
    .unwrap();
    Applied {
        at: at.into_iter().collect(),
        everyone,
    }
}

/// What a cluster applied over `zones` must show: every node runs with forced awareness
/// over the zones (from the rendered file), each node's zone attribute is its host's zone,
/// and every shard of `index` has its copies in distinct zones (all of them when there
/// are as many copies as zones).
pub fn check_zone_safety(e: &Engine<'_>, a: &Applied, zones: &[&str], index: &str) {
    let settings = e
        .any(&a.everyone, "GET", "/_nodes/settings?flat_settings=true", None)
        .unwrap();
    let nodes = settings["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), a.everyone.len(), "{settings}");
    for n in nodes.values() {
        let s = &n["settings"];
        assert_eq!(s["cluster.routing.allocation.awareness.attributes"], "zone", "{n}");
        assert_eq!(
            s["cluster.routing.allocation.awareness.force.zone.values"],
            serde_json::json!(zones),
            "{n}"
        );
    }
    let attrs = e.any(&a.everyone, "GET", "/_cat/nodeattrs?format=json", None).unwrap();
    let zone_attrs: Vec<(&str, &str)> = attrs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["attr"] == "zone")
        .map(|r| (r["node"].as_str().unwrap(), r["value"].as_str().unwrap()))
        .collect();
    assert_eq!(zone_attrs.len(), a.everyone.len(), "{attrs}");
    for (node, zone) in &zone_attrs {
        assert_eq!(*zone, zone_of(&a.host_of_node(node).unwrap()), "{node}: {attrs}");
    }
    let shards = e
        .any(&a.everyone, "GET", &format!("/_cat/shards/{index}?format=json"), None)
        .unwrap();
    let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in shards.as_array().unwrap() {
        assert_eq!(r["state"], "STARTED", "{shards}");
        let host = a.host_of_node(r["node"].as_str().unwrap()).unwrap();
        by_shard
            .entry(r["shard"].as_str().unwrap().to_string())
            .or_default()
            .push(zone_of(&host));
    }
    assert!(!by_shard.is_empty(), "{shards}");
    for (shard, zs) in by_shard {
        let distinct: BTreeSet<&String> = zs.iter().collect();
        assert_eq!(
            distinct.len(),
            zs.len(),
            "shard {shard}'s copies share a zone: {shards}"
        );
    }
}
