//! Leases are leader-local, like etcd's: the leader keeps each lease's deadline in memory,
//! a keepalive only moves that deadline (no Raft write), and an expired lease is revoked
//! through the log (so its keys' deletion is replicated and watchers see DELETE events).
//! A new leader gives every lease a full TTL from the moment it takes over, since it
//! cannot know when the old leader last renewed them.
//!
//! A member that has no leader tells agents so, and an agent keeps its units on that
//! answer (an election stops nothing), for at most [`outage_grace`]. The member saying it
//! may be a minority cut off from this leader, though, with hosts cut off alongside it. So
//! while any member has not confirmed this leader (answered a heartbeat) within half an
//! election timeout, and for a TTL after, a lease expires only once that grace has passed
//! since its last renewal: its agent has fenced by then. See [`esfleet_core::lease`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esfleet_core::lease::outage_grace;
use esfleet_proto::etcdserverpb as pb;
use esfleet_proto::raft::{internal_request, InternalRequest};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::memo::Memo;
use crate::node::{no_leader, Node, Route};
use crate::store::state_machine::LeaseObserver;
use crate::sync::Recover;

/// How long after it last heard from a leader a member may still say "there is no
/// leader" ([`Node::route`]); after it, it answers with a plain error. The bound exists for
/// a member removed from the cluster while it runs: no leader watches it any more, so none
/// doubts it, except the leader that removed it, for this long (plus an election timeout)
/// after the removal (see [`LeaseKeeper::run`]). Longer than the outage grace at the
/// default TTL, so an agent's own grace, not this, ends an ordinary outage's credit.
pub const NO_LEADER_SPAN: Duration = Duration::from_secs(60);

/// Longest TTL etcd accepts.
pub const MAX_TTL: i64 = crate::store::mvcc::MAX_LEASE_TTL;

