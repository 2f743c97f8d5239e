//! The Raft state machine: applies committed entries to the [`Mvcc`] store, persists the
//! result atomically with the applied log id, tells watchers and the lease keeper what
//! changed, and builds and installs snapshots (files under `<data-dir>/snapshots/`, see
//! [`super::snapshots`]; sled holds only a pointer to the current one).

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); our helpers
// return it too rather than convert at every call.
#![allow(clippy::result_large_err)]

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
use super::mvcc::{Changes, KeyRange, Mvcc, MvccError, SnapshotBody};
use super::snapshots::{self, SnapshotDir, SnapshotError, SnapshotFile, SnapshotPointer};
use crate::sync::Recover;
use crate::types::{LogId, PeerNode, Request, Response, StorageError, StoredMembership, TypeConfig};

/// What one applied entry changed, as watchers see it.
#[derive(Debug)]
pub struct WatchBatch {
    pub revision: i64,
    pub events: Vec<Event>,
    /// The state was replaced wholesale (a snapshot was installed): watchers must re-read
    /// history from where they were instead of trusting the stream.
    pub resync: bool,
    /// `events`' positions in key order: every watch session looks at every batch, and a
    /// machine's watch finds its few events among a scheduler plan's thousands by a search,
    /// not by comparing each one's key (which, for 2,500 watchers, was a fifth of a loaded
    /// leader's CPU).
    by_key: Vec<u32>,
}

impl WatchBatch {
    pub fn new(revision: i64, events: Vec<Event>, resync: bool) -> WatchBatch {
        let mut by_key: Vec<u32> = (0..events.len() as u32).collect();
        by_key.sort_by(|a, b| event_key(&events[*a as usize]).cmp(event_key(&events[*b as usize])));
        WatchBatch {
            revision,
            events,
            resync,
            by_key,
        }
    }

    /// The events whose key is in `range`, in their order in the batch.
    pub fn in_range<'a>(&'a self, range: &KeyRange) -> impl Iterator<Item = &'a Event> + 'a {
        let from = match range.start() {
            std::ops::Bound::Included(s) => self
                .by_key
                .partition_point(|i| event_key(&self.events[*i as usize]) < s),
            std::ops::Bound::Excluded(s) => self
                .by_key
                .partition_point(|i| event_key(&self.events[*i as usize]) <= s),
            std::ops::Bound::Unbounded => 0,
        };
        let mut found: Vec<u32> = self.by_key[from..]
            .iter()
            .take_while(|i| range.contains(event_key(&self.events[**i as usize])))
            .copied()
            .collect();
        found.sort_unstable();
        found.into_iter().map(|i| &self.events[i as usize])
    }
}

fn event_key(e: &Event) -> &[u8] {
    e.kv.as_ref().map(|kv| kv.key.as_ref()).unwrap_or_default()
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
        *self.lease_observer.write().or_recover() = Some(o);
    }
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct AppliedMeta {
    applied: Option<LogId>,
    membership: StoredMembership,
}

/// The snapshot files and sled's pointer to the current one.
struct Snapshots {
    dir: SnapshotDir,
    backend: Arc<dyn Backend>,
    /// The current snapshot, as sled's meta key `snapshot` records it. Held while the
    /// pointer changes and while the current file is opened, so a file is never opened
    /// after it was replaced (and deleted).
    current: Mutex<Option<SnapshotPointer>>,
}

