//! Unit files on disk: writes a unit file and its esfleet drop-in into a unit directory
//! systemd reads (by default `/run/systemd/system`, which vanishes at reboot as fleet's
//! units did), removes them, and lists which units there are ours.
//!
//! The agent runs as root, so every path is built from a validated [`UnitName`] only and
//! checked once more to sit directly in the unit directory. Writes are atomic (a temporary
//! file in the same directory, fsync, rename) and skipped when the content is already
//! there, so the caller knows whether systemd needs a `Reload`.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use esfleet_core::UnitName;

use crate::manager::{ManagerError, Result, DROPIN_NAME};

/// systemd's runtime unit directory.
pub const DEFAULT_UNIT_DIR: &str = "/run/systemd/system";

/// A directory of unit files that esfleet writes into.
#[derive(Debug, Clone)]
pub struct UnitDir {
    dir: PathBuf,
}

fn io(path: &Path, source: std::io::Error) -> ManagerError {
    ManagerError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a regular file; `None` when it is missing or not a regular file (a symlink or a
/// directory in its place is never "the same content": it gets replaced).
fn read_regular(path: &Path) -> Result<Option<String>> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => match fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::InvalidData => Ok(None),
            Err(e) => Err(io(path, e)),
        },
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

/// Writes `content` to `path` unless it is already there. Returns true when it wrote.
fn write_if_changed(path: &Path, content: &str) -> Result<bool> {
    if read_regular(path)?.as_deref() == Some(content) {
        return Ok(false);
    }
    let dir = path.parent().ok_or_else(|| io(path, ErrorKind::InvalidInput.into()))?;
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden and without a unit suffix, so systemd never takes it for a unit.
    let tmp = dir.join(format!(".{file_name}.esfleet-tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable once the directory is synced.
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path, e)
    })?;
    Ok(true)
}

fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path, e)),
    }
}

