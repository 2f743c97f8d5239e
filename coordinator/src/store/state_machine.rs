//! The Raft state machine: applies committed entries to the [`Mvcc`] store, persists the
//! result atomically with the applied log id, tells watchers and the lease keeper what
//! changed, and builds and installs snapshots.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock};

use esfleet_proto::etcdserverpb as pb;
use esfleet_proto::mvccpb::Event;
use esfleet_proto::raft::{internal_request, internal_response, ApplyError, Empty, InternalResponse};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::backend::{Backend, BackendError, WriteBatch};
use super::keys;
use super::mvcc::{Changes, Mvcc, MvccError, SnapshotBody};
use crate::types::{LogId, PeerNode, Request, Response, StorageError, StoredMembership, TypeConfig};

/// What one applied entry changed, as watchers see it.
#[derive(Debug)]
pub struct WatchBatch {
    pub revision: i64,
    pub events: Vec<Event>,
    /// The state was replaced wholesale (a snapshot was installed): watchers must re-read
    /// history from where they were instead of trusting the stream.
    pub resync: bool,
}

/// Lease grants and revocations, for the leader-local lease keeper.
pub trait LeaseObserver: Send + Sync {
    fn granted(&self, id: i64, ttl: i64);
    fn revoked(&self, id: i64);
    /// The whole lease table was replaced (snapshot install).
    fn reset(&self, leases: Vec<(i64, i64)>);
}

/// State shared by the state machine and the request handlers.
pub struct StoreShared {
    pub mvcc: RwLock<Mvcc>,
    pub backend: Arc<dyn Backend>,
    pub watch_tx: broadcast::Sender<Arc<WatchBatch>>,
    pub lease_observer: RwLock<Option<Arc<dyn LeaseObserver>>>,
}

impl StoreShared {
    pub fn observe_leases(&self, o: Arc<dyn LeaseObserver>) {
        *self.lease_observer.write().expect("poisoned") = Some(o);
    }
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct AppliedMeta {
    applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, PeerNode>,
    data: Vec<u8>,
}

pub struct StateMachine {
    shared: Arc<StoreShared>,
    meta: AppliedMeta,
    current: Arc<Mutex<Option<Arc<StoredSnapshot>>>>,
    snapshot_seq: u64,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

impl StateMachine {
    pub fn open(backend: Arc<dyn Backend>) -> Result<(Self, Arc<StoreShared>), BackendError> {
        let mvcc = Mvcc::open(backend.clone())?;
        let meta = match backend.get(&keys::meta("sm"))? {
            Some(v) => bincode::deserialize(&v).map_err(|e| BackendError::Corrupt(format!("applied state: {e}")))?,
            None => AppliedMeta::default(),
        };
        let current = match backend.get(&keys::meta("snapshot"))? {
            Some(v) => Some(Arc::new(
                bincode::deserialize::<StoredSnapshot>(&v)
                    .map_err(|e| BackendError::Corrupt(format!("stored snapshot: {e}")))?,
            )),
            None => None,
        };
        let (watch_tx, _) = broadcast::channel(4096);
        let shared = Arc::new(StoreShared {
            mvcc: RwLock::new(mvcc),
            backend,
            watch_tx,
            lease_observer: RwLock::new(None),
        });
        let sm = Self {
            shared: shared.clone(),
            meta,
            current: Arc::new(Mutex::new(current)),
            snapshot_seq: 0,
        };
        Ok((sm, shared))
    }

