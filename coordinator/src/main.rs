//! `esfleet-coordinator`: one member of esfleet's replicated store.

use std::process::ExitCode;

use clap::Parser;
use esfleet_coordinator::config::Flags;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let cfg = match flags.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("esfleet-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("esfleet-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esfleet-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: esfleet_coordinator::config::Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = tokio::net::TcpListener::bind(cfg.client_addr)
        .await
        .with_context(|| format!("cannot listen for clients on {}", cfg.client_addr))?;
    let peer = tokio::net::TcpListener::bind(cfg.peer_addr)
        .await
        .with_context(|| format!("cannot listen for peers on {}", cfg.peer_addr))?;
    esfleet_coordinator::server::run(cfg, client, peer, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the member can only be killed; keep serving.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
