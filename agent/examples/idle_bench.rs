//! Idle cost of an agent with many units: starts an in-process coordinator, schedules N
//! units (default 500) to one machine, runs `esfleet-agent --fake-systemd` as a separate
//! process against it, waits until every unit reports active, then samples the *agent
//! process's* CPU time and RSS (from /proc/<pid>/stat and /proc/<pid>/status) over a
//! window (default 20 s) and prints them. The coordinator runs in this process, so its
//! cost is not in the figures.
//!
//! `cargo build -p esfleet-agent --bin esfleet-agent --example idle_bench && target/debug/examples/idle_bench [units] [seconds]`
//! (a release build gives the figures that matter: `--release` for both).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use esfleet_agent::client::{self, Client};
use esfleet_core::keys;
use esfleet_core::model::{unit_hash, DesiredState, ScheduleEntry};
use esfleet_core::UnitName;
use esfleet_proto::etcdserverpb::request_op;
use tokio::net::TcpListener;

fn ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ").context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?) // utime + stime
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let units: usize = args.get(1).map_or(Ok(500), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let dir = tempfile::tempdir()?;

    let c = TcpListener::bind("127.0.0.1:0").await?;
    let p = TcpListener::bind("127.0.0.1:0").await?;
    let (curl, purl) = (
        format!("http://{}", c.local_addr()?),
        format!("http://{}", p.local_addr()?),
    );
    let cfg = esfleet_coordinator::config::Flags::try_parse_from([
        "esfleet-coordinator",
        "--name",
        "m0",
        "--data-dir",
        dir.path().join("m0").to_str().context("path")?,
        "--listen-client-urls",
        &curl,
        "--listen-peer-urls",
        &purl,
        // The schedule is written by hand below; a scheduler would remove it.
        "--scheduler=false",
    ])?
    .validate()?;
    let coordinator = esfleet_coordinator::server::start(cfg, c, p).await?;

    let machine = "0123456789abcdef0123456789abcdef";
    let mut kv = Client::new(vec![curl.clone()], Duration::from_secs(5));
    let text = "[Service]\nExecStart=/bin/sleep infinity\n";
    let entries: Vec<ScheduleEntry> = (0..units)
        .map(|i| ScheduleEntry {
            unit: UnitName::new(&format!("bench@{i}.service")).expect("valid"),
            text: text.into(),
            hash: unit_hash(text),
            desired: DesiredState::Launched,
            generation: 1,
            fence: Default::default(),
            enable: false,
            env: [("ESFLEET_ZONE".to_string(), "a".to_string())].into(),
            files: Default::default(),
        })
        .collect();
    for chunk in entries.chunks(100) {
        let ops = chunk
            .iter()
            .map(|e| {
                request_op::Request::RequestPut(client::put(
                    &keys::schedule(machine, &e.unit),
                    &serde_json::to_vec(e).expect("json"),
                    0,
                ))
            })
            .collect();
        kv.txn(client::txn(vec![], ops, vec![])).await?;
    }

    let id_file = dir.path().join("machine-id");
    std::fs::write(&id_file, format!("{machine}\n"))?;
    let bin = std::env::current_exe()?
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("esfleet-agent"))
        .context("binary path")?;
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "--fake-systemd",
            "--endpoints",
            &curl,
            "--listen",
            "127.0.0.1:0",
            "--address",
            "127.0.0.1",
        ])
        .arg("--machine-id-file")
        .arg(&id_file)
        .args(["--log-level", "warn"])
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {} (build it first)", bin.display()))?;
    let pid = child.id().context("pid")?;

    let start = Instant::now();
    loop {
        let (kvs, _) = kv.range_prefix(&keys::states_prefix(machine)).await?;
        let active = kvs
            .iter()
            .filter(|kv| String::from_utf8_lossy(&kv.value).contains("\"active\":\"active\""))
            .count();
        if active == units {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("only {active} of {units} units active after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converge = start.elapsed();
    // Let the start-up work settle before measuring idle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let hz = 100.0; // USER_HZ on Linux
    let t0 = ticks(pid)?;
    let w0 = Instant::now();
    let mut peak_rss = rss_kib(pid)?;
    while w0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = peak_rss.max(rss_kib(pid)?);
    }
    let cpu = (ticks(pid)? - t0) as f64 / hz;
    let wall = w0.elapsed().as_secs_f64();
    println!("units:               {units}");
    println!(
        "converged in:        {:.2} s (all states active)",
        converge.as_secs_f64()
    );
    println!("idle window:         {wall:.1} s");
    println!(
        "agent idle CPU:      {:.3} % of one core ({cpu:.2} s CPU)",
        100.0 * cpu / wall
    );
    println!(
        "agent RSS:           {:.1} MiB (peak in window {:.1} MiB)",
        rss_kib(pid)? as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );

    child.kill().await.ok();
    coordinator.stop().await;
    Ok(())
}