impl Snapshots {
    /// Makes `new` (a complete file) the current snapshot unless the current one is at
    /// least as recent (an install can overtake a build); deletes whichever lost. Blocking.
    fn replace(&self, new: SnapshotPointer) -> Result<(), StorageError> {
        let mut current = self.current.lock().or_recover();
        let newer = current
            .as_ref()
            .is_none_or(|c| c.meta.last_log_id < new.meta.last_log_id);
        if !newer {
            drop(current);
            self.remove_quietly(&new.file);
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put(
            keys::meta("snapshot"),
            bincode::serialize(&new).map_err(|e| snap_err(None, ErrorVerb::Write, e))?,
        );
        self.backend
            .write(batch)
            .map_err(|e| snap_err(None, ErrorVerb::Write, e))?;
        self.backend.flush().map_err(|e| snap_err(None, ErrorVerb::Write, e))?;
        let old = current.replace(new);
        drop(current);
        if let Some(old) = old {
            self.remove_quietly(&old.file);
        }
        Ok(())
    }

    /// A file that is no longer referenced; failing to delete it only wastes space until
    /// the next open.
    fn remove_quietly(&self, name: &str) {
        if let Err(e) = self.dir.remove(name) {
            tracing::warn!(error = %e, "cannot delete a replaced snapshot file");
        }
    }
}

pub struct StateMachine {
    shared: Arc<StoreShared>,
    meta: AppliedMeta,
    snapshots: Arc<Snapshots>,
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

fn snap_err(meta: Option<&SnapshotMeta<u64, PeerNode>>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(meta.map(|m| m.signature())),
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

fn join_err(e: tokio::task::JoinError) -> StorageError {
    snap_err(None, ErrorVerb::Write, format!("snapshot task failed: {e}"))
}

/// Reads the current snapshot pointer from the backend.
pub(crate) fn read_pointer(backend: &dyn Backend) -> Result<Option<SnapshotPointer>, BackendError> {
    match backend.get(&keys::meta("snapshot"))? {
        Some(v) => bincode::deserialize::<SnapshotPointer>(&v)
            .map(Some)
            .map_err(|e| BackendError::Corrupt(format!("snapshot pointer: {e}"))),
        None => Ok(None),
    }
}

impl StateMachine {
    /// Opens the state machine on `backend` with its snapshot files in `dir`: the current
    /// snapshot's file must be there and complete; every other file in `dir` is a leftover
    /// (an unfinished build or transfer, a replaced snapshot) and is deleted.
    pub fn open(backend: Arc<dyn Backend>, dir: SnapshotDir) -> Result<(Self, Arc<StoreShared>), BackendError> {
        let mvcc = Mvcc::open(backend.clone())?;
        let meta = match backend.get(&keys::meta("sm"))? {
            Some(v) => bincode::deserialize(&v).map_err(|e| BackendError::Corrupt(format!("applied state: {e}")))?,
            None => AppliedMeta::default(),
        };
        let current = read_pointer(backend.as_ref())?;
        if let Some(p) = &current {
            dir.check(p)?;
        }
        let removed = dir.remove_others(current.as_ref().map(|p| p.file.as_str()))?;
        if !removed.is_empty() {
            tracing::info!(dir = %dir.path().display(), ?removed, "deleted leftover snapshot files");
        }
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
            snapshots: Arc::new(Snapshots {
                dir,
                backend: shared.backend.clone(),
                current: Mutex::new(current),
            }),
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
        let req = match req.decode() {
            Ok(req) => req,
            // Only a faulty peer could have put it in the log: refused alike everywhere.
            Err(e) => {
                return Ok(A::Error(ApplyError {
                    code: tonic::Code::InvalidArgument as i32,
                    message: format!("a log entry is not a request: {e}"),
                }))
            }
        };
        // etcd's capped applier: while a NOSPACE alarm is raised, what would add data is
        // refused (deletes, compaction and alarms still apply, so space can be won back).
        if m.out_of_space() {
            let adds = match &req.request {
                Some(R::Txn(t)) => txn_puts(t),
                Some(R::LeaseGrant(_)) => true,
                _ => false,
            };
            if adds {
                return Ok(refused(super::mvcc::KvError::NoSpace));
            }
        }
        Ok(match req.request {
            Some(R::Alarm(a)) => A::Alarm(pb::AlarmResponse {
                header: None,
                alarms: m.apply_alarm(&a, batch),
            }),
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
                    ttl: g.ttl.max(1),
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
        if let Some(o) = self.shared.lease_observer.read().or_recover().as_ref() {
            for (id, ttl) in &changes.leases_granted {
                o.granted(*id, *ttl);
            }
            for id in &changes.leases_revoked {
                o.revoked(*id);
            }
        }
        if !changes.events.is_empty() {
            // No receivers is fine: nobody watches.
            let _ = self
                .shared
                .watch_tx
                .send(Arc::new(WatchBatch::new(changes.revision, changes.events, false)));
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
                let mut m = self.shared.mvcc.write().or_recover();
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
        let body = self.shared.mvcc.read().or_recover().snapshot();
        SnapshotBuilder {
            body: body.map_err(|e| e.to_string()),
            meta: self.meta.clone(),
            seq: self.snapshot_seq,
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let file = self
            .snapshots
            .dir
            .begin_receiving()
            .await
            .map_err(|e| snap_err(None, ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, PeerNode>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let snaps = self.snapshots.clone();
        let name = snaps.dir.new_name(&meta.snapshot_id);
        let len = snaps
            .dir
            .commit_received(*snapshot, &name)
            .await
            .map_err(|e| snap_err(Some(meta), ErrorVerb::Write, e))?;
        let path = snaps.dir.file_path(&name);
        let body = tokio::task::spawn_blocking(move || -> Result<SnapshotBody, SnapshotError> {
            let file = std::fs::File::open(&path).map_err(|source| SnapshotError::File {
                path: path.clone(),
                source,
            })?;
            snapshots::read_body(&path, file)
        })
        .await
        .map_err(join_err)?;
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                snaps.remove_quietly(&name);
                return Err(snap_err(Some(meta), ErrorVerb::Read, e));
            }
        };
        let new_meta = AppliedMeta {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let pointer = SnapshotPointer {
            meta: meta.clone(),
            file: name,
            len,
        };
        let (revision, leases, old) = {
            let mut m = self.shared.mvcc.write().or_recover();
            let mut current = snaps.current.lock().or_recover();
            let mut batch = WriteBatch::default();
            m.restore(body, &mut batch).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            batch.put(
                keys::meta("sm"),
                bincode::serialize(&new_meta).map_err(|e| sm_err(ErrorVerb::Write, e))?,
            );
            // The state and the pointer to the snapshot it came from move together.
            batch.put(
                keys::meta("snapshot"),
                bincode::serialize(&pointer).map_err(|e| sm_err(ErrorVerb::Write, e))?,
            );
            self.shared
                .backend
                .write(batch)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            self.shared.backend.flush().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            m.reload().map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let leases = m.leases().map(|(id, l)| (*id, l.ttl)).collect::<Vec<_>>();
            let old = current.replace(pointer);
            (m.revision(), leases, old)
        };
        if let Some(old) = old {
            snaps.remove_quietly(&old.file);
        }
        self.meta = new_meta;
        if let Some(o) = self.shared.lease_observer.read().or_recover().as_ref() {
            o.reset(leases);
        }
        let _ = self
            .shared
            .watch_tx
            .send(Arc::new(WatchBatch::new(revision, Vec::new(), true)));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.snapshots.current.lock().or_recover();
        let Some(p) = current.as_ref() else { return Ok(None) };
        let file = self
            .snapshots
            .dir
            .open_file(p)
            .map_err(|e| snap_err(Some(&p.meta), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: p.meta.clone(),
            snapshot: Box::new(file),
        }))
    }
}

pub struct SnapshotBuilder {
    body: Result<SnapshotBody, String>,
    meta: AppliedMeta,
    seq: u64,
    snapshots: Arc<Snapshots>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let body = std::mem::replace(&mut self.body, Err("snapshot already built".into()))
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let id = match self.meta.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.meta.applied,
            last_membership: self.meta.membership.clone(),
            snapshot_id: id,
        };
        let snaps = self.snapshots.clone();
        let m = meta.clone();
        // Serializing and fsyncing a large state takes a while: off the async workers.
        let file = tokio::task::spawn_blocking(move || -> Result<SnapshotFile, StorageError> {
            let name = snaps.dir.new_name(&m.snapshot_id);
            let len = snaps
                .dir
                .write(&name, &body)
                .map_err(|e| snap_err(Some(&m), ErrorVerb::Write, e))?;
            drop(body);
            let pointer = SnapshotPointer {
                meta: m.clone(),
                file: name,
                len,
            };
            // Opened before `replace`, which deletes the new file if an installed snapshot
            // overtook this build: the open file stays readable.
            let file = snaps
                .dir
                .open_file(&pointer)
                .map_err(|e| snap_err(Some(&m), ErrorVerb::Read, e))?;
            snaps.replace(pointer)?;
            Ok(file)
        })
        .await
        .map_err(join_err)??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

/// Whether a txn (or one nested in it) holds a put, on either branch.
pub fn txn_puts(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as Op;
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Op::RequestPut(_)) => true,
        Some(Op::RequestTxn(inner)) => txn_puts(inner),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;
    use esfleet_proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
    use esfleet_proto::raft::InternalRequest;
    use openraft::{CommittedLeaderId, Entry};
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::*;
    use crate::store::backend::MemBackend;

    fn put(index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
        let op = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                ..Default::default()
            })),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::new(&InternalRequest {
                request: Some(internal_request::Request::Txn(TxnRequest {
                    success: vec![op],
                    ..Default::default()
                })),
            })),
        }
    }

