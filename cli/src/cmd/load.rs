//! `esfleet load FILE|NAME...`: desired `loaded`, wait until loaded.

use super::{common, Ctx};
use crate::args::Transition;
use crate::error::CliError;
use crate::wait::Goal;

pub async fn run(ctx: &Ctx, t: Transition) -> Result<(), CliError> {
    let names = common::submit_then_names(ctx, &t).await?;
    common::transition(ctx, &names, "loaded", Goal::Loaded, &t.block, false).await?;
    Ok(())
}
