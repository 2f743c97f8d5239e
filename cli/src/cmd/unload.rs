//! `esfleet unload NAME...`: desired `inactive`, wait until no machine has the unit.

use super::{common, Ctx};
use crate::args::NamesTransition;
use crate::error::CliError;
use crate::wait::Goal;

pub async fn run(ctx: &Ctx, t: NamesTransition) -> Result<(), CliError> {
    common::check_names(&t.units)?;
    common::transition(ctx, &t.units, "inactive", Goal::Unloaded, &t.block, false).await?;
    Ok(())
}
