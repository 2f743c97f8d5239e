//! The real [`UnitManager`]: drives the host's systemd over its D-Bus API with zbus. This
//! is the only file in esfleet that imports zbus.
//!
//! Jobs: `StartUnit`/`StopUnit`/`RestartUnit` return a job path at once; the job's result
//! comes later in the `JobRemoved` signal. The signal stream is opened *before* the call
//! (filtered by the bus to this unit's jobs), so a job that ends before the method reply is
//! read cannot be missed, and the wait is bounded ([`ManagerError::JobTimeout`]).
//!
//! zbus queues incoming signals per match rule and stops reading the socket while a queue
//! is full, so every stream here is either polled continuously (the change task) or short
//! lived with a roomy queue (a job wait).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use esfleet_core::UnitName;
use futures::StreamExt;
use tokio::sync::mpsc;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::{proxy, Connection, MatchRule, MessageStream, OwnedObjectPath};

use crate::manager::{JobOutcome, ManagerError, Result, UnitManager, UnitStatus};
use crate::unitfiles::{UnitDir, DEFAULT_UNIT_DIR};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// How long to wait for a job's `JobRemoved` by default. systemd's own start timeout
/// (`DefaultTimeoutStartSec`, 90 s) ends a hung start first, with result `timeout`.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Room for signals that arrive while a job waiter is not yet polling its stream.
const JOB_QUEUE: usize = 1024;
/// Room for signals in the change task's streams between two polls.
const CHANGE_QUEUE: usize = 4096;
/// Pending change notices per subscriber; later ones are dropped while it is full (they are
/// hints and the caller re-reads the state).
const NOTICE_BUFFER: usize = 1024;

/// One row of `ListUnitsByNames`: name, description, load state, active state, sub state,
/// followed unit, unit object path, job id, job type, job object path.
type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn list_units_by_names(&self, names: &[&str]) -> zbus::Result<Vec<UnitRow>>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(&self, files: &[&str], runtime: bool) -> zbus::Result<Vec<(String, String, String)>>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn state_change_timestamp(&self) -> zbus::Result<u64>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
}

/// Maps a zbus error of `call` on `unit` to ours, keeping systemd's "no such unit" apart.
fn call_error(call: &'static str, unit: &str, e: zbus::Error) -> ManagerError {
    match &e {
        zbus::Error::MethodError(name, detail, _) if name.as_str() == NO_SUCH_UNIT => ManagerError::NoSuchUnit {
            call,
            unit: unit.to_string(),
            message: detail.clone().unwrap_or_else(|| format!("Unit {unit} not found.")),
        },
        zbus::Error::MethodError(name, detail, _) => ManagerError::Call {
            call,
            unit: unit.to_string(),
            message: format!("{}: {}", name.as_str(), detail.as_deref().unwrap_or("")),
        },
        _ => ManagerError::Call {
            call,
            unit: unit.to_string(),
            message: e.to_string(),
        },
    }
}

/// Inverse of systemd's object path escaping (`bus_label_escape`): every byte outside
/// `[A-Za-z0-9]` is written `_xx` in hex, so `es-data@1.service` is
/// `es_2ddata_401_2eservice`. `None` for anything that is not a valid escaped unit name.
pub fn unit_name_from_path(path: &str) -> Option<UnitName> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    UnitName::new(std::str::from_utf8(&out).ok()?).ok()
}

/// The real systemd, over the system bus.
#[derive(Clone)]
pub struct SystemdManager {
    conn: Connection,
    manager: ManagerProxy<'static>,
    dir: UnitDir,
    job_timeout: Duration,
}

impl SystemdManager {
    /// Connects to the system bus and subscribes to systemd's signals. Unit files go to
    /// `unit_dir`, which must be a directory systemd loads units from (normally
    /// [`DEFAULT_UNIT_DIR`], `/run/systemd/system`). Call inside a tokio runtime.
    pub async fn connect(unit_dir: PathBuf) -> Result<SystemdManager> {
        let conn = Connection::system().await.map_err(|e| {
            ManagerError::Connect(format!(
                "{e} (is this a systemd host with a D-Bus system bus at /run/dbus/system_bus_socket?)"
            ))
        })?;
        SystemdManager::with_connection(conn, unit_dir).await
    }

