//! The agent's reconcile step: `diff(desired, actual) -> Vec<Task>`.
//!
//! The agent runtime gathers what the schedule wants ([`ScheduleEntry`]s, checked with
//! [`check_entry`]) and what the host has ([`Actual`]: the files it wrote, systemd's live
//! states, which units it started), and runs the tasks this module returns, in order. The
//! order is the safety argument: units are stopped before their files go, files are
//! written before the one `Reload`, and nothing starts before that reload.
//!
//! Also here, because they decide what reaches the disk of a host the agent runs as root
//! on: [`check_entry`] (every schedule entry is validated where it is acted on, DESIGN.md
//! decision 9), [`dropin`] (the placement facts as quoted `Environment=` lines) and
//! [`fence_stops`] (which units a fenced agent stops, decision 5).
//!
//! A unit's config files ([`ScheduleEntry::files`], e.g. an Elasticsearch node's
//! `elasticsearch.yml`) are not unit files: writing them is a task of its own
//! ([`Task::WriteFiles`]), done before the unit starts, and a change of those files alone
//! neither reloads systemd nor restarts the unit (Elasticsearch re-reads its seed-hosts
//! file itself; other settings apply at its next restart).

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{unit_hash, DesiredState, ScheduleEntry};
use crate::name::{NameError, UnitName};
use crate::options::Fence;

/// The largest unit file the agent writes (the same limit as the unit-file parser's).
pub const MAX_UNIT_FILE_BYTES: usize = 256 * 1024;

/// The most config files one entry may carry.
pub const MAX_CONFIG_FILES: usize = 16;

/// The most bytes an entry's config files may hold together.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The longest config file name.
pub const MAX_CONFIG_FILE_NAME: usize = 64;

/// The variable that tells a unit where its config files are (set by the agent when the
/// entry has files).
pub const CONFIG_DIR_ENV: &str = "ESFLEET_CONFIG_DIR";

/// One thing the agent asks of systemd, through its `UnitManager`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    Stop(UnitName),
    Disable(UnitName),
    ResetFailed(UnitName),
    /// Remove the unit file and its drop-in.
    Uninstall(UnitName),
    /// Write the unit file and its drop-in.
    Install {
        unit: UnitName,
        text: String,
        dropin: String,
    },
    /// Write the unit's config files into its config directory, and remove those of its
    /// files the map no longer has. Never followed by a reload or restart of its own.
    WriteFiles {
        unit: UnitName,
        files: BTreeMap<String, String>,
    },
    /// Remove the unit's config directory.
    RemoveFiles(UnitName),
    /// systemd's daemon-reload; emitted once, only when unit files were written or removed.
    Reload,
    Enable(UnitName),
    Start(UnitName),
    /// New files on a running unit (fleet stopped and started on `--replace`).
    Restart(UnitName),
}

impl Task {
    /// The unit this task acts on (`None` for [`Task::Reload`]).
    pub fn unit(&self) -> Option<&UnitName> {
        match self {
            Task::Stop(u)
            | Task::Disable(u)
            | Task::ResetFailed(u)
            | Task::Uninstall(u)
            | Task::Enable(u)
            | Task::Start(u)
            | Task::Restart(u)
            | Task::RemoveFiles(u) => Some(u),
            Task::Install { unit, .. } | Task::WriteFiles { unit, .. } => Some(unit),
            Task::Reload => None,
        }
    }
}

/// What the agent knows it wrote for one unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Installed {
    /// [`unit_hash`] of the unit file written; `None` when the file was found on disk (an
    /// agent restart) and its content is not known.
    pub hash: Option<String>,
    /// The drop-in written (empty when unknown).
    pub dropin: String,
    /// Whether the unit was enabled (assume `true` when unknown, so a removal disables it).
    pub enabled: bool,
}

/// What the host has, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actual {
    /// Units whose files the agent wrote.
    pub installed: BTreeMap<UnitName, Installed>,
    /// systemd's `ActiveState` of each unit; a unit missing here is of unknown state.
    pub active: BTreeMap<UnitName, String>,
    /// Units the agent started for the files now installed and has not stopped since. A
    /// unit in this set that is not running has stopped or crashed on its own: systemd's
    /// `Restart=` decides about it, and the agent only reports it.
    pub started: BTreeSet<UnitName>,
    /// Units whose config directory the agent wrote: the [`files_hash`] of what it wrote,
    /// or `None` when the directory was found on disk (an agent restart) and its content is
    /// not known (then it is compared with the entry and rewritten where it differs).
    pub files: BTreeMap<UnitName, Option<String>>,
}

