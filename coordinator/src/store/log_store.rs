//! The Raft log, vote and committed index, in the backend's LOG and META key spaces.
//!
//! Appends are acknowledged to openraft only once flushed. Flushes go through one
//! flusher thread that batches every append waiting at that moment into one fsync
//! (group commit), and completes their callbacks in order.
//!
//! Purging is logical first: `purge` records the purged point and returns; the entries at
//! or below it are deleted a few at a time with each later append. Measured on real
//! members under churn (BENCHMARKS.md, "Data dir under churn"): with the whole purged range
//! deleted in one batch, `db/` grew by 4-7 MiB a minute while the live keys stayed flat;
//! with the deletions spread over later appends it stayed flat for an hour. Why sled
//! reclaims one and not the other is not understood: sled alone (`sled_purge`) reaches the
//! same plateau both ways.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); our helpers
// return it too rather than convert at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};

use super::backend::{Backend, WriteBatch};
use super::{io_err, keys};
use crate::sync::Recover;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn Backend>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    purged: Arc<Mutex<Purged>>,
}

/// The purged point, and how far the entries below it are actually deleted.
#[derive(Debug, Default)]
struct Purged {
    upto: Option<LogId>,
    /// No entry below this index is left in the backend.
    next_delete: u64,
}

/// Purged entries deleted along with an append of `n` entries: more than are added, so
/// the backlog of one purge (up to a snapshot interval's worth) is gone well before the
/// next, and few enough that each batch stays small.
fn deletions_per_append(n: usize) -> usize {
    2 * n + 8
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Logs,
        ErrorVerb::Read,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Logs,
        ErrorVerb::Write,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

impl LogStore {
    /// Opens the log kept in `backend`; fails if its purge record cannot be read.
    pub fn new(backend: Arc<dyn Backend>) -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let b = backend.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let result = b.flush();
                    for cb in waiting {
                        cb.log_io_completed(result.as_ref().map(|_| ()).map_err(io_err));
                    }
                }
            })
            .expect("spawn the log flusher thread");
        let mut store = Self {
            backend,
            flusher: tx,
            purged: Arc::default(),
        };
        let upto = store.get_meta::<Option<LogId>>("last-purged")?.flatten();
        let mut first = None;
        store
            .backend
            .scan(&[keys::LOG], &keys::space_end(keys::LOG), &mut |k, _| {
                first = keys::log_index(k);
                false
            })
            .map_err(read_err)?;
        store.purged = Arc::new(Mutex::new(Purged {
            upto,
            next_delete: first.unwrap_or(0),
        }));
        Ok(store)
    }

    /// Writes `entries` (not yet flushed), with the deletion of some purged ones.
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        let mut n = 0;
        for e in entries {
            b.put(keys::log(e.log_id.index), bincode::serialize(&e).map_err(write_err)?);
            n += 1;
        }
        let next_delete = self.delete_purged(&mut b, deletions_per_append(n))?;
        self.backend.write(b).map_err(write_err)?;
        if let Some(next) = next_delete {
            self.purged.lock().or_recover().next_delete = next;
        }
        Ok(())
    }

    fn purged_upto(&self) -> Option<LogId> {
        self.purged.lock().or_recover().upto
    }

    /// Adds to `b` the deletion of up to `limit` purged entries still stored; returns the
    /// new `next_delete`, to record once `b` is written.
    fn delete_purged(&self, b: &mut WriteBatch, limit: usize) -> Result<Option<u64>, StorageError> {
        let (upto, from) = {
            let p = self.purged.lock().or_recover();
            match p.upto {
                Some(upto) if p.next_delete <= upto.index => (upto.index, p.next_delete),
                _ => return Ok(None),
            }
        };
        let mut found = Vec::new();
        self.backend
            .scan(&keys::log(from), &keys::log(upto + 1), &mut |k, _| {
                found.push(k.to_vec());
                found.len() < limit
            })
            .map_err(read_err)?;
        let next = if found.len() < limit {
            upto + 1
        } else {
            found
                .last()
                .and_then(|k| keys::log_index(k))
                .map_or(upto + 1, |i| i + 1)
        };
        for k in found {
            b.delete(k);
        }
        Ok(Some(next))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StorageError> {
        match self.backend.get(&keys::meta(name)).map_err(read_err)? {
            None => Ok(None),
            Some(v) => bincode::deserialize(&v).map(Some).map_err(read_err),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, name: &str, v: &T) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.put(keys::meta(name), bincode::serialize(v).map_err(write_err)?);
        self.backend.write(b).map_err(write_err)
    }

    async fn flush_now(&self) -> Result<(), StorageError> {
        let b = self.backend.clone();
        tokio::task::spawn_blocking(move || b.flush())
            .await
            .map_err(write_err)?
            .map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // Purged entries may still be stored (deleted lazily); they are gone to readers.
        let start = match self.purged_upto() {
            Some(p) => start.max(p.index + 1),
            None => start,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => keys::log(x.saturating_add(1)),
            Bound::Excluded(x) => keys::log(*x),
            Bound::Unbounded => keys::space_end(keys::LOG),
        };
        let mut out = Vec::new();
        let mut err = None;
        self.backend
            .scan(
                &keys::log(start),
                &end,
                &mut |_, v| match bincode::deserialize::<Entry>(v) {
                    Ok(e) => {
                        out.push(e);
                        true
                    }
                    Err(e) => {
                        err = Some(read_err(format!("corrupt log entry: {e}")));
                        false
                    }
                },
            )
            .map_err(read_err)?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.purged_upto();
        let last = self
            .backend
            .last_in(&[keys::LOG], &keys::space_end(keys::LOG))
            .map_err(read_err)?
            .map(|(_, v)| bincode::deserialize::<Entry>(&v).map(|e| e.log_id))
            .transpose()
            .map_err(read_err)?;
        // The last stored entry may be a purged one not deleted yet.
        let last_log_id = match (last, last_purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta("vote", vote)?;
        self.flush_now().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for faster restart (re-apply up to here); not a durability point.
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.write_entries(entries)?;
        self.flusher
            .send(callback)
            .map_err(|_| write_err("the log flusher thread has stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        for k in super::backend::keys_in(
            self.backend.as_ref(),
            &keys::log(log_id.index),
            &keys::space_end(keys::LOG),
        )
        .map_err(read_err)?
        {
            b.delete(k);
        }
        self.backend.write(b).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Only the record here; the entries go with later appends (see the module doc).
        self.put_meta("last-purged", &Some(log_id))?;
        self.flush_now().await?;
        self.purged.lock().or_recover().upto = Some(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::store::backend::{keys_in, MemBackend};

    fn entries(from: u64, to: u64) -> Vec<Entry> {
        (from..to)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    fn empty() -> (Arc<dyn Backend>, LogStore) {
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let log = LogStore::new(backend.clone()).unwrap();
        (backend, log)
    }

    fn stored(b: &Arc<dyn Backend>) -> Vec<u64> {
        keys_in(b.as_ref(), &[keys::LOG], &keys::space_end(keys::LOG))
            .unwrap()
            .iter()
            .filter_map(|k| keys::log_index(k))
            .collect()
    }

    #[tokio::test]
    async fn purged_entries_are_gone_to_readers_at_once_and_deleted_with_later_appends() {
        let (backend, mut log) = empty();
        log.write_entries(entries(1, 101)).unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 90)).await.unwrap();

        // Logically gone: the state and reads skip them, though they are still stored.
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(90));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(100));
        let read = log.try_get_log_entries(0..=100).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (91..=100).collect::<Vec<_>>()
        );
        assert_eq!(stored(&backend).len(), 100);

        // Each append of one entry deletes up to 10 purged ones, oldest first.
        log.write_entries(entries(101, 102)).unwrap();
        assert_eq!(stored(&backend).first(), Some(&11));
        for i in 102..120 {
            log.write_entries(entries(i, i + 1)).unwrap();
        }
        assert_eq!(stored(&backend), (91..120).collect::<Vec<_>>());

        // A reopened store knows both the purge point and where deletion stands.
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 119)).await.unwrap();
        let mut log = LogStore::new(backend.clone()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(119));
        assert_eq!(
            state.last_log_id.map(|l| l.index),
            Some(119),
            "every stored entry is purged"
        );
        assert!(log.try_get_log_entries(0..200).await.unwrap().is_empty());
        // 29 purged entries left (91..=119): 18 go with an append of 5, the rest after.
        log.write_entries(entries(120, 125)).unwrap();
        assert_eq!(stored(&backend), (109..125).collect::<Vec<_>>());
        log.write_entries(entries(125, 126)).unwrap();
        log.write_entries(entries(126, 127)).unwrap();
        assert_eq!(stored(&backend), (120..127).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn deletion_skips_a_gap_below_the_purge_point() {
        // After a snapshot install the purge point can jump far past the stored entries.
        let (backend, mut log) = empty();
        log.write_entries(entries(1, 4)).unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(2, 1), 1_000_000))
            .await
            .unwrap();
        log.write_entries(entries(1_000_001, 1_000_002)).unwrap();
        assert_eq!(stored(&backend), vec![1_000_001]);
        assert_eq!(log.purged.lock().or_recover().next_delete, 1_000_001);
    }

    #[tokio::test]
    async fn truncate_removes_the_tail() {
        let (backend, mut log) = empty();
        log.write_entries(entries(1, 11)).unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 6)).await.unwrap();
        assert_eq!(stored(&backend), (1..6).collect::<Vec<_>>());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
    }
}
