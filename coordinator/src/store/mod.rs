//! Durable storage: the Raft log and the replicated state machine, both in one
//! [`Backend`] (sled in production), with a versioned on-disk format.

pub mod backend;
pub mod keys;
pub mod log_store;
pub mod mvcc;
pub mod sled_backend;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;

pub use backend::{Backend, BackendError, MemBackend};
pub use log_store::LogStore;
pub use state_machine::{StateMachine, StoreShared, WatchBatch};

/// Why a data directory cannot be used. Never silently reset: the message says what is
/// wrong and the member refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the store in {dir}: {source}")]
    Backend {
        dir: String,
        #[source]
        source: BackendError,
    },
    #[error(
        "{dir} holds data but no esfleet format version record: it is not an esfleet data \
         directory, or it is damaged. Refusing to start; move it aside or point --data-dir elsewhere"
    )]
    NoVersion { dir: String },
    #[error(
        "{dir} was written in on-disk format version {found}, but this esfleet-coordinator \
         reads version {expected}. Refusing to start; run a matching release"
    )]
    WrongVersion { dir: String, found: u64, expected: u64 },
}

/// Opens the store in `dir`, checking (or, for a new store, writing) the format version.
pub fn open_dir(dir: &Path) -> Result<Arc<dyn Backend>, OpenError> {
    let wrap = |source| OpenError::Backend {
        dir: dir.display().to_string(),
        source,
    };
    let backend = sled_backend::SledBackend::open(dir).map_err(wrap)?;
    let backend: Arc<dyn Backend> = Arc::new(backend);
    check_version(backend.as_ref(), &dir.display().to_string())?;
    Ok(backend)
}

/// Checks the data-version record; stamps an empty store with this build's version.
pub fn check_version(backend: &dyn Backend, dir: &str) -> Result<(), OpenError> {
    let wrap = |source| OpenError::Backend {
        dir: dir.to_string(),
        source,
    };
    match backend.get(&keys::meta("data-version")).map_err(wrap)? {
        Some(v) => {
            let found = <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes).unwrap_or(0);
            if found != keys::DATA_VERSION {
                return Err(OpenError::WrongVersion {
                    dir: dir.into(),
                    found,
                    expected: keys::DATA_VERSION,
                });
            }
        }
        None => {
            let mut empty = true;
            backend
                .scan(&[], &[0xff], &mut |_, _| {
                    empty = false;
                    false
                })
                .map_err(wrap)?;
            if !empty {
                return Err(OpenError::NoVersion { dir: dir.into() });
            }
            let mut b = backend::WriteBatch::default();
            b.put(keys::meta("data-version"), keys::DATA_VERSION.to_be_bytes().to_vec());
            backend.write(b).map_err(wrap)?;
            backend.flush().map_err(wrap)?;
        }
    }
    Ok(())
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_version_and_unversioned_data() {
        let b = MemBackend::default();
        check_version(&b, "mem").unwrap();
        check_version(&b, "mem").unwrap();

        let mut batch = backend::WriteBatch::default();
        batch.put(keys::meta("data-version"), 99u64.to_be_bytes().to_vec());
        b.write(batch).unwrap();
        let err = check_version(&b, "mem").unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");

        let b = MemBackend::default();
        let mut batch = backend::WriteBatch::default();
        batch.put(vec![keys::LOG, 0, 0], b"x".to_vec());
        b.write(batch).unwrap();
        let err = check_version(&b, "mem").unwrap_err().to_string();
        assert!(err.contains("no esfleet format version"), "{err}");
    }
}
