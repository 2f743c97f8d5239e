//! `esfleet journal NAME [-n N] [-f]`: `journalctl -u` lines from the unit's machine,
//! printed as they arrive.

use esfleet_proto::fleet as pb;

use super::{out, Ctx};
use crate::client::Retry;
use crate::error::CliError;
use crate::unitfiles::check_name;

pub async fn run(ctx: &Ctx, unit: &str, lines: u32, follow: bool, machine: Option<String>) -> Result<(), CliError> {
    check_name(unit)?;
    let req = pb::JournalRequest {
        name: unit.to_string(),
        machine_id: machine.unwrap_or_default(),
        lines,
        follow,
    };
    let mut stream = ctx
        .client
        .call("Journal", Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).journal(req).await }
        })
        .await?;
    loop {
        match stream.message().await {
            Ok(Some(l)) => {
                let mut line = l.line;
                if !line.ends_with('\n') {
                    line.push('\n');
                }
                out(&line)?;
            }
            Ok(None) => return Ok(()),
            Err(status) => return Err(CliError::from_status(&status)),
        }
    }
}
