//! An in-memory systemd behind [`UnitManager`], for fast, deterministic tests of the agent.
//!
//! It keeps the parts of systemd's behaviour the agent can observe through the trait, and
//! the conformance suite (`conformance.rs`) holds it to the real thing:
//! - unit files live "on disk" (in memory); systemd's *loaded* definition is a separate
//!   copy. A changed file takes effect only after [`UnitManager::reload`]: a start before
//!   that runs the old definition (systemd warns and sets `NeedDaemonReload`, see
//!   [`FakeUnitManager::needs_reload`]). A brand-new file is picked up without a reload,
//!   like systemd's unit-path cache does for units it has never loaded.
//! - like systemd's garbage collector, an idle unit (inactive, not failed) is unloaded at
//!   once: its timestamps read 0 and its next start reads the file afresh, reload or not.
//!   Only a running or failed unit keeps running its old definition until a reload.
//! - `Type=simple`/`exec`/`notify`/`forking` services go active/running with a fake PID;
//!   `Type=oneshot` runs to completion (inactive/dead, or active/exited with
//!   `RemainAfterExit=yes`). An `ExecStart=` whose program is `/bin/false` (or
//!   `/usr/bin/false`) fails: a oneshot start returns [`JobOutcome::Failed`], a simple one
//!   returns `Done` and the unit is failed right after, as in systemd.
//! - starting or stopping a unit systemd cannot find gives [`ManagerError::NoSuchUnit`].
//! - instances (`foo@bar.service`) load their template's file (`foo@.service`).
//!
//! Scripted trouble for tests: [`FakeUnitManager::fail_next`], [`FakeUnitManager::crash`]
//! (honours `Restart=` by restarting at once and counting `NRestarts`),
//! [`FakeUnitManager::set_start_result`]. The fake is `Clone` (one shared state), so a test
//! keeps a handle and pokes it while the agent owns another.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use esfleet_core::UnitName;
use tokio::sync::mpsc;

use crate::manager::{JobOutcome, ManagerError, Result, UnitManager, UnitStatus};

/// How many change notices a subscriber may have pending before newer ones are dropped
/// (they are hints; the caller re-reads the state anyway).
const NOTICE_BUFFER: usize = 1024;

/// The trait's operations, for [`FakeUnitManager::fail_next`] and the call log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Install,
    Uninstall,
    Installed,
    Reload,
    Start,
    Stop,
    Restart,
    Enable,
    Disable,
    ResetFailed,
    States,
    Changes,
}

impl Op {
    /// The D-Bus method (or file operation) this stands for, used in error messages.
    fn call(self) -> &'static str {
        match self {
            Op::Install => "install",
            Op::Uninstall => "uninstall",
            Op::Installed => "installed",
            Op::Reload => "Reload",
            Op::Start => "StartUnit",
            Op::Stop => "StopUnit",
            Op::Restart => "RestartUnit",
            Op::Enable => "EnableUnitFiles",
            Op::Disable => "DisableUnitFiles",
            Op::ResetFailed => "ResetFailedUnit",
            Op::States => "ListUnitsByNames",
            Op::Changes => "Subscribe",
        }
    }
}

/// One call the fake received, in order (see [`FakeUnitManager::calls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub unit: Option<UnitName>,
}

/// A unit file and its drop-in, as written by `install`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    text: String,
    /// `None` for a unit file esfleet did not write.
    dropin: Option<String>,
}

/// The parts of a unit definition the fake acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Def {
    oneshot: bool,
    remain_after_exit: bool,
    exec_fails: bool,
    restart_on_crash: bool,
    installable: bool,
}

