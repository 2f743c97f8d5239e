//! A stand-in node's configuration: the rendered `elasticsearch.yml` (the restricted format
//! of the contract: `#` comments and `dotted.key: <JSON value>` lines) and the file-based
//! seed provider's `unicast_hosts.txt`. Anything else is refused with file:line, so a
//! rendering bug shows up as a failed node, not as a silently different cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::model::as_list;

/// Elasticsearch's default transport port for seed entries without one.
const DEFAULT_TRANSPORT_PORT: u16 = 9300;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}: {text:?} (expected `dotted.key: <JSON value>` or a `#` comment)")]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
        problem: String,
    },
    #[error("{path}:{line}: key {key:?} appears twice")]
    Duplicate { path: PathBuf, line: usize, key: String },
    #[error("{path}: setting {key}: {problem}")]
    Setting {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// Parses the contract's `elasticsearch.yml` format into dotted key → JSON value.
pub fn parse_yml(path: &Path, text: &str) -> Result<BTreeMap<String, Value>, ConfigError> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |problem: &str| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            text: raw.to_string(),
            problem: problem.to_string(),
        };
        let (key, value) = line.split_once(": ").ok_or_else(|| syntax("no `: ` after the key"))?;
        let key_ok = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !key.starts_with('.')
            && !key.ends_with('.');
        if !key_ok {
            return Err(syntax("the key is not a dotted setting name"));
        }
        let value: Value = serde_json::from_str(value.trim())
            .map_err(|e| syntax(&format!("the value is not JSON ({e}); quote strings")))?;
        if value.is_object() {
            return Err(syntax("objects are not allowed; use dotted keys"));
        }
        if out.insert(key.to_string(), value).is_some() {
            return Err(ConfigError::Duplicate {
                path: path.to_path_buf(),
                line: i + 1,
                key: key.to_string(),
            });
        }
    }
    Ok(out)
}

/// Parses `unicast_hosts.txt`: `#` comments, one `host[:port]` per line.
pub fn parse_seed_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(with_port)
        .collect()
}

fn with_port(entry: &str) -> String {
    let has_port = match entry.rsplit_once(':') {
        Some((host, port)) => port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']')),
        None => false,
    };
    if has_port {
        entry.to_string()
    } else {
        format!("{entry}:{DEFAULT_TRANSPORT_PORT}")
    }
}

/// The settings a stand-in node uses, read once from its `elasticsearch.yml`.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub cluster_name: String,
    pub node_name: String,
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub bind_hosts: Vec<String>,
    pub publish_host: String,
    pub http_port: u16,
    pub transport_port: u16,
    /// `discovery.seed_hosts` (the file's entries are added at every re-read).
    pub seed_hosts: Vec<String>,
    /// Whether `discovery.seed_providers` includes `file`.
    pub file_seeds: bool,
    pub initial_master_nodes: Vec<String>,
    pub awareness_attributes: Vec<String>,
    pub forced_awareness: BTreeMap<String, Vec<String>>,
    pub path_data: PathBuf,
}

fn special_host(h: &str) -> String {
    match h {
        "_local_" | "localhost" => "127.0.0.1".into(),
        other => other.to_string(),
    }
}

