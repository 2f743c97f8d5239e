//! etcd's v3 gRPC services over a [`Node`]. Every request is validated here, at the edge,
//! before it reaches Raft; errors carry etcd's messages so etcd clients understand them.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use esfleet_proto::etcdserverpb as pb;
use tonic::Status;

/// etcd's limit on one request (`--max-request-bytes` default).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// What the gRPC layer accepts before our own size check answers (etcd adds 512 KiB).
pub const MAX_GRPC_MESSAGE: usize = MAX_REQUEST_BYTES + 512 * 1024;
/// etcd's default limit on operations in one txn.
pub const MAX_TXN_OPS: usize = 128;

pub fn too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    Ok(())
}

fn check_range(key: &[u8], range_end: &[u8]) -> Result<(), Status> {
    check_key(key)?;
    if crate::store::mvcc::KeyRange::is_inverted(key, range_end) {
        return Err(Status::invalid_argument(format!(
            "etcdserver: invalid range: range_end {:?} sorts before key {:?} (inverted range)",
            String::from_utf8_lossy(range_end),
            String::from_utf8_lossy(key)
        )));
    }
    Ok(())
}

pub fn check_range_request(r: &pb::RangeRequest) -> Result<(), Status> {
    check_range(&r.key, &r.range_end)?;
    if pb::range_request::SortOrder::try_from(r.sort_order).is_err() {
        return Err(Status::invalid_argument("etcdserver: invalid sort option"));
    }
    if pb::range_request::SortTarget::try_from(r.sort_target).is_err() {
        return Err(Status::invalid_argument("etcdserver: invalid sort option"));
    }
    if r.limit < 0 {
        return Err(Status::invalid_argument("etcdserver: limit must not be negative"));
    }
    Ok(())
}

pub fn check_put(p: &pb::PutRequest) -> Result<(), Status> {
    check_key(&p.key)?;
    if p.ignore_value && !p.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(())
}

/// etcd's txn checks: op count, valid ops, and no key written twice.
pub fn check_txn(t: &pb::TxnRequest) -> Result<(), Status> {
    fn walk(t: &pb::TxnRequest, depth: usize) -> Result<(), Status> {
        if depth > 16 {
            return Err(Status::invalid_argument("etcdserver: txn nested too deeply"));
        }
        if t.compare.len() > MAX_TXN_OPS || t.success.len() > MAX_TXN_OPS || t.failure.len() > MAX_TXN_OPS {
            return Err(Status::invalid_argument(
                "etcdserver: too many operations in txn request",
            ));
        }
        for c in &t.compare {
            check_range(&c.key, &c.range_end)?;
            if pb::compare::CompareResult::try_from(c.result).is_err()
                || pb::compare::CompareTarget::try_from(c.target).is_err()
            {
                return Err(Status::invalid_argument("etcdserver: invalid compare"));
            }
        }
        for branch in [&t.success, &t.failure] {
            let mut written: Vec<(&[u8], &[u8])> = Vec::new();
            for op in branch {
                use pb::request_op::Request as R;
                match &op.request {
                    Some(R::RequestRange(r)) => check_range_request(r)?,
                    Some(R::RequestPut(p)) => {
                        check_put(p)?;
                        if written.iter().any(|(k, e)| overlaps(k, e, &p.key, &[])) {
                            return Err(Status::invalid_argument(
                                "etcdserver: duplicate key given in txn request",
                            ));
                        }
                        written.push((&p.key, &[]));
                    }
                    Some(R::RequestDeleteRange(d)) => {
                        check_range(&d.key, &d.range_end)?;
                        if written.iter().any(|(k, e)| overlaps(k, e, &d.key, &d.range_end)) {
                            return Err(Status::invalid_argument(
                                "etcdserver: duplicate key given in txn request",
                            ));
                        }
                        written.push((&d.key, &d.range_end));
                    }
                    Some(R::RequestTxn(inner)) => walk(inner, depth + 1)?,
                    None => return Err(Status::invalid_argument("etcdserver: request op is empty")),
                }
            }
        }
        Ok(())
    }
    walk(t, 0)
}

/// Whether two key ranges (etcd encoding) share a key.
fn overlaps(k1: &[u8], e1: &[u8], k2: &[u8], e2: &[u8]) -> bool {
    let end = |k: &[u8], e: &[u8]| -> Option<Vec<u8>> {
        if e.is_empty() {
            let mut x = k.to_vec();
            x.push(0);
            Some(x)
        } else if e == [0] {
            None
        } else {
            Some(e.to_vec())
        }
    };
    let (x1, x2) = (end(k1, e1), end(k2, e2));
    let before = |a: &[u8], end: &Option<Vec<u8>>| end.as_ref().is_none_or(|e| a < e.as_slice());
    before(k2, &x1) && before(k1, &x2)
}

pub fn is_read_only(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as R;
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(R::RequestRange(_)) | None => true,
        Some(R::RequestTxn(inner)) => is_read_only(inner),
        _ => false,
    })
}

/// Gives every nested response the txn's header, as etcd clients expect one there.
pub fn fill_headers(t: &mut pb::TxnResponse, h: &pb::ResponseHeader) {
    use pb::response_op::Response as R;
    t.header = Some(*h);
    for r in &mut t.responses {
        match &mut r.response {
            Some(R::ResponseRange(x)) => x.header = Some(*h),
            Some(R::ResponsePut(x)) => x.header = Some(*h),
            Some(R::ResponseDeleteRange(x)) => x.header = Some(*h),
            Some(R::ResponseTxn(x)) => fill_headers(x, h),
            None => {}
        }
    }
}

pub fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("esfleet: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rules() {
        assert!(overlaps(b"a", b"", b"a", b""));
        assert!(!overlaps(b"a", b"", b"b", b""));
        assert!(overlaps(b"a", b"c", b"b", b""));
        assert!(!overlaps(b"a", b"b", b"b", b""));
        assert!(overlaps(b"a", &[0], b"zzz", b""));
    }
}
