//! `bench`: runs one workload through one client (the `etcd-client` crate) against an esfleet
//! coordinator cluster and against Debian's etcd 3.4, each started here with the same flags on
//! loopback, and prints the figures side by side as a Markdown table.
//!
//! Measured, per system and cluster size:
//! - sequential put latency (p50/p99): one put at a time;
//! - concurrent put throughput: `--concurrency` puts in flight for `--duration`;
//! - linearizable get throughput: the same, with default (linearizable) single-key gets;
//! - watch delivery latency (p50/p99): `--watchers` watch streams on one prefix; for each put,
//!   from just before it is sent to each watcher receiving its event.
//!
//! It reports only what it measured. A system that fails to start or fails a request has its
//! cells marked FAILED with the reason, and the program exits non-zero.
//! Recorded runs: BENCHMARKS.md at the repository root.

#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/workload.rs"]
mod workload;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, ValueEnum};

use esfleet_tests::{Flavor, ProcessCluster};
use stats::{Latencies, Throughput};
use workload::{Measurements, Params};

#[derive(Debug, Parser)]
#[command(about = "Compare an esfleet coordinator cluster with etcd on the same workload")]
struct Args {
    /// Tiny counts and short phases: checks that the program runs (CI smoke test).
    /// The figures it prints mean nothing.
    #[arg(long)]
    quick: bool,
    /// Cluster sizes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    members: Vec<usize>,
    /// Systems to run, comma-separated, in this order for each cluster size.
    #[arg(long, value_delimiter = ',', default_value = "esfleet,etcd")]
    flavors: Vec<FlavorArg>,
    /// Sequential puts timed one by one [default: 2000; --quick: 20].
    #[arg(long)]
    seq_puts: Option<usize>,
    /// Length of each throughput phase, e.g. "5s" [default: 5s; --quick: 500ms].
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Requests in flight during the throughput phases.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// gRPC connections (clients) that requests and watchers are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Watchers, each on its own watch stream.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Puts whose delivery to every watcher is timed [default: 200; --quick: 5].
    #[arg(long)]
    watch_events: Option<usize>,
    /// Bytes per value written.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys for the concurrent puts and the gets [default: 1000; --quick: 200].
    #[arg(long)]
    key_space: Option<usize>,
    /// Times each system runs at each size; the table shows the median of each figure
    /// [default: 3; --quick: 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// A request slower than this fails the measurement, e.g. "10s".
    #[arg(long, default_value = "10s")]
    op_timeout: humantime::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FlavorArg {
    Esfleet,
    Etcd,
}

impl FlavorArg {
    fn flavor(self) -> Flavor {
        match self {
            FlavorArg::Esfleet => Flavor::Esfleet,
            FlavorArg::Etcd => Flavor::Etcd,
        }
    }

    fn name(self) -> &'static str {
        self.flavor().name()
    }
}

impl Args {
    fn params(&self) -> Params {
        let pick = |set: Option<usize>, full: usize, quick: usize| set.unwrap_or(if self.quick { quick } else { full });
        Params {
            warmup_puts: if self.quick { 5 } else { 200 },
            seq_puts: pick(self.seq_puts, 2000, 20),
            duration: self.duration.map(Into::into).unwrap_or(if self.quick {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(5)
            }),
            concurrency: self.concurrency.max(1),
            connections: self.connections.max(1),
            value_size: self.value_size,
            key_space: pick(self.key_space, 1000, 200).max(1),
            watchers: self.watchers.max(1),
            watch_events: pick(self.watch_events, 200, 5),
            op_timeout: self.op_timeout.into(),
        }
    }
}

struct Row {
    members: usize,
    flavor: FlavorArg,
    /// One per round.
    runs: Vec<Measurements>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    dedup(&mut args.members);
    dedup(&mut args.flavors);
    let params = args.params();
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", preamble(&args, &params, rounds));

    let mut rows: Vec<Row> = Vec::new();
    for &members in &args.members {
        for &flavor in &args.flavors {
            rows.push(Row {
                members,
                flavor,
                runs: Vec::new(),
            });
        }
    }
    for round in 1..=rounds {
        for &members in &args.members {
            // Alternate which system goes first, so neither always runs on a warmer (or
            // more tired) machine.
            let mut order = args.flavors.clone();
            if round % 2 == 0 {
                order.reverse();
            }
            for flavor in order {
                let tag = format!("round {round}/{rounds}: {} with {members} member(s)", flavor.name());
                eprintln!("bench: {tag}: running");
                let started = Instant::now();
                let mut result = runtime.block_on(run_one(flavor.flavor(), members, &params));
                eprintln!("bench: {tag}: {} [{:.0?}]", summary(&mut result), started.elapsed());
                if let Some(row) = rows.iter_mut().find(|r| r.members == members && r.flavor == flavor) {
                    row.runs.push(result);
                }
            }
        }
    }

