//! Cleaning up data a lost machine's placements left behind (`retired/<machine>/<unit>`).
//!
//! When the scheduler gives up on a lost machine it places that machine's Elasticsearch
//! nodes elsewhere (on empty data directories of a new generation) and writes a
//! `RetiredRecord` naming each old placement's data directory. When the machine comes back,
//! its agent reads its records at every full re-read of its schedule, and once the unit is
//! neither scheduled here with that generation nor still installed from it, removes the
//! directories and then deletes the record. A removal that fails leaves the record for the
//! next full re-read.
//!
//! The agent runs as root and the paths come from cluster data, so a path is removed only
//! if, after lexical normalisation, it lies strictly inside `--data-root`, has no `..`,
//! names the record's generation as its last component, crosses no symbolic link below the
//! root (each component is checked with `symlink_metadata`), and is not the data directory
//! (`path.data`) of a unit scheduled here. Anything else is refused, logged with the key,
//! and the key is left for an operator. `remove_dir_all` itself never follows a link inside
//! the tree. The root is the operator's own setting and may itself be (or sit behind) a link.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use esfleet_core::model::RetiredRecord;

/// Where data directories may be removed unless `--data-root` says otherwise.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/esfleet";

#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    /// The path is not one the agent may remove: left for an operator.
    #[error("refusing to remove {path:?}: {why}")]
    Refused { path: String, why: String },
    /// Removing failed (permissions, I/O): tried again at the next full re-read.
    #[error("removing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the removal task failed: {0}")]
    Task(String),
}

impl RetireError {
    /// Whether trying again cannot help (an operator has to look).
    pub fn is_refusal(&self) -> bool {
        matches!(self, RetireError::Refused { .. })
    }
}

fn refused(path: &str, why: impl Into<String>) -> RetireError {
    RetireError::Refused {
        path: path.to_string(),
        why: why.into(),
    }
}

/// The lexical checks: `raw` normalised (no `.`, no doubled or trailing `/`), absolute,
/// without `..`, strictly inside `root`, and ending in `generation`. `root` is a validated
/// `--data-root` (absolute, normalised).
pub fn checked_path(root: &Path, raw: &str, generation: u64) -> Result<PathBuf, RetireError> {
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(refused(raw, "not an absolute path"));
    }
    let mut norm = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(refused(raw, "it contains \"..\"")),
            Component::Prefix(_) => return Err(refused(raw, "not a Unix path")),
            Component::Normal(part) => norm.push(part),
        }
    }
    let inside = norm
        .strip_prefix(root)
        .ok()
        .filter(|rel| rel.components().next().is_some());
    if inside.is_none() {
        return Err(refused(
            raw,
            format!(
                "it is not inside the agent's data root {} (--data-root)",
                root.display()
            ),
        ));
    }
    let last = norm.file_name().and_then(|f| f.to_str()).unwrap_or_default();
    if last.is_empty() || !last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refused(
            raw,
            "its last component is not a placement generation (digits)",
        ));
    }
    if last != generation.to_string() {
        return Err(refused(
            raw,
            format!("its last component is not the record's generation {generation}"),
        ));
    }
    Ok(norm)
}