    fn mem() -> Arc<dyn Backend> {
        Arc::new(MemBackend::default())
    }

    fn open(backend: &Arc<dyn Backend>, dir: &Path) -> Result<StateMachine, BackendError> {
        StateMachine::open(backend.clone(), SnapshotDir::open(dir).unwrap()).map(|(sm, _)| sm)
    }

    /// Applies puts `k<from>..k<to>` as log indexes `from..to`.
    async fn apply_puts(sm: &mut StateMachine, from: u64, to: u64) {
        let entries: Vec<_> = (from..to).map(|i| put(i, &format!("k{i}"), &"v".repeat(100))).collect();
        sm.apply(entries).await.unwrap();
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    async fn read_all(snapshot: &mut SnapshotFile) -> Vec<u8> {
        let mut out = Vec::new();
        snapshot.seek(std::io::SeekFrom::Start(0)).await.unwrap();
        snapshot.read_to_end(&mut out).await.unwrap();
        out
    }

    fn value(sm: &StateMachine, key: &str) -> Option<Bytes> {
        let m = sm.shared.mvcc.read().or_recover();
        let r = m
            .range(&RangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })
            .unwrap();
        r.kvs.first().map(|kv| kv.value.clone())
    }

    #[test]
    fn a_batch_finds_a_ranges_events_in_their_order() {
        let ev = |k: &str, v: &str| Event {
            kv: Some(esfleet_proto::mvccpb::KeyValue {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let keys = ["s/m2/b", "s/m1/x", "t", "s/m2/a", "s/m1/a", "s/m2/b", "a", "s/m2"];
        let events: Vec<Event> = keys.iter().enumerate().map(|(i, k)| ev(k, &i.to_string())).collect();
        let batch = WatchBatch::new(7, events.clone(), false);
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        for range in [
            KeyRange::new(&b("s/m2/"), &b("s/m20")),
            KeyRange::new(&b("s/m1/x"), &Bytes::new()),
            KeyRange::new(&b("s/m2/b"), &Bytes::new()),
            KeyRange::new(&Bytes::from_static(&[0]), &Bytes::from_static(&[0])),
            KeyRange::new(&b("s/"), &Bytes::from_static(&[0])),
            KeyRange::new(&b("u"), &b("v")),
        ] {
            let naive: Vec<&Event> = events
                .iter()
                .filter(|e| range.contains(&e.kv.as_ref().unwrap().key))
                .collect();
            assert_eq!(batch.in_range(&range).collect::<Vec<_>>(), naive);
        }
        assert_eq!(batch.in_range(&KeyRange::new(&b("s/m2/"), &b("s/m20"))).count(), 3);
    }

    #[tokio::test]
    async fn an_entry_that_is_not_a_request_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = mem();
        let mut sm = open(&backend, dir.path()).unwrap();
        apply_puts(&mut sm, 1, 3).await;
        let before = sm.shared.mvcc.read().or_recover().revision();
        // A length-delimited field that runs past the end: not protobuf.
        let garbled: Request = bincode::deserialize(&bincode::serialize(&vec![0x0au8, 0x7f, 0x01]).unwrap()).unwrap();
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 3),
            payload: EntryPayload::Normal(garbled),
        };
        let resp = sm.apply(vec![entry]).await.unwrap();
        match &resp[0].0.response {
            Some(internal_response::Response::Error(e)) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
                assert!(e.message.contains("not a request"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sm.shared.mvcc.read().or_recover().revision(), before);
        assert_eq!(sm.meta.applied.map(|l| l.index), Some(3), "applied all the same");
    }

    #[tokio::test]
    async fn a_built_snapshot_is_a_file_that_replaces_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let mut sm = open(&backend, dir.path()).unwrap();
        apply_puts(&mut sm, 1, 20).await;

        let mut first = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with(".snap"), "{names:?}");
        let on_disk = std::fs::read(dir.path().join(&names[0])).unwrap();
        assert_eq!(read_all(&mut first.snapshot).await, on_disk);
        assert_eq!(&on_disk[..8], snapshots::MAGIC);
        let pointer = read_pointer(backend.as_ref()).unwrap().unwrap();
        assert_eq!(pointer.file, names[0]);
        assert_eq!(pointer.len, on_disk.len() as u64);
        assert_eq!(pointer.meta, first.meta);

        apply_puts(&mut sm, 20, 30).await;
        let second = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let after = files(dir.path());
        assert_eq!(after.len(), 1, "only the current snapshot stays: {after:?}");
        assert_ne!(after[0], names[0]);
        let mut current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, second.meta);
        assert_eq!(current.meta.last_log_id.unwrap().index, 29);
        assert_eq!(
            read_all(&mut current.snapshot).await,
            std::fs::read(dir.path().join(&after[0])).unwrap()
        );
        // The first reader was opened before the replacement: it still reads its file.
        assert_eq!(read_all(&mut first.snapshot).await, on_disk);
    }

