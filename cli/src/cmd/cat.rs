//! `esfleet cat NAME`: the unit file exactly as stored.

use esfleet_proto::fleet as pb;

use super::{out, Ctx};
use crate::client::Retry;
use crate::error::CliError;
use crate::unitfiles::check_name;

pub async fn run(ctx: &Ctx, unit: &str) -> Result<(), CliError> {
    check_name(unit)?;
    let req = pb::GetUnitRequest { name: unit.to_string() };
    let resp = ctx
        .client
        .call("GetUnit", Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).get_unit(req).await }
        })
        .await?;
    out(&resp.unit.unwrap_or_default().text)
}