    let (table, failures) = report(&mut rows, params.concurrency);
    println!("{table}");
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("FAILED measurements:");
        for f in &failures {
            println!("- {f}");
        }
        ExitCode::FAILURE
    }
}

/// Drops repeated entries, keeping the first of each.
fn dedup<T: PartialEq + Copy>(v: &mut Vec<T>) {
    let mut seen = Vec::with_capacity(v.len());
    v.retain(|x| {
        let new = !seen.contains(x);
        seen.push(*x);
        new
    });
}

/// One run's figures on one line, for the progress log.
fn summary(m: &mut Measurements) -> String {
    let f = figures(m);
    if f.is_empty() {
        return "FAILED".to_string();
    }
    format!(
        "seq put p50/p99 {}/{}, puts/s {} (p99 {}), gets/s {} (p99 {}), watch p50/p99 {}/{}",
        ms(f.seq_p50),
        ms(f.seq_p99),
        rate_str(f.put_rate),
        ms(f.put_p99),
        rate_str(f.get_rate),
        ms(f.get_p99),
        ms(f.watch_p50),
        ms(f.watch_p99),
    )
}

async fn run_one(flavor: Flavor, members: usize, params: &Params) -> Measurements {
    let cluster = match ProcessCluster::start(flavor, members).await {
        Ok(cluster) => cluster,
        Err(e) => return Measurements::all_failed(&format!("cluster did not start: {e:#}")),
    };
    let measurements = workload::run(&cluster.endpoints(), params).await;
    drop(cluster);
    measurements
}

fn preamble(args: &Args, p: &Params, rounds: usize) -> String {
    let mut s = String::new();
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(s, "# esfleet bench, {now}, {cpus} CPUs");
    if args.quick {
        let _ = writeln!(
            s,
            "--quick: smoke run with tiny counts; these figures are not a benchmark."
        );
    }
    if cfg!(debug_assertions) {
        let _ = writeln!(
            s,
            "client: bench itself is a DEBUG build (cargo build --release --bins for meaningful figures)"
        );
    }
    for flavor in &args.flavors {
        let _ = match flavor {
            FlavorArg::Etcd => writeln!(s, "etcd: {}", etcd_version()),
            FlavorArg::Esfleet => match Flavor::Esfleet.binary() {
                Ok(path) => {
                    let debug = path.components().any(|c| c.as_os_str() == "debug");
                    let note = if debug {
                        " (a DEBUG build: build with --release for meaningful figures)"
                    } else {
                        ""
                    };
                    writeln!(s, "esfleet: {}{note}", path.display())
                }
                Err(e) => writeln!(s, "esfleet: {e:#}"),
            },
        };
    }
    let _ = writeln!(
        s,
        "workload: {} sequential puts (after {} warm-up); throughput phases of {:?} with {} \
         requests in flight over {} connections, {} keys; {} watchers (one stream each), {} \
         timed puts; {}-byte values; every client connects to all members",
        p.seq_puts,
        p.warmup_puts,
        p.duration,
        p.concurrency,
        p.connections,
        p.key_space,
        p.watchers,
        p.watch_events,
        p.value_size,
    );
    let _ = writeln!(
        s,
        "{rounds} round(s), flavors alternating in order; each figure below is the median over \
         the rounds (a fresh cluster each run)"
    );
    let _ = writeln!(
        s,
        "watch latency: from just before the put is sent to each watcher receiving the event \
         (includes the put's commit)"
    );
    s
}

fn etcd_version() -> String {
    match std::process::Command::new("/usr/bin/etcd").arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("unknown")
            .to_string(),
        Err(e) => format!("/usr/bin/etcd not runnable: {e}"),
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
}

/// Figures of one row, `None` where the measurement failed.
struct Figures {
    seq_p50: Option<Duration>,
    seq_p99: Option<Duration>,
    put_rate: Option<f64>,
    put_p99: Option<Duration>,
    get_rate: Option<f64>,
    get_p99: Option<Duration>,
    watch_p50: Option<Duration>,
    watch_p99: Option<Duration>,
}

impl Figures {
    fn is_empty(&self) -> bool {
        [self.seq_p50, self.put_p99, self.get_p99, self.watch_p50]
            .iter()
            .all(Option::is_none)
    }
}