impl UnitDir {
    pub fn new(dir: impl Into<PathBuf>) -> UnitDir {
        UnitDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/<file_name>`, refusing anything that would not sit directly in `<dir>`.
    fn child(&self, file_name: &str) -> Result<PathBuf> {
        let path = self.dir.join(file_name);
        let direct = path.parent() == Some(self.dir.as_path())
            && path.file_name().and_then(|f| f.to_str()) == Some(file_name)
            && !file_name.starts_with('.');
        if !direct {
            return Err(io(
                &path,
                std::io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("unit path escapes the unit directory {}", self.dir.display()),
                ),
            ));
        }
        Ok(path)
    }

    /// `<dir>/<name>`.
    pub fn unit_path(&self, name: &UnitName) -> Result<PathBuf> {
        self.child(name.as_str())
    }

    /// `<dir>/<name>.d`.
    pub fn dropin_dir(&self, name: &UnitName) -> Result<PathBuf> {
        self.child(&format!("{name}.d"))
    }

    /// `<dir>/<name>.d/50-esfleet.conf`: its presence marks the unit as esfleet's.
    pub fn dropin_path(&self, name: &UnitName) -> Result<PathBuf> {
        Ok(self.dropin_dir(name)?.join(DROPIN_NAME))
    }

    /// Whether `name`'s file here is esfleet's (it has esfleet's drop-in).
    pub fn owns(&self, name: &UnitName) -> Result<bool> {
        Ok(fs::symlink_metadata(self.dropin_path(name)?).is_ok_and(|m| m.file_type().is_file()))
    }

    /// Writes the unit file and its drop-in. Returns true when either changed on disk.
    /// A unit file of that name here without esfleet's drop-in (an admin's) is refused.
    pub fn install(&self, name: &UnitName, text: &str, dropin: &str) -> Result<bool> {
        fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let unit = self.unit_path(name)?;
        let ddir = self.dropin_dir(name)?;
        if fs::symlink_metadata(&unit).is_ok() && !self.owns(name)? {
            return Err(ManagerError::Foreign {
                unit: name.to_string(),
                why: format!("{} has no esfleet drop-in", unit.display()),
            });
        }
        match fs::symlink_metadata(&ddir) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => {
                return Err(io(
                    &ddir,
                    std::io::Error::new(
                        ErrorKind::AlreadyExists,
                        "exists and is not a directory; remove it so esfleet can write its drop-in",
                    ),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => fs::create_dir(&ddir).map_err(|e| io(&ddir, e))?,
            Err(e) => return Err(io(&ddir, e)),
        }
        // The drop-in first: a unit file that exists is always marked as ours, so a crash
        // between the two writes never leaves an unowned esfleet unit behind.
        let dropin_changed = write_if_changed(&ddir.join(DROPIN_NAME), dropin)?;
        let unit_changed = write_if_changed(&unit, text)?;
        Ok(dropin_changed || unit_changed)
    }

    /// Removes an esfleet unit: its file, our drop-in, and the drop-in directory if that is
    /// then empty. A unit without our drop-in is not ours and is left alone. Returns true
    /// when anything was removed.
    pub fn uninstall(&self, name: &UnitName) -> Result<bool> {
        let dropin = self.dropin_path(name)?;
        if fs::symlink_metadata(&dropin).is_err() {
            return Ok(false);
        }
        let unit = remove_file(&self.unit_path(name)?)?;
        let marker = remove_file(&dropin)?;
        let ddir = self.dropin_dir(name)?;
        match fs::remove_dir(&ddir) {
            Ok(()) => {}
            // An admin's own drop-ins stay, with their directory.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty) => {}
            Err(e) => return Err(io(&ddir, e)),
        }
        Ok(unit || marker)
    }

    /// The units in the directory that carry our drop-in, sorted.
    pub fn installed(&self) -> Result<Vec<UnitName>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(&self.dir, e))?;
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|f| f.strip_suffix(".d")) else {
                continue;
            };
            let Ok(name) = UnitName::new(stem) else {
                continue;
            };
            if fs::symlink_metadata(self.dropin_path(&name)?).is_ok_and(|m| m.file_type().is_file()) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether some `<target>.wants/` or `<target>.requires/` directory in `<dir>` links
    /// the unit (what `EnableUnitFiles(runtime=true)` creates in `/run/systemd/system`).
    pub fn is_linked(&self, name: &UnitName) -> Result<bool> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(&self.dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io(&self.dir, e))?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let target_dir = file_name.ends_with(".wants") || file_name.ends_with(".requires");
            if target_dir && fs::symlink_metadata(entry.path().join(name.as_str())).is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> UnitName {
        UnitName::new(s).unwrap()
    }

    #[test]
    fn install_is_idempotent_and_marks_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = UnitDir::new(tmp.path().join("system"));
        let u = n("a@.service");
        assert!(dir.install(&u, "[Service]\n", "[Unit]\n").unwrap());
        assert!(!dir.install(&u, "[Service]\n", "[Unit]\n").unwrap());
        assert!(dir.install(&u, "[Service]\n", "[Unit]\nX=1\n").unwrap());
        assert_eq!(
            fs::read_to_string(tmp.path().join("system/a@.service")).unwrap(),
            "[Service]\n"
        );
        assert_eq!(
            fs::read_to_string(tmp.path().join("system/a@.service.d/50-esfleet.conf")).unwrap(),
            "[Unit]\nX=1\n"
        );
        // An admin's unit (no drop-in) is neither listed nor removed.
        fs::write(tmp.path().join("system/admin.service"), "[Service]\n").unwrap();
        assert_eq!(dir.installed().unwrap(), vec![u.clone()]);
        assert!(!dir.uninstall(&n("admin.service")).unwrap());
        assert!(tmp.path().join("system/admin.service").exists());
        // No temporary files left behind.
        let names: Vec<String> = fs::read_dir(tmp.path().join("system"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|f| !f.starts_with('.')), "{names:?}");

        assert!(dir.uninstall(&u).unwrap());
        assert!(!dir.uninstall(&u).unwrap());
        assert!(!tmp.path().join("system/a@.service.d").exists());
        assert!(dir.installed().unwrap().is_empty());
    }

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = UnitDir::new(tmp.path());
        let target = tmp.path().join("elsewhere");
        fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("b.service")).unwrap();
        // Not ours (no drop-in: `systemctl link`, a mask): refused, left as it is.
        let e = dir.install(&n("b.service"), "mine", "").unwrap_err();
        assert!(matches!(e, ManagerError::Foreign { .. }), "{e}");
        assert!(e.to_string().contains("give the esfleet unit another name"), "{e}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        // Ours, with its file swapped for a symlink: replaced, never written through.
        dir.install(&n("c.service"), "mine", "").unwrap();
        fs::remove_file(tmp.path().join("c.service")).unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("c.service")).unwrap();
        assert!(dir.install(&n("c.service"), "mine", "").unwrap());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(!fs::symlink_metadata(tmp.path().join("c.service"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn admin_dropins_keep_their_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = UnitDir::new(tmp.path());
        let u = n("c.service");
        dir.install(&u, "[Service]\n", "[Unit]\n").unwrap();
        fs::write(tmp.path().join("c.service.d/90-admin.conf"), "[Service]\n").unwrap();
        assert!(dir.uninstall(&u).unwrap());
        assert!(tmp.path().join("c.service.d/90-admin.conf").exists());
        assert!(dir.installed().unwrap().is_empty());
    }
}
