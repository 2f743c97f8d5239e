//! One coordinator member: Raft, the store, the peer clients and the lease keeper, and the
//! few operations every API needs: propose a request (here or through the leader), make a
//! read linearizable, change the membership, stamp a response header.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esfleet_proto::etcdserverpb::ResponseHeader;
use esfleet_proto::raft::{internal_response, InternalRequest, InternalResponse, PeerMessage};
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use crate::lease::LeaseKeeper;
use crate::peer::{self, PeerClients};
use crate::store::{keys, Backend, StoreShared};
use crate::sync::Recover;
use crate::types::{PeerNode, Raft, Request};

/// A membership change, executed by the leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum MemberChange {
    AddLearner { id: u64, peer_url: String },
    Promote { id: u64 },
    Remove { id: u64 },
}

pub struct Node {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub cluster_id: Arc<AtomicU64>,
    pub raft: Raft,
    pub store: Arc<StoreShared>,
    pub backend: Arc<dyn Backend>,
    pub peers: PeerClients,
    pub leases: Arc<LeaseKeeper>,
    /// How long a client request may wait for a leader and a commit.
    pub request_timeout: Duration,
    pub election_timeout: Duration,
    lease_ids: AtomicI64,
    /// The leader whose AppendEntries or snapshot this member last accepted (none yet),
    /// and when; the member's start until it hears one.
    heard: std::sync::Mutex<Heard>,
    /// Where `heard` is kept for a restart within the boot.
    memo: Option<crate::memo::Memo>,
    admission: Admission,
    reads: Arc<std::sync::Mutex<ReadIndexQueue>>,
    /// The storage quota in bytes (`--quota-backend-bytes`); 0: none.
    pub quota: AtomicU64,
    /// The store's size on disk and when it was read: asking the backend costs system
    /// calls, and writes arrive by the thousand per second.
    disk_size: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

/// How long a reading of the store's size on disk serves the quota check.
const DISK_SIZE_TTL: Duration = Duration::from_millis(250);

/// Whose write a proposal is, for admission on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A write through etcd's KV or Lease API (agents' registrations and state reports,
    /// `etcdctl`): refused at once with etcd's "too many requests" while the leader has
    /// [`MAX_IN_FLIGHT`] proposals in flight.
    Client,
    /// The cluster's own work (scheduler plans, lease expiry, compaction, membership) and
    /// operators' Fleet writes: always queued, so that an overload never starves them.
    Cluster,
}

/// Proposals a leader keeps in flight before it refuses clients' writes. Like etcd's
/// "too many requests" (which it answers when committed entries run 5,000 ahead of
/// applied ones): a write queued behind more than the leader commits within a client's
/// deadline is abandoned by the client and then still committed and applied; the client
/// retries, adding more, and an overloaded leader never catches up (at 2,500 simulated
/// machines, 100,000 proposals were applied after their clients had given up). About a
/// second of this machine's commit rate; refused writes cost nothing and clients back off.
pub const MAX_IN_FLIGHT: usize = 1000;

/// The gRPC metadata by which a follower marks a forwarded write as a client's.
pub const CLASS_HEADER: &str = "esfleet-class";

/// Where a request for the leader goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This member leads.
    Here,
    /// The leader's peer URL.
    Leader(String),
}

/// What a member knows of the leader when a request for it arrives.
#[derive(Debug, Clone)]
struct Hearing {
    leading: bool,
    /// The leader openraft names, with its peer URL if this member's config has it.
    named: Option<(u64, Option<String>)>,
    /// The leader this process last accepted a message from.
    heard: Option<u64>,
    /// How long since this member (this process, or an earlier one of this boot,
    /// [`crate::memo`]) last heard from a leader; `None`: not as far as it knows.
    silent_for: Option<Duration>,
}

/// When this member last heard from a leader.
struct Heard {
    /// The leader, as heard by this process.
    leader: Option<u64>,
    /// When (possibly by an earlier process of this boot).
    at: Option<tokio::time::Instant>,
    /// When `at` was last written to the memo (at most once a second).
    kept: Option<tokio::time::Instant>,
}

