//! `es_bench`: how long a real OpenSearch cluster run by esfleet takes to form, to recover
//! from a lost host and a lost zone, and to restart, on the root tests' topology (three
//! zones of two simulated hosts plus a control host; 3 masters and 3 data nodes, small
//! heaps), with the engine `scripts/es-engine` builds (and, with `--runtime nspawn`, the
//! image `scripts/es-image` builds). Needs root and systemd-nspawn.
//!
//! Measured (one run each; health is sampled every 500 ms from surviving nodes):
//! - apply → every node joined, and → green with an index of 3 shards × 3 copies;
//! - host loss: the host of a data node crashes; from the crash to its lease expiring (the
//!   machine gone from the cluster), to the replacement node (same name, new node id, in
//!   the same zone) joining, and to green; the target is "joined ≤ 15 s after the lease
//!   expires";
//! - zone loss: a whole zone crashes; to yellow (the engine noticed), then after the zone
//!   returns, to green;
//! - a rolling restart (`esfleet es restart`) of all six nodes;
//! - memory: each engine process's resident set once green.
//!
//! `--secure` (plain runtime) runs the engine's security plugin as t88 does: TLS on HTTP
//! and transport, a password; esfleet and the samplers go over https.
//!
//! It prints Markdown and exits non-zero if a step failed. The binaries are the ones next
//! to it (debug unless built with --release); the machine's load matters. Recorded runs:
//! BENCHMARKS.md.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use esfleet_tests::engine::{
    boot_zones, cluster_toml, engine_home, image, sample_health, secure, tally, wait_formed, zone_of, Engine, Secured,
    SECURE_USER,
};
use esfleet_tests::hosts::MaxMapCount;
use esfleet_tests::realcluster::wait_for;

