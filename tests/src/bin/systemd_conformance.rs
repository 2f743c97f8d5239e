//! `systemd_conformance`: runs the `UnitManager` conformance suite
//! (`esfleet_agent::conformance`) against the real systemd of the machine it runs on, over
//! the D-Bus system bus, with `SystemdManager`. It prints one line per case and the
//! measured figures, and exits 0 only when every case passed.
//!
//! It changes the machine's systemd (units `esfleet-conf-<tag>-*` in the unit directory,
//! all removed at the end), so it is meant to run inside a simulated host
//! (`esfleet_tests::Hosts`; test `t60_systemd`), not on a workstation. It refuses to run
//! unless `--yes-this-is-a-test-host` is given.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use esfleet_agent::conformance::{self, Config, Hooks};
use esfleet_agent::dbus::SystemdManager;
use esfleet_agent::unitfiles::{UnitDir, DEFAULT_UNIT_DIR};
use esfleet_core::UnitName;

#[derive(Debug, Parser)]
#[command(about = "Run the UnitManager conformance suite against this machine's systemd")]
struct Args {
    /// Where unit files go; systemd must load units from there.
    #[arg(long, default_value = DEFAULT_UNIT_DIR)]
    unit_dir: PathBuf,
    /// Makes unit names unique (default: derived from the pid and the clock).
    #[arg(long)]
    tag: Option<String>,
    /// Upper bound for each wait on an asynchronous change, and for each job.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Required: confirms this machine's systemd may be changed (run it in a test host).
    #[arg(long)]
    yes_this_is_a_test_host: bool,
}

/// What the suite cannot do through the trait, done directly on this machine.
struct RealHooks {
    dir: UnitDir,
}

impl Hooks for RealHooks {
    fn crash(&self, name: &UnitName, main_pid: u32) -> Result<(), String> {
        let pid = rustix::process::Pid::from_raw(main_pid as i32).ok_or_else(|| format!("{name} has no main PID"))?;
        rustix::process::kill_process(pid, rustix::process::Signal::KILL)
            .map_err(|e| format!("kill -9 {main_pid} ({name}): {e}"))
    }

    fn is_enabled(&self, name: &UnitName) -> Result<bool, String> {
        self.dir.is_linked(name).map_err(|e| e.to_string())
    }

    fn add_foreign_unit(&self, name: &UnitName, text: &str) -> Result<(), String> {
        let path = self.dir.unit_path(name).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn remove_foreign_unit(&self, name: &UnitName) -> Result<(), String> {
        let path = self.dir.unit_path(name).map_err(|e| e.to_string())?;
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn has_host_unit(&self) -> Result<(), String> {
        Ok(()) // systemd-journald.service ships with systemd
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if !args.yes_this_is_a_test_host {
        anyhow::bail!(
            "this changes the machine's systemd; run it inside a test host and pass --yes-this-is-a-test-host"
        );
    }
    let tag = args.tag.unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{}x{}", std::process::id(), nanos % 100_000)
    });
    let manager = SystemdManager::connect(args.unit_dir.clone())
        .await
        .context("connect to systemd")?
        .with_job_timeout(args.wait);
    let hooks = RealHooks {
        dir: UnitDir::new(&args.unit_dir),
    };
    let cfg = Config { tag, wait: args.wait };
    let report = conformance::run(&manager, &hooks, &cfg).await;
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