    fn apply_request(
        m: &mut Mvcc,
        req: Request,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Result<internal_response::Response, BackendError> {
        use internal_request::Request as R;
        use internal_response::Response as A;
        let refused = |e: super::mvcc::KvError| {
            A::Error(ApplyError {
                code: e.grpc_code(),
                message: e.to_string(),
            })
        };
        Ok(match req.0.request {
            Some(R::Txn(txn)) => match m.apply_txn(&txn, batch, changes) {
                Ok(resp) => A::Txn(resp),
                Err(MvccError::Kv(e)) => refused(e),
                Err(MvccError::Backend(e)) => return Err(e),
            },
            Some(R::Compaction(c)) => match m.apply_compact(c.revision, batch) {
                Ok(()) => A::Compaction(pb::CompactionResponse { header: None }),
                Err(e) => refused(e),
            },
            Some(R::LeaseGrant(g)) => match m.apply_lease_grant(g.id, g.ttl, batch, changes) {
                Ok(()) => A::LeaseGrant(pb::LeaseGrantResponse {
                    header: None,
                    id: g.id,
                    ttl: g.ttl,
                    error: String::new(),
                }),
                Err(e) => refused(e),
            },
            Some(R::LeaseRevoke(r)) => match m.apply_lease_revoke(r.id, batch, changes) {
                Ok(()) => A::LeaseRevoke(pb::LeaseRevokeResponse { header: None }),
                Err(e) => refused(e),
            },
            Some(R::MemberAttributes(a)) => {
                m.apply_member_attributes(a, batch);
                A::Empty(Empty {})
            }
            Some(R::PromotionIntent(p)) => {
                m.apply_promotion_intent(p.id, p.promote, batch);
                A::Empty(Empty {})
            }
            None => A::Error(ApplyError {
                code: tonic::Code::InvalidArgument as i32,
                message: "empty request in the log".into(),
            }),
        })
    }

    fn notify(&self, changes: Changes) {
        if let Some(o) = self.shared.lease_observer.read().expect("poisoned").as_ref() {
            for (id, ttl) in &changes.leases_granted {
                o.granted(*id, *ttl);
            }
            for id in &changes.leases_revoked {
                o.revoked(*id);
            }
        }
        if !changes.events.is_empty() {
            // No receivers is fine: nobody watches.
            let _ = self.shared.watch_tx.send(Arc::new(WatchBatch {
                revision: changes.revision,
                events: changes.events,
                resync: false,
            }));
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = crate::types::Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            let mut batch = WriteBatch::default();
            let mut changes = Changes::default();
            let resp = {
                let mut m = self.shared.mvcc.write().expect("poisoned");
                let resp = match entry.payload {
                    EntryPayload::Blank => internal_response::Response::Empty(Empty {}),
                    EntryPayload::Normal(req) => Self::apply_request(&mut m, req, &mut batch, &mut changes)
                        .map_err(|e| sm_err(ErrorVerb::Write, e))?,
                    EntryPayload::Membership(mem) => {
                        let ids = mem.nodes().map(|(id, _)| *id).collect();
                        m.retain_members(&ids, &mut batch);
                        self.meta.membership = StoredMembership::new(Some(entry.log_id), mem);
                        internal_response::Response::Empty(Empty {})
                    }
                };
                self.meta.applied = Some(entry.log_id);
                m.persist_counters(&mut batch);
                batch.put(
                    keys::meta("sm"),
                    bincode::serialize(&self.meta).map_err(|e| sm_err(ErrorVerb::Write, e))?,
                );
                // Written under the lock: a reader never sees the index ahead of the records.
                self.shared
                    .backend
                    .write(batch)
                    .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                InternalResponse {
                    response: Some(resp),
                    revision: m.revision(),
                }
            };
            self.notify(changes);
            out.push(Response(resp));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        // Captured now, under the lock, so the snapshot is exactly the state at `applied`.
        let body = self.shared.mvcc.read().expect("poisoned").snapshot();
        SnapshotBuilder {
            body: body.map_err(|e| e.to_string()),
            meta: self.meta.clone(),
            seq: self.snapshot_seq,
            backend: self.shared.backend.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = bincode::deserialize(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let new_meta = AppliedMeta {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let stored = Arc::new(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        let (revision, leases) = {
            let mut m = self.shared.mvcc.write().expect("poisoned");
            let mut batch = WriteBatch::default();
            m.restore(body, &mut batch).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            batch.put(
                keys::meta("sm"),
                bincode::serialize(&new_meta).map_err(|e| sm_err(ErrorVerb::Write, e))?,
            );
            batch.put(
                keys::meta("snapshot"),
                bincode::serialize(&*stored).map_err(|e| sm_err(ErrorVerb::Write, e))?,
            );
            self.shared
                .backend
                .write(batch)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            self.shared.backend.flush().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            m.reload().map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let leases = m.leases().map(|(id, l)| (*id, l.ttl)).collect::<Vec<_>>();
            (m.revision(), leases)
        };
        self.meta = new_meta;
        *self.current.lock().expect("poisoned") = Some(stored);
        if let Some(o) = self.shared.lease_observer.read().expect("poisoned").as_ref() {
            o.reset(leases);
        }
        let _ = self.shared.watch_tx.send(Arc::new(WatchBatch {
            revision,
            events: Vec::new(),
            resync: true,
        }));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.current.lock().expect("poisoned").as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

pub struct SnapshotBuilder {
    body: Result<SnapshotBody, String>,
    meta: AppliedMeta,
    seq: u64,
    backend: Arc<dyn Backend>,
    current: Arc<Mutex<Option<Arc<StoredSnapshot>>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let body = std::mem::replace(&mut self.body, Err("snapshot already built".into()))
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let data = bincode::serialize(&body).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let id = match self.meta.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.meta.applied,
            last_membership: self.meta.membership.clone(),
            snapshot_id: id,
        };
        let stored = Arc::new(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        let mut batch = WriteBatch::default();
        batch.put(
            keys::meta("snapshot"),
            bincode::serialize(&*stored).map_err(|e| sm_err(ErrorVerb::Write, e))?,
        );
        self.backend.write(batch).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        };
        *self.current.lock().expect("poisoned") = Some(stored);
        Ok(snapshot)
    }
}