    #[tokio::test]
    async fn a_snapshot_streamed_in_chunks_installs_on_a_new_member_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let mut leader = open(&backend, dir.path()).unwrap();
        apply_puts(&mut leader, 1, 50).await;
        leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let mut sent = leader.get_current_snapshot().await.unwrap().unwrap();
        let bytes = read_all(&mut sent.snapshot).await;

        let dir2 = tempfile::tempdir().unwrap();
        let backend2: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let mut learner = open(&backend2, dir2.path()).unwrap();
        let mut rx = learner.begin_receiving_snapshot().await.unwrap();
        for chunk in bytes.chunks(1000) {
            rx.write_all(chunk).await.unwrap();
        }
        rx.shutdown().await.unwrap();
        assert_eq!(files(dir2.path()).len(), 1, "the transfer's temporary file");
        learner.install_snapshot(&sent.meta, rx).await.unwrap();

        let names = files(dir2.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with(".snap"), "{names:?}");
        assert_eq!(std::fs::read(dir2.path().join(&names[0])).unwrap(), bytes);
        let (applied, _) = learner.applied_state().await.unwrap();
        assert_eq!(applied, sent.meta.last_log_id);
        let revision = |sm: &StateMachine| sm.shared.mvcc.read().or_recover().revision();
        assert_eq!(revision(&learner), revision(&leader));
        assert_eq!(value(&learner, "k42"), value(&leader, "k42"));
        assert!(value(&learner, "k42").is_some());
        drop(learner);