    /// Like [`SystemdManager::connect`], over a connection the caller made (e.g. to another
    /// bus address).
    pub async fn with_connection(conn: Connection, unit_dir: PathBuf) -> Result<SystemdManager> {
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| ManagerError::Connect(format!("systemd manager proxy: {e}")))?;
        // Without Subscribe(), systemd sends job and unit signals only to a job's creator.
        manager
            .subscribe()
            .await
            .map_err(|e| ManagerError::Connect(format!("Subscribe() to systemd: {e}")))?;
        Ok(SystemdManager {
            conn,
            manager,
            dir: UnitDir::new(unit_dir),
            job_timeout: DEFAULT_JOB_TIMEOUT,
        })
    }

    /// Connects with the default unit directory.
    pub async fn connect_default() -> Result<SystemdManager> {
        SystemdManager::connect(PathBuf::from(DEFAULT_UNIT_DIR)).await
    }

    /// Bounds every wait for a job's end (default [`DEFAULT_JOB_TIMEOUT`]).
    pub fn with_job_timeout(mut self, timeout: Duration) -> SystemdManager {
        self.job_timeout = timeout;
        self
    }

    pub fn unit_dir(&self) -> &UnitDir {
        &self.dir
    }

    async fn signals(&self, rule: MatchRule<'_>, queue: usize) -> zbus::Result<MessageStream> {
        MessageStream::for_match_rule(rule, &self.conn, NonZeroUsize::new(queue)).await
    }

    /// Issues a job call and waits for its `JobRemoved`.
    async fn job(&self, call: &'static str, name: &UnitName) -> Result<JobOutcome> {
        let unit = name.as_str();
        let rule = manager_signal("JobRemoved")
            .arg(2, unit)
            .build()
            .map_err(|e| call_error(call, unit, e))?;
        // Subscribed before the call: a job can end before its method reply is read.
        let mut removed = self
            .signals(rule, JOB_QUEUE)
            .await
            .map_err(|e| call_error(call, unit, e))?;
        let reply = match call {
            "StartUnit" => self.manager.start_unit(unit, "replace").await,
            "StopUnit" => self.manager.stop_unit(unit, "replace").await,
            _ => self.manager.restart_unit(unit, "replace").await,
        };
        let job = reply.map_err(|e| call_error(call, unit, e))?;
        let wait = async {
            while let Some(msg) = removed.next().await {
                let msg = msg.map_err(|e| call_error(call, unit, e))?;
                let body = msg.body();
                let Ok((_id, path, _unit, result)) = body.deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return Ok(JobOutcome::from_systemd(&result));
                }
            }
            Err(ManagerError::Call {
                call,
                unit: unit.to_string(),
                message: "the D-Bus connection closed before the job ended".to_string(),
            })
        };
        match tokio::time::timeout(self.job_timeout, wait).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ManagerError::JobTimeout {
                unit: unit.to_string(),
                secs: self.job_timeout.as_secs(),
            }),
        }
    }

    /// The timestamps and counters `ListUnitsByNames` does not carry.
    async fn details(&self, name: &UnitName, path: &OwnedObjectPath) -> zbus::Result<(u64, u32, u32)> {
        let unit = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let since = unit.state_change_timestamp().await?;
        if name.unit_type() != "service" {
            return Ok((since, 0, 0));
        }
        let service = ServiceProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let (pid, restarts) = futures::try_join!(service.main_pid(), service.n_restarts())?;
        Ok((since, restarts, pid))
    }
}

