//! The records stored under `/esfleet/` (DESIGN.md "Keys"), as JSON values. These types
//! are the contract between the Fleet service, the scheduler, the agent and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::name::UnitName;
use crate::options::{Fence, XFleet};

/// fleet's target states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Stored in the cluster, not on any machine.
    Inactive,
    /// On a machine, files written and loaded by systemd, not started.
    Loaded,
    /// On a machine and started.
    Launched,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Inactive => "inactive",
            DesiredState::Loaded => "loaded",
            DesiredState::Launched => "launched",
        }
    }
}

impl std::fmt::Display for DesiredState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DesiredState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inactive" => Ok(DesiredState::Inactive),
            "loaded" => Ok(DesiredState::Loaded),
            "launched" => Ok(DesiredState::Launched),
            other => Err(format!(
                "unknown state {other:?}; expected inactive, loaded or launched"
            )),
        }
    }
}

/// fleet's unit hash: SHA-1 of the unit file's text, in hex.
pub fn unit_hash(text: &str) -> String {
    sha1_smol::Sha1::from(text.as_bytes()).digest().to_string()
}

/// `units/<name>`: written by the Fleet service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    pub name: UnitName,
    /// The unit file as submitted (for an instance without a file of its own: the template's).
    pub text: String,
    /// [`unit_hash`] of `text`.
    pub hash: String,
    pub desired: DesiredState,
    /// `[X-Fleet]`, parsed and validated when submitted, specifiers expanded for this name.
    pub options: XFleet,
    /// True when the unit file has an `[Install]` section: its schedule entries say `enable`.
    #[serde(default)]
    pub has_install: bool,
}

/// Facts the agent detects on its host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostFacts {
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Free bytes on the filesystem of the agent's data path.
    pub disk_free_bytes: u64,
    pub max_map_count: u64,
    /// The open-file limit units get (systemd's `DefaultLimitNOFILE`).
    pub nofile_limit: u64,
    /// `kernel.threads-max`.
    pub threads_max: u64,
}

/// `machines/<id>`: written by the agent, on its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// `/etc/machine-id`.
    pub id: String,
    pub hostname: String,
    /// The host's address other hosts reach it at (shown to operators, given to units).
    pub address: String,
    /// Where the agent serves status/journal requests (`host:port`), if it does.
    #[serde(default)]
    pub agent_endpoint: String,
    /// From the agent's config: `zone`, `rack`, any `key=value`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub facts: HostFacts,
    #[serde(default)]
    pub agent_version: String,
}

impl MachineRecord {
    /// A metadata value as placement sees it: `host` is the machine itself, `hostname` the
    /// detected hostname unless the config sets one; anything else comes from metadata.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        match key {
            "host" | "machine" => Some(&self.id),
            _ => self.metadata.get(key).map(String::as_str).or(match key {
                "hostname" => Some(&self.hostname),
                _ => None,
            }),
        }
    }
}

/// `schedule/<machine>/<unit>`: written by the scheduler only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    pub unit: UnitName,
    /// The unit file to write (the agent watches only its own schedule, never `units/`).
    pub text: String,
    pub hash: String,
    /// `Loaded` or `Launched` (an `Inactive` unit has no schedule entry).
    pub desired: DesiredState,
    /// A placement generation: new for every placement of the unit on a machine, so a unit
    /// moved to a new machine gets a fresh data directory (`ESFLEET_GENERATION`).
    pub generation: u64,
    #[serde(default)]
    pub fence: Fence,
    /// True when the unit file has an `[Install]` section: the agent enables it.
    #[serde(default)]
    pub enable: bool,
    /// The placement facts, written into the unit's drop-in as `Environment=`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Configuration files rendered for this placement (an Elasticsearch node's
    /// `elasticsearch.yml` and seed hosts): file name → text. The agent writes them into the
    /// unit's config directory (`ESFLEET_CONFIG_DIR`) before starting it, and rewrites them
    /// when they change without restarting the unit (the seed-hosts file is re-read by
    /// Elasticsearch itself; other settings take effect at the next restart).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// `states/<machine>/<unit>`: written by the agent, on its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnitState {
    /// The unit's name as scheduled; a string, because a hostile name is reported here too.
    pub unit: String,
    /// systemd's LoadState / ActiveState / SubState.
    pub load: String,
    pub active: String,
    pub sub: String,
    /// When the unit entered its current active state (µs since the epoch, from systemd).
    pub since_usec: u64,
    /// Hash of the unit file the agent wrote.
    pub hash: String,
    pub generation: u64,
    /// systemd's NRestarts for services.
    pub n_restarts: u32,
    /// Why the agent could not act on this unit (bad name, file too large, write failed, ...).
    pub error: Option<String>,
    /// The result of the unit's `HealthCheck=`, run by the agent; `None` when the unit has
    /// no check or it has not run yet. Drains wait for `Some(true)` on a replacement.
    pub healthy: Option<bool>,
}

