//! `esfleet status NAME`: `systemctl status` from the unit's machine.

use esfleet_proto::fleet as pb;

use super::{out, Ctx};
use crate::client::Retry;
use crate::error::CliError;
use crate::unitfiles::check_name;

pub async fn run(ctx: &Ctx, unit: &str, machine: Option<String>) -> Result<(), CliError> {
    check_name(unit)?;
    let req = pb::StatusRequest {
        name: unit.to_string(),
        machine_id: machine.unwrap_or_default(),
    };
    let resp = ctx
        .client
        .call("Status", Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).status(req).await }
        })
        .await?;
    let mut text = resp.text;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    out(&text)
}