/// The one place that decides between "there is no leader" and a plain error, for every
/// request bound for the leader (keepalives, grants, writes, reads).
///
/// An agent keeps its units on "no leader" (bounded by its outage grace), so a member says
/// it only while the leader, if there is one, doubts this member and so waits that grace
/// before expiring leases ([`crate::lease`]): once it has heard from no leader for an
/// election timeout (a leader that many heartbeats without this member's answer doubts
/// it), and for no longer than [`crate::lease::NO_LEADER_SPAN`] (a removed member is
/// doubted only that long after its removal). The clock survives a restart within the
/// boot ([`crate::memo`]). Anything else that fails is a plain error, on which the agent
/// tries another member and gets no credit:
/// - never heard from a leader, as far as it knows (new, or restarted after a reboot);
/// - hearing a leader whose address this member's config lacks yet;
/// - openraft names a leader other than the one last heard (an election just ended);
/// - silent for longer than the span: cut off for long, or removed from the cluster.
fn route(h: &Hearing, election_timeout: Duration, span: Duration) -> Result<Route, Status> {
    if h.leading {
        return Ok(Route::Here);
    }
    if let Some(answer) = silence(h.silent_for, election_timeout, span) {
        return Err(answer);
    }
    match (&h.named, h.heard) {
        (Some((named, Some(url))), Some(heard)) if *named == heard => Ok(Route::Leader(url.clone())),
        (Some((named, None)), Some(heard)) if *named == heard => Err(Status::unavailable(format!(
            "this member follows leader {named:x} but has not yet learnt its address; try another member"
        ))),
        _ => Err(Status::unavailable(
            "this member is between leaders (an election just ended); try again, or try another member",
        )),
    }
}

/// What a member that has not heard from a leader for `silent_for` (`None`: not as far as
/// it knows) answers, or `None` while that is within an election timeout: "no leader" up
/// to the span, a plain error past it or when it never heard one. Followers ([`route`])
/// and a leader without a quorum ([`Node::without_quorum`]) answer alike.
fn silence(silent_for: Option<Duration>, election_timeout: Duration, span: Duration) -> Option<Status> {
    match silent_for {
        None => Some(Status::unavailable(
            "this member has not heard from a leader since it started; try another member",
        )),
        Some(s) if s > election_timeout + span => Some(Status::unavailable(format!(
            "this member has not heard from a leader for {s:.0?}: it is cut off from the others, or no \
             longer a member; try another member"
        ))),
        Some(s) if s > election_timeout => Some(no_leader()),
        Some(_) => None,
    }
}

/// An applied response the state machine refused, as the matching gRPC error.
fn refused(resp: InternalResponse) -> Result<InternalResponse, Status> {
    if let Some(internal_response::Response::Error(e)) = &resp.response {
        return Err(Status::new(Code::from(e.code), e.message.clone()));
    }
    Ok(resp)
}

/// The error etcd clients recognise when no leader is known.
pub fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

fn not_leader() -> Status {
    // A private marker between peers: the callee is not (or no longer) the leader, so the
    // request was not proposed and may be sent again.
    Status::failed_precondition("esfleet: not the leader")
}

fn is_not_leader(s: &Status) -> bool {
    s.code() == Code::FailedPrecondition && s.message() == "esfleet: not the leader"
}

