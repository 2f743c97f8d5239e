//! What several verbs share: submitting files, setting a desired state, and waiting.

use esfleet_proto::fleet::{self as pb, submit_result::Outcome};

use super::{out, Ctx};
use crate::args::{Block, Transition};
use crate::client::Retry;
use crate::error::CliError;
use crate::unitfiles::{check_name, unit_args};
use crate::wait::{wait_for, Goal, WaitOptions};

/// Submits unit files (validated already); returns the server's results in order.
pub async fn submit(ctx: &Ctx, files: Vec<pb::UnitFile>, replace: bool) -> Result<Vec<pb::SubmitResult>, CliError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let req = pb::SubmitUnitsRequest { units: files, replace };
    let resp = ctx
        .client
        .call("SubmitUnits", Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).submit_units(req).await }
        })
        .await?;
    Ok(resp.results)
}

pub fn outcome_word(r: &pb::SubmitResult) -> &'static str {
    match Outcome::try_from(r.outcome).unwrap_or(Outcome::Created) {
        Outcome::Created => "submitted",
        Outcome::Unchanged => "unchanged",
        Outcome::Replaced => "replaced",
    }
}

/// Sets the desired state of names/globs; returns the literal names matched.
pub async fn set_desired(ctx: &Ctx, names: &[String], desired: &str) -> Result<Vec<pb::DesiredChange>, CliError> {
    let req = pb::SetDesiredStateRequest {
        names: names.to_vec(),
        desired: desired.to_string(),
    };
    let resp = ctx
        .client
        .call("SetDesiredState", Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).set_desired_state(req).await }
        })
        .await?;
    Ok(resp.changes)
}

pub fn check_names(names: &[String]) -> Result<(), CliError> {
    names.iter().try_for_each(|n| check_name(n))
}

/// Sets `desired` on `names`, then waits for `goal` unless `--no-block`.
pub async fn transition(
    ctx: &Ctx,
    names: &[String],
    desired: &str,
    goal: Goal,
    block: &Block,
    force_block: bool,
) -> Result<Vec<String>, CliError> {
    let changes = set_desired(ctx, names, desired).await?;
    let matched: Vec<String> = changes.iter().map(|c| c.name.clone()).collect();
    if block.no_block && !force_block {
        let mut text = String::new();
        for c in &changes {
            text.push_str(&format!("Triggered unit {} {desired}\n", c.name));
        }
        out(&text)?;
        return Ok(matched);
    }
    wait_for(
        &ctx.client,
        &matched,
        WaitOptions {
            goal,
            timeout: block.timeout,
            live: ctx.tty,
            full: false,
        },
    )
    .await?;
    Ok(matched)
}

/// `load`/`start`: submits the files among the arguments (printing only replaced units),
/// and returns every name and glob to act on.
pub async fn submit_then_names(ctx: &Ctx, t: &Transition) -> Result<Vec<String>, CliError> {
    let parsed = unit_args(&t.units, true)?;
    let results = submit(ctx, parsed.submit, t.replace).await?;
    let mut text = String::new();
    for r in results.iter().filter(|r| r.outcome == Outcome::Replaced as i32) {
        text.push_str(&format!("Unit {} replaced\n", r.name));
    }
    out(&text)?;
    Ok(parsed.names)
}

/// Every unit file with its placements and states (one ListUnitFiles).
pub async fn list_unit_files(ctx: &Ctx) -> Result<pb::ListUnitFilesResponse, CliError> {
    ctx.client
        .call("ListUnitFiles", Retry::Idempotent, |ch| async move {
            crate::client::fleet(ch)
                .list_unit_files(pb::ListUnitFilesRequest {})
                .await
        })
        .await
}
