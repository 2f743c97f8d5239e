//! The coordinators' peer transport: openraft's RPCs over tonic (client side: the
//! [`PeerNetwork`] factory; server side: [`PeerService`]), and the requests a follower
//! hands to the leader. openraft's messages travel bincode-encoded in a `PeerMessage`
//! envelope that also carries the cluster id, so members of different clusters never mix.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esfleet_proto::etcdserverpb as pb;
use esfleet_proto::raft::raft_peer_client::RaftPeerClient;
use esfleet_proto::raft::raft_peer_server::RaftPeer;
use esfleet_proto::raft::PeerMessage;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::LeaderId;
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::node::{MemberChange, Node};
use crate::sync::Recover;
use crate::types::{PeerNode, TypeConfig};

/// Largest message between peers (Raft batches, snapshot chunks).
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// Tonic clients to the other members, one lazily connected channel each, by peer URL;
/// and what their answers to this member's Raft messages showed.
#[derive(Default, Clone)]
pub struct PeerClients {
    cache: Arc<Mutex<HashMap<String, RaftPeerClient<Channel>>>>,
    pub contacts: Contacts,
}

/// When each other member last accepted this member's leadership: the send time of the
/// last AppendEntries (heartbeats included) or snapshot it answered without a higher vote,
/// with the leader id (term and member) that message carried. A member that accepted our
/// leadership names us as its leader, so it cannot be telling agents "there is no leader";
/// the lease keeper uses this to know when one might be ([`crate::lease`]).
#[derive(Default, Clone)]
pub struct Contacts(Arc<Mutex<HashMap<u64, Contact>>>);

/// The leader a member accepted, and when the message it accepted was sent.
type Contact = (LeaderId<u64>, Instant);

impl Contacts {
    fn record(&self, target: u64, leader: LeaderId<u64>, sent: Instant) {
        let mut m = self.0.lock().or_recover();
        let e = m.entry(target).or_insert((leader, sent));
        if e.0 != leader || e.1 < sent {
            *e = (leader, sent);
        }
    }

    /// Those of `members` that have not accepted `leader` since `since`.
    pub fn unconfirmed(
        &self,
        members: impl IntoIterator<Item = u64>,
        leader: &LeaderId<u64>,
        since: Instant,
    ) -> Vec<u64> {
        let m = self.0.lock().or_recover();
        members
            .into_iter()
            .filter(|id| !m.get(id).is_some_and(|(l, at)| l == leader && *at >= since))
            .collect()
    }
}

