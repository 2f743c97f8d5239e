//! The replicated state: an MVCC key-value store with etcd's semantics (a global revision,
//! per-key create/mod revision and version, history until compaction), leases, and the
//! cluster's member attributes.
//!
//! Like etcd, history lives in the backend keyed by revision (`{main, sub}` → event), and
//! an in-memory index maps each key to its revisions, rebuilt from the backend at open.
//! The latest value of every key is kept in memory too, so current reads never touch disk.
//!
//! Everything here is deterministic: applying the same entries to the same state gives the
//! same state and answers on every member. No clock, no randomness.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use esfleet_proto::etcdserverpb::{
    self as pb, compare, range_request, request_op, response_op, Compare, RangeRequest, RangeResponse,
};
use esfleet_proto::mvccpb::{event::EventType, Event, KeyValue};
use esfleet_proto::raft::MemberAttributes;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::backend::{Backend, BackendError, WriteBatch};
use super::keys;

/// A request the store refuses. Deterministic: every member refuses it the same way.
/// Messages are etcd's, so etcd clients recognise them.
/// Longest lease TTL, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Most leases the store keeps (etcd has no limit). Each costs memory on every member and
/// work in the leader's lease keeper; esfleet needs one per agent and a few more.
pub const MAX_LEASES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("esfleet: too many leases (at most {MAX_LEASES}); revoke unused ones")]
    TooManyLeases,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: key not found")]
    KeyNotFound,
}

impl KvError {
    /// The gRPC status code etcd uses for this error.
    pub fn grpc_code(&self) -> i32 {
        use tonic::Code;
        (match self {
            KvError::Compacted | KvError::FutureRev => Code::OutOfRange,
            KvError::LeaseNotFound => Code::NotFound,
            KvError::LeaseExists => Code::FailedPrecondition,
            KvError::LeaseTtlTooLarge => Code::OutOfRange,
            KvError::TooManyLeases | KvError::NoSpace => Code::ResourceExhausted,
            KvError::KeyNotFound => Code::InvalidArgument,
        }) as i32
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rev {
    main: i64,
    sub: u32,
    tombstone: bool,
}

#[derive(Default, Debug)]
struct KeyHistory {
    /// Every revision of the key still in the store, oldest first.
    revs: Vec<Rev>,
    /// The current value, or None if the key is deleted.
    latest: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub ttl: i64,
    pub keys: BTreeSet<Bytes>,
}

/// What applying one write changed, for the watchers and the lease keeper.
#[derive(Default, Debug)]
pub struct Changes {
    /// The revision the events happened at (0 if none).
    pub revision: i64,
    /// Every event of the entry, each with its `prev_kv`.
    pub events: Vec<Event>,
    pub leases_granted: Vec<(i64, i64)>,
    pub leases_revoked: Vec<i64>,
}

/// The part of the state machine's metadata stored with every applied entry.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
struct Counters {
    revision: i64,
    compact_revision: i64,
}

/// A range of keys as etcd encodes it in `key`/`range_end`.
pub struct KeyRange {
    start: Bound<Bytes>,
    end: Bound<Bytes>,
    single: bool,
}

impl KeyRange {
    /// etcd's rules: empty `range_end` is the single key; `range_end == "\0"` means every key
    /// from `key` on; `key == "\0"` with `range_end == "\0"` means all keys.
    pub fn new(key: &Bytes, range_end: &Bytes) -> Self {
        if range_end.is_empty() {
            return Self {
                start: Bound::Included(key.clone()),
                end: Bound::Included(key.clone()),
                single: true,
            };
        }
        let end = if range_end.as_ref() == [0] {
            Bound::Unbounded
        } else {
            Bound::Excluded(range_end.clone())
        };
        Self {
            start: Bound::Included(key.clone()),
            end,
            single: false,
        }
    }

    /// True when the range can contain no key (`range_end` at or before `key`).
    /// Where the range starts.
    pub fn start(&self) -> Bound<&[u8]> {
        match &self.start {
            Bound::Included(k) => Bound::Included(k.as_ref()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref()),
            Bound::Unbounded => Bound::Unbounded,
        }
    }

    pub fn is_inverted(key: &[u8], range_end: &[u8]) -> bool {
        !range_end.is_empty() && range_end != [0] && range_end <= key
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => k >= s.as_ref(),
            Bound::Excluded(s) => k > s.as_ref(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => k <= e.as_ref(),
            Bound::Excluded(e) => k < e.as_ref(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }

    fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Excluded(e)) => e <= s,
            _ => false,
        }
    }
}

/// The MVCC store. Reads take `&self`; writes go through [`Mvcc::apply_*`], called by the
/// Raft state machine in log order.
pub struct Mvcc {
    backend: Arc<dyn Backend>,
    index: BTreeMap<Bytes, KeyHistory>,
    revision: i64,
    compact_revision: i64,
    leases: BTreeMap<i64, Lease>,
    members: BTreeMap<u64, MemberAttributes>,
    /// Learners that should become voters once they have caught up (`member add` without
    /// `--learner`), by id.
    promotions: BTreeSet<u64>,
    /// etcd's alarms: (member id, `AlarmType`). While a NOSPACE alarm is raised, writes that
    /// add data (puts, lease grants) are refused on every member (etcd's capped applier).
    alarms: BTreeSet<(u64, i32)>,
}

/// The most keys a range may hold for [`Mvcc::history`] to read it through the key index.
pub const INDEXED_HISTORY_KEYS: usize = 1024;

/// A write in progress: one revision, several changes.
struct WriteCtx<'a> {
    rev: i64,
    sub: u32,
    batch: &'a mut WriteBatch,
    changes: &'a mut Changes,
}

