//! Units' config files on disk ([`ScheduleEntry::files`], e.g. an Elasticsearch node's
//! `elasticsearch.yml` and `unicast_hosts.txt`): each unit with files gets the directory
//! `<config root>/<unit name>/` (default `/etc/esfleet/units`), which the agent names to the
//! unit as `ESFLEET_CONFIG_DIR` in its drop-in.
//!
//! The agent runs as root, so the directory path is built only from a validated
//! [`UnitName`] and checked to sit directly in the root, and file names are checked once
//! more (`core::diff::check_entry` refused bad ones before anything got here). Writes are
//! atomic (a fresh temporary file in the same directory, fsync, rename, directory fsync),
//! skipped when the file already holds the content, files 0644 and directories 0755 (a
//! service's own user must read them), owned by the agent's user (root).
//!
//! A hidden marker file in each directory lists the files the agent manages there. It says
//! which directories are esfleet's (a restarted agent finds them, and removes only those),
//! and which files to delete when the map drops one: other files in the directory (the
//! unit's own, e.g. copied by an `ExecStartPre=`) are left alone until the unit goes, when
//! the whole directory is removed. This is systemd-independent: the reconciler calls it
//! directly, not through the `UnitManager`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use esfleet_core::diff::{valid_config_file_name, CONFIG_DIR_ENV};
use esfleet_core::model::ScheduleEntry;
use esfleet_core::UnitName;

/// Where units' config directories are made unless `--config-root` says otherwise.
pub const DEFAULT_CONFIG_ROOT: &str = "/etc/esfleet/units";

/// The marker in each config directory: the names of the files esfleet manages there.
pub const MARKER: &str = ".esfleet-files";

const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("config files: {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config files: {path} exists and is not a directory; remove it so esfleet can write the unit's config files there")]
    NotADirectory { path: String },
    #[error("config files: {path} would not sit directly in {root}; refused")]
    Escapes { path: String, root: String },
    #[error("config files of {unit}: {file:?} is not a plain file name; refused")]
    BadName { unit: String, file: String },
    #[error("config files: the writer task failed: {0}")]
    Task(String),
}

pub type Result<T> = std::result::Result<T, FilesError>;