impl PeerClients {
    pub fn get(&self, url: &str) -> Result<RaftPeerClient<Channel>, Status> {
        let mut cache = self.cache.lock().or_recover();
        if let Some(c) = cache.get(url) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::internal(format!("bad peer URL {url}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3));
        let client = RaftPeerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        cache.insert(url.to_string(), client.clone());
        Ok(client)
    }
}

/// The most bytes of entries one AppendEntries carries (one larger entry still goes
/// alone). openraft batches up to 300 entries and gives the call one heartbeat interval
/// (100 ms by default): a batch of scheduler plans of up to a megabyte each cannot arrive,
/// be written and be synced in that time on a loaded machine, and was sent again and
/// again, each time timing out, while the follower heard nothing else from this leader.
const APPEND_BUDGET: u64 = 1 << 20;

/// How many of `entries` fit in `budget` bytes (at least one), if not all of them.
fn entries_within(entries: &[crate::types::Entry], budget: u64) -> Option<u64> {
    let mut total = 0u64;
    for (i, e) in entries.iter().enumerate() {
        total += bincode::serialized_size(e).unwrap_or(0);
        if total > budget && i > 0 {
            return Some(i as u64);
        }
    }
    None
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    bincode::serialize(v).map_err(|e| Status::internal(format!("encode: {e}")))
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    bincode::deserialize(b).map_err(|e| Status::invalid_argument(format!("garbled peer message: {e}")))
}

/// Builds openraft's connections to other members.
pub struct PeerNetwork {
    pub node_cluster_id: Arc<std::sync::atomic::AtomicU64>,
    pub clients: PeerClients,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerConnection {
        PeerConnection {
            target,
            url: node.peer_url.clone(),
            client: self.clients.get(&node.peer_url),
            contacts: self.clients.contacts.clone(),
            cluster_id: self.node_cluster_id.clone(),
        }
    }
}

pub struct PeerConnection {
    target: u64,
    url: String,
    client: Result<RaftPeerClient<Channel>, Status>,
    contacts: Contacts,
    cluster_id: Arc<std::sync::atomic::AtomicU64>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, PeerNode, RaftError<u64, E>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |s: String| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(s)));
        let mut client = self.client.clone().map_err(|s| unreachable(s.message().to_string()))?;
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut msg = Request::new(PeerMessage {
            cluster_id: self.cluster_id.load(Ordering::Relaxed),
            data: data.into(),
        });
        msg.set_timeout(option.hard_ttl());
        let reply = match method {
            "append" => client.append_entries(msg).await,
            "vote" => client.vote(msg).await,
            _ => client.install_snapshot(msg).await,
        }
        .map_err(|s| {
            let what = format!("{} ({}): {}", self.url, self.target, s.message());
            match s.code() {
                // Slow, not gone (openraft gives an AppendEntries one heartbeat interval): an
                // Unreachable would stall replication to it for 500 ms of backoff, which on a
                // loaded leader is how one slow fsync becomes a lost quorum.
                Code::DeadlineExceeded | Code::Cancelled => RPCError::Network(NetworkError::new(&std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    what,
                ))),
                _ => unreachable(what),
            }
        })?
        .into_inner();
        let res: Result<Resp, RaftError<u64, E>> =
            bincode::deserialize(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        if let Some(fit) = entries_within(&rpc.entries, APPEND_BUDGET) {
            // openraft sends this many at once from now on (for its next ten sends).
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
        let sent = Instant::now();
        let leader = *rpc.vote.leader_id();
        let res = self.call("append", &rpc, &option).await;
        if matches!(
            res,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.contacts.record(self.target, leader, sent);
        }
        res
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        let sent = Instant::now();
        let leader = *rpc.vote.leader_id();
        let res = self.call("snapshot", &rpc, &option).await;
        if res
            .as_ref()
            .is_ok_and(|r: &InstallSnapshotResponse<u64>| r.vote.leader_id() == &leader)
        {
            self.contacts.record(self.target, leader, sent);
        }
        res
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Result<VoteResponse<u64>, RpcErr> {
        self.call("vote", &rpc, &option).await
    }
}

/// The peer gRPC service.
pub struct PeerService {
    pub node: Arc<Node>,
}

impl PeerService {
    /// Refuses messages from another cluster; a joining member adopts the cluster id of
    /// the first leader that replicates to it. A sender without a cluster id is a member
    /// that has not joined anything yet: only another such member listens to it.
    fn check(&self, msg: &PeerMessage) -> Result<(), Status> {
        let ours = self.node.cluster_id.load(Ordering::Relaxed);
        if msg.cluster_id == ours {
            return Ok(());
        }
        if ours == 0 {
            self.node.adopt_cluster_id(msg.cluster_id);
            return Ok(());
        }
        if msg.cluster_id == 0 {
            return Err(Status::failed_precondition(format!(
                "this member belongs to cluster {ours:x} and the request carries no cluster id: \
                 a member must join (be added with `member add`) before it takes part"
            )));
        }
        Err(Status::failed_precondition(format!(
            "cluster id mismatch: this member belongs to cluster {ours:x}, the request came from cluster {:x}",
            msg.cluster_id
        )))
    }

    fn reply<T: Serialize>(&self, v: &T) -> Result<Response<PeerMessage>, Status> {
        Ok(Response::new(PeerMessage {
            cluster_id: self.node.cluster_id.load(Ordering::Relaxed),
            data: encode(v)?.into(),
        }))
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let msg = req.into_inner();
        self.check(&msg)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&msg.data)?;
        let leader = rpc.vote.leader_id().voted_for();
        let res = self.node.raft.append_entries(rpc).await;
        if let (
            Ok(
                AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict,
            ),
            Some(leader),
        ) = (&res, leader)
        {
            self.node.heard_from_leader(leader);
        }
        self.reply(&res)
    }

    async fn vote(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let msg = req.into_inner();
        self.check(&msg)?;
        let rpc: VoteRequest<u64> = decode(&msg.data)?;
        self.reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let msg = req.into_inner();
        self.check(&msg)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&msg.data)?;
        let vote = rpc.vote;
        let res = self.node.raft.install_snapshot(rpc).await;
        if let (Ok(r), Some(leader)) = (&res, vote.leader_id().voted_for()) {
            if r.vote.leader_id() == vote.leader_id() {
                self.node.heard_from_leader(leader);
            }
        }
        self.reply(&res)
    }

    async fn forward(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        // A member older than admission classes marks nothing: its writes queue as before.
        let class = match req.metadata().get(crate::node::CLASS_HEADER) {
            Some(v) if v == "client" => crate::node::Class::Client,
            _ => crate::node::Class::Cluster,
        };
        let msg = req.into_inner();
        self.check(&msg)?;
        let request = esfleet_proto::raft::InternalRequest::decode(msg.data.as_ref())
            .map_err(|e| Status::invalid_argument(format!("garbled forwarded request: {e}")))?;
        let resp = self.node.propose_local(request, class).await?;
        Ok(Response::new(PeerMessage {
            cluster_id: self.node.cluster_id.load(Ordering::Relaxed),
            data: resp.encode_to_vec().into(),
        }))
    }

    async fn read_index(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let msg = req.into_inner();
        self.check(&msg)?;
        let index = self.node.leader_read_index().await?;
        self.reply(&index)
    }

    async fn lease_keep_alive(
        &self,
        req: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let id = req.into_inner().id;
        let ttl = self.node.leases.keep_alive_local(&self.node, id)?;
        Ok(Response::new(pb::LeaseKeepAliveResponse {
            header: Some(self.node.header(0)),
            id,
            ttl,
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.node.leases.time_to_live_local(&self.node, r.id, r.keys)?,
        ))
    }

    async fn change_members(&self, req: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let msg = req.into_inner();
        self.check(&msg)?;
        let change: MemberChange = decode(&msg.data)?;
        self.node.change_members_local(change).await?;
        self.reply(&())
    }
}