impl NodeSettings {
    pub fn from_yml(path: &Path, s: &BTreeMap<String, Value>) -> Result<NodeSettings, ConfigError> {
        let err = |key: &str, problem: &str| ConfigError::Setting {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem: problem.to_string(),
        };
        let string = |key: &str| -> Result<Option<String>, ConfigError> {
            match s.get(key) {
                None => Ok(None),
                Some(Value::String(v)) => Ok(Some(v.clone())),
                Some(_) => Err(err(key, "must be a string")),
            }
        };
        let port = |key: &str, default: u16| -> Result<u16, ConfigError> {
            match s.get(key) {
                None => Ok(default),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| err(key, "must be a port number (0..65535)")),
                Some(Value::String(v)) => v.parse().map_err(|_| {
                    err(
                        key,
                        "must be a single port number (ranges are not supported by the stand-in)",
                    )
                }),
                Some(_) => Err(err(key, "must be a port number")),
            }
        };
        let list = |key: &str| s.get(key).map(as_list).unwrap_or_default();
        let node_name = string("node.name")?.ok_or_else(|| err("node.name", "is required by the stand-in"))?;
        let path_data = match s.get("path.data") {
            Some(Value::String(p)) => PathBuf::from(p),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                PathBuf::from(a[0].as_str().unwrap_or_default())
            }
            Some(_) => return Err(err("path.data", "must be one directory")),
            None => {
                return Err(err(
                    "path.data",
                    "is required by the stand-in (it keeps the node id there)",
                ))
            }
        };
        let roles = match s.get("node.roles") {
            None => ["master", "data", "ingest", "remote_cluster_client"]
                .iter()
                .map(|r| r.to_string())
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|r| {
                    r.as_str()
                        .map(String::from)
                        .ok_or_else(|| err("node.roles", "must be a list of strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err("node.roles", "must be a JSON list like [\"data\",\"ingest\"]")),
        };
        let mut attributes = BTreeMap::new();
        for (k, v) in s {
            if let Some(attr) = k.strip_prefix("node.attr.") {
                let v = v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
                attributes.insert(attr.to_string(), v);
            }
        }
        let bind_hosts: Vec<String> = if s.contains_key("network.bind_host") {
            list("network.bind_host")
        } else {
            list("network.host")
        };
        let mut bind_hosts: Vec<String> = bind_hosts.iter().map(|h| special_host(h)).collect();
        if bind_hosts.is_empty() {
            bind_hosts.push("127.0.0.1".into());
        }
        if let Some(bad) = bind_hosts.iter().find(|h| h.starts_with('_')) {
            return Err(err(
                "network.bind_host",
                &format!("{bad} is not supported by the stand-in; use IP addresses"),
            ));
        }
        let publish_host = match string("network.publish_host")? {
            Some(h) => special_host(&h),
            None => list("network.host")
                .first()
                .map(|h| special_host(h))
                .unwrap_or_else(|| bind_hosts[0].clone()),
        };
        let publish_host = if publish_host == "0.0.0.0" {
            "127.0.0.1".into()
        } else {
            publish_host
        };
        let attrs = list("cluster.routing.allocation.awareness.attributes");
        let mut forced = BTreeMap::new();
        for attr in &attrs {
            let key = format!("cluster.routing.allocation.awareness.force.{attr}.values");
            if s.contains_key(&key) {
                forced.insert(attr.clone(), list(&key));
            }
        }
        Ok(NodeSettings {
            cluster_name: string("cluster.name")?.unwrap_or_else(|| "elasticsearch".into()),
            node_name,
            roles,
            attributes,
            bind_hosts,
            publish_host,
            http_port: port("http.port", 9200)?,
            transport_port: port("transport.port", 9300)?,
            seed_hosts: list("discovery.seed_hosts").iter().map(|h| with_port(h)).collect(),
            file_seeds: list("discovery.seed_providers").iter().any(|p| p == "file"),
            initial_master_nodes: list("cluster.initial_master_nodes"),
            awareness_attributes: attrs,
            forced_awareness: forced,
            path_data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YML: &str = r#"# Generated by esfleet for node logs-d3
cluster.name: "logs"
cluster.routing.allocation.awareness.attributes: "zone"
cluster.routing.allocation.awareness.force.zone.values: ["a","b","c"]
discovery.seed_providers: "file"
http.port: 9200
network.bind_host: ["127.0.0.1","10.77.0.3"]
network.publish_host: "10.77.0.3"
node.attr.rack: "r1"
node.attr.zone: "a"
node.name: "logs-d3"
node.roles: ["data","ingest"]
path.data: "/var/lib/esfleet/es/logs-d3/17"
transport.port: 9300
"#;

    #[test]
    fn contract_example_parses() {
        let p = Path::new("elasticsearch.yml");
        let s = NodeSettings::from_yml(p, &parse_yml(p, YML).unwrap()).unwrap();
        assert_eq!(s.cluster_name, "logs");
        assert_eq!(s.roles, vec!["data", "ingest"]);
        assert_eq!(s.attributes["zone"], "a");
        assert_eq!(s.bind_hosts, vec!["127.0.0.1", "10.77.0.3"]);
        assert_eq!(s.publish_host, "10.77.0.3");
        assert_eq!(s.forced_awareness["zone"], vec!["a", "b", "c"]);
        assert!(s.file_seeds);
        assert!(s.initial_master_nodes.is_empty());
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let p = Path::new("/x/elasticsearch.yml");
        let e = parse_yml(p, "# ok\nnode.name: logs-d3\n").unwrap_err().to_string();
        assert!(
            e.contains("/x/elasticsearch.yml:2") && e.contains("quote strings"),
            "{e}"
        );
        let e = parse_yml(p, "cluster:\n  name: x\n").unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
        let e = parse_yml(p, "a.b: 1\na.b: 2\n").unwrap_err().to_string();
        assert!(e.contains(":2") && e.contains("twice"), "{e}");
    }

    #[test]
    fn seed_file_entries_get_default_port() {
        let seeds = parse_seed_file("# masters\n10.0.0.1:9301\n10.0.0.2 # comment\n\n[::1]:9300\n");
        assert_eq!(seeds, vec!["10.0.0.1:9301", "10.0.0.2:9300", "[::1]:9300"]);
    }
}