/// `t + d`, or as far as the clock goes: a lease's deadline never overflows.
fn after(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

struct Inner {
    ttl: HashMap<i64, i64>,
    /// When each lease was last renewed (granted, kept alive, or taken over).
    renewed: HashMap<i64, Instant>,
    /// The last moment a member might have been telling agents "there is no leader": now,
    /// while one has not confirmed this leader; the takeover, at first.
    last_doubt: Instant,
    /// The term in which this member last took over as leader.
    leading_term: Option<u64>,
    /// Revocations proposed and not yet applied, with when to try again.
    revoking: HashMap<i64, Instant>,
    /// How long a proposed revocation is given before it is proposed again (set to the
    /// request timeout the proposal is bounded by, so they never pile up).
    retry: Duration,
}

/// Revocations proposed per 100 ms tick at most.
const MAX_REVOKES_PER_TICK: usize = 100;

impl Inner {
    /// When lease `id` expires: a TTL after its renewal, unless a member may have been
    /// saying "no leader" within a TTL; then no earlier than the outage grace after its
    /// renewal.
    fn expires_at(&self, id: i64) -> Option<Instant> {
        let ttl = secs(*self.ttl.get(&id)?);
        let renewed = *self.renewed.get(&id)?;
        Some(after(renewed, ttl).max(after(self.last_doubt, ttl).min(after(renewed, outage_grace(ttl)))))
    }

    fn renew_all(&mut self, now: Instant) {
        self.renewed = self.ttl.keys().map(|id| (*id, now)).collect();
        self.last_doubt = now;
        self.revoking.clear();
    }
}

/// The members this member has seen leave the membership, with when, so that whoever
/// leads keeps doubting them for a while: a removed member may still run, and openraft stops sending to
/// it before it learns of its removal, so it says "no leader" to its agents.
#[derive(Default)]
struct Removed {
    /// The members of the last tick, or kept by an earlier process (none: the first tick
    /// notes no removal).
    members: Option<Vec<u64>>,
    left: HashMap<u64, Instant>,
    /// `left` changed since it was last kept.
    changed: bool,
}

impl Removed {
    /// The members to watch now: the current ones, and those that left within `keep`.
    fn watched(&mut self, members: &[u64], now: Instant, keep: Duration) -> Vec<u64> {
        let before = self.left.len();
        for gone in self.members.iter().flatten().filter(|id| !members.contains(id)) {
            self.left.insert(*gone, now);
            self.changed = true;
        }
        for back in members {
            self.left.remove(back);
        }
        self.left.retain(|_, at| now.saturating_duration_since(*at) < keep);
        self.changed |= self.left.len() != before;
        self.members = Some(members.to_vec());
        let mut watched = members.to_vec();
        watched.extend(self.left.keys().copied());
        watched
    }
}

pub struct LeaseKeeper {
    inner: Mutex<Inner>,
    /// Shortest TTL granted: a lease must outlive a leader election (etcd: 1.5 × election
    /// timeout, rounded up to seconds).
    pub min_ttl: i64,
}

impl LeaseObserver for LeaseKeeper {
    fn granted(&self, id: i64, ttl: i64) {
        let mut i = self.inner.lock().or_recover();
        i.ttl.insert(id, ttl);
        i.renewed.insert(id, Instant::now());
    }

    fn revoked(&self, id: i64) {
        let mut i = self.inner.lock().or_recover();
        i.ttl.remove(&id);
        i.renewed.remove(&id);
        i.revoking.remove(&id);
    }

    fn reset(&self, leases: Vec<(i64, i64)>) {
        let mut i = self.inner.lock().or_recover();
        i.ttl = leases.into_iter().collect();
        i.renew_all(Instant::now());
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.clamp(1, MAX_TTL) as u64)
}

impl LeaseKeeper {
    pub fn new(election_timeout: Duration, leases: Vec<(i64, i64)>) -> Self {
        let min_ttl = ((election_timeout.as_millis() as i64 * 3 / 2) + 999) / 1000;
        let k = Self {
            inner: Mutex::new(Inner {
                ttl: HashMap::new(),
                renewed: HashMap::new(),
                last_doubt: Instant::now(),
                leading_term: None,
                revoking: HashMap::new(),
                retry: Duration::from_secs(2),
            }),
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
            return Err(node.without_quorum());
        }
        let mut i = self.inner.lock().or_recover();
        let Some(ttl) = i.ttl.get(&id).copied() else {
            return Ok(0);
        };
        if i.revoking.contains_key(&id) {
            return Ok(0); // already expired; the revocation is on its way
        }
        i.renewed.insert(id, Instant::now());
        Ok(ttl)
    }

    /// A keepalive from any member: answered by the leader.
    pub async fn keep_alive(&self, node: &Node, id: i64) -> Result<i64, Status> {
        // "No leader" or a plain error, decided in one place ([`Node::route`]).
        match node.route()? {
            Route::Here => self.keep_alive_local(node, id),
            Route::Leader(url) => {
                // Half an election timeout (500 ms by default): a leader answers a
                // keepalive from memory in milliseconds, and the agent that asked gives its
                // keepalive one interval (1 s by default) before it moves on. Waiting a whole
                // election timeout here raced that, and the agent lost its turn to try the
                // next member while the leader it knew of was dead.
                let patience = node.election_timeout / 2;
                let mut req = tonic::Request::new(pb::LeaseKeepAliveRequest { id });
                req.set_timeout(patience);
                // Bounded here: `set_timeout` is only a header the callee may honour.
                let answer = match node.peers.get(&url) {
                    Ok(mut client) => match tokio::time::timeout(patience, client.lease_keep_alive(req)).await {
                        Ok(r) => r.map(|r| r.into_inner().ttl),
                        Err(_) => Err(Status::deadline_exceeded("the leader did not answer in time")),
                    },
                    Err(e) => Err(e),
                };
                // Not "no leader": this member still follows a leader that may be alive and
                // expiring leases (slow, or cut off from here only), and agents keep their
                // units on "no leader". The agent tries another member instead; once this
                // member has not heard from its leader for an election timeout, it says
                // "no leader" (above).
                answer.map_err(|e| match e.code() {
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
                        if !e.message().contains("no leader") =>
                    {
                        Status::unavailable(format!(
                            "the leader this member follows, {url}, cannot be reached from here: {}",
                            e.message()
                        ))
                    }
                    _ => e,
                })
            }
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
            let i = self.inner.lock().or_recover();
            match (i.ttl.get(&id), i.expires_at(id)) {
                (Some(granted), Some(deadline)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    (left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0), *granted)
                }
                _ => (-1, 0),
            }
        };
        let keys = if with_keys && ttl >= 0 {
            let m = node.store.mvcc.read().or_recover();
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
        match node.route()? {
            Route::Here => self.time_to_live_local(node, id, with_keys),
            Route::Leader(url) => {
                let mut client = node.peers.get(&url)?;
                let mut req = tonic::Request::new(pb::LeaseTimeToLiveRequest { id, keys: with_keys });
                req.set_timeout(node.request_timeout);
                let mut resp = client.lease_time_to_live(req).await?.into_inner();
                resp.header = Some(node.header(0));
                Ok(resp)
            }
        }
    }

    /// What the leader must do now: renew every lease when it has just taken over, note
    /// whether a member may be saying "no leader" (`in_doubt`), and list the leases that
    /// expired.
    fn tick(&self, leading_term: Option<u64>, in_doubt: bool) -> Vec<i64> {
        let mut i = self.inner.lock().or_recover();
        let now = Instant::now();
        if leading_term.is_none() || i.leading_term != leading_term {
            // Lost or (re)gained leadership: whoever leads next starts every lease afresh.
            i.leading_term = leading_term;
            i.renew_all(now);
            return Vec::new();
        }
        if in_doubt {
            i.last_doubt = now;
        }
        let mut expired: Vec<(Instant, i64)> = i
            .ttl
            .keys()
            .filter(|id| i.revoking.get(id).is_none_or(|retry| *retry <= now))
            .filter_map(|id| i.expires_at(*id).filter(|d| *d <= now).map(|d| (d, *id)))
            .collect();
        // The longest expired first, and a bounded number per tick (etcd revokes at most
        // 1,000 leases a second): a mass expiry must not flood the log it waits on.
        expired.sort_unstable();
        expired.truncate(MAX_REVOKES_PER_TICK);
        let retry = now + i.retry;
        for (_, id) in &expired {
            i.revoking.insert(*id, retry);
        }
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// The leader's expiry loop; runs on every member, acts only while leading.
    /// The removals this member saw are kept in the node's memo for a restart.
    pub async fn run(self: Arc<Self>, node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let memo = node.memo();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut doubted: Vec<u64> = Vec::new();
        let mut leading_since: Option<(u64, Instant)> = None;
        // Members seen in the membership, and those that left it, with when: a removed
        // member that still runs may say "no leader" for [`NO_LEADER_SPAN`].
        let mut removed = Removed {
            left: memo.map(Memo::removed).unwrap_or_default(),
            members: memo.and_then(Memo::members),
            ..Removed::default()
        };
        let mut kept_members = removed.members.clone();
        self.inner.lock().or_recover().retry = node.request_timeout + Duration::from_secs(1);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            let (leading, unconfirmed) = {
                let m = node.raft.metrics();
                let m = m.borrow();
                let leading = (m.state == openraft::ServerState::Leader).then_some(m.current_term);
                let members: Vec<u64> = m
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .filter(|id| *id != node.id)
                    .collect();
                // Tracked on every member, leading or not: whoever leads next knows whom it
                // must still watch.
                let watched = removed.watched(&members, now, NO_LEADER_SPAN + node.election_timeout);
                let unconfirmed = match leading {
                    Some(_) => {
                        let since = now.checked_sub(node.election_timeout / 2).unwrap_or(now);
                        node.peers.contacts.unconfirmed(watched, m.vote.leader_id(), since)
                    }
                    None => Vec::new(),
                };
                (leading, unconfirmed)
            };
            if let Some(memo) = memo {
                if removed.changed && memo.keep_removed(&removed.left) {
                    removed.changed = false;
                }
                if removed.members != kept_members && memo.keep_members(removed.members.as_deref().unwrap_or(&[])) {
                    kept_members = removed.members.clone();
                }
            }
            // A leader with a quorum hears itself: once it loses the quorum or steps down,
            // its silence counts from then ([`Node::without_quorum`], [`Node::route`]).
            if leading.is_some() && node.is_leader_with_quorum() {
                node.heard_from_leader(node.id);
            }
            // Right after a takeover no member has answered yet; say nothing about that.
            match (leading, leading_since) {
                (Some(term), Some((t, _))) if t == term => {}
                (Some(term), _) => leading_since = Some((term, Instant::now())),
                (None, _) => {
                    leading_since = None;
                    doubted.clear();
                }
            }
            let settled = leading_since.is_some_and(|(_, at)| at.elapsed() > node.election_timeout);
            if settled && unconfirmed != doubted {
                if unconfirmed.is_empty() {
                    tracing::info!(
                        "every member follows this leader again; leases expire a TTL after their last renewal"
                    );
                } else {
                    tracing::warn!(
                        members = ?unconfirmed.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
                        "these members have not confirmed this leader; one cut off in a minority may be telling \
                         its hosts there is no leader, so leases now expire only after the outage grace \
                         ({} TTLs) since their last renewal",
                        esfleet_core::lease::OUTAGE_GRACE_TTLS
                    );
                }
                doubted = unconfirmed.clone();
            }
            for id in self.tick(leading, !unconfirmed.is_empty()) {
                let node = node.clone();
                tokio::spawn(async move {
                    let req = InternalRequest {
                        request: Some(internal_request::Request::LeaseRevoke(pb::LeaseRevokeRequest { id })),
                    };
                    // Proposed here only, never forwarded or retried elsewhere: the expiry was
                    // decided by this leader's clock, and a deposed leader's revoke, refused
                    // with "forward to leader" when its entry is dropped, must not be carried
                    // to the new leader (which renewed every lease at its takeover).
                    match node.propose_here(req).await {
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
            k.tick(Some(3), false),
            Vec::<i64>::new(),
            "taking over refreshes, expires nothing"
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(k.tick(Some(3), false).is_empty());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(k.tick(Some(3), false), vec![7], "deadline passed");
        assert!(
            k.tick(Some(3), false).is_empty(),
            "not proposed twice while the revoke is in flight"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(k.tick(Some(3), false), vec![7], "retried when the revoke did not land");

        // A new term: the new leader gives every lease a full TTL again.
        assert!(k.tick(Some(4), false).is_empty());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(k.tick(Some(4), false).is_empty());
        k.revoked(7);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(k.tick(Some(4), false).is_empty(), "revoked leases are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn while_a_member_is_in_doubt_leases_last_the_outage_grace() {
        let k = LeaseKeeper::new(Duration::from_secs(1), vec![(7, 5), (8, 5)]);
        assert!(k.tick(Some(3), false).is_empty(), "taking over");
        // A member stops answering at 1 s (it may be telling its hosts "no leader").
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(k.tick(Some(3), true).is_empty());
        let renew = |k: &LeaseKeeper, id: i64| k.inner.lock().or_recover().renewed.insert(id, Instant::now());
        // Lease 8 is kept alive at 2 s, then its agent goes quiet too.
        tokio::time::advance(Duration::from_secs(1)).await;
        renew(&k, 8);
        // Past both TTLs, still in doubt: nothing expires, and the expiry shown stays a TTL
        // ahead.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(k.tick(Some(3), true).is_empty());
        assert_eq!(
            k.inner.lock().or_recover().expires_at(8),
            Some(Instant::now() + Duration::from_secs(5))
        );
        // The grace (6 × 5 s) since each renewal: lease 7 (renewed at the takeover, 0 s)
        // goes at 30 s, lease 8 at 32 s.
        tokio::time::advance(Duration::from_secs(19)).await; // 29 s
        assert!(k.tick(Some(3), true).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await; // 30 s
        assert_eq!(k.tick(Some(3), true), vec![7]);
        k.revoked(7);
        // The member answers again at 31 s: lease 8 still waits a TTL from then (36 s)
        // or its grace (32 s), whichever is first.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(k.tick(Some(3), false).is_empty());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(k.tick(Some(3), false).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(k.tick(Some(3), false), vec![8]);
    }

    #[tokio::test(start_paused = true)]
    async fn doubt_that_ended_holds_expiry_for_one_ttl_more() {
        let k = LeaseKeeper::new(Duration::from_secs(1), vec![(7, 5)]);
        assert!(k.tick(Some(3), false).is_empty());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(k.tick(Some(3), true).is_empty(), "a member in doubt at 3 s, briefly");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(k.tick(Some(3), false).is_empty());
        // Not at the TTL (5 s): an agent may have heard "no leader" at 3 s.
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(k.tick(Some(3), false).is_empty());
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(k.tick(Some(3), false).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(k.tick(Some(3), false), vec![7], "a TTL after the doubt ended");
    }

    #[test]
    fn ttl_bounds() {
        let k = LeaseKeeper::new(Duration::from_secs(1), vec![]);
        assert_eq!(k.grant_ttl(1).unwrap(), 2);
        assert_eq!(k.grant_ttl(60).unwrap(), 60);
        assert!(k.grant_ttl(MAX_TTL + 1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_mass_expiry_is_revoked_a_bounded_number_at_a_time_longest_expired_first() {
        let mut leases: Vec<(i64, i64)> = (1..=250).map(|id| (id, 5)).collect();
        leases.push((1000, 2)); // expires first
        let k = LeaseKeeper::new(Duration::from_secs(1), leases);
        assert!(k.tick(Some(3), false).is_empty(), "taking over");
        tokio::time::advance(Duration::from_secs(6)).await;
        let first = k.tick(Some(3), false);
        assert_eq!(first.len(), MAX_REVOKES_PER_TICK);
        assert_eq!(first[0], 1000, "the longest expired first");
        let second = k.tick(Some(3), false);
        let third = k.tick(Some(3), false);
        assert_eq!((second.len(), third.len()), (100, 51));
        let mut all: Vec<i64> = first.into_iter().chain(second).chain(third).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 251, "each once");
        assert!(k.tick(Some(3), false).is_empty(), "all in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_member_is_watched_for_a_while_after_it_left() {
        let keep = Duration::from_secs(61);
        let mut r = Removed::default();
        let start = Instant::now();
        assert_eq!(r.watched(&[2, 3], start, keep), vec![2, 3]);
        let mut w = r.watched(&[2], start + Duration::from_secs(1), keep);
        w.sort();
        assert_eq!(w, vec![2, 3], "3 just left the membership: still watched");
        let mut w = r.watched(&[2], start + Duration::from_secs(61), keep);
        w.sort();
        assert_eq!(w, vec![2, 3], "still within the span");
        assert_eq!(
            r.watched(&[2], start + Duration::from_secs(62), keep),
            vec![2],
            "dropped once the span is over"
        );
        // Removed and added again: watched as a member, and not twice.
        r.watched(&[], start + Duration::from_secs(63), keep);
        assert_eq!(r.watched(&[2], start + Duration::from_secs(64), keep), vec![2]);
    }
}
