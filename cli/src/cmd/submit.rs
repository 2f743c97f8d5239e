//! `esfleet submit FILE...`: validate locally, then store the units (desired `inactive`).

use super::{common, out, Ctx};
use crate::error::CliError;
use crate::unitfiles::unit_args;

pub async fn run(ctx: &Ctx, args: &[String], replace: bool) -> Result<(), CliError> {
    let parsed = unit_args(args, false)?;
    let mut files = parsed.submit;
    // Names without a file: instances of submitted templates (the server finds the text).
    for n in &parsed.names {
        if !files.iter().any(|f| &f.name == n) {
            files.push(esfleet_proto::fleet::UnitFile {
                name: n.clone(),
                text: String::new(),
            });
        }
    }
    let results = common::submit(ctx, files, replace).await?;
    let mut text = String::new();
    for r in &results {
        text.push_str(&format!("Unit {} {}\n", r.name, common::outcome_word(r)));
    }
    out(&text)
}
