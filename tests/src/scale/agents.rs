//! The simulated machines: each one is the real agent (`esfleet_agent::agent`: registration
//! on a lease, keepalives, the watch of its own schedule prefix, reconcile, batched state
//! reports) driving the in-memory [`FakeUnitManager`], so only systemd is simulated.
//!
//! A group of machines runs in one child process (`scale --agents-child …`), so killing
//! the process loses all of its machines at once, as a crashed rack would: no lease is
//! revoked, the coordinators notice by lease expiry. The agents of a process share a few
//! HTTP/2 connections per coordinator instead of opening two each.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use esfleet_agent::config::{Config, Timing};
use esfleet_agent::fake::FakeUnitManager;
use tonic::transport::{Channel, Endpoint};

/// The machine id of simulated machine `i` (32 lowercase hex characters).
pub fn machine_id(i: usize) -> String {
    format!("5ca1e{:027x}", i)
}

/// Zone and rack of machine `i`: racks are filled round-robin across zones.
pub fn placement(i: usize, zones: usize, racks: usize) -> (String, String) {
    let rack = i % (zones * racks);
    (format!("z{}", rack % zones), format!("r{rack}"))
}

/// What one child process runs.
#[derive(Debug, Clone)]
pub struct Group {
    pub endpoints: Vec<String>,
    /// Machines `first .. first + count`.
    pub first: usize,
    pub count: usize,
    pub zones: usize,
    pub racks: usize,
    /// Connections per coordinator, shared round-robin by the agents.
    pub connections: usize,
}

fn channels(endpoints: &[String], n: usize) -> anyhow::Result<Vec<Vec<Channel>>> {
    (0..n)
        .map(|_| {
            endpoints
                .iter()
                .map(|e| {
                    Ok(Endpoint::from_shared(e.clone())
                        .with_context(|| format!("endpoint {e}"))?
                        .connect_timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(10))
                        .keep_alive_timeout(Duration::from_secs(5))
                        .connect_lazy())
                })
                .collect()
        })
        .collect()
}

/// Runs the group's agents until the process is killed (or stdin closes: the parent died).
pub async fn run(g: Group) -> anyhow::Result<()> {
    let pools = channels(&g.endpoints, g.connections.max(1))?;
    let mut running = Vec::with_capacity(g.count);
    for k in 0..g.count {
        let i = g.first + k;
        let (zone, rack) = placement(i, g.zones, g.racks);
        let cfg = Config {
            endpoints: g.endpoints.clone(),
            machine_id: machine_id(i),
            address: "127.0.0.1".into(),
            agent_endpoint: String::new(),
            metadata: BTreeMap::from([("zone".to_string(), zone), ("rack".to_string(), rack)]),
            unit_dir: PathBuf::from("/nonexistent"),
            config_root: std::env::temp_dir().join("esfleet-scale-config"),
            data_root: std::env::temp_dir().join("esfleet-scale-data"),
            set_max_map_count: None,
            data_path: std::env::temp_dir(),
            timing: Timing::default(),
            stop_units_on_exit: false,
            state_dir: None,
        };
        let ch = pools[k % pools.len()].clone();
        running.push(esfleet_agent::agent::start_with_channels(
            cfg,
            FakeUnitManager::new(),
            ch,
        ));
        // Registrations spread over a moment rather than all in one burst.
        if k % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The parent holds our stdin; when it goes away (even killed), so do we.
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        use std::io::Read;
        while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
    })
    .await;
    Ok(())
}
