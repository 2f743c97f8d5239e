//! What the leader remembers between passes, because the store cannot tell it: since when a
//! machine with placements has been unregistered (the loss margin), and how often each
//! unit failed on each machine (to move units that keep failing). Leader-local and
//! rebuilt from scratch by every new leader, like lease deadlines: a new leader waits the
//! whole margin again, and counts failures afresh.
//!
//! Time comes in as an argument ([`tokio::time::Instant`]), so tests drive it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use esfleet_core::UnitName;
use tokio::time::Instant;

use super::snapshot::StoreSnapshot;

#[derive(Debug, Clone, Copy)]
struct Seen {
    failed: bool,
    n_restarts: u32,
    generation: u64,
}

#[derive(Debug)]
pub struct Trackers {
    loss_margin: Duration,
    failure_limit: u32,
    failure_window: Duration,
    /// Unregistered machines that still hold placements, with when this leader noticed.
    missing_since: BTreeMap<String, Instant>,
    last_seen: BTreeMap<(UnitName, String), Seen>,
    failures: BTreeMap<(UnitName, String), VecDeque<Instant>>,
}

/// What the trackers add to a pass's view.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// Unregistered machines still within the loss margin.
    pub suspect: BTreeSet<String>,
    /// (unit, machine) pairs that failed `failure_limit` times within the window.
    pub avoid: BTreeSet<(UnitName, String)>,
    /// When the view changes by time alone (a suspect becomes lost, an avoided pair's
    /// failures age out): the loop runs a pass then.
    pub wake_at: Option<Instant>,
}

impl Trackers {
    pub fn new(loss_margin: Duration, failure_limit: u32, failure_window: Duration) -> Self {
        Self {
            loss_margin,
            failure_limit: failure_limit.max(1),
            failure_window,
            missing_since: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }

    /// Updates the trackers from a snapshot read at `now`.
    pub fn observe(&mut self, snap: &StoreSnapshot, now: Instant) -> Tracked {
        let mut out = Tracked::default();
        let mut wake = |at: Instant| {
            out.wake_at = Some(out.wake_at.map_or(at, |w: Instant| w.min(at)));
        };

        // Machine loss.
        let missing: BTreeSet<&String> = snap
            .placements
            .iter()
            .filter(|(m, units)| !units.is_empty() && !snap.machines.contains_key(*m))
            .map(|(m, _)| m)
            .collect();
        self.missing_since.retain(|m, _| missing.contains(m));
        let mut suspect = BTreeSet::new();
        for m in missing {
            let since = *self.missing_since.entry(m.clone()).or_insert(now);
            let lost_at = since + self.loss_margin;
            if now < lost_at {
                suspect.insert(m.clone());
                wake(lost_at);
            }
        }

        // Failures, counted on transitions into failed and on restarts.
        let horizon = now.checked_sub(self.failure_window);
        let mut present = BTreeSet::new();
        for (machine, units) in &snap.states {
            for (unit, state) in units {
                let pair = (unit.clone(), machine.clone());
                let now_seen = Seen {
                    failed: state.is_failed(),
                    n_restarts: state.n_restarts,
                    generation: state.generation,
                };
                let new_failures = match self.last_seen.get(&pair) {
                    None => u32::from(now_seen.failed),
                    Some(prev) if prev.generation != now_seen.generation => u32::from(now_seen.failed),
                    Some(prev) => {
                        let transition = u32::from(now_seen.failed && !prev.failed);
                        transition.max(now_seen.n_restarts.saturating_sub(prev.n_restarts))
                    }
                };
                if new_failures > 0 {
                    let q = self.failures.entry(pair.clone()).or_default();
                    q.extend(std::iter::repeat_n(now, new_failures as usize));
                }
                self.last_seen.insert(pair.clone(), now_seen);
                present.insert(pair);
            }
        }
        self.last_seen.retain(|p, _| present.contains(p));
        for (pair, q) in self.failures.iter_mut() {
            if let Some(h) = horizon {
                while q.front().is_some_and(|t| *t <= h) {
                    q.pop_front();
                }
            }
            if q.len() as u32 >= self.failure_limit {
                out.avoid.insert(pair.clone());
                // The pair is avoided until enough failures age out of the window.
                let idx = q.len() - self.failure_limit as usize;
                wake(q[idx] + self.failure_window);
            }
        }
        self.failures.retain(|_, q| !q.is_empty());

        out.suspect = suspect;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esfleet_core::model::{ScheduleEntry, UnitState};

    fn unit(n: &str) -> UnitName {
        UnitName::new(n).unwrap()
    }

    fn placed(snap: &mut StoreSnapshot, machine: &str, u: &str) {
        snap.placements.entry(machine.into()).or_default().insert(
            unit(u),
            ScheduleEntry {
                unit: unit(u),
                text: String::new(),
                hash: String::new(),
                desired: esfleet_core::model::DesiredState::Launched,
                generation: 1,
                fence: Default::default(),
                enable: false,
                env: Default::default(),
                files: Default::default(),
            },
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_machine_is_suspect_for_the_margin() {
        let mut t = Trackers::new(Duration::from_secs(1), 5, Duration::from_secs(600));
        let mut snap = StoreSnapshot::default();
        placed(&mut snap, "m1", "a.service");
        let t0 = Instant::now();
        let got = t.observe(&snap, t0);
        assert!(got.suspect.contains("m1"));
        assert_eq!(got.wake_at, Some(t0 + Duration::from_secs(1)));
        let got = t.observe(&snap, t0 + Duration::from_millis(999));
        assert!(got.suspect.contains("m1"));
        let got = t.observe(&snap, t0 + Duration::from_secs(1));
        assert!(got.suspect.is_empty(), "lost after the margin");
        // Placements moved away: forgotten; it comes back with placements: a new margin.
        t.observe(&StoreSnapshot::default(), t0 + Duration::from_secs(2));
        let got = t.observe(&snap, t0 + Duration::from_secs(3));
        assert!(got.suspect.contains("m1"));
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_avoid_the_pair_for_the_window() {
        let mut t = Trackers::new(Duration::from_secs(1), 3, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut snap = StoreSnapshot::default();
        let set = |snap: &mut StoreSnapshot, active: &str, n: u32| {
            snap.states.entry("m1".into()).or_default().insert(
                unit("a.service"),
                UnitState {
                    unit: "a.service".into(),
                    active: active.into(),
                    n_restarts: n,
                    generation: 4,
                    ..Default::default()
                },
            );
        };
        set(&mut snap, "active", 0);
        assert!(t.observe(&snap, t0).avoid.is_empty());
        set(&mut snap, "failed", 0); // 1
        assert!(t.observe(&snap, t0 + Duration::from_secs(1)).avoid.is_empty());
        set(&mut snap, "failed", 0); // still failed: no new failure
        assert!(t.observe(&snap, t0 + Duration::from_secs(2)).avoid.is_empty());
        set(&mut snap, "active", 2); // two restarts: 3
        let got = t.observe(&snap, t0 + Duration::from_secs(3));
        assert!(got.avoid.contains(&(unit("a.service"), "m1".to_string())));
        assert_eq!(got.wake_at, Some(t0 + Duration::from_secs(61)));
        // The first failure ages out of the window: no longer avoided.
        let got = t.observe(&snap, t0 + Duration::from_secs(61));
        assert!(got.avoid.is_empty());
    }
}