        let mut reopened = open(&backend2, dir2.path()).unwrap();
        assert_eq!(revision(&reopened), revision(&leader));
        assert_eq!(files(dir2.path()), names);
        let current = reopened.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, sent.meta);
    }

    #[tokio::test]
    async fn a_garbled_transfer_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let mut sm = open(&backend, dir.path()).unwrap();
        apply_puts(&mut sm, 1, 5).await;
        let meta = sm.get_snapshot_builder().await.build_snapshot().await.unwrap().meta;

        let dir2 = tempfile::tempdir().unwrap();
        let mut learner = open(&mem(), dir2.path()).unwrap();
        let mut rx = learner.begin_receiving_snapshot().await.unwrap();
        rx.write_all(b"not a snapshot at all").await.unwrap();
        rx.shutdown().await.unwrap();
        let err = learner.install_snapshot(&meta, rx).await.unwrap_err().to_string();
        assert!(err.contains("not an esfleet snapshot"), "{err}");
        assert_eq!(files(dir2.path()), Vec::<String>::new());

        // A transfer cut short (the leader moved on): its file goes with it.
        let mut rx = learner.begin_receiving_snapshot().await.unwrap();
        rx.write_all(b"partial").await.unwrap();
        drop(rx);
        assert_eq!(files(dir2.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn open_deletes_leftovers_and_refuses_a_missing_or_cut_current_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let mut sm = open(&backend, dir.path()).unwrap();
        apply_puts(&mut sm, 1, 10).await;
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        drop(sm);
        let current = files(dir.path());
        // What a kill -9 can leave: a build's temporary file, a transfer's, and a replaced
        // snapshot whose deletion did not happen.
        for leftover in ["1-20-3.abc.7.snap.tmp", "receiving-4.tmp", "1-5-1.abc.1.snap"] {
            std::fs::write(dir.path().join(leftover), b"junk").unwrap();
        }
        let mut sm = open(&backend, dir.path()).unwrap();
        assert_eq!(files(dir.path()), current);
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
        drop(sm);

        let path = dir.path().join(&current[0]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = open(&backend, dir.path())
            .err()
            .expect("a cut file is refused")
            .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("bytes long"),
            "{err}"
        );

        std::fs::remove_file(&path).unwrap();
        let err = open(&backend, dir.path())
            .err()
            .expect("a missing file is refused")
            .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("is missing"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_format_1_store_is_migrated_to_a_snapshot_file() {
        #[derive(Serialize)]
        struct StoredSnapshotV1 {
            meta: SnapshotMeta<u64, PeerNode>,
            data: Vec<u8>,
        }
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let snaps = SnapshotDir::open(dir.path()).unwrap();
        crate::store::check_version(backend.as_ref(), "mem", &snaps).unwrap();
        let mut sm = open(&backend, dir.path()).unwrap();
        apply_puts(&mut sm, 1, 30).await;
        // What format 1 wrote: the body inside the store, no file.
        let body = sm.shared.mvcc.read().or_recover().snapshot().unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 29)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-29-1".into(),
        };
        let old = StoredSnapshotV1 {
            meta: meta.clone(),
            data: bincode::serialize(&body).unwrap(),
        };
        let mut batch = WriteBatch::default();
        batch.put(keys::meta("snapshot"), bincode::serialize(&old).unwrap());
        batch.put(keys::meta("data-version"), 1u64.to_be_bytes().to_vec());
        backend.write(batch).unwrap();
        drop(sm);

        crate::store::check_version(backend.as_ref(), "mem", &snaps).unwrap();
        assert_eq!(
            backend.get(&keys::meta("data-version")).unwrap().unwrap(),
            keys::DATA_VERSION.to_be_bytes().to_vec()
        );
        let mut sm = open(&backend, dir.path()).unwrap();
        let mut current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        let bytes = read_all(&mut current.snapshot).await;
        assert_eq!(&bytes[..8], snapshots::MAGIC);
        assert_eq!(&bytes[12..], &old.data[..]);

        // The migrated file installs elsewhere.
        let dir2 = tempfile::tempdir().unwrap();
        let mut learner = open(&mem(), dir2.path()).unwrap();
        let mut rx = learner.begin_receiving_snapshot().await.unwrap();
        rx.write_all(&bytes).await.unwrap();
        rx.shutdown().await.unwrap();
        learner.install_snapshot(&meta, rx).await.unwrap();
        assert_eq!(value(&learner, "k7"), value(&sm, "k7"));
    }
}