impl Mvcc {
    /// Loads the store's state from the backend.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Self, BackendError> {
        let mut m = Self {
            backend,
            index: BTreeMap::new(),
            revision: 0,
            compact_revision: 0,
            leases: BTreeMap::new(),
            members: BTreeMap::new(),
            promotions: BTreeSet::new(),
            alarms: BTreeSet::new(),
        };
        m.load()?;
        Ok(m)
    }

    fn load(&mut self) -> Result<(), BackendError> {
        self.index.clear();
        self.leases.clear();
        self.members.clear();
        self.promotions.clear();
        self.alarms.clear();
        if let Some(v) = self.backend.get(&keys::meta("alarms"))? {
            self.alarms = decode_bincode(&v, "alarms")?;
        }
        if let Some(v) = self.backend.get(&keys::meta("counters"))? {
            let c: Counters = decode_bincode(&v, "counters")?;
            self.revision = c.revision;
            self.compact_revision = c.compact_revision;
        } else {
            // As etcd: an empty store is at revision 1, so the first write gets revision 2.
            self.revision = 1;
            self.compact_revision = 0;
        }
        let mut err = None;
        let backend = self.backend.clone();
        backend.scan(&[keys::REV], &keys::space_end(keys::REV), &mut |k, v| {
            let Some((main, sub)) = keys::rev_of(k) else {
                err = Some(BackendError::Corrupt(format!("bad revision key {k:?}")));
                return false;
            };
            let ev = match Event::decode(v) {
                Ok(ev) => ev,
                Err(e) => {
                    err = Some(BackendError::Corrupt(format!("revision {main}.{sub}: {e}")));
                    return false;
                }
            };
            let kv = ev.kv.unwrap_or_default();
            let tombstone = ev.r#type == EventType::Delete as i32;
            let h = self.index.entry(kv.key.clone()).or_default();
            h.revs.push(Rev { main, sub, tombstone });
            h.latest = if tombstone { None } else { Some(kv) };
            true
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        let mut lease_err = None;
        backend.scan(&[keys::LEASE], &keys::space_end(keys::LEASE), &mut |k, v| match (
            keys::lease_id(k),
            <[u8; 8]>::try_from(v),
        ) {
            (Some(id), Ok(ttl)) => {
                self.leases.insert(
                    id,
                    Lease {
                        ttl: i64::from_be_bytes(ttl),
                        keys: BTreeSet::new(),
                    },
                );
                true
            }
            _ => {
                lease_err = Some(BackendError::Corrupt(format!("bad lease record {k:?}")));
                false
            }
        })?;
        if let Some(e) = lease_err {
            return Err(e);
        }
        for (key, h) in &self.index {
            if let Some(kv) = &h.latest {
                if kv.lease != 0 {
                    if let Some(l) = self.leases.get_mut(&kv.lease) {
                        l.keys.insert(key.clone());
                    }
                }
            }
        }
        if let Some(v) = self.backend.get(&keys::meta("members"))? {
            let list: Vec<Vec<u8>> = decode_bincode(&v, "members")?;
            for m in list {
                let m = MemberAttributes::decode(m.as_slice())
                    .map_err(|e| BackendError::Corrupt(format!("member record: {e}")))?;
                self.members.insert(m.id, m);
            }
        }
        if let Some(v) = self.backend.get(&keys::meta("promotions"))? {
            self.promotions = decode_bincode(&v, "promotions")?;
        }
        Ok(())
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn key_count(&self) -> usize {
        self.index.values().filter(|h| h.latest.is_some()).count()
    }

    fn load_kv(&self, r: Rev) -> Result<Option<KeyValue>, BackendError> {
        if r.tombstone {
            return Ok(None);
        }
        Ok(self.load_event(r)?.kv)
    }

    /// The event stored at revision `r`.
    fn load_event(&self, r: Rev) -> Result<Event, BackendError> {
        let v = self
            .backend
            .get(&keys::rev(r.main, r.sub))?
            .ok_or_else(|| BackendError::Corrupt(format!("revision {}.{} missing", r.main, r.sub)))?;
        Event::decode(v.as_slice()).map_err(|e| BackendError::Corrupt(format!("revision {}.{}: {e}", r.main, r.sub)))
    }

    fn kv_at(&self, h: &KeyHistory, at: i64) -> Result<Option<KeyValue>, BackendError> {
        if at >= self.revision {
            return Ok(h.latest.clone());
        }
        let pos = h.revs.partition_point(|r| r.main <= at);
        if pos == 0 {
            return Ok(None);
        }
        let r = h.revs[pos - 1];
        if r.tombstone {
            return Ok(None);
        }
        if h.revs.len() == pos && h.latest.is_some() {
            return Ok(h.latest.clone());
        }
        self.load_kv(r)
    }

    /// Whether the key has a live value at `at`, without reading it.
    fn exists_at(&self, h: &KeyHistory, at: i64) -> bool {
        if at >= self.revision {
            return h.latest.is_some();
        }
        let pos = h.revs.partition_point(|r| r.main <= at);
        pos > 0 && !h.revs[pos - 1].tombstone
    }

    fn histories<'a>(&'a self, range: &KeyRange) -> Box<dyn Iterator<Item = (&'a Bytes, &'a KeyHistory)> + 'a> {
        if range.is_empty() {
            return Box::new(std::iter::empty());
        }
        if range.single {
            if let Bound::Included(k) = &range.start {
                return Box::new(self.index.get_key_value(k).into_iter());
            }
        }
        Box::new(self.index.range::<Bytes, _>((range.start.clone(), range.end.clone())))
    }

    /// etcd's Range at the revision the request asks for (0: the current one).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let at = if req.revision <= 0 { self.revision } else { req.revision };
        if at > self.revision {
            return Err(KvError::FutureRev.into());
        }
        if req.revision > 0 && at < self.compact_revision {
            return Err(KvError::Compacted.into());
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        // The response needs every match counted but holds at most `limit` of them when
        // they come in key order (the index's), and none for `count_only`: a match that
        // will not be returned is only counted, and without loading its value when no
        // revision filter needs its record.
        let filtered = req.min_mod_revision > 0
            || req.max_mod_revision > 0
            || req.min_create_revision > 0
            || req.max_create_revision > 0;
        let key_order = in_key_order(req.sort_order, req.sort_target);
        let full = |held: usize| key_order && req.limit > 0 && held as i64 >= req.limit;
        let keep = |held: usize| !(req.count_only || full(held));
        let mut kvs = Vec::new();
        let mut count: i64 = 0;
        for (_, h) in self.histories(&range) {
            if !filtered && !keep(kvs.len()) {
                count += i64::from(self.exists_at(h, at));
                continue;
            }
            let Some(kv) = self.kv_at(h, at)? else { continue };
            if (req.min_mod_revision > 0 && kv.mod_revision < req.min_mod_revision)
                || (req.max_mod_revision > 0 && kv.mod_revision > req.max_mod_revision)
                || (req.min_create_revision > 0 && kv.create_revision < req.min_create_revision)
                || (req.max_create_revision > 0 && kv.create_revision > req.max_create_revision)
            {
                continue;
            }
            count += 1;
            if keep(kvs.len()) {
                kvs.push(kv);
            }
        }
        sort_kvs(&mut kvs, req.sort_order, req.sort_target);
        let mut more = false;
        if req.limit > 0 && count > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.count_only {
            kvs.clear();
        } else if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            header: None,
            kvs,
            more,
            count,
        })
    }

    fn compare(&self, c: &Compare) -> bool {
        let range = KeyRange::new(&c.key, &c.range_end);
        let mut any = false;
        for (_, h) in self.histories(&range) {
            let Some(kv) = &h.latest else { continue };
            any = true;
            if !compare_kv(c, kv) {
                return false;
            }
        }
        if !any {
            // As etcd: a missing key has version, revisions and lease 0, and no value, so a
            // VALUE compare on it always fails.
            if c.target == compare::CompareTarget::Value as i32 {
                return false;
            }
            return compare_kv(c, &KeyValue::default());
        }
        true
    }

    /// Which branch each (nested) txn takes, evaluated against the state before the txn,
    /// as etcd does, so checks and execution agree.
    fn txn_path(&self, txn: &pb::TxnRequest, path: &mut Vec<bool>) {
        let ok = txn.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        let ops = if ok { &txn.success } else { &txn.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                self.txn_path(t, path);
            }
        }
    }

    /// Refuses, before anything changes, the ops that etcd refuses: puts on a lease that
    /// does not exist, `ignore_value`/`ignore_lease` on a missing key, reads of a compacted
    /// or future revision.
    fn check_ops(&self, txn: &pb::TxnRequest, path: &[bool], pos: &mut usize) -> Result<(), KvError> {
        let ok = path[*pos];
        *pos += 1;
        let ops = if ok { &txn.success } else { &txn.failure };
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    if (p.ignore_value || p.ignore_lease)
                        && self.index.get(&p.key).and_then(|h| h.latest.as_ref()).is_none()
                    {
                        return Err(KvError::KeyNotFound);
                    }
                    if p.lease != 0 && !p.ignore_lease && !self.leases.contains_key(&p.lease) {
                        return Err(KvError::LeaseNotFound);
                    }
                }
                Some(request_op::Request::RequestRange(r)) => {
                    if r.revision > self.revision {
                        return Err(KvError::FutureRev);
                    }
                    if r.revision > 0 && r.revision < self.compact_revision {
                        return Err(KvError::Compacted);
                    }
                }
                Some(request_op::Request::RequestTxn(t)) => self.check_ops(t, path, pos)?,
                Some(request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    /// Applies a Txn (also a plain Put or DeleteRange, which travel as a one-op Txn).
    pub fn apply_txn(
        &mut self,
        txn: &pb::TxnRequest,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Result<pb::TxnResponse, MvccError> {
        let mut path = Vec::new();
        self.txn_path(txn, &mut path);
        self.check_ops(txn, &path, &mut 0)?;
        let mut ctx = WriteCtx {
            rev: self.revision + 1,
            sub: 0,
            batch,
            changes,
        };
        let resp = self.exec_txn(txn, &path, &mut 0, &mut ctx)?;
        if ctx.sub > 0 {
            self.revision = ctx.rev;
            ctx.changes.revision = ctx.rev;
        }
        Ok(resp)
    }

    /// Evaluates a txn that only reads (every op, nested ones too, is a Range) under a
    /// shared borrow, so read-only txns never wait for or stall the apply path. A write op
    /// found anyway is skipped: callers check [`is_read_only`](crate::api) first.
    pub fn read_txn(&self, txn: &pb::TxnRequest) -> Result<pb::TxnResponse, MvccError> {
        let mut path = Vec::new();
        self.txn_path(txn, &mut path);
        self.check_ops(txn, &path, &mut 0)?;
        self.exec_read_txn(txn, &path, &mut 0)
    }

    fn exec_read_txn(
        &self,
        txn: &pb::TxnRequest,
        path: &[bool],
        pos: &mut usize,
    ) -> Result<pb::TxnResponse, MvccError> {
        let ok = path[*pos];
        *pos += 1;
        let ops = if ok { &txn.success } else { &txn.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(r)) => response_op::Response::ResponseRange(self.range(r)?),
                Some(request_op::Request::RequestTxn(t)) => {
                    response_op::Response::ResponseTxn(self.exec_read_txn(t, path, pos)?)
                }
                _ => continue,
            };
            responses.push(pb::ResponseOp { response: Some(resp) });
        }
        Ok(pb::TxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }

    fn exec_txn(
        &mut self,
        txn: &pb::TxnRequest,
        path: &[bool],
        pos: &mut usize,
        ctx: &mut WriteCtx,
    ) -> Result<pb::TxnResponse, MvccError> {
        let ok = path[*pos];
        *pos += 1;
        let ops = if ok { &txn.success } else { &txn.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    // Reads inside a txn see the txn's own earlier writes.
                    let saved = self.revision;
                    if ctx.sub > 0 {
                        self.revision = ctx.rev;
                    }
                    let res = self.range(r);
                    self.revision = saved;
                    response_op::Response::ResponseRange(res?)
                }
                Some(request_op::Request::RequestPut(p)) => response_op::Response::ResponsePut(self.put(p, ctx)),
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_range(d, ctx))
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    response_op::Response::ResponseTxn(self.exec_txn(t, path, pos, ctx)?)
                }
                None => continue,
            };
            responses.push(pb::ResponseOp { response: Some(resp) });
        }
        Ok(pb::TxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }

    fn record(&mut self, ctx: &mut WriteCtx, ev: &Event) {
        let stored = Event {
            r#type: ev.r#type,
            kv: ev.kv.clone(),
            prev_kv: None,
        };
        ctx.batch.put(keys::rev(ctx.rev, ctx.sub), stored.encode_to_vec());
    }

    fn put(&mut self, p: &pb::PutRequest, ctx: &mut WriteCtx) -> pb::PutResponse {
        let prev = self.index.get(&p.key).and_then(|h| h.latest.clone());
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(ctx.rev, |k| k.create_revision),
            mod_revision: ctx.rev,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            value,
            lease,
        };
        if let Some(old) = prev.as_ref().map(|k| k.lease).filter(|&l| l != 0 && l != lease) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(&p.key);
            }
        }
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(p.key.clone());
            }
        }
        let ev = Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: prev.clone(),
        };
        self.record(ctx, &ev);
        let h = self.index.entry(p.key.clone()).or_default();
        h.revs.push(Rev {
            main: ctx.rev,
            sub: ctx.sub,
            tombstone: false,
        });
        h.latest = Some(kv);
        ctx.sub += 1;
        ctx.changes.events.push(ev);
        pb::PutResponse {
            header: None,
            prev_kv: if p.prev_kv { prev } else { None },
        }
    }

    fn delete_range(&mut self, d: &pb::DeleteRangeRequest, ctx: &mut WriteCtx) -> pb::DeleteRangeResponse {
        let range = KeyRange::new(&d.key, &d.range_end);
        let doomed: Vec<Bytes> = self
            .histories(&range)
            .filter(|(_, h)| h.latest.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let mut prev_kvs = Vec::new();
        for key in &doomed {
            if let Some(prev) = self.delete_key(key, ctx) {
                if d.prev_kv {
                    prev_kvs.push(prev);
                }
            }
        }
        pb::DeleteRangeResponse {
            header: None,
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    fn delete_key(&mut self, key: &Bytes, ctx: &mut WriteCtx) -> Option<KeyValue> {
        let prev = self.index.get(key).and_then(|h| h.latest.clone())?;
        if prev.lease != 0 {
            if let Some(l) = self.leases.get_mut(&prev.lease) {
                l.keys.remove(key);
            }
        }
        let tomb = KeyValue {
            key: key.clone(),
            mod_revision: ctx.rev,
            ..Default::default()
        };
        let ev = Event {
            r#type: EventType::Delete as i32,
            kv: Some(tomb),
            prev_kv: Some(prev.clone()),
        };
        self.record(ctx, &ev);
        let h = self.index.entry(key.clone()).or_default();
        h.revs.push(Rev {
            main: ctx.rev,
            sub: ctx.sub,
            tombstone: true,
        });
        h.latest = None;
        ctx.sub += 1;
        ctx.changes.events.push(ev);
        Some(prev)
    }

    pub fn apply_lease_grant(
        &mut self,
        id: i64,
        ttl: i64,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Result<(), KvError> {
        // Checked again here, not only where a client's request arrives: a proposal can
        // come from a peer's Forward or an older member, and whatever is applied becomes
        // every member's state and every replay's.
        // 0 means "no lease", and the client API refuses negative ids.
        if id <= 0 {
            return Err(KvError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(KvError::LeaseTtlTooLarge);
        }
        let ttl = ttl.max(1);
        if self.leases.contains_key(&id) {
            return Err(KvError::LeaseExists);
        }
        if self.leases.len() >= MAX_LEASES {
            return Err(KvError::TooManyLeases);
        }
        self.leases.insert(
            id,
            Lease {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        batch.put(keys::lease(id), ttl.to_be_bytes().to_vec());
        changes.leases_granted.push((id, ttl));
        Ok(())
    }

    /// Revokes a lease: its keys are deleted at one new revision (watchers see DELETEs).
    pub fn apply_lease_revoke(
        &mut self,
        id: i64,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Result<(), KvError> {
        let lease = self.leases.remove(&id).ok_or(KvError::LeaseNotFound)?;
        let mut ctx = WriteCtx {
            rev: self.revision + 1,
            sub: 0,
            batch,
            changes,
        };
        for key in &lease.keys {
            self.delete_key(key, &mut ctx);
        }
        if ctx.sub > 0 {
            self.revision = ctx.rev;
            ctx.changes.revision = ctx.rev;
        }
        batch.delete(keys::lease(id));
        changes.leases_revoked.push(id);
        Ok(())
    }

    /// Drops history at or below `rev`, keeping the value each key had at `rev`.
    pub fn apply_compact(&mut self, rev: i64, batch: &mut WriteBatch) -> Result<(), KvError> {
        if rev <= self.compact_revision {
            return Err(KvError::Compacted);
        }
        if rev > self.revision {
            return Err(KvError::FutureRev);
        }
        let mut emptied = Vec::new();
        for (key, h) in self.index.iter_mut() {
            let pos = h.revs.partition_point(|r| r.main <= rev);
            if pos == 0 {
                continue;
            }
            let keep_last = !h.revs[pos - 1].tombstone;
            let drop_upto = if keep_last { pos - 1 } else { pos };
            for r in h.revs.drain(..drop_upto) {
                batch.delete(keys::rev(r.main, r.sub));
            }
            if h.revs.is_empty() && h.latest.is_none() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.index.remove(&key);
        }
        self.compact_revision = rev;
        Ok(())
    }

    pub fn apply_member_attributes(&mut self, attrs: MemberAttributes, batch: &mut WriteBatch) {
        self.members.insert(attrs.id, attrs);
        self.persist_members(batch);
    }

    /// etcd's Alarm ACTIVATE / DEACTIVATE (GET is answered without a proposal). Returns
    /// the alarms now raised.
    pub fn apply_alarm(&mut self, req: &pb::AlarmRequest, batch: &mut WriteBatch) -> Vec<pb::AlarmMember> {
        use pb::alarm_request::AlarmAction;
        let entry = (req.member_id, req.alarm);
        let changed = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate) if req.alarm != pb::AlarmType::None as i32 => self.alarms.insert(entry),
            Ok(AlarmAction::Deactivate) => self.alarms.remove(&entry),
            _ => false,
        };
        if changed {
            batch.put(
                keys::meta("alarms"),
                bincode::serialize(&self.alarms).expect("serialize"),
            );
        }
        self.alarm_list()
    }

    pub fn alarm_list(&self) -> Vec<pb::AlarmMember> {
        self.alarms
            .iter()
            .map(|(member_id, alarm)| pb::AlarmMember {
                member_id: *member_id,
                alarm: *alarm,
            })
            .collect()
    }

    /// Whether a NOSPACE alarm is raised (by any member).
    pub fn out_of_space(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == pb::AlarmType::Nospace as i32)
    }

    pub fn apply_promotion_intent(&mut self, id: u64, promote: bool, batch: &mut WriteBatch) {
        if promote {
            self.promotions.insert(id);
        } else {
            self.promotions.remove(&id);
        }
        batch.put(
            keys::meta("promotions"),
            bincode::serialize(&self.promotions).expect("serialize"),
        );
    }

    /// Forgets what it knew of members no longer in the Raft membership.
    pub fn retain_members(&mut self, ids: &BTreeSet<u64>, batch: &mut WriteBatch) {
        let before = (self.members.len(), self.promotions.len());
        self.members.retain(|id, _| ids.contains(id));
        self.promotions.retain(|id| ids.contains(id));
        if before != (self.members.len(), self.promotions.len()) {
            self.persist_members(batch);
            batch.put(
                keys::meta("promotions"),
                bincode::serialize(&self.promotions).expect("serialize"),
            );
        }
    }

    fn persist_members(&self, batch: &mut WriteBatch) {
        let list: Vec<Vec<u8>> = self.members.values().map(|m| m.encode_to_vec()).collect();
        batch.put(keys::meta("members"), bincode::serialize(&list).expect("serialize"));
    }

    /// Adds the revision counters to a batch; the state machine calls it for every entry.
    pub fn persist_counters(&self, batch: &mut WriteBatch) {
        let c = Counters {
            revision: self.revision,
            compact_revision: self.compact_revision,
        };
        batch.put(keys::meta("counters"), bincode::serialize(&c).expect("serialize"));
    }

    pub fn member(&self, id: u64) -> Option<&MemberAttributes> {
        self.members.get(&id)
    }

    pub fn wants_promotion(&self, id: u64) -> bool {
        self.promotions.contains(&id)
    }

    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn leases(&self) -> impl Iterator<Item = (&i64, &Lease)> {
        self.leases.iter()
    }

    /// Events of revisions `from..` matching `range`, oldest first, at most about `max`
    /// (whole revisions only). Returns them and the next revision to read from.
    ///
    /// A range of at most [`INDEXED_HISTORY_KEYS`] keys (a machine's schedule, one key) is
    /// read through the key index: only its own revisions are loaded. A wider one scans
    /// every revision since `from`. Watchers that fell behind catch up through here, each on
    /// its own; with 2,500 agents behind a burst of writes, scanning the whole history for
    /// each of them was a fifth of a loaded leader's CPU, under the store's read lock.
    pub fn history(
        &self,
        from: i64,
        range: &KeyRange,
        want_prev: bool,
        max: usize,
    ) -> Result<(Vec<(i64, Event)>, i64), MvccError> {
        if from < self.compact_revision {
            return Err(KvError::Compacted.into());
        }
        match self.revisions_in(range, from, INDEXED_HISTORY_KEYS) {
            Some(revs) => self.history_of(revs, want_prev, max),
            None => self.history_scan(from, range, want_prev, max),
        }
    }

    /// The revisions `from..` of the keys in `range`, in order, if it holds at most `limit`
    /// keys.
    fn revisions_in(&self, range: &KeyRange, from: i64, limit: usize) -> Option<Vec<(Rev, &Bytes)>> {
        let mut out = Vec::new();
        for (n, (key, h)) in self.histories(range).enumerate() {
            if n >= limit {
                return None;
            }
            let pos = h.revs.partition_point(|r| r.main < from);
            out.extend(h.revs[pos..].iter().map(|r| (*r, key)));
        }
        out.sort_unstable_by_key(|(r, _)| (r.main, r.sub));
        Some(out)
    }

    /// [`Mvcc::history`] of these revisions (in order).
    fn history_of(
        &self,
        revs: Vec<(Rev, &Bytes)>,
        want_prev: bool,
        max: usize,
    ) -> Result<(Vec<(i64, Event)>, i64), MvccError> {
        let mut out = Vec::new();
        let mut last_main = None;
        for (r, key) in revs {
            // Stop only between revisions, so a revision is never delivered in halves.
            if out.len() >= max && last_main != Some(r.main) {
                return Ok((out, r.main));
            }
            last_main = Some(r.main);
            let mut ev = self.load_event(r)?;
            if want_prev {
                ev.prev_kv = self.prev_of(key, r.main, r.sub)?;
            }
            out.push((r.main, ev));
        }
        Ok((out, self.revision + 1))
    }

    /// [`Mvcc::history`] by a scan of every revision since `from`.
    fn history_scan(
        &self,
        from: i64,
        range: &KeyRange,
        want_prev: bool,
        max: usize,
    ) -> Result<(Vec<(i64, Event)>, i64), MvccError> {
        let mut out = Vec::new();
        let mut last_main = None;
        let mut stopped_at = None;
        let mut err = None;
        let upto = self.revision;
        self.backend
            .scan(&keys::rev(from, 0), &keys::rev(upto + 1, 0), &mut |k, v| {
                let Some((main, sub)) = keys::rev_of(k) else {
                    return true;
                };
                // Stop only between revisions, so a revision is never delivered in halves.
                if out.len() >= max && last_main != Some(main) {
                    stopped_at = Some(main);
                    return false;
                }
                last_main = Some(main);
                let mut ev = match Event::decode(v) {
                    Ok(ev) => ev,
                    Err(e) => {
                        err = Some(BackendError::Corrupt(format!("revision {main}.{sub}: {e}")));
                        return false;
                    }
                };
                let key = ev.kv.as_ref().map(|kv| kv.key.clone()).unwrap_or_default();
                if !range.contains(&key) {
                    return true;
                }
                if want_prev {
                    match self.prev_of(&key, main, sub) {
                        Ok(p) => ev.prev_kv = p,
                        Err(e) => {
                            err = Some(e);
                            return false;
                        }
                    }
                }
                out.push((main, ev));
                true
            })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        Ok((out, stopped_at.unwrap_or(upto + 1)))
    }

    fn prev_of(&self, key: &Bytes, main: i64, sub: u32) -> Result<Option<KeyValue>, BackendError> {
        let Some(h) = self.index.get(key) else { return Ok(None) };
        let pos = h.revs.partition_point(|r| (r.main, r.sub) < (main, sub));
        if pos == 0 {
            return Ok(None);
        }
        self.load_kv(h.revs[pos - 1])
    }

    /// Every record of the replicated state, for a snapshot.
    pub fn snapshot(&self) -> Result<SnapshotBody, BackendError> {
        let mut records = Vec::new();
        self.backend
            .scan(&[keys::REV], &keys::space_end(keys::REV), &mut |k, v| {
                records.push((k.to_vec(), v.to_vec()));
                true
            })?;
        Ok(SnapshotBody {
            format: SNAPSHOT_FORMAT,
            revision: self.revision,
            compact_revision: self.compact_revision,
            records,
            leases: self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect(),
            members: self.members.values().map(|m| m.encode_to_vec()).collect(),
            promotions: self.promotions.clone(),
            alarms: self.alarms.clone(),
        })
    }

    /// Replaces the whole replicated state with a snapshot's.
    pub fn restore(&mut self, body: SnapshotBody, batch: &mut WriteBatch) -> Result<(), BackendError> {
        if body.format != SNAPSHOT_FORMAT {
            return Err(BackendError::Corrupt(format!(
                "snapshot format {} (this build reads {SNAPSHOT_FORMAT})",
                body.format
            )));
        }
        for space in [keys::REV, keys::LEASE] {
            for k in super::backend::keys_in(self.backend.as_ref(), &[space], &keys::space_end(space))? {
                batch.delete(k);
            }
        }
        for (k, v) in body.records {
            batch.put(k, v);
        }
        for (id, ttl) in &body.leases {
            batch.put(keys::lease(*id), ttl.to_be_bytes().to_vec());
        }
        batch.put(
            keys::meta("members"),
            bincode::serialize(&body.members).expect("serialize"),
        );
        batch.put(
            keys::meta("promotions"),
            bincode::serialize(&body.promotions).expect("serialize"),
        );
        batch.put(
            keys::meta("alarms"),
            bincode::serialize(&body.alarms).expect("serialize"),
        );
        let c = Counters {
            revision: body.revision,
            compact_revision: body.compact_revision,
        };
        batch.put(keys::meta("counters"), bincode::serialize(&c).expect("serialize"));
        Ok(())
    }

    /// Re-reads everything from the backend (after [`Mvcc::restore`]'s batch is written).
    pub fn reload(&mut self) -> Result<(), BackendError> {
        self.load()
    }
}

/// 2: with `alarms`. Format 1 bodies are still read ([`SnapshotBodyV1`]).
const SNAPSHOT_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
pub struct SnapshotBody {
    format: u32,
    revision: i64,
    compact_revision: i64,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    leases: Vec<(i64, i64)>,
    members: Vec<Vec<u8>>,
    promotions: BTreeSet<u64>,
    alarms: BTreeSet<(u64, i32)>,
}

/// A snapshot body as builds before alarms wrote it (snapshot file format 1).
#[derive(Serialize, Deserialize)]
pub struct SnapshotBodyV1 {
    format: u32,
    revision: i64,
    compact_revision: i64,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    leases: Vec<(i64, i64)>,
    members: Vec<Vec<u8>>,
    promotions: BTreeSet<u64>,
}

impl From<SnapshotBodyV1> for SnapshotBody {
    fn from(v: SnapshotBodyV1) -> SnapshotBody {
        SnapshotBody {
            format: SNAPSHOT_FORMAT,
            revision: v.revision,
            compact_revision: v.compact_revision,
            records: v.records,
            leases: v.leases,
            members: v.members,
            promotions: v.promotions,
            alarms: BTreeSet::new(),
        }
    }
}

fn decode_bincode<T: serde::de::DeserializeOwned>(v: &[u8], what: &str) -> Result<T, BackendError> {
    bincode::deserialize(v).map_err(|e| BackendError::Corrupt(format!("{what}: {e}")))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version) {
        CompareTarget::Version => {
            let v = match c.target_union {
                Some(TargetUnion::Version(v)) => v,
                _ => 0,
            };
            kv.version.cmp(&v)
        }
        CompareTarget::Create => {
            let v = match c.target_union {
                Some(TargetUnion::CreateRevision(v)) => v,
                _ => 0,
            };
            kv.create_revision.cmp(&v)
        }
        CompareTarget::Mod => {
            let v = match c.target_union {
                Some(TargetUnion::ModRevision(v)) => v,
                _ => 0,
            };
            kv.mod_revision.cmp(&v)
        }
        CompareTarget::Value => {
            let empty = Bytes::new();
            let v = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &empty,
            };
            kv.value.as_ref().cmp(v.as_ref())
        }
        CompareTarget::Lease => {
            let v = match c.target_union {
                Some(TargetUnion::Lease(v)) => v,
                _ => 0,
            };
            kv.lease.cmp(&v)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
        CompareResult::NotEqual => ord.is_ne(),
    }
}

/// Whether a Range's sort leaves matches in key order (the index's order).
fn in_key_order(order: i32, target: i32) -> bool {
    use range_request::{SortOrder, SortTarget};
    let order = SortOrder::try_from(order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    target == SortTarget::Key && order != SortOrder::Descend
}

fn sort_kvs(kvs: &mut [KeyValue], order: i32, target: i32) {
    use range_request::{SortOrder, SortTarget};
    let mut order = SortOrder::try_from(order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    if order == SortOrder::None {
        if target == SortTarget::Key {
            return; // the index is already in key order
        }
        order = SortOrder::Ascend;
    }
    match target {
        SortTarget::Key => {}
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

#[cfg(test)]
mod tests;