#[cfg(test)]
mod tests {
    use esfleet_proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
    use esfleet_proto::raft::{internal_request, InternalRequest};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::types::{Entry, Request};

    /// An entry putting a value of `len` bytes.
    fn entry(index: u64, len: usize) -> Entry {
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"k".to_vec().into(),
                value: vec![0u8; len].into(),
                ..Default::default()
            })),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::new(&InternalRequest {
                request: Some(internal_request::Request::Txn(TxnRequest {
                    success: vec![put],
                    ..Default::default()
                })),
            })),
        }
    }

    #[test]
    fn an_append_carries_at_most_the_budget_and_always_one_entry() {
        let small: Vec<Entry> = (1..=300).map(|i| entry(i, 100)).collect();
        assert_eq!(
            entries_within(&small, APPEND_BUDGET),
            None,
            "300 small entries go together"
        );
        let big: Vec<Entry> = (1..=10).map(|i| entry(i, 300 * 1024)).collect();
        assert_eq!(
            entries_within(&big, APPEND_BUDGET),
            Some(3),
            "three of 300 KiB fit in 1 MiB"
        );
        let huge = vec![entry(1, 2 << 20), entry(2, 10)];
        assert_eq!(
            entries_within(&huge, APPEND_BUDGET),
            Some(1),
            "a larger entry goes alone"
        );
        assert_eq!(entries_within(&huge[..1], APPEND_BUDGET), None);
    }
}
