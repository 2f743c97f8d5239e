//! `esfleet list-unit-files`: every stored unit, desired vs current state.

use super::{out, Ctx};
use crate::args::{Format, Listing};
use crate::error::CliError;
use crate::render::{check_fields, unit_file_rows, unit_files_json, unit_files_table, UNIT_FILE_FIELDS};

pub async fn run(ctx: &Ctx, fields: &[String], listing: &Listing) -> Result<(), CliError> {
    let fields = check_fields(fields, UNIT_FILE_FIELDS)?;
    let resp = super::common::list_unit_files(ctx).await?;
    let rows = unit_file_rows(&resp);
    out(&match listing.output {
        Format::Json => unit_files_json(&rows),
        Format::Table => unit_files_table(&rows, &fields, ctx.style(!listing.no_legend, listing.full)),
    })
}
