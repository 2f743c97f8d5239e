//! The `esfleet` binary: parse the command line, run the verb, exit 0 (success),
//! 1 (operation failed) or 2 (usage error).

use std::io::IsTerminal;

use clap::Parser;
use esfleet_cli::{table, Cli};

fn main() {
    // clap exits 2 on a usage error and 0 for --help/--version.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(esfleet_cli::error::EXIT_FAILED);
        }
    };
    let code = match runtime.block_on(esfleet_cli::run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            eprintln!("{} {e}", table::paint("error:", Some(table::Color::Red), color));
            e.exit_code()
        }
    };
    std::process::exit(code);
}
