//! One module per verb. Each fetches what it needs through [`Ctx::client`] and prints what
//! [`crate::render`] makes of it.

mod cat;
mod cluster;
mod common;
mod completions;
mod destroy;
mod es;
mod es_fleet;
mod journal;
mod list_machines;
mod list_unit_files;
mod list_units;
mod load;
mod machine;
mod man;
mod restart;
mod start;
mod status;
mod stop;
mod submit;
mod unload;

use std::io::{IsTerminal, Write};

use crate::args::{Cli, Command};
use crate::client::Client;
use crate::error::CliError;
use crate::render::Style;

/// What every verb gets.
pub struct Ctx {
    pub client: Client,
    /// Standard output is a terminal: live progress.
    pub tty: bool,
    /// Colour allowed: a terminal and no NO_COLOR.
    pub color: bool,
    /// `--es-ca-file`, `--es-credentials-file`: override a cluster's `[http]` paths.
    pub es_ca_file: Option<std::path::PathBuf>,
    pub es_credentials_file: Option<std::path::PathBuf>,
}

impl Ctx {
    pub fn style(&self, legend: bool, full: bool) -> Style {
        Style {
            legend,
            full,
            color: self.color,
        }
    }
}

/// Writes to standard output; a closed pipe (`esfleet list-units | head`) is not an error.
pub fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Failed(format!("cannot write to standard output: {e}"))),
    }
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    // These need no cluster (and must work with bad endpoints).
    match &cli.command {
        Command::Completions { shell } => return completions::run(*shell),
        Command::Man => return man::run(),
        _ => {}
    }
    let client = Client::new(&cli.global.endpoints, cli.global.request_timeout)?;
    let tty = std::io::stdout().is_terminal();
    let ctx = Ctx {
        client,
        tty,
        color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        es_ca_file: cli.global.es_ca_file.clone(),
        es_credentials_file: cli.global.es_credentials_file.clone(),
    };
    match cli.command {
        Command::Submit { units, replace } => submit::run(&ctx, &units, replace).await,
        Command::Load(t) => load::run(&ctx, t).await,
        Command::Start(t) => start::run(&ctx, t).await,
        Command::Stop(t) => stop::run(&ctx, t).await,
        Command::Unload(t) => unload::run(&ctx, t).await,
        Command::Destroy(t) => destroy::run(&ctx, t).await,
        Command::Restart(t) => restart::run(&ctx, t).await,
        Command::Cat { unit } => cat::run(&ctx, &unit).await,
        Command::Status { unit, machine } => status::run(&ctx, &unit, machine).await,
        Command::Journal {
            unit,
            lines,
            follow,
            machine,
        } => journal::run(&ctx, &unit, lines, follow, machine).await,
        Command::ListUnits { fields, listing } => list_units::run(&ctx, &fields, &listing).await,
        Command::ListUnitFiles { fields, listing } => list_unit_files::run(&ctx, &fields, &listing).await,
        Command::ListMachines { listing } => list_machines::run(&ctx, &listing).await,
        Command::Machine(m) => machine::run(&ctx, m).await,
        Command::Cluster(c) => cluster::run(&ctx, c).await,
        Command::Es(c) => es::run(&ctx, c).await,
        Command::Completions { .. } | Command::Man => unreachable!("handled above"),
    }
}
