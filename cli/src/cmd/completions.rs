//! `esfleet completions bash|zsh|fish|...`: a completion script on standard output.

use clap::CommandFactory;

use crate::args::Cli;
use crate::error::CliError;

pub fn run(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "esfleet", &mut buf);
    super::out(&String::from_utf8_lossy(&buf))
}