fn stopped() -> Status {
    Status::unavailable("etcdserver: server stopped")
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        name: String,
        client_urls: Vec<String>,
        cluster_id: Arc<AtomicU64>,
        raft: Raft,
        store: Arc<StoreShared>,
        backend: Arc<dyn Backend>,
        peers: PeerClients,
        leases: Arc<LeaseKeeper>,
        request_timeout: Duration,
        election_timeout: Duration,
        memo: Option<crate::memo::Memo>,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        // Like etcd: member bits high, time below, so ids from different members and
        // different runs do not collide. Uniqueness is still checked at grant.
        let lease_seed = (((id & 0xffff) as i64) << 46 | (seed & ((1 << 46) - 1))) & i64::MAX;
        Self {
            id,
            name,
            client_urls,
            cluster_id,
            raft,
            store,
            backend,
            peers,
            leases,
            request_timeout,
            election_timeout,
            lease_ids: AtomicI64::new(lease_seed.max(1)),
            heard: std::sync::Mutex::new(Heard {
                leader: None,
                at: memo.as_ref().and_then(|m| m.heard()),
                kept: None,
            }),
            memo,
            admission: Admission::new(MAX_IN_FLIGHT),
            quota: AtomicU64::new(0),
            disk_size: std::sync::Mutex::new(None),
            reads: Arc::default(),
        }
    }

    /// Notes that this member just accepted a message from `leader` (or, for its own
    /// id, that it leads with a quorum).
    pub fn heard_from_leader(&self, leader: u64) {
        let now = tokio::time::Instant::now();
        let keep = {
            let mut h = self.heard.lock().or_recover();
            h.leader = Some(leader);
            h.at = Some(now);
            let keep = h.kept.is_none_or(|k| now - k >= Duration::from_secs(1));
            if keep {
                h.kept = Some(now);
            }
            keep
        };
        if let (true, Some(memo)) = (keep, &self.memo) {
            // Up to a second old when read back: the span then ends earlier, never later.
            memo.keep_heard(now);
        }
    }

    /// What a leader without a quorum answers: "no leader", like a follower cut off, for
    /// no longer than a follower would say it; a plain error after.
    pub fn without_quorum(&self) -> Status {
        let silent_for = self.heard.lock().or_recover().at.map(|at| at.elapsed());
        // Within an election timeout of its last quorum: it just lost it.
        silence(silent_for, self.election_timeout, crate::lease::NO_LEADER_SPAN).unwrap_or_else(no_leader)
    }

    /// Where this member keeps its fencing state for a restart ([`crate::memo`]).
    pub fn memo(&self) -> Option<&crate::memo::Memo> {
        self.memo.as_ref()
    }

    /// Where a request for the leader goes now, or the error to answer with ([`route`]).
    pub fn route(&self) -> Result<Route, Status> {
        let (heard, at) = {
            let h = self.heard.lock().or_recover();
            (h.leader, h.at)
        };
        let hearing = {
            let m = self.raft.metrics();
            let m = m.borrow();
            Hearing {
                leading: m.state == ServerState::Leader,
                named: m.current_leader.map(|id| {
                    let url = m
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| n.peer_url.clone());
                    (id, url)
                }),
                heard,
                silent_for: at.map(|at| at.elapsed()),
            }
        };
        route(&hearing, self.election_timeout, crate::lease::NO_LEADER_SPAN)
    }

    pub fn adopt_cluster_id(&self, id: u64) {
        if self
            .cluster_id
            .compare_exchange(0, id, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let mut b = crate::store::backend::WriteBatch::default();
            b.put(keys::meta("cluster-id"), id.to_be_bytes().to_vec());
            if let Err(e) = self.backend.write(b).and_then(|_| self.backend.flush()) {
                tracing::error!(error = %e, "cannot persist the cluster id");
            }
            tracing::info!(cluster_id = format!("{id:x}"), "joined cluster");
        }
    }

    pub fn next_lease_id(&self) -> i64 {
        loop {
            let id = self.lease_ids.fetch_add(1, Ordering::Relaxed) & i64::MAX;
            if id != 0 && self.store.mvcc.read().or_recover().lease(id).is_none() {
                return id;
            }
        }
    }

    /// The etcd response header; `revision` 0 means the store's current revision.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let revision = if revision > 0 {
            revision
        } else {
            self.store.mvcc.read().or_recover().revision()
        };
        ResponseHeader {
            cluster_id: self.cluster_id.load(Ordering::Relaxed),
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// True when this member leads and a quorum accepted a message it sent within an
    /// election timeout: a leader cut off from the others must not acknowledge lease
    /// renewals. Counted from the peer answers themselves ([`peer::Contacts`]), not from
    /// openraft's metrics, which are only refreshed when something changes and so go
    /// stale exactly when no follower answers.
    pub fn is_leader_with_quorum(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader {
            return false;
        }
        let since = tokio::time::Instant::now() - self.election_timeout;
        let leader = m.vote.leader_id();
        m.membership_config
            .membership()
            .get_joint_config()
            .iter()
            .all(|config| {
                let others = config.iter().copied().filter(|id| *id != self.id);
                let unconfirmed = self.peers.contacts.unconfirmed(others, leader, since).len();
                // This member counts for itself when it is a voter of this config.
                let confirmed = config.len() - unconfirmed;
                confirmed * 2 > config.len()
            })
    }

    /// Proposes on this member, which must be the leader; a client's write only while
    /// fewer than [`MAX_IN_FLIGHT`] proposals are in flight. A proposal counts until Raft
    /// answers it, even if the caller gave up waiting: it is still in the log.
    pub async fn propose_local(&self, req: InternalRequest, class: Class) -> Result<InternalResponse, Status> {
        let slot = self.admission.admit(class)?;
        let raft = self.raft.clone();
        let answer = tokio::spawn(async move {
            let _slot = slot;
            raft.client_write(Request::new(&req)).await
        })
        .await
        .map_err(|_| stopped())?;
        match answer {
            Ok(resp) => Ok(resp.data.0),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(not_leader()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(RaftError::Fatal(_)) => Err(stopped()),
        }
    }

    /// Runs `op` against the leader: `op(None)` when this member leads, `op(Some(url))`
    /// with the leader's peer URL otherwise. Retries while there is no leader or the
    /// leader moved, until the request timeout.
    async fn via_leader<T, F, Fut>(&self, mut op: F) -> Result<T, Status>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let retry = match self.route() {
                // This member's own answer, decided in one place: nothing was sent.
                Err(own) => own,
                Ok(route) => match op(match route {
                    Route::Here => None,
                    Route::Leader(url) => Some(url),
                })
                .await
                {
                    Ok(v) => return Ok(v),
                    Err(s) if is_not_leader(&s) => {
                        Status::unavailable("the leader stepped down while this request waited for it; try again")
                    }
                    // The leader lost its quorum: nothing was proposed. Passed through.
                    Err(s) if s.message() == "etcdserver: no leader" => s,
                    // The leader could not be reached at all: nothing was proposed.
                    Err(s) if s.code() == Code::Unavailable && s.message().contains("connect") => s,
                    Err(s) => return Err(s),
                },
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(retry);
            }
            // A fresh receiver counts the current value as unseen: mark it seen first, or
            // `changed` returns at once and this loop spins until the deadline.
            let mut metrics = self.raft.metrics();
            metrics.borrow_and_update();
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
    }

    /// Proposes a request of the cluster's own ([`Class::Cluster`]) through the leader and
    /// returns the applied result; a request the state machine refused comes back as the
    /// matching gRPC error.
    pub async fn propose(&self, req: InternalRequest) -> Result<InternalResponse, Status> {
        self.propose_as(req, Class::Cluster).await
    }

    /// [`Node::propose`] for a write that came through etcd's API ([`Class::Client`]).
    pub async fn propose_client(&self, req: InternalRequest) -> Result<InternalResponse, Status> {
        self.propose_as(req, Class::Client).await
    }

    async fn propose_as(&self, req: InternalRequest, class: Class) -> Result<InternalResponse, Status> {
        self.check_quota(&req).await?;
        let resp = self
            .via_leader(|target| {
                let req = req.clone();
                async move {
                    let Some(url) = target else {
                        return self.propose_local(req, class).await;
                    };
                    let mut client = self.peers.get(&url)?;
                    let mut msg = tonic::Request::new(PeerMessage {
                        cluster_id: self.cluster_id.load(Ordering::Relaxed),
                        data: req.encode_to_vec().into(),
                    });
                    msg.set_timeout(self.request_timeout);
                    if class == Class::Client {
                        msg.metadata_mut()
                            .insert(CLASS_HEADER, tonic::metadata::MetadataValue::from_static("client"));
                    }
                    let reply = client.forward(msg).await?.into_inner();
                    InternalResponse::decode(reply.data.as_ref())
                        .map_err(|e| Status::internal(format!("garbled reply from the leader: {e}")))
                }
            })
            .await?;
        refused(resp)
    }

    /// The store's size on disk, read at most every [`DISK_SIZE_TTL`].
    fn disk_size(&self) -> u64 {
        let mut cached = self.disk_size.lock().or_recover();
        match *cached {
            Some((at, size)) if at.elapsed() < DISK_SIZE_TTL => size,
            _ => {
                let size = self.backend.size_on_disk();
                *cached = Some((std::time::Instant::now(), size));
                size
            }
        }
    }

    /// etcd's quota check, made where a write arrives: a write that adds data while this
    /// member's store is over its quota raises the NOSPACE alarm (once; the alarm is
    /// replicated, and every member then refuses such writes when applying them) and is
    /// refused with etcd's error.
    async fn check_quota(&self, req: &InternalRequest) -> Result<(), Status> {
        use esfleet_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
        use esfleet_proto::raft::internal_request::Request as R;
        let quota = self.quota.load(Ordering::Relaxed);
        let adds = match &req.request {
            Some(R::Txn(t)) => crate::store::state_machine::txn_puts(t),
            Some(R::LeaseGrant(_)) => true,
            _ => false,
        };
        if quota == 0 || !adds || self.disk_size() <= quota {
            return Ok(());
        }
        let raised = self.store.mvcc.read().or_recover().out_of_space();
        if !raised {
            tracing::warn!(
                quota,
                size = self.disk_size(),
                "the store is over its quota: raising the NOSPACE alarm"
            );
            let alarm = InternalRequest {
                request: Some(R::Alarm(AlarmRequest {
                    action: AlarmAction::Activate as i32,
                    member_id: self.id,
                    alarm: AlarmType::Nospace as i32,
                })),
            };
            Box::pin(self.propose_as(alarm, Class::Cluster)).await?;
        }
        Err(Status::resource_exhausted("etcdserver: mvcc: database space exceeded"))
    }

    /// Proposes on this member only, never forwarded, bounded by the request timeout; a
    /// request the state machine refused comes back as the matching gRPC error. For what
    /// only the leader that decided it may propose (lease expiry).
    pub async fn propose_here(&self, req: InternalRequest) -> Result<InternalResponse, Status> {
        match tokio::time::timeout(self.request_timeout, self.propose_local(req, Class::Cluster)).await {
            Ok(resp) => refused(resp?),
            Err(_) => Err(Status::deadline_exceeded("etcdserver: request timed out")),
        }
    }

    /// The leader's read index (this member must lead and still have a quorum).
    ///
    /// Concurrent callers share rounds, as etcd's read loop does: a caller joins the next
    /// round to start, never one already running (whose index may predate its request).
    /// With 2,500 agents re-reading their schedules, a round per read was thousands of
    /// heartbeat rounds a second, most of them timing out.
    pub async fn leader_read_index(&self) -> Result<u64, Status> {
        let (raft, patience) = (self.raft.clone(), self.request_timeout / 2);
        join_round(&self.reads, move || {
            let raft = raft.clone();
            async move { read_index_round(&raft, patience).await }
        })
        .await
    }

    /// Waits until this member has applied everything committed before the call: after
    /// it, a local read is linearizable.
    pub async fn linearizable(&self) -> Result<(), Status> {
        let index = self
            .via_leader(|target| async move {
                let Some(url) = target else {
                    return self.leader_read_index().await;
                };
                let mut client = self.peers.get(&url)?;
                let mut msg = tonic::Request::new(PeerMessage {
                    cluster_id: self.cluster_id.load(Ordering::Relaxed),
                    data: Default::default(),
                });
                msg.set_timeout(self.request_timeout);
                peer::decode::<u64>(&client.read_index(msg).await?.into_inner().data)
            })
            .await?;
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| Status::unavailable("etcdserver: request timed out"))?;
        Ok(())
    }

    /// Changes the membership, through the leader.
    pub async fn change_members(&self, change: MemberChange) -> Result<(), Status> {
        let data = peer::encode(&change)?;
        self.via_leader(|target| {
            let data = data.clone();
            async move {
                let Some(url) = target else {
                    return self.change_members_local(peer::decode(&data)?).await;
                };
                let mut client = self.peers.get(&url)?;
                let mut msg = tonic::Request::new(PeerMessage {
                    cluster_id: self.cluster_id.load(Ordering::Relaxed),
                    data: data.into(),
                });
                msg.set_timeout(self.request_timeout * 2);
                client.change_members(msg).await.map(|_| ())
            }
        })
        .await
    }

    /// Executes a membership change; this member must be the leader.
    pub async fn change_members_local(&self, change: MemberChange) -> Result<(), Status> {
        if !self.is_leader() {
            return Err(not_leader());
        }
        let result = match change {
            MemberChange::AddLearner { id, peer_url } => self.raft.add_learner(id, PeerNode { peer_url }, false).await,
            MemberChange::Promote { id } => {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
            }
            MemberChange::Remove { id } => {
                let voters: BTreeSet<u64> = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect();
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(Status::failed_precondition(
                            "etcdserver: cannot remove the only voting member",
                        ));
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                } else {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                }
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(not_leader()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(match e {
                ChangeMembershipError::InProgress(_) => {
                    Status::failed_precondition(format!("etcdserver: a membership change is in progress: {e}"))
                }
                e => Status::failed_precondition(e.to_string()),
            }),
            Err(RaftError::Fatal(_)) => Err(stopped()),
        }
    }
}

