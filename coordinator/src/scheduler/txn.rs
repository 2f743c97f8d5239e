//! Building etcd Txns for internal writes (the scheduler's plans, the Fleet service's
//! compare-and-set updates) and proposing them through Raft. Internal proposals skip the
//! client edge's op-count limit, so callers keep entries small themselves
//! ([`chunk_ops`]).

use esfleet_core::keys;
use esfleet_proto::etcdserverpb::{self as pb, compare};
use esfleet_proto::raft::{internal_request, internal_response, InternalRequest};
use prost::Message;
use tonic::Status;

use crate::node::Node;

pub fn put(key: &str, value: impl Into<Vec<u8>>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.into().into(),
            ..Default::default()
        })),
    }
}

pub fn delete(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

pub fn get(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

/// `value(key) == value`.
pub fn value_is(key: &str, value: impl Into<Vec<u8>>) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::Value(value.into().into())),
        range_end: Default::default(),
    }
}

/// `value(key) < value` (byte-wise, as etcd compares).
pub fn value_below(key: &str, value: impl Into<Vec<u8>>) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Less as i32,
        ..value_is(key, value)
    }
}

/// `mod_revision(key) == rev` (0: the key does not exist).
pub fn mod_is(key: &str, rev: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: Default::default(),
    }
}

/// Every key under `prefix` was last modified at or before `rev`: nothing there changed
/// since a read at `rev` (deletions excepted: a deleted key leaves no mod_revision).
pub fn prefix_unchanged_since(prefix: &str, rev: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Less as i32,
        target: compare::CompareTarget::Mod as i32,
        key: prefix.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::ModRevision(rev + 1)),
        range_end: keys::prefix_end(prefix).into(),
    }
}

/// Splits `ops` into groups of at most `max_bytes` encoded (at least one op per group),
/// keeping their order.
pub fn chunk_ops(ops: Vec<pb::RequestOp>, max_bytes: usize) -> Vec<Vec<pb::RequestOp>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for op in ops {
        let len = op.encoded_len() + 8;
        if !cur.is_empty() && size + len > max_bytes {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += len;
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Proposes a Txn through Raft (via the leader) and returns its applied result.
pub async fn propose(node: &Node, txn: pb::TxnRequest) -> Result<(pb::TxnResponse, i64), Status> {
    let resp = node
        .propose(InternalRequest {
            request: Some(internal_request::Request::Txn(txn)),
        })
        .await?;
    match resp.response {
        Some(internal_response::Response::Txn(t)) => Ok((t, resp.revision)),
        other => Err(Status::internal(format!("esfleet: unexpected apply result {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_order_and_bound_size() {
        let ops: Vec<_> = (0..10).map(|i| put(&format!("/k/{i}"), vec![b'x'; 100])).collect();
        let chunks = chunk_ops(ops, 350);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 10);
        let big = chunk_ops(vec![put("/k", vec![0; 1000])], 10);
        assert_eq!(big.len(), 1);
    }
}