/// A digest of a set of config files (names and contents), to tell whether what the agent
/// wrote is what an entry wants.
pub fn files_hash(files: &BTreeMap<String, String>) -> String {
    let mut canon = String::new();
    for (name, text) in files {
        // Names have no newline, and the length delimits the text: unambiguous.
        canon.push_str(name);
        canon.push('\n');
        canon.push_str(&text.len().to_string());
        canon.push('\n');
        canon.push_str(text);
    }
    unit_hash(&canon)
}

/// Running, or on its way there: `active`, `activating` or `reloading`.
pub fn is_up(active: &str) -> bool {
    matches!(active, "active" | "activating" | "reloading")
}

/// Possibly running: up, stopping, or of unknown state.
fn maybe_up(active: Option<&String>) -> bool {
    active.is_none_or(|a| !matches!(a.as_str(), "inactive" | "failed"))
}

/// The tasks that bring `actual` to `desired`, in the order they must run:
/// stops, disables, reset-failed and uninstalls of what goes; removals of config
/// directories; config file writes; installs; one reload when any unit file changed;
/// enables; starts and restarts. Within each step, units in name order.
pub fn diff(desired: &BTreeMap<UnitName, ScheduleEntry>, actual: &Actual) -> Vec<Task> {
    let mut stop = Vec::new();
    let mut disable = Vec::new();
    let mut reset = Vec::new();
    let mut uninstall = Vec::new();
    let mut remove_files = Vec::new();
    let mut write_files = Vec::new();
    let mut install = Vec::new();
    let mut enable = Vec::new();
    let mut run = Vec::new();

    for (name, inst) in &actual.installed {
        if desired.contains_key(name) {
            continue;
        }
        if maybe_up(actual.active.get(name)) {
            stop.push(Task::Stop(name.clone()));
        }
        if inst.enabled {
            disable.push(Task::Disable(name.clone()));
        }
        reset.push(Task::ResetFailed(name.clone()));
        uninstall.push(Task::Uninstall(name.clone()));
    }
    for name in actual.files.keys() {
        if !desired.contains_key(name) {
            remove_files.push(Task::RemoveFiles(name.clone()));
        }
    }

    for (name, entry) in desired {
        // Config files first: a unit (re)started below must find them in place. A change
        // of the files alone is not a change of the unit: no reload, no restart.
        let written = actual.files.get(name);
        if entry.files.is_empty() {
            if written.is_some() {
                remove_files.push(Task::RemoveFiles(name.clone()));
            }
        } else if written.is_none_or(|h| h.as_deref() != Some(files_hash(&entry.files).as_str())) {
            write_files.push(Task::WriteFiles {
                unit: name.clone(),
                files: entry.files.clone(),
            });
        }

        let drop = dropin(entry);
        let inst = actual.installed.get(name);
        let current = inst.is_some_and(|i| i.hash.as_deref() == Some(entry.hash.as_str()) && i.dropin == drop);
        let enabled = inst.is_some_and(|i| i.enabled);
        let up = actual.active.get(name).is_some_and(|a| is_up(a));
        if !current {
            install.push(Task::Install {
                unit: name.clone(),
                text: entry.text.clone(),
                dropin: drop,
            });
        }
        if entry.enable && (!current || !enabled) {
            enable.push(Task::Enable(name.clone()));
        } else if !entry.enable && enabled {
            disable.push(Task::Disable(name.clone()));
        }
        // A template cannot run itself; only its instances can.
        let launch = entry.desired == DesiredState::Launched && !name.is_template();
        if launch {
            if !current && up {
                run.push(Task::Restart(name.clone()));
            } else if !up && (!current || !actual.started.contains(name)) {
                run.push(Task::Start(name.clone()));
            }
        } else if up {
            stop.push(Task::Stop(name.clone()));
        }
    }

    // Stops of removed and of merely-loaded units interleave by name.
    stop.sort_by(|a, b| a.unit().cmp(&b.unit()));
    disable.sort_by(|a, b| a.unit().cmp(&b.unit()));
    remove_files.sort_by(|a, b| a.unit().cmp(&b.unit()));
    let files_change = !install.is_empty() || !uninstall.is_empty();
    let mut tasks = stop;
    tasks.extend(disable);
    tasks.extend(reset);
    tasks.extend(uninstall);
    tasks.extend(remove_files);
    tasks.extend(write_files);
    tasks.extend(install);
    if files_change {
        tasks.push(Task::Reload);
    }
    tasks.extend(enable);
    tasks.extend(run);
    tasks
}

