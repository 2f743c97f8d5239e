//! `HealthCheck=` (DESIGN.md "Unit options"): the agent runs the check of every unit
//! scheduled here and reports the result as `healthy` in the unit's state record. Drains
//! (and later rolling operations) wait for a replacement to be healthy, not only active.
//!
//! A check is an `http://` or `https://` URL that must answer 2xx, or a command
//! (`/bin/sh -c`) that must exit 0, each within a time limit. An `https://` check trusts
//! only the unit's `HealthCheckCA=` file and may authenticate with the `user:password` in
//! its `HealthCheckCredentials=` file, which must be root's and mode 0600. Both files are
//! read again, and TLS set up anew, only when one of them changes (modification time or
//! size), so a rotated certificate or password is picked up at the next check without
//! paying for it at every check. The command runs with the unit's placement facts in its
//! environment (`ESFLEET_*`), as the unit itself does. The check is read from the
//! scheduled unit file (the same parser the coordinator validated it with), so the
//! schedule entry needs no field of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use esfleet_core::http;
use esfleet_core::model::ScheduleEntry;
use esfleet_core::options::HealthCheck;
use esfleet_core::unit::validate_unit;
use esfleet_core::UnitName;
use tokio::sync::{watch, Notify};

/// The latest result per unit, and a notice when one changes.
#[derive(Debug, Default)]
pub struct Health {
    results: Mutex<BTreeMap<UnitName, bool>>,
    /// Woken when a result changed (the worker then reports states).
    pub changed: Notify,
}

impl Health {
    /// The last result for `unit`, if it has a check that ran.
    pub fn get(&self, unit: &UnitName) -> Option<bool> {
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(unit)
            .copied()
    }

    fn update(&self, now: BTreeMap<UnitName, bool>) -> bool {
        let mut r = self.results.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *r != now;
        *r = now;
        changed
    }
}

/// A unit's check: what to run, and for `https://`, whom to trust and the credentials file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub check: HealthCheck,
    pub ca_file: Option<String>,
    pub credentials_file: Option<String>,
}

impl From<HealthCheck> for Check {
    fn from(check: HealthCheck) -> Check {
        Check {
            check,
            ca_file: None,
            credentials_file: None,
        }
    }
}

/// The check a scheduled unit asks for, if any.
pub fn check_of(entry: &ScheduleEntry) -> Option<Check> {
    let o = validate_unit(&entry.unit, &entry.text).ok()?.options;
    Some(Check {
        check: o.health_check?,
        ca_file: o.health_check_ca,
        credentials_file: o.health_check_credentials,
    })
}

/// A file's identity for the cache (`None`: unreadable): modification time and size, and
/// the inode change time, owner and mode, so that a credentials file made readable to
/// others (chmod leaves the modification time alone) is refused at the next check again.
type Stamp = Option<(SystemTime, u64, i64, i64, u32, u32)>;

fn stamp(path: &str) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.modified().ok()?,
        m.len(),
        m.ctime(),
        m.ctime_nsec(),
        m.uid(),
        m.mode(),
    ))
}

type TransportKey = (String, Option<String>);

/// The `https://` transports the checks use, one per (CA file, credentials file), kept
/// until one of the files changes. Failures are not kept: the next check tries again.
#[derive(Default)]
pub struct Transports {
    /// (CA file, credentials file) → the files' stamps when built, and the transport.
    built: Mutex<BTreeMap<TransportKey, ([Stamp; 2], http::Transport)>>,
    /// How many transports were built (for tests).
    builds: AtomicUsize,
}

/// More distinct (CA, credentials) pairs than this on one host: the cache starts over.
const MAX_TRANSPORTS: usize = 64;

impl Transports {
    fn get(&self, ca: &str, credentials: Option<&str>) -> Result<http::Transport, String> {
        let key = (ca.to_string(), credentials.map(String::from));
        let now = [stamp(ca), credentials.and_then(stamp)];
        if let Some((seen, t)) = self.built.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if *seen == now {
                return Ok(t.clone());
            }
        }
        let t = http::Transport::new(Some(Path::new(ca)), credentials.map(Path::new), http::Owner::Root)?;
        self.builds.fetch_add(1, Ordering::Relaxed);
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if built.len() >= MAX_TRANSPORTS {
            built.clear();
        }
        built.insert(key, (now, t.clone()));
        Ok(t)
    }
}

/// Runs one check. `Err` says why it failed, for the log.
pub async fn run_check(
    check: &Check,
    env: &BTreeMap<String, String>,
    limit: Duration,
    transports: &Transports,
) -> Result<(), String> {
    let attempt = async {
        match &check.check {
            HealthCheck::Http(url) => http_get(url, check, transports).await,
            HealthCheck::Command(cmd) => {
                let status = tokio::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(cmd)
                    .envs(env)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("{cmd:?} exited with {status}"))
                }
            }
        }
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// A GET of `url` that must answer 2xx (esfleet_core's client: http, or https with the
/// check's CA and credentials).
async fn http_get(url: &str, check: &Check, transports: &Transports) -> Result<(), String> {
    let (https, endpoint, path) = http::split_url(url)?;
    let transport = match (https, &check.ca_file) {
        (false, _) => http::Transport::plain(),
        (true, None) => return Err(format!("{url}: an https:// check needs HealthCheckCA=")),
        (true, Some(ca)) => transports
            .get(ca, check.credentials_file.as_deref())
            .map_err(|e| format!("{url}: {e}"))?,
    };
    let (status, _) = transport
        .send(&endpoint, http::Method::Get, &path, None)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}

