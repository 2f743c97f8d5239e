//! Simulated hosts for tests that need real systemd: [`Hosts`] boots named hosts, each a
//! network namespace plus a systemd-nspawn container with systemd as PID 1 and its own
//! D-Bus system bus, all on one virtual switch. It wraps `tests/hosts/hosts.sh` (which
//! documents the pitfalls it solves) and adds what a test needs: a testbed id of its own,
//! output capture and time limits on every command, teardown in `Drop` (also when the test
//! panics, printing each host's journal tail first), cleanup of testbeds left by an earlier
//! aborted run, and a check that teardown left nothing behind ([`Hosts::leftovers`]).
//!
//! Needs root and `systemd-nspawn`; tests use it only when `ESFLEET_ROOT_TESTS=1`
//! ([`root_tests_enabled`]). The directory holding the freshly built binaries is bound
//! read-only at [`BIN_IN_HOST`] in every host.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where the build's binaries appear inside a host.
pub const BIN_IN_HOST: &str = "/opt/esfleet";

/// Where testbeds keep their per-host directories (journals, console logs).
const BASE: &str = "/tmp/esfleet-hosts";

/// The environment `hosts.sh exec` gives commands (its CLEAN_PATH).
const CLEAN_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Default bound for one command run in a host.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// True when the environment asks for the tests that need root and nspawn
/// (`ESFLEET_ROOT_TESTS=1`; CI sets it).
pub fn root_tests_enabled() -> bool {
    std::env::var("ESFLEET_ROOT_TESTS").is_ok_and(|v| v == "1")
}

/// For the first line of a root-only test: prints a skip line and returns true when root
/// tests are not enabled.
pub fn skip_unless_root(test: &str) -> bool {
    if root_tests_enabled() {
        return false;
    }
    eprintln!("SKIP {test}: needs root and systemd-nspawn; set ESFLEET_ROOT_TESTS=1 to run it");
    true
}

/// Sets `vm.max_map_count` (a machine-wide sysctl every simulated host sees, which the
/// agents report and Elasticsearch's bootstrap check reads) and restores the old value when
/// dropped, however the test ends.
pub struct MaxMapCount(String);

impl MaxMapCount {
    const PATH: &'static str = "/proc/sys/vm/max_map_count";

    pub fn set(v: u64) -> MaxMapCount {
        let old = std::fs::read_to_string(Self::PATH).unwrap().trim().to_string();
        std::fs::write(Self::PATH, v.to_string()).unwrap();
        MaxMapCount(old)
    }
}

impl Drop for MaxMapCount {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// The directory with the build's binaries: `ESFLEET_BIN_DIR`, else derived from the running
/// executable (`<target>/debug/deps/<test>` or `<target>/debug/<bin>` → `<target>/debug`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ESFLEET_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().context("the executable has no directory")?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hosts/hosts.sh")
}

/// What a command in a host printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; `None` when it was killed by a signal (or by the time limit).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// One testbed at a time per test process: hosts are heavy for a 2-core machine, and tests
/// booting them in parallel threads would only slow each other into timeouts.
struct Turn;

static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();

impl Turn {
    fn take() -> Turn {
        let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        FREED.notify_one();
    }
}

