//! Leases are leader-local, like etcd's: the leader keeps each lease's deadline in memory,
//! a keepalive only moves that deadline (no Raft write), and an expired lease is revoked
//! through the log (so its keys' deletion is replicated and watchers see DELETE events).
//! A new leader gives every lease a full TTL from the moment it takes over, since it
//! cannot know when the old leader last renewed them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esfleet_proto::etcdserverpb as pb;
use esfleet_proto::raft::{internal_request, InternalRequest};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::node::{no_leader, Node};
use crate::store::state_machine::LeaseObserver;

/// Longest TTL etcd accepts.
pub const MAX_TTL: i64 = 9_000_000_000;

#[derive(Default)]
struct Inner {
    ttl: HashMap<i64, i64>,
    deadline: HashMap<i64, Instant>,
    /// The term in which this member last took over as leader.
    leading_term: Option<u64>,
    /// Revocations proposed and not yet applied, with when to try again.
    revoking: HashMap<i64, Instant>,
}

pub struct LeaseKeeper {
    inner: Mutex<Inner>,
    /// Shortest TTL granted: a lease must outlive a leader election (etcd: 1.5 × election
    /// timeout, rounded up to seconds).
    pub min_ttl: i64,
}

impl LeaseObserver for LeaseKeeper {
    fn granted(&self, id: i64, ttl: i64) {
        let mut i = self.inner.lock().expect("poisoned");
        i.ttl.insert(id, ttl);
        i.deadline.insert(id, Instant::now() + secs(ttl));
    }

    fn revoked(&self, id: i64) {
        let mut i = self.inner.lock().expect("poisoned");
        i.ttl.remove(&id);
        i.deadline.remove(&id);
        i.revoking.remove(&id);
    }

