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

/// Elasticsearch 8 (`bin/elasticsearch`, `lib/`, `modules/`): `ESFLEET_ENGINE_ES8`, else
/// where `scripts/es-engine elasticsearch` puts it.
pub fn es8_home() -> PathBuf {
    built(
        "ESFLEET_ENGINE_ES8",
        "/var/cache/esfleet/engine/elasticsearch",
        "bin/elasticsearch",
        "scripts/es-engine elasticsearch",
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
/// `exec`/`image`/`config_template` lines (and `[http]`); `settings`: `[settings]` lines
/// (without the security plugin's, it is turned off).
pub fn cluster_toml(runtime: &str, settings: &str) -> String {
    // The security plugin is off unless the settings configure it.
    let off = if settings.contains("plugins.security.") {
        ""
    } else {
        SECURITY_OFF
    };
    cluster_toml_of("opensearch", runtime, &format!("{off}{settings}"))
}

/// [`cluster_toml`] for either flavour, `settings` as given.
pub fn cluster_toml_of(flavor: &str, runtime: &str, settings: &str) -> String {
    format!(
        "name = \"logs\"\nflavor = \"{flavor}\"\nzones = [\"za\", \"zb\", \"zc\"]\n{runtime}\n\
         [master]\ncount = 3\nmemory = \"768m\"\nheap = \"256m\"\n\
         [data]\ncount = 3\nmemory = \"1g\"\nheap = \"384m\"\n[settings]\n{settings}"
    )
}

/// The user the security plugin knows esfleet (and the tests) as.
pub const SECURE_USER: &str = "esfleet";

/// A secured cluster's files: the engine's security plugin on (TLS on HTTP and transport,
/// users), its configuration template with a CA, one node certificate, the plugin's
/// configuration and a user whose password was made up for this run, and esfleet's
/// credentials file. Written into this machine's filesystem before the hosts boot, so
/// every host sees them (their roots are overlays of it) and a rebooted host still does.
/// Removed when dropped.
pub struct Secured {
    /// The configuration template (`config_template`): log4j2.properties, certs/,
    /// opensearch-security/.
    pub conf: PathBuf,
    /// `user:password`, root's, mode 0600.
    pub credentials: PathBuf,
    pub password: String,
}

impl Drop for Secured {
    fn drop(&mut self) {
        if let Some(dir) = self.conf.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Secured {
    pub fn ca_file(&self) -> String {
        format!("{}/certs/ca.pem", self.conf.display())
    }

    /// cluster.toml's top-level lines (after `runtime`): the template, the files copied
    /// from it, and `[http]`.
    pub fn toml_lines(&self) -> String {
        format!(
            "config_template = \"{}\"\nconfig_files = [\"certs\", \"opensearch-security\"]\n\
             [http]\nca_file = \"{}\"\ncredentials_file = \"{}\"\n",
            self.conf.display(),
            self.ca_file(),
            self.credentials.display()
        )
    }

    /// The `[settings]` that turn the security plugin on with these files.
    pub fn settings() -> String {
        let mut s = String::new();
        for layer in ["transport", "http"] {
            for (k, f) in [
                ("pemcert_filepath", "node.pem"),
                ("pemkey_filepath", "node-key.pem"),
                ("pemtrustedcas_filepath", "ca.pem"),
            ] {
                s.push_str(&format!("\"plugins.security.ssl.{layer}.{k}\" = \"certs/{f}\"\n"));
            }
        }
        s.push_str(
            "\"plugins.security.ssl.http.enabled\" = true\n\
             \"plugins.security.ssl.transport.enforce_hostname_verification\" = false\n\
             \"plugins.security.allow_default_init_securityindex\" = true\n\
             \"plugins.security.nodes_dn\" = [\"CN=esfleet-node\"]\n",
        );
        s
    }
}

/// The settings that leave the engine's security plugin off (it is installed, as in the
/// distribution, and refuses to start unconfigured otherwise).
pub const SECURITY_OFF: &str = "\"plugins.security.disabled\" = true\n";

/// The test hosts' addresses: host i of a testbed is 10.88.0.(10 + i) (tests/hosts), so
/// every address a testbed of any size can give a host.
const HOST_ADDRESSES: std::ops::RangeInclusive<u8> = 11..=254;

/// Makes [`Secured`]'s files for the engine at `engine`: openssl makes the certificates
/// (the node certificate names 127.0.0.1, for the agents' health checks, and every test
/// host's address), the security plugin's own tool hashes the password.
pub fn secure(engine: &std::path::Path) -> anyhow::Result<Secured> {
    use std::os::unix::fs::{chown, PermissionsExt};
    use std::process::Command;
    let run = |dir: &std::path::Path, cmd: &str, args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(cmd)
            .args(args)
            .current_dir(dir)
            .output()
            .with_context(|| format!("running {cmd}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // Not /tmp or /var/tmp: the hosts mount their own there. One directory per test
    // process; those of processes that are gone (killed before their Drop ran) go first.
    let root = PathBuf::from("/var/cache/esfleet/test-tls");
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
        if pid.is_some_and(|p| !PathBuf::from(format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let base = root.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&base);
    let conf = base.join("conf");
    let certs = conf.join("certs");
    let sec = conf.join("opensearch-security");
    std::fs::create_dir_all(&certs)?;
    std::fs::create_dir_all(&sec)?;
    let work = base.join("work");
    std::fs::create_dir_all(&work)?;
    run(
        &work,
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "7",
            "-subj",
            "/CN=esfleet-test-ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ],
    )?;
    run(
        &work,
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=esfleet-node",
            "-keyout",
            "node-key.raw",
            "-out",
            "node.csr",
        ],
    )?;
    // The engine reads PKCS#8 keys only.
    run(
        &work,
        "openssl",
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "node-key.raw",
            "-out",
            "node-key.pem",
        ],
    )?;
    let mut sans = vec!["IP:127.0.0.1".to_string()];
    sans.extend(HOST_ADDRESSES.map(|i| format!("IP:10.88.0.{i}")));
    std::fs::write(
        work.join("ext"),
        format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n",
            sans.join(",")
        ),
    )?;
    run(
        &work,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "node.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "7",
            "-out",
            "node.pem",
            "-extfile",
            "ext",
        ],
    )?;
    for f in ["ca.pem", "node.pem", "node-key.pem"] {
        std::fs::copy(work.join(f), certs.join(f))?;
    }
    let plugin = engine.join("plugins/opensearch-security");
    for e in std::fs::read_dir(plugin.join("config"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yml") {
            std::fs::copy(&p, sec.join(p.file_name().unwrap()))?;
        }
    }
    let password = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_string();
    let cp = format!("{}/lib/*:{}/*", engine.display(), plugin.display());
    let hash = run(
        &work,
        "java",
        &["-cp", &cp, "org.opensearch.security.tools.Hasher", "-p", &password],
    )?;
    let hash = hash
        .lines()
        .rfind(|l| l.starts_with("$2"))
        .ok_or_else(|| anyhow!("the Hasher printed no bcrypt hash: {hash}"))?;
    std::fs::write(
        sec.join("internal_users.yml"),
        format!(
            "_meta:\n  type: \"internalusers\"\n  config_version: 2\n\
             {SECURE_USER}:\n  hash: \"{hash}\"\n  reserved: true\n  backend_roles: [\"admin\"]\n"
        ),
    )?;
    std::fs::copy(engine.join("config/log4j2.properties"), conf.join("log4j2.properties"))?;
    std::fs::remove_dir_all(&work)?;
    // Readable by the engine's user (its unit copies the template as that user), no one else.
    let gid = std::fs::read_to_string("/etc/group")?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"opensearch")).then(|| f.get(2).and_then(|g| g.parse::<u32>().ok()))?
        })
        .ok_or_else(|| anyhow!("no group opensearch: scripts/es-engine creates it"))?;
    for dir in [&base, &conf, &certs, &sec] {
        chown(dir, Some(0), Some(gid))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    for dir in [&conf, &certs, &sec] {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_file() {
                chown(&p, Some(0), Some(gid))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640))?;
            }
        }
    }
    let credentials = base.join("logs.credentials");
    std::fs::write(&credentials, format!("{SECURE_USER}:{password}\n"))?;
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600))?;
    Ok(Secured {
        conf,
        credentials,
        password,
    })
}

