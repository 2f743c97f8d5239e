//! The `node` process: what a generated unit runs instead of `bin/elasticsearch`. It reads
//! its `elasticsearch.yml` and seed file, keeps its identity in `path.data`, binds its HTTP
//! and transport ports like a real node would, heartbeats the model, and forwards every
//! REST request to the model under its own node id.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use super::api::es_error;
use super::config::{parse_seed_file, parse_yml, ConfigError, NodeSettings};
use super::http::{self, Response};
use super::model::NodeInfo;
use super::server::NODE_HEADER;

const HEARTBEAT: Duration = Duration::from_millis(200);
/// Generous: forwarded health/exclusion requests wait inside the model up to their timeout.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);
/// The identity file a node keeps in `path.data`.
pub const IDENTITY_FILE: &str = "standin-node.json";
pub const SEED_FILE: &str = "unicast_hosts.txt";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a stand-in identity file: {source}")]
    Identity {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "node {node} started on the data of node {owner} ({path}): a node must never reuse another node's data \
         directory; give it an empty path.data"
    )]
    ForeignData { node: String, owner: String, path: PathBuf },
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a node process needs besides its files.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `$ES_PATH_CONF`: holds `elasticsearch.yml` and `unicast_hosts.txt`.
    pub conf_dir: PathBuf,
    /// The model's `host:port`.
    pub model: String,
    /// `-E key=value` overrides, applied over the yml (values parsed as JSON, else strings).
    pub overrides: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: String,
    node_name: String,
}

fn fresh_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:012x}{:06x}",
        nanos as u64 & 0xffff_ffff_ffff,
        std::process::id() & 0xff_ffff
    )
}

/// Loads the settings: the yml plus `-E` overrides.
pub fn load_settings(opts: &NodeOptions) -> Result<NodeSettings, NodeError> {
    let path = opts.conf_dir.join("elasticsearch.yml");
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let mut map = parse_yml(&path, &text)?;
    for (k, v) in &opts.overrides {
        let value = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
        map.insert(k.clone(), value);
    }
    Ok(NodeSettings::from_yml(&path, &map)?)
}

