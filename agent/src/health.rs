//! `HealthCheck=` (DESIGN.md "Unit options"): the agent runs the check of every unit
//! scheduled here and reports the result as `healthy` in the unit's state record. Drains
//! (and later rolling operations) wait for a replacement to be healthy, not only active.
//!
//! A check is an `http://` URL that must answer 2xx, or a command (`/bin/sh -c`) that must
//! exit 0, each within a time limit. The command runs with the unit's placement facts in
//! its environment (`ESFLEET_*`), as the unit itself does. The check is read from the
//! scheduled unit file (the same parser the coordinator validated it with), so the
//! schedule entry needs no field of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esfleet_core::model::ScheduleEntry;
use esfleet_core::options::HealthCheck;
use esfleet_core::unit::validate_unit;
use esfleet_core::UnitName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// The check a scheduled unit asks for, if any.
pub fn check_of(entry: &ScheduleEntry) -> Option<HealthCheck> {
    validate_unit(&entry.unit, &entry.text).ok()?.options.health_check
}

/// Runs one check. `Err` says why it failed, for the log.
pub async fn run_check(check: &HealthCheck, env: &BTreeMap<String, String>, limit: Duration) -> Result<(), String> {
    let attempt = async {
        match check {
            HealthCheck::Http(url) => http_get(url).await,
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

/// A minimal HTTP/1.0 GET: enough to read a status line, with no client library.
async fn http_get(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{url}: only http:// checks are supported; use a command (e.g. curl -fsk) for https"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let req =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: esfleet-agent\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match conn.read(&mut head[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{url}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let code = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("{url} answered {c}")),
        None => Err(format!("{url}: not an HTTP answer")),
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
    let mut checks: BTreeMap<(UnitName, String), Option<HealthCheck>> = BTreeMap::new();
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
        let results = futures::future::join_all(todo.into_iter().map(|(u, check, env)| async move {
            let r = run_check(&check, &env, limit).await;
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
        let url = HealthCheck::Http(format!("http://{addr}/_cluster/health"));
        assert_eq!(run_check(&url, &env, limit).await, Ok(()));
        assert!(run_check(&url, &env, limit).await.unwrap_err().contains("503"));
        let https = HealthCheck::Http("https://x/".into());
        assert!(run_check(&https, &env, limit)
            .await
            .unwrap_err()
            .contains("only http://"));

        let env: BTreeMap<String, String> = [("ESFLEET_ZONE".to_string(), "a".to_string())].into();
        let ok = HealthCheck::Command("test \"$ESFLEET_ZONE\" = a".into());
        assert_eq!(run_check(&ok, &env, limit).await, Ok(()));
        let bad = HealthCheck::Command("exit 3".into());
        assert!(run_check(&bad, &env, limit).await.unwrap_err().contains("exit"));
        let slow = HealthCheck::Command("sleep 5".into());
        assert!(run_check(&slow, &env, Duration::from_millis(100))
            .await
            .unwrap_err()
            .contains("no answer"));
    }
}