/// Removes `raw` (see [`checked_path`]) unless a component below `root` is a symbolic link
/// or not a directory. Returns true when it removed something, false when nothing was there.
pub fn remove_dir(root: &Path, raw: &str, generation: u64) -> Result<bool, RetireError> {
    let path = checked_path(root, raw, generation)?;
    let rel = path.strip_prefix(root).expect("checked to be inside the root");
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refused(raw, format!("{} is a symbolic link", cur.display())))
            }
            Ok(m) if !m.is_dir() => return Err(refused(raw, format!("{} is not a directory", cur.display()))),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(RetireError::Io {
                    path: cur.display().to_string(),
                    source: e,
                })
            }
        }
    }
    match fs::remove_dir_all(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RetireError::Io {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// [`remove_dir`] for every path of a record, on a blocking thread (an Elasticsearch data
/// directory can hold many files). Stops at the first error. `in_use`: the `path.data` of
/// the units scheduled here, never removed whatever the record says.
pub async fn remove_record(root: PathBuf, rec: RetiredRecord, in_use: Vec<String>) -> Result<usize, RetireError> {
    tokio::task::spawn_blocking(move || {
        let mut removed = 0;
        for raw in &rec.paths {
            let norm = checked_path(&root, raw, rec.generation)?;
            if in_use.iter().any(|u| Path::new(u) == norm) {
                return Err(refused(raw, "it is the data directory of a unit scheduled here"));
            }
            removed += usize::from(remove_dir(&root, raw, rec.generation)?);
        }
        Ok(removed)
    })
    .await
    .map_err(|e| RetireError::Task(e.to_string()))?
}

/// The `path.data` an `elasticsearch.yml` rendered by `core::es` sets (`key: <JSON>` lines).
pub fn path_data(yml: &str) -> Option<String> {
    yml.lines()
        .find_map(|l| l.strip_prefix("path.data:"))
        .and_then(|v| serde_json::from_str::<String>(v.trim()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rules() {
        let root = Path::new("/var/lib/esfleet");
        let ok = |p: &str, g: u64| checked_path(root, p, g).map(|p| p.display().to_string());
        assert_eq!(
            ok("/var/lib/esfleet/es/logs-d1/17", 17).unwrap(),
            "/var/lib/esfleet/es/logs-d1/17"
        );
        assert_eq!(
            ok("/var/lib/esfleet//es/./logs-d1/17/", 17).unwrap(),
            "/var/lib/esfleet/es/logs-d1/17"
        );
        assert_eq!(ok("/var/lib/esfleet/17", 17).unwrap(), "/var/lib/esfleet/17");
        let why = |p: &str, g: u64| ok(p, g).unwrap_err().to_string();
        assert!(why("/var/lib/esfleet/es/../../../etc/17", 17).contains(".."));
        assert!(why("/var/lib/esfleet/es/x/../17", 17).contains(".."));
        assert!(why("/var/lib/other/17", 17).contains("not inside"));
        assert!(why("/var/lib/esfleetx/17", 17).contains("not inside"));
        assert!(why("/var/lib/esfleet", 17).contains("not inside"));
        assert!(why("/var/lib/esfleet/es/logs-d1/data", 17).contains("generation"));
        assert!(why("/var/lib/esfleet/es/logs-d1/18", 17).contains("generation 17"));
        assert!(why("var/lib/esfleet/es/17", 17).contains("absolute"));
        assert!(why("", 17).contains("absolute"));
    }

    #[test]
    fn path_data_of_a_rendered_file() {
        let yml = "# x\ncluster.name: \"logs\"\npath.data: \"/srv/es/logs-d1/7\"\n";
        assert_eq!(path_data(yml).as_deref(), Some("/srv/es/logs-d1/7"));
        assert_eq!(path_data("cluster.name: \"logs\"\n"), None);
    }

    #[test]
    fn links_files_and_missing_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("es/n1/5/nested")).unwrap();
        fs::write(root.join("es/n1/5/nested/seg"), "x").unwrap();
        fs::create_dir_all(outside.join("6")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("es/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("6"), root.join("es/n1/6")).unwrap();
        fs::write(root.join("es/n1/7"), "a file").unwrap();
        let p = |rel: &str| format!("{}/{rel}", root.display());

        let e = remove_dir(&root, &p("es/link/6"), 6).unwrap_err();
        assert!(e.is_refusal() && e.to_string().contains("symbolic link"), "{e}");
        let e = remove_dir(&root, &p("es/n1/6"), 6).unwrap_err();
        assert!(e.is_refusal() && e.to_string().contains("symbolic link"), "{e}");
        assert!(outside.join("6").is_dir(), "nothing removed through a link");
        let e = remove_dir(&root, &p("es/n1/7"), 7).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(!remove_dir(&root, &p("es/gone/8"), 8).unwrap(), "nothing there");

        assert!(remove_dir(&root, &p("es/n1/5"), 5).unwrap());
        assert!(!root.join("es/n1/5").exists());
        assert!(root.join("es/n1").is_dir(), "only the generation's directory goes");
    }
}