/// Checks every scheduled unit that has a check, every `every`, until `stop` changes.
/// `scheduled` gives the current entries (the worker's last reconciled set).
pub async fn run(
    health: Arc<Health>,
    scheduled: impl Fn() -> BTreeMap<UnitName, ScheduleEntry>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let limit = every.min(Duration::from_secs(10));
    let mut checks: BTreeMap<(UnitName, String), Option<Check>> = BTreeMap::new();
    let transports = Transports::default();
    loop {
        let entries = scheduled();
        // Parse each unit file once per version.
        checks.retain(|(u, hash), _| entries.get(u).is_some_and(|e| e.hash == *hash));
        let mut todo = Vec::new();
        for (u, e) in &entries {
            let check = checks
                .entry((u.clone(), e.hash.clone()))
                .or_insert_with(|| check_of(e))
                .clone();
            if let Some(check) = check {
                todo.push((u.clone(), check, e.env.clone()));
            }
        }
        let transports = &transports;
        let results = futures::future::join_all(todo.into_iter().map(|(u, check, env)| async move {
            let r = run_check(&check, &env, limit, transports).await;
            if let Err(why) = &r {
                tracing::debug!(unit = %u, why, "health check failed");
            }
            (u, r.is_ok())
        }))
        .await;
        if health.update(results.into_iter().collect()) {
            health.changed.notify_one();
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn http_and_command_checks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in ["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 503 Service Unavailable\r\n\r\n"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let env = BTreeMap::new();
        let limit = Duration::from_secs(5);
        let t = Transports::default();
        let url: Check = HealthCheck::Http(format!("http://{addr}/_cluster/health")).into();
        assert_eq!(run_check(&url, &env, limit, &t).await, Ok(()));
        assert!(run_check(&url, &env, limit, &t).await.unwrap_err().contains("503"));
        let https: Check = HealthCheck::Http("https://x/".into()).into();
        assert!(run_check(&https, &env, limit, &t)
            .await
            .unwrap_err()
            .contains("needs HealthCheckCA="));

        let env: BTreeMap<String, String> = [("ESFLEET_ZONE".to_string(), "a".to_string())].into();
        let ok: Check = HealthCheck::Command("test \"$ESFLEET_ZONE\" = a".into()).into();
        assert_eq!(run_check(&ok, &env, limit, &t).await, Ok(()));
        let bad: Check = HealthCheck::Command("exit 3".into()).into();
        assert!(run_check(&bad, &env, limit, &t).await.unwrap_err().contains("exit"));
        let slow: Check = HealthCheck::Command("sleep 5".into()).into();
        assert!(run_check(&slow, &env, Duration::from_millis(100), &t)
            .await
            .unwrap_err()
            .contains("no answer"));
    }

    /// A CA certificate made by openssl (scripts/setup installs it).
    fn ca_pem(dir: &Path, name: &str) -> String {
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={name}"))
            .args(["-keyout", "/dev/null", "-out"])
            .arg(dir.join(format!("{name}.pem")))
            .output()
            .expect("openssl runs (scripts/setup installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir.join(format!("{name}.pem")).display().to_string()
    }

    #[test]
    fn transports_are_built_once_per_file_version() {
        let dir = tempfile::tempdir().unwrap();
        let t = Transports::default();
        let ca = ca_pem(dir.path(), "ca");
        t.get(&ca, None).unwrap();
        t.get(&ca, None).unwrap();
        assert_eq!(
            t.builds.load(Ordering::Relaxed),
            1,
            "the second check reuses the first's TLS"
        );
        // A rotated CA (another certificate in the same file) is read at the next check.
        let other = ca_pem(dir.path(), "other");
        let mut pem = std::fs::read(&other).unwrap();
        pem.extend(std::fs::read(&ca).unwrap());
        std::fs::write(&ca, pem).unwrap();
        t.get(&ca, None).unwrap();
        assert_eq!(t.builds.load(Ordering::Relaxed), 2);
        // Failures are not kept: a missing CA fails every time, naming the file.
        let missing = dir.path().join("missing.pem").display().to_string();
        for _ in 0..2 {
            assert!(t.get(&missing, None).unwrap_err().contains("missing.pem"));
        }
        assert_eq!(t.builds.load(Ordering::Relaxed), 2);
        // Credentials made readable to others are refused at the next check, although
        // chmod leaves the file's modification time and size alone.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            println!("not root: the agent's credentials must be root's; skipping that part");
            return;
        }
        let creds = dir.path().join("creds").display().to_string();
        std::fs::write(&creds, "user:pw\n").unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        t.get(&ca, Some(&creds)).unwrap();
        t.get(&ca, Some(&creds)).unwrap();
        assert_eq!(t.builds.load(Ordering::Relaxed), 3);
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = t.get(&ca, Some(&creds)).unwrap_err();
        assert!(e.contains("creds"), "{e}");
    }
}
