//! The conformance suite every [`UnitManager`] must pass: the fake (in a unit test here)
//! and the real D-Bus manager (by `esfleet-tests`' `systemd_conformance` binary, inside a
//! simulated host with real systemd as PID 1). What the real systemd does here is the
//! specification; the fake follows it, and this suite is what keeps the two together.
//!
//! It is a plain async function, not a `#[test]`, so both callers can run it. Each case
//! uses its own unit names (`esfleet-conf-<tag>-<case>...`), cases run one after another,
//! a failed case does not stop the others, and every unit the suite touched is stopped,
//! disabled and uninstalled at the end.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use esfleet_core::UnitName;

use crate::manager::{JobOutcome, ManagerError, UnitManager, UnitStatus};

/// What the suite cannot do through the trait: it differs between the fake and real systemd.
pub trait Hooks: Send + Sync {
    /// Kill the unit's main process (`main_pid`, as `states` reported it) with SIGKILL.
    fn crash(&self, name: &UnitName, main_pid: u32) -> Result<(), String>;
    /// Whether `enable` linked the unit into a target (`systemctl is-enabled`).
    fn is_enabled(&self, name: &UnitName) -> Result<bool, String>;
    /// Put a unit file esfleet did not write (no drop-in) where the manager looks.
    fn add_foreign_unit(&self, name: &UnitName, text: &str) -> Result<(), String>;
    /// Remove what `add_foreign_unit` put there.
    fn remove_foreign_unit(&self, name: &UnitName) -> Result<(), String>;
    /// Make sure the host has [`HOST_UNIT`] as a unit of its own, outside the manager's
    /// directory (real systemd always has it).
    fn has_host_unit(&self) -> Result<(), String>;
}

/// A unit every systemd host has of its own.
pub const HOST_UNIT: &str = "systemd-journald.service";

/// How to run the suite.
#[derive(Debug, Clone)]
pub struct Config {
    /// Makes unit names unique to this run (letters, digits, `-`).
    pub tag: String,
    /// Upper bound for every wait on an asynchronous state change (crash, restart, notice).
    pub wait: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            tag: "t".to_string(),
            wait: Duration::from_secs(10),
        }
    }
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: &'static str,
    /// `None` when the case passed; otherwise what went wrong.
    pub error: Option<String>,
    pub elapsed: Duration,
}

/// The outcome of a run, plus measured figures (e.g. `start → running`).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub cases: Vec<CaseResult>,
    pub figures: Vec<(String, Duration)>,
    /// Problems while cleaning up after the cases (they do not fail the run by themselves).
    pub cleanup: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.error.is_none())
    }

    pub fn failures(&self) -> Vec<&CaseResult> {
        self.cases.iter().filter(|c| c.error.is_some()).collect()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.cases {
            match &c.error {
                None => writeln!(f, "PASS {:<28} {:>8.1} ms", c.name, c.elapsed.as_secs_f64() * 1e3)?,
                Some(e) => writeln!(f, "FAIL {:<28} {:>8.1} ms  {e}", c.name, c.elapsed.as_secs_f64() * 1e3)?,
            }
        }
        for (what, d) in &self.figures {
            writeln!(f, "figure: {what}: {:.1} ms", d.as_secs_f64() * 1e3)?;
        }
        for e in &self.cleanup {
            writeln!(f, "cleanup: {e}")?;
        }
        let failed = self.failures().len();
        write!(
            f,
            "{} cases, {} passed, {failed} failed",
            self.cases.len(),
            self.cases.len() - failed
        )
    }
}

type CaseFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Runs every case against `m`. Returns the report; check [`Report::passed`].
pub async fn run<M: UnitManager>(m: &M, hooks: &dyn Hooks, cfg: &Config) -> Report {
    let mut s = Suite {
        m,
        hooks,
        cfg,
        touched: BTreeSet::new(),
        foreign: BTreeSet::new(),
        figures: Vec::new(),
    };
    let mut report = Report::default();
    macro_rules! case {
        ($name:ident) => {{
            let t0 = Instant::now();
            let fut: CaseFuture<'_> = Box::pin(s.$name());
            let error = fut.await.err();
            report.cases.push(CaseResult {
                name: stringify!($name),
                error,
                elapsed: t0.elapsed(),
            });
        }};
    }
    case!(install_reports_changes);
    case!(start_stop);
    case!(restart_gives_new_process);
    case!(new_file_starts_without_reload);
    case!(changed_file_needs_reload);
    case!(failing_oneshot);
    case!(crash_without_restart);
    case!(crash_with_restart);
    case!(enable_disable);
    case!(uninstall);
    case!(unknown_units);
    case!(states_batch);
    case!(template_instance);
    case!(change_notices);
    case!(installed_lists_ours);
    case!(never_shadows_a_hosts_unit);
    report.cleanup = s.cleanup().await;
    report.figures = s.figures;
    report
}

const SLEEPER: &str = "[Unit]\nDescription=esfleet conformance sleeper\n\n[Service]\nExecStart=/bin/sleep 100000\n";
const DROPIN: &str = "[Unit]\nX-EsfleetConformance=yes\n";

struct Suite<'a, M> {
    m: &'a M,
    hooks: &'a dyn Hooks,
    cfg: &'a Config,
    touched: BTreeSet<UnitName>,
    foreign: BTreeSet<UnitName>,
    figures: Vec<(String, Duration)>,
}

/// `Err` with a formatted message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn err(call: &str, e: ManagerError) -> String {
    format!("{call}: {e}")
}

fn show(s: &UnitStatus) -> String {
    format!(
        "{} load={} active={} sub={} pid={} restarts={}",
        s.name, s.load, s.active, s.sub, s.main_pid, s.n_restarts
    )
}

