//! [`FleetOps`] on the Fleet service: what `esfleet es restart|scale-down` do to units,
//! with the same waits (and progress lines) as `esfleet stop/start/destroy`.

use std::time::Duration;

use esfleet_core::es::ClusterRecord;
use esfleet_core::UnitName;
use esfleet_proto::fleet as pb;

use super::{common, out, Ctx};
use crate::client::Retry;
use crate::error::CliError;
use crate::es::ops::{FleetOps, OpsError, UnitView};
use crate::wait::{wait_for, Goal, WaitOptions};

pub struct CliFleet<'a> {
    pub ctx: &'a Ctx,
    /// How long each unit wait may take.
    pub timeout: Duration,
}

fn fleet_err(e: CliError) -> OpsError {
    OpsError::Fleet(e.to_string())
}

impl CliFleet<'_> {
    async fn set_and_wait(&self, unit: &UnitName, desired: &str, goal: Goal) -> Result<(), OpsError> {
        let names = vec![unit.to_string()];
        common::set_desired(self.ctx, &names, desired)
            .await
            .map_err(fleet_err)?;
        self.wait(&names, goal).await
    }

    async fn wait(&self, names: &[String], goal: Goal) -> Result<(), OpsError> {
        wait_for(
            &self.ctx.client,
            names,
            WaitOptions {
                goal,
                timeout: self.timeout,
                live: false,
                full: false,
            },
        )
        .await
        .map_err(fleet_err)
    }
}

/// The cluster's units as the operations see them, from one ListUnitFiles.
pub async fn unit_views(ctx: &Ctx, names: &[UnitName]) -> Result<Vec<UnitView>, CliError> {
    let resp = super::common::list_unit_files(ctx).await?;
    Ok(names
        .iter()
        .map(|n| {
            let n = n.to_string();
            match resp.units.iter().find(|u| u.name == n) {
                Some(u) => {
                    let p = u
                        .placements
                        .iter()
                        .find(|p| p.desired != "inactive")
                        .or(u.placements.first());
                    UnitView {
                        name: n,
                        exists: true,
                        desired: u.desired.clone(),
                        active: p.map(|p| p.active.clone()).unwrap_or_default(),
                        address: p.map(|p| p.machine_address.clone()).unwrap_or_default(),
                    }
                }
                None => UnitView {
                    name: n,
                    ..Default::default()
                },
            }
        })
        .collect())
}

/// Stores `record` with ApplyEsCluster, if its key is still at `if_revision`.
pub async fn store_record(
    ctx: &Ctx,
    record: &ClusterRecord,
    if_revision: i64,
) -> Result<pb::ApplyEsClusterResponse, CliError> {
    let req = pb::ApplyEsClusterRequest {
        record_json: serde_json::to_string(record).expect("a cluster record serializes"),
        if_revision,
        check_revision: true,
    };
    ctx.client
        .call("ApplyEsCluster", Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).apply_es_cluster(req).await }
        })
        .await
}

impl FleetOps for CliFleet<'_> {
    async fn units(&self, names: &[UnitName]) -> Result<Vec<UnitView>, OpsError> {
        unit_views(self.ctx, names).await.map_err(fleet_err)
    }

    async fn stop(&self, unit: &UnitName) -> Result<(), OpsError> {
        self.set_and_wait(unit, "loaded", Goal::Loaded).await
    }

    async fn refresh(&self, unit: &UnitName) -> Result<bool, OpsError> {
        // An instance with no text takes its stored template's; `replace` updates it if
        // the template changed since the instance was created.
        let files = vec![pb::UnitFile {
            name: unit.to_string(),
            text: String::new(),
        }];
        let results = common::submit(self.ctx, files, true).await.map_err(fleet_err)?;
        Ok(results
            .iter()
            .any(|r| r.outcome == pb::submit_result::Outcome::Replaced as i32))
    }

    async fn start(&self, unit: &UnitName) -> Result<(), OpsError> {
        self.set_and_wait(unit, "launched", Goal::Launched).await
    }

    async fn destroy(&self, unit: &UnitName) -> Result<(), OpsError> {
        let req = pb::DestroyUnitsRequest {
            names: vec![unit.to_string()],
        };
        let resp = self
            .ctx
            .client
            .call("DestroyUnits", Retry::Once, |ch| {
                let req = req.clone();
                async move { crate::client::fleet(ch).destroy_units(req).await }
            })
            .await
            .map_err(fleet_err)?;
        self.wait(&resp.destroyed, Goal::Destroyed).await
    }

    async fn store(&self, record: &ClusterRecord, if_revision: i64) -> Result<i64, OpsError> {
        let resp = store_record(self.ctx, record, if_revision).await.map_err(fleet_err)?;
        Ok(resp.cluster.map_or(resp.revision, |c| c.mod_revision))
    }

    fn say(&self, line: &str) {
        let _ = out(&format!("{line}\n"));
    }
}
