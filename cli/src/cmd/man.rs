//! `esfleet man`: the manual page (roff), built from the same help texts as `--help`,
//! with a section per subcommand.

use clap::CommandFactory;

use crate::args::Cli;
use crate::error::CliError;

/// The whole manual: the main page, then each subcommand's page (nested ones too).
pub fn manual() -> Result<String, CliError> {
    let mut buf = Vec::new();
    let cmd = Cli::command();
    render(&cmd, &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn render(cmd: &clap::Command, buf: &mut Vec<u8>) -> Result<(), CliError> {
    clap_mangen::Man::new(cmd.clone())
        .render(buf)
        .map_err(|e| CliError::Failed(format!("cannot render the manual: {e}")))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{}-{}", cmd.get_name(), sub.get_name());
        render(&sub.clone().display_name(name), buf)?;
    }
    Ok(())
}

pub fn run() -> Result<(), CliError> {
    super::out(&manual()?)
}