fn io(path: &Path, source: std::io::Error) -> FilesError {
    FilesError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The directory under which every unit's config directory lives.
#[derive(Debug, Clone)]
pub struct ConfigRoot {
    root: PathBuf,
}

impl ConfigRoot {
    pub fn new(root: impl Into<PathBuf>) -> ConfigRoot {
        ConfigRoot { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `<root>/<unit>`, refusing anything that would not sit directly in the root.
    pub fn dir(&self, unit: &UnitName) -> Result<PathBuf> {
        let path = self.root.join(unit.as_str());
        let direct = path.parent() == Some(self.root.as_path())
            && path.file_name().and_then(|f| f.to_str()) == Some(unit.as_str())
            && !unit.as_str().starts_with('.');
        if !direct {
            return Err(FilesError::Escapes {
                path: path.display().to_string(),
                root: self.root.display().to_string(),
            });
        }
        Ok(path)
    }

    /// Gives an entry with config files the variable naming its directory (the agent's
    /// value wins over one the entry may carry). Done once, when the entry is accepted, so
    /// the drop-in, the health check and the diff all see the same environment.
    pub fn place(&self, entry: &mut ScheduleEntry) {
        if entry.files.is_empty() {
            return;
        }
        if let Ok(dir) = self.dir(&entry.unit) {
            entry.env.insert(CONFIG_DIR_ENV.to_string(), dir.display().to_string());
        }
    }

    /// Makes `<root>/<unit>/` hold exactly `files` among the files esfleet manages there:
    /// writes the ones that differ, removes the ones the map no longer has. Returns true
    /// when anything on disk changed.
    pub fn write(&self, unit: &UnitName, files: &BTreeMap<String, String>) -> Result<bool> {
        if let Some(bad) = files.keys().find(|f| !valid_config_file_name(f)) {
            return Err(FilesError::BadName {
                unit: unit.to_string(),
                file: bad.clone(),
            });
        }
        let dir = self.dir(unit)?;
        let mut changed = self.ensure_dir(&dir)?;
        let old = read_marker(&dir)?.unwrap_or_default();
        let new: BTreeSet<String> = files.keys().cloned().collect();
        // The marker always lists at least every file esfleet may have written, so a crash
        // midway never leaves a file of ours that a later pass would not know to remove.
        let union: BTreeSet<String> = old.union(&new).cloned().collect();
        if union != old || !dir.join(MARKER).exists() {
            write_marker(&dir, &union)?;
        }
        for (name, text) in files {
            changed |= write_if_changed(&dir, name, text)?;
        }
        for gone in old.difference(&new) {
            changed |= remove_file(&dir.join(gone))?;
        }
        if union != new {
            write_marker(&dir, &new)?;
        }
        Ok(changed)
    }

    /// Removes `<root>/<unit>/` with everything in it, if it is esfleet's (has the marker).
    /// Returns true when it removed anything.
    pub fn remove(&self, unit: &UnitName) -> Result<bool> {
        let dir = self.dir(unit)?;
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&dir, e)),
        }
        if !fs::symlink_metadata(dir.join(MARKER)).is_ok_and(|m| m.file_type().is_file()) {
            tracing::warn!(dir = %dir.display(), "config directory without esfleet's marker; left alone");
            return Ok(false);
        }
        // `remove_dir_all` never follows symbolic links inside the tree.
        fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        sync_dir(&self.root)?;
        Ok(true)
    }

    /// The units that have an esfleet config directory here (marker present), sorted.
    pub fn found(&self) -> Result<Vec<UnitName>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(&self.root, e))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().and_then(|f| UnitName::new(f).ok()) else {
                continue;
            };
            if fs::symlink_metadata(entry.path().join(MARKER)).is_ok_and(|m| m.file_type().is_file()) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// [`ConfigRoot::write`] on a blocking thread (fsyncs can take a while).
    pub async fn write_async(&self, unit: &UnitName, files: &BTreeMap<String, String>) -> Result<bool> {
        let (me, unit, files) = (self.clone(), unit.clone(), files.clone());
        blocking(move || me.write(&unit, &files)).await
    }

    /// [`ConfigRoot::remove`] on a blocking thread.
    pub async fn remove_async(&self, unit: &UnitName) -> Result<bool> {
        let (me, unit) = (self.clone(), unit.clone());
        blocking(move || me.remove(&unit)).await
    }

    /// [`ConfigRoot::found`] on a blocking thread.
    pub async fn found_async(&self) -> Result<Vec<UnitName>> {
        let me = self.clone();
        blocking(move || me.found()).await
    }

    /// Creates the root (and missing parents) and the unit's directory, 0755; fixes the
    /// mode and, as root, the owner of a directory found otherwise. Refuses a symlink or a
    /// file in the directory's place. Returns true when it changed anything.
    fn ensure_dir(&self, dir: &Path) -> Result<bool> {
        let mut missing = Vec::new();
        let mut p = self.root.as_path();
        while fs::symlink_metadata(p).is_err() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        for p in missing.iter().rev() {
            make_dir(p)?;
        }
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_dir() => fix_dir(dir, &meta),
            Ok(_) => Err(FilesError::NotADirectory {
                path: dir.display().to_string(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                make_dir(dir)?;
                sync_dir(&self.root)?;
                Ok(true)
            }
            Err(e) => Err(io(dir, e)),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FilesError::Task(e.to_string()))?
}

/// `mkdir` with mode 0755 whatever the umask (a service user must traverse it).
fn make_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io(path, e)),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).map_err(|e| io(path, e))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A unit's directory found with another mode or (when the agent is root) another owner
/// is put back to 0755 root:root: only root may change what a root-started service reads.
fn fix_dir(dir: &Path, meta: &fs::Metadata) -> Result<bool> {
    let mut changed = false;
    if is_root() && (meta.uid() != 0 || meta.gid() != 0) {
        std::os::unix::fs::lchown(dir, Some(0), Some(0)).map_err(|e| io(dir, e))?;
        changed = true;
    }
    if meta.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(|e| io(dir, e))?;
        changed = true;
    }
    Ok(changed)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

