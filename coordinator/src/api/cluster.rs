//! etcd's Cluster service: member list, add, remove, promote.
//!
//! A member added without `--learner` joins as a Raft learner and is promoted to voter by
//! the leader once it has caught up (see [`crate::server`]'s promoter), so adding a member
//! that has not started yet never costs the cluster its quorum.

use std::sync::Arc;

use esfleet_proto::etcdserverpb::{self as pb, cluster_server::Cluster};
use esfleet_proto::raft::{internal_request, InternalRequest, PromotionIntent};
use tonic::{Request, Response, Status};

use crate::node::{MemberChange, Node};
use crate::sync::Recover;
use crate::types::member_id;

pub struct ClusterService {
    pub node: Arc<Node>,
}

/// The members as etcd lists them: voters and learners, with the attributes each member
/// published (name and client URLs are empty until a member has started).
pub fn members(node: &Node) -> Vec<pb::Member> {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let m = node.store.mvcc.read().or_recover();
    membership
        .nodes()
        .map(|(id, n)| {
            let attrs = m.member(*id);
            pb::Member {
                id: *id,
                name: attrs.map(|a| a.name.clone()).unwrap_or_default(),
                peer_ur_ls: vec![n.peer_url.clone()],
                client_ur_ls: attrs.map(|a| a.client_urls.clone()).unwrap_or_default(),
                is_learner: !voters.contains(id),
            }
        })
        .collect()
}

pub fn validate_peer_url(url: &str) -> Result<(), Status> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Status::invalid_argument(format!(
            "peer URL {url:?}: must start with http:// (TLS is not supported yet)"
        ))
    })?;
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "peer URL {url:?}: expected http://HOST:PORT"
        ))),
    }
}

/// Waits until this member's view of the membership satisfies `done`, so a response lists
/// the members as they are after the change (etcdctl builds the new member's
/// --initial-cluster from it).
async fn await_membership(node: &Node, done: impl Fn(&[pb::Member]) -> bool) {
    let deadline = tokio::time::Instant::now() + node.request_timeout;
    let mut metrics = node.raft.metrics();
    while !done(&members(node)) && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), metrics.changed()).await;
    }
}

impl ClusterService {
    async fn set_intent(&self, id: u64, promote: bool) -> Result<(), Status> {
        let req = InternalRequest {
            request: Some(internal_request::Request::PromotionIntent(PromotionIntent {
                id,
                promote,
            })),
        };
        self.node.propose(req).await.map(|_| ())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = req.into_inner();
        let url = match r.peer_ur_ls.as_slice() {
            [url] => url.trim_end_matches('/').to_string(),
            [] => return Err(Status::invalid_argument("etcdserver: member add needs a peer URL")),
            _ => {
                return Err(Status::invalid_argument(
                    "esfleet: one peer URL per member (got several)",
                ))
            }
        };
        validate_peer_url(&url)?;
        let id = member_id(&url);
        if members(&self.node)
            .iter()
            .any(|m| m.id == id || m.peer_ur_ls.contains(&url))
        {
            return Err(Status::failed_precondition("etcdserver: Peer URLs already exists"));
        }
        if !r.is_learner {
            self.set_intent(id, true).await?;
        }
        self.node
            .change_members(MemberChange::AddLearner {
                id,
                peer_url: url.clone(),
            })
            .await?;
        // Committed on the leader; a follower answering here may not have applied it yet,
        // and etcd's answer lists every member after the addition.
        await_membership(&self.node, |ms| ms.iter().any(|m| m.id == id)).await;
        let member = pb::Member {
            id,
            peer_ur_ls: vec![url],
            is_learner: r.is_learner,
            ..Default::default()
        };
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.node.header(0)),
            member: Some(member),
            members: members(&self.node),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        if !members(&self.node).iter().any(|m| m.id == id) {
            return Err(Status::not_found("etcdserver: member not found"));
        }
        self.node.change_members(MemberChange::Remove { id }).await?;
        await_membership(&self.node, |ms| !ms.iter().any(|m| m.id == id)).await;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.node.header(0)),
            members: members(&self.node),
        }))
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.header(0)),
            members: members(&self.node),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        match members(&self.node).iter().find(|m| m.id == id) {
            None => return Err(Status::not_found("etcdserver: member not found")),
            Some(m) if !m.is_learner => {
                return Err(Status::failed_precondition(
                    "etcdserver: can only promote a learner member",
                ))
            }
            Some(_) => {}
        }
        self.set_intent(id, true).await?;
        self.node
            .change_members(MemberChange::Promote { id })
            .await
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "etcdserver: can only promote a learner member which is in sync with leader \
                 (it will be promoted when it has caught up): {}",
                    e.message()
                ))
            })?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.node.header(0)),
            members: members(&self.node),
        }))
    }
}
