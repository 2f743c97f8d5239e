//! Runs the pure [`esfleet_core::diff`] against systemd: gathers the actual state (the
//! agent's memory of what it wrote and started, plus systemd's live states), executes the
//! tasks in order through the [`UnitManager`] (config files through the [`ConfigRoot`],
//! which is not systemd's business), and updates that memory. Also the fencer: the one
//! other place that stops units.
//!
//! One gate serialises every systemd action of the reconciler and the fencer, and the
//! reconciler checks the fenced flag under it before each action, so once the fencer has
//! run nothing starts a unit until the session registers again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use esfleet_core::diff::{diff, fence_stops, files_hash, Actual, Installed, Task};
use esfleet_core::model::ScheduleEntry;
use esfleet_core::options::Fence;
use esfleet_core::UnitName;

use crate::configfiles::{ConfigRoot, FilesError};
use crate::manager::{JobOutcome, ManagerError, UnitManager, UnitStatus};
use crate::session::Fencer;

/// What the agent remembers of the host (lost on restart, rebuilt from `installed()`).
#[derive(Debug, Default)]
pub struct Local {
    /// Units whose files the agent wrote, and what it wrote.
    pub installed: BTreeMap<UnitName, Installed>,
    /// The placement generation of the files written.
    pub generation: BTreeMap<UnitName, u64>,
    /// Units started for their current files and not stopped by the agent since.
    pub started: BTreeSet<UnitName>,
    /// Units with a config directory: the `files_hash` written, `None` when found on disk.
    pub files: BTreeMap<UnitName, Option<String>>,
    /// The valid schedule entries of the last pass (the fencer's list).
    pub desired: BTreeMap<UnitName, ScheduleEntry>,
    /// Set by the fencer; cleared when the session registers again.
    pub fenced: bool,
    /// `Fence=stop` units not in `desired` that must be fenced too: at first those of the
    /// previous agent process's fence list (a restarted agent cut off from the cluster has
    /// no `desired` yet, and its fence clock goes on from that process's); then those that
    /// left the schedule while still installed (their stop may not have run yet).
    pub leftover: BTreeSet<UnitName>,
    /// Where the fence list is kept for a restarted agent, and what was last written there.
    fence_file: Option<(std::path::PathBuf, Option<BTreeSet<UnitName>>)>,
    /// `installed()` has been read since the agent started.
    adopted: bool,
}

