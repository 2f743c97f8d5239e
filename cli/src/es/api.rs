//! The Elasticsearch REST calls esfleet makes (ES_CONTRACT.md's list), typed. Elasticsearch
//! sends `_cat` values as strings and omits what it does not know, so every field is read
//! leniently: a missing field is empty, never an error.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::http::{EsHttp, HttpError, Method};

/// The setting a rolling restart flips (`primaries` during a node's restart, else unset).
pub const ALLOCATION_ENABLE: &str = "cluster.routing.allocation.enable";
/// The setting a data scale-down uses to move shards off the node to remove.
pub const EXCLUDE_NAME: &str = "cluster.routing.allocation.exclude._name";
/// Excludes by node id: a node placed anew keeps its name but gets a new id (a fresh data
/// directory), so a drain excludes the old placement only.
pub const EXCLUDE_ID: &str = "cluster.routing.allocation.exclude._id";

/// `GET /_cluster/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// `green`, `yellow`, `red`, or empty when Elasticsearch did not say.
    pub status: String,
    pub number_of_nodes: u64,
    pub number_of_data_nodes: u64,
    pub relocating_shards: u64,
    pub initializing_shards: u64,
    pub unassigned_shards: u64,
    /// The `wait_for_status` was not reached within the request's timeout (HTTP 408).
    pub timed_out: bool,
}

impl Health {
    fn from(v: &Value) -> Health {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Health {
            status: v.get("status").and_then(Value::as_str).unwrap_or("").to_string(),
            number_of_nodes: n("number_of_nodes"),
            number_of_data_nodes: n("number_of_data_nodes"),
            relocating_shards: n("relocating_shards"),
            initializing_shards: n("initializing_shards"),
            unassigned_shards: n("unassigned_shards"),
            timed_out: v.get("timed_out").and_then(Value::as_bool).unwrap_or(false),
        }
    }

    /// `yellow: 5 nodes, 3 unassigned, 1 initializing, 0 relocating shards`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} nodes, {} unassigned, {} initializing, {} relocating shards",
            if self.status.is_empty() {
                "unknown"
            } else {
                &self.status
            },
            self.number_of_nodes,
            self.unassigned_shards,
            self.initializing_shards,
            self.relocating_shards
        )
    }
}

/// One line of `GET /_cat/nodes?format=json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatNode {
    pub name: String,
    pub ip: String,
    /// Role letters (`m`, `di`, `-`).
    pub role: String,
    /// `*` on the elected master.
    pub master: bool,
}

impl CatNode {
    /// Holds data (any data role letter: d, h, w, c, f, s).
    pub fn is_data(&self) -> bool {
        self.role.contains(['d', 'h', 'w', 'c', 'f', 's'])
    }
}

/// One line of `GET /_cat/shards?format=json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatShard {
    pub index: String,
    pub shard: String,
    /// `p` or `r`.
    pub prirep: String,
    pub state: String,
    /// `logs-d3`, or while relocating `logs-d3 -> 10.0.0.2 id logs-d2`; empty when unassigned.
    pub node: String,
}

impl CatShard {
    /// Whether this copy is on `node` (or moving from or to it).
    pub fn involves(&self, node: &str) -> bool {
        self.node.split_whitespace().any(|w| w == node)
    }
}

/// One line of `GET /_cat/indices?format=json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatIndex {
    pub index: String,
    pub health: String,
    pub replicas: u32,
}

/// What `GET /_cluster/state/metadata?filter_path=metadata.cluster_coordination` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coordination {
    /// Node ids in the last committed voting configuration.
    pub voting_config: Vec<String>,
    /// Node names currently excluded from voting.
    pub exclusions: Vec<String>,
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn rows(v: Value, what: &str, endpoint_hint: &str) -> Result<Vec<Value>, HttpError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(HttpError::BadAnswer {
            endpoint: endpoint_hint.to_string(),
            why: format!("{what} is not a JSON array: {other}"),
        }),
    }
}

/// Percent-encodes a query value (node names are `[a-z0-9-]`, so this is belt and braces).
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b',' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The calls, on an [`EsHttp`].
pub struct Es<'a> {
    pub http: &'a EsHttp,
}

