//! Real esfleet clusters on one machine: [`RealCluster`] boots simulated hosts
//! ([`Hosts`]: a network namespace plus systemd-nspawn with systemd as PID 1 each), runs
//! `esfleet-coordinator` on some of them and `esfleet-agent` on every one, and gives a test
//! what it needs to break the cluster and to check what really runs:
//!
//! - the `esfleet` CLI and `etcdctl`, run inside a host that can reach the coordinators;
//! - ground truth from each host's own systemd ([`RealCluster::where_active`],
//!   [`RealCluster::live_copies`]), so a test can assert "exactly one live copy of unit X
//!   in the whole cluster" at any moment it samples;
//! - faults: crash and reboot a host, cut its cable, drop its traffic one way (nft inside
//!   its netns), freeze it, stop or kill a coordinator member or an agent.
//!
//! Daemons run as transient units (`systemd-run` inside the host), so they live in the
//! host's cgroup and die with it. Host roots are an overlay over a tmpfs that a reboot
//! starts afresh, so nothing written into a host survives its reboot: [`RealCluster::reboot`]
//! plays the host's enabled `esfleet-agent.service` and starts the agent again. A
//! coordinator member's data would not survive either, so rebooting a coordinator host is
//! refused (stop and start the member instead).
//!
//! Teardown happens in `Drop` (through [`Hosts`]), also when the test panics, after
//! printing each host's journal tail.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};

use crate::hosts::{Hosts, Output, BIN_IN_HOST};

/// The transient unit names of the daemons inside each host.
pub const COORDINATOR_UNIT: &str = "esfleet-coordinator.service";
pub const AGENT_UNIT: &str = "esfleet-agent.service";
/// The coordinator's data dir inside its host.
pub const COORDINATOR_DATA_DIR: &str = "/var/lib/esfleet-coordinator";
/// Where unit files given to the CLI are written inside the control host.
const UNIT_DIR_IN_HOST: &str = "/root/units";
/// Generous bound for things that take "a few seconds": it only keeps a broken build from
/// hanging a test; speed is the benchmark's business.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// The nft table fault injection uses inside a host.
const NFT_TABLE: &str = "eftfault";

/// One host of the cluster to boot.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    /// Agent metadata (`--metadata`), e.g. `zone=a,rack=r1`; empty for none.
    pub metadata: Vec<(String, String)>,
}

/// What [`RealCluster::boot`] builds.
#[derive(Debug, Clone)]
pub struct Spec {
    pub hosts: Vec<HostSpec>,
    /// Hosts that run a coordinator member (default: the first three, or all if fewer).
    pub coordinators: Vec<String>,
    /// Extra flags for every agent (e.g. `--lease-ttl 3s`); empty: the defaults.
    pub agent_args: Vec<String>,
    /// Extra flags for every coordinator member.
    pub coordinator_args: Vec<String>,
    /// Start the agents at boot (default true); false leaves it to the test.
    pub start_agents: bool,
}

impl Spec {
    /// Hosts with these names and no metadata; coordinators on the first three.
    pub fn new(names: &[&str]) -> Spec {
        let hosts: Vec<HostSpec> = names
            .iter()
            .map(|n| HostSpec {
                name: n.to_string(),
                metadata: Vec::new(),
            })
            .collect();
        let coordinators = names.iter().take(3).map(|n| n.to_string()).collect();
        Spec {
            hosts,
            coordinators,
            agent_args: Vec::new(),
            coordinator_args: Vec::new(),
            start_agents: true,
        }
    }

    /// `per_zone` hosts in each of `zones`, named `<zone>-<n>` (1-based), with metadata
    /// `zone=<zone>,rack=<zone>-r<n>`; one coordinator in each of the first three zones
    /// (on its first host), so losing a zone loses one member.
    pub fn zones(zones: &[&str], per_zone: usize) -> Spec {
        let mut hosts = Vec::new();
        for z in zones {
            for n in 1..=per_zone {
                hosts.push(HostSpec {
                    name: format!("{z}-{n}"),
                    metadata: vec![("zone".into(), z.to_string()), ("rack".into(), format!("{z}-r{n}"))],
                });
            }
        }
        let coordinators = if zones.len() >= 3 {
            zones.iter().take(3).map(|z| format!("{z}-1")).collect()
        } else {
            hosts.iter().take(3).map(|h| h.name.clone()).collect()
        };
        Spec {
            hosts,
            coordinators,
            agent_args: Vec::new(),
            coordinator_args: Vec::new(),
            start_agents: true,
        }
    }