/// The systemd side of the agent, shared by the reconciler, the fencer and the shutdown.
pub struct Shared<M> {
    pub manager: M,
    config: ConfigRoot,
    gate: tokio::sync::Mutex<()>,
    local: Mutex<Local>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Manager(#[from] ManagerError),
    #[error("{0}")]
    Files(#[from] FilesError),
    #[error("the agent is fenced; units start again once it has registered")]
    Fenced,
    #[error("{0} unit(s) could not be reconciled")]
    Units(usize),
}

impl<M: UnitManager> Shared<M> {
    /// `config`: where units' config files go.
    pub fn new(manager: M, config: ConfigRoot) -> Arc<Shared<M>> {
        Arc::new(Shared {
            manager,
            config,
            gate: tokio::sync::Mutex::new(()),
            local: Mutex::new(Local::default()),
        })
    }

    /// Where units' config files go.
    pub fn config_root(&self) -> &ConfigRoot {
        &self.config
    }

    pub fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps this machine's `Fence=stop` units in `path` (under `/run`: it outlives an agent
    /// restart, not a reboot), and takes over the list a previous agent process left there.
    /// A line that is not a valid unit name is skipped, with a warning.
    pub fn keep_fence_list(&self, path: std::path::PathBuf) {
        let leftover: BTreeSet<UnitName> = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| match UnitName::new(l.trim()) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), line = l, error = %e, "skipping a bad line of the fence list");
                        None
                    }
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the previous agent's fence list");
                BTreeSet::new()
            }
        };
        if !leftover.is_empty() {
            tracing::info!(
                units = leftover.len(),
                "a previous agent process left Fence=stop units; they are fenced too until the schedule is read"
            );
        }
        let mut l = self.local();
        l.leftover = leftover;
        l.fence_file = Some((path, None));
    }

    /// Sets `desired` and, under the same lock, the fence list: the `Fence=stop` units in
    /// `desired`, and those of the last list (or the previous process's) that left the
    /// schedule but are still installed (their stop may not have run yet). Writes the list
    /// to the fence file when it changed.
    fn set_desired(&self, desired: &BTreeMap<UnitName, ScheduleEntry>) {
        let (path, stop) = {
            let mut l = self.local();
            let l = &mut *l;
            // The schedule is known now: what stays of the last fence list is what left the
            // schedule while still installed, fenced too until stopped and uninstalled.
            let still: BTreeSet<UnitName> = fence_list(&l.desired, &l.leftover)
                .filter(|n| !desired.contains_key(*n) && l.installed.contains_key(*n))
                .cloned()
                .collect();
            l.desired = desired.clone();
            l.leftover = still;
            let stop: BTreeSet<UnitName> = fence_list(&l.desired, &l.leftover).cloned().collect();
            match &l.fence_file {
                Some((_, Some(written))) if *written == stop => return,
                Some((path, _)) => (path.clone(), stop),
                None => return,
            }
        };
        let text: String = stop.iter().map(|n| format!("{n}\n")).collect();
        match crate::state::replace(&path, &text) {
            Ok(()) => self.local().fence_file = Some((path, Some(stop))),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the fence list for a restarted agent")
            }
        }
    }

    /// Ends the fenced period (the session registered again): units may start.
    pub fn unfence(&self) {
        self.local().fenced = false;
    }

    /// One pass: brings systemd to `desired`. Per-unit failures go to `errors` (and clear
    /// there when a later action on the unit succeeds); the pass carries on with the other
    /// units and reports [`ReconcileError::Units`] so the caller backs off and retries.
    pub async fn reconcile(
        &self,
        desired: &BTreeMap<UnitName, ScheduleEntry>,
        errors: &mut BTreeMap<UnitName, String>,
    ) -> Result<usize, ReconcileError> {
        errors.retain(|u, _| desired.contains_key(u));
        if !self.local().adopted {
            // After a restart: the files on disk marked as ours, content unknown.
            let found = self.manager.installed().await?;
            // A config root that cannot be read must not hold the other units back: the
            // wanted units' files are compared and rewritten anyway; only left-over
            // directories of units gone while the agent was down stay behind.
            let config = self.config.found_async().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot list the config root; left-over config directories stay");
                Vec::new()
            });
            let mut l = self.local();
            for name in found {
                l.installed.entry(name).or_insert(Installed {
                    hash: None,
                    dropin: String::new(),
                    enabled: true,
                });
            }
            for name in config {
                l.files.entry(name).or_insert(None);
            }
            l.adopted = true;
        }
        // `desired` and the fence list change under one lock: the fencer reads both at once.
        self.set_desired(desired);
        self.adopt(desired).await?;

        let (actual, names) = {
            let l = self.local();
            let names: BTreeSet<UnitName> = desired.keys().chain(l.installed.keys()).cloned().collect();
            let actual = Actual {
                installed: l.installed.clone(),
                active: BTreeMap::new(),
                started: l.started.clone(),
                files: l.files.clone(),
            };
            (actual, names.into_iter().collect::<Vec<_>>())
        };
        let mut actual = actual;
        actual.active = self
            .manager
            .states(&names)
            .await?
            .into_iter()
            .map(|s| (s.name, s.active))
            .collect();
        let tasks = diff(desired, &actual);
        let count = tasks.len();
        let mut failed: BTreeSet<UnitName> = BTreeSet::new();
        // Whether an install or uninstall ran: when every one was skipped (their unit
        // failed an earlier task, e.g. its config files), systemd has nothing to re-read.
        let mut unit_files_touched = false;
        for task in tasks {
            if task.unit().is_some_and(|u| failed.contains(u)) {
                continue;
            }
            match task {
                Task::Install { .. } | Task::Uninstall(_) => unit_files_touched = true,
                Task::Reload if !unit_files_touched => continue,
                _ => {}
            }
            let _gate = self.gate.lock().await;
            if self.local().fenced {
                return Err(ReconcileError::Fenced);
            }
            tracing::debug!(?task, "reconcile");
            match self.run(&task, desired).await {
                Ok(()) => {
                    if let Some(u) = task.unit() {
                        errors.remove(u);
                    }
                }
                Err(e) => match task.unit() {
                    None => return Err(e),
                    Some(u) => {
                        tracing::warn!(unit = %u, error = %e, "cannot reconcile unit");
                        errors.insert(u.clone(), e.to_string());
                        failed.insert(u.clone());
                    }
                },
            }
        }
        if failed.is_empty() {
            Ok(count)
        } else {
            Err(ReconcileError::Units(failed.len()))
        }
    }

    /// Learns what the files of units found on disk hold, by writing what the entry says:
    /// unchanged means they were already right (nothing to restart); changed means the
    /// diff must treat them as new files (reload, restart).
    async fn adopt(&self, desired: &BTreeMap<UnitName, ScheduleEntry>) -> Result<(), ReconcileError> {
        let unknown: Vec<UnitName> = {
            let l = self.local();
            l.installed
                .iter()
                .filter(|(n, i)| i.hash.is_none() && desired.contains_key(*n))
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in unknown {
            let entry = &desired[&name];
            let dropin = esfleet_core::diff::dropin(entry);
            let _gate = self.gate.lock().await;
            if self.local().fenced {
                return Err(ReconcileError::Fenced);
            }
            let changed = self.manager.install(&name, &entry.text, &dropin).await?;
            let mut l = self.local();
            let inst = l.installed.entry(name.clone()).or_default();
            if changed {
                inst.hash = Some(String::new());
            } else {
                inst.hash = Some(entry.hash.clone());
                inst.dropin = dropin;
                l.generation.insert(name, entry.generation);
            }
        }
        Ok(())
    }

    async fn run(&self, task: &Task, desired: &BTreeMap<UnitName, ScheduleEntry>) -> Result<(), ReconcileError> {
        let m = &self.manager;
        match task {
            Task::WriteFiles { unit, files } => {
                if self.config.write_async(unit, files).await? {
                    tracing::info!(unit = %unit, dir = %self.config.dir(unit)?.display(), "config files written");
                }
                self.local().files.insert(unit.clone(), Some(files_hash(files)));
            }
            Task::RemoveFiles(unit) => {
                if self.config.remove_async(unit).await? {
                    tracing::info!(unit = %unit, "config directory removed");
                }
                self.local().files.remove(unit);
            }
            Task::Install { unit, text, dropin } => {
                m.install(unit, text, dropin).await?;
                let entry = &desired[unit];
                let mut l = self.local();
                let enabled = l.installed.get(unit).is_some_and(|i| i.enabled);
                l.installed.insert(
                    unit.clone(),
                    Installed {
                        hash: Some(entry.hash.clone()),
                        dropin: dropin.clone(),
                        enabled,
                    },
                );
                l.generation.insert(unit.clone(), entry.generation);
                l.started.remove(unit);
            }
            Task::Uninstall(unit) => {
                m.uninstall(unit).await?;
                let mut l = self.local();
                l.installed.remove(unit);
                l.generation.remove(unit);
                l.started.remove(unit);
            }
            Task::Reload => m.reload().await?,
            Task::Enable(unit) => {
                m.enable(unit).await?;
                if let Some(i) = self.local().installed.get_mut(unit) {
                    i.enabled = true;
                }
            }
            Task::Disable(unit) => {
                m.disable(unit).await?;
                if let Some(i) = self.local().installed.get_mut(unit) {
                    i.enabled = false;
                }
            }
            Task::ResetFailed(unit) => m.reset_failed(unit).await?,
            Task::Stop(unit) => {
                stop(m, unit).await?;
                self.local().started.remove(unit);
            }
            Task::Start(unit) | Task::Restart(unit) => {
                let outcome = if matches!(task, Task::Start(_)) {
                    m.start(unit).await?
                } else {
                    m.restart(unit).await?
                };
                // Started either way: a failed start shows as a failed unit, and systemd's
                // Restart= (not the agent) decides about trying again.
                self.local().started.insert(unit.clone());
                if outcome != JobOutcome::Done {
                    tracing::warn!(unit = %unit, ?outcome, "start job did not succeed");
                }
            }
        }
        Ok(())
    }

    /// Live states of `names` (one batched call).
    pub async fn states(&self, names: &[UnitName]) -> Result<Vec<UnitStatus>, ManagerError> {
        self.manager.states(names).await
    }

    /// What was written for each unit: (hash, generation).
    pub fn written(&self, unit: &UnitName) -> Option<(String, u64)> {
        let l = self.local();
        let hash = l.installed.get(unit)?.hash.clone()?;
        Some((hash, l.generation.get(unit).copied().unwrap_or(0)))
    }

    /// Stops every unit of `desired` (the `--stop-units-on-exit` shutdown). Fences first,
    /// so no reconcile pass starts anything afterwards.
    pub async fn stop_all(&self) {
        let _gate = self.gate.lock().await;
        let desired = {
            let mut l = self.local();
            l.fenced = true;
            l.desired.clone()
        };
        for name in desired.keys().filter(|n| !n.is_template()) {
            match stop(&self.manager, name).await {
                Ok(()) => tracing::info!(unit = %name, "stopped on exit"),
                Err(e) => tracing::error!(unit = %name, error = %e, "cannot stop unit on exit"),
            }
            self.local().started.remove(name);
        }
    }
}

