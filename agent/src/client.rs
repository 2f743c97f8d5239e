//! A small etcd v3 client for the coordinator members: the few calls the agent makes
//! (lease grant/keepalive/revoke, range, txn, watch), over one member at a time.
//!
//! Any member serves the agent (followers forward writes and keepalives to the leader), so
//! on an error that may be the member's fault (unreachable, timed out, shutting down) the
//! client moves to the next endpoint in its list. That is how the agent survives a leader
//! change or members going away: the caller retries, and the retry goes elsewhere.

use std::time::Duration;

use esfleet_proto::etcdserverpb::{
    self as pb, compare, kv_client::KvClient, lease_client::LeaseClient, request_op, response_op,
    watch_client::WatchClient, watch_request,
};
use esfleet_proto::mvccpb::KeyValue;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Keys per page when reading a whole prefix.
const PAGE: i64 = 500;
/// Largest response the agent accepts (a full page of 256 KiB unit files).
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The member says it knows no leader (or leads without a quorum). For the fence clock
    /// this counts as an acknowledgment, but only up to the outage grace after the last
    /// real one (`esfleet_core::lease`): the member may be a minority cut off with us.
    #[error("coordinator {endpoint}: no leader")]
    NoLeader { endpoint: String },
    #[error("coordinator {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("coordinator {endpoint}: {status}")]
    Rpc {
        endpoint: String,
        #[source]
        status: Status,
    },
    #[error("coordinator URL {endpoint:?} is not valid: {message}")]
    BadEndpoint { endpoint: String, message: String },
}

impl ClientError {
    pub fn is_no_leader(&self) -> bool {
        matches!(self, ClientError::NoLeader { .. })
    }

    /// etcd's "lease already exists": a grant of a lease id that is taken.
    pub fn is_lease_exists(&self) -> bool {
        matches!(self, ClientError::Rpc { status, .. }
            if status.code() == Code::FailedPrecondition && status.message().contains("lease already exists"))
    }

    /// etcd's `NotFound` (e.g. "requested lease not found").
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Rpc { status, .. } if status.code() == Code::NotFound)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// How the machine record registration went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The record is written, on our lease.
    Done,
    /// A live record for this machine id exists on another lease: another host claims the
    /// same id (or this host's previous agent, until its lease expires).
    Taken { lease: i64, value: String },
}

/// A watch on one prefix. Dropping it ends the stream.
pub struct Watch {
    /// Held so the request side stays open (closing it ends the server's session).
    _requests: mpsc::Sender<pb::WatchRequest>,
    pub responses: tonic::Streaming<pb::WatchResponse>,
}

pub struct Client {
    endpoints: Vec<String>,
    current: usize,
    channel: Option<Channel>,
    /// Connections made by the caller, one per endpoint (many simulated agents in one
    /// process share them instead of opening two connections each).
    shared: Option<Vec<Channel>>,
    timeout: Duration,
}

