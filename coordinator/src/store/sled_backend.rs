//! The durable [`Backend`]: one sled tree. The only module that imports sled.

use std::path::Path;

use super::backend::{Backend, BackendError, KeyValuePair, WriteBatch};

pub struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
}

fn io(e: sled::Error) -> BackendError {
    match e {
        sled::Error::Corruption { .. } => BackendError::Corrupt(e.to_string()),
        e => BackendError::Io(e.to_string()),
    }
}

impl SledBackend {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        let db = sled::Config::new()
            .path(dir)
            // Raft makes its own durability points (flush); sled's timer is a backstop.
            .flush_every_ms(Some(1000))
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(io)?;
        let tree = db.open_tree("esfleet").map_err(io)?;
        Ok(Self { db, tree })
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tree.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), BackendError> {
        if start >= end {
            return Ok(());
        }
        for item in self.tree.range(start..end) {
            let (k, v) = item.map_err(io)?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last_in(&self, start: &[u8], end: &[u8]) -> Result<Option<KeyValuePair>, BackendError> {
        if start >= end {
            return Ok(None);
        }
        match self.tree.range(start..end).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(io)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.db.flush().map_err(io).map(|_| ())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sled_backend_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let b = super::SledBackend::open(dir.path()).unwrap();
        super::super::backend::conformance(&b);
    }
}