fn figures(m: &mut Measurements) -> Figures {
    let lat = |r: &mut Result<Latencies, String>, q| r.as_mut().ok().and_then(|l| l.quantile(q));
    let rate = |r: &Result<Throughput, String>| r.as_ref().ok().map(Throughput::ops_per_sec);
    let p99 = |r: &mut Result<Throughput, String>| r.as_mut().ok().and_then(|t| t.latencies.quantile(0.99));
    Figures {
        seq_p50: lat(&mut m.seq_put, 0.5),
        seq_p99: lat(&mut m.seq_put, 0.99),
        put_rate: rate(&m.conc_put),
        put_p99: p99(&mut m.conc_put),
        get_rate: rate(&m.lin_get),
        get_p99: p99(&mut m.lin_get),
        watch_p50: lat(&mut m.watch, 0.5),
        watch_p99: lat(&mut m.watch, 0.99),
    }
}

/// The median of each figure over the runs that measured it.
fn median_figures(all: &[Figures]) -> Figures {
    Figures {
        seq_p50: median(all.iter().map(|f| f.seq_p50)),
        seq_p99: median(all.iter().map(|f| f.seq_p99)),
        put_rate: median(all.iter().map(|f| f.put_rate)),
        put_p99: median(all.iter().map(|f| f.put_p99)),
        get_rate: median(all.iter().map(|f| f.get_rate)),
        get_p99: median(all.iter().map(|f| f.get_p99)),
        watch_p50: median(all.iter().map(|f| f.watch_p50)),
        watch_p99: median(all.iter().map(|f| f.watch_p99)),
    }
}

/// The median of the values present (the lower one of the middle two for an even count).
fn median<T: Copy + PartialOrd>(values: impl Iterator<Item = Option<T>>) -> Option<T> {
    let mut v: Vec<T> = values.flatten().collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// The table (one row per run, then for each cluster size where both systems ran, a row
/// of esfleet ÷ etcd ratios), a verdict per cluster size, and the list of failures.
fn report(rows: &mut [Row], concurrency: usize) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut failures = Vec::new();
    let _ = writeln!(
        out,
        "| members | system | seq put p50 | seq put p99 | puts/s ({concurrency} in flight) \
         | put p99 | linearizable gets/s ({concurrency} in flight) | get p99 | watch p50 \
         | watch p99 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");

    let mut sizes: Vec<usize> = rows.iter().map(|r| r.members).collect();
    sizes.dedup();
    let mut verdicts = String::new();
    let mut any_ratio = false;
    for members in sizes {
        let mut figs = Vec::new();
        for row in rows.iter_mut().filter(|r| r.members == members) {
            let per_run: Vec<Figures> = row.runs.iter_mut().map(figures).collect();
            let f = median_figures(&per_run);
            let failed = failed_cells(row, &mut failures);
            let [seq, put, get, watch] = failed;
            let cell = |failed: bool, s: String| if failed { "FAILED".to_string() } else { s };
            let _ = writeln!(
                out,
                "| {members} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.flavor.name(),
                cell(seq, ms(f.seq_p50)),
                cell(seq, ms(f.seq_p99)),
                cell(put, rate_str(f.put_rate)),
                cell(put, ms(f.put_p99)),
                cell(get, rate_str(f.get_rate)),
                cell(get, ms(f.get_p99)),
                cell(watch, ms(f.watch_p50)),
                cell(watch, ms(f.watch_p99)),
            );
            figs.push((row.flavor, f, per_run));
        }

        // Side by side: esfleet against etcd, where both ran at this size.
        let find = |fl| figs.iter().find(|(f, _, _)| *f == fl).map(|(_, f, runs)| (f, runs));
        let (Some((e, e_runs)), Some((r, r_runs))) = (find(FlavorArg::Esfleet), find(FlavorArg::Etcd)) else {
            continue;
        };
        if e.is_empty() || r.is_empty() {
            let missing = if e.is_empty() { "esfleet" } else { "etcd" };
            let _ = writeln!(
                verdicts,
                "- {members} member(s): no comparison: {missing} measured nothing (see FAILED)."
            );
            continue;
        }
        any_ratio = true;
        let _ = writeln!(
            out,
            "| {members} | esfleet ÷ etcd | {} | {} | {} | {} | {} | {} | {} | {} |",
            ratio_d(e.seq_p50, r.seq_p50),
            ratio_d(e.seq_p99, r.seq_p99),
            ratio_f(e.put_rate, r.put_rate),
            ratio_d(e.put_p99, r.put_p99),
            ratio_f(e.get_rate, r.get_rate),
            ratio_d(e.get_p99, r.get_p99),
            ratio_d(e.watch_p50, r.watch_p50),
            ratio_d(e.watch_p99, r.watch_p99),
        );
        let _ = writeln!(verdicts, "- {members} member(s), esfleet: {}", verdict(e_runs, r_runs));
    }
    if any_ratio {
        let _ = writeln!(out, "\nRatios: throughput above 1 and latency below 1 favour esfleet.");
    }
    if !verdicts.is_empty() {
        let _ = write!(
            out,
            "\nAgainst the target (esfleet's throughput at or above etcd's, its p99 at or below etcd's):\n{verdicts}"
        );
    }
    (out, failures)
}