    pub fn coordinators_on(mut self, names: &[&str]) -> Spec {
        self.coordinators = names.iter().map(|n| n.to_string()).collect();
        self
    }

    pub fn agent_args(mut self, args: &[&str]) -> Spec {
        self.agent_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn coordinator_args(mut self, args: &[&str]) -> Spec {
        self.coordinator_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn without_agents(mut self) -> Spec {
        self.start_agents = false;
        self
    }
}

/// Which direction of a host's traffic [`RealCluster::drop_traffic`] drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Packets arriving at the host.
    Inbound,
    /// Packets the host sends.
    Outbound,
}

/// One placement as `esfleet list-units -o json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub unit: String,
    pub machine_id: String,
    /// The host the machine is (its hostname).
    pub host: String,
    pub active: String,
    pub sub: String,
    pub desired: String,
    /// systemd's NRestarts as the agent reported it.
    pub restarts: u64,
}

/// One machine as `esfleet list-machines -o json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub zone: String,
    pub units: u64,
    /// `up`, `draining`, `drained` or `suspect`.
    pub state: String,
}

/// What a host's systemd says about one unit (`systemctl show`). Timestamps are
/// CLOCK_MONOTONIC in µs, which all hosts share (one kernel), so they compare across hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitTimes {
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: u32,
    pub n_restarts: u32,
    /// 0: never.
    pub active_enter_us: u64,
    pub inactive_enter_us: u64,
    /// Whether its file exists (`FragmentPath` is set).
    pub fragment: String,
}

/// A systemd ActiveState in which the unit's processes may be alive.
pub fn is_live_state(active: &str) -> bool {
    matches!(active, "active" | "activating" | "deactivating" | "reloading")
}

/// Calls `f` until it returns `Some`, every `every`, for at most `timeout`; the error says
/// what was awaited and what the last attempt saw.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let t0 = Instant::now();
    let mut last;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "condition not met".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if t0.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last attempt: {last}");
        }
        std::thread::sleep(every);
    }
}

/// Hosts' states as the harness knows them.
#[derive(Debug, Default)]
struct Faults {
    /// Crashed (killed) and not rebooted.
    down: BTreeSet<String>,
    /// Cable pulled.
    cut: BTreeSet<String>,
    /// nft drops in place.
    filtered: BTreeSet<String>,
    frozen: BTreeSet<String>,
}

/// A running esfleet cluster on simulated hosts; torn down when dropped.
pub struct RealCluster {
    hosts: Hosts,
    spec: Spec,
    ips: BTreeMap<String, String>,
    machine_ids: BTreeMap<String, String>,
    faults: Mutex<Faults>,
    /// Host-side pid of each running host's PID 1, for cheap samples.
    leaders: Mutex<BTreeMap<String, u32>>,
}

impl RealCluster {
    /// Boots the hosts, starts the coordinator members and waits for a leader, then starts
    /// the agents (unless [`Spec::without_agents`]) and waits until every machine is up.
    pub fn boot(spec: Spec) -> anyhow::Result<RealCluster> {
        let names: Vec<&str> = spec.hosts.iter().map(|h| h.name.as_str()).collect();
        for c in &spec.coordinators {
            ensure!(
                names.contains(&c.as_str()),
                "coordinator host {c} is not one of the hosts {names:?}"
            );
        }
        ensure!(
            !spec.coordinators.is_empty(),
            "a cluster needs at least one coordinator host"
        );
        let hosts = Hosts::boot(&names)?;
        let mut ips = BTreeMap::new();
        let mut machine_ids = BTreeMap::new();
        let mut leaders = BTreeMap::new();
        for n in &names {
            leaders.insert(n.to_string(), hosts.leader_pid(n)?);
            ips.insert(n.to_string(), hosts.ip(n)?);
            let id = hosts.exec_ok(n, &["cat", "/etc/machine-id"])?;
            machine_ids.insert(n.to_string(), id.trim().to_string());
        }
        let cluster = RealCluster {
            hosts,
            spec,
            ips,
            machine_ids,
            faults: Mutex::new(Faults::default()),
            leaders: Mutex::new(leaders),
        };
        for c in cluster.spec.coordinators.clone() {
            cluster.start_coordinator(&c)?;
        }
        cluster.wait_leader(PATIENCE)?;
        if cluster.spec.start_agents {
            for h in cluster.names() {
                cluster.start_agent(&h)?;
            }
            let all = cluster.names();
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            cluster.wait_machines_up(&all, PATIENCE)?;
        }
        Ok(cluster)
    }

    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The testbed id (for [`Hosts::leftovers`]).
    pub fn id(&self) -> String {
        self.hosts.id().to_string()
    }

