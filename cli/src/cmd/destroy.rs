//! `esfleet destroy NAME...`: remove units from the cluster, wait until they are gone.

use esfleet_proto::fleet as pb;

use super::{common, out, Ctx};
use crate::args::NamesTransition;
use crate::client::Retry;
use crate::error::CliError;
use crate::wait::{wait_for, Goal, WaitOptions};

pub async fn run(ctx: &Ctx, t: NamesTransition) -> Result<(), CliError> {
    common::check_names(&t.units)?;
    let req = pb::DestroyUnitsRequest { names: t.units.clone() };
    // Not repeated after a timeout: a second destroy would answer "not found".
    let resp = ctx
        .client
        .call("DestroyUnits", Retry::Once, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).destroy_units(req).await }
        })
        .await?;
    if t.block.no_block {
        let text: String = resp.destroyed.iter().map(|n| format!("Destroyed {n}\n")).collect();
        return out(&text);
    }
    wait_for(
        &ctx.client,
        &resp.destroyed,
        WaitOptions {
            goal: Goal::Destroyed,
            timeout: t.block.timeout,
            live: ctx.tty,
            full: false,
        },
    )
    .await
}
