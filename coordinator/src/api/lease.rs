//! etcd's Lease service. Grants and revocations go through Raft; keepalives and
//! time-to-live are answered by the leader from memory (see [`crate::lease`]).

use std::pin::Pin;
use std::sync::Arc;

use esfleet_proto::etcdserverpb::{self as pb, lease_server::Lease};
use esfleet_proto::raft::{internal_request, InternalRequest};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;
use crate::sync::Recover;

pub struct LeaseService {
    pub node: Arc<Node>,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = req.into_inner();
        if r.id < 0 {
            return Err(Status::invalid_argument("etcdserver: lease ID must be positive"));
        }
        let ttl = self.node.leases.grant_ttl(r.ttl)?;
        let id = if r.id == 0 { self.node.next_lease_id() } else { r.id };
        let grant = pb::LeaseGrantRequest { ttl, id };
        let resp = self
            .node
            .propose_client(InternalRequest {
                request: Some(internal_request::Request::LeaseGrant(grant)),
            })
            .await?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(self.node.header(resp.revision)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let r = req.into_inner();
        let resp = self
            .node
            .propose_client(InternalRequest {
                request: Some(internal_request::Request::LeaseRevoke(r)),
            })
            .await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.node.header(resp.revision)),
        }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let reply = match node.leases.keep_alive(&node, r.id).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(node.header(0)),
                        id: r.id,
                        ttl,
                    }),
                    Err(e) => Err(e),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.node.leases.time_to_live(&self.node, r.id, r.keys).await?,
        ))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.node.linearizable().await?;
        let leases = self
            .node
            .store
            .mvcc
            .read()
            .or_recover()
            .leases()
            .map(|(id, _)| pb::LeaseStatus { id: *id })
            .collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.node.header(0)),
            leases,
        }))
    }
}
