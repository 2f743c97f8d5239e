//! `esfleet restart NAME...`: stop, wait until stopped (always: an agent must see the
//! stop), then start and wait (unless `--no-block`).

use super::{common, Ctx};
use crate::args::NamesTransition;
use crate::error::CliError;
use crate::wait::Goal;

pub async fn run(ctx: &Ctx, t: NamesTransition) -> Result<(), CliError> {
    common::check_names(&t.units)?;
    // The start acts on the names the stop matched, so a glob cannot grow in between.
    let matched = common::transition(ctx, &t.units, "loaded", Goal::Loaded, &t.block, true).await?;
    common::transition(ctx, &matched, "launched", Goal::Launched, &t.block, false).await?;
    Ok(())
}
