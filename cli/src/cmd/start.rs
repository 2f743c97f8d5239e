//! `esfleet start FILE|NAME...`: desired `launched`, wait until every unit runs (fail fast
//! when one cannot be placed).

use super::{common, Ctx};
use crate::args::Transition;
use crate::error::CliError;
use crate::wait::Goal;

pub async fn run(ctx: &Ctx, t: Transition) -> Result<(), CliError> {
    let names = common::submit_then_names(ctx, &t).await?;
    common::transition(ctx, &names, "launched", Goal::Launched, &t.block, false).await?;
    Ok(())
}