/// A match rule for one of systemd's manager signals.
fn manager_signal(member: &'static str) -> zbus::match_rule::Builder<'static> {
    MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(SYSTEMD)
        .path(SYSTEMD_PATH)
        .interface(MANAGER_IFACE)
        .member(member)
}

/// Forwards "this unit may have changed" to `tx` until the receiver is dropped.
async fn forward_changes(
    mut props: MessageStream,
    mut jobs: MessageStream,
    mut units: impl futures::Stream<Item = zbus::Result<zbus::Message>> + Unpin,
    tx: mpsc::Sender<UnitName>,
) {
    loop {
        let name = tokio::select! {
            _ = tx.closed() => return,
            msg = props.next() => match msg {
                Some(Ok(msg)) => msg.header().path().and_then(|p| unit_name_from_path(p.as_str())),
                Some(Err(_)) => None,
                None => return,
            },
            msg = jobs.next() => match msg {
                Some(Ok(msg)) => msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    .ok()
                    .and_then(|(_, _, unit, _)| UnitName::new(&unit).ok()),
                Some(Err(_)) => None,
                None => return,
            },
            msg = units.next() => match msg {
                Some(Ok(msg)) => msg
                    .body()
                    .deserialize::<(String, OwnedObjectPath)>()
                    .ok()
                    .and_then(|(unit, _)| UnitName::new(&unit).ok()),
                Some(Err(_)) => None,
                None => return,
            },
        };
        if let Some(name) = name {
            match tx.try_send(name) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

impl UnitManager for SystemdManager {
    async fn install(&self, name: &UnitName, text: &str, dropin: &str) -> Result<bool> {
        if !self.dir.owns(name)? {
            // Not written by us yet: systemd must not know the name from anywhere else.
            // A template cannot be loaded, only its file looked up; any other unit is
            // loaded by ListUnitsByNames if it has to be (a disabled unit in
            // /lib/systemd/system answers `loaded`), which also finds transient and
            // generated units and instances of the host's templates.
            let why = if name.is_template() {
                match self.manager.get_unit_file_state(name.as_str()).await {
                    Ok(state) => Some(format!("a unit file systemd reports {state}")),
                    // No such file anywhere (zbus maps the standard D-Bus error name).
                    Err(zbus::Error::FDO(e)) if matches!(*e, zbus::fdo::Error::FileNotFound(_)) => None,
                    Err(zbus::Error::MethodError(e, _, _)) if e.as_str() == NO_SUCH_UNIT => None,
                    Err(e) => return Err(call_error("GetUnitFileState", name.as_str(), e)),
                }
            } else {
                let known = self.states(std::slice::from_ref(name)).await?;
                known
                    .iter()
                    .find(|s| s.load != "not-found")
                    .map(|s| format!("systemd has it {}, {}", s.load, s.active))
            };
            if let Some(why) = why {
                return Err(ManagerError::Foreign {
                    unit: name.to_string(),
                    why,
                });
            }
        }
        self.dir.install(name, text, dropin)
    }

    async fn uninstall(&self, name: &UnitName) -> Result<bool> {
        self.dir.uninstall(name)
    }

    async fn installed(&self) -> Result<Vec<UnitName>> {
        self.dir.installed()
    }

    async fn reload(&self) -> Result<()> {
        // The reply comes once systemd has re-read every unit file.
        self.manager.reload().await.map_err(|e| call_error("Reload", "", e))
    }

    async fn start(&self, name: &UnitName) -> Result<JobOutcome> {
        self.job("StartUnit", name).await
    }

    async fn stop(&self, name: &UnitName) -> Result<JobOutcome> {
        self.job("StopUnit", name).await
    }

    async fn restart(&self, name: &UnitName) -> Result<JobOutcome> {
        self.job("RestartUnit", name).await
    }

    async fn enable(&self, name: &UnitName) -> Result<()> {
        self.manager
            .enable_unit_files(&[name.as_str()], true, true)
            .await
            .map(|_| ())
            .map_err(|e| call_error("EnableUnitFiles", name.as_str(), e))
    }

    async fn disable(&self, name: &UnitName) -> Result<()> {
        self.manager
            .disable_unit_files(&[name.as_str()], true)
            .await
            .map(|_| ())
            .map_err(|e| call_error("DisableUnitFiles", name.as_str(), e))
    }

    async fn reset_failed(&self, name: &UnitName) -> Result<()> {
        match self.manager.reset_failed_unit(name.as_str()).await {
            Ok(()) => Ok(()),
            Err(e) => match call_error("ResetFailedUnit", name.as_str(), e) {
                ManagerError::NoSuchUnit { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn states(&self, names: &[UnitName]) -> Result<Vec<UnitStatus>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let rows = self
            .manager
            .list_units_by_names(&list)
            .await
            .map_err(|e| call_error("ListUnitsByNames", &list.join(" "), e))?;
        let rows: std::collections::HashMap<String, UnitRow> = rows.into_iter().map(|r| (r.0.clone(), r)).collect();
        let rows = &rows;
        let reads = names.iter().map(|name| async move {
            let Some(row) = rows.get(name.as_str()) else {
                return Ok(UnitStatus {
                    name: name.clone(),
                    load: "not-found".to_string(),
                    active: "inactive".to_string(),
                    sub: "dead".to_string(),
                    since_usec: 0,
                    n_restarts: 0,
                    main_pid: 0,
                });
            };
            let (_, _, load, active, sub, _, path, _, _, _) = row;
            // A unit systemd only knows as "not found" has nothing more to read.
            let (since_usec, n_restarts, main_pid) = if load == "not-found" && active == "inactive" {
                (0, 0, 0)
            } else {
                match self.details(name, path).await {
                    Ok(details) => details,
                    // The unit was unloaded between the two calls: garbage-collected units
                    // report as not found.
                    Err(zbus::Error::MethodError(n, _, _))
                        if n.as_str() == "org.freedesktop.DBus.Error.UnknownObject" =>
                    {
                        (0, 0, 0)
                    }
                    Err(e) => return Err(call_error("Get", name.as_str(), e)),
                }
            };
            Ok(UnitStatus {
                name: name.clone(),
                load: load.clone(),
                active: active.clone(),
                sub: sub.clone(),
                since_usec,
                n_restarts,
                main_pid,
            })
        });
        futures::future::try_join_all(reads).await
    }

    async fn changes(&self) -> Result<mpsc::Receiver<UnitName>> {
        let props = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD)
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace("/org/freedesktop/systemd1/unit")
            .build();
        let jobs = manager_signal("JobRemoved").build();
        let units = manager_signal("UnitNew").build();
        let removed = manager_signal("UnitRemoved").build();
        let e = |e| call_error("AddMatch", "", e);
        let props = self.signals(props.map_err(e)?, CHANGE_QUEUE).await.map_err(e)?;
        let jobs = self.signals(jobs.map_err(e)?, CHANGE_QUEUE).await.map_err(e)?;
        let new = self.signals(units.map_err(e)?, CHANGE_QUEUE).await.map_err(e)?;
        let removed = self.signals(removed.map_err(e)?, CHANGE_QUEUE).await.map_err(e)?;
        let units = futures::stream::select(new, removed);
        let (tx, rx) = mpsc::channel(NOTICE_BUFFER);
        tokio::spawn(forward_changes(props, jobs, units, tx));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_unit_object_paths() {
        let name = unit_name_from_path("/org/freedesktop/systemd1/unit/es_2ddata_401_2eservice").unwrap();
        assert_eq!(name.as_str(), "es-data@1.service");
        assert_eq!(
            unit_name_from_path("/org/freedesktop/systemd1/unit/dbus_2eservice")
                .unwrap()
                .as_str(),
            "dbus.service"
        );
        assert!(unit_name_from_path("/org/freedesktop/systemd1/unit/bad_2").is_none());
        assert!(unit_name_from_path("/org/freedesktop/systemd1/job/12").is_none());
        // `/` escaped into a name is still refused by UnitName.
        assert!(unit_name_from_path("/org/freedesktop/systemd1/unit/a_2fb_2eservice").is_none());
    }
}