/// One read-index round: confirming leadership is one heartbeat round with a short timeout
/// (one heartbeat interval); on a loaded machine a round can miss while the quorum is fine,
/// so it is tried again for up to `patience` before the callers hear "lost quorum". Every
/// waiting read shares the outcome, so giving up early failed them all at once.
async fn read_index_round(raft: &Raft, patience: Duration) -> Result<u64, Status> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match raft.get_read_log_id().await {
            Ok((read, _)) => return Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => return Err(not_leader()),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                return Err(Status::unavailable("etcdserver: leader lost quorum"))
            }
            Err(RaftError::Fatal(_)) => return Err(stopped()),
        }
    }
}

/// Linearizable reads waiting for the next read-index round, and whether one is running.
#[derive(Default)]
struct ReadIndexQueue {
    waiting: Vec<tokio::sync::oneshot::Sender<Result<u64, Status>>>,
    running: bool,
}

/// Waits for the result of the next `round` to start; starts rounds (in a task of their
/// own, so that a caller giving up strands nobody) while callers wait.
async fn join_round<F, Fut>(queue: &Arc<std::sync::Mutex<ReadIndexQueue>>, round: F) -> Result<u64, Status>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, Status>> + Send,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let start = {
        let mut q = queue.lock().or_recover();
        q.waiting.push(tx);
        !std::mem::replace(&mut q.running, true)
    };
    if start {
        let queue = queue.clone();
        tokio::spawn(async move {
            // Should a round panic, the queue must not stay "running" with nobody running
            // it: the waiters then hear an error and the next read starts a new round.
            let _unstick = Unstick(queue.clone());
            loop {
                let waiting = {
                    let mut q = queue.lock().or_recover();
                    if q.waiting.is_empty() {
                        q.running = false;
                        return;
                    }
                    std::mem::take(&mut q.waiting)
                };
                let index = round().await;
                for tx in waiting {
                    let _ = tx.send(index.clone());
                }
            }
        });
    }
    rx.await.map_err(|_| stopped())?
}

