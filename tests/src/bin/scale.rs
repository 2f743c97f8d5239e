//! `scale`: 1,000 machines and 10,000 units through the real control plane (issue 7).
//!
//! Runs a real coordinator cluster (3 member processes: real Raft, sled, gRPC on loopback)
//! and N simulated machines: the real agent code with the in-memory systemd, in a few child
//! processes of this program (`--agents-child`, 100 machines each by default). Then, in
//! order, it measures and prints:
//!
//! 1. convergence: submit + launch the units; time until every one runs (single units
//!    exactly once, global ones on every machine), as the agents report it;
//! 2. steady state: coordinator CPU and RSS, Raft entries/s and bytes written/s (the agents
//!    keep their leases alive meanwhile: a keepalive must not write the log);
//! 3. watch fan-out: one watcher per machine on its schedule prefix (as the agents watch);
//!    one unit changes; how many watchers woke;
//! 4. machine loss: one child process (its machines) is SIGKILLed; time until all their
//!    units run elsewhere; the scheduler's pass durations from the leader's log;
//! 5. leader failover: the leader is SIGKILLed; time until a unit launched right after
//!    is placed and running.
//!
//! `--quick` (100 machines, 1,000 units) is CI's smoke test: it checks correctness (every
//! unit running exactly once, after convergence and after the machine loss; one watcher
//! woken) and fails otherwise; its timings mean nothing in a debug build.
//! Recorded runs: BENCHMARKS.md ("Scale").

#[path = "../scale/agents.rs"]
mod agents;
#[path = "../scale/procstat.rs"]
mod procstat;
#[path = "../scale/workload.rs"]
mod workload;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use esfleet_agent::client::Client;
use esfleet_core::keys;
use esfleet_proto::fleet::{self as pb, fleet_client::FleetClient};
use esfleet_tests::{Flavor, Options, ProcessCluster};
use tokio::process::Child;
use tonic::transport::Channel;

use workload::{progress, Observed, Workload};

#[derive(Debug, Parser)]
#[command(about = "Scale bench: N simulated machines and M units through a real 3-member coordinator cluster")]
struct Args {
    /// 100 machines, 1,000 units, short phases; asserts correctness only (CI).
    #[arg(long)]
    quick: bool,
    /// Simulated machines [default: 1000; --quick: 100].
    #[arg(long)]
    machines: Option<usize>,
    /// Unit records [default: 10000; --quick: 1000].
    #[arg(long)]
    units: Option<usize>,
    /// Machines per child process; the machine-loss phase kills one process
    /// [default: 100; --quick: 10].
    #[arg(long)]
    per_process: Option<usize>,
    #[arg(long, default_value_t = 5)]
    zones: usize,
    #[arg(long, default_value_t = 20)]
    racks: usize,
    /// HTTP/2 connections per coordinator that a child's agents share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Length of the steady-state window [default: 20s; --quick: 3s].
    #[arg(long)]
    steady: Option<humantime::Duration>,
    /// Give up on a convergence after this long.
    #[arg(long, default_value = "300s")]
    timeout: humantime::Duration,
    /// Stop after the convergence phase (for finding the knee).
    #[arg(long)]
    converge_only: bool,
    /// The members' `--heartbeat-interval` (ms) [default: the member's, 100].
    #[arg(long)]
    heartbeat_interval: Option<u64>,
    /// The members' `--election-timeout` (ms) [default: the member's, 1000].
    #[arg(long)]
    election_timeout: Option<u64>,
    /// After everything else, churn (stop/start 100 units at a time) for this long and
    /// report the data dirs' growth.
    #[arg(long)]
    churn: Option<humantime::Duration>,
    /// Internal: run simulated machines (this program's child processes).
    #[arg(long, hide = true)]
    agents_child: bool,
    #[arg(long, hide = true, default_value = "")]
    endpoints: String,
    #[arg(long, hide = true, default_value_t = 0)]
    first: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    count: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.agents_child {
        // One thread: a child is one of several processes sharing two cores.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(agents::run(agents::Group {
            endpoints: args.endpoints.split(',').map(str::to_string).collect(),
            first: args.first,
            count: args.count,
            zones: args.zones,
            racks: args.racks,
            connections: args.connections,
        }));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