    pub fn names(&self) -> Vec<String> {
        self.spec.hosts.iter().map(|h| h.name.clone()).collect()
    }

    pub fn ip(&self, host: &str) -> &str {
        self.ips.get(host).map(String::as_str).unwrap_or("0.0.0.0")
    }

    pub fn machine_id(&self, host: &str) -> &str {
        self.machine_ids.get(host).map(String::as_str).unwrap_or("")
    }

    /// The host whose machine id this is.
    pub fn host_of(&self, machine_id: &str) -> Option<String> {
        self.machine_ids
            .iter()
            .find(|(_, id)| id.as_str() == machine_id)
            .map(|(h, _)| h.clone())
    }

    pub fn coordinator_hosts(&self) -> &[String] {
        &self.spec.coordinators
    }

    /// Every coordinator client URL, comma separated (`--endpoints`).
    pub fn endpoints(&self) -> String {
        self.spec
            .coordinators
            .iter()
            .map(|c| format!("http://{}:2379", self.ip(c)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn metadata(&self, host: &str) -> String {
        self.spec
            .hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| {
                h.metadata
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hosts whose systemd can be asked (not crashed, not frozen).
    pub fn live_hosts(&self) -> Vec<String> {
        let f = self.faults();
        self.names()
            .into_iter()
            .filter(|h| !f.down.contains(h) && !f.frozen.contains(h))
            .collect()
    }

    /// A host that runs and can reach the coordinators, to run the CLI in.
    pub fn control_host(&self) -> anyhow::Result<String> {
        let f = self.faults();
        self.names()
            .into_iter()
            .find(|h| !f.down.contains(h) && !f.cut.contains(h) && !f.filtered.contains(h) && !f.frozen.contains(h))
            .ok_or_else(|| anyhow!("no host is up and connected to run the CLI in"))
    }

    // ---- daemons ----

    /// The coordinator member's command line on `host`.
    pub fn coordinator_command(&self, host: &str) -> Vec<String> {
        let ip = self.ip(host);
        let initial: Vec<String> = self
            .spec
            .coordinators
            .iter()
            .map(|c| format!("{c}=http://{}:2380", self.ip(c)))
            .collect();
        let mut cmd = vec![
            format!("{BIN_IN_HOST}/esfleet-coordinator"),
            "--name".into(),
            host.into(),
            "--data-dir".into(),
            COORDINATOR_DATA_DIR.into(),
            "--listen-client-urls".into(),
            format!("http://{ip}:2379"),
            "--advertise-client-urls".into(),
            format!("http://{ip}:2379"),
            "--listen-peer-urls".into(),
            format!("http://{ip}:2380"),
            "--initial-advertise-peer-urls".into(),
            format!("http://{ip}:2380"),
            "--initial-cluster".into(),
            initial.join(","),
            "--initial-cluster-state".into(),
            "new".into(),
        ];
        cmd.extend(self.spec.coordinator_args.iter().cloned());
        cmd
    }

    /// Starts (or restarts, on its existing data dir) the coordinator member on `host`.
    pub fn start_coordinator(&self, host: &str) -> anyhow::Result<()> {
        ensure!(
            self.spec.coordinators.iter().any(|c| c == host),
            "{host} is not a coordinator host"
        );
        self.run_daemon(host, COORDINATOR_UNIT, &self.coordinator_command(host))
    }

    /// SIGTERM to the coordinator member on `host`; waits until it exited.
    pub fn stop_coordinator(&self, host: &str) -> anyhow::Result<()> {
        self.hosts.exec_ok(host, &["systemctl", "stop", COORDINATOR_UNIT])?;
        Ok(())
    }

    /// SIGKILL to the coordinator member on `host`.
    pub fn kill_coordinator(&self, host: &str) -> anyhow::Result<()> {
        self.kill_daemon(host, COORDINATOR_UNIT)
    }

    /// The agent's command line on `host` with the spec's agent flags, then `extra`.
    pub fn agent_command(&self, host: &str, extra: &[&str]) -> Vec<String> {
        let ip = self.ip(host);
        let mut cmd = vec![
            format!("{BIN_IN_HOST}/esfleet-agent"),
            "--endpoints".into(),
            self.endpoints(),
            "--address".into(),
            ip.to_string(),
            "--listen".into(),
            format!("{ip}:2390"),
        ];
        let md = self.metadata(host);
        if !md.is_empty() {
            cmd.push("--metadata".into());
            cmd.push(md);
        }
        cmd.extend(self.spec.agent_args.iter().cloned());
        cmd.extend(extra.iter().map(|s| s.to_string()));
        cmd
    }

    /// Starts the agent on `host` with the spec's flags.
    pub fn start_agent(&self, host: &str) -> anyhow::Result<()> {
        self.start_agent_with(host, &[])
    }

    /// Starts the agent on `host` with extra flags (after the spec's).
    pub fn start_agent_with(&self, host: &str, extra: &[&str]) -> anyhow::Result<()> {
        self.run_daemon(host, AGENT_UNIT, &self.agent_command(host, extra))
    }

    /// SIGTERM to the agent on `host` (it revokes its lease, and stops its units with
    /// `--stop-units-on-exit`); waits until it exited.
    pub fn stop_agent(&self, host: &str) -> anyhow::Result<()> {
        self.hosts.exec_ok(host, &["systemctl", "stop", AGENT_UNIT])?;
        Ok(())
    }

    /// SIGKILL to the agent on `host` (its lease lives on until its TTL).
    pub fn kill_agent(&self, host: &str) -> anyhow::Result<()> {
        self.kill_daemon(host, AGENT_UNIT)
    }

    fn run_daemon(&self, host: &str, unit: &str, cmd: &[String]) -> anyhow::Result<()> {
        // A unit of that name that failed (killed) may still be listed; a fresh start
        // needs the name free.
        let _ = self.hosts.exec(host, &["systemctl", "reset-failed", unit]);
        let unit_arg = format!("--unit={unit}");
        let mut full: Vec<&str> = vec![
            "systemd-run",
            &unit_arg,
            "--service-type=exec",
            "--collect",
            // KillMode=mixed: SIGTERM to the main process only, so `systemctl stop` tests
            // the daemon's own shutdown.
            "-p",
            "KillMode=mixed",
            "-p",
            "TimeoutStopSec=30",
            "--setenv=RUST_LOG=info,openraft=warn",
            "--",
        ];
        full.extend(cmd.iter().map(String::as_str));
        self.hosts.exec_ok(host, &full).map(|_| ())
    }

    fn kill_daemon(&self, host: &str, unit: &str) -> anyhow::Result<()> {
        self.hosts.exec_ok(host, &["systemctl", "kill", "-s", "KILL", unit])?;
        // Wait until systemd saw it die, so a restart right after finds the name free.
        wait_for(
            &format!("{unit} on {host} to die"),
            PATIENCE,
            Duration::from_millis(50),
            || {
                let out = self.hosts.exec(host, &["systemctl", "is-active", unit])?;
                Ok((!is_live_state(out.stdout.trim())).then_some(()))
            },
        )
    }

    // ---- host faults ----

    /// Crash: pull the host's cable (a dead machine answers nothing, not even RST), then
    /// SIGKILL its PID 1, so every process in it dies.
    pub fn crash(&self, host: &str) -> anyhow::Result<()> {
        self.hosts.partition(host)?;
        {
            // Down from now on: samplers stop asking it (its systemd is about to vanish).
            let mut f = self.faults();
            f.cut.insert(host.to_string());
            f.down.insert(host.to_string());
        }
        self.hosts.kill(host)
    }

    /// Boots a crashed host again, plugs its cable back, and starts its agent (what its
    /// enabled `esfleet-agent.service` would do). Refused for a coordinator host: its
    /// member's data was on the host's tmpfs root and is gone.
    pub fn reboot(&self, host: &str) -> anyhow::Result<Duration> {
        ensure!(
            !self.spec.coordinators.iter().any(|c| c == host),
            "rebooting coordinator host {host} would lose its member's data (host roots are tmpfs); \
             crash a host without a coordinator, or use stop_coordinator/start_coordinator"
        );
        let took = self.hosts.start(host)?;
        let pid = self.hosts.leader_pid(host)?;
        self.leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string(), pid);
        self.faults().down.remove(host);
        self.heal(host)?;
        self.start_agent(host)?;
        Ok(took)
    }

    /// Pulls the host's cable: it reaches nobody and nobody reaches it (both ways).
    pub fn partition(&self, host: &str) -> anyhow::Result<()> {
        self.hosts.partition(host)?;
        self.faults().cut.insert(host.to_string());
        Ok(())
    }

    /// Plugs the cable back and removes any nft drop.
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        self.hosts.heal(host)?;
        self.faults().cut.remove(host);
        let filtered = self.faults().filtered.contains(host);
        if filtered {
            self.hosts
                .exec_ok(host, &["nft", "delete", "table", "inet", NFT_TABLE])?;
            self.faults().filtered.remove(host);
        }
        Ok(())
    }

    /// One-way partition: nft inside the host's netns drops every packet in `direction` on
    /// its link (loopback untouched). `heal` removes it.
    pub fn drop_traffic(&self, host: &str, direction: Direction) -> anyhow::Result<()> {
        let (chain, hook, dev) = match direction {
            Direction::Inbound => ("in", "input", "iifname"),
            Direction::Outbound => ("out", "output", "oifname"),
        };
        let script = format!(
            "add table inet {NFT_TABLE}\n\
             add chain inet {NFT_TABLE} {chain} {{ type filter hook {hook} priority 0 ; policy accept ; }}\n\
             add rule inet {NFT_TABLE} {chain} {dev} \"eft0\" drop\n"
        );
        self.hosts
            .exec_ok(host, &["sh", "-c", "printf '%s' \"$1\" | nft -f -", "_", &script])?;
        self.faults().filtered.insert(host.to_string());
        Ok(())
    }

    /// Hangs every process of the host (its systemd included: the samplers skip it).
    pub fn freeze(&self, host: &str) -> anyhow::Result<()> {
        self.hosts.freeze(host)?;
        self.faults().frozen.insert(host.to_string());
        Ok(())
    }

    pub fn thaw(&self, host: &str) -> anyhow::Result<()> {
        self.hosts.thaw(host)?;
        self.faults().frozen.remove(host);
        Ok(())
    }

    // ---- commands in hosts ----

    /// Runs the `esfleet` CLI (with `--endpoints`) in the control host.
    pub fn esfleet(&self, args: &[&str]) -> anyhow::Result<Output> {
        let host = self.control_host()?;
        self.esfleet_on(&host, args)
    }

    /// Runs the `esfleet` CLI (with `--endpoints`) in `host`.
    pub fn esfleet_on(&self, host: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.esfleet_within(host, crate::hosts::EXEC_TIMEOUT, args)
    }

    /// Runs the `esfleet` CLI in `host`, killed after `timeout` (for commands whose own
    /// `--timeout` is longer than [`crate::hosts::EXEC_TIMEOUT`], such as a rolling restart).
    pub fn esfleet_within(&self, host: &str, timeout: Duration, args: &[&str]) -> anyhow::Result<Output> {
        let bin = format!("{BIN_IN_HOST}/esfleet");
        let eps = self.endpoints();
        let mut full: Vec<&str> = vec![&bin, "--endpoints", &eps];
        full.extend_from_slice(args);
        self.hosts.exec_timeout(host, &full, timeout)
    }

    /// [`RealCluster::esfleet`], failing unless it exits 0; returns its stdout.
    pub fn esfleet_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.esfleet(args)?;
        ensure!(
            out.success(),
            "`esfleet {}` exited with {:?}\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            out.code,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// Writes `text` to `path` in `host` (creating its directory), e.g. a `cluster.toml`
    /// for the CLI there.
    pub fn write_file(&self, host: &str, path: &str, text: &str) -> anyhow::Result<()> {
        ensure!(
            !text.lines().any(|l| l == "ESFLEET_EOF"),
            "{path}: the text holds the here-document's end marker"
        );
        let dir = std::path::Path::new(path)
            .parent()
            .map_or_else(|| "/".to_string(), |d| d.display().to_string());
        self.hosts.exec_ok(
            host,
            &[
                "sh",
                "-c",
                &format!("mkdir -p '{dir}' && cat > '{path}' <<'ESFLEET_EOF'\n{text}\nESFLEET_EOF"),
            ],
        )?;
        Ok(())
    }

    /// Runs `etcdctl` (Debian's, from the build machine's root) against the coordinators
    /// in the control host.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let host = self.control_host()?;
        let eps = self.endpoints();
        let mut full: Vec<&str> = vec!["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", &eps];
        full.extend_from_slice(args);
        self.hosts.exec(&host, &full)
    }

    /// Writes unit files into the control host (`/root/units/<name>`); returns the paths.
    pub fn write_units(&self, units: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
        let host = self.control_host()?;
        self.write_units_on(&host, units)
    }

    fn write_units_on(&self, host: &str, units: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
        let script = format!(
            "mkdir -p {UNIT_DIR_IN_HOST} && while [ $# -gt 1 ]; do printf '%s' \"$2\" > \"{UNIT_DIR_IN_HOST}/$1\"; shift 2; done"
        );
        let mut args: Vec<&str> = vec!["sh", "-c", &script, "_"];
        for (name, text) in units {
            ensure!(
                !name.contains('/') && !name.is_empty(),
                "unit file name {name:?} must be a plain file name"
            );
            args.push(name);
            args.push(text);
        }
        self.hosts.exec_ok(host, &args)?;
        Ok(units.iter().map(|(n, _)| format!("{UNIT_DIR_IN_HOST}/{n}")).collect())
    }

    /// Writes the unit files and runs `esfleet start <files>` (which waits until they
    /// run) in the control host; `extra` goes before the files (e.g. `--timeout 60s`).
    pub fn start_units(&self, units: &[(&str, &str)], extra: &[&str]) -> anyhow::Result<String> {
        let host = self.control_host()?;
        let paths = self.write_units_on(&host, units)?;
        let mut args: Vec<&str> = vec!["start"];
        args.extend_from_slice(extra);
        args.extend(paths.iter().map(String::as_str));
        let out = self.esfleet_on(&host, &args)?;
        ensure!(
            out.success(),
            "`esfleet start` of {} unit(s) exited with {:?}\nstdout:\n{}\nstderr:\n{}",
            units.len(),
            out.code,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// `esfleet list-units -o json`.
    pub fn list_units(&self) -> anyhow::Result<Vec<Placement>> {
        let text = self.esfleet_ok(&["list-units", "-o", "json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("list-units printed {text:?}"))?;
        let rows = v.as_array().context("list-units -o json is not an array")?;
        let s = |r: &serde_json::Value, k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        Ok(rows
            .iter()
            .map(|r| {
                let machine_id = s(r, "machine_id");
                Placement {
                    unit: s(r, "unit"),
                    host: self.host_of(&machine_id).unwrap_or_else(|| s(r, "machine_hostname")),
                    machine_id,
                    active: s(r, "active"),
                    sub: s(r, "sub"),
                    desired: s(r, "desired"),
                    restarts: r.get("restarts").and_then(|x| x.as_u64()).unwrap_or(0),
                }
            })
            .collect())
    }

    /// `esfleet list-machines -o json`.
    pub fn list_machines(&self) -> anyhow::Result<Vec<MachineInfo>> {
        let text = self.esfleet_ok(&["list-machines", "-o", "json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("list-machines printed {text:?}"))?;
        let rows = v.as_array().context("list-machines -o json is not an array")?;
        let s = |r: &serde_json::Value, k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        Ok(rows
            .iter()
            .map(|r| MachineInfo {
                id: s(r, "id"),
                hostname: s(r, "hostname"),
                address: s(r, "address"),
                zone: s(r, "zone"),
                units: r.get("units").and_then(|x| x.as_u64()).unwrap_or(0),
                state: s(r, "state"),
            })
            .collect())
    }

    /// The host of the coordinator leader (`esfleet cluster status`), if there is one.
    pub fn leader(&self) -> anyhow::Result<Option<String>> {
        let text = self.esfleet_ok(&["cluster", "status", "-o", "json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("cluster status printed {text:?}"))?;
        let leader = v.get("leader").and_then(|l| l.as_str()).unwrap_or_default();
        if leader.is_empty() {
            return Ok(None);
        }
        let members = v.get("members").and_then(|m| m.as_array()).cloned().unwrap_or_default();
        Ok(members
            .iter()
            .find(|m| m.get("id").and_then(|i| i.as_str()) == Some(leader))
            .and_then(|m| m.get("name").and_then(|n| n.as_str()))
            .map(str::to_string))
    }

    /// Waits until the coordinators have a leader; returns its host.
    pub fn wait_leader(&self, timeout: Duration) -> anyhow::Result<String> {
        wait_for("a coordinator leader", timeout, Duration::from_millis(200), || {
            self.leader()
        })
    }

    /// Waits until a member other than the one on `old` leads, as the members that still
    /// run see it (a member asked right after a leader died may still name it).
    pub fn wait_new_leader(&self, old: &str, timeout: Duration) -> anyhow::Result<String> {
        wait_for(
            &format!("a leader other than {old}"),
            timeout,
            Duration::from_millis(100),
            || Ok(self.leader()?.filter(|l| l != old)),
        )
    }

    /// Waits until each of `hosts` is listed by `list-machines` as `up`.
    pub fn wait_machines_up(&self, hosts: &[&str], timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            &format!("machines of {hosts:?} to be up"),
            timeout,
            Duration::from_millis(200),
            || {
                let ms = self.list_machines()?;
                Ok(hosts
                    .iter()
                    .all(|h| ms.iter().any(|m| m.id == self.machine_id(h) && m.state == "up"))
                    .then_some(()))
            },
        )
    }

    /// Waits until `list-units` shows each of `units` placed once and active/running;
    /// returns where each one runs.
    pub fn wait_units_running(&self, units: &[&str], timeout: Duration) -> anyhow::Result<BTreeMap<String, String>> {
        wait_for(
            &format!("{} unit(s) to be active/running", units.len()),
            timeout,
            Duration::from_millis(200),
            || {
                let rows = self.list_units()?;
                let mut at = BTreeMap::new();
                for u in units {
                    let mine: Vec<&Placement> = rows.iter().filter(|p| p.unit == *u).collect();
                    match mine.as_slice() {
                        [p] if p.active == "active" && p.sub == "running" => {
                            at.insert(u.to_string(), p.host.clone());
                        }
                        _ => return Ok(None),
                    }
                }
                Ok(Some(at))
            },
        )
    }

    // ---- ground truth from each host's systemd ----

    /// The live hosts whose systemd has `unit` in a live state (active, activating,
    /// deactivating, reloading), asked in parallel.
    pub fn where_active(&self, unit: &str) -> anyhow::Result<Vec<String>> {
        let copies = self.live_copies(&[unit])?;
        Ok(copies.get(unit).cloned().unwrap_or_default())
    }

    /// For each unit (or glob, e.g. `es-*`) given: which live hosts have it in a live
    /// state, per unit name, from one `systemctl list-units` per host, hosts in parallel.
    /// Units live nowhere are absent from the map.
    pub fn live_copies(&self, patterns: &[&str]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let hosts = self.live_hosts();
        let results: Vec<(String, anyhow::Result<Output>)> = std::thread::scope(|s| {
            let handles: Vec<_> = hosts
                .iter()
                .map(|h| {
                    s.spawn(move || {
                        let mut args = vec![
                            "systemctl",
                            "list-units",
                            "--all",
                            "--plain",
                            "--no-legend",
                            "--no-pager",
                        ];
                        args.extend_from_slice(patterns);
                        let pid = self.leaders.lock().unwrap_or_else(|e| e.into_inner()).get(h).copied();
                        let out = match pid {
                            Some(pid) => self.hosts.exec_in(pid, &args, Duration::from_secs(20)),
                            None => self.hosts.exec_timeout(h, &args, Duration::from_secs(20)),
                        };
                        (h.clone(), out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| (String::new(), Err(anyhow!("sampler thread panicked"))))
                })
                .collect()
        });
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (host, res) in results {
            // A host crashed between listing and asking: it runs nothing.
            if self.faults().down.contains(&host) {
                continue;
            }
            let res = res.with_context(|| format!("systemctl list-units in {host}"))?;
            ensure!(
                res.success(),
                "systemctl list-units in {host}: {:?} {}",
                res.code,
                res.stderr
            );
            for line in res.stdout.lines() {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.len() >= 4 && is_live_state(cols[2]) {
                    out.entry(cols[0].to_string()).or_default().push(host.clone());
                }
            }
        }
        Ok(out)
    }

    /// `systemctl show` of one unit in one host.
    pub fn unit_times(&self, host: &str, unit: &str) -> anyhow::Result<UnitTimes> {
        let out = self.hosts.exec_ok(
            host,
            &[
                "systemctl",
                "show",
                "-p",
                "ActiveState,SubState,MainPID,NRestarts,ActiveEnterTimestampMonotonic,InactiveEnterTimestampMonotonic,FragmentPath",
                unit,
            ],
        )?;
        let mut t = UnitTimes::default();
        for line in out.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            match k {
                "ActiveState" => t.active_state = v.to_string(),
                "SubState" => t.sub_state = v.to_string(),
                "MainPID" => t.main_pid = v.parse().unwrap_or(0),
                "NRestarts" => t.n_restarts = v.parse().unwrap_or(0),
                "ActiveEnterTimestampMonotonic" => t.active_enter_us = v.parse().unwrap_or(0),
                "InactiveEnterTimestampMonotonic" => t.inactive_enter_us = v.parse().unwrap_or(0),
                "FragmentPath" => t.fragment = v.to_string(),
                _ => {}
            }
        }
        Ok(t)
    }

    /// The host's journal, read from outside (works while it is down too).
    pub fn journal(&self, host: &str, args: &[&str]) -> anyhow::Result<String> {
        self.hosts.journal(host, args)
    }

    /// What `host`'s systemd logged about `unit` (every boot), oldest first: the
    /// CLOCK_MONOTONIC time in µs (comparable across hosts, like [`UnitTimes`]) and the
    /// message.
    pub fn unit_journal(&self, host: &str, unit: &str) -> anyhow::Result<Vec<(u64, String)>> {
        let text = self.journal(host, &["-u", unit, "-o", "json"])?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("journal line {line:?}"))?;
            let at = v
                .get("__MONOTONIC_TIMESTAMP")
                .and_then(|t| t.as_str())
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let msg = v.get("MESSAGE").and_then(|m| m.as_str()).unwrap_or_default();
            out.push((at, msg.to_string()));
        }
        Ok(out)
    }

    /// When `host`'s systemd last finished stopping `unit` ("Stopped ..." or
    /// "Deactivated"), per its journal; `None` if it never did.
    pub fn stopped_at(&self, host: &str, unit: &str) -> anyhow::Result<Option<u64>> {
        Ok(self
            .unit_journal(host, unit)?
            .into_iter()
            .rev()
            .find(|(_, m)| {
                m.starts_with("Stopped ") || m.contains("Deactivated successfully") || m.contains("Failed with result")
            })
            .map(|(at, _)| at))
    }

    /// Lines of `unit`'s journal on `host` that systemd writes when it stops or starts the
    /// unit ("Stopping", "Stopped", "Deactivated", "Started"), from its current boot.
    pub fn lifecycle_lines(&self, host: &str, unit: &str) -> anyhow::Result<Vec<String>> {
        let j = self.journal(host, &["-b", "0", "-u", unit, "-o", "short-monotonic", "--no-hostname"])?;
        Ok(j.lines()
            .filter(|l| {
                ["Stopping", "Stopped", "Deactivated", "Started", "Failed"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .map(str::to_string)
            .collect())
    }

    /// Runs `f` while a thread samples [`RealCluster::live_copies`] of `patterns` every
    /// `every` (back to back if a sample takes longer); returns `f`'s result and the
    /// samples. A sample that failed (a host crashed mid-sample) is left out.
    pub fn sample_while<T>(&self, patterns: &[&str], every: Duration, f: impl FnOnce() -> T) -> (T, Samples) {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let mut samples = Samples::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    match self.live_copies(patterns) {
                        Ok(copies) => samples.taken.push(Sample {
                            at: started - t0,
                            copies,
                        }),
                        Err(_) => samples.failed += 1,
                    }
                    if let Some(rest) = every.checked_sub(started.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
                samples
            });
            // Stops the sampler also when `f` panics, or the scope would wait for it forever.
            struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let guard = StopOnDrop(&stop);
            let out = f();
            drop(guard);
            let samples = sampler.join().unwrap_or_default();
            (out, samples)
        })
    }

    /// Tears everything down now, reporting what went wrong.
    pub fn teardown(self) -> anyhow::Result<()> {
        self.hosts.teardown()
    }
}

/// A unit running a shell loop (`Type=simple`), with `service` lines added to
/// `[Service]` and `xfleet` as its `[X-Fleet]` section.
pub fn shell_unit(description: &str, service: &str, xfleet: &str) -> String {
    format!(
        "[Unit]\nDescription={description}\n\n[Service]\nType=simple\n\
         ExecStart=/bin/sh -c 'while true; do sleep 1; done'\n{service}\n\n[X-Fleet]\n{xfleet}\n"
    )
}

/// One look at every live host: unit → hosts where it is in a live state.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since sampling began.
    pub at: Duration,
    pub copies: BTreeMap<String, Vec<String>>,
}

/// What [`RealCluster::sample_while`] saw.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub taken: Vec<Sample>,
    /// Samples that could not be completed.
    pub failed: usize,
}

impl Samples {
    /// Every (time, unit, hosts) where a unit was live on more than one host.
    pub fn duplicates(&self) -> Vec<(Duration, String, Vec<String>)> {
        let mut out = Vec::new();
        for s in &self.taken {
            for (u, hosts) in &s.copies {
                if hosts.len() > 1 {
                    out.push((s.at, u.clone(), hosts.clone()));
                }
            }
        }
        out
    }

    /// The longest time between two samples (the resolution of what was checked).
    pub fn max_gap(&self) -> Duration {
        self.taken
            .windows(2)
            .map(|w| w[1].at.saturating_sub(w[0].at))
            .max()
            .unwrap_or_default()
    }

    /// Samples in which `unit` was live nowhere.
    pub fn absent(&self, unit: &str) -> Vec<Duration> {
        self.taken
            .iter()
            .filter(|s| !s.copies.contains_key(unit))
            .map(|s| s.at)
            .collect()
    }
}