/// The units a fenced agent stops: those whose entry says `Fence=stop` and that are up.
pub fn fence_stops(desired: &BTreeMap<UnitName, ScheduleEntry>, active: &BTreeMap<UnitName, String>) -> Vec<UnitName> {
    desired
        .iter()
        .filter(|(name, e)| e.fence == Fence::Stop && active.get(*name).is_some_and(|a| is_up(a)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Why a schedule entry is not acted on. The agent reports it in the unit's state record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("the schedule key names {raw:?}, which is not a valid unit name: {source}")]
    BadKeyName {
        raw: String,
        #[source]
        source: NameError,
    },
    #[error("the schedule entry for {raw:?} is not a valid schedule entry (JSON): {message}")]
    BadJson { raw: String, message: String },
    #[error("the schedule entry under key {key:?} is for unit {entry:?}; the two must be the same")]
    NameMismatch { key: String, entry: String },
    #[error("the unit file of {unit} is {len} bytes; the limit is {MAX_UNIT_FILE_BYTES} bytes (256 KiB)")]
    TooLarge { unit: String, len: usize },
    #[error("the unit file of {unit} hashes to {actual}, but the entry says {expected}; the entry is corrupt or was altered")]
    HashMismatch {
        unit: String,
        expected: String,
        actual: String,
    },
    #[error("the entry for {unit} has desired state inactive; only loaded or launched units are scheduled")]
    Inactive { unit: String },
    #[error("the entry for {unit} sets environment variable {key:?}; names must match [A-Za-z_][A-Za-z0-9_]*")]
    BadEnvName { unit: String, key: String },
    #[error("the entry for {unit} sets {key} to a value with a newline or control character; such values cannot be written to a drop-in")]
    BadEnvValue { unit: String, key: String },
    #[error(
        "the entry for {unit} has a config file named {file:?}; a config file name must match \
         [A-Za-z0-9][A-Za-z0-9._-]{{0,63}} (a plain file name: no path, no leading dot)"
    )]
    BadFileName { unit: String, file: String },
    #[error("the entry for {unit} has {count} config files; the limit is {MAX_CONFIG_FILES}")]
    TooManyFiles { unit: String, count: usize },
    #[error(
        "the config files of {unit} hold {len} bytes together (the largest is {largest:?}); \
         the limit is {MAX_CONFIG_BYTES} bytes (1 MiB)"
    )]
    FilesTooLarge { unit: String, len: usize, largest: String },
}

/// Checks a schedule entry found under `<schedule prefix><raw>`: the key names a valid
/// unit, the value parses, names the same unit, its file is at most
/// [`MAX_UNIT_FILE_BYTES`], its hash matches its text, its environment can be written
/// safely, and its config files are at most [`MAX_CONFIG_FILES`] plain file names
/// ([`valid_config_file_name`]) of at most [`MAX_CONFIG_BYTES`] together. Only an entry
/// that passes reaches the disk.
pub fn check_entry(raw: &str, value: &[u8]) -> Result<(UnitName, ScheduleEntry), EntryError> {
    let name = UnitName::new(raw).map_err(|source| EntryError::BadKeyName {
        raw: raw.to_string(),
        source,
    })?;
    let entry: ScheduleEntry = serde_json::from_slice(value).map_err(|e| EntryError::BadJson {
        raw: raw.to_string(),
        message: e.to_string(),
    })?;
    if entry.unit != name {
        return Err(EntryError::NameMismatch {
            key: raw.to_string(),
            entry: entry.unit.to_string(),
        });
    }
    if entry.text.len() > MAX_UNIT_FILE_BYTES {
        return Err(EntryError::TooLarge {
            unit: raw.to_string(),
            len: entry.text.len(),
        });
    }
    let actual = unit_hash(&entry.text);
    if actual != entry.hash {
        return Err(EntryError::HashMismatch {
            unit: raw.to_string(),
            expected: entry.hash.clone(),
            actual,
        });
    }
    if entry.desired == DesiredState::Inactive {
        return Err(EntryError::Inactive { unit: raw.to_string() });
    }
    for (key, value) in &entry.env {
        if !valid_env_name(key) {
            return Err(EntryError::BadEnvName {
                unit: raw.to_string(),
                key: key.clone(),
            });
        }
        if value.chars().any(char::is_control) {
            return Err(EntryError::BadEnvValue {
                unit: raw.to_string(),
                key: key.clone(),
            });
        }
    }
    if let Some(bad) = entry.files.keys().find(|f| !valid_config_file_name(f)) {
        return Err(EntryError::BadFileName {
            unit: raw.to_string(),
            file: bad.clone(),
        });
    }
    if entry.files.len() > MAX_CONFIG_FILES {
        return Err(EntryError::TooManyFiles {
            unit: raw.to_string(),
            count: entry.files.len(),
        });
    }
    let len: usize = entry.files.values().map(String::len).sum();
    if len > MAX_CONFIG_BYTES {
        let largest = entry
            .files
            .iter()
            .max_by_key(|(_, text)| text.len())
            .map(|(f, _)| f.clone())
            .unwrap_or_default();
        return Err(EntryError::FilesTooLarge {
            unit: raw.to_string(),
            len,
            largest,
        });
    }
    Ok((name, entry))
}