impl Client {
    /// `endpoints` are `http://host:port` URLs (validated by the config); `timeout` bounds
    /// each unary request.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Client {
        assert!(!endpoints.is_empty(), "the config guarantees at least one endpoint");
        Client {
            endpoints,
            current: 0,
            channel: None,
            shared: None,
            timeout,
        }
    }

    /// A client that talks over `channels` (one per endpoint, in the same order) instead
    /// of connecting itself: HTTP/2 multiplexes many agents' requests and watches over one
    /// connection. Used by the scale simulation, which runs a thousand agents in a few
    /// processes.
    pub fn with_channels(endpoints: Vec<String>, channels: Vec<Channel>, timeout: Duration) -> Client {
        assert_eq!(endpoints.len(), channels.len(), "one channel per endpoint");
        Client {
            shared: Some(channels),
            ..Client::new(endpoints, timeout)
        }
    }

    /// The member currently talked to.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    /// Moves to the next member.
    pub fn rotate(&mut self) {
        self.current = (self.current + 1) % self.endpoints.len();
        self.channel = None;
    }

    fn channel(&mut self) -> Result<Channel> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        if let Some(shared) = &self.shared {
            return Ok(shared[self.current].clone());
        }
        let endpoint = self.endpoint().to_string();
        let ch = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| ClientError::BadEndpoint {
                endpoint: endpoint.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        self.channel = Some(ch.clone());
        Ok(ch)
    }

    /// Runs one request with the timeout; maps errors, and moves to the next member on an
    /// error that may be this member's fault.
    async fn call<T, F>(&mut self, f: impl FnOnce(Channel) -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, Status>>,
    {
        let ch = self.channel()?;
        let endpoint = self.endpoint().to_string();
        let res = match tokio::time::timeout(self.timeout, f(ch)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(status)) => classify(endpoint, status),
            Err(_) => ClientError::Timeout {
                endpoint,
                timeout: self.timeout,
            },
        };
        if moves_on(&res) {
            self.rotate();
        }
        Err(res)
    }

    /// Grants the lease `id` (etcd lets the client choose it, so a grant that timed out
    /// after it was applied can be asked again without leaving a second lease behind);
    /// returns its id and the granted TTL (the member may raise it).
    pub async fn grant(&mut self, id: i64, ttl: i64) -> Result<(i64, i64)> {
        let r = self
            .call(|ch| async move {
                LeaseClient::new(ch)
                    .lease_grant(pb::LeaseGrantRequest { ttl, id })
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        Ok((r.id, r.ttl))
    }

    /// One keepalive: the lease's remaining TTL, 0 when the lease is gone.
    pub async fn keep_alive(&mut self, id: i64) -> Result<i64> {
        self.call(|ch| async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(pb::LeaseKeepAliveRequest { id }).await.ok();
            let mut stream = LeaseClient::new(ch)
                .lease_keep_alive(ReceiverStream::new(rx))
                .await?
                .into_inner();
            let reply = stream.message().await?;
            drop(tx);
            reply
                .map(|r| r.ttl)
                .ok_or_else(|| Status::unavailable("keepalive stream closed without an answer"))
        })
        .await
    }

    pub async fn revoke(&mut self, id: i64) -> Result<()> {
        self.call(|ch| async move {
            LeaseClient::new(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
                .map(|_| ())
        })
        .await
    }

    /// Every key under `prefix`, read at one revision (paged); returns them and that revision.
    pub async fn range_prefix(&mut self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let end = esfleet_core::keys::prefix_end(prefix);
        let mut out = Vec::new();
        let mut key = prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let req = pb::RangeRequest {
                key: key.clone().into(),
                range_end: end.clone().into(),
                limit: PAGE,
                revision,
                ..Default::default()
            };
            let r = self
                .call(|ch| async move {
                    KvClient::new(ch)
                        .max_decoding_message_size(MAX_RESPONSE)
                        .range(req)
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            if revision == 0 {
                revision = r.header.as_ref().map_or(0, |h| h.revision);
            }
            let last = r.kvs.last().map(|kv| kv.key.to_vec());
            out.extend(r.kvs);
            match last {
                Some(mut k) if r.more => {
                    k.push(0);
                    key = k;
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    pub async fn txn(&mut self, req: pb::TxnRequest) -> Result<pb::TxnResponse> {
        self.call(|ch| async move { KvClient::new(ch).txn(req).await.map(|r| r.into_inner()) })
            .await
    }

    /// Deletes `key` if it was last modified at `mod_revision` (a record rewritten since it
    /// was read stays). Returns whether it deleted.
    pub async fn delete_if_unchanged(&mut self, key: &str, mod_revision: i64) -> Result<bool> {
        let unchanged = compare_key(
            key,
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(mod_revision),
        );
        let del = request_op::Request::RequestDeleteRange(delete(key));
        Ok(self.txn(txn(vec![unchanged], vec![del], vec![])).await?.succeeded)
    }

    /// Writes `value` at `key` on `lease` unless a live record of another lease is there
    /// (compare `create_revision == 0`; if that fails, the key's lease must be ours).
    pub async fn register(&mut self, key: &str, value: &str, lease: i64) -> Result<Registration> {
        let put = || request_op::Request::RequestPut(put(key, value.as_bytes(), lease));
        let range = request_op::Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        });
        let created = compare_key(
            key,
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(0),
        );
        let r = self.txn(txn(vec![created], vec![put()], vec![range])).await?;
        if r.succeeded {
            return Ok(Registration::Done);
        }
        let existing = r.responses.into_iter().find_map(|op| match op.response {
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        });
        let Some(kv) = existing else {
            // Deleted in between: try again from the top next time.
            return Ok(Registration::Taken {
                lease: 0,
                value: String::new(),
            });
        };
        if kv.lease != lease {
            return Ok(Registration::Taken {
                lease: kv.lease,
                value: String::from_utf8_lossy(&kv.value).into_owned(),
            });
        }
        // Ours already (a re-registration on the same lease): refresh it, still guarded.
        let ours = compare_key(key, compare::CompareTarget::Lease, compare::TargetUnion::Lease(lease));
        let r = self.txn(txn(vec![ours], vec![put()], vec![])).await?;
        Ok(if r.succeeded {
            Registration::Done
        } else {
            Registration::Taken {
                lease: 0,
                value: String::new(),
            }
        })
    }

    /// Opens a watch on `prefix` from `start_revision` (0: from now).
    pub async fn watch(&mut self, prefix: &str, start_revision: i64) -> Result<Watch> {
        let create = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: prefix.as_bytes().to_vec().into(),
                range_end: esfleet_core::keys::prefix_end(prefix).into(),
                start_revision,
                ..Default::default()
            })),
        };
        let (tx, rx) = mpsc::channel(4);
        tx.send(create).await.ok();
        let responses = self
            .call(|ch| async move {
                WatchClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE)
                    .watch(ReceiverStream::new(rx))
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        Ok(Watch {
            _requests: tx,
            responses,
        })
    }

    /// Maps a watch stream error like a unary one (and moves on when it is the member's fault).
    pub fn stream_error(&mut self, status: Status) -> ClientError {
        let e = classify(self.endpoint().to_string(), status);
        if moves_on(&e) {
            self.rotate();
        }
        e
    }
}

fn classify(endpoint: String, status: Status) -> ClientError {
    if status.code() == Code::Unavailable && status.message().contains("no leader") {
        ClientError::NoLeader { endpoint }
    } else {
        ClientError::Rpc { endpoint, status }
    }
}

/// Errors after which another member may do better. A "no leader" answer moves on too: a
/// member in a minority says so while the majority may have one.
fn moves_on(e: &ClientError) -> bool {
    match e {
        ClientError::NoLeader { .. } | ClientError::Timeout { .. } => true,
        ClientError::Rpc { status, .. } => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::Aborted
        ),
        ClientError::BadEndpoint { .. } => true,
    }
}

pub fn put(key: &str, value: &[u8], lease: i64) -> pb::PutRequest {
    pb::PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.to_vec().into(),
        lease,
        ..Default::default()
    }
}

pub fn delete(key: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn compare_key(key: &str, target: compare::CompareTarget, value: compare::TargetUnion) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: target as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(value),
        ..Default::default()
    }
}

pub fn txn(
    compare: Vec<pb::Compare>,
    success: Vec<request_op::Request>,
    failure: Vec<request_op::Request>,
) -> pb::TxnRequest {
    let ops = |v: Vec<request_op::Request>| v.into_iter().map(|r| pb::RequestOp { request: Some(r) }).collect();
    pb::TxnRequest {
        compare,
        success: ops(success),
        failure: ops(failure),
    }
}