/// The fence list: the `Fence=stop` units of `desired` (templates are never run) and the
/// leftovers.
fn fence_list<'a>(
    desired: &'a BTreeMap<UnitName, ScheduleEntry>,
    leftover: &'a BTreeSet<UnitName>,
) -> impl Iterator<Item = &'a UnitName> {
    desired
        .iter()
        .filter(|(n, e)| e.fence == Fence::Stop && !n.is_template())
        .map(|(n, _)| n)
        .chain(leftover)
}

/// Stop, where "systemd does not know the unit" means it is stopped already.
async fn stop<M: UnitManager>(m: &M, unit: &UnitName) -> Result<(), ManagerError> {
    match m.stop(unit).await {
        Ok(_) | Err(ManagerError::NoSuchUnit { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// How long the fencer waits for any one systemd call (the stop jobs run concurrently).
const FENCE_CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The fencer of DESIGN.md decision 5: stops every running unit whose entry says
/// `Fence=stop`, keeps `Fence=keep` ones, and says so.
pub struct UnitFencer<M>(pub Arc<Shared<M>>);

impl<M: UnitManager> Fencer for UnitFencer<M> {
    async fn fence(&self, why: &str) {
        let shared = &self.0;
        // Flag first: the reconciler checks it before every task, so nothing new starts.
        let (desired, leftover) = {
            let mut l = shared.local();
            l.fenced = true;
            (l.desired.clone(), l.leftover.clone())
        };
        // A reconcile task may hold the gate while systemd works through a slow job (up to
        // the job timeout): the fence must not wait behind it. A StopUnit in "replace" mode
        // supersedes a pending start, so stopping without the gate is safe.
        let _gate = tokio::time::timeout(FENCE_CALL_LIMIT, shared.gate.lock()).await.ok();
        let names: Vec<UnitName> = desired.keys().chain(&leftover).cloned().collect();
        let live = match tokio::time::timeout(FENCE_CALL_LIMIT, shared.manager.states(&names)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("systemd did not answer within {FENCE_CALL_LIMIT:?}")),
        };
        // The previous process's units not (yet) in this one's schedule count as Fence=stop,
        // if they are units the agent installed (the list is only a file under /run).
        let leftover: Vec<UnitName> = leftover
            .into_iter()
            .filter(|n| !desired.contains_key(n) && !n.is_template())
            .collect();
        let ours = if leftover.is_empty() {
            None // nothing to check: no systemd call on the fence's path
        } else {
            match tokio::time::timeout(FENCE_CALL_LIMIT, shared.manager.installed()).await {
                Ok(Ok(ours)) => Some(ours.into_iter().collect::<BTreeSet<_>>()),
                _ => None,
            }
        };
        let leftover = leftover
            .into_iter()
            .filter(|n| ours.as_ref().is_none_or(|o| o.contains(n)));
        let stops: Vec<UnitName> = match live {
            Ok(live) => {
                let active: BTreeMap<UnitName, String> = live.into_iter().map(|s| (s.name, s.active)).collect();
                let mut stops = fence_stops(&desired, &active);
                stops.extend(leftover.filter(|n| active.get(n).is_some_and(|a| esfleet_core::diff::is_up(a))));
                stops
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read unit states while fencing; stopping every Fence=stop unit");
                desired
                    .iter()
                    .filter(|(n, e)| e.fence == Fence::Stop && !n.is_template())
                    .map(|(n, _)| n.clone())
                    .chain(leftover)
                    .collect()
            }
        };
        let kept: Vec<String> = desired
            .iter()
            .filter(|(_, e)| e.fence == Fence::Keep)
            .map(|(n, _)| n.to_string())
            .collect();
        let names: Vec<String> = stops.iter().map(ToString::to_string).collect();
        tracing::warn!(
            stopping = ?names,
            keeping = ?kept,
            "fencing: {why}. Stopping the Fence=stop units so they never run twice; Fence=keep units stay up. \
             They start again once the agent has registered"
        );
        // All at once, each bounded: one stuck job must not keep the others running.
        let results = futures::future::join_all(
            stops
                .iter()
                .map(|unit| tokio::time::timeout(FENCE_CALL_LIMIT, stop(&shared.manager, unit))),
        )
        .await;
        for (unit, result) in stops.iter().zip(results) {
            match result {
                Ok(Ok(())) => tracing::warn!(unit = %unit, "fenced: stopped"),
                Ok(Err(e)) => tracing::error!(unit = %unit, error = %e, "fencing: cannot stop unit"),
                Err(_) => tracing::error!(
                    unit = %unit,
                    "fencing: the stop job did not finish within {FENCE_CALL_LIMIT:?}; it stays queued in systemd"
                ),
            }
            shared.local().started.remove(unit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeUnitManager;

    #[test]
    fn a_unit_that_left_the_schedule_stays_on_the_fence_list_while_installed() {
        let shared = Shared::new(
            FakeUnitManager::new(),
            ConfigRoot::new(std::env::temp_dir().join("esfleet-none")),
        );
        let gone = UnitName::new("gone.service").unwrap();
        {
            let mut l = shared.local();
            l.installed.insert(
                gone.clone(),
                Installed {
                    hash: None,
                    dropin: String::new(),
                    enabled: false,
                },
            );
            l.desired.insert(
                gone.clone(),
                ScheduleEntry {
                    unit: gone.clone(),
                    text: String::new(),
                    hash: String::new(),
                    desired: esfleet_core::model::DesiredState::Launched,
                    generation: 1,
                    fence: Fence::Stop,
                    enable: false,
                    env: BTreeMap::new(),
                    files: BTreeMap::new(),
                },
            );
        }
        // Unscheduled, but its stop has not run (or failed): still fenced.
        shared.set_desired(&BTreeMap::new());
        assert_eq!(shared.local().leftover, BTreeSet::from([gone.clone()]));
        let l = shared.local();
        assert!(fence_list(&l.desired, &l.leftover).any(|n| *n == gone));
        drop(l);
        // Stopped and uninstalled: off the list.
        shared.local().installed.remove(&gone);
        shared.set_desired(&BTreeMap::new());
        assert!(shared.local().leftover.is_empty());
        let l = shared.local();
        assert_eq!(fence_list(&l.desired, &l.leftover).count(), 0);
    }
}
