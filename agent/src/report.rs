//! Unit state reporting: `states/<machine>/<unit>` records ([`UnitState`]) on the
//! machine's lease. A record is written only when it differs from the one last written,
//! many changes go in one Txn (up to the coordinator's 128 operations each), and the
//! records of units no longer scheduled here are deleted. The states come from systemd
//! every time (DESIGN.md decision 6): a crashed unit is reported as what systemd says.

use std::collections::BTreeMap;

use esfleet_core::keys;
use esfleet_core::model::{ScheduleEntry, UnitState};
use esfleet_core::UnitName;
use esfleet_proto::etcdserverpb::request_op;
use esfleet_proto::mvccpb::KeyValue;

use crate::client::{self, Client, ClientError};
use crate::manager::UnitStatus;

/// The coordinator's limit on operations per Txn.
const TXN_OPS: usize = 128;

/// The records to publish: one per valid entry (systemd's state, what was written, any
/// error) and one per refused entry (under its raw name, with the reason).
pub fn unit_states(
    desired: &BTreeMap<UnitName, ScheduleEntry>,
    refused: &BTreeMap<String, String>,
    live: &[UnitStatus],
    written: impl Fn(&UnitName) -> Option<(String, u64)>,
    errors: &BTreeMap<UnitName, String>,
    healthy: impl Fn(&UnitName) -> Option<bool>,
) -> BTreeMap<String, UnitState> {
    let live: BTreeMap<&UnitName, &UnitStatus> = live.iter().map(|s| (&s.name, s)).collect();
    let mut out = BTreeMap::new();
    for name in desired.keys() {
        let (hash, generation) = written(name).unwrap_or_default();
        let mut st = UnitState {
            unit: name.to_string(),
            hash,
            generation,
            error: errors.get(name).cloned(),
            healthy: healthy(name),
            ..UnitState::default()
        };
        if let Some(s) = live.get(name) {
            st.load = s.load.clone();
            st.active = s.active.clone();
            st.sub = s.sub.clone();
            st.since_usec = s.since_usec;
            st.n_restarts = s.n_restarts;
        }
        out.insert(name.to_string(), st);
    }
    for (raw, why) in refused {
        out.insert(
            raw.clone(),
            UnitState {
                unit: raw.clone(),
                error: Some(why.clone()),
                ..UnitState::default()
            },
        );
    }
    out
}

/// Remembers what was last written on the current lease.
#[derive(Debug, Default)]
pub struct Reporter {
    written: BTreeMap<String, UnitState>,
}

impl Reporter {
    /// Starts over from the records found in the store: those on `lease` count as written;
    /// others (an old lease) are rewritten, or deleted if their unit is gone.
    pub fn reset(&mut self, machine: &str, found: &[KeyValue], lease: i64) {
        let prefix = keys::states_prefix(machine);
        self.written.clear();
        for kv in found {
            let Some(raw) = std::str::from_utf8(&kv.key).ok().and_then(|k| k.strip_prefix(&prefix)) else {
                continue;
            };
            let state = if kv.lease == lease {
                serde_json::from_slice(&kv.value).unwrap_or_default()
            } else {
                // Differs from anything real, so it is rewritten (or deleted).
                UnitState {
                    unit: "\u{0}stale".into(),
                    ..UnitState::default()
                }
            };
            self.written.insert(raw.to_string(), state);
        }
    }

    /// Forgets everything (a new lease, before the store was read).
    pub fn clear(&mut self) {
        self.written.clear();
    }

    /// Writes the records that changed and deletes those of units gone. Returns how many
    /// keys were written or deleted.
    pub async fn publish(
        &mut self,
        client: &mut Client,
        machine: &str,
        lease: i64,
        states: BTreeMap<String, UnitState>,
    ) -> Result<usize, ClientError> {
        let mut ops: Vec<(String, Option<UnitState>)> = Vec::new();
        for (raw, st) in &states {
            if self.written.get(raw) != Some(st) {
                ops.push((raw.clone(), Some(st.clone())));
            }
        }
        for raw in self.written.keys() {
            if !states.contains_key(raw) {
                ops.push((raw.clone(), None));
            }
        }
        let total = ops.len();
        for chunk in ops.chunks(TXN_OPS) {
            let reqs = chunk
                .iter()
                .map(|(raw, st)| {
                    let key = format!("{}{raw}", keys::states_prefix(machine));
                    match st {
                        Some(st) => request_op::Request::RequestPut(client::put(
                            &key,
                            &serde_json::to_vec(st).expect("a UnitState always serializes"),
                            lease,
                        )),
                        None => request_op::Request::RequestDeleteRange(client::delete(&key)),
                    }
                })
                .collect();
            client.txn(client::txn(vec![], reqs, vec![])).await?;
            for (raw, st) in chunk {
                match st {
                    Some(st) => self.written.insert(raw.clone(), st.clone()),
                    None => self.written.remove(raw),
                };
            }
        }
        if total > 0 {
            tracing::debug!(changed = total, "unit states published");
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esfleet_core::model::{unit_hash, DesiredState};

    #[test]
    fn states_from_systemd_and_refusals() {
        let u = UnitName::new("a.service").unwrap();
        let e = ScheduleEntry {
            unit: u.clone(),
            text: "x".into(),
            hash: unit_hash("x"),
            desired: DesiredState::Launched,
            generation: 3,
            fence: Default::default(),
            enable: false,
            env: Default::default(),
            files: Default::default(),
        };
        let desired = [(u.clone(), e)].into();
        let live = vec![UnitStatus {
            name: u.clone(),
            load: "loaded".into(),
            active: "failed".into(),
            sub: "failed".into(),
            since_usec: 9,
            n_restarts: 2,
            main_pid: 0,
        }];
        let refused = [("../x.service".to_string(), "bad name".to_string())].into();
        let s = unit_states(
            &desired,
            &refused,
            &live,
            |_| Some((unit_hash("x"), 3)),
            &BTreeMap::new(),
            |_| Some(false),
        );
        let a = &s["a.service"];
        assert!(a.is_failed());
        assert_eq!((a.generation, a.n_restarts, a.since_usec), (3, 2, 9));
        assert_eq!(a.healthy, Some(false));
        assert_eq!(s["../x.service"].error.as_deref(), Some("bad name"));
    }
}
