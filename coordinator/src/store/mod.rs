//! Durable storage: the Raft log and the replicated state machine, both in one
//! [`Backend`] (sled in production, `<data-dir>/db`), and snapshot files
//! (`<data-dir>/snapshots/`), with a versioned on-disk format.

pub mod backend;
pub mod keys;
pub mod log_store;
pub mod mvcc;
pub mod sled_backend;
pub mod snapshots;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;

use crate::types;

pub use backend::{Backend, BackendError, MemBackend};
pub use log_store::LogStore;
pub use snapshots::SnapshotDir;
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
    #[error("cannot migrate {dir} from on-disk format version {from}: {source}")]
    Migrate {
        dir: String,
        from: u64,
        #[source]
        source: BackendError,
    },
    #[error(transparent)]
    Snapshots(#[from] snapshots::SnapshotError),
}

/// Opens a member's data dir: the store in `<data_dir>/db` (checking, migrating or, for a
/// new store, writing the format version) and the snapshot files in `<data_dir>/snapshots`.
pub fn open_data_dir(data_dir: &Path) -> Result<(Arc<dyn Backend>, SnapshotDir), OpenError> {
    let db = data_dir.join("db");
    let wrap = |source| OpenError::Backend {
        dir: db.display().to_string(),
        source,
    };
    let backend = sled_backend::SledBackend::open(&db).map_err(wrap)?;
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let snapshots = SnapshotDir::open(&data_dir.join("snapshots"))?;
    check_version(backend.as_ref(), &db.display().to_string(), &snapshots)?;
    Ok((backend, snapshots))
}

/// Checks the data-version record, migrating an older known version; stamps an empty store
/// with this build's version.
pub fn check_version(backend: &dyn Backend, dir: &str, snapshots: &SnapshotDir) -> Result<(), OpenError> {
    let wrap = |source| OpenError::Backend {
        dir: dir.to_string(),
        source,
    };
    match backend.get(&keys::meta("data-version")).map_err(wrap)? {
        Some(v) => {
            let found = <[u8; 8]>::try_from(v.as_slice()).map(u64::from_be_bytes).unwrap_or(0);
            if found == 1 {
                migrate_v1(backend, snapshots).map_err(|source| OpenError::Migrate {
                    dir: dir.into(),
                    from: 1,
                    source,
                })?;
                tracing::info!(
                    dir,
                    "migrated the store from on-disk format 1 to {}",
                    keys::DATA_VERSION
                );
            } else if found != keys::DATA_VERSION {
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

/// Format 1 kept the current snapshot inside the store as `{meta, data}` (data: the
/// bincode body). Writes it out as a file, then, in one batch, replaces it with a pointer
/// and stamps version 2. A crash before that batch leaves version 1 and an unreferenced
/// file (deleted at the next open, then written again).
fn migrate_v1(backend: &dyn Backend, snapshots: &SnapshotDir) -> Result<(), BackendError> {
    #[derive(serde::Deserialize)]
    struct StoredSnapshotV1 {
        meta: openraft::SnapshotMeta<u64, types::PeerNode>,
        data: Vec<u8>,
    }
    let mut batch = backend::WriteBatch::default();
    if let Some(v) = backend.get(&keys::meta("snapshot"))? {
        let old: StoredSnapshotV1 =
            bincode::deserialize(&v).map_err(|e| BackendError::Corrupt(format!("format-1 snapshot: {e}")))?;
        let name = snapshots.new_name(&old.meta.snapshot_id);
        let len = snapshots.write_with(&name, |w| w.write_all(&old.data))?;
        let pointer = snapshots::SnapshotPointer {
            meta: old.meta,
            file: name,
            len,
        };
        batch.put(
            keys::meta("snapshot"),
            bincode::serialize(&pointer).map_err(|e| BackendError::Io(e.to_string()))?,
        );
    }
    batch.put(keys::meta("data-version"), keys::DATA_VERSION.to_be_bytes().to_vec());
    backend.write(batch)?;
    backend.flush()
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_version_and_unversioned_data() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path()).unwrap();
        let b = MemBackend::default();
        check_version(&b, "mem", &snaps).unwrap();
        check_version(&b, "mem", &snaps).unwrap();

        let mut batch = backend::WriteBatch::default();
        batch.put(keys::meta("data-version"), 99u64.to_be_bytes().to_vec());
        b.write(batch).unwrap();
        let err = check_version(&b, "mem", &snaps).unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");

        let b = MemBackend::default();
        let mut batch = backend::WriteBatch::default();
        batch.put(vec![keys::LOG, 0, 0], b"x".to_vec());
        b.write(batch).unwrap();
        let err = check_version(&b, "mem", &snaps).unwrap_err().to_string();
        assert!(err.contains("no esfleet format version"), "{err}");
    }
}
