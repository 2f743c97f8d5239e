//! etcd's KV service.

use std::sync::Arc;

use esfleet_proto::etcdserverpb::{self as pb, kv_server::Kv};
use esfleet_proto::raft::{internal_request, internal_response, InternalRequest};
use prost::Message;
use tonic::{Request, Response, Status};

use super::*;
use crate::node::Node;
use crate::store::mvcc::MvccError;
use crate::sync::Recover;

pub struct KvService {
    pub node: Arc<Node>,
}

pub fn mvcc_status(e: MvccError) -> Status {
    match e {
        MvccError::Kv(e) => Status::new(tonic::Code::from(e.grpc_code()), e.to_string()),
        MvccError::Backend(e) => internal(e),
    }
}

fn single_op(op: pb::request_op::Request) -> InternalRequest {
    InternalRequest {
        request: Some(internal_request::Request::Txn(pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(op) }],
            ..Default::default()
        })),
    }
}

impl KvService {
    async fn write_txn(&self, req: InternalRequest) -> Result<pb::TxnResponse, Status> {
        let resp = self.node.propose_client(req).await?;
        match resp.response {
            Some(internal_response::Response::Txn(mut t)) => {
                fill_headers(&mut t, &self.node.header(resp.revision));
                Ok(t)
            }
            other => Err(internal(format!("unexpected apply result {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let r = req.into_inner();
        check_range_request(&r)?;
        if !r.serializable {
            self.node.linearizable().await?;
        }
        let m = self.node.store.mvcc.read().or_recover();
        let mut resp = m.range(&r).map_err(mvcc_status)?;
        let rev = m.revision();
        drop(m);
        resp.header = Some(self.node.header(rev));
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let p = req.into_inner();
        if p.encoded_len() > MAX_REQUEST_BYTES {
            return Err(too_large());
        }
        check_put(&p)?;
        let t = self
            .write_txn(single_op(pb::request_op::Request::RequestPut(p)))
            .await?;
        match t.responses.into_iter().next().and_then(|r| r.response) {
            Some(pb::response_op::Response::ResponsePut(p)) => Ok(Response::new(p)),
            other => Err(internal(format!("unexpected put result {other:?}"))),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let d = req.into_inner();
        if d.encoded_len() > MAX_REQUEST_BYTES {
            return Err(too_large());
        }
        check_range(&d.key, &d.range_end)?;
        let t = self
            .write_txn(single_op(pb::request_op::Request::RequestDeleteRange(d)))
            .await?;
        match t.responses.into_iter().next().and_then(|r| r.response) {
            Some(pb::response_op::Response::ResponseDeleteRange(d)) => Ok(Response::new(d)),
            other => Err(internal(format!("unexpected delete result {other:?}"))),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = req.into_inner();
        if t.encoded_len() > MAX_REQUEST_BYTES {
            return Err(too_large());
        }
        check_txn(&t)?;
        if is_read_only(&t) {
            // Served locally after a read index, like etcd's read-only txns: no Raft write.
            self.node.linearizable().await?;
            let m = self.node.store.mvcc.read().or_recover();
            let mut resp = m.read_txn(&t).map_err(mvcc_status)?;
            let rev = m.revision();
            drop(m);
            fill_headers(&mut resp, &self.node.header(rev));
            return Ok(Response::new(resp));
        }
        let req = InternalRequest {
            request: Some(internal_request::Request::Txn(t)),
        };
        Ok(Response::new(self.write_txn(req).await?))
    }

    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        let c = req.into_inner();
        let resp = self
            .node
            .propose_client(InternalRequest {
                request: Some(internal_request::Request::Compaction(c)),
            })
            .await?;
        Ok(Response::new(pb::CompactionResponse {
            header: Some(self.node.header(resp.revision)),
        }))
    }
}