/// Reads or creates the node's identity in `path.data`; another node's identity is an error.
fn identity(settings: &NodeSettings) -> Result<Identity, NodeError> {
    let dir = &settings.path_data;
    std::fs::create_dir_all(dir).map_err(|source| NodeError::Io {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes).map_err(|source| NodeError::Identity {
                path: path.clone(),
                source,
            })?;
            if id.node_name != settings.node_name {
                return Err(NodeError::ForeignData {
                    node: settings.node_name.clone(),
                    owner: id.node_name,
                    path,
                });
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity {
                node_id: fresh_id(),
                node_name: settings.node_name.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&id).expect("identity serializes");
            std::fs::write(&path, bytes).map_err(|source| NodeError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(id)
        }
        Err(source) => Err(NodeError::Io { path, source }),
    }
}

/// Binds `port` on every host; port 0 takes the port the first bind got for all of them.
async fn bind_all(what: &'static str, hosts: &[String], port: u16) -> Result<(Vec<TcpListener>, u16), NodeError> {
    let mut port = port;
    let mut out = vec![];
    for host in hosts {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let l = TcpListener::bind(&addr)
            .await
            .map_err(|source| NodeError::Bind { what, addr, source })?;
        port = l.local_addr().map(|a| a.port()).unwrap_or(port);
        out.push(l);
    }
    Ok((out, port))
}

fn seeds(settings: &NodeSettings, conf_dir: &Path) -> Vec<String> {
    let mut seeds = settings.seed_hosts.clone();
    if settings.file_seeds {
        // A missing file means no seeds, as in Elasticsearch (which logs a warning).
        if let Ok(text) = std::fs::read_to_string(conf_dir.join(SEED_FILE)) {
            seeds.extend(parse_seed_file(&text));
        }
    }
    seeds
}

async fn post_model(model: &str, path: &str, body: &serde_json::Value) -> Result<Response, http::HttpError> {
    let bytes = serde_json::to_vec(body).expect("JSON serializes");
    http::request(model, "POST", path, &[], &bytes, Duration::from_secs(5)).await
}

/// Runs a node until `shutdown` (then it tells the model it leaves). Errors before serving
/// (bad config, another node's data, ports taken) are returned; a foreign data directory is
/// also reported to the model as a violation.
pub async fn run_node(opts: NodeOptions, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let settings = load_settings(&opts)?;
    let id = match identity(&settings) {
        Ok(id) => id,
        Err(e) => {
            if matches!(e, NodeError::ForeignData { .. }) {
                let _ = post_model(&opts.model, "/_standin/violation", &json!({"message": e.to_string()})).await;
            }
            return Err(e);
        }
    };
    let (http_listeners, http_port) = bind_all("http.port", &settings.bind_hosts, settings.http_port).await?;
    let (transport_listeners, transport_port) =
        bind_all("transport.port", &settings.bind_hosts, settings.transport_port).await?;
    let incarnation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    eprintln!(
        "es_standin node {} ({}): http {:?} port {http_port}, transport port {transport_port}, model {}",
        settings.node_name, id.node_id, settings.bind_hosts, opts.model
    );
    let seed_settings = settings.clone();
    let info = move |seeds: Vec<String>| NodeInfo {
        cluster_name: settings.cluster_name.clone(),
        node_name: settings.node_name.clone(),
        node_id: id.node_id.clone(),
        incarnation,
        roles: settings.roles.clone(),
        attributes: settings.attributes.clone(),
        publish_address: settings.publish_host.clone(),
        transport_port,
        http_port,
        seeds,
        initial_master_nodes: settings.initial_master_nodes.clone(),
        awareness_attributes: settings.awareness_attributes.clone(),
        forced_awareness: settings.forced_awareness.clone(),
        path_data: settings.path_data.display().to_string(),
    };
    let first = info(seeds(&seed_settings, &opts.conf_dir));
    let node_id = first.node_id.clone();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let model = opts.model.clone();
        let conf_dir = opts.conf_dir.clone();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT);
            let mut warned = false;
            loop {
                every.tick().await;
                // unicast_hosts.txt is re-read on every beat: esfleet rewrites it in place.
                let hb = info(seeds(&seed_settings, &conf_dir));
                let body = serde_json::to_value(&hb).expect("NodeInfo serializes");
                match post_model(&model, "/_standin/node/heartbeat", &body).await {
                    Ok(r) if r.status == 200 => warned = false,
                    Ok(r) => eprintln!(
                        "es_standin node: model refused heartbeat: {}",
                        String::from_utf8_lossy(&r.body)
                    ),
                    Err(e) if !warned => {
                        eprintln!("es_standin node: heartbeat failed (will retry): {e}");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
        });
    }
    for l in transport_listeners {
        // Nothing speaks the transport protocol here; the port is bound so clashes show.
        tasks.spawn(async move {
            loop {
                let _ = l.accept().await;
            }
        });
    }
    for l in http_listeners {
        let model = opts.model.clone();
        let node_id = node_id.clone();
        tasks.spawn(async move {
            let handler = move |req: http::Request| {
                let model = model.clone();
                let node_id = node_id.clone();
                async move {
                    let headers = [(NODE_HEADER, node_id.as_str())];
                    match http::request(&model, &req.method, &req.target, &headers, &req.body, FORWARD_TIMEOUT).await {
                        Ok(resp) => resp,
                        Err(e) => Response::json(
                            503,
                            &es_error(
                                503,
                                "standin_model_unreachable_exception",
                                &format!("stand-in model: {e}"),
                            ),
                        ),
                    }
                }
            };
            http::serve(l, handler, std::future::pending()).await;
        });
    }
    shutdown.await;
    tasks.abort_all();
    if let Err(e) = post_model(&opts.model, "/_standin/node/leave", &json!({"node_id": node_id})).await {
        eprintln!("es_standin node: telling the model we leave failed: {e}");
    }
    Ok(())
}