impl Def {
    /// Reads the few keys the fake models from the unit text then its drop-in (a later
    /// assignment wins, an empty `ExecStart=` resets the list, as in systemd).
    fn parse(files: &Files) -> Def {
        let mut section = String::new();
        let mut ty = String::new();
        let mut exec: Vec<String> = Vec::new();
        let mut restart = String::new();
        let mut remain = false;
        let mut installable = false;
        let dropin = files.dropin.as_deref().unwrap_or("");
        for line in files.text.lines().chain(dropin.lines()) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                section = line[1..line.len() - 1].to_string();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            match (section.as_str(), key) {
                ("Service", "Type") => ty = value.to_string(),
                ("Service", "ExecStart") if value.is_empty() => exec.clear(),
                ("Service", "ExecStart") => exec.push(value.to_string()),
                ("Service", "Restart") => restart = value.to_string(),
                ("Service", "RemainAfterExit") => remain = matches!(value, "yes" | "true" | "1" | "on"),
                ("Install", "WantedBy" | "RequiredBy" | "Alias" | "Also") if !value.is_empty() => installable = true,
                _ => {}
            }
        }
        Def {
            oneshot: ty == "oneshot",
            remain_after_exit: remain,
            exec_fails: exec.iter().any(|cmd| command_fails(cmd)),
            // A SIGKILL is an "unclean signal": every Restart= value but `no` and
            // `on-success` restarts after it.
            restart_on_crash: matches!(restart.as_str(), "always" | "on-failure" | "on-abnormal" | "on-abort"),
            installable,
        }
    }
}

/// True when an `ExecStart=` command line runs `false` and does not ignore its failure
/// (`-` prefix).
fn command_fails(cmd: &str) -> bool {
    let prefixes: String = cmd
        .chars()
        .take_while(|c| matches!(c, '-' | '@' | ':' | '+' | '!'))
        .collect();
    if prefixes.contains('-') {
        return false;
    }
    let program = cmd[prefixes.len()..].split_whitespace().next().unwrap_or("");
    matches!(program, "/bin/false" | "/usr/bin/false")
}

/// A unit systemd has loaded, and its runtime state.
#[derive(Debug, Clone)]
struct Loaded {
    /// The definition in effect (as of the last load or reload).
    files: Option<Files>,
    def: Def,
    active: &'static str,
    sub: &'static str,
    since_usec: u64,
    n_restarts: u32,
    main_pid: u32,
}

#[derive(Default)]
struct State {
    /// What is on "disk", by file name (a template's file is under the template's name).
    disk: BTreeMap<UnitName, Files>,
    /// What systemd has loaded.
    loaded: BTreeMap<UnitName, Loaded>,
    /// Units of the host's own, in systemd's other directories.
    host: BTreeMap<UnitName, String>,
    enabled: BTreeSet<UnitName>,
    failures: HashMap<Op, Vec<String>>,
    start_results: HashMap<UnitName, JobOutcome>,
    subscribers: Vec<mpsc::Sender<UnitName>>,
    calls: Vec<Call>,
    last_usec: u64,
    next_pid: u32,
}

impl State {
    fn now_usec(&mut self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        // Strictly increasing, so a test can tell two transitions apart.
        self.last_usec = wall.max(self.last_usec + 1);
        self.last_usec
    }

    fn pid(&mut self) -> u32 {
        self.next_pid += 1;
        1000 + self.next_pid
    }

