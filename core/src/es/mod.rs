//! Elasticsearch clusters as a workload (issue 8; the contract is ES_CONTRACT.md): the
//! operator's `cluster.toml` ([`parse_spec`] → [`ClusterSpec`]), the template units it
//! generates ([`templates`], [`instances`]), each node's `elasticsearch.yml` and seed hosts
//! rendered from its placement ([`render_files`]), the host bootstrap checks the scheduler
//! places by ([`bootstrap_check`]), and the rules that keep the CLI's removals from turning
//! a cluster red ([`data_removal_check`], [`master_removal_check`]).
//!
//! Pure like the rest of `core`: text in, text out. Talking to Elasticsearch, the store and
//! systemd happens in the CLI, the coordinator and the agent.

mod checks;
mod render;
mod spec;
mod units;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::model::MachineRecord;
use crate::name::UnitName;

pub use checks::{bootstrap_check, data_removal_check, master_removal_check, MIN_MAX_MAP_COUNT, MIN_THREADS_MAX};
pub use render::{data_dir, render_files, MasterAddr, ELASTICSEARCH_YML, UNICAST_HOSTS_TXT};
pub use spec::{
    default_heap, jvm_size, parse_es_size, parse_spec, unit_size, ClusterSpec, Flavor, HttpSpec, Location, RoleSpec,
    Runtime, SpecError, MAX_HEAP_BYTES, MAX_NODE_NAME,
};
pub use units::templates;

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Master-eligible only (`node.roles: ["master"]`, OpenSearch's `["cluster_manager"]`).
    Master,
    /// Holds shards (`node.roles: ["data","ingest"]`).
    Data,
    /// Routes requests only (`node.roles: []`).
    Coordinating,
}

impl Role {
    /// Masters first: the order units are generated and started in.
    pub const ALL: [Role; 3] = [Role::Master, Role::Data, Role::Coordinating];

    /// The table name in `cluster.toml`: `master`, `data`, `coordinating`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Data => "data",
            Role::Coordinating => "coordinating",
        }
    }

    /// The letter in unit and node names: `logs-m@1.service`, `logs-d3`.
    pub fn letter(self) -> char {
        match self {
            Role::Master => 'm',
            Role::Data => 'd',
            Role::Coordinating => 'c',
        }
    }

    /// `node.roles` of such a node in a cluster of this flavour.
    pub fn node_roles(self, flavor: Flavor) -> Vec<&'static str> {
        match self {
            Role::Master => vec![flavor.master_role()],
            Role::Data => vec!["data", "ingest"],
            Role::Coordinating => vec![],
        }
    }

    fn from_letter(c: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| c.len() == 1 && c.starts_with(r.letter()))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `/esfleet/es/<name>` ([`crate::keys::es_cluster`]): the applied spec, and whether the
/// cluster has formed once (after which `cluster.initial_master_nodes` is never rendered
/// again: bootstrapping twice would split it into two clusters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub spec: ClusterSpec,
    #[serde(default)]
    pub bootstrapped: bool,
}

/// One node of a cluster, as its unit names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub role: Role,
    /// 1-based: `logs-d3` is ordinal 3.
    pub ordinal: u32,
    /// `node.name`, the unit's `%p%i`: `logs-d3`.
    pub name: String,
}

impl ClusterSpec {
    /// `logs-m@.service`.
    pub fn template(&self, role: Role) -> UnitName {
        UnitName::new(&format!("{}@.service", self.prefix(role))).expect("a validated cluster name makes a unit name")
    }

    /// `logs-m@2.service`.
    pub fn unit(&self, role: Role, ordinal: u32) -> UnitName {
        UnitName::new(&format!("{}@{ordinal}.service", self.prefix(role)))
            .expect("a validated cluster name makes a unit name")
    }
}

/// Every node's unit, masters first, then data, then coordinating nodes, each in ordinal
/// order `1..=count`.
pub fn instances(spec: &ClusterSpec) -> Vec<UnitName> {
    Role::ALL
        .into_iter()
        .flat_map(|role| (1..=spec.role(role).count).map(move |i| spec.unit(role, i)))
        .collect()
}

/// The node a unit runs, if the unit is an instance `<cluster>-<m|d|c>@<n>.service` of
/// this cluster. The ordinal is not checked against the role's count: during a scale-down
/// the highest ordinals still run (and need their files) until they are removed. A
/// non-canonical ordinal (`@01`, `@0`) is not a node.
pub fn node_of(spec: &ClusterSpec, unit: &UnitName) -> Option<Node> {
    if unit.unit_type() != "service" {
        return None;
    }
    let instance = unit.instance().filter(|i| !i.is_empty())?;
    let letter = unit.prefix().strip_prefix(&spec.name)?.strip_prefix('-')?;
    let role = Role::from_letter(letter)?;
    if instance.starts_with('0') || !instance.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ordinal: u32 = instance.parse().ok()?;
    Some(Node {
        role,
        ordinal,
        name: spec.node_name(role, ordinal),
    })
}

/// The zone a data node lives in when the cluster has forced awareness over `zones`:
/// `zones[(ordinal - 1) % zones.len()]`, so `logs-d1, d2, d3` go to zones a, b, c, `d4` to a
/// again, and removing the highest ordinals (a scale-down) keeps the zones balanced.
///
/// Why a data node is tied to one zone: under forced awareness Elasticsearch puts at most
/// `ceil(copies / zones)` copies of a shard in any zone, so a data node moved out of a lost
/// zone into a surviving one can hold none of the copies its zone lost, and once the zone
/// returns it would have no data node there: the cluster would stay yellow for good. A
/// data node whose zone is gone waits for it; one whose host is lost is placed anew on
/// another host of its zone. Masters are already one per zone (`DistinctBy=zone`) and
/// coordinating nodes hold no shards: neither has a home zone. `None` without zones.
pub fn home_zone<'s>(spec: &'s ClusterSpec, node: &Node) -> Option<&'s str> {
    if node.role != Role::Data || spec.zones.is_empty() || node.ordinal == 0 {
        return None;
    }
    let i = (node.ordinal as usize - 1) % spec.zones.len();
    Some(spec.zones[i].as_str())
}

/// The zones of a set of machines (their `zone` metadata), sorted and without duplicates:
/// what `esfleet es apply` fixes in the record when `cluster.toml` names none.
pub fn machine_zones<'a>(machines: impl IntoIterator<Item = &'a MachineRecord>) -> Vec<String> {
    let mut zones: Vec<String> = machines
        .into_iter()
        .filter_map(|m| m.metadata.get("zone").filter(|z| !z.is_empty()).cloned())
        .collect();
    zones.sort();
    zones.dedup();
    zones
}