/// Whether `path` is a regular file (not a symlink) with exactly this content and mode,
/// owned by the agent's user when that is root.
fn holds(path: &Path, content: &str) -> Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(path, e)),
    };
    if !meta.file_type().is_file()
        || meta.mode() & 0o7777 != FILE_MODE
        || meta.len() != content.len() as u64
        || (is_root() && meta.uid() != 0)
    {
        return Ok(false);
    }
    match fs::read(path) {
        Ok(bytes) => Ok(bytes == content.as_bytes()),
        Err(e) => Err(io(path, e)),
    }
}

/// Writes `<dir>/<name>` atomically unless it already holds `content`. Returns true when
/// it wrote.
fn write_if_changed(dir: &Path, name: &str, content: &str) -> Result<bool> {
    let path = dir.join(name);
    if holds(&path, content)? {
        return Ok(false);
    }
    write_atomic(dir, name, content.as_bytes())?;
    Ok(true)
}

fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> Result<()> {
    let path = dir.join(name);
    // Hidden, so never a managed name; created fresh (O_EXCL), so a symlink or a file
    // someone left at this name is never written through.
    let tmp = dir.join(format!(".{name}.esfleet-tmp"));
    remove_file(&tmp)?;
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // The umask may have taken bits away; a service user must read the file.
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        // The rename is durable once the directory is synced.
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(&path, e)
    })
}

fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path, e)),
    }
}

/// The names listed in a directory's marker; `None` when there is no marker. Lines that
/// are not valid file names are ignored (never a path to delete).
fn read_marker(dir: &Path) -> Result<Option<BTreeSet<String>>> {
    let path = dir.join(MARKER);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path, e)),
    }
    let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    Ok(Some(
        text.lines()
            .map(str::trim)
            .filter(|l| valid_config_file_name(l))
            .map(str::to_string)
            .collect(),
    ))
}