/// Clears a read-index queue if its round task unwinds.
struct Unstick(Arc<std::sync::Mutex<ReadIndexQueue>>);

impl Drop for Unstick {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut q) = self.0.lock() {
                q.running = false;
                q.waiting.clear();
            }
        }
    }
}

/// Counts the proposals in flight on a member and admits clients' writes below a limit.
struct Admission {
    /// Proposals made on this member and not yet answered by Raft (abandoned ones too).
    in_flight: Arc<AtomicUsize>,
    limit: usize,
    /// When the last refusal was logged.
    logged: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Admission {
    fn new(limit: usize) -> Admission {
        Admission {
            in_flight: Arc::default(),
            limit,
            logged: std::sync::Mutex::new(None),
        }
    }

    /// A slot for one proposal, held until Raft answers it; for a client's write only below
    /// the limit, else etcd's "too many requests" (logged at most once every 10 s).
    fn admit(&self, class: Class) -> Result<InFlight, Status> {
        let queued = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = InFlight(self.in_flight.clone());
        if class == Class::Cluster || queued < self.limit {
            return Ok(slot);
        }
        drop(slot);
        let now = tokio::time::Instant::now();
        let mut last = self.logged.lock().or_recover();
        if last.is_none_or(|at| now - at >= Duration::from_secs(10)) {
            *last = Some(now);
            tracing::warn!(
                in_flight = queued,
                limit = self.limit,
                "refusing clients' writes with \"too many requests\": the leader is behind; clients back off \
                 (the cluster's own writes still queue)"
            );
        }
        Err(Status::resource_exhausted("etcdserver: too many requests"))
    }
}

/// One proposal in flight on this member, counted until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reads_share_rounds_but_never_one_that_began_before_them() {
        let queue = Arc::new(std::sync::Mutex::new(ReadIndexQueue::default()));
        let rounds = Arc::new(AtomicU64::new(0));
        // Round n answers n, after 10 ms.
        let round = {
            let rounds = rounds.clone();
            move || {
                let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(n)
                }
            }
        };
        let first: Vec<_> = (0..50)
            .map(|_| {
                let (queue, round) = (queue.clone(), round.clone());
                tokio::spawn(async move { join_round(&queue, round).await })
            })
            .collect();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await; // round 1 is running
        let late: Vec<_> = (0..50)
            .map(|_| {
                let (queue, round) = (queue.clone(), round.clone());
                tokio::spawn(async move { join_round(&queue, round).await })
            })
            .collect();
        for h in first {
            assert_eq!(h.await.unwrap().unwrap(), 1, "the 50 first reads share round 1");
        }
        for h in late {
            assert_eq!(
                h.await.unwrap().unwrap(),
                2,
                "reads that came during round 1 wait for round 2"
            );
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        assert!(
            !queue.lock().or_recover().running,
            "the round task ends when nobody waits"
        );
    }

    #[test]
    fn clients_writes_are_refused_at_the_limit_and_the_clusters_never() {
        let a = Admission::new(2);
        let first = a.admit(Class::Client).unwrap();
        let _second = a.admit(Class::Client).unwrap();
        let refused = a.admit(Class::Client).map(|_| ()).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(refused.message(), "etcdserver: too many requests");
        // The cluster's own work queues past the limit, and counts.
        let own = a.admit(Class::Cluster).unwrap();
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 3);
        drop(first);
        assert!(
            a.admit(Class::Client).is_err(),
            "still at the limit with the cluster's write"
        );
        drop(own);
        let _third = a.admit(Class::Client).unwrap();
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 2, "refusals leave no count behind");
    }

    const ET: Duration = Duration::from_secs(1);
    const SPAN: Duration = Duration::from_secs(60);

    fn hearing(named: Option<(u64, Option<&str>)>, heard: Option<u64>, silent_ms: u64) -> Hearing {
        Hearing {
            leading: false,
            named: named.map(|(id, url)| (id, url.map(String::from))),
            heard,
            silent_for: Some(Duration::from_millis(silent_ms)),
        }
    }

    fn says_no_leader(r: &Result<Route, Status>) -> bool {
        matches!(r, Err(s) if s.code() == Code::Unavailable && s.message() == "etcdserver: no leader")
    }

    /// Agents (and etcd clients) read any Unavailable message containing "no leader" as
    /// the no-leader answer, so a plain error must not contain it.
    fn plain_error(r: &Result<Route, Status>) -> bool {
        matches!(r, Err(s) if s.code() == Code::Unavailable && !s.message().contains("no leader"))
    }

    #[test]
    fn a_follower_that_hears_its_leader_sends_requests_to_it() {
        let r = route(&hearing(Some((2, Some("http://b"))), Some(2), 200), ET, SPAN);
        assert_eq!(r.unwrap(), Route::Leader("http://b".into()));
        let mut h = hearing(None, None, 5_000);
        h.leading = true;
        assert_eq!(route(&h, ET, SPAN).unwrap(), Route::Here, "the leader answers itself");
    }

    #[test]
    fn no_leader_only_after_an_election_timeout_of_silence_and_within_the_span() {
        // openraft still names the silent leader for a while (its leader lease).
        let named = Some((2, Some("http://b")));
        assert!(says_no_leader(&route(&hearing(named, Some(2), 1_001), ET, SPAN)));
        assert!(says_no_leader(&route(&hearing(None, Some(2), 1_001), ET, SPAN)));
        assert!(says_no_leader(&route(&hearing(None, Some(2), 60_999), ET, SPAN)));
        let long = route(&hearing(None, Some(2), 61_001), ET, SPAN);
        assert!(plain_error(&long), "past the span: removed or long cut off, {long:?}");
        assert!(long.unwrap_err().message().contains("no longer a member"));
    }

    #[test]
    fn an_unsure_follower_answers_with_a_plain_error_not_no_leader() {
        // Never heard from a leader, as far as it knows: new, or restarted after a reboot.
        let mut h = hearing(None, None, 0);
        h.silent_for = None;
        let r = route(&h, ET, SPAN);
        assert!(plain_error(&r), "{r:?}");
        // Restarted within the boot: the silence an earlier process kept goes on (the
        // leader's id is not kept).
        assert!(says_no_leader(&route(&hearing(None, None, 5_000), ET, SPAN)));
        assert!(plain_error(&route(&hearing(None, None, 500), ET, SPAN)));
        assert!(plain_error(&route(&hearing(None, None, 61_001), ET, SPAN)));
        // Hears a leader its (lagging) config does not list: the leader watches it.
        let r = route(&hearing(Some((4, None)), Some(4), 100), ET, SPAN);
        assert!(plain_error(&r) && r.unwrap_err().message().contains("address"));
        let r = route(&hearing(None, Some(4), 100), ET, SPAN);
        assert!(plain_error(&r), "{r:?}");
        // An election just ended: openraft names a leader this member has not heard yet.
        let r = route(&hearing(Some((5, Some("http://e"))), Some(4), 100), ET, SPAN);
        assert!(plain_error(&r), "{r:?}");
    }
}