/// A config file name the agent writes: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`. So never empty,
/// `.`, `..`, hidden, or a path.
pub fn valid_config_file_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_CONFIG_FILE_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn valid_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The drop-in the agent writes next to a unit file. It marks the unit as esfleet's (the
/// manager finds its units by it) and, for services, carries the placement facts as
/// `Environment=` lines. Other unit types have no environment, so theirs is the marker only.
/// Variables with invalid names are left out ([`check_entry`] refuses them first).
pub fn dropin(entry: &ScheduleEntry) -> String {
    let mut out = String::from("# Written by esfleet-agent: the placement of this unit. Do not edit.\n");
    if entry.unit.unit_type() == "service" && !entry.env.is_empty() {
        out.push_str("[Service]\n");
        for (key, value) in entry.env.iter().filter(|(k, _)| valid_env_name(k)) {
            out.push_str("Environment=");
            out.push_str(&quote_env(key, value));
            out.push('\n');
        }
    }
    out
}

/// `"KEY=VALUE"` in systemd's quoting: inside double quotes, C escapes are honoured, and
/// `%` starts a specifier everywhere, so `\`, `"` and `%` are escaped and control
/// characters written as escapes (never raw: a raw newline would end the line).
fn quote_env(key: &str, value: &str) -> String {
    let mut out = String::with_capacity(key.len() + value.len() + 3);
    out.push('"');
    out.push_str(key);
    out.push('=');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32 & 0xff)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[Service]\nExecStart=/bin/sleep 1000\n";
    const TEXT2: &str = "[Service]\nExecStart=/bin/sleep 2000\n";

    fn n(s: &str) -> UnitName {
        UnitName::new(s).unwrap()
    }

    fn entry(name: &str, text: &str, desired: DesiredState) -> ScheduleEntry {
        ScheduleEntry {
            unit: n(name),
            text: text.to_string(),
            hash: unit_hash(text),
            desired,
            generation: 1,
            fence: Fence::Stop,
            enable: false,
            env: [("ESFLEET_ZONE".to_string(), "a".to_string())].into(),
            files: Default::default(),
        }
    }

    fn desired(entries: &[ScheduleEntry]) -> BTreeMap<UnitName, ScheduleEntry> {
        entries.iter().map(|e| (e.unit.clone(), e.clone())).collect()
    }

    /// The host after the agent installed (and maybe started) `e`.
    fn have(actual: &mut Actual, e: &ScheduleEntry, active: &str, started: bool) {
        actual.installed.insert(
            e.unit.clone(),
            Installed {
                hash: Some(e.hash.clone()),
                dropin: dropin(e),
                enabled: e.enable,
            },
        );
        actual.active.insert(e.unit.clone(), active.to_string());
        if started {
            actual.started.insert(e.unit.clone());
        }
    }

    fn install(e: &ScheduleEntry) -> Task {
        Task::Install {
            unit: e.unit.clone(),
            text: e.text.clone(),
            dropin: dropin(e),
        }
    }

    #[test]
    fn new_unit_installs_reloads_then_starts() {
        let a = entry("a.service", TEXT, DesiredState::Launched);
        let mut b = entry("b.service", TEXT, DesiredState::Loaded);
        b.enable = true;
        let t = diff(&desired(&[a.clone(), b.clone()]), &Actual::default());
        assert_eq!(
            t,
            vec![
                install(&a),
                install(&b),
                Task::Reload,
                Task::Enable(n("b.service")),
                Task::Start(n("a.service"))
            ]
        );
    }

    #[test]
    fn converged_host_needs_nothing() {
        let a = entry("a.service", TEXT, DesiredState::Launched);
        let b = entry("b.service", TEXT, DesiredState::Loaded);
        let mut actual = Actual::default();
        have(&mut actual, &a, "active", true);
        have(&mut actual, &b, "inactive", false);
        assert_eq!(diff(&desired(&[a, b]), &actual), vec![]);
    }

    #[test]
    fn removed_unit_stops_disables_resets_uninstalls_reloads() {
        let mut a = entry("a.service", TEXT, DesiredState::Launched);
        a.enable = true;
        let mut actual = Actual::default();
        have(&mut actual, &a, "active", true);
        assert_eq!(
            diff(&BTreeMap::new(), &actual),
            vec![
                Task::Stop(n("a.service")),
                Task::Disable(n("a.service")),
                Task::ResetFailed(n("a.service")),
                Task::Uninstall(n("a.service")),
                Task::Reload
            ]
        );
        // Already down: no stop. Unknown state (not in `active`): stopped to be safe.
        actual.active.insert(n("a.service"), "failed".into());
        assert_eq!(diff(&BTreeMap::new(), &actual)[0], Task::Disable(n("a.service")));
        actual.active.clear();
        assert_eq!(diff(&BTreeMap::new(), &actual)[0], Task::Stop(n("a.service")));
    }

    #[test]
    fn changed_text_on_running_unit_restarts() {
        let old = entry("a.service", TEXT, DesiredState::Launched);
        let new = entry("a.service", TEXT2, DesiredState::Launched);
        let mut actual = Actual::default();
        have(&mut actual, &old, "active", true);
        assert_eq!(
            diff(&desired(std::slice::from_ref(&new)), &actual),
            vec![install(&new), Task::Reload, Task::Restart(n("a.service"))]
        );
        // A stopped unit with new files starts (the new version was never started).
        actual.active.insert(n("a.service"), "inactive".into());
        assert_eq!(
            diff(&desired(std::slice::from_ref(&new)), &actual),
            vec![install(&new), Task::Reload, Task::Start(n("a.service"))]
        );
    }

    #[test]
    fn new_placement_facts_rewrite_the_dropin_and_restart() {
        let old = entry("a.service", TEXT, DesiredState::Launched);
        let mut new = old.clone();
        new.env.insert("ESFLEET_GENERATION".into(), "2".into());
        let mut actual = Actual::default();
        have(&mut actual, &old, "active", true);
        assert_eq!(
            diff(&desired(std::slice::from_ref(&new)), &actual),
            vec![install(&new), Task::Reload, Task::Restart(n("a.service"))]
        );
    }

    #[test]
    fn crashed_unit_is_left_to_systemd_but_a_fenced_one_starts_again() {
        let a = entry("a.service", TEXT, DesiredState::Launched);
        let mut actual = Actual::default();
        have(&mut actual, &a, "failed", true);
        assert_eq!(diff(&desired(std::slice::from_ref(&a)), &actual), vec![]);
        // The agent stopped it (fencing, or `loaded`), so `started` was cleared.
        actual.started.clear();
        actual.active.insert(n("a.service"), "inactive".into());
        assert_eq!(
            diff(&desired(std::slice::from_ref(&a)), &actual),
            vec![Task::Start(n("a.service"))]
        );
    }

    #[test]
    fn launched_to_loaded_stops_before_anything_else() {
        let a = entry("a.service", TEXT, DesiredState::Launched);
        let b = entry("b.service", TEXT, DesiredState::Loaded);
        let c = entry("c.service", TEXT, DesiredState::Launched);
        let mut actual = Actual::default();
        have(&mut actual, &a, "active", true);
        have(&mut actual, &b, "active", true);
        have(&mut actual, &c, "active", true);
        // a goes, b becomes loaded-only, c stays.
        let t = diff(&desired(&[b, c]), &actual);
        assert_eq!(
            t,
            vec![
                Task::Stop(n("a.service")),
                Task::Stop(n("b.service")),
                Task::ResetFailed(n("a.service")),
                Task::Uninstall(n("a.service")),
                Task::Reload
            ]
        );
    }

    #[test]
    fn enable_follows_the_entry() {
        let mut a = entry("a.service", TEXT, DesiredState::Loaded);
        let mut actual = Actual::default();
        have(&mut actual, &a, "inactive", false);
        a.enable = true;
        assert_eq!(
            diff(&desired(std::slice::from_ref(&a)), &actual),
            vec![Task::Enable(n("a.service"))]
        );
        have(&mut actual, &a, "inactive", false);
        a.enable = false;
        assert_eq!(
            diff(&desired(std::slice::from_ref(&a)), &actual),
            vec![Task::Disable(n("a.service"))]
        );
    }

    #[test]
    fn files_found_on_disk_after_restart_are_rewritten() {
        let a = entry("a.service", TEXT, DesiredState::Launched);
        let mut actual = Actual::default();
        actual.installed.insert(
            n("a.service"),
            Installed {
                hash: None,
                dropin: String::new(),
                enabled: true,
            },
        );
        actual.installed.insert(
            n("orphan.service"),
            Installed {
                hash: None,
                dropin: String::new(),
                enabled: true,
            },
        );
        actual.active.insert(n("a.service"), "active".into());
        actual.active.insert(n("orphan.service"), "inactive".into());
        assert_eq!(
            diff(&desired(std::slice::from_ref(&a)), &actual),
            vec![
                Task::Disable(n("a.service")),
                Task::Disable(n("orphan.service")),
                Task::ResetFailed(n("orphan.service")),
                Task::Uninstall(n("orphan.service")),
                install(&a),
                Task::Reload,
                Task::Restart(n("a.service"))
            ]
        );
    }

    #[test]
    fn templates_are_installed_never_started() {
        let t = entry("es@.service", TEXT, DesiredState::Launched);
        assert_eq!(
            diff(&desired(std::slice::from_ref(&t)), &Actual::default()),
            vec![install(&t), Task::Reload]
        );
    }

    #[test]
    fn fence_stops_only_running_fence_stop_units() {
        let a = entry("a.service", TEXT, DesiredState::Launched);
        let mut b = entry("b.service", TEXT, DesiredState::Launched);
        b.fence = Fence::Keep;
        let c = entry("c.service", TEXT, DesiredState::Launched);
        let active: BTreeMap<UnitName, String> = [
            (n("a.service"), "active".to_string()),
            (n("b.service"), "active".to_string()),
            (n("c.service"), "failed".to_string()),
        ]
        .into();
        assert_eq!(fence_stops(&desired(&[a, b, c]), &active), vec![n("a.service")]);
    }

    #[test]
    fn dropin_quotes_for_systemd() {
        let mut e = entry("a.service", TEXT, DesiredState::Launched);
        e.env = [
            ("A".to_string(), r#"x "y" \z 100%"#.to_string()),
            ("B".to_string(), "two words".to_string()),
        ]
        .into();
        assert_eq!(
            dropin(&e),
            "# Written by esfleet-agent: the placement of this unit. Do not edit.\n[Service]\n\
             Environment=\"A=x \\\"y\\\" \\\\z 100%%\"\nEnvironment=\"B=two words\"\n"
        );
        let mut t = entry("a.timer", TEXT, DesiredState::Launched);
        t.env = e.env.clone();
        assert!(!dropin(&t).contains("Environment"));
        e.env = [("N".to_string(), "a\nExecStartPre=/bin/evil".to_string())].into();
        assert!(dropin(&e).ends_with("Environment=\"N=a\\nExecStartPre=/bin/evil\"\n"));
    }

    fn json(e: &ScheduleEntry) -> Vec<u8> {
        serde_json::to_vec(e).unwrap()
    }

    #[test]
    fn check_entry_accepts_good_and_refuses_hostile_entries() {
        let a = entry("a.service", TEXT, DesiredState::Launched);
        assert_eq!(
            check_entry("a.service", &json(&a)).unwrap(),
            (n("a.service"), a.clone())
        );

        let err = |raw: &str, value: &[u8]| check_entry(raw, value).unwrap_err();
        assert!(matches!(
            err("../../etc/passwd.service", &json(&a)),
            EntryError::BadKeyName { .. }
        ));
        assert!(matches!(err("a/b.service", &json(&a)), EntryError::BadKeyName { .. }));
        assert!(matches!(err("b.service", &json(&a)), EntryError::NameMismatch { .. }));
        assert!(matches!(err("a.service", b"{not json"), EntryError::BadJson { .. }));
        let hostile = String::from_utf8(json(&a))
            .unwrap()
            .replace("\"unit\":\"a.service\"", "\"unit\":\"../a.service\"");
        assert!(matches!(
            err("a.service", hostile.as_bytes()),
            EntryError::BadJson { .. }
        ));

        let mut big = entry(
            "a.service",
            &"#".repeat(MAX_UNIT_FILE_BYTES + 1),
            DesiredState::Launched,
        );
        assert!(matches!(err("a.service", &json(&big)), EntryError::TooLarge { .. }));
        big = entry("a.service", &"#".repeat(MAX_UNIT_FILE_BYTES), DesiredState::Launched);
        assert!(check_entry("a.service", &json(&big)).is_ok());

        let mut bad = a.clone();
        bad.hash = unit_hash("something else");
        assert!(matches!(err("a.service", &json(&bad)), EntryError::HashMismatch { .. }));

        let mut bad = a.clone();
        bad.env
            .insert("X".into(), "1\n[Service]\nExecStartPre=/bin/evil".into());
        assert!(matches!(err("a.service", &json(&bad)), EntryError::BadEnvValue { .. }));
        let mut bad = a.clone();
        bad.env.insert("X Y".into(), "1".into());
        assert!(matches!(err("a.service", &json(&bad)), EntryError::BadEnvName { .. }));
        let mut bad = a;
        bad.desired = DesiredState::Inactive;
        assert!(matches!(err("a.service", &json(&bad)), EntryError::Inactive { .. }));
    }

    fn with_files(mut e: ScheduleEntry, files: &[(&str, &str)]) -> ScheduleEntry {
        e.files = files.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect();
        e
    }

    fn write(e: &ScheduleEntry) -> Task {
        Task::WriteFiles {
            unit: e.unit.clone(),
            files: e.files.clone(),
        }
    }

    #[test]
    fn config_files_are_written_before_the_unit_starts() {
        let a = with_files(
            entry("es.service", TEXT, DesiredState::Launched),
            &[
                ("elasticsearch.yml", "a: 1\n"),
                ("unicast_hosts.txt", "10.0.0.1:9300\n"),
            ],
        );
        assert_eq!(
            diff(&desired(std::slice::from_ref(&a)), &Actual::default()),
            vec![write(&a), install(&a), Task::Reload, Task::Start(n("es.service"))]
        );
        // Written and running: nothing to do.
        let mut actual = Actual::default();
        have(&mut actual, &a, "active", true);
        actual.files.insert(a.unit.clone(), Some(files_hash(&a.files)));
        assert_eq!(diff(&desired(std::slice::from_ref(&a)), &actual), vec![]);
    }

    #[test]
    fn a_files_only_change_rewrites_without_reload_or_restart() {
        let old = with_files(
            entry("es.service", TEXT, DesiredState::Launched),
            &[
                ("elasticsearch.yml", "a: 1\n"),
                ("unicast_hosts.txt", "10.0.0.1:9300\n"),
            ],
        );
        let mut actual = Actual::default();
        have(&mut actual, &old, "active", true);
        actual.files.insert(old.unit.clone(), Some(files_hash(&old.files)));
        let new = with_files(
            old.clone(),
            &[
                ("elasticsearch.yml", "a: 1\n"),
                ("unicast_hosts.txt", "10.0.0.2:9300\n"),
            ],
        );
        assert_eq!(diff(&desired(std::slice::from_ref(&new)), &actual), vec![write(&new)]);
        // A file dropped from the map: the same task (it removes what the map lacks).
        let fewer = with_files(old.clone(), &[("elasticsearch.yml", "a: 1\n")]);
        assert_eq!(
            diff(&desired(std::slice::from_ref(&fewer)), &actual),
            vec![write(&fewer)]
        );
        // Found on disk after an agent restart, content unknown: compared and rewritten,
        // still without a restart.
        actual.files.insert(old.unit.clone(), None);
        assert_eq!(diff(&desired(std::slice::from_ref(&old)), &actual), vec![write(&old)]);
        // No files any more: the directory goes.
        let none = with_files(old, &[]);
        assert_eq!(
            diff(&desired(std::slice::from_ref(&none)), &actual),
            vec![Task::RemoveFiles(n("es.service"))]
        );
    }

    #[test]
    fn a_removed_unit_loses_its_config_directory_after_it_stopped() {
        let a = with_files(entry("es.service", TEXT, DesiredState::Launched), &[("x.yml", "x\n")]);
        let mut actual = Actual::default();
        have(&mut actual, &a, "active", true);
        actual.files.insert(a.unit.clone(), Some(files_hash(&a.files)));
        // A directory left behind by a unit no longer installed goes too, without a reload.
        actual.files.insert(n("old.service"), None);
        assert_eq!(
            diff(&BTreeMap::new(), &actual),
            vec![
                Task::Stop(n("es.service")),
                Task::ResetFailed(n("es.service")),
                Task::Uninstall(n("es.service")),
                Task::RemoveFiles(n("es.service")),
                Task::RemoveFiles(n("old.service")),
                Task::Reload
            ]
        );
        actual.installed.clear();
        assert_eq!(diff(&BTreeMap::new(), &actual)[0], Task::RemoveFiles(n("es.service")));
    }

    #[test]
    fn files_hash_tells_names_and_contents_apart() {
        let f = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        let base = files_hash(&f(&[("a", "1"), ("b", "2")]));
        assert_eq!(base, files_hash(&f(&[("b", "2"), ("a", "1")])));
        assert_ne!(base, files_hash(&f(&[("a", "1"), ("b", "3")])));
        assert_ne!(base, files_hash(&f(&[("a", "1"), ("c", "2")])));
        assert_ne!(
            files_hash(&f(&[("a", "1\nb\n12")])),
            files_hash(&f(&[("a", "1"), ("b", "2")]))
        );
    }

    #[test]
    fn check_entry_refuses_hostile_config_files() {
        let good = with_files(
            entry("es.service", TEXT, DesiredState::Launched),
            &[
                ("elasticsearch.yml", "a: 1\n"),
                ("unicast_hosts.txt", ""),
                ("jvm.options.d-1_x", ""),
            ],
        );
        assert!(check_entry("es.service", &json(&good)).is_ok());
        for name in [
            "../x", "a/b", ".", "..", "", ".hidden", "-x", "_x", "a b", "a\nb", "é.yml", "a\\b",
        ] {
            let bad = with_files(good.clone(), &[(name, "x")]);
            match check_entry("es.service", &json(&bad)) {
                Err(e @ EntryError::BadFileName { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("es.service") && msg.contains(&format!("{name:?}")),
                        "{msg}"
                    );
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        let long = "a".repeat(MAX_CONFIG_FILE_NAME + 1);
        assert!(matches!(
            check_entry("es.service", &json(&with_files(good.clone(), &[(&long, "")]))),
            Err(EntryError::BadFileName { .. })
        ));
        let longest = "a".repeat(MAX_CONFIG_FILE_NAME);
        assert!(check_entry("es.service", &json(&with_files(good.clone(), &[(&longest, "")]))).is_ok());

        let names: Vec<String> = (0..=MAX_CONFIG_FILES).map(|i| format!("f{i}")).collect();
        let mut many = good.clone();
        many.files = names.iter().map(|f| (f.clone(), String::new())).collect();
        assert!(matches!(
            check_entry("es.service", &json(&many)),
            Err(EntryError::TooManyFiles { count: 17, .. })
        ));
        many.files.pop_last();
        assert!(check_entry("es.service", &json(&many)).is_ok());

        let half = "x".repeat(MAX_CONFIG_BYTES / 2);
        let mut big = with_files(good.clone(), &[("a.yml", &half), ("b.yml", &half)]);
        assert!(
            check_entry("es.service", &json(&big)).is_ok(),
            "exactly 1 MiB is allowed"
        );
        big.files.insert("c.yml".into(), "y".into());
        let e = check_entry("es.service", &json(&big)).unwrap_err();
        assert!(
            matches!(&e, EntryError::FilesTooLarge { len, .. } if *len == MAX_CONFIG_BYTES + 1),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("1 MiB") && e.to_string().contains("es.service"),
            "{e}"
        );
    }
}
