//! `esfleet machine drain|undrain ID`. A drain shows its progress (units left on the
//! machine) until the scheduler says it is done. Drain records have no stream of their
//! own, so progress is read with GetDrain every half second.

use std::time::Duration;

use esfleet_core::name::validate_machine_id;
use esfleet_proto::fleet as pb;
use tokio::time::Instant;

use super::{out, Ctx};
use crate::args::MachineCommand;
use crate::client::Retry;
use crate::error::CliError;

const POLL: Duration = Duration::from_millis(500);

fn check_id(id: &str) -> Result<(), CliError> {
    validate_machine_id(id).map_err(|e| CliError::Usage(format!("{e}; see `esfleet list-machines -l` for the ids")))
}

pub async fn run(ctx: &Ctx, cmd: MachineCommand) -> Result<(), CliError> {
    match cmd {
        MachineCommand::Drain {
            id,
            reason,
            block,
            force,
            es_timeout,
            es_request_timeout,
        } => {
            check_id(&id)?;
            // Elasticsearch data nodes there give up their shards before anything moves.
            let evacuated = super::es::drain_prepare(ctx, &id, force, es_timeout, es_request_timeout).await?;
            let req = pb::DrainRequest {
                machine_id: id.clone(),
                reason,
            };
            let resp = ctx
                .client
                .call("Drain", Retry::Idempotent, |ch| {
                    let req = req.clone();
                    async move { crate::client::fleet(ch).drain(req).await }
                })
                .await?;
            out(&format!(
                "Machine {id} {}\n",
                if resp.created {
                    "is draining"
                } else {
                    "was already draining"
                }
            ))?;
            if block.no_block {
                for e in &evacuated {
                    out(&format!("{}\n", e.left_excluded()))?;
                }
                return Ok(());
            }
            let deadline = (!block.timeout.is_zero()).then(|| Instant::now() + block.timeout);
            let mut last: Option<Vec<String>> = None;
            loop {
                let req = pb::GetDrainRequest { machine_id: id.clone() };
                let resp = ctx
                    .client
                    .call("GetDrain", Retry::Idempotent, |ch| {
                        let req = req.clone();
                        async move { crate::client::fleet(ch).get_drain(req).await }
                    })
                    .await?;
                let Some(drain) = resp.drain else {
                    return Err(CliError::Failed(format!(
                        "the drain of {id} was cancelled (by `esfleet machine undrain`?)"
                    )));
                };
                if drain.done {
                    out(&format!("Machine {id} is drained: no units left on it\n"))?;
                    super::es::drain_release(&evacuated).await;
                    return Ok(());
                }
                if last.as_ref() != Some(&drain.remaining) {
                    let shown: Vec<&str> = drain.remaining.iter().take(8).map(String::as_str).collect();
                    let more = drain.remaining.len().saturating_sub(shown.len());
                    out(&format!(
                        "{} unit{} left on {id}{}{}\n",
                        drain.remaining.len(),
                        if drain.remaining.len() == 1 { "" } else { "s" },
                        if shown.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", shown.join(", "))
                        },
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        }
                    ))?;
                    last = Some(drain.remaining);
                }
                if deadline.is_some_and(|d| Instant::now() + POLL > d) {
                    return Err(CliError::Failed(format!(
                        "gave up after {} (--timeout); {id} is still draining (the drain goes on; check with \
                         `esfleet list-machines`)",
                        humantime::format_duration(block.timeout)
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        MachineCommand::Undrain { id } => {
            check_id(&id)?;
            let req = pb::UndrainRequest { machine_id: id.clone() };
            let resp = ctx
                .client
                .call("Undrain", Retry::Idempotent, |ch| {
                    let req = req.clone();
                    async move { crate::client::fleet(ch).undrain(req).await }
                })
                .await?;
            out(&format!(
                "Machine {id} {}\n",
                if resp.removed {
                    "takes units again"
                } else {
                    "was not draining"
                }
            ))
        }
    }
}