/// The running simulation.
struct Sim {
    cluster: ProcessCluster,
    /// Child processes and their machine ranges.
    children: Vec<(Child, std::ops::Range<usize>)>,
    live: BTreeSet<String>,
    work: Workload,
    fleet: FleetClient<Channel>,
    kv: Client,
    quick: bool,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let machines = args.machines.unwrap_or(if args.quick { 100 } else { 1000 });
    let units = args.units.unwrap_or(if args.quick { 1000 } else { 10_000 });
    let per_process = args.per_process.unwrap_or(if args.quick { 10 } else { 100 }).max(1);
    let steady = args
        .steady
        .map(Duration::from)
        .unwrap_or(Duration::from_secs(if args.quick { 3 } else { 20 }));
    println!(
        "scale: {machines} machines ({} zones x {} racks) in {} processes, {units} units, 3 coordinators",
        args.zones,
        args.racks,
        machines.div_ceil(per_process)
    );

    let options = Options {
        heartbeat_interval_ms: args.heartbeat_interval,
        election_timeout_ms: args.election_timeout,
        ..Options::default()
    };
    let cluster = ProcessCluster::start_with(Flavor::Esfleet, 3, options).await?;
    let endpoints = cluster.endpoints();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut first = 0;
    while first < machines {
        let count = per_process.min(machines - first);
        let child = tokio::process::Command::new(&exe)
            .args(["--agents-child", "--endpoints", &endpoints.join(",")])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args(["--zones", &args.zones.to_string(), "--racks", &args.racks.to_string()])
            .args(["--connections", &args.connections.to_string()])
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a child process of simulated machines")?;
        children.push((child, first..first + count));
        first += count;
    }
    let channel = Channel::from_shared(endpoints[0].clone())?.connect().await?;
    let fleet = FleetClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let mut sim = Sim {
        live: (0..machines).map(agents::machine_id).collect(),
        cluster,
        children,
        work: Workload::new(units, machines),
        fleet,
        kv: Client::new(endpoints.clone(), Duration::from_secs(10)),
        quick: args.quick,
    };

