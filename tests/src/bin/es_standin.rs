//! `es_standin`: the Elasticsearch stand-in of esfleet's tests — a test double, never shipped.
//! See `esfleet_tests::es_standin` for what it models and what it does not.
//!
//! - `es_standin model --listen 127.0.0.1:9999 [--recovery-ms 1000] [--fault-detect-ms 1500]`
//! - `es_standin node [-E key=value]...` with `ES_PATH_CONF` and `STANDIN_MODEL_URL`
//!   (`http://host:port`) in the environment. Invoked through a symlink named
//!   `elasticsearch`, it behaves as `es_standin node` (so a unit's ExecStart can point at it).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use esfleet_tests::es_standin::{run_model, run_node, ModelConfig, NodeOptions};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(about = "Elasticsearch stand-in for esfleet's tests (a test double, not Elasticsearch)")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The central process holding the simulated cluster.
    Model {
        /// Address to listen on, e.g. 127.0.0.1:9999 (port 0 picks one and prints it).
        #[arg(long)]
        listen: String,
        /// Duration of a peer recovery in ms (a node recovering its own data takes a tenth).
        #[arg(long, default_value_t = 1000)]
        recovery_ms: u64,
        /// A node without heartbeats for this long is dropped.
        #[arg(long, default_value_t = 1500)]
        fault_detect_ms: u64,
    },
    /// One Elasticsearch node (what a unit runs instead of bin/elasticsearch).
    Node {
        /// Directory with elasticsearch.yml and unicast_hosts.txt.
        #[arg(long, env = "ES_PATH_CONF")]
        conf: PathBuf,
        /// The model, http://host:port.
        #[arg(long, env = "STANDIN_MODEL_URL")]
        model: String,
        /// Setting overrides, as Elasticsearch's -E key=value.
        #[arg(short = 'E', value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
}

/// SIGTERM or SIGINT. The handlers are installed when this is called (not when first
/// polled), so a SIGTERM during startup still ends in a clean leave.
fn terminated() -> impl std::future::Future<Output = ()> {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("es_standin: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let mut argv: Vec<String> = std::env::args().collect();
    let called_as_es = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "elasticsearch");
    // As a unit runs Elasticsearch: `<exec> -Epath.logs=...`, no subcommand.
    let es_args = argv.get(1).is_some_and(|a| a.starts_with("-E"));
    if called_as_es || es_args {
        argv.insert(1, "node".into());
    }
    match Args::parse_from(argv).cmd {
        Cmd::Model {
            listen,
            recovery_ms,
            fault_detect_ms,
        } => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            println!("es_standin model listening on {}", listener.local_addr()?);
            run_model(
                ModelConfig {
                    recovery_ms,
                    fault_detect_ms,
                },
                listener,
                terminated(),
            )
            .await;
            Ok(())
        }
        Cmd::Node { conf, model, settings } => {
            let Some(addr) = model.strip_prefix("http://") else {
                bail!("STANDIN_MODEL_URL={model:?}: expected http://host:port");
            };
            let mut overrides = vec![];
            for s in settings {
                let Some((k, v)) = s.split_once('=') else {
                    bail!("-E {s:?}: expected key=value")
                };
                overrides.push((k.to_string(), v.to_string()));
            }
            let opts = NodeOptions {
                conf_dir: conf,
                model: addr.trim_end_matches('/').to_string(),
                overrides,
            };
            run_node(opts, terminated()).await?;
            Ok(())
        }
    }
}