impl UnitState {
    pub fn is_active(&self) -> bool {
        self.active == "active" && self.error.is_none()
    }
    pub fn is_failed(&self) -> bool {
        self.active == "failed" || self.error.is_some()
    }
}

/// `drain/<machine>`: the request (Fleet service) and its progress (scheduler).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainRecord {
    /// Who asked and why, for operators.
    pub reason: String,
    /// Units still on the machine, written by the scheduler.
    pub remaining: Vec<String>,
    /// True once nothing is left on the machine.
    pub done: bool,
}

/// `retired/<machine>/<unit>`: the data a placement left on a machine that was lost (its
/// record gone past the loss margin) when the scheduler placed the unit elsewhere. Written
/// by the scheduler next to the deletion of the schedule entry, not yet `released`. The
/// scheduler releases it once the node runs again elsewhere in a newer generation, active
/// and healthy by its `HealthCheck=` (a data node's check passes only while the cluster is
/// green), so the old directory no longer holds a shard copy the cluster lacks. Once the machine's agent is back and the record released, it removes
/// `paths` (only inside its `--data-root`, and only if the unit is not scheduled there with
/// this `generation`), then deletes the key.
///
/// Only Elasticsearch nodes leave one: their data is large, and a recreated node starts
/// from an empty directory of a new generation, so the old one is garbage once the node
/// runs elsewhere. An unload, a stop or a drain leaves no record (the machine was alive and
/// the data stays, as with any unit).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RetiredRecord {
    pub unit: UnitName,
    /// The generation of the placement that was removed.
    pub generation: u64,
    /// Absolute directories the placement used (`<data_root>/<node>/<generation>`).
    #[serde(default)]
    pub paths: Vec<String>,
    /// The Elasticsearch cluster the node belongs to.
    #[serde(default)]
    pub cluster: String,
    /// Set by the scheduler once the node is healthy elsewhere; only then may the data go.
    #[serde(default)]
    pub released: bool,
}

/// The `Environment=` facts a placement gives its unit (DESIGN.md decision 7).
pub fn placement_env(machine: &MachineRecord, generation: u64) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("ESFLEET_MACHINE_ID".to_string(), machine.id.clone());
    env.insert("ESFLEET_HOSTNAME".to_string(), machine.hostname.clone());
    env.insert("ESFLEET_ADDRESS".to_string(), machine.address.clone());
    env.insert("ESFLEET_GENERATION".to_string(), generation.to_string());
    for (k, v) in &machine.metadata {
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.insert(format!("ESFLEET_{key}"), v.clone());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fleets_sha1() {
        assert_eq!(unit_hash(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }

    #[test]
    fn env_from_machine() {
        let m = MachineRecord {
            id: "m1".into(),
            hostname: "h1".into(),
            address: "10.0.0.1".into(),
            agent_endpoint: String::new(),
            metadata: [
                ("zone".to_string(), "a".to_string()),
                ("rack-x".to_string(), "r1".to_string()),
            ]
            .into(),
            facts: HostFacts::default(),
            agent_version: String::new(),
        };
        let env = placement_env(&m, 7);
        assert_eq!(env["ESFLEET_ZONE"], "a");
        assert_eq!(env["ESFLEET_RACK_X"], "r1");
        assert_eq!(env["ESFLEET_GENERATION"], "7");
        assert_eq!(m.attribute("host"), Some("m1"));
        assert_eq!(m.attribute("hostname"), Some("h1"));
    }
}
