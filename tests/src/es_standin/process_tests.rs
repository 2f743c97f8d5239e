//! End to end on loopback: the model and nodes over real sockets, first as tasks in this
//! process, then as `es_standin` processes (the binary must be built: see `standin_bin`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::http::request;
use super::model::ModelConfig;
use super::node::{run_node, NodeError, NodeOptions};
use super::server::run_model;
use crate::free_port;

const WAIT: Duration = Duration::from_secs(30);

struct NodeFiles {
    conf: PathBuf,
    http_port: u16,
}

/// Writes a node's elasticsearch.yml (the contract's format) and seed file.
fn write_node(root: &Path, name: &str, roles: &str, initial_masters: Option<&str>, seeds: &[u16]) -> NodeFiles {
    let conf = root.join(name).join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let http_port = free_port().unwrap();
    let transport_port = free_port().unwrap();
    let mut yml = format!(
        "# test node\ncluster.name: \"t\"\ndiscovery.seed_providers: \"file\"\nhttp.port: {http_port}\n\
         network.bind_host: [\"127.0.0.1\"]\nnetwork.publish_host: \"127.0.0.1\"\nnode.attr.zone: \"a\"\n\
         node.name: \"{name}\"\nnode.roles: {roles}\npath.data: \"{}\"\ntransport.port: {transport_port}\n",
        root.join(name).join("data").display()
    );
    if let Some(m) = initial_masters {
        yml.push_str(&format!("cluster.initial_master_nodes: {m}\n"));
    }
    std::fs::write(conf.join("elasticsearch.yml"), yml).unwrap();
    let mut hosts = String::from("# seeds\n");
    for p in seeds.iter().chain([&transport_port]) {
        hosts.push_str(&format!("127.0.0.1:{p}\n"));
    }
    std::fs::write(conf.join("unicast_hosts.txt"), hosts).unwrap();
    NodeFiles { conf, http_port }
}

fn transport_port_of(conf: &Path) -> u16 {
    let yml = std::fs::read_to_string(conf.join("elasticsearch.yml")).unwrap();
    let line = yml.lines().find(|l| l.starts_with("transport.port: ")).unwrap();
    line["transport.port: ".len()..].parse().unwrap()
}

