//! The `esfleet-agent` binary: flags → [`Flags::validate`] → systemd over D-Bus → run until
//! SIGTERM/SIGINT (units keep running unless `--stop-units-on-exit`; the lease is revoked).

use anyhow::Context;
use clap::Parser;
use esfleet_agent::config::Flags;
use esfleet_agent::dbus::SystemdManager;
use esfleet_agent::fake::FakeUnitManager;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&flags.log_level).context("--log-level")?)
        .init();
    let fake = flags.fake_systemd;
    let listen = flags.listen;
    let cfg = flags.validate()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    tracing::info!(
        machine = cfg.machine_id,
        endpoints = ?cfg.endpoints,
        agent = cfg.agent_endpoint,
        "esfleet-agent starting"
    );
    if fake {
        tracing::warn!("--fake-systemd: driving an in-memory systemd; nothing runs on this host");
        esfleet_agent::agent::run(cfg, FakeUnitManager::new(), Some(listener), shutdown_signal()).await;
    } else {
        let manager = SystemdManager::connect(cfg.unit_dir.clone())
            .await
            .context("cannot talk to systemd (is this a systemd host, and is the agent root?)")?;
        esfleet_agent::agent::run(cfg, manager, Some(listener), shutdown_signal()).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}