impl<M: UnitManager> Suite<'_, M> {
    fn unit(&mut self, case: &str) -> UnitName {
        self.unit_of(case, "service")
    }

    fn unit_of(&mut self, case: &str, suffix: &str) -> UnitName {
        let name = UnitName::new(&format!("esfleet-conf-{}-{case}.{suffix}", self.cfg.tag))
            .expect("the tag and case names are valid unit name characters");
        self.touched.insert(name.clone());
        name
    }

    async fn install(&self, name: &UnitName, text: &str) -> Result<bool, String> {
        self.m.install(name, text, DROPIN).await.map_err(|e| err("install", e))
    }

    async fn status(&self, name: &UnitName) -> Result<UnitStatus, String> {
        let mut all = self
            .m
            .states(std::slice::from_ref(name))
            .await
            .map_err(|e| err("states", e))?;
        ensure!(all.len() == 1, "states of one unit returned {} entries", all.len());
        let s = all.remove(0);
        ensure!(&s.name == name, "states returned {} for {name}", s.name);
        Ok(s)
    }

    async fn expect_state(&self, name: &UnitName, load: &str, active: &str, sub: &str) -> Result<UnitStatus, String> {
        let s = self.status(name).await?;
        ensure!(
            (s.load.as_str(), s.active.as_str(), s.sub.as_str()) == (load, active, sub),
            "expected {load}/{active}/{sub}, got {}",
            show(&s)
        );
        Ok(s)
    }

    /// Polls `states` until `pred` holds, at most `cfg.wait`.
    async fn wait_until(
        &self,
        name: &UnitName,
        what: &str,
        pred: impl Fn(&UnitStatus) -> bool,
    ) -> Result<UnitStatus, String> {
        let t0 = Instant::now();
        loop {
            let s = self.status(name).await?;
            if pred(&s) {
                return Ok(s);
            }
            ensure!(
                t0.elapsed() < self.cfg.wait,
                "waited {:?} for {what}; last seen {}",
                self.cfg.wait,
                show(&s)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start(&mut self, name: &UnitName) -> Result<JobOutcome, String> {
        let t0 = Instant::now();
        let r = self.m.start(name).await.map_err(|e| err("start", e))?;
        self.figures.push((format!("start {name} -> {r:?}"), t0.elapsed()));
        Ok(r)
    }

    async fn stop(&self, name: &UnitName) -> Result<JobOutcome, String> {
        self.m.stop(name).await.map_err(|e| err("stop", e))
    }

    async fn reload(&mut self) -> Result<(), String> {
        let t0 = Instant::now();
        self.m.reload().await.map_err(|e| err("reload", e))?;
        self.figures.push(("reload".to_string(), t0.elapsed()));
        Ok(())
    }

    fn install_reports_changes(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("install");
            ensure!(
                self.install(&u, SLEEPER).await?,
                "a new unit file was not reported as changed"
            );
            ensure!(
                !self.install(&u, SLEEPER).await?,
                "the same content again was reported as changed"
            );
            let other = self
                .m
                .install(&u, SLEEPER, "[Unit]\n")
                .await
                .map_err(|e| err("install", e))?;
            ensure!(other, "a changed drop-in was not reported as changed");
            ensure!(
                self.install(&u, &format!("{SLEEPER}# v2\n")).await?,
                "a changed unit file was not reported as changed"
            );
            let listed = self.m.installed().await.map_err(|e| err("installed", e))?;
            ensure!(listed.contains(&u), "installed() does not list {u}: {listed:?}");
            Ok(())
        })
    }

    fn start_stop(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("startstop");
            self.install(&u, SLEEPER).await?;
            self.reload().await?;
            self.expect_state(&u, "loaded", "inactive", "dead").await?;
            let r = self.start(&u).await?;
            ensure!(r == JobOutcome::Done, "start returned {r:?}, expected Done");
            let s = self.expect_state(&u, "loaded", "active", "running").await?;
            ensure!(s.main_pid > 0, "a running service has no MainPID: {}", show(&s));
            ensure!(s.since_usec > 0, "no state change timestamp: {}", show(&s));
            ensure!(s.n_restarts == 0, "a fresh start counts restarts: {}", show(&s));
            let again = self.start(&u).await?;
            ensure!(again == JobOutcome::Done, "starting a running unit returned {again:?}");
            let r = self.stop(&u).await?;
            ensure!(r == JobOutcome::Done, "stop returned {r:?}, expected Done");
            let stopped = self.expect_state(&u, "loaded", "inactive", "dead").await?;
            ensure!(
                stopped.main_pid == 0,
                "a stopped service has a MainPID: {}",
                show(&stopped)
            );
            // systemd unloads an idle unit right away, forgetting its timestamps (0).
            ensure!(
                stopped.since_usec == 0 || stopped.since_usec >= s.since_usec,
                "state change timestamp went backwards: {} then {}",
                s.since_usec,
                stopped.since_usec
            );
            let r = self.stop(&u).await?;
            ensure!(r == JobOutcome::Done, "stopping a stopped unit returned {r:?}");
            Ok(())
        })
    }

    fn restart_gives_new_process(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("restart");
            self.install(&u, SLEEPER).await?;
            let r = self.m.restart(&u).await.map_err(|e| err("restart", e))?;
            ensure!(r == JobOutcome::Done, "restart of an inactive unit returned {r:?}");
            let first = self.expect_state(&u, "loaded", "active", "running").await?;
            let r = self.m.restart(&u).await.map_err(|e| err("restart", e))?;
            ensure!(r == JobOutcome::Done, "restart of a running unit returned {r:?}");
            let second = self.expect_state(&u, "loaded", "active", "running").await?;
            ensure!(
                second.main_pid != first.main_pid && second.main_pid > 0,
                "restart kept the process: {} then {}",
                show(&first),
                show(&second)
            );
            ensure!(
                second.n_restarts == 0,
                "a requested restart counted as an automatic one: {}",
                show(&second)
            );
            self.stop(&u).await?;
            Ok(())
        })
    }

    fn new_file_starts_without_reload(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("noreload");
            self.install(&u, SLEEPER).await?;
            let r = self.start(&u).await?;
            ensure!(
                r == JobOutcome::Done,
                "start of a new, never loaded file returned {r:?}"
            );
            self.expect_state(&u, "loaded", "active", "running").await?;
            self.stop(&u).await?;
            Ok(())
        })
    }

    fn changed_file_needs_reload(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("changed");
            self.install(&u, SLEEPER).await?;
            self.start(&u).await?;
            let first = self.expect_state(&u, "loaded", "active", "running").await?;
            let oneshot = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n";
            ensure!(
                self.install(&u, oneshot).await?,
                "the changed file was not reported as changed"
            );
            // Not reloaded: systemd keeps the definition it has loaded for a loaded unit (and
            // warns). (An idle unit is unloaded at once, so its next start reads the file.)
            let r = self.m.restart(&u).await.map_err(|e| err("restart", e))?;
            ensure!(r == JobOutcome::Done, "restart returned {r:?}");
            let second = self
                .expect_state(&u, "loaded", "active", "running")
                .await
                .map_err(|e| format!("before reload the old definition should run: {e}"))?;
            ensure!(second.main_pid != first.main_pid, "restart kept the process");
            self.reload().await?;
            let r = self.m.restart(&u).await.map_err(|e| err("restart", e))?;
            ensure!(r == JobOutcome::Done, "restart after reload returned {r:?}");
            self.expect_state(&u, "loaded", "active", "exited")
                .await
                .map_err(|e| format!("after reload the new definition should run: {e}"))?;
            self.stop(&u).await?;
            Ok(())
        })
    }

    fn failing_oneshot(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("fails");
            self.install(&u, "[Service]\nType=oneshot\nExecStart=/bin/false\n")
                .await?;
            let r = self.start(&u).await?;
            ensure!(
                r == JobOutcome::Failed,
                "start of a failing oneshot returned {r:?}, expected Failed"
            );
            self.expect_state(&u, "loaded", "failed", "failed").await?;
            // Stopping a failed unit succeeds and keeps the failure until it is reset.
            let r = self.stop(&u).await?;
            ensure!(r == JobOutcome::Done, "stop of a failed unit returned {r:?}");
            self.expect_state(&u, "loaded", "failed", "failed").await?;
            self.m.reset_failed(&u).await.map_err(|e| err("reset_failed", e))?;
            self.expect_state(&u, "loaded", "inactive", "dead").await?;
            // Not failed any more: resetting again is no error.
            self.m.reset_failed(&u).await.map_err(|e| err("reset_failed", e))?;
            Ok(())
        })
    }

    fn crash_without_restart(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("crash");
            self.install(&u, &format!("{SLEEPER}Restart=no\n")).await?;
            self.start(&u).await?;
            let s = self.expect_state(&u, "loaded", "active", "running").await?;
            self.hooks.crash(&u, s.main_pid)?;
            let s = self
                .wait_until(&u, "failed after SIGKILL", |s| s.active != "active")
                .await?;
            ensure!(
                (s.active.as_str(), s.sub.as_str(), s.main_pid) == ("failed", "failed", 0),
                "after SIGKILL with Restart=no expected failed/failed without a PID, got {}",
                show(&s)
            );
            ensure!(s.n_restarts == 0, "Restart=no counted a restart: {}", show(&s));
            self.m.reset_failed(&u).await.map_err(|e| err("reset_failed", e))?;
            self.expect_state(&u, "loaded", "inactive", "dead").await?;
            Ok(())
        })
    }

    fn crash_with_restart(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("autorestart");
            self.install(&u, &format!("{SLEEPER}Restart=on-failure\nRestartSec=100ms\n"))
                .await?;
            self.start(&u).await?;
            let before = self.expect_state(&u, "loaded", "active", "running").await?;
            self.hooks.crash(&u, before.main_pid)?;
            let t0 = Instant::now();
            let after = self
                .wait_until(&u, "an automatic restart", |s| {
                    s.n_restarts == 1 && s.sub == "running" && s.main_pid != before.main_pid
                })
                .await?;
            self.figures
                .push(("SIGKILL -> running again (RestartSec=100ms)".to_string(), t0.elapsed()));
            ensure!(after.active == "active", "after the restart: {}", show(&after));
            self.stop(&u).await?;
            Ok(())
        })
    }

    fn enable_disable(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("enable");
            self.install(&u, &format!("{SLEEPER}\n[Install]\nWantedBy=multi-user.target\n"))
                .await?;
            ensure!(!self.hooks.is_enabled(&u)?, "enabled before enable()");
            self.m.enable(&u).await.map_err(|e| err("enable", e))?;
            ensure!(self.hooks.is_enabled(&u)?, "not enabled after enable()");
            self.m.enable(&u).await.map_err(|e| err("enable (again)", e))?;
            self.m.disable(&u).await.map_err(|e| err("disable", e))?;
            ensure!(!self.hooks.is_enabled(&u)?, "still enabled after disable()");
            self.m.disable(&u).await.map_err(|e| err("disable (again)", e))?;

            let plain = self.unit("noinstall");
            self.install(&plain, SLEEPER).await?;
            self.m
                .enable(&plain)
                .await
                .map_err(|e| err("enable of a unit without [Install]", e))?;
            ensure!(!self.hooks.is_enabled(&plain)?, "a unit without [Install] got enabled");
            Ok(())
        })
    }

    fn uninstall(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("uninstall");
            self.install(&u, SLEEPER).await?;
            self.reload().await?;
            self.expect_state(&u, "loaded", "inactive", "dead").await?;
            ensure!(
                self.m.uninstall(&u).await.map_err(|e| err("uninstall", e))?,
                "uninstall of an installed unit reported nothing removed"
            );
            ensure!(
                !self.m.uninstall(&u).await.map_err(|e| err("uninstall", e))?,
                "uninstall of a removed unit reported something removed"
            );
            self.reload().await?;
            self.expect_state(&u, "not-found", "inactive", "dead").await?;
            let listed = self.m.installed().await.map_err(|e| err("installed", e))?;
            ensure!(!listed.contains(&u), "installed() still lists {u}");
            match self.m.start(&u).await {
                Err(ManagerError::NoSuchUnit { .. }) => Ok(()),
                other => Err(format!(
                    "start of an uninstalled unit: expected NoSuchUnit, got {other:?}"
                )),
            }
        })
    }

    fn unknown_units(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("neverthere");
            match self.m.start(&u).await {
                Err(ManagerError::NoSuchUnit { .. }) => {}
                other => return Err(format!("start of an unknown unit: expected NoSuchUnit, got {other:?}")),
            }
            match self.m.stop(&u).await {
                Err(ManagerError::NoSuchUnit { .. }) => {}
                other => return Err(format!("stop of an unknown unit: expected NoSuchUnit, got {other:?}")),
            }
            match self.m.restart(&u).await {
                Err(ManagerError::NoSuchUnit { .. }) => {}
                other => {
                    return Err(format!(
                        "restart of an unknown unit: expected NoSuchUnit, got {other:?}"
                    ))
                }
            }
            self.m
                .reset_failed(&u)
                .await
                .map_err(|e| err("reset_failed of an unknown unit", e))?;
            match self.m.enable(&u).await {
                Err(ManagerError::NoSuchUnit { .. }) => {}
                other => return Err(format!("enable of an unknown unit: expected NoSuchUnit, got {other:?}")),
            }
            match self.m.disable(&u).await {
                Err(ManagerError::NoSuchUnit { .. }) => {}
                other => {
                    return Err(format!(
                        "disable of an unknown unit: expected NoSuchUnit, got {other:?}"
                    ))
                }
            }
            self.expect_state(&u, "not-found", "inactive", "dead").await?;
            Ok(())
        })
    }

    fn states_batch(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let running = self.unit("batch-a");
            let idle = self.unit("batch-b");
            let unknown = self.unit("batch-unknown");
            self.install(&running, SLEEPER).await?;
            self.install(&idle, SLEEPER).await?;
            self.start(&running).await?;
            let names = vec![unknown.clone(), running.clone(), idle.clone()];
            let all = self.m.states(&names).await.map_err(|e| err("states", e))?;
            let got: Vec<(&str, &str, &str, &str)> = all
                .iter()
                .map(|s| (s.name.as_str(), s.load.as_str(), s.active.as_str(), s.sub.as_str()))
                .collect();
            let want = vec![
                (unknown.as_str(), "not-found", "inactive", "dead"),
                (running.as_str(), "loaded", "active", "running"),
                (idle.as_str(), "loaded", "inactive", "dead"),
            ];
            ensure!(got == want, "states() of three units: got {got:?}, expected {want:?}");
            let none = self.m.states(&[]).await.map_err(|e| err("states of none", e))?;
            ensure!(none.is_empty(), "states(&[]) returned {none:?}");
            self.stop(&running).await?;
            Ok(())
        })
    }

    fn template_instance(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let template = self.unit("tpl@");
            let instance = self.unit("tpl@one");
            self.install(&template, SLEEPER).await?;
            ensure!(self.m.start(&template).await.is_err(), "a template itself started");
            let r = self.start(&instance).await?;
            ensure!(r == JobOutcome::Done, "start of an instance returned {r:?}");
            self.expect_state(&instance, "loaded", "active", "running").await?;
            let listed = self.m.installed().await.map_err(|e| err("installed", e))?;
            ensure!(listed.contains(&template), "installed() does not list the template");
            ensure!(
                !listed.contains(&instance),
                "installed() lists the instance, not only the template"
            );
            self.stop(&instance).await?;
            Ok(())
        })
    }

    fn change_notices(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let u = self.unit("notice");
            self.install(&u, SLEEPER).await?;
            let mut rx = self.m.changes().await.map_err(|e| err("changes", e))?;
            let t0 = Instant::now();
            self.start(&u).await?;
            let deadline = tokio::time::Instant::now() + self.cfg.wait;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(n)) if n == u => break,
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err("the change stream ended".to_string()),
                    Err(_) => return Err(format!("no change notice for {u} within {:?}", self.cfg.wait)),
                }
            }
            self.figures.push(("start -> change notice".to_string(), t0.elapsed()));
            self.stop(&u).await?;
            Ok(())
        })
    }

    fn installed_lists_ours(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            let foreign = self.unit("foreign");
            self.foreign.insert(foreign.clone());
            self.hooks.add_foreign_unit(&foreign, SLEEPER)?;
            let prefix = format!("esfleet-conf-{}-", self.cfg.tag);
            let ours: BTreeSet<UnitName> = [self.unit("listed-a"), self.unit("listed-b")].into();
            for u in &ours {
                self.install(u, SLEEPER).await?;
            }
            // Earlier cases may have left units installed; what matters is that this run's
            // installed units appear and nothing else with our prefix does.
            let listed = self.m.installed().await.map_err(|e| err("installed", e))?;
            let mine: BTreeSet<UnitName> = listed.into_iter().filter(|u| u.as_str().starts_with(&prefix)).collect();
            ensure!(ours.is_subset(&mine), "installed() misses some of {ours:?}: {mine:?}");
            ensure!(!mine.contains(&foreign), "installed() lists a unit without our drop-in");
            for u in &ours {
                self.m.uninstall(u).await.map_err(|e| err("uninstall", e))?;
            }
            let listed = self.m.installed().await.map_err(|e| err("installed", e))?;
            ensure!(
                !listed.iter().any(|u| ours.contains(u)),
                "installed() lists uninstalled units: {listed:?}"
            );
            Ok(())
        })
    }

    fn never_shadows_a_hosts_unit(&mut self) -> CaseFuture<'_> {
        Box::pin(async move {
            // One of the host's own units, e.g. in /lib/systemd/system.
            self.hooks.has_host_unit()?;
            let host = UnitName::new(HOST_UNIT).map_err(|e| e.to_string())?;
            match self.m.install(&host, SLEEPER, DROPIN).await {
                Err(ManagerError::Foreign { .. }) => {}
                other => return Err(format!("install of the host's {host} was not refused: {other:?}")),
            }
            let listed = self.m.installed().await.map_err(|e| err("installed", e))?;
            ensure!(!listed.contains(&host), "installed() lists {host}");
            // An admin's unit file in the manager's own directory, loaded by systemd.
            let foreign = self.unit("admins");
            self.foreign.insert(foreign.clone());
            self.hooks.add_foreign_unit(&foreign, SLEEPER)?;
            self.m.reload().await.map_err(|e| err("reload", e))?;
            match self
                .m
                .install(&foreign, "[Service]\nExecStart=/bin/true\n", DROPIN)
                .await
            {
                Err(ManagerError::Foreign { .. }) => {}
                other => return Err(format!("install over an admin's {foreign} was not refused: {other:?}")),
            }
            let listed = self.m.installed().await.map_err(|e| err("installed", e))?;
            ensure!(!listed.contains(&foreign), "the admin's {foreign} became esfleet's");
            // A unit of ours that ran, was removed and comes back is ours again.
            let again = self.unit("again");
            self.install(&again, SLEEPER).await?;
            self.start(&again).await?;
            self.stop(&again).await?;
            self.m.uninstall(&again).await.map_err(|e| err("uninstall", e))?;
            self.m.reload().await.map_err(|e| err("reload", e))?;
            self.install(&again, SLEEPER).await?;
            Ok(())
        })
    }

    /// Stops, disables and removes everything the cases touched. Returns what went wrong.
    async fn cleanup(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let names: Vec<UnitName> = self.touched.iter().cloned().collect();
        let loaded = self.m.states(&names).await.unwrap_or_default();
        for s in loaded {
            if s.active != "inactive" && !s.name.is_template() {
                if let Err(e) = self.m.stop(&s.name).await {
                    problems.push(format!("stop {}: {e}", s.name));
                }
            }
            let _ = self.m.reset_failed(&s.name).await;
        }
        for name in &names {
            if self.foreign.contains(name) {
                if let Err(e) = self.hooks.remove_foreign_unit(name) {
                    problems.push(format!("remove foreign {name}: {e}"));
                }
                continue;
            }
            if name.is_instance() {
                continue;
            }
            if let Err(e) = self.m.disable(name).await {
                if !matches!(e, ManagerError::NoSuchUnit { .. }) {
                    problems.push(format!("disable {name}: {e}"));
                }
            }
            if let Err(e) = self.m.uninstall(name).await {
                problems.push(format!("uninstall {name}: {e}"));
            }
        }
        if let Err(e) = self.m.reload().await {
            problems.push(format!("reload: {e}"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeUnitManager;

    struct FakeHooks(FakeUnitManager);

    impl Hooks for FakeHooks {
        fn crash(&self, name: &UnitName, _main_pid: u32) -> Result<(), String> {
            if self.0.crash(name) {
                Ok(())
            } else {
                Err(format!("{name} was not running"))
            }
        }
        fn is_enabled(&self, name: &UnitName) -> Result<bool, String> {
            Ok(self.0.is_enabled(name))
        }
        fn add_foreign_unit(&self, name: &UnitName, text: &str) -> Result<(), String> {
            self.0.add_foreign_unit(name, text);
            Ok(())
        }
        fn remove_foreign_unit(&self, name: &UnitName) -> Result<(), String> {
            self.0.remove_foreign_unit(name);
            Ok(())
        }
        fn has_host_unit(&self) -> Result<(), String> {
            self.0.add_host_unit(
                &UnitName::new(HOST_UNIT).unwrap(),
                "[Service]\nExecStart=/lib/systemd/systemd-journald\n",
            );
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_fake_conforms() {
        let fake = FakeUnitManager::new();
        let report = run(&fake, &FakeHooks(fake.clone()), &Config::default()).await;
        println!("{report}");
        assert!(report.passed(), "{report}");
        assert!(report.cleanup.is_empty(), "{report}");
        assert!(
            fake.installed().await.unwrap().is_empty(),
            "the suite left units installed"
        );
    }
}