async fn get(addr: &str, target: &str) -> (u16, Value) {
    match request(addr, "GET", target, &[], b"", WAIT).await {
        Ok(r) => (r.status, r.body_json().unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

async fn wait_green(addr: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, b) = get(addr, "/_cluster/health?wait_for_status=green&timeout=1s").await;
        if s == 200 && b["status"] == "green" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not green in time: {s} {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn model_and_two_nodes_in_process_go_green() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model = listener.local_addr().unwrap().to_string();
    let (stop_model, model_stopped) = oneshot::channel::<()>();
    let cfg = ModelConfig {
        recovery_ms: 200,
        fault_detect_ms: 1000,
    };
    tokio::spawn(run_model(cfg, listener, async { model_stopped.await.unwrap_or(()) }));

    let n1 = write_node(dir.path(), "t-m1", r#"["master","data"]"#, Some(r#"["t-m1"]"#), &[]);
    let n2 = write_node(dir.path(), "t-d1", r#"["data"]"#, None, &[transport_port_of(&n1.conf)]);
    let mut stops = vec![];
    let mut handles = vec![];
    for n in [&n1, &n2] {
        let (tx, rx) = oneshot::channel::<()>();
        let opts = NodeOptions {
            conf_dir: n.conf.clone(),
            model: model.clone(),
            overrides: vec![],
        };
        handles.push(tokio::spawn(run_node(opts, async { rx.await.unwrap_or(()) })));
        stops.push(tx);
    }
    let a1 = format!("127.0.0.1:{}", n1.http_port);
    let a2 = format!("127.0.0.1:{}", n2.http_port);
    wait_green(&a2).await;
    let (s, b) = get(&a1, "/").await;
    assert_eq!(
        (s, b["name"].as_str(), b["version"]["number"].as_str()),
        (200, Some("t-m1"), Some("8.15.0"))
    );
    let body = br#"{"settings":{"number_of_shards":2,"number_of_replicas":1}}"#;
    let r = request(&a1, "PUT", "/logs", &[], body, WAIT).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    wait_green(&a2).await;
    let (_, shards) = get(&a2, "/_cat/shards?format=json").await;
    assert_eq!(
        shards
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "STARTED")
            .count(),
        4,
        "{shards}"
    );

    // SIGTERM-equivalent for the data node: it leaves; the cluster turns yellow, never red
    stops.pop().unwrap().send(()).unwrap();
    handles.pop().unwrap().await.unwrap().unwrap();
    let (s, b) = get(&a1, "/_cluster/health").await;
    assert_eq!(
        (s, b["status"].as_str(), b["number_of_nodes"].as_u64()),
        (200, Some("yellow"), Some(1)),
        "{b}"
    );

    // a node started on another node's data directory refuses and is recorded
    let n3 = write_node(dir.path(), "t-d2", r#"["data"]"#, None, &[transport_port_of(&n1.conf)]);
    let yml = std::fs::read_to_string(n3.conf.join("elasticsearch.yml")).unwrap();
    let stolen = dir.path().join("t-d1").join("data");
    let yml = yml.replace(
        &dir.path().join("t-d2").join("data").display().to_string(),
        &stolen.display().to_string(),
    );
    std::fs::write(n3.conf.join("elasticsearch.yml"), yml).unwrap();
    let opts = NodeOptions {
        conf_dir: n3.conf.clone(),
        model: model.clone(),
        overrides: vec![],
    };
    let err = run_node(opts, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, NodeError::ForeignData { .. }), "{err}");
    assert!(
        err.to_string().contains("node t-d2 started on the data of node t-d1"),
        "{err}"
    );

    let (_, hist) = get(&model, "/_standin/history").await;
    let statuses: Vec<&str> = hist["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert!(!statuses.contains(&"red"), "{hist}");
    assert!(statuses.contains(&"yellow"), "{hist}");
    assert_eq!(hist["violations"].as_array().unwrap().len(), 1, "{hist}");
    assert_eq!(hist["max_data_nodes_down_at_once"], 1);
    stop_model.send(()).unwrap();
}

/// The `es_standin` binary next to this test binary (`cargo build -p esfleet-tests --bin
/// es_standin` puts it there), or `$ESFLEET_STANDIN_BIN`.
fn standin_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ESFLEET_STANDIN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("es_standin");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p esfleet-tests --bin es_standin` first (or set ESFLEET_STANDIN_BIN)",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn model_and_two_node_processes_go_green_and_exit_cleanly() {
    use tokio::io::AsyncBufReadExt;
    use tokio::process::Command;

    let bin = standin_bin();
    let dir = tempfile::tempdir().unwrap();
    let mut model = Command::new(&bin)
        .args([
            "model",
            "--listen",
            "127.0.0.1:0",
            "--recovery-ms",
            "200",
            "--fault-detect-ms",
            "1000",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(model.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let model_addr = line.trim().rsplit(' ').next().unwrap().to_string();

    let n1 = write_node(dir.path(), "p-m1", r#"["master","data"]"#, Some(r#"["p-m1"]"#), &[]);
    let n2 = write_node(dir.path(), "p-d1", r#"["data"]"#, None, &[transport_port_of(&n1.conf)]);
    let mut nodes = vec![];
    for n in [&n1, &n2] {
        nodes.push(
            Command::new(&bin)
                .arg("node")
                .env("ES_PATH_CONF", &n.conf)
                .env("STANDIN_MODEL_URL", format!("http://{model_addr}"))
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let a1 = format!("127.0.0.1:{}", n1.http_port);
    wait_green(&a1).await;
    let r = request(
        &a1,
        "PUT",
        "/logs",
        &[],
        br#"{"settings":{"number_of_replicas":1}}"#,
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    wait_green(&format!("127.0.0.1:{}", n2.http_port)).await;

    // SIGTERM: the node tells the model it leaves and exits 0
    let mut d1 = nodes.pop().unwrap();
    let pid = rustix::process::Pid::from_raw(d1.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(WAIT, d1.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let (_, b) = get(&a1, "/_cluster/health").await;
    assert_eq!(
        (b["status"].as_str(), b["number_of_nodes"].as_u64()),
        (Some("yellow"), Some(1)),
        "{b}"
    );

    // a bad elasticsearch.yml: exit 1 with file:line
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("elasticsearch.yml"), "node.name: p-x\n").unwrap();
    let out = Command::new(&bin)
        .arg("node")
        .env("ES_PATH_CONF", &bad)
        .env("STANDIN_MODEL_URL", format!("http://{model_addr}"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("elasticsearch.yml:1"), "{err}");
}
