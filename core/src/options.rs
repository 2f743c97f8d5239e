//! The `[X-Fleet]` section: fleet's options with fleet's semantics, plus esfleet's
//! (DESIGN.md "Unit options"). Parsed from a unit file by [`crate::unit::UnitFile`].

use serde::{Deserialize, Serialize};

/// What the agent does with a unit when it has lost its lease (DESIGN.md decision 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fence {
    /// Stop the unit before the coordinator could place it elsewhere (the default).
    #[default]
    Stop,
    /// Keep it running: a duplicate is harmless and availability matters more.
    Keep,
}

/// One `MachineMetadata=` condition on one key. Conditions on different keys AND together;
/// values of one key OR together (fleet's semantics). `key!=v` negates: the machine's value
/// must be none of `values` (a machine without the key matches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataCond {
    pub key: String,
    pub negate: bool,
    pub values: Vec<String>,
}

/// `DistinctBy=<key>[:<n>]`: at most `max` units of the group per value of metadata `key`.
/// `host` means the machine itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distinct {
    pub key: String,
    pub max: u32,
}

/// `Resources=cpu=<n> memory=<size> disk=<size>`; zero means "not asked for".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a CPU (`cpu=1.5` → 1500).
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl Resources {
    pub fn is_zero(&self) -> bool {
        *self == Resources::default()
    }
}

/// `HealthCheck=`: an `http://` or `https://` URL that must answer 2xx, or a command that
/// must exit 0. Run by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    Http(String),
    Command(String),
}

/// The parsed `[X-Fleet]` section, specifiers (`%n %N %p %i`) already expanded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct XFleet {
    /// `MachineID=`: only this machine.
    pub machine_id: Option<String>,
    /// `MachineOf=`: the same machine as these units (in fleet, one or more).
    pub machine_of: Vec<String>,
    /// `MachineMetadata=`: grouped by key, in first-seen order.
    pub machine_metadata: Vec<MetadataCond>,
    /// `Conflicts=`: globs over unit names; checked both ways.
    pub conflicts: Vec<String>,
    /// `Global=true`: on every machine matching `machine_metadata` and `conflicts`.
    pub global: bool,
    /// `Replaces=`: take these units' machine; they move elsewhere.
    pub replaces: Vec<String>,
    /// `DistinctBy=`: hard anti-affinity within `group`.
    pub distinct_by: Vec<Distinct>,
    /// `SpreadBy=`: soft, even spread within `group` over values of these keys.
    pub spread_by: Vec<String>,
    /// `Group=`, defaulting to the template prefix (`es-data@3` → `es-data`) or, for a
    /// plain unit, the unit's own name without the suffix.
    pub group: String,
    pub resources: Resources,
    /// `StartAfter=`: globs; launch only once every matching unit is active.
    pub start_after: Vec<String>,
    /// `StartAfterQuorum=true`: launch once a majority of the units matching `StartAfter=`
    /// is active (an Elasticsearch data node needs a master quorum, not every master).
    #[serde(default)]
    pub start_after_quorum: bool,
    /// `Elasticsearch=<cluster>`: this unit is a node of that cluster (`esfleet es apply`):
    /// it is placed only on machines passing Elasticsearch's bootstrap checks, and its
    /// `elasticsearch.yml` and seed hosts are rendered from its placement.
    #[serde(default)]
    pub elasticsearch: Option<String>,
    pub health_check: Option<HealthCheck>,
    /// `HealthCheckCA=`: the PEM file of CA certificates an `https://` check trusts (and
    /// the only ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_ca: Option<String>,
    /// `HealthCheckCredentials=`: a root-owned, mode-0600 file with `user:password` that an
    /// `https://` check sends as HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_credentials: Option<String>,
    /// `MaxUnavailable=`, default 1.
    pub max_unavailable: u32,
    pub fence: Fence,
}

impl XFleet {
    /// The options of a unit with an empty `[X-Fleet]` section: its group is the template
    /// prefix (`es-data@3.service` → `es-data`) or, for a plain unit, its stem;
    /// `MaxUnavailable=1`; `Fence=stop`.
    pub fn for_unit(name: &crate::name::UnitName) -> XFleet {
        XFleet {
            group: name.prefix().to_string(),
            max_unavailable: 1,
            ..XFleet::default()
        }
    }
}

impl MetadataCond {
    /// Whether a machine whose metadata has `value` for this key (None: no such key)
    /// satisfies the condition. `zone=a zone=b` matches a or b; `zone!=a` matches anything
    /// but a, including a machine without a zone.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let listed = value.is_some_and(|v| self.values.iter().any(|x| x == v));
        listed != self.negate
    }
}