fn write_marker(dir: &Path, names: &BTreeSet<String>) -> Result<()> {
    let mut text = String::from("# Written by esfleet-agent: the config files it manages in this directory.\n");
    for n in names {
        text.push_str(n);
        text.push('\n');
    }
    write_atomic(dir, MARKER, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> UnitName {
        UnitName::new(s).unwrap()
    }

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn writes_rewrites_and_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ConfigRoot::new(tmp.path().join("etc/esfleet/units"));
        let u = n("logs-d@3.service");
        let dir = root.dir(&u).unwrap();
        assert!(root
            .write(
                &u,
                &files(&[("elasticsearch.yml", "a: 1\n"), ("unicast_hosts.txt", "h:1\n")])
            )
            .unwrap());
        assert_eq!(fs::read_to_string(dir.join("elasticsearch.yml")).unwrap(), "a: 1\n");
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&root.path().join("..")), 0o755, "missing parents are 0755 too");
        assert_eq!(mode(&dir.join("unicast_hosts.txt")), 0o644);
        assert_eq!(
            listing(&dir),
            vec![".esfleet-files", "elasticsearch.yml", "unicast_hosts.txt"]
        );
        // Same content: nothing written.
        let before = fs::metadata(dir.join("elasticsearch.yml")).unwrap().ino();
        assert!(!root
            .write(
                &u,
                &files(&[("elasticsearch.yml", "a: 1\n"), ("unicast_hosts.txt", "h:1\n")])
            )
            .unwrap());
        assert_eq!(fs::metadata(dir.join("elasticsearch.yml")).unwrap().ino(), before);

        // A file of the unit's own stays; a file dropped from the map goes.
        fs::write(dir.join("jvm.options"), "-Xms1g\n").unwrap();
        assert!(root.write(&u, &files(&[("elasticsearch.yml", "a: 2\n")])).unwrap());
        assert_eq!(
            listing(&dir),
            vec![".esfleet-files", "elasticsearch.yml", "jvm.options"]
        );
        assert_eq!(
            read_marker(&dir).unwrap().unwrap(),
            ["elasticsearch.yml".to_string()].into()
        );

        // An edited file, or a wrong mode, is put back.
        fs::write(dir.join("elasticsearch.yml"), "edited\n").unwrap();
        assert!(root.write(&u, &files(&[("elasticsearch.yml", "a: 2\n")])).unwrap());
        assert_eq!(fs::read_to_string(dir.join("elasticsearch.yml")).unwrap(), "a: 2\n");
        fs::set_permissions(dir.join("elasticsearch.yml"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(root.write(&u, &files(&[("elasticsearch.yml", "a: 2\n")])).unwrap());
        assert_eq!(mode(&dir.join("elasticsearch.yml")), 0o644);
        assert_eq!(mode(&dir), 0o755);

        assert_eq!(root.found().unwrap(), vec![u.clone()]);
        assert!(root.remove(&u).unwrap());
        assert!(!dir.exists(), "the whole directory goes, the unit's own files too");
        assert!(!root.remove(&u).unwrap());
        assert!(root.found().unwrap().is_empty());
    }

    #[test]
    fn never_writes_through_symlinks_or_outside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ConfigRoot::new(tmp.path().join("units"));
        let u = n("a.service");
        let dir = root.dir(&u).unwrap();
        assert_eq!(dir, tmp.path().join("units/a.service"));

        // A symlink in the directory's place is refused, and never followed.
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::create_dir_all(root.path()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let e = root.write(&u, &files(&[("x", "1")])).unwrap_err();
        assert!(matches!(e, FilesError::NotADirectory { .. }), "{e}");
        assert!(!root.remove(&u).unwrap());
        assert!(listing(&elsewhere).is_empty());
        fs::remove_file(&dir).unwrap();

        // A symlink in a file's place (or at the temporary name) is replaced, its target kept.
        root.write(&u, &files(&[("x", "1")])).unwrap();
        let target = tmp.path().join("precious");
        fs::write(&target, "precious").unwrap();
        fs::remove_file(dir.join("x")).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("x")).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(".x.esfleet-tmp")).unwrap();
        assert!(root.write(&u, &files(&[("x", "1")])).unwrap());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(fs::symlink_metadata(dir.join("x")).unwrap().file_type().is_file());
        assert!(!dir.join(".x.esfleet-tmp").exists());

        // Bad names never reach the disk, even if a caller skipped check_entry.
        for bad in ["../x", "a/b", ".", "..", "", ".esfleet-files"] {
            let e = root.write(&u, &files(&[(bad, "1")])).unwrap_err();
            assert!(matches!(e, FilesError::BadName { .. }), "{bad:?}: {e}");
        }
        // A directory without the marker is not ours: neither found nor removed.
        fs::create_dir_all(root.path().join("b.service")).unwrap();
        assert_eq!(root.found().unwrap(), vec![u.clone()]);
        assert!(!root.remove(&n("b.service")).unwrap());
        assert!(root.path().join("b.service").exists());
    }

    #[test]
    fn place_names_the_directory_only_for_entries_with_files() {
        let root = ConfigRoot::new("/etc/esfleet/units");
        let text = "[Service]\n";
        let mut e = ScheduleEntry {
            unit: n("logs-m@1.service"),
            text: text.into(),
            hash: esfleet_core::model::unit_hash(text),
            desired: esfleet_core::model::DesiredState::Launched,
            generation: 1,
            fence: Default::default(),
            enable: false,
            env: BTreeMap::new(),
            files: BTreeMap::new(),
        };
        root.place(&mut e);
        assert!(e.env.is_empty());
        e.files.insert("elasticsearch.yml".into(), String::new());
        e.env.insert(CONFIG_DIR_ENV.into(), "/elsewhere".into());
        root.place(&mut e);
        assert_eq!(e.env[CONFIG_DIR_ENV], "/etc/esfleet/units/logs-m@1.service");
    }
}