/// A node's REST endpoint: (host, http port).
pub type Endpoint = (String, u16);

/// The engine's REST API, called with curl from `from` (a host that never fails).
pub struct Engine<'c> {
    pub c: &'c RealCluster,
    pub from: String,
    /// A secured cluster: https trusting this CA file, as this `user:password`.
    pub tls: Option<(String, String)>,
}

impl Engine<'_> {
    /// One call to one node; the body parsed as JSON (an HTTP error is an error).
    pub fn call(&self, to: &Endpoint, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Value> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}:{}{path}", self.c.ip(&to.0), to.1);
        let mut args = vec!["curl", "-sS", "--fail-with-body", "--max-time", "5", "-X", method, &url];
        if let Some((ca, user)) = &self.tls {
            args.extend(["--cacert", ca, "-u", user]);
        }
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
        // `any` asks the next node when one does not answer in time, and an index creation
        // that timed out on a busy machine may still have happened: then the next node
        // says it exists, which is what was asked for (the tests' index names are unique).
        match self.any(nodes, "PUT", &format!("/{index}"), Some(&settings)) {
            Ok(_) => {}
            Err(e) if format!("{e:#}").contains("resource_already_exists_exception") => {}
            Err(e) => panic!("creating {index}: {e:#}"),
        }
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

/// Runs `esfleet ARGS` in the control host (up to 15 minutes) while the health is sampled
/// every 500 ms from `nodes`: (exited 0, its output, the samples, how long it took).
pub fn esfleet_sampled(
    c: &RealCluster,
    e: &Engine<'_>,
    nodes: &[Endpoint],
    args: &[&str],
) -> (bool, String, Vec<String>, Duration) {
    let t = Instant::now();
    let ((ok, text), statuses) = sample_health(e, nodes, Duration::from_millis(500), || {
        let host = c.control_host().unwrap();
        let out = c.esfleet_within(&host, Duration::from_secs(900), args).unwrap();
        let text = format!("{}{}", out.stdout, out.stderr);
        println!("$ esfleet {}\n{text}", args.join(" "));
        (out.success(), text)
    });
    (ok, text, statuses, t.elapsed())
}

/// `esfleet es restart logs` of every node: it succeeds, no health sample is red, and the
/// cluster ends green with `docs` documents in index `docs`.
pub fn rolling_restart(c: &RealCluster, e: &Engine<'_>, nodes: &[Endpoint], what: &str, docs: u64) {
    let args = ["es", "restart", "logs", "--timeout", "180s", "--es-timeout", "180s"];
    let (ok, text, statuses, took) = esfleet_sampled(c, e, nodes, &args);
    assert!(ok, "{text}");
    println!("es restart of {what}: {took:?}; health: {}", tally(&statuses));
    assert!(
        !statuses.iter().any(|s| s == "red"),
        "red during the restart: {statuses:?}"
    );
    e.wait_status(nodes, "green", "green after the restart", Duration::from_secs(120));
    assert_eq!(e.count(nodes, "docs").unwrap(), docs);
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