impl Es<'_> {
    /// `GET /` : (cluster name, version). Where `GET /` is not served (Elasticsearch
    /// without its rest-root module answers 405), the node's own `GET /_nodes/_local`.
    pub async fn root(&self) -> Result<(String, String), HttpError> {
        match self.http.json(Method::Get, "/", None).await {
            Ok(v) => Ok((
                s(&v, "cluster_name"),
                v.get("version").map(|v| s(v, "number")).unwrap_or_default(),
            )),
            Err(HttpError::Es { status: 404 | 405, .. }) => {
                let path = "/_nodes/_local?filter_path=cluster_name,nodes.*.version";
                let v = self.http.json(Method::Get, path, None).await?;
                let version = v
                    .get("nodes")
                    .and_then(Value::as_object)
                    .and_then(|m| m.values().next())
                    .map(|n| s(n, "version"))
                    .unwrap_or_default();
                Ok((s(&v, "cluster_name"), version))
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /_cluster/health`, now.
    pub async fn health(&self) -> Result<Health, HttpError> {
        Ok(Health::from(
            &self.http.json(Method::Get, "/_cluster/health", None).await?,
        ))
    }

    /// `GET /_cluster/health?wait_for_status=<status>&timeout=1s`: Elasticsearch holds the
    /// answer up to a second; a 408 means "not yet" (its body is still the health).
    pub async fn health_wait(&self, status: &str) -> Result<Health, HttpError> {
        let path = format!("/_cluster/health?wait_for_status={status}&timeout=1s");
        let reply = self.http.request(Method::Get, &path, None).await?;
        if reply.status == 408 {
            let mut h = reply.json().ok().map(|v| Health::from(&v)).unwrap_or_default();
            h.timed_out = true;
            return Ok(h);
        }
        if (200..300).contains(&reply.status) {
            return Ok(Health::from(&reply.json()?));
        }
        let (kind, reason) = super::http::es_error(reply.status, &reply.body);
        Err(HttpError::Es {
            endpoint: reply.endpoint,
            what: format!("GET {path}"),
            status: reply.status,
            kind,
            reason,
        })
    }

    /// `PUT /_cluster/settings {"persistent": {key: value}}` (`null` resets).
    pub async fn set_persistent(&self, key: &str, value: Value) -> Result<(), HttpError> {
        let body = json!({ "persistent": { key: value } });
        self.http.json(Method::Put, "/_cluster/settings", Some(&body)).await?;
        Ok(())
    }

    /// `PUT /_cluster/settings` with `key` null in both scopes: whichever one set it, the
    /// setting is back to Elasticsearch's default.
    pub async fn reset_setting(&self, key: &str) -> Result<(), HttpError> {
        let body = json!({ "persistent": { key: Value::Null }, "transient": { key: Value::Null } });
        self.http.json(Method::Put, "/_cluster/settings", Some(&body)).await?;
        Ok(())
    }

    /// A persistent or transient setting's value, from `GET /_cluster/settings?flat_settings=true`
    /// (transient wins, as in Elasticsearch).
    pub async fn setting(&self, key: &str) -> Result<Option<String>, HttpError> {
        let v = self
            .http
            .json(Method::Get, "/_cluster/settings?flat_settings=true", None)
            .await?;
        let get = |scope: &str| {
            v.get(scope)
                .and_then(|s| s.get(key).or_else(|| dotted(s, key)))
                .filter(|x| !x.is_null())
                .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
        };
        Ok(get("transient").or_else(|| get("persistent")))
    }

    pub async fn cat_nodes(&self) -> Result<Vec<CatNode>, HttpError> {
        let v = self.http.json(Method::Get, "/_cat/nodes?format=json", None).await?;
        Ok(rows(v, "_cat/nodes", "_cat/nodes")?.iter().map(cat_node).collect())
    }

    pub async fn cat_shards(&self) -> Result<Vec<CatShard>, HttpError> {
        let v = self.http.json(Method::Get, "/_cat/shards?format=json", None).await?;
        Ok(rows(v, "_cat/shards", "_cat/shards")?
            .iter()
            .map(|r| CatShard {
                index: s(r, "index"),
                shard: s(r, "shard"),
                prirep: s(r, "prirep"),
                state: s(r, "state"),
                node: s(r, "node"),
            })
            .collect())
    }

    pub async fn cat_indices(&self) -> Result<Vec<CatIndex>, HttpError> {
        // Hidden indices (`.ds-*` backing indices, system-like ones) hold shards too: their
        // replica counts gate a data scale-down like any other.
        let v = self
            .http
            .json(Method::Get, "/_cat/indices?format=json&expand_wildcards=all", None)
            .await?;
        Ok(rows(v, "_cat/indices", "_cat/indices")?
            .iter()
            .map(|r| CatIndex {
                index: s(r, "index"),
                health: s(r, "health"),
                replicas: s(r, "rep").parse().unwrap_or(0),
            })
            .collect())
    }

    /// `GET /_nodes`: node id → node name.
    pub async fn node_ids(&self) -> Result<BTreeMap<String, String>, HttpError> {
        let v = self.http.json(Method::Get, "/_nodes", None).await?;
        Ok(v.get("nodes")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(id, n)| (id.clone(), s(n, "name"))).collect())
            .unwrap_or_default())
    }

    pub async fn coordination(&self) -> Result<Coordination, HttpError> {
        let v = self
            .http
            .json(
                Method::Get,
                "/_cluster/state/metadata?filter_path=metadata.cluster_coordination",
                None,
            )
            .await?;
        let c = v
            .pointer("/metadata/cluster_coordination")
            .cloned()
            .unwrap_or(Value::Null);
        let ids = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        Ok(Coordination {
            voting_config: ids("last_committed_config"),
            exclusions: c
                .get("voting_config_exclusions")
                .and_then(Value::as_array)
                .map(|a| {
                    // An exclusion made by id names its node `_absent_` until it is seen.
                    a.iter()
                        .map(|x| match s(x, "node_name") {
                            n if n.is_empty() || n == "_absent_" => s(x, "node_id"),
                            n => n,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// `POST /_cluster/voting_config_exclusions?node_names=<name>`: Elasticsearch answers
    /// once the node has left the voting configuration.
    pub async fn exclude_voter(&self, name: &str) -> Result<(), HttpError> {
        let path = format!("/_cluster/voting_config_exclusions?node_names={}", query_value(name));
        self.http.json(Method::Post, &path, None).await?;
        Ok(())
    }

    /// `DELETE /_cluster/voting_config_exclusions` (after the excluded node left).
    pub async fn clear_voter_exclusions(&self, wait_for_removal: bool) -> Result<(), HttpError> {
        let path = if wait_for_removal {
            "/_cluster/voting_config_exclusions".to_string()
        } else {
            "/_cluster/voting_config_exclusions?wait_for_removal=false".to_string()
        };
        self.http.json(Method::Delete, &path, None).await?;
        Ok(())
    }
}

/// One row of `_cat/nodes?format=json`.
fn cat_node(r: &Value) -> CatNode {
    let role = s(r, "node.role");
    CatNode {
        name: s(r, "name"),
        ip: s(r, "ip"),
        role: if role.is_empty() { s(r, "role") } else { role },
        // OpenSearch names the elected-master column `cluster_manager`; Elasticsearch `master`.
        master: s(r, "master") == "*" || s(r, "cluster_manager") == "*",
    }
}

/// `a.b.c` looked up in nested objects (settings without `flat_settings`).
fn dotted<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    let mut cur = v;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_reads() {
        let h = Health::from(&json!({"status":"yellow","number_of_nodes":5,"unassigned_shards":3}));
        assert_eq!(
            h.summary(),
            "yellow: 5 nodes, 3 unassigned, 0 initializing, 0 relocating shards"
        );
        let sh = CatShard {
            node: "logs-d3 -> 10.0.0.2 abc logs-d2".into(),
            ..Default::default()
        };
        assert!(sh.involves("logs-d3") && sh.involves("logs-d2") && !sh.involves("logs-d"));
        assert!(CatNode {
            role: "di".into(),
            ..Default::default()
        }
        .is_data());
        assert!(!CatNode {
            role: "m".into(),
            ..Default::default()
        }
        .is_data());
        assert_eq!(query_value("logs-m3,x y"), "logs-m3,x%20y");
        // Rows as OpenSearch 2.19 and Elasticsearch 8 print them.
        let os = json!({"ip":"10.88.0.11","node.role":"m","node.roles":"cluster_manager","cluster_manager":"*","name":"logs-m1"});
        assert!(cat_node(&os).master && !cat_node(&os).is_data());
        let es = json!({"ip":"10.88.0.11","node.role":"di","master":"-","name":"logs-d1"});
        assert!(!cat_node(&es).master && cat_node(&es).is_data());
        let v = json!({"cluster": {"routing": {"allocation": {"enable": "primaries"}}}});
        assert_eq!(dotted(&v, ALLOCATION_ENABLE), Some(&json!("primaries")));
    }
}