    fn notify(&mut self, name: &UnitName) {
        self.subscribers.retain(|tx| match tx.try_send(name.clone()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn enter(&mut self, op: Op, unit: Option<&UnitName>) -> Result<()> {
        self.calls.push(Call {
            op,
            unit: unit.cloned(),
        });
        if let Some(queue) = self.failures.get_mut(&op) {
            if !queue.is_empty() {
                let message = queue.remove(0);
                return Err(ManagerError::Call {
                    call: op.call(),
                    unit: unit.map(|u| u.to_string()).unwrap_or_default(),
                    message,
                });
            }
        }
        Ok(())
    }

    /// The file systemd would load for this unit: its own, or its template's.
    fn file_for(&self, name: &UnitName) -> Option<&Files> {
        self.disk
            .get(name)
            .or_else(|| name.template().and_then(|t| self.disk.get(&t)))
    }

    /// systemd's `manager_load_unit`: a unit it already has keeps its loaded definition; a
    /// unit it has not loaded (or loaded as not-found) is read from disk now. Returns false
    /// when there is no file.
    fn load(&mut self, name: &UnitName) -> bool {
        if let Some(unit) = self.loaded.get(name) {
            if unit.files.is_some() {
                return true;
            }
        }
        let Some(files) = self.file_for(name).cloned() else {
            return false;
        };
        let def = Def::parse(&files);
        let unit = self.loaded.entry(name.clone()).or_insert(Loaded {
            files: None,
            def: Def::default(),
            active: "inactive",
            sub: "dead",
            // A freshly loaded unit has never changed state: systemd reports 0.
            since_usec: 0,
            n_restarts: 0,
            main_pid: 0,
        });
        unit.files = Some(files);
        unit.def = def;
        true
    }

    fn set(&mut self, name: &UnitName, active: &'static str, sub: &'static str, main_pid: u32) {
        if active == "inactive" {
            // systemd garbage-collects an idle unit nothing refers to: it forgets the loaded
            // definition and its timestamps, and the next use reads the file afresh.
            self.loaded.remove(name);
            self.notify(name);
            return;
        }
        let now = self.now_usec();
        if let Some(unit) = self.loaded.get_mut(name) {
            if unit.active != active {
                unit.since_usec = now;
            }
            unit.active = active;
            unit.sub = sub;
            unit.main_pid = main_pid;
        }
        self.notify(name);
    }

    fn no_such_unit(op: Op, name: &UnitName, what: &str) -> ManagerError {
        ManagerError::NoSuchUnit {
            call: op.call(),
            unit: name.to_string(),
            message: format!("Unit {name} {what}."),
        }
    }

    fn no_file(op: Op, name: &UnitName) -> ManagerError {
        ManagerError::NoSuchUnit {
            call: op.call(),
            unit: name.to_string(),
            message: format!("Unit file {name} does not exist."),
        }
    }

    fn do_start(&mut self, op: Op, name: &UnitName) -> Result<JobOutcome> {
        if name.is_template() {
            return Err(ManagerError::Call {
                call: op.call(),
                unit: name.to_string(),
                message: format!("Unit {name} is a template and cannot be started; start an instance of it."),
            });
        }
        if !self.load(name) {
            return Err(Self::no_such_unit(op, name, "not found"));
        }
        if let Some(outcome) = self.start_results.get(name).copied() {
            match outcome {
                JobOutcome::Done => {}
                JobOutcome::Failed | JobOutcome::Timeout => {
                    self.set(name, "failed", "failed", 0);
                    return Ok(outcome);
                }
                JobOutcome::Dependency | JobOutcome::Skipped | JobOutcome::Canceled => {
                    self.notify(name);
                    return Ok(outcome);
                }
            }
        }
        let unit = &self.loaded[name];
        let def = unit.def.clone();
        let running = unit.active == "active";
        if running && op == Op::Start {
            return Ok(JobOutcome::Done);
        }
        if def.oneshot {
            if def.exec_fails {
                self.set(name, "failed", "failed", 0);
                return Ok(JobOutcome::Failed);
            }
            if def.remain_after_exit {
                self.set(name, "active", "exited", 0);
            } else {
                self.set(name, "inactive", "dead", 0);
            }
            return Ok(JobOutcome::Done);
        }
        if def.exec_fails {
            // A simple service is "started" once forked; it fails right after.
            self.set(name, "failed", "failed", 0);
            return Ok(JobOutcome::Done);
        }
        let pid = self.pid();
        self.set(name, "active", "running", pid);
        Ok(JobOutcome::Done)
    }

    fn do_stop(&mut self, name: &UnitName) -> Result<JobOutcome> {
        self.load(name);
        match self.loaded.get(name) {
            None => Err(Self::no_such_unit(Op::Stop, name, "not loaded")),
            Some(unit) if unit.files.is_none() && unit.active == "inactive" => {
                Err(Self::no_such_unit(Op::Stop, name, "not loaded"))
            }
            Some(unit) => {
                // Stopping a failed unit leaves it failed (systemd keeps the result until
                // ResetFailedUnit); anything else ends inactive/dead.
                if unit.active != "failed" {
                    self.set(name, "inactive", "dead", 0);
                }
                Ok(JobOutcome::Done)
            }
        }
    }

    fn status(&mut self, name: &UnitName) -> UnitStatus {
        self.load(name);
        if self.host.contains_key(name) && !self.disk.contains_key(name) {
            // The host's own service, running as it does there.
            return UnitStatus {
                name: name.clone(),
                load: "loaded".to_string(),
                active: "active".to_string(),
                sub: "running".to_string(),
                since_usec: 1,
                n_restarts: 0,
                main_pid: 1,
            };
        }
        match self.loaded.get(name) {
            Some(unit) => UnitStatus {
                name: name.clone(),
                load: if unit.files.is_some() { "loaded" } else { "not-found" }.to_string(),
                active: unit.active.to_string(),
                sub: unit.sub.to_string(),
                since_usec: unit.since_usec,
                n_restarts: unit.n_restarts,
                main_pid: unit.main_pid,
            },
            None => UnitStatus {
                name: name.clone(),
                load: "not-found".to_string(),
                active: "inactive".to_string(),
                sub: "dead".to_string(),
                since_usec: 0,
                n_restarts: 0,
                main_pid: 0,
            },
        }
    }
}

/// An in-memory systemd. Cheap to clone: clones share one state.
#[derive(Clone, Default)]
pub struct FakeUnitManager {
    state: Arc<Mutex<State>>,
}

impl FakeUnitManager {
    pub fn new() -> FakeUnitManager {
        FakeUnitManager::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not turn every later call into a second panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `op` call fails with a [`ManagerError::Call`] carrying `message`. Calls
    /// queue up: two `fail_next(Op::Start, ..)` fail the next two starts.
    pub fn fail_next(&self, op: Op, message: &str) {
        self.lock().failures.entry(op).or_default().push(message.to_string());
    }

    /// The unit's main process dies of SIGKILL. With `Restart=` (always, on-failure,
    /// on-abnormal, on-abort) systemd starts it again at once (`NRestarts` + 1, a new PID);
    /// otherwise it ends failed/failed. Returns false when the unit was not running.
    pub fn crash(&self, name: &UnitName) -> bool {
        let mut st = self.lock();
        let Some(unit) = st.loaded.get(name) else {
            return false;
        };
        if unit.main_pid == 0 || unit.active != "active" {
            return false;
        }
        if unit.def.restart_on_crash {
            let pid = st.pid();
            let now = st.now_usec();
            if let Some(unit) = st.loaded.get_mut(name) {
                unit.n_restarts += 1;
                unit.main_pid = pid;
                // systemd passes through auto-restart → activating → active.
                unit.since_usec = now;
            }
            st.notify(name);
        } else {
            st.set(name, "failed", "failed", 0);
        }
        true
    }

    /// From now on, every start (or restart) of `name` ends with `outcome`: `Failed` and
    /// `Timeout` leave the unit failed/failed, `Dependency`, `Skipped` and `Canceled` leave
    /// it as it was, `Done` behaves normally.
    pub fn set_start_result(&self, name: &UnitName, outcome: JobOutcome) {
        self.lock().start_results.insert(name.clone(), outcome);
    }

    /// Forgets a [`FakeUnitManager::set_start_result`].
    pub fn clear_start_result(&self, name: &UnitName) {
        self.lock().start_results.remove(name);
    }

    /// A unit file that esfleet did not write (no drop-in), as an admin would leave one.
    pub fn add_foreign_unit(&self, name: &UnitName, text: &str) {
        self.lock().disk.insert(
            name.clone(),
            Files {
                text: text.to_string(),
                dropin: None,
            },
        );
    }

    /// A unit the host has outside esfleet's directory (`/lib/systemd/system/<name>`).
    pub fn add_host_unit(&self, name: &UnitName, text: &str) {
        self.lock().host.insert(name.clone(), text.to_string());
    }

    /// Removes what [`FakeUnitManager::add_foreign_unit`] added.
    pub fn remove_foreign_unit(&self, name: &UnitName) {
        let mut st = self.lock();
        if st.disk.get(name).is_some_and(|f| f.dropin.is_none()) {
            st.disk.remove(name);
        }
    }

    /// The unit file and drop-in on "disk", if any (no drop-in: not written by esfleet).
    pub fn file(&self, name: &UnitName) -> Option<(String, Option<String>)> {
        self.lock().disk.get(name).map(|f| (f.text.clone(), f.dropin.clone()))
    }

    /// systemd's `NeedDaemonReload`: the file on disk differs from the loaded definition.
    pub fn needs_reload(&self, name: &UnitName) -> bool {
        let st = self.lock();
        match st.loaded.get(name) {
            Some(unit) if unit.files.is_some() => unit.files.as_ref() != st.file_for(name),
            _ => false,
        }
    }

    /// Whether `enable` linked the unit into its targets (`systemctl is-enabled`).
    pub fn is_enabled(&self, name: &UnitName) -> bool {
        self.lock().enabled.contains(name)
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many times `op` was called.
    pub fn count(&self, op: Op) -> usize {
        self.lock().calls.iter().filter(|c| c.op == op).count()
    }
}

impl UnitManager for FakeUnitManager {
    async fn install(&self, name: &UnitName, text: &str, dropin: &str) -> Result<bool> {
        let mut st = self.lock();
        st.enter(Op::Install, Some(name))?;
        if st.host.contains_key(name) {
            return Err(ManagerError::Foreign {
                unit: name.to_string(),
                why: format!("/lib/systemd/system/{name}"),
            });
        }
        if st.disk.get(name).is_some_and(|f| f.dropin.is_none()) {
            return Err(ManagerError::Foreign {
                unit: name.to_string(),
                why: "a file in the unit directory without esfleet's drop-in".to_string(),
            });
        }
        let files = Files {
            text: text.to_string(),
            dropin: Some(dropin.to_string()),
        };
        let changed = st.disk.get(name) != Some(&files);
        st.disk.insert(name.clone(), files);
        Ok(changed)
    }

    async fn uninstall(&self, name: &UnitName) -> Result<bool> {
        let mut st = self.lock();
        st.enter(Op::Uninstall, Some(name))?;
        let removed = st.disk.get(name).is_some_and(|f| f.dropin.is_some());
        if removed {
            st.disk.remove(name);
        }
        Ok(removed)
    }

    async fn installed(&self) -> Result<Vec<UnitName>> {
        let mut st = self.lock();
        st.enter(Op::Installed, None)?;
        Ok(st
            .disk
            .iter()
            .filter(|(_, f)| f.dropin.is_some())
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn reload(&self) -> Result<()> {
        let mut st = self.lock();
        st.enter(Op::Reload, None)?;
        let names: Vec<UnitName> = st.loaded.keys().cloned().collect();
        for name in names {
            let files = st.file_for(&name).cloned();
            let inactive = st.loaded.get(&name).is_some_and(|u| u.active == "inactive");
            match files {
                Some(files) => {
                    if let Some(unit) = st.loaded.get_mut(&name) {
                        unit.def = Def::parse(&files);
                        unit.files = Some(files);
                    }
                }
                // systemd drops an inactive unit whose file is gone; a running (or failed)
                // one stays, now reported as not-found.
                None if inactive => {
                    st.loaded.remove(&name);
                }
                None => {
                    if let Some(unit) = st.loaded.get_mut(&name) {
                        unit.files = None;
                    }
                }
            }
            st.notify(&name);
        }
        Ok(())
    }

    async fn start(&self, name: &UnitName) -> Result<JobOutcome> {
        let mut st = self.lock();
        st.enter(Op::Start, Some(name))?;
        st.do_start(Op::Start, name)
    }

    async fn stop(&self, name: &UnitName) -> Result<JobOutcome> {
        let mut st = self.lock();
        st.enter(Op::Stop, Some(name))?;
        st.do_stop(name)
    }

    async fn restart(&self, name: &UnitName) -> Result<JobOutcome> {
        let mut st = self.lock();
        st.enter(Op::Restart, Some(name))?;
        if !st.load(name) {
            return Err(State::no_such_unit(Op::Restart, name, "not found"));
        }
        st.do_start(Op::Restart, name)
    }

    async fn enable(&self, name: &UnitName) -> Result<()> {
        let mut st = self.lock();
        st.enter(Op::Enable, Some(name))?;
        let Some(files) = st.file_for(name) else {
            return Err(State::no_file(Op::Enable, name));
        };
        // Like systemctl: a unit without an [Install] section is left alone, no error.
        if Def::parse(files).installable {
            st.enabled.insert(name.clone());
        }
        Ok(())
    }

    async fn disable(&self, name: &UnitName) -> Result<()> {
        let mut st = self.lock();
        st.enter(Op::Disable, Some(name))?;
        if st.file_for(name).is_none() {
            return Err(State::no_file(Op::Disable, name));
        }
        st.enabled.remove(name);
        Ok(())
    }

    async fn reset_failed(&self, name: &UnitName) -> Result<()> {
        let mut st = self.lock();
        st.enter(Op::ResetFailed, Some(name))?;
        if st.loaded.get(name).is_some_and(|u| u.active == "failed") {
            st.set(name, "inactive", "dead", 0);
        }
        Ok(())
    }

    async fn states(&self, names: &[UnitName]) -> Result<Vec<UnitStatus>> {
        let mut st = self.lock();
        st.enter(Op::States, None)?;
        Ok(names.iter().map(|n| st.status(n)).collect())
    }

    async fn changes(&self) -> Result<mpsc::Receiver<UnitName>> {
        let mut st = self.lock();
        st.enter(Op::Changes, None)?;
        let (tx, rx) = mpsc::channel(NOTICE_BUFFER);
        st.subscribers.push(tx);
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> UnitName {
        UnitName::new(s).unwrap()
    }

    async fn state(m: &FakeUnitManager, u: &UnitName) -> Vec<UnitStatus> {
        m.states(std::slice::from_ref(u)).await.unwrap()
    }

    const SIMPLE: &str = "[Service]\nExecStart=/bin/sleep 1000\n";

    #[tokio::test]
    async fn a_loaded_unit_runs_its_old_definition_until_reload() {
        let m = FakeUnitManager::new();
        let u = n("a.service");
        assert!(m.install(&u, SIMPLE, "[Unit]\n").await.unwrap());
        // A brand-new file starts without a reload.
        assert_eq!(m.start(&u).await.unwrap(), JobOutcome::Done);
        // Changed to a oneshot that fails; not reloaded yet: the running unit restarts with
        // the old definition.
        let failing = "[Service]\nType=oneshot\nExecStart=/bin/false\n";
        assert!(m.install(&u, failing, "[Unit]\n").await.unwrap());
        assert!(m.needs_reload(&u));
        assert_eq!(m.restart(&u).await.unwrap(), JobOutcome::Done);
        assert_eq!(state(&m, &u).await[0].sub, "running");
        m.reload().await.unwrap();
        assert!(!m.needs_reload(&u));
        assert_eq!(m.restart(&u).await.unwrap(), JobOutcome::Failed);
        assert_eq!(state(&m, &u).await[0].active, "failed");
        // Once idle (reset), the unit is unloaded and its timestamps forgotten.
        m.reset_failed(&u).await.unwrap();
        let s = state(&m, &u).await.remove(0);
        assert_eq!(
            (s.load.as_str(), s.active.as_str(), s.since_usec),
            ("loaded", "inactive", 0)
        );
    }

    #[tokio::test]
    async fn scripted_failures() {
        let m = FakeUnitManager::new();
        let u = n("b.service");
        m.install(&u, "[Service]\nExecStart=/bin/sleep 1\nRestart=always\n", "[Unit]\n")
            .await
            .unwrap();
        m.fail_next(Op::Start, "boom");
        assert!(matches!(m.start(&u).await, Err(ManagerError::Call { message, .. }) if message == "boom"));
        assert_eq!(m.start(&u).await.unwrap(), JobOutcome::Done);
        let before = state(&m, &u).await.remove(0);
        assert!(m.crash(&u));
        let after = state(&m, &u).await.remove(0);
        assert_eq!((after.active.as_str(), after.n_restarts), ("active", 1));
        assert_ne!(after.main_pid, before.main_pid);

        m.set_start_result(&u, JobOutcome::Timeout);
        assert_eq!(m.restart(&u).await.unwrap(), JobOutcome::Timeout);
        assert_eq!(state(&m, &u).await[0].active, "failed");
        m.reset_failed(&u).await.unwrap();
        assert_eq!(state(&m, &u).await[0].active, "inactive");
        assert_eq!(m.count(Op::Start), 2);
    }

    #[tokio::test]
    async fn templates_and_missing_units() {
        let m = FakeUnitManager::new();
        let t = n("es@.service");
        m.install(&t, SIMPLE, "[Unit]\n").await.unwrap();
        assert!(m.start(&t).await.is_err());
        assert_eq!(m.start(&n("es@1.service")).await.unwrap(), JobOutcome::Done);
        assert!(matches!(
            m.start(&n("nope.service")).await,
            Err(ManagerError::NoSuchUnit { .. })
        ));
        assert!(matches!(
            m.stop(&n("nope.service")).await,
            Err(ManagerError::NoSuchUnit { .. })
        ));
        m.add_foreign_unit(&n("admin.service"), SIMPLE);
        assert_eq!(m.installed().await.unwrap(), vec![t]);
    }
}
