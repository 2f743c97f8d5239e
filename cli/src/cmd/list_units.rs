//! `esfleet list-units`: every placement with systemd's live states.

use esfleet_proto::fleet as pb;

use super::{out, Ctx};
use crate::args::{Format, Listing};
use crate::client::Retry;
use crate::error::CliError;
use crate::render::{check_fields, unit_rows, units_json, units_table, UNIT_FIELDS};

pub async fn run(ctx: &Ctx, fields: &[String], listing: &Listing) -> Result<(), CliError> {
    let fields = check_fields(fields, UNIT_FIELDS)?;
    let resp = ctx
        .client
        .call("ListUnits", Retry::Idempotent, |ch| async move {
            crate::client::fleet(ch).list_units(pb::ListUnitsRequest {}).await
        })
        .await?;
    let rows = unit_rows(&resp);
    out(&match listing.output {
        Format::Json => units_json(&rows),
        Format::Table => units_table(&rows, &fields, ctx.style(!listing.no_legend, listing.full)),
    })
}
