//! Benchmark: `esfleet list-units` and `list-unit-files` with 10,000 running units (fleet
//! took minutes at 2,500: fleet #1340). Prints figures; asserts nothing about time.
//!
//! Needs the coordinator and the CLI built in the same profile:
//!   cargo build -p esfleet-coordinator -p esfleet-cli --bins
//!   cargo run -p esfleet-cli --example bench_list_units [-- UNITS MACHINES]
//! (add --release to all three for release figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use esfleet_cli::render::{check_fields, unit_file_rows, unit_rows, units_table, Style, UNIT_FIELDS};
use esfleet_proto::fleet::{self as pb, fleet_client::FleetClient};
use support::{esfleet, FakeAgent, HELLO};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let units = args.first().copied().unwrap_or(10_000);
    let machines = args.get(1).copied().unwrap_or(10).clamp(1, 15);
    let c = support::cluster().await;
    let ep = c.endpoint(0);
    let mut agents = Vec::new();
    for n in 1..=machines as u8 {
        agents.push(FakeAgent::start(&c.endpoints(), n, &[("zone", if n % 2 == 0 { "a" } else { "b" })], true).await);
    }
    let mut fleet = FleetClient::connect(ep.clone())
        .await?
        .max_decoding_message_size(256 << 20);
    let t = Instant::now();
    for chunk in (0..units).collect::<Vec<_>>().chunks(1000) {
        let files = chunk
            .iter()
            .map(|i| pb::UnitFile {
                name: format!("u{i:05}.service"),
                text: HELLO.to_string(),
            })
            .collect();
        fleet
            .submit_units(pb::SubmitUnitsRequest {
                units: files,
                replace: false,
            })
            .await?;
    }
    fleet
        .set_desired_state(pb::SetDesiredStateRequest {
            names: vec!["u*.service".into()],
            desired: "launched".into(),
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let resp = fleet.list_units(pb::ListUnitsRequest {}).await?.into_inner();
        let active = resp
            .units
            .iter()
            .filter(|u| u.placement.as_ref().is_some_and(|p| p.active == "active"))
            .count();
        if active == units {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {active}/{units} units active after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "setup: {units} units launched on {machines} simulated machines in {:.1?}",
        t.elapsed()
    );

    for args in [
        &["list-units"][..],
        &["list-units", "-o", "json"],
        &["list-unit-files"],
        &["list-machines"],
    ] {
        let mut times = Vec::new();
        let mut lines = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let r = esfleet(Some(&ep), args).await;
            times.push(t.elapsed());
            anyhow::ensure!(r.code == 0, "esfleet {args:?} failed: {}", r.stderr);
            lines = r.stdout.lines().count();
        }
        times.sort();
        println!(
            "esfleet {:<22} {lines:>6} lines   best {:>7.1?}   median {:>7.1?}   (whole process: connect, fetch, render)",
            args.join(" "),
            times[0],
            times[2]
        );
    }

    // The rendering alone, from the fetched answer.
    let resp = fleet.list_units(pb::ListUnitsRequest {}).await?.into_inner();
    let files = fleet.list_unit_files(pb::ListUnitFilesRequest {}).await?.into_inner();
    let fields: Vec<String> = ["unit", "machine", "active", "sub"].map(String::from).to_vec();
    let fields = check_fields(&fields, UNIT_FIELDS)?;
    let t = Instant::now();
    let rows = unit_rows(&resp);
    let text = units_table(
        &rows,
        &fields,
        Style {
            legend: true,
            ..Style::default()
        },
    );
    let render = t.elapsed();
    let t = Instant::now();
    let file_rows = unit_file_rows(&files);
    println!(
        "render only: list-units {} rows -> {} bytes in {render:.1?}; list-unit-files rows in {:.1?}",
        rows.len(),
        text.len(),
        t.elapsed()
    );
    drop(file_rows);
    drop(agents);
    Ok(())
}
