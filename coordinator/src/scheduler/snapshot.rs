//! One consistent read of everything under `/esfleet/`, parsed into the typed records of
//! `esfleet_core::model`. The scheduler builds its view from it; the Fleet service answers
//! from it. A record that does not parse is skipped and reported (never fatal): a bad key
//! written with etcdctl must not stop scheduling.

use std::collections::BTreeMap;

use esfleet_core::keys;
use esfleet_core::model::{DrainRecord, MachineRecord, RetiredRecord, ScheduleEntry, UnitRecord, UnitState};
use esfleet_core::name::validate_machine_id;
use esfleet_core::UnitName;
use esfleet_proto::etcdserverpb::RangeRequest;
use esfleet_proto::mvccpb::KeyValue;

use crate::store::mvcc::{Mvcc, MvccError};

/// Everything under `/esfleet/` at one revision.
#[derive(Debug, Clone, Default)]
pub struct StoreSnapshot {
    /// The store revision the snapshot was read at.
    pub revision: i64,
    pub units: BTreeMap<UnitName, UnitRecord>,
    /// Each unit key's mod_revision (for the Fleet service's compare-and-set writes).
    pub unit_revisions: BTreeMap<UnitName, i64>,
    pub machines: BTreeMap<String, MachineRecord>,
    /// machine → unit → entry.
    pub placements: BTreeMap<String, BTreeMap<UnitName, ScheduleEntry>>,
    /// machine → unit → reported state.
    pub states: BTreeMap<String, BTreeMap<UnitName, UnitState>>,
    pub drains: BTreeMap<String, DrainRecord>,
    pub unplaceable: BTreeMap<UnitName, String>,
    /// The scheduler epoch (a Raft term), when one was written.
    pub epoch: Option<u64>,
    /// The epoch key's mod_revision when it exists, readable or not.
    pub epoch_revision: Option<i64>,
    /// Elasticsearch cluster definitions, by name, and each key's mod_revision.
    pub es: BTreeMap<String, esfleet_core::es::ClusterRecord>,
    pub es_revisions: BTreeMap<String, i64>,
    /// Data left on lost machines: machine → unit → record.
    pub retired: BTreeMap<String, BTreeMap<UnitName, RetiredRecord>>,
    /// Keys that could not be parsed, with why.
    pub skipped: Vec<(String, String)>,
}

/// Reads every key with `prefix` at the current revision: (revision, keys).
pub fn read_prefix(m: &Mvcc, prefix: &str) -> Result<(i64, Vec<KeyValue>), MvccError> {
    let req = RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: keys::prefix_end(prefix).into(),
        ..Default::default()
    };
    let resp = m.range(&req)?;
    Ok((m.revision(), resp.kvs))
}

/// The scheduler epoch as stored: the term zero-padded to 20 digits, so that etcd's
/// byte-wise VALUE comparisons order epochs numerically.
pub fn encode_epoch(term: u64) -> String {
    format!("{term:020}")
}

