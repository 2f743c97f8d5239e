//! Raft snapshots as files under `<data-dir>/snapshots/`, outside sled.
//!
//! A snapshot is the whole replicated state (tens to hundreds of MiB at scale). Kept as a
//! value inside sled, it was rewritten with its leaf page every time a neighbouring meta
//! key changed, and sled's log kept the old copies until its cleaner caught up: the data
//! dir grew to several times the live data. Here sled holds only a small pointer (the
//! snapshot's meta, its file name and length); the bytes live in one file that is written
//! once, streamed to peers chunk by chunk, and deleted when the next one replaces it.
//!
//! Crash safety: a new file is written under a temporary name, fsynced, renamed into place
//! and the directory fsynced *before* sled's pointer moves to it; the old file is deleted
//! only after the pointer moved. A kill at any point leaves the pointer naming a complete
//! file; whatever else is in the directory is a leftover that [`SnapshotDir::remove_others`]
//! deletes at open.
//!
//! File layout: [`MAGIC`], a big-endian `u32` [`FILE_FORMAT`], then the bincode-encoded
//! [`SnapshotBody`](super::mvcc::SnapshotBody). The bytes sent to a peer are the file.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::mvcc::SnapshotBody;
use crate::types::PeerNode;

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"ESFSNAP\0";
/// The snapshot file layout this build reads and writes.
/// 2: the body carries etcd's alarms. Files of format 1 are still read.
pub const FILE_FORMAT: u32 = 2;
const HEADER_LEN: usize = MAGIC.len() + 4;
/// Completed snapshot files end with this; everything else in the directory is temporary.
const SNAP_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";

/// What sled stores about the current snapshot (meta key `snapshot`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SnapshotPointer {
    pub meta: openraft::SnapshotMeta<u64, PeerNode>,
    /// File name inside the snapshots directory.
    pub file: String,
    /// The file's length in bytes, checked at open.
    pub len: u64,
}

/// Errors of the snapshot directory; the state machine turns them into storage errors.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the store's current snapshot {path} is missing. The member cannot serve peers that need \
         it and its log before that point is purged. Restore the file from a backup, or remove \
         this member (`member remove`), delete its data dir and add it again as a new member"
    )]
    Missing { path: PathBuf },
    #[error(
        "the store's current snapshot {path} is {found} bytes long, but {expected} were written: \
         it was truncated or replaced. Restore the file from a backup, or remove this member, \
         delete its data dir and add it again as a new member"
    )]
    WrongLength { path: PathBuf, found: u64, expected: u64 },
    #[error("snapshot file {path} is not an esfleet snapshot: {why}")]
    Format { path: PathBuf, why: String },
}

/// The directory of snapshot files.
pub struct SnapshotDir {
    dir: PathBuf,
    /// Makes temporary and final names unique within this process.
    seq: AtomicU64,
}

impl SnapshotDir {
    /// Opens (creating if needed) `dir`.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A new file name for the snapshot `snapshot_id`. Ids come from the leader: only a safe
    /// subset of their characters is used, and a local suffix makes the name unique even if
    /// an id repeats (ids restart after a restart).
    pub fn new_name(&self, snapshot_id: &str) -> String {
        let id: String = snapshot_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{id}.{nanos:x}.{seq}{SNAP_SUFFIX}")
    }

