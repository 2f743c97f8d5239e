//! `esfleet list-machines`: every machine the cluster knows.

use esfleet_proto::fleet as pb;

use super::{out, Ctx};
use crate::args::{Format, Listing};
use crate::client::Retry;
use crate::error::CliError;
use crate::render::{machine_rows, machines_json, machines_table};

pub async fn run(ctx: &Ctx, listing: &Listing) -> Result<(), CliError> {
    let resp = ctx
        .client
        .call("ListMachines", Retry::Idempotent, |ch| async move {
            crate::client::fleet(ch).list_machines(pb::ListMachinesRequest {}).await
        })
        .await?;
    let rows = machine_rows(&resp);
    out(&match listing.output {
        Format::Json => machines_json(&rows),
        Format::Table => machines_table(&rows, ctx.style(!listing.no_legend, listing.full)),
    })
}
