//! Auto-compaction, with etcd's flags (`--auto-compaction-mode`, `--auto-compaction-retention`):
//! the leader compacts old revisions so that the store does not grow without bound under the
//! steady churn of agents' state reports. A watcher resuming from a compacted revision gets
//! etcd's "required revision has been compacted" and re-reads (the agent does exactly that).
//!
//! Only the leader compacts, through a normal Raft proposal, so every member compacts at
//! the same point of the log. Time is leader-local (tokio time): a new leader starts its
//! samples afresh, which can only delay a compaction, never advance one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use esfleet_proto::etcdserverpb::CompactionRequest;
use esfleet_proto::raft::{internal_request, InternalRequest};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::node::Node;
use crate::sync::Recover;

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Never compact automatically.
    Off,
    /// Keep the revisions of the last `Duration` (etcd's `periodic` mode).
    Periodic(Duration),
    /// Keep the last `n` revisions (etcd's `revision` mode).
    Revisions(i64),
}

impl Retention {
    /// Parses etcd's flag pair. `periodic` takes a duration (`30m`, `1h`) or a bare number of
    /// hours (etcd's old form); `revision` takes a number of revisions; `0` turns it off.
    pub fn parse(mode: &str, retention: &str) -> Result<Retention, String> {
        let retention = retention.trim();
        if retention == "0" || retention.is_empty() {
            return Ok(Retention::Off);
        }
        match mode {
            "periodic" => {
                let d = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => humantime::parse_duration(retention).map_err(|e| {
                        format!("--auto-compaction-retention {retention:?}: {e} (expected e.g. 1h, 30m or a number of hours)")
                    })?,
                };
                if d < Duration::from_secs(1) {
                    return Err(format!(
                        "--auto-compaction-retention {retention:?}: must be at least 1s"
                    ));
                }
                Ok(Retention::Periodic(d))
            }
            "revision" => retention
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .map(Retention::Revisions)
                .ok_or_else(|| {
                    format!("--auto-compaction-retention {retention:?}: expected a positive number of revisions")
                }),
            other => Err(format!(
                "--auto-compaction-mode {other:?}: expected periodic or revision"
            )),
        }
    }

    /// How often the leader looks.
    fn tick(self) -> Duration {
        match self {
            Retention::Off => Duration::from_secs(3600),
            Retention::Periodic(d) => (d / 10).clamp(Duration::from_millis(100), Duration::from_secs(300)),
            Retention::Revisions(_) => Duration::from_secs(1),
        }
    }
}

/// The decision, apart from the loop so it can be tested alone: given the samples taken
/// (oldest first), the current revision and the compacted one, the revision to compact to.
fn target(
    retention: Retention,
    samples: &VecDeque<(Instant, i64)>,
    now: Instant,
    current: i64,
    compacted: i64,
) -> Option<i64> {
    let to = match retention {
        Retention::Off => return None,
        // The newest revision that is already older than the window.
        Retention::Periodic(d) => samples.iter().rev().find(|(t, _)| now.duration_since(*t) >= d)?.1,
        // Compact in steps of a tenth of the window, not on every new revision.
        Retention::Revisions(n) => {
            let to = current - n;
            if to - compacted < (n / 10).max(1) {
                return None;
            }
            to
        }
    };
    (to > compacted && to <= current).then_some(to)
}

/// The leader-only loop; returns when `stop` changes.
pub async fn run(node: Arc<Node>, retention: Retention, mut stop: watch::Receiver<bool>) {
    if retention == Retention::Off {
        return;
    }
    let mut tick = tokio::time::interval(retention.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !node.is_leader_with_quorum() {
            samples.clear();
            continue;
        }
        let (current, compacted) = {
            let m = node.store.mvcc.read().or_recover();
            (m.revision(), m.compact_revision())
        };
        let now = Instant::now();
        samples.push_back((now, current));
        let Some(to) = target(retention, &samples, now, current, compacted) else {
            continue;
        };
        // Samples at or before the compaction point are of no further use.
        while samples.front().is_some_and(|(_, r)| *r <= to) && samples.len() > 1 {
            samples.pop_front();
        }
        let req = InternalRequest {
            request: Some(internal_request::Request::Compaction(CompactionRequest {
                revision: to,
                physical: false,
            })),
        };
        match node.propose(req).await {
            Ok(_) => tracing::info!(revision = to, ?retention, "auto-compacted"),
            Err(e) => tracing::warn!(revision = to, error = %e.message(), "auto-compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_like_etcd() {
        assert_eq!(Retention::parse("periodic", "0"), Ok(Retention::Off));
        assert_eq!(
            Retention::parse("periodic", "1"),
            Ok(Retention::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            Retention::parse("periodic", "30m"),
            Ok(Retention::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(Retention::parse("revision", "1000"), Ok(Retention::Revisions(1000)));
        assert!(Retention::parse("revision", "1h")
            .unwrap_err()
            .contains("number of revisions"));
        assert!(Retention::parse("hourly", "1")
            .unwrap_err()
            .contains("periodic or revision"));
        assert!(Retention::parse("periodic", "soon").is_err());
    }

    #[test]
    fn revision_mode_keeps_the_window_and_steps() {
        let none = VecDeque::new();
        let now = Instant::now();
        let r = Retention::Revisions(100);
        assert_eq!(target(r, &none, now, 50, 0), None, "not enough history yet");
        assert_eq!(target(r, &none, now, 150, 0), Some(50));
        assert_eq!(
            target(r, &none, now, 155, 50),
            None,
            "less than a tenth of the window since the last"
        );
        assert_eq!(target(r, &none, now, 160, 50), Some(60));
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_mode_compacts_what_is_older_than_the_window() {
        let r = Retention::Periodic(Duration::from_secs(60));
        let mut samples = VecDeque::new();
        let t0 = Instant::now();
        samples.push_back((t0, 10));
        tokio::time::advance(Duration::from_secs(30)).await;
        samples.push_back((Instant::now(), 40));
        assert_eq!(
            target(r, &samples, Instant::now(), 40, 0),
            None,
            "nothing is a minute old yet"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(target(r, &samples, Instant::now(), 70, 0), Some(10));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(target(r, &samples, Instant::now(), 90, 10), Some(40));
        assert_eq!(target(r, &samples, Instant::now(), 90, 40), None, "already there");
    }
}
