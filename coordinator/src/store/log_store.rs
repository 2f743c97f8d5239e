//! The Raft log, vote and committed index, in the backend's LOG and META key spaces.
//!
//! Appends are acknowledged to openraft only once flushed. Flushes go through one
//! flusher thread that batches every append waiting at that moment into one fsync
//! (group commit), and completes their callbacks in order.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); our helpers
// return it too rather than convert at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};

use super::backend::{Backend, WriteBatch};
use super::{io_err, keys};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn Backend>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
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
    pub fn new(backend: Arc<dyn Backend>) -> Self {
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
        Self { backend, flusher: tx }
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
        let last_purged: Option<LogId> = self.get_meta::<Option<LogId>>("last-purged")?.flatten();
        let last = self
            .backend
            .last_in(&[keys::LOG], &keys::space_end(keys::LOG))
            .map_err(read_err)?
            .map(|(_, v)| bincode::deserialize::<Entry>(&v).map(|e| e.log_id))
            .transpose()
            .map_err(read_err)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
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
        let mut b = WriteBatch::default();
        for e in entries {
            b.put(keys::log(e.log_id.index), bincode::serialize(&e).map_err(write_err)?);
        }
        self.backend.write(b).map_err(write_err)?;
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
        let mut b = WriteBatch::default();
        b.put(
            keys::meta("last-purged"),
            bincode::serialize(&Some(log_id)).map_err(write_err)?,
        );
        for k in super::backend::keys_in(self.backend.as_ref(), &keys::log(0), &keys::log(log_id.index + 1))
            .map_err(read_err)?
        {
            b.delete(k);
        }
        self.backend.write(b).map_err(write_err)?;
        self.flush_now().await
    }
}
