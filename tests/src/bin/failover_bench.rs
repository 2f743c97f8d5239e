//! `failover_bench`: failover and start-up times of a real esfleet cluster on simulated
//! hosts ([`RealCluster`]: network namespaces + systemd-nspawn, real systemd per host),
//! with the agents' and coordinators' default settings (lease 5 s, fence at 4 s, loss
//! margin 1 s). Needs root and systemd-nspawn.
//!
//! Measured:
//! - crash failover: a worker host running units crashes (cable pulled, PID 1 killed);
//!   the time from the crash to every one of its units active on another host, per
//!   systemd on the hosts (polled every `--poll`); p50 and max over `--runs` runs. The
//!   crashed host is rebooted and its agent restarted between runs.
//! - start of N units: `esfleet start` of `--start-units` unit files until the CLI returns
//!   (it waits until every unit is active/running), checked with `list-units`.
//!
//! It prints what it measured as Markdown and exits non-zero if a run failed. Figures are
//! from debug builds unless the binaries were built otherwise; the machine's load matters.
//! Recorded runs: BENCHMARKS.md at the repository root.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use esfleet_tests::realcluster::{shell_unit, wait_for, RealCluster, Spec, PATIENCE};

#[derive(Debug, Parser)]
#[command(about = "Failover and start-up times of a real esfleet cluster on simulated hosts")]
struct Args {
    /// Crash-failover runs.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Worker hosts (agents only) besides the three coordinator hosts.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Units started before each crash run (spread over all hosts: with the defaults, three
    /// per host, so the crashed host loses three).
    #[arg(long, default_value_t = 18)]
    units: usize,
    /// Units in the start measurement.
    #[arg(long, default_value_t = 30)]
    start_units: usize,
    /// Start measurements.
    #[arg(long, default_value_t = 3)]
    start_runs: usize,
    /// How often ground truth is polled during a failover.
    #[arg(long, default_value = "50ms")]
    poll: humantime::Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        eprintln!("failover_bench needs root (network namespaces, systemd-nspawn)");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover_bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn run(args: &Args) -> anyhow::Result<()> {
    let mut names: Vec<String> = vec!["c1".into(), "c2".into(), "c3".into()];
    names.extend((1..=args.workers).map(|i| format!("w{i}")));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let c = RealCluster::boot(Spec::new(&refs)).context("booting the cluster")?;
    eprintln!("booted {} hosts in {:?}", names.len(), t0.elapsed());

    let mut failovers = Vec::new();
    let mut reboots = Vec::new();
    for run in 1..=args.runs {
        let (took, lost, reboot) = crash_run(&c, args, run).with_context(|| format!("crash run {run}"))?;
        eprintln!("run {run}: all {lost} unit(s) of the crashed host active elsewhere after {took:?}");
        failovers.push(took);
        reboots.push(reboot);
    }

    let mut starts = Vec::new();
    for run in 1..=args.start_runs {
        let took = start_run(&c, args, run).with_context(|| format!("start run {run}"))?;
        eprintln!(
            "start run {run}: {} units active/running after {took:?}",
            args.start_units
        );
        starts.push(took);
    }
    c.teardown()?;

    failovers.sort();
    starts.sort();
    reboots.sort();
    println!(
        "## failover_bench ({} hosts: 3 coordinator + {} worker; default timings: lease 5 s, fence 4 s, loss margin 1 s)\n",
        names.len(),
        args.workers
    );
    println!("| measurement | runs | p50 | max | min |");
    println!("|---|---|---|---|---|");
    println!(
        "| host crash → every unit of it active elsewhere ({} units over {} hosts per run, polled every {}) | {} | {} | {} | {} |",
        args.units,
        names.len(),
        args.poll,
        failovers.len(),
        secs(percentile(&failovers, 0.5)),
        secs(*failovers.last().unwrap_or(&Duration::ZERO)),
        secs(*failovers.first().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "| `esfleet start` of {} units → all active/running | {} | {} | {} | {} |",
        args.start_units,
        starts.len(),
        secs(percentile(&starts, 0.5)),
        secs(*starts.last().unwrap_or(&Duration::ZERO)),
        secs(*starts.first().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "| crashed host reboot → its machine up again (agent registered) | {} | {} | {} | {} |",
        reboots.len(),
        secs(percentile(&reboots, 0.5)),
        secs(*reboots.last().unwrap_or(&Duration::ZERO)),
        secs(*reboots.first().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "\nper-run failover times: {:?}",
        failovers.iter().map(|d| secs(*d)).collect::<Vec<_>>()
    );
    Ok(())
}

/// Starts `--units` units, crashes a worker that runs some, and times until each of them
/// is active on another host; then cleans up (destroy, reboot, agent back).
fn crash_run(c: &RealCluster, args: &Args, run: usize) -> anyhow::Result<(Duration, usize, Duration)> {
    let names: Vec<String> = (1..=args.units).map(|i| format!("fo{run}-{i}.service")).collect();
    let text = shell_unit("failover bench unit", "Restart=on-failure", "");
    let units: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), text.as_str())).collect();
    c.start_units(&units, &["--timeout", "120s"])?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let at = c.wait_units_running(&refs, PATIENCE)?;
    let mut per_host: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (u, h) in &at {
        per_host.entry(h.as_str()).or_default().push(u.as_str());
    }
    let Some((victim, lost)) = per_host
        .iter()
        .filter(|(h, _)| h.starts_with('w'))
        .max_by_key(|(_, us)| us.len())
        .map(|(h, us)| (h.to_string(), us.clone()))
    else {
        bail!("no worker runs a unit: {at:?}");
    };
    let pattern = format!("fo{run}-*");
    let crash0 = Instant::now();
    c.crash(&victim)?;
    let took = wait_for(
        "the crashed host's units active elsewhere",
        PATIENCE,
        args.poll.into(),
        || {
            let copies = c.live_copies(&[&pattern])?;
            for (u, hs) in &copies {
                if hs.len() > 1 {
                    bail!("{u} runs twice: {hs:?}");
                }
            }
            Ok(lost
                .iter()
                .all(|u| copies.get(*u).is_some_and(|hs| hs.len() == 1 && hs[0] != victim))
                .then(|| crash0.elapsed()))
        },
    )?;
    c.esfleet_ok(&["destroy", "--timeout", "120s", &pattern])?;
    let r0 = Instant::now();
    c.reboot(&victim)?;
    c.wait_machines_up(&[&victim], PATIENCE)?;
    Ok((took, lost.len(), r0.elapsed()))
}

/// `esfleet start` of `--start-units` units, timed until it returns; then destroyed.
fn start_run(c: &RealCluster, args: &Args, run: usize) -> anyhow::Result<Duration> {
    let names: Vec<String> = (1..=args.start_units)
        .map(|i| format!("st{run}-{i:02}.service"))
        .collect();
    let text = shell_unit("start bench unit", "Restart=on-failure", "");
    let units: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), text.as_str())).collect();
    let paths = c.write_units(&units)?;
    let mut cli = vec!["start", "--timeout", "300s"];
    cli.extend(paths.iter().map(String::as_str));
    let t0 = Instant::now();
    c.esfleet_ok(&cli)?;
    let took = t0.elapsed();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    c.wait_units_running(&refs, PATIENCE)?;
    c.esfleet_ok(&["destroy", "--timeout", "120s", &format!("st{run}-*")])?;
    Ok(took)
}
