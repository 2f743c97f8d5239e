//! One coordinator member: Raft, the store, the peer clients and the lease keeper, and the
//! few operations every API needs: propose a request (here or through the leader), make a
//! read linearizable, change the membership, stamp a response header.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// The leader whose AppendEntries or snapshot this member last accepted, and when.
    heard: std::sync::Mutex<Option<(u64, tokio::time::Instant)>>,
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
            heard: std::sync::Mutex::new(None),
        }
    }

    /// Notes that this member just accepted a message from `leader`.
    pub fn heard_from_leader(&self, leader: u64) {
        *self.heard.lock().expect("poisoned") = Some((leader, tokio::time::Instant::now()));
    }

    /// Whether this member accepted a message from `leader` within an election timeout.
    /// openraft's follower waits a leader lease on top of its election timeout before it
    /// stands for election (2.5–3 s by default), so for that long it still names a leader
    /// that has gone silent.
    pub fn hears_from(&self, leader: u64) -> bool {
        self.heard
            .lock()
            .expect("poisoned")
            .is_some_and(|(l, at)| l == leader && at.elapsed() <= self.election_timeout)
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
            if id != 0 && self.store.mvcc.read().expect("poisoned").lease(id).is_none() {
                return id;
            }
        }
    }

    /// The etcd response header; `revision` 0 means the store's current revision.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let revision = if revision > 0 {
            revision
        } else {
            self.store.mvcc.read().expect("poisoned").revision()
        };
        ResponseHeader {
            cluster_id: self.cluster_id.load(Ordering::Relaxed),
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    /// The current leader and its peer URL, as this member knows it.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let url = m.membership_config.membership().get_node(&id)?.peer_url.clone();
        Some((id, url))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// True when this member leads and heard from a quorum within an election timeout:
    /// a leader cut off from the others must not acknowledge lease renewals.
    pub fn is_leader_with_quorum(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack
                .is_some_and(|ms| ms <= self.election_timeout.as_millis() as u64)
    }

    /// Proposes on this member, which must be the leader.
    pub async fn propose_local(&self, req: InternalRequest) -> Result<InternalResponse, Status> {
        match self.raft.client_write(Request(req)).await {
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
            let result = match self.leader() {
                Some((id, _)) if id == self.id => op(None).await,
                Some((_, url)) => op(Some(url)).await,
                None => Err(no_leader()),
            };
            let last = match result {
                Ok(v) => return Ok(v),
                Err(s) if is_not_leader(&s) || s.message() == "etcdserver: no leader" => no_leader(),
                // The leader could not be reached at all: nothing was proposed.
                Err(s) if s.code() == Code::Unavailable && s.message().contains("connect") => s,
                Err(s) => return Err(s),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            let mut metrics = self.raft.metrics();
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
    }

    /// Proposes a request through the leader and returns the applied result; a request the
    /// state machine refused comes back as the matching gRPC error.
    pub async fn propose(&self, req: InternalRequest) -> Result<InternalResponse, Status> {
        let resp = self
            .via_leader(|target| {
                let req = req.clone();
                async move {
                    let Some(url) = target else {
                        return self.propose_local(req).await;
                    };
                    let mut client = self.peers.get(&url)?;
                    let mut msg = tonic::Request::new(PeerMessage {
                        cluster_id: self.cluster_id.load(Ordering::Relaxed),
                        data: req.encode_to_vec().into(),
                    });
                    msg.set_timeout(self.request_timeout);
                    let reply = client.forward(msg).await?.into_inner();
                    InternalResponse::decode(reply.data.as_ref())
                        .map_err(|e| Status::internal(format!("garbled reply from the leader: {e}")))
                }
            })
            .await?;
        if let Some(internal_response::Response::Error(e)) = &resp.response {
            return Err(Status::new(Code::from(e.code), e.message.clone()));
        }
        Ok(resp)
    }

    /// The leader's read index (this member must lead and still have a quorum).
    ///
    /// Confirming leadership is one heartbeat round with a short timeout; on a starved
    /// machine one round can miss while the quorum is fine, so it is tried three times
    /// before the caller hears "lost quorum".
    pub async fn leader_read_index(&self) -> Result<u64, Status> {
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            match self.raft.get_read_log_id().await {
                Ok((read, _)) => return Ok(read.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => return Err(not_leader()),
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) if attempt < ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    return Err(Status::unavailable("etcdserver: leader lost quorum"))
                }
                Err(RaftError::Fatal(_)) => return Err(stopped()),
            }
        }
        unreachable!("the last attempt returns")
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