    let t = Instant::now();
    loop {
        let kvs = read(&mut sim.kv, keys::MACHINES).await?;
        if kvs.len() == machines {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(120),
            "only {} of {machines} machines registered after 120 s",
            kvs.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("registered: {machines} machines in {}", secs(t.elapsed()));

    converge(&mut sim, args.timeout.into()).await?;
    if args.converge_only {
        return Ok(());
    }
    steady_state(&mut sim, steady).await?;
    fan_out(&mut sim).await?;
    commands(&mut sim).await?;
    machine_loss(&mut sim, args.timeout.into()).await?;
    failover(&mut sim).await?;
    if let Some(d) = args.churn {
        churn(&mut sim, d.into()).await?;
    }
    Ok(())
}

/// Reads every key under `prefix`, retrying for a while (a busy or changing leader answers
/// "no leader" or times out now and then; the bench waits that out like an agent would).
async fn read(kv: &mut Client, prefix: &str) -> anyhow::Result<Vec<esfleet_proto::mvccpb::KeyValue>> {
    let t = Instant::now();
    loop {
        match kv.range_prefix(prefix).await {
            Ok((kvs, _)) => return Ok(kvs),
            Err(e) if t.elapsed() < Duration::from_secs(30) => {
                eprintln!("  (read of {prefix} failed, retrying: {e})");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {prefix} for 30 s")),
        }
    }
}

/// Reads the agents' reports.
async fn observe(sim: &mut Sim) -> anyhow::Result<Observed> {
    let kvs = read(&mut sim.kv, keys::STATES).await?;
    Ok(Observed::from_states(&kvs))
}

/// Polls until converged (or `timeout`); returns the time and the last progress.
async fn wait_converged(sim: &mut Sim, since: Instant, timeout: Duration, what: &str) -> anyhow::Result<Duration> {
    let mut last_print = Instant::now();
    loop {
        let o = observe(sim).await?;
        let p = progress(&sim.work, &o, &sim.live);
        if p.done() {
            return Ok(since.elapsed());
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!(
                "  {what}: {}/{} running, {} duplicates, {} on dead machines, {} other states ({:.0} s)",
                p.good,
                p.expected,
                p.duplicates,
                p.on_dead,
                o.other,
                since.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if since.elapsed() > timeout {
            bail!("{what}: not converged after {}: {p:?}", secs(timeout));
        }
        tokio::time::sleep(Duration::from_millis(if sim.quick { 200 } else { 500 })).await;
    }
}

/// Checks that every unit runs exactly where it should, from the schedule and the states.
async fn verify(sim: &mut Sim, what: &str) -> anyhow::Result<()> {
    let o = observe(sim).await?;
    let p = progress(&sim.work, &o, &sim.live);
    ensure!(p.done(), "{what}: not every unit runs exactly once: {p:?}");
    let sched = read(&mut sim.kv, keys::SCHEDULE).await?;
    let mut placed: std::collections::BTreeMap<String, usize> = Default::default();
    for kv in &sched {
        let key = String::from_utf8_lossy(&kv.key);
        if let Some((m, u)) = keys::split_two(&key, keys::SCHEDULE) {
            ensure!(sim.live.contains(m), "{what}: {u} still scheduled on lost machine {m}");
            *placed.entry(u.to_string()).or_default() += 1;
        }
    }
    for u in &sim.work.singles {
        let n = placed.get(u).copied().unwrap_or(0);
        ensure!(n == 1, "{what}: {u} is scheduled on {n} machines");
    }
    println!(
        "  check: {} units scheduled and running exactly once, {} global placements",
        sim.work.singles.len(),
        p.expected - sim.work.singles.len()
    );
    Ok(())
}

async fn converge(sim: &mut Sim, timeout: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut batch = Vec::new();
    let all: Vec<pb::UnitFile> = sim.work.templates.iter().chain(&sim.work.instances).cloned().collect();
    for u in all {
        batch.push(u);
        if batch.len() == 1000 {
            submit(sim, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        submit(sim, batch).await?;
    }
    let submitted = t.elapsed();
    // What `esfleet start` does after launching: follow every unit on a WatchUnitStates
    // stream until it runs (this costs the member serving it; it is part of the load).
    let mut names: Vec<String> = sim.work.singles.iter().cloned().collect();
    names.extend(workload::GLOBALS.iter().map(|g| g.to_string()));
    names.truncate(10_000);
    let cli = tokio::spawn(follow_until_running(sim.fleet.clone(), names, sim.live.len(), t));
    let cpu0: Vec<(usize, u32, f64)> = pids(sim)
        .into_iter()
        .map(|(i, p)| (i, p, procstat::cpu_secs(p).unwrap_or(0.0)))
        .collect();
    set_desired(sim, Workload::launch_globs(), "launched").await?;
    let launched = t.elapsed();
    let took = wait_converged(sim, t, timeout, "convergence").await?;
    println!(
        "1. convergence: {} units ({} placements) running in {} (submit {}, launch {})",
        sim.work.unit_count(),
        sim.work.singles.len() + workload::GLOBALS.len() * sim.live.len(),
        secs(took),
        secs(submitted),
        secs(launched - submitted)
    );
    match tokio::time::timeout(timeout, cli).await {
        Ok(Ok(Ok(d))) => println!(
            "   WatchUnitStates stream (as `esfleet start` follows it) saw all running after {}",
            secs(d)
        ),
        Ok(Ok(Err(e))) => println!("   WatchUnitStates stream failed: {e:#}"),
        Ok(Err(e)) => println!("   WatchUnitStates task failed: {e}"),
        Err(_) => println!("   WatchUnitStates stream: not all running after {}", secs(timeout)),
    }
    let cpu: Vec<String> = cpu0
        .iter()
        .map(|(i, p, c)| {
            format!(
                "{} {:.1} s",
                sim.cluster.name(*i),
                procstat::cpu_secs(*p).unwrap_or(0.0) - c
            )
        })
        .collect();
    println!("   members' CPU from launch to the stream's end: {}", cpu.join(", "));
    print_passes(sim, 0, "   scheduler passes during convergence")?;
    verify(sim, "after convergence").await
}

/// Submits (idempotent: an unchanged unit is left alone), retrying transient errors.
/// Follows `names` on one WatchUnitStates stream until every one is launched and running
/// on all its placements (a global unit on `machines` machines); returns the time since `t`.
async fn follow_until_running(
    mut fleet: FleetClient<Channel>,
    names: Vec<String>,
    machines: usize,
    t: Instant,
) -> anyhow::Result<Duration> {
    let mut stream = fleet
        .watch_unit_states(pb::WatchUnitStatesRequest { names: names.clone() })
        .await?
        .into_inner();
    let mut running: std::collections::BTreeMap<String, bool> = names.into_iter().map(|n| (n, false)).collect();
    let mut left = running.len();
    while let Some(msg) = stream.message().await? {
        for u in msg.units {
            let want = if workload::GLOBALS.contains(&u.name.as_str()) {
                machines
            } else {
                1
            };
            let ok = u.state == "launched"
                && u.placements.len() == want
                && u.placements.iter().all(|p| p.active == "active" && p.sub == "running");
            if let Some(was) = running.get_mut(&u.name) {
                if *was != ok {
                    *was = ok;
                    if ok {
                        left -= 1;
                    } else {
                        left += 1;
                    }
                }
            }
        }
        if left == 0 {
            return Ok(t.elapsed());
        }
    }
    bail!("the stream ended with {left} units not running")
}

async fn submit(sim: &mut Sim, units: Vec<pb::UnitFile>) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let req = pb::SubmitUnitsRequest {
            units: units.clone(),
            replace: false,
        };
        match sim.fleet.submit_units(req).await {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() < Duration::from_secs(30) => eprintln!("  (submit failed, retrying: {e})"),
            Err(e) => return Err(e).context("submitting units"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets the desired state (idempotent), retrying transient errors.
async fn set_desired(sim: &mut Sim, names: Vec<String>, desired: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let req = pb::SetDesiredStateRequest {
            names: names.clone(),
            desired: desired.into(),
        };
        match sim.fleet.set_desired_state(req).await {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() < Duration::from_secs(30) => eprintln!("  (set {desired} failed, retrying: {e})"),
            Err(e) => return Err(e).with_context(|| format!("setting {names:?} {desired}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The member processes' pids (running ones).
fn pids(sim: &Sim) -> Vec<(usize, u32)> {
    sim.cluster
        .running()
        .into_iter()
        .filter_map(|i| procstat::pid_by_arg(sim.cluster.data_dir(i)).map(|p| (i, p)))
        .collect()
}

async fn steady_state(sim: &mut Sim, window: Duration) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = sim.cluster.leader().await?;
    let pids = pids(sim);
    let mut etcd = sim.cluster.client_for(leader).await;
    let idx0 = etcd.status().await?.raft_index();
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|(_, p)| procstat::cpu_secs(*p).unwrap_or(0.0))
        .collect();
    let wb0: Vec<Option<u64>> = pids.iter().map(|(_, p)| procstat::write_bytes(*p)).collect();
    let t = Instant::now();
    let mut peak = vec![0.0f64; pids.len()];
    while t.elapsed() < window {
        for (k, (_, p)) in pids.iter().enumerate() {
            peak[k] = peak[k].max(procstat::rss_mib(*p).unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let wall = t.elapsed().as_secs_f64();
    let idx1 = etcd.status().await?.raft_index();
    println!(
        "2. steady state over {wall:.1} s ({} machines keeping leases alive, ~{} keepalives/s):",
        sim.live.len(),
        sim.live.len()
    );
    println!(
        "   raft log: {} entries ({:.2}/s)",
        idx1 - idx0,
        (idx1 - idx0) as f64 / wall
    );
    for (k, (i, p)) in pids.iter().enumerate() {
        let cpu = procstat::cpu_secs(*p).unwrap_or(0.0) - cpu0[k];
        let wb = match (wb0[k], procstat::write_bytes(*p)) {
            (Some(a), Some(b)) => format!("{:.1} KiB/s written", (b - a) as f64 / 1024.0 / wall),
            _ => "bytes written: unreadable".into(),
        };
        println!(
            "   member {}{}: CPU {:.1}% of one core, RSS {:.0} MiB (peak {:.0}), {wb}, data dir {:.1} MiB",
            sim.cluster.name(*i),
            if *i == leader { " (leader)" } else { "" },
            100.0 * cpu / wall,
            procstat::rss_mib(*p).unwrap_or(0.0),
            peak[k],
            procstat::dir_bytes(sim.cluster.data_dir(*i)) as f64 / (1 << 20) as f64
        );
    }
    let agents_cpu: f64 = sim
        .children
        .iter()
        .filter_map(|(c, _)| c.id())
        .filter_map(|p| procstat::cpu_secs(p).ok())
        .sum();
    println!("   (agents' processes: {agents_cpu:.1} s CPU in total since start)");
    Ok(())
}

/// What the CLI's read commands cost at this size (fleet's issue #1340: `fleetctl
/// list-units` took minutes at 2,500 units): each RPC 5 times, median and slowest.
async fn commands(sim: &mut Sim) -> anyhow::Result<()> {
    const TIMES: usize = 5;
    let one = sim.work.singles.iter().next().cloned().context("no unit")?;
    let mut lines = Vec::new();
    for what in ["GetUnit", "ListUnitFiles", "ListUnits", "ListMachines"] {
        let mut took = Vec::new();
        let mut items = 0;
        for _ in 0..TIMES {
            let mut f = sim.fleet.clone();
            let t = Instant::now();
            items = match what {
                "GetUnit" => {
                    let r = f.get_unit(pb::GetUnitRequest { name: one.clone() }).await?.into_inner();
                    usize::from(r.unit.is_some())
                }
                "ListUnitFiles" => f
                    .list_unit_files(pb::ListUnitFilesRequest {})
                    .await?
                    .into_inner()
                    .units
                    .len(),
                "ListUnits" => f.list_units(pb::ListUnitsRequest {}).await?.into_inner().units.len(),
                _ => f
                    .list_machines(pb::ListMachinesRequest {})
                    .await?
                    .into_inner()
                    .machines
                    .len(),
            };
            took.push(t.elapsed());
        }
        took.sort_unstable();
        lines.push(format!(
            "{what} ({items} rows) p50 {:.0} ms, max {:.0} ms",
            took[TIMES / 2].as_secs_f64() * 1000.0,
            took[TIMES - 1].as_secs_f64() * 1000.0
        ));
    }
    println!("7. CLI reads, {TIMES} each: {}", lines.join("; "));
    Ok(())
}

async fn fan_out(sim: &mut Sim) -> anyhow::Result<()> {
    // One watcher per live machine on its schedule prefix, over a few connections.
    let endpoints = sim.cluster.endpoints();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(ProcessCluster::connect(&endpoints).await);
    }
    let woken: Arc<Vec<AtomicUsize>> = Arc::new((0..sim.live.len()).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    let live: Vec<String> = sim.live.iter().cloned().collect();
    for (k, m) in live.iter().enumerate() {
        let c = &mut clients[k % 8];
        let prefix = keys::schedule_prefix(m);
        let mut stream = c
            .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
            .await
            .context("opening a fan-out watcher")?;
        let woken = woken.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(r)) = stream.message().await {
                if !r.events().is_empty() {
                    woken[k].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |w: &Vec<AtomicUsize>| {
        (
            w.iter().filter(|a| a.load(Ordering::Relaxed) > 0).count(),
            w.iter().map(|a| a.load(Ordering::Relaxed)).sum::<usize>(),
        )
    };
    let before = count(&woken);
    set_desired(sim, vec!["cache@1.service".into()], "inactive").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = count(&woken);
    for t in tasks {
        t.abort();
    }
    println!(
        "5. watch fan-out: {} schedule watchers (one per machine); one unit stopped: {} watcher(s) woke ({} responses)",
        live.len(),
        after.0 - before.0,
        after.1 - before.1
    );
    ensure!(
        after.0 - before.0 == 1,
        "one schedule change must wake exactly one machine's watcher, woke {}",
        after.0 - before.0
    );
    // Back to running, so the later phases start from everything converged.
    set_desired(sim, vec!["cache@1.service".into()], "launched").await?;
    wait_converged(sim, Instant::now(), Duration::from_secs(60), "cache@1 back").await?;
    Ok(())
}

/// Byte offset of the end of member `i`'s log (to read what a phase logged).
fn log_len(sim: &Sim, i: usize) -> u64 {
    std::fs::metadata(sim.cluster.log_path(i)).map_or(0, |m| m.len())
}

/// Prints the scheduler pass durations every running member logged after `from` (bytes).
fn print_passes(sim: &Sim, from: u64, what: &str) -> anyhow::Result<()> {
    let mut ms = Vec::new();
    let mut reads = Vec::new();
    let mut plans = Vec::new();
    for i in sim.cluster.running() {
        let text = std::fs::read(sim.cluster.log_path(i)).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
        for line in text.lines().filter(|l| l.contains("scheduler pass")) {
            let field = |name: &str| -> Option<u64> {
                let at = line.find(&format!("{name}="))? + name.len() + 1;
                line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            };
            if let Some(t) = field("total_ms") {
                ms.push(t);
                reads.push(field("read_ms").unwrap_or(0));
                plans.push(field("plan_ms").unwrap_or(0));
            }
        }
    }
    if ms.is_empty() {
        println!("{what}: none logged");
        return Ok(());
    }
    let mut sorted = ms.clone();
    sorted.sort_unstable();
    let sum: u64 = ms.iter().sum();
    println!(
        "{what}: {} logged (with actions or ≥100 ms), total {} ms; p50 {} ms, max {} ms; mean read {} ms, mean plan {} ms",
        ms.len(),
        sum,
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        reads.iter().sum::<u64>() / ms.len() as u64,
        plans.iter().sum::<u64>() / ms.len() as u64,
    );
    Ok(())
}

async fn machine_loss(sim: &mut Sim, timeout: Duration) -> anyhow::Result<()> {
    let leader = sim.cluster.leader().await?;
    let from = log_len(sim, leader);
    let (mut child, range) = sim.children.remove(0);
    let lost = range.len();
    child.start_kill()?;
    let t = Instant::now();
    child.wait().await?;
    for i in range {
        sim.live.remove(&agents::machine_id(i));
    }
    let took = wait_converged(sim, t, timeout, "machine loss").await?;
    println!(
        "3. machine loss: {lost} machines killed at once; all their units running elsewhere after {} \
         (lease TTL 5 s + loss margin 1 s of that is by design)",
        secs(took)
    );
    print_passes(sim, from, "   leader's scheduler passes since the kill")?;
    verify(sim, "after machine loss").await
}

async fn failover(sim: &mut Sim) -> anyhow::Result<()> {
    let unit = "cache@2.service";
    set_desired(sim, vec![unit.into()], "inactive").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = sim.cluster.leader().await?;
    let others: Vec<String> = sim
        .cluster
        .running()
        .into_iter()
        .filter(|&i| i != leader)
        .map(|i| sim.cluster.endpoint(i))
        .collect();
    sim.cluster.kill(leader)?;
    let t = Instant::now();
    // The Fleet client talked to member 0, which may be the one killed: use the others.
    let channel = Channel::from_shared(others[0].clone())?.connect().await?;
    sim.fleet = FleetClient::new(channel).max_decoding_message_size(256 << 20);
    sim.kv = Client::new(others, Duration::from_secs(10));
    loop {
        let r = sim
            .fleet
            .set_desired_state(pb::SetDesiredStateRequest {
                names: vec![unit.into()],
                desired: "launched".into(),
            })
            .await;
        if r.is_ok() {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "no write accepted 60 s after the leader was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = t.elapsed();
    let new_leader = sim.cluster.leader().await?;
    let from = log_len(sim, new_leader);
    loop {
        let kvs = read(&mut sim.kv, keys::SCHEDULE).await?;
        let placed = kvs
            .iter()
            .any(|kv| String::from_utf8_lossy(&kv.key).ends_with(&format!("/{unit}")));
        if placed {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "{unit} not placed 60 s after the leader was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let placed = t.elapsed();
    let all = wait_converged(sim, t, Duration::from_secs(120), "after failover").await?;
    println!(
        "4. leader failover: write accepted {} after the kill, unit placed by the new scheduler after {}, \
         everything running after {}",
        secs(accepted),
        secs(placed),
        secs(all)
    );
    print_passes(sim, from, "   new leader's scheduler passes")?;
    verify(sim, "after failover").await
}

async fn churn(sim: &mut Sim, length: Duration) -> anyhow::Result<()> {
    let dirs: Vec<usize> = sim.cluster.running();
    let size = |sim: &Sim| -> u64 {
        dirs.iter()
            .map(|&i| procstat::dir_bytes(sim.cluster.data_dir(i)))
            .max()
            .unwrap_or(0)
    };
    let t = Instant::now();
    let s0 = size(sim);
    let mut round = 0usize;
    let groups = sim.work.singles.iter().filter(|u| u.starts_with("es")).count() / workload::GROUP_SIZE;
    println!(
        "6. churn for {}: start data dir {:.1} MiB",
        secs(length),
        s0 as f64 / 1048576.0
    );
    while t.elapsed() < length {
        let g = (round * 7) % groups.saturating_sub(10).max(1);
        let names: Vec<String> = (g..g + 10).map(|g| format!("es{g}@*.service")).collect();
        for desired in ["inactive", "launched"] {
            set_desired(sim, names.clone(), desired).await?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        round += 1;
        if round.is_multiple_of(10) {
            println!(
                "   {:.0} s: {round} rounds (100 units stopped and started each), largest data dir {:.1} MiB",
                t.elapsed().as_secs_f64(),
                size(sim) as f64 / 1048576.0
            );
        }
    }
    let s1 = size(sim);
    let minutes = t.elapsed().as_secs_f64() / 60.0;
    println!(
        "   churn done: {round} rounds; largest data dir {:.1} → {:.1} MiB ({:+.1} MiB/min)",
        s0 as f64 / 1048576.0,
        s1 as f64 / 1048576.0,
        (s1 as f64 - s0 as f64) / 1048576.0 / minutes
    );
    Ok(())
}