/// Runs `cmd` with its output captured, killing its process group after `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    use std::os::unix::process::CommandExt;
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group, so a timeout kills everything it started (nsenter'd children).
    cmd.process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawning {shown}"))?;
    let mut out = child.stdout.take().context("stdout is piped")?;
    let mut err = child.stderr.take().context("stderr is piped")?;
    // Drained in threads: a full pipe would block the child and look like a hang.
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            break Some(status);
        }
        if t0.elapsed() > timeout {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if status.is_none() {
        bail!("{shown} did not finish within {timeout:?}; stdout:\n{stdout}\nstderr:\n{stderr}");
    }
    Ok(Output {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    })
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Tears down testbeds whose owning test process is gone (an aborted earlier run).
fn collect_abandoned() {
    let Ok(entries) = std::fs::read_dir(BASE) else {
        return;
    };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let owner = std::fs::read_to_string(entry.path().join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(alive) {
            continue;
        }
        eprintln!("hosts: tearing down testbed {id} left by an earlier run (owner {owner:?} is gone)");
        let mut cmd = Command::new(script());
        cmd.arg("down").env("EFT_ID", &id);
        if let Err(e) = run(cmd, Duration::from_secs(60)) {
            eprintln!("hosts: could not tear down testbed {id}: {e:#}");
        }
    }
}

/// A set of booted hosts; torn down when dropped.
pub struct Hosts {
    id: String,
    names: Vec<String>,
    boot_time: Duration,
    down: bool,
    _turn: Turn,
}

impl Hosts {
    /// Boots hosts with these names (1-32 letters, digits, '-') and waits until each one's
    /// systemd answers on D-Bus. Host i (in this order) is `10.88.0.(10+i)`, and every
    /// host's `/etc/hosts` lists all of them by name.
    pub fn boot(names: &[&str]) -> anyhow::Result<Hosts> {
        let turn = Turn::take();
        collect_abandoned();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{:x}{}",
            std::process::id(),
            char::from_digit(seq % 36, 36).unwrap_or('z')
        );
        let bin = bin_dir()?;
        let mut hosts = Hosts {
            id,
            names: names.iter().map(|n| n.to_string()).collect(),
            boot_time: Duration::ZERO,
            down: false,
            _turn: turn,
        };
        let t0 = Instant::now();
        let mut cmd = hosts.command();
        cmd.arg("up")
            .args(names)
            .env("EFT_BIN_DIR", &bin)
            .env("EFT_OWNER", std::process::id().to_string());
        // On failure `hosts` drops here and tears down whatever came up.
        let out = run(cmd, Duration::from_secs(60 + 30 * names.len() as u64))?;
        if !out.success() {
            bail!(
                "booting hosts {names:?} failed ({:?}):\n{}{}",
                out.code,
                out.stdout,
                out.stderr
            );
        }
        hosts.boot_time = t0.elapsed();
        Ok(hosts)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(script());
        cmd.env("EFT_ID", &self.id);
        cmd
    }

    fn script_ok(&self, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let mut cmd = self.command();
        cmd.args(args);
        let out = run(cmd, timeout)?;
        if !out.success() {
            bail!(
                "hosts.sh {} failed ({:?}): {}{}",
                args.join(" "),
                out.code,
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// This testbed's id (part of its netns, cgroup and directory names).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// How long `boot` took for all hosts together.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The host's address on the switch.
    pub fn ip(&self, host: &str) -> anyhow::Result<String> {
        Ok(self
            .script_ok(&["ip", host], Duration::from_secs(10))?
            .trim()
            .to_string())
    }

    /// Runs a command inside the host (every namespace of its PID 1, clean environment),
    /// bounded by [`EXEC_TIMEOUT`]. The process is not in the host's cgroup: start anything
    /// long-running with [`Hosts::run_service`] instead.
    pub fn exec(&self, host: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.exec_timeout(host, args, EXEC_TIMEOUT)
    }

    pub fn exec_timeout(&self, host: &str, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let mut cmd = self.command();
        cmd.arg("exec").arg(host).args(args);
        run(cmd, timeout)
    }

    /// Runs a command in the namespaces of the host whose PID 1 has the host-side pid
    /// `leader_pid` (from [`Hosts::leader_pid`]), without the script: a few milliseconds
    /// instead of tens, for samplers that look at every host several times a second. The
    /// caller knows the pid is still that host's PID 1 (a crash or reboot changes it).
    pub fn exec_in(&self, leader_pid: u32, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(leader_pid.to_string())
            .arg("-a")
            .args(["env", "-i", CLEAN_PATH, "HOME=/root", "TERM=dumb", "LANG=C.UTF-8"])
            .args(args);
        run(cmd, timeout)
    }

    /// [`Hosts::exec`], failing unless the command exits 0; returns its stdout.
    pub fn exec_ok(&self, host: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.exec(host, args)?;
        if !out.success() {
            bail!(
                "`{}` in {host} exited with {:?}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                out.code,
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// Starts a long-running command as a transient service `unit` of the host's systemd
    /// (`systemd-run --unit=...`), so it lives in the host's cgroup and dies with the host.
    pub fn run_service(&self, host: &str, unit: &str, args: &[&str]) -> anyhow::Result<()> {
        let unit_arg = format!("--unit={unit}");
        let mut full = vec![
            "systemd-run",
            unit_arg.as_str(),
            "--service-type=exec",
            "--collect",
            "--",
        ];
        full.extend_from_slice(args);
        self.exec_ok(host, &full).map(|_| ())
    }

    /// Host-side PID of the host's systemd (its PID 1).
    pub fn leader_pid(&self, host: &str) -> anyhow::Result<u32> {
        let out = self.script_ok(&["pid", host], Duration::from_secs(10))?;
        out.trim()
            .parse()
            .with_context(|| format!("hosts.sh pid {host} printed {out:?}"))
    }

    /// Crash: SIGKILL the host's PID 1, so every process in it dies. Its network stays up
    /// (combine with [`Hosts::partition`] for a machine that is gone).
    pub fn kill(&self, host: &str) -> anyhow::Result<()> {
        self.script_ok(&["kill", host], Duration::from_secs(10))?;
        self.script_ok(&["stop", host], Duration::from_secs(30)).map(|_| ())
    }

    /// Boots a stopped or killed host again (same netns, same journal); returns how long
    /// it took until its systemd answered on D-Bus.
    pub fn start(&self, host: &str) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.script_ok(&["start", host], Duration::from_secs(90))?;
        Ok(t0.elapsed())
    }

    /// Pulls the host's cable at the switch.
    pub fn partition(&self, host: &str) -> anyhow::Result<()> {
        self.script_ok(&["partition", host], Duration::from_secs(10))
            .map(|_| ())
    }

    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        self.script_ok(&["heal", host], Duration::from_secs(10)).map(|_| ())
    }

    /// Hangs every process of the host (cgroup freezer).
    pub fn freeze(&self, host: &str) -> anyhow::Result<()> {
        self.script_ok(&["freeze", host], Duration::from_secs(10)).map(|_| ())
    }

    pub fn thaw(&self, host: &str) -> anyhow::Result<()> {
        self.script_ok(&["thaw", host], Duration::from_secs(10)).map(|_| ())
    }

    /// The host's journal read from outside (works after a crash too), with `journalctl`
    /// arguments such as `["-u", "esfleet-agent", "-n", "50"]`.
    pub fn journal(&self, host: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["journal", host];
        full.extend_from_slice(args);
        self.script_ok(&full, Duration::from_secs(30))
    }

    /// Tears everything down now and reports what went wrong, if anything.
    pub fn teardown(mut self) -> anyhow::Result<()> {
        self.down()
    }

    fn down(&mut self) -> anyhow::Result<()> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        self.script_ok(&["down"], Duration::from_secs(60)).map(|_| ())
    }

    /// What is left of testbed `id` on this machine: network namespaces, cgroups, live
    /// processes in its cgroups, mounts, its directory. Empty after a clean teardown.
    pub fn leftovers(id: &str) -> Vec<String> {
        let mut left = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            let prefix = format!("eft{id}-");
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    left.push(format!("network namespace {name}"));
                }
            }
        }
        let cgroup = format!("eft-{id}");
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"] {
            let dir = Path::new(root).join(&cgroup);
            if dir.exists() {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
        let needle = format!("/{cgroup}/");
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let in_testbed = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
                    c.lines()
                        .any(|l| l.contains(&needle) || l.ends_with(&needle[..needle.len() - 1]))
                });
                if in_testbed && alive(pid) {
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    left.push(format!("process {pid} ({})", comm.trim()));
                }
            }
        }
        let dir = format!("{BASE}/{id}");
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in mounts.lines().filter(|l| l.contains(&dir)) {
                left.push(format!("mount {line}"));
            }
        }
        if Path::new(&dir).exists() {
            left.push(format!("directory {dir}"));
        }
        left
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if std::thread::panicking() {
            for host in self.names.clone() {
                match self.journal(&host, &["-n", "40", "-o", "short-monotonic"]) {
                    Ok(j) => eprintln!("--- journal of {host} (last 40 lines) ---\n{j}"),
                    Err(e) => eprintln!("--- journal of {host}: {e:#}"),
                }
            }
        }
        if let Err(e) = self.down() {
            eprintln!("hosts: teardown of testbed {} failed: {e:#}", self.id);
        }
    }
}