    fn reset(&self, leases: Vec<(i64, i64)>) {
        let mut i = self.inner.lock().expect("poisoned");
        let now = Instant::now();
        i.ttl = leases.iter().copied().collect();
        i.deadline = leases.iter().map(|(id, ttl)| (*id, now + secs(*ttl))).collect();
        i.revoking.clear();
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

impl LeaseKeeper {
    pub fn new(election_timeout: Duration, leases: Vec<(i64, i64)>) -> Self {
        let min_ttl = ((election_timeout.as_millis() as i64 * 3 / 2) + 999) / 1000;
        let k = Self {
            inner: Mutex::new(Inner::default()),
            min_ttl: min_ttl.max(1),
        };
        k.reset(leases);
        k
    }

    /// The TTL a grant request gets.
    pub fn grant_ttl(&self, requested: i64) -> Result<i64, Status> {
        if requested > MAX_TTL {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        Ok(requested.max(self.min_ttl))
    }

    /// A keepalive on the leader: the lease's new TTL, or 0 if it does not exist.
    pub fn keep_alive_local(&self, node: &Node, id: i64) -> Result<i64, Status> {
        if !node.is_leader_with_quorum() {
            return Err(no_leader());
        }
        let mut i = self.inner.lock().expect("poisoned");
        let Some(ttl) = i.ttl.get(&id).copied() else {
            return Ok(0);
        };
        if i.revoking.contains_key(&id) {
            return Ok(0); // already expired; the revocation is on its way
        }
        i.deadline.insert(id, Instant::now() + secs(ttl));
        Ok(ttl)
    }

    /// A keepalive from any member: answered by the leader.
    pub async fn keep_alive(&self, node: &Node, id: i64) -> Result<i64, Status> {
        match node.leader() {
            Some((leader, _)) if leader == node.id => self.keep_alive_local(node, id),
            Some((_, url)) => {
                let mut req = tonic::Request::new(pb::LeaseKeepAliveRequest { id });
                req.set_timeout(node.election_timeout);
                // Bounded here: `set_timeout` is only a header the callee may honour, and an
                // agent decides between "outage" and "cut off" on this answer's timeliness.
                let answer = match node.peers.get(&url) {
                    Ok(mut client) => {
                        match tokio::time::timeout(node.election_timeout, client.lease_keep_alive(req)).await {
                            Ok(r) => r.map(|r| r.into_inner().ttl),
                            Err(_) => Err(Status::deadline_exceeded("the leader did not answer in time")),
                        }
                    }
                    Err(e) => Err(e),
                };
                // A leader this member cannot reach is, for the lease's purposes, no leader:
                // it cannot hear keepalives from here either, and if it is really gone (a
                // majority down) no lease can expire anywhere. Agents rely on this answer to
                // tell a control-plane outage (keep units) from being cut off (fence), as
                // DESIGN.md decision 5 describes.
                answer.map_err(|e| match e.code() {
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled => {
                        Status::unavailable(format!(
                            "etcdserver: no leader (the last known leader, {url}, cannot be reached: {})",
                            e.message()
                        ))
                    }
                    _ => e,
                })
            }
            None => Err(no_leader()),
        }
    }

    pub fn time_to_live_local(
        &self,
        node: &Node,
        id: i64,
        with_keys: bool,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        if !node.is_leader() {
            return Err(no_leader());
        }
        let (ttl, granted) = {
            let i = self.inner.lock().expect("poisoned");
            match (i.ttl.get(&id), i.deadline.get(&id)) {
                (Some(granted), Some(deadline)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    (left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0), *granted)
                }
                _ => (-1, 0),
            }
        };
        let keys = if with_keys && ttl >= 0 {
            let m = node.store.mvcc.read().expect("poisoned");
            m.lease(id)
                .map(|l| l.keys.iter().cloned().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(pb::LeaseTimeToLiveResponse {
            header: Some(node.header(0)),
            id,
            ttl,
            granted_ttl: granted,
            keys,
        })
    }

    pub async fn time_to_live(
        &self,
        node: &Node,
        id: i64,
        with_keys: bool,
    ) -> Result<pb::LeaseTimeToLiveResponse, Status> {
        match node.leader() {
            Some((leader, _)) if leader == node.id => self.time_to_live_local(node, id, with_keys),
            Some((_, url)) => {
                let mut client = node.peers.get(&url)?;
                let mut req = tonic::Request::new(pb::LeaseTimeToLiveRequest { id, keys: with_keys });
                req.set_timeout(node.request_timeout);
                let mut resp = client.lease_time_to_live(req).await?.into_inner();
                resp.header = Some(node.header(0));
                Ok(resp)
            }
            None => Err(no_leader()),
        }
    }

    /// What the leader must do now: refresh every deadline when it has just taken over,
    /// and list the leases whose deadline passed.
    fn tick(&self, leading_term: Option<u64>) -> Vec<i64> {
        let mut i = self.inner.lock().expect("poisoned");
        let now = Instant::now();
        if leading_term.is_none() || i.leading_term != leading_term {
            // Lost or (re)gained leadership: whoever leads next starts every lease afresh.
            i.leading_term = leading_term;
            let ttls: Vec<(i64, i64)> = i.ttl.iter().map(|(k, v)| (*k, *v)).collect();
            for (id, ttl) in ttls {
                i.deadline.insert(id, now + secs(ttl));
            }
            i.revoking.clear();
            return Vec::new();
        }
        let expired: Vec<i64> = i
            .deadline
            .iter()
            .filter(|(id, d)| **d <= now && i.revoking.get(id).is_none_or(|retry| *retry <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            i.revoking.insert(*id, now + Duration::from_secs(2));
        }
        expired
    }

    /// The leader's expiry loop; runs on every member, acts only while leading.
    pub async fn run(self: Arc<Self>, node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let leading = {
                let m = node.raft.metrics();
                let m = m.borrow();
                (m.state == openraft::ServerState::Leader).then_some(m.current_term)
            };
            for id in self.tick(leading) {
                let node = node.clone();
                tokio::spawn(async move {
                    let req = InternalRequest {
                        request: Some(internal_request::Request::LeaseRevoke(pb::LeaseRevokeRequest { id })),
                    };
                    match node.propose(req).await {
                        Ok(_) => tracing::info!(lease = format!("{id:x}"), "lease expired and revoked"),
                        Err(e) if e.code() == tonic::Code::NotFound => {}
                        Err(e) => {
                            tracing::warn!(lease = format!("{id:x}"), error = %e, "lease revoke failed; will retry")
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expiry_follows_keepalives_and_leadership() {
        let k = LeaseKeeper::new(Duration::from_secs(1), vec![(7, 5)]);
        assert_eq!(k.min_ttl, 2);
        assert_eq!(
            k.tick(Some(3)),
            Vec::<i64>::new(),
            "taking over refreshes, expires nothing"
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(k.tick(Some(3)).is_empty());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(k.tick(Some(3)), vec![7], "deadline passed");
        assert!(
            k.tick(Some(3)).is_empty(),
            "not proposed twice while the revoke is in flight"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(k.tick(Some(3)), vec![7], "retried when the revoke did not land");

        // A new term: the new leader gives every lease a full TTL again.
        assert!(k.tick(Some(4)).is_empty());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(k.tick(Some(4)).is_empty());
        k.revoked(7);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(k.tick(Some(4)).is_empty(), "revoked leases are forgotten");
    }

    #[test]
    fn ttl_bounds() {
        let k = LeaseKeeper::new(Duration::from_secs(1), vec![]);
        assert_eq!(k.grant_ttl(1).unwrap(), 2);
        assert_eq!(k.grant_ttl(60).unwrap(), 60);
        assert!(k.grant_ttl(MAX_TTL + 1).is_err());
    }
}
