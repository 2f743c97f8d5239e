//! The storage trait the coordinator persists through, and its in-memory implementation.
//!
//! Everything durable (the Raft log, vote, the MVCC revisions, leases, the pointer to the
//! current snapshot file) lives in one ordered byte-keyed space, split into typed key
//! spaces by a one-byte prefix (see [`super::keys`]); snapshots themselves are files
//! ([`super::snapshots`]). One space means one atomic batch can update the log and the state
//! machine's metadata together. The real backend is sled ([`super::sled_backend`], the only
//! module that imports sled); [`MemBackend`] serves fast tests and the conformance suite.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::sync::Recover;

/// A storage failure. The coordinator treats every one as fatal for the member: Raft
/// cannot continue on a disk it cannot trust.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Snapshot(#[from] super::snapshots::SnapshotError),
}

/// One atomic group of writes.
#[derive(Default, Debug)]
pub struct WriteBatch {
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A key and its value.
pub type KeyValuePair = (Vec<u8>, Vec<u8>);

/// An ordered, byte-keyed store with atomic batches and an explicit durability point.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Visits `[start, end)` in key order until `f` returns false.
    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), BackendError>;

    /// The last entry in `[start, end)`.
    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValuePair>, BackendError>;

    /// Applies every op of the batch, or none of them (also across a crash).
    fn write(&self, batch: WriteBatch) -> Result<(), BackendError>;

    /// Returns once everything written so far is on disk.
    fn flush(&self) -> Result<(), BackendError>;

    /// Bytes the store occupies on disk (0 for memory).
    fn size_on_disk(&self) -> u64;
}

/// Collects the keys of `[start, end)`.
pub fn keys_in(backend: &dyn Backend, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>, BackendError> {
    let mut keys = Vec::new();
    backend.scan(start, end, &mut |k, _| {
        keys.push(k.to_vec());
        true
    })?;
    Ok(keys)
}

/// A [`Backend`] in memory, for tests. Not durable.
#[derive(Default)]
pub struct MemBackend {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Backend for MemBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.map.lock().or_recover().get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), BackendError> {
        if start >= end {
            return Ok(());
        }
        // Copy out first: the visitor may read the backend again (as sled allows), and
        // holding the lock across it would deadlock.
        let items: Vec<KeyValuePair> = {
            let map = self.map.lock().or_recover();
            map.range(start.to_vec()..end.to_vec())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (k, v) in &items {
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValuePair>, BackendError> {
        if start >= end {
            return Ok(None);
        }
        let map = self.map.lock().or_recover();
        Ok(map
            .range(start.to_vec()..end.to_vec())
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let mut map = self.map.lock().or_recover();
        for (k, v) in batch.ops {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// The conformance suite every [`Backend`] must pass, so the in-memory one cannot drift
/// from the real one.
#[cfg(test)]
pub(crate) fn conformance(b: &dyn Backend) {
    let mut batch = WriteBatch::default();
    for i in 0u8..10 {
        batch.put(vec![1, i], vec![i]);
    }
    batch.put(vec![2], b"x".to_vec());
    b.write(batch).unwrap();
    assert_eq!(b.get(&[1, 3]).unwrap(), Some(vec![3]));
    assert_eq!(b.get(&[1, 10]).unwrap(), None);

    let mut seen = Vec::new();
    b.scan(&[1, 2], &[1, 5], &mut |k, _| {
        seen.push(k[1]);
        true
    })
    .unwrap();
    assert_eq!(seen, vec![2, 3, 4]);

    let mut first = Vec::new();
    b.scan(&[1], &[2], &mut |k, _| {
        first.push(k[1]);
        first.len() < 2
    })
    .unwrap();
    assert_eq!(first, vec![0, 1], "scan stops when the visitor says so");

    let mut nested = 0;
    b.scan(&[1], &[2], &mut |k, _| {
        nested += usize::from(b.get(k).unwrap().is_some());
        true
    })
    .unwrap();
    assert_eq!(nested, 10, "the visitor may read the backend");

    assert_eq!(b.last_in(&[1], &[2]).unwrap(), Some((vec![1, 9], vec![9])));
    assert_eq!(b.last_in(&[3], &[4]).unwrap(), None);
    assert_eq!(b.last_in(&[4], &[3]).unwrap(), None, "inverted range is empty");

    let mut batch = WriteBatch::default();
    batch.delete(vec![1, 9]);
    batch.put(vec![1, 3], vec![33]);
    b.write(batch).unwrap();
    assert_eq!(b.last_in(&[1], &[2]).unwrap(), Some((vec![1, 8], vec![8])));
    assert_eq!(b.get(&[1, 3]).unwrap(), Some(vec![33]));
    assert_eq!(keys_in(b, &[1], &[2]).unwrap().len(), 9);
    b.flush().unwrap();
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_backend_conforms() {
        super::conformance(&super::MemBackend::default());
    }
}