#[derive(Debug, Parser)]
#[command(about = "Formation, host-loss, zone-loss and restart times of a real OpenSearch cluster run by esfleet")]
struct Args {
    /// How the nodes run: `plain` (a service per node) or `nspawn` (a container per node).
    #[arg(long, default_value = "plain")]
    runtime: String,
    /// An engine setting for every node (`KEY=VALUE`, repeatable), e.g. faster fault
    /// detection: `cluster.fault_detection.follower_check.timeout=2s`.
    #[arg(long = "setting")]
    settings: Vec<String>,
    /// The engine's security plugin on (plain runtime): TLS and a password, as in t88.
    #[arg(long)]
    secure: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        eprintln!("es_bench needs root (network namespaces, systemd-nspawn)");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("es_bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn run(args: &Args) -> anyhow::Result<()> {
    // Before the boot: the hosts see this machine's files.
    let sec = match (args.secure, args.runtime.as_str()) {
        (false, _) => None,
        (true, "plain") => Some(secure(&engine_home())?),
        (true, other) => {
            bail!("--secure needs --runtime plain (an nspawn image carries its own certificates), not {other}")
        }
    };
    let runtime = match (args.runtime.as_str(), &sec) {
        ("plain", None) => {
            let e = engine_home();
            let e = e.display();
            format!("runtime = \"plain\"\nexec = \"{e}/bin/opensearch\"\nconfig_template = \"{e}/config\"")
        }
        ("plain", Some(sec)) => {
            let e = engine_home();
            format!(
                "runtime = \"plain\"\nexec = \"{}/bin/opensearch\"\n{}",
                e.display(),
                sec.toml_lines()
            )
        }
        ("nspawn", _) => format!("runtime = \"nspawn\"\nimage = \"{}\"", image().display()),
        (other, _) => bail!("--runtime {other}: use plain or nspawn"),
    };
    let mut settings = if sec.is_some() {
        Secured::settings()
    } else {
        String::new()
    };
    for kv in &args.settings {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--setting {kv}: write KEY=VALUE"))?;
        settings.push_str(&format!("{k:?} = {v:?}\n"));
    }
    let _map_count = MaxMapCount::set(262_144);
    let t = Instant::now();
    let c = boot_zones(&cluster_toml(&runtime, &settings))?;
    let boot = t.elapsed();
    let os = Engine {
        tls: sec
            .as_ref()
            .map(|s| (s.ca_file(), format!("{SECURE_USER}:{}", s.password))),
        c: &c,
        from: "ctl".into(),
    };
    let ctl = c.control_host()?;
    let mut rows: Vec<(String, String)> = vec![("boot of 7 hosts".into(), secs(boot))];

    // Formation.
    let t = Instant::now();
    let out = c.esfleet_within(
        &ctl,
        Duration::from_secs(300),
        &["es", "apply", "/root/es/logs.toml", "--timeout", "240s"],
    )?;
    if !out.success() {
        bail!("es apply failed: {}{}", out.stdout, out.stderr);
    }
    let a = wait_formed(&c, &os, "logs", (3, 3), (9201, 9200));
    rows.push(("apply → 6 nodes joined".into(), secs(t.elapsed())));
    os.index_docs(&a.everyone, "docs", 3, 2, 1000);
    os.wait_status(&a.everyone, "green", "green", Duration::from_secs(180));
    rows.push((
        "apply → green (3 shards × 3 copies, 1,000 documents)".into(),
        secs(t.elapsed()),
    ));

    // Memory per node.
    let mut rss = Vec::new();
    for h in a.at.values().collect::<BTreeSet<_>>() {
        let ps = c.hosts().exec_ok(h, &["ps", "-eo", "rss=,args="])?;
        for l in ps.lines().filter(|l| l.contains("dev.esfleet.engine.Launcher")) {
            let kib: u64 = l.split_whitespace().next().unwrap_or("0").parse().unwrap_or(0);
            rss.push(kib / 1024);
        }
    }
    rss.sort_unstable();
    rows.push((
        "resident memory per node (MiB; heaps 256/384 MiB)".into(),
        format!("{rss:?}"),
    ));

    // Host loss: zone zc's data node (no host of zc runs a coordinator, so it can be
    // rebooted); it is placed anew on zc's other host.
    let unit =
        a.at.iter()
            .find(|(u, h)| u.contains("-d@") && zone_of(h) == "zc" && !c.coordinator_hosts().contains(h))
            .map(|(u, h)| (u.clone(), h.clone()));
    if let Some((unit, host)) = unit {
        let node = unit.replace('@', "").replace(".service", "");
        let old_id = os
            .node_ids(&a.everyone)?
            .into_iter()
            .find(|(_, n)| *n == node)
            .map(|(id, _)| id)
            .context("the node's id")?;
        let machine = c.machine_id(&host).to_string();
        let survivors: Vec<_> = a.everyone.iter().filter(|(h, _)| *h != host).cloned().collect();
        let t0 = Instant::now();
        let (times, statuses) = sample_health(&os, &survivors, Duration::from_millis(500), || {
            c.crash(&host)?;
            let expired = wait_for(
                "the lease to expire",
                Duration::from_secs(120),
                Duration::from_millis(100),
                || Ok((!c.list_machines()?.iter().any(|m| m.id == machine)).then(|| t0.elapsed())),
            )?;
            os.wait_recreated(&survivors, &node, &old_id, Duration::from_secs(240))?;
            let joined = t0.elapsed();
            os.wait_status(
                &survivors,
                "green",
                "green after the host loss",
                Duration::from_secs(240),
            );
            anyhow::Ok((expired, joined, t0.elapsed()))
        });
        let (expired, joined, green) = times?;
        let moved = c.wait_units_running(&[unit.as_str()], Duration::from_secs(60))?[&unit].clone();
        rows.push(("host loss → lease expired".into(), secs(expired)));
        rows.push((
            format!(
                "host loss → replacement joined ({} on {moved}, zone {})",
                node,
                zone_of(&moved)
            ),
            format!(
                "{} ({} after the lease expired; target ≤ 15 s)",
                secs(joined),
                secs(joined - expired)
            ),
        ));
        rows.push(("host loss → green".into(), secs(green)));
        rows.push(("health during the host loss".into(), tally(&statuses)));
        c.reboot(&host)?;
    } else {
        rows.push((
            "host loss".into(),
            "not measured: no data node on a host without a coordinator in zb".into(),
        ));
    }

    // Zone loss and return.
    let a = wait_formed(&c, &os, "logs", (3, 3), (9201, 9200));
    os.wait_status(
        &a.everyone,
        "green",
        "green before the zone loss",
        Duration::from_secs(240),
    );
    let lost: Vec<String> = c.names().into_iter().filter(|h| zone_of(h) == "zc").collect();
    let survivors: Vec<_> = a.everyone.iter().filter(|(h, _)| zone_of(h) != "zc").cloned().collect();
    let t0 = Instant::now();
    let (times, statuses) = sample_health(&os, &survivors, Duration::from_millis(500), || {
        for h in &lost {
            c.crash(h)?;
        }
        os.wait_status(&survivors, "yellow", "yellow with zc gone", Duration::from_secs(180));
        let yellow = t0.elapsed();
        std::thread::sleep(Duration::from_secs(10));
        let t1 = Instant::now();
        for h in &lost {
            c.reboot(h)?;
        }
        os.wait_status(&survivors, "green", "green after zc returned", Duration::from_secs(300));
        anyhow::Ok((yellow, t1.elapsed()))
    });
    let (yellow, green) = times?;
    rows.push(("zone loss → yellow".into(), secs(yellow)));
    rows.push(("zone return (hosts rebooted, empty disks) → green".into(), secs(green)));
    rows.push(("health during the zone loss".into(), tally(&statuses)));

    // Rolling restart.
    let a = wait_formed(&c, &os, "logs", (3, 3), (9201, 9200));
    let t = Instant::now();
    let (out, statuses) = sample_health(&os, &a.everyone, Duration::from_millis(500), || {
        c.esfleet_within(
            &ctl,
            Duration::from_secs(1800),
            &["es", "restart", "logs", "--timeout", "300s", "--es-timeout", "600s"],
        )
    });
    let out = out?;
    if !out.success() {
        bail!("es restart failed: {}{}", out.stdout, out.stderr);
    }
    rows.push(("es restart of 6 nodes".into(), secs(t.elapsed())));
    rows.push(("health during the restart".into(), tally(&statuses)));

    println!(
        "## es_bench: OpenSearch 2.19.4, runtime {}{}\n",
        args.runtime,
        if args.secure {
            ", security plugin on (TLS, password)"
        } else {
            ""
        }
    );
    if !args.settings.is_empty() {
        println!("Engine settings: {}\n", args.settings.join(", "));
    }
    println!("| Step | Measured |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    c.teardown()
}