/// Which of the row's four measurements failed in any round; the reasons go to `failures`.
fn failed_cells(row: &Row, failures: &mut Vec<String>) -> [bool; 4] {
    let mut failed = [false; 4];
    for (round, m) in row.runs.iter().enumerate() {
        let tag = format!("{} ({} member(s), round {})", row.flavor.name(), row.members, round + 1);
        let errors = [
            ("sequential puts", m.seq_put.as_ref().err()),
            ("concurrent puts", m.conc_put.as_ref().err()),
            ("linearizable gets", m.lin_get.as_ref().err()),
            ("watch latency", m.watch.as_ref().err()),
        ];
        match errors.map(|(_, e)| e) {
            // One cause for everything (the cluster did not start, the client could not
            // connect): say it once.
            [Some(a), Some(b), Some(c), Some(d)] if a == b && b == c && c == d => failures.push(format!("{tag}: {a}")),
            _ => {
                for (what, e) in errors {
                    if let Some(e) = e {
                        failures.push(format!("{tag}, {what}: {e}"));
                    }
                }
            }
        }
        for (slot, (_, e)) in failed.iter_mut().zip(errors) {
            *slot |= e.is_some();
        }
    }
    failed
}

/// Where esfleet misses the target, judged on the medians; a miss is "clear" when even
/// esfleet's best round is worse than etcd's worst, and "within spread" otherwise (the
/// rounds overlap, so this machine's noise could explain it).
fn verdict(e: &[Figures], r: &[Figures]) -> String {
    // Each figure as "higher is better" numbers, one per round that measured it.
    type Get = fn(&Figures) -> Option<f64>;
    let checks: [(&str, Get); 6] = [
        ("sequential put p99", |f| f.seq_p99.map(|d| -d.as_secs_f64())),
        ("put throughput", |f| f.put_rate),
        ("concurrent put p99", |f| f.put_p99.map(|d| -d.as_secs_f64())),
        ("get throughput", |f| f.get_rate),
        ("concurrent get p99", |f| f.get_p99.map(|d| -d.as_secs_f64())),
        ("watch p99", |f| f.watch_p99.map(|d| -d.as_secs_f64())),
    ];
    let (mut clear, mut within, mut unmeasured) = (Vec::new(), Vec::new(), Vec::new());
    for (what, get) in checks {
        let ev: Vec<f64> = e.iter().filter_map(get).collect();
        let rv: Vec<f64> = r.iter().filter_map(get).collect();
        let (Some(em), Some(rm)) = (median(ev.iter().map(|v| Some(*v))), median(rv.iter().map(|v| Some(*v)))) else {
            unmeasured.push(what);
            continue;
        };
        if em >= rm {
            continue;
        }
        let e_best = ev.iter().copied().fold(f64::MIN, f64::max);
        let r_worst = rv.iter().copied().fold(f64::MAX, f64::min);
        if e_best < r_worst {
            clear.push(what);
        } else {
            within.push(what);
        }
    }
    let mut parts = Vec::new();
    if !clear.is_empty() {
        parts.push(format!("behind etcd, every round: {}", clear.join(", ")));
    }
    if !within.is_empty() {
        parts.push(format!(
            "behind on the median, within the rounds' spread: {}",
            within.join(", ")
        ));
    }
    if !unmeasured.is_empty() {
        parts.push(format!("not compared (failed): {}", unmeasured.join(", ")));
    }
    if parts.is_empty() {
        "meets the target on every measurement.".to_string()
    } else {
        format!("{}.", parts.join("; "))
    }
}

fn rate_str(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.0}"))
}

fn ratio_f(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "-".into(),
    }
}

fn ratio_d(a: Option<Duration>, b: Option<Duration>) -> String {
    ratio_f(a.map(|d| d.as_secs_f64()), b.map(|d| d.as_secs_f64()))
}