pub fn decode_epoch(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

impl StoreSnapshot {
    /// Reads and parses everything under `/esfleet/` (one read lock: one revision).
    pub fn read(m: &Mvcc) -> Result<StoreSnapshot, MvccError> {
        let (revision, kvs) = read_prefix(m, keys::ROOT)?;
        Ok(Self::parse(revision, &kvs))
    }

    pub fn parse(revision: i64, kvs: &[KeyValue]) -> StoreSnapshot {
        let mut s = StoreSnapshot {
            revision,
            ..Default::default()
        };
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if let Err(why) = s.add(&key, kv) {
                s.skipped.push((key, why));
            }
        }
        s
    }

    fn add(&mut self, key: &str, kv: &KeyValue) -> Result<(), String> {
        fn json<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
            serde_json::from_slice(v).map_err(|e| format!("not a valid record: {e}"))
        }
        fn unit_name(s: &str) -> Result<UnitName, String> {
            UnitName::new(s).map_err(|e| e.to_string())
        }
        if let Some(name) = key.strip_prefix(keys::UNITS) {
            let name = unit_name(name)?;
            let rec: UnitRecord = json(&kv.value)?;
            if rec.name != name {
                return Err(format!("record names unit {} but sits at the key of {name}", rec.name));
            }
            self.unit_revisions.insert(name.clone(), kv.mod_revision);
            self.units.insert(name, rec);
        } else if let Some(id) = key.strip_prefix(keys::MACHINES) {
            let rec: MachineRecord = json(&kv.value)?;
            if rec.id != id {
                return Err(format!("record names machine {} but sits at the key of {id}", rec.id));
            }
            self.machines.insert(id.to_string(), rec);
        } else if let Some((machine, unit)) = keys::split_two(key, keys::SCHEDULE) {
            let unit = unit_name(unit)?;
            let entry: ScheduleEntry = json(&kv.value)?;
            self.placements
                .entry(machine.to_string())
                .or_default()
                .insert(unit, entry);
        } else if let Some((machine, unit)) = keys::split_two(key, keys::STATES) {
            let unit = unit_name(unit)?;
            let state: UnitState = json(&kv.value)?;
            self.states.entry(machine.to_string()).or_default().insert(unit, state);
        } else if let Some(machine) = key.strip_prefix(keys::DRAIN) {
            validate_machine_id(machine)?;
            let rec: DrainRecord = json(&kv.value)?;
            self.drains.insert(machine.to_string(), rec);
        } else if let Some(unit) = key.strip_prefix(keys::UNPLACEABLE) {
            let unit = unit_name(unit)?;
            self.unplaceable
                .insert(unit, String::from_utf8_lossy(&kv.value).into_owned());
        } else if let Some(name) = key.strip_prefix(keys::ES) {
            let rec: esfleet_core::es::ClusterRecord = json(&kv.value)?;
            if rec.spec.name != name {
                return Err(format!(
                    "record names Elasticsearch cluster {} but sits at the key of {name}",
                    rec.spec.name
                ));
            }
            rec.spec
                .validate()
                .map_err(|e| format!("not a valid Elasticsearch cluster: {e}"))?;
            self.es_revisions.insert(name.to_string(), kv.mod_revision);
            self.es.insert(name.to_string(), rec);
        } else if let Some((machine, unit)) = keys::split_two(key, keys::RETIRED) {
            let unit = unit_name(unit)?;
            let rec: RetiredRecord = json(&kv.value)?;
            if rec.unit != unit {
                return Err(format!("record names unit {} but sits at the key of {unit}", rec.unit));
            }
            self.retired.entry(machine.to_string()).or_default().insert(unit, rec);
        } else if key == keys::SCHEDULER_EPOCH {
            self.epoch_revision = Some(kv.mod_revision);
            self.epoch = Some(decode_epoch(&kv.value).ok_or("not a number")?);
        }
        // Anything else under /esfleet/ is not ours to judge.
        Ok(())
    }

    /// Every placement of `unit`: (machine, entry), by machine id.
    pub fn placements_of<'a>(&'a self, unit: &'a UnitName) -> impl Iterator<Item = (&'a str, &'a ScheduleEntry)> + 'a {
        self.placements
            .iter()
            .filter_map(move |(m, units)| units.get(unit).map(|e| (m.as_str(), e)))
    }

    pub fn state_of(&self, machine: &str, unit: &UnitName) -> Option<&UnitState> {
        self.states.get(machine).and_then(|s| s.get(unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            mod_revision: 3,
            ..Default::default()
        }
    }

    #[test]
    fn skips_what_does_not_parse() {
        let s = StoreSnapshot::parse(
            7,
            &[
                kv("/esfleet/units/a.service", "{not json"),
                kv("/esfleet/units/../x", "{}"),
                kv("/esfleet/scheduler/epoch", &encode_epoch(12)),
                kv("/esfleet/unplaceable/b.service", "no machine matches"),
            ],
        );
        assert_eq!(s.revision, 7);
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        assert!(s.units.is_empty());
        assert_eq!(s.epoch, Some(12));
        assert_eq!(s.unplaceable.len(), 1);
        assert!(encode_epoch(9) < encode_epoch(10));
    }
}
