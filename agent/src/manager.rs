//! The systemd driver behind a trait. `dbus.rs` (the only file that imports zbus) drives
//! real systemd; `fake.rs` is an in-memory systemd for fast tests. Both pass the
//! conformance suite in `conformance.rs`, so the fake cannot drift from the real thing.
//!
//! Names reaching this trait are already [`UnitName`]s (validated); file contents are
//! size-checked by the caller. Implementations still build every path from the name only.

use std::future::Future;

use esfleet_core::UnitName;
use tokio::sync::mpsc;

/// The drop-in every esfleet unit gets (`<unit>.d/<DROPIN_NAME>`).
pub const DROPIN_NAME: &str = "50-esfleet.conf";

/// A unit's live state, as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: UnitName,
    /// LoadState: `loaded`, `not-found`, `error`, `masked`, ...
    pub load: String,
    /// ActiveState: `active`, `inactive`, `failed`, `activating`, `deactivating`, `reloading`.
    pub active: String,
    /// SubState: `running`, `dead`, `exited`, `failed`, `auto-restart`, ...
    pub sub: String,
    /// When the unit last changed its active state (`StateChangeTimestamp`, µs since epoch).
    pub since_usec: u64,
    /// `NRestarts` (services; 0 otherwise).
    pub n_restarts: u32,
    /// `MainPID` (services; 0 otherwise).
    pub main_pid: u32,
}

/// How a job ended (the `result` of systemd's `JobRemoved` signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    Canceled,
    Timeout,
    Failed,
    Dependency,
    Skipped,
}

impl JobOutcome {
    pub fn from_systemd(result: &str) -> JobOutcome {
        match result {
            "done" => JobOutcome::Done,
            "canceled" => JobOutcome::Canceled,
            "timeout" => JobOutcome::Timeout,
            "dependency" => JobOutcome::Dependency,
            "skipped" => JobOutcome::Skipped,
            _ => JobOutcome::Failed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("systemd D-Bus call {call} for {unit} failed: {message}")]
    Call {
        call: &'static str,
        unit: String,
        message: String,
    },
    /// systemd does not know the unit (D-Bus error `org.freedesktop.systemd1.NoSuchUnit`:
    /// "Unit X not found." on start, "Unit X not loaded." on stop of an inactive unknown
    /// unit, "Unit file X does not exist." on enable/disable). Kept apart from [`ManagerError::Call`] so a caller can treat "stop a unit that
    /// is not there" as done.
    #[error("systemd D-Bus call {call} for {unit}: {message}")]
    NoSuchUnit {
        call: &'static str,
        unit: String,
        message: String,
    },
    #[error("cannot connect to systemd over D-Bus: {0}")]
    Connect(String),
    #[error("unit file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("job for {unit} did not finish within {secs} s")]
    JobTimeout { unit: String, secs: u64 },
    /// The host already has a unit of this name that esfleet did not write (in systemd's
    /// other unit directories, generated, or an admin's file in esfleet's own directory).
    /// esfleet's file would shadow it, and starting, stopping or destroying the esfleet
    /// unit would act on the host's service (`ssh.service`, `systemd-journald.service`).
    #[error(
        "{unit} is already a unit on this host ({why}) that esfleet did not write; esfleet will not replace \
         or shadow it: give the esfleet unit another name"
    )]
    Foreign { unit: String, why: String },
}

pub type Result<T> = std::result::Result<T, ManagerError>;

/// Everything the agent asks of systemd.
pub trait UnitManager: Send + Sync + 'static {
    /// Writes the unit file and its drop-in (atomically: temp file + rename). Returns true
    /// when either file changed on disk (then the caller must `reload` before acting).
    /// Refuses ([`ManagerError::Foreign`]) a name systemd already knows from anywhere but
    /// a file this manager wrote.
    fn install(&self, name: &UnitName, text: &str, dropin: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Removes the unit file and its drop-in directory. Returns true when anything was removed.
    /// Only a unit carrying our drop-in is ours: a same-named unit file without it (an
    /// admin's) is left alone and the call returns false. Disable the unit first: this does
    /// not touch `*.wants/` links.
    fn uninstall(&self, name: &UnitName) -> impl Future<Output = Result<bool>> + Send;

    /// Units whose files this manager wrote (found on disk, marked by the drop-in), so a
    /// restarted agent knows what it owns.
    fn installed(&self) -> impl Future<Output = Result<Vec<UnitName>>> + Send;

    /// systemd's `Reload()`: re-read unit files.
    fn reload(&self) -> impl Future<Output = Result<()>> + Send;

    /// `StartUnit(name, "replace")`, waiting for its `JobRemoved`.
    fn start(&self, name: &UnitName) -> impl Future<Output = Result<JobOutcome>> + Send;
    /// `StopUnit(name, "replace")`, waiting for its `JobRemoved`.
    fn stop(&self, name: &UnitName) -> impl Future<Output = Result<JobOutcome>> + Send;
    /// `RestartUnit(name, "replace")`, waiting for its `JobRemoved`.
    fn restart(&self, name: &UnitName) -> impl Future<Output = Result<JobOutcome>> + Send;

    /// `EnableUnitFiles([name], runtime=true, force=true)`.
    fn enable(&self, name: &UnitName) -> impl Future<Output = Result<()>> + Send;
    /// `DisableUnitFiles([name], runtime=true)`.
    fn disable(&self, name: &UnitName) -> impl Future<Output = Result<()>> + Send;
    /// `ResetFailedUnit(name)`; not an error when the unit is not failed or not loaded.
    fn reset_failed(&self, name: &UnitName) -> impl Future<Output = Result<()>> + Send;

    /// The live state of these units in one batched call (`ListUnitsByNames`), plus the
    /// timestamps and restart counts. A unit systemd does not know is reported with
    /// load `not-found`, active `inactive`, sub `dead`.
    fn states(&self, names: &[UnitName]) -> impl Future<Output = Result<Vec<UnitStatus>>> + Send;

    /// A stream of "this unit may have changed" notices (from `Subscribe()`,
    /// `PropertiesChanged`, `JobRemoved`, `UnitNew`/`UnitRemoved`). Hints only: the caller
    /// re-reads the state with [`UnitManager::states`].
    fn changes(&self) -> impl Future<Output = Result<mpsc::Receiver<UnitName>>> + Send;
}
