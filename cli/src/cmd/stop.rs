//! `esfleet stop NAME...`: desired `loaded` (stays on its machine), wait until stopped.

use super::{common, Ctx};
use crate::args::NamesTransition;
use crate::error::CliError;
use crate::wait::Goal;

pub async fn run(ctx: &Ctx, t: NamesTransition) -> Result<(), CliError> {
    common::check_names(&t.units)?;
    common::transition(ctx, &t.units, "loaded", Goal::Loaded, &t.block, false).await?;
    Ok(())
}