    fn file_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
        move |source| SnapshotError::File {
            path: path.to_path_buf(),
            source,
        }
    }

    fn sync_dir(&self) -> Result<(), SnapshotError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SnapshotError::Dir {
                dir: self.dir.clone(),
                source,
            })
    }

    /// Writes a snapshot file `name` whose body `body` writes: temporary file, fsync,
    /// rename, fsync of the directory. Returns the file's length. Blocking.
    pub fn write_with(
        &self,
        name: &str,
        body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<u64, SnapshotError> {
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let result = (|| {
            let file = std::fs::File::create(&tmp)?;
            let mut w = io::BufWriter::with_capacity(1 << 20, file);
            w.write_all(MAGIC)?;
            w.write_all(&FILE_FORMAT.to_be_bytes())?;
            body(&mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            file.metadata().map(|m| m.len())
        })();
        match result {
            Ok(len) => {
                let path = self.dir.join(name);
                std::fs::rename(&tmp, &path).map_err(Self::file_err(&path))?;
                self.sync_dir()?;
                Ok(len)
            }
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                Err(SnapshotError::File { path: tmp, source })
            }
        }
    }

    /// Writes `body` as the snapshot file `name` (see [`SnapshotDir::write_with`]).
    pub fn write(&self, name: &str, body: &SnapshotBody) -> Result<u64, SnapshotError> {
        self.write_with(name, |w| {
            bincode::serialize_into(w, body).map_err(|e| io::Error::other(e.to_string()))
        })
    }

    /// A temporary file for a snapshot streamed in from the leader. It is deleted when
    /// dropped unless [`SnapshotDir::commit_received`] renamed it into place.
    pub async fn begin_receiving(&self) -> Result<SnapshotFile, SnapshotError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("receiving-{seq}{TMP_SUFFIX}"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(Self::file_err(&path))?;
        Ok(SnapshotFile {
            file,
            path,
            remove_on_drop: true,
        })
    }

    /// Makes a fully received snapshot durable under `name`; returns its length.
    pub async fn commit_received(&self, mut received: SnapshotFile, name: &str) -> Result<u64, SnapshotError> {
        received.file.flush().await.map_err(Self::file_err(&received.path))?;
        received.file.sync_all().await.map_err(Self::file_err(&received.path))?;
        let len = received
            .file
            .metadata()
            .await
            .map(|m| m.len())
            .map_err(Self::file_err(&received.path))?;
        let path = self.dir.join(name);
        tokio::fs::rename(&received.path, &path)
            .await
            .map_err(Self::file_err(&path))?;
        received.remove_on_drop = false;
        self.sync_dir()?;
        Ok(len)
    }

    /// Checks that the pointer's file is there and complete.
    pub fn check(&self, p: &SnapshotPointer) -> Result<(), SnapshotError> {
        let path = self.dir.join(&p.file);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == p.len => Ok(()),
            Ok(m) => Err(SnapshotError::WrongLength {
                path,
                found: m.len(),
                expected: p.len,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SnapshotError::Missing { path }),
            Err(source) => Err(SnapshotError::File { path, source }),
        }
    }

    /// Opens the pointer's file for reading (to send it to a peer). A quick blocking call,
    /// so the caller can make it under the lock that keeps the file from being replaced.
    pub fn open_file(&self, p: &SnapshotPointer) -> Result<SnapshotFile, SnapshotError> {
        let path = self.dir.join(&p.file);
        match std::fs::File::open(&path) {
            Ok(file) => Ok(SnapshotFile {
                file: tokio::fs::File::from_std(file),
                path,
                remove_on_drop: false,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SnapshotError::Missing { path }),
            Err(source) => Err(SnapshotError::File { path, source }),
        }
    }

    /// The full path of a file in this directory.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Deletes one snapshot file (one that was replaced). A missing file is fine.
    pub fn remove(&self, name: &str) -> Result<(), SnapshotError> {
        let path = self.dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SnapshotError::File { path, source }),
        }
    }

    /// Deletes every entry but `keep` (at open: temporary files of a build or a transfer cut
    /// short, a replaced snapshot whose deletion a crash interrupted). Returns their names.
    pub fn remove_others(&self, keep: Option<&str>) -> Result<Vec<String>, SnapshotError> {
        let dir_err = |source| SnapshotError::Dir {
            dir: self.dir.clone(),
            source,
        };
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if Some(name.as_str()) == keep {
                continue;
            }
            let path = entry.path();
            let result = if entry.file_type().map_err(dir_err)?.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(Self::file_err(&path))?;
            removed.push(name);
        }
        if !removed.is_empty() {
            self.sync_dir()?;
        }
        Ok(removed)
    }
}

/// Reads a snapshot file's body (blocking): header check, then bincode.
pub fn read_body(path: &Path, mut r: impl Read) -> Result<SnapshotBody, SnapshotError> {
    let format = |why: String| SnapshotError::Format {
        path: path.to_path_buf(),
        why,
    };
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header)
        .map_err(|e| format(format!("no header ({e})")))?;
    if &header[..MAGIC.len()] != MAGIC {
        return Err(format("wrong magic bytes".into()));
    }
    let version = u32::from_be_bytes(header[MAGIC.len()..].try_into().expect("4 bytes"));
    let r = io::BufReader::with_capacity(1 << 20, r);
    match version {
        FILE_FORMAT => bincode::deserialize_from(r).map_err(|e| format(format!("undecodable body: {e}"))),
        1 => bincode::deserialize_from::<_, super::mvcc::SnapshotBodyV1>(r)
            .map(SnapshotBody::from)
            .map_err(|e| format(format!("undecodable format-1 body: {e}"))),
        _ => Err(format(format!(
            "file format {version}, this build reads 1 and {FILE_FORMAT}"
        ))),
    }
}

/// An open snapshot file: openraft's `SnapshotData`. The leader reads it chunk by chunk to
/// send it; a follower writes received chunks into one.
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
    /// A partly received file is temporary: dropped without a commit, it goes.
    remove_on_drop: bool,
}

impl SnapshotFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFile").field("path", &self.path).finish()
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().file).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.get_mut().file).poll_complete(cx)
    }
}
