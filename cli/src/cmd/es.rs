//! `esfleet es apply|status|restart|scale-down|delete`: Elasticsearch clusters.

use std::path::Path;
use std::time::Duration;

use esfleet_core::es::{self as core_es, ClusterRecord, Role};
use esfleet_core::UnitName;
use esfleet_proto::fleet as pb;

use super::es_fleet::{store_record, unit_views, CliFleet};
use super::{common, out, Ctx};
use crate::args::{Block, EsCommand, EsWaits};
use crate::client::Retry;
use crate::error::CliError;
use crate::es::api::Es;
use crate::es::apply::{es_endpoints, plan_apply};
use crate::es::http::EsHttp;
use crate::es::ops::{self, OpsError, Target, Waits};
use crate::es::status::{render_status, EsView, NodeRow};
use crate::wait::Goal;
use esfleet_core::http::{Owner, Transport};
use std::path::PathBuf;

/// How often the operations look at Elasticsearch while waiting.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(ctx: &Ctx, cmd: EsCommand) -> Result<(), CliError> {
    match cmd {
        EsCommand::Apply { file, block } => apply(ctx, &file, &block).await,
        EsCommand::Status {
            cluster,
            es_request_timeout,
        } => status(ctx, cluster.as_deref(), es_request_timeout).await,
        EsCommand::Restart { cluster, waits, force } => restart(ctx, &cluster, &waits, force).await,
        EsCommand::ScaleDown {
            cluster,
            data,
            masters,
            waits,
        } => {
            let (role, to) = match (data, masters) {
                (Some(n), None) => (Role::Data, n),
                (None, Some(n)) => (Role::Master, n),
                _ => return Err(CliError::Usage("give exactly one of --data N and --masters N".into())),
            };
            scale_down(ctx, &cluster, role, to, &waits).await
        }
        EsCommand::Delete { cluster } => delete(ctx, &cluster).await,
    }
}

fn ops_err(e: OpsError) -> CliError {
    CliError::Failed(e.to_string())
}

/// The stored record and its revision.
async fn get_cluster(ctx: &Ctx, name: &str) -> Result<(ClusterRecord, i64), CliError> {
    let req = pb::GetEsClusterRequest { name: name.to_string() };
    let resp = ctx
        .client
        .call("GetEsCluster", Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).get_es_cluster(req).await }
        })
        .await?;
    let c = resp
        .cluster
        .ok_or_else(|| CliError::Failed(format!("the cluster answered no record for {name}")))?;
    Ok((parse_record(&c)?, c.mod_revision))
}

fn parse_record(c: &pb::EsCluster) -> Result<ClusterRecord, CliError> {
    serde_json::from_str(&c.record_json).map_err(|e| {
        CliError::Failed(format!(
            "the stored definition of cluster {} does not parse ({e}); is this esfleet older than the coordinators?",
            c.name
        ))
    })
}

async fn list_clusters(ctx: &Ctx) -> Result<Vec<pb::EsCluster>, CliError> {
    Ok(ctx
        .client
        .call("ListEsClusters", Retry::Idempotent, |ch| async move {
            crate::client::fleet(ch)
                .list_es_clusters(pb::ListEsClustersRequest {})
                .await
        })
        .await?
        .clusters)
}

async fn list_machines(ctx: &Ctx) -> Result<Vec<pb::Machine>, CliError> {
    Ok(ctx
        .client
        .call("ListMachines", Retry::Idempotent, |ch| async move {
            crate::client::fleet(ch).list_machines(pb::ListMachinesRequest {}).await
        })
        .await?
        .machines)
}

/// Reads and checks `cluster.toml`; errors name `file:line:column`.
pub fn read_spec(path: &Path) -> Result<core_es::ClusterSpec, CliError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Failed(format!("{shown}: cannot read the cluster definition: {e}")))?;
    core_es::parse_spec(&text).map_err(|e| {
        let msg = e.to_string();
        CliError::Failed(match e.location() {
            Some(l) => {
                let rest = msg
                    .strip_prefix(&format!("line {}, column {}: ", l.line, l.column))
                    .unwrap_or(&msg);
                format!("{shown}:{}:{}: {rest}", l.line, l.column)
            }
            None => format!("{shown}: {msg}"),
        })
    })
}

async fn apply(ctx: &Ctx, file: &Path, block: &Block) -> Result<(), CliError> {
    let spec = read_spec(file)?;
    crate::es::apply::check_install(&spec, Path::new("/"))
        .map_err(|e| CliError::Failed(format!("{}: {e}; nothing was stored or started", file.display())))?;
    let name = spec.name.clone();
    let stored = list_clusters(ctx).await?.into_iter().find(|c| c.name == name);
    let stored_rec = stored.as_ref().map(parse_record).transpose()?;
    let machine_zones: Vec<String> = if spec.zones.is_empty() && stored_rec.is_none() {
        let mut z: Vec<String> = list_machines(ctx)
            .await?
            .iter()
            .filter(|m| m.state != "suspect")
            .filter_map(|m| m.metadata.get("zone").filter(|z| !z.is_empty()).cloned())
            .collect();
        z.sort();
        z.dedup();
        z
    } else {
        Vec::new()
    };
    let plan = plan_apply(spec, stored_rec.as_ref(), &machine_zones).map_err(CliError::Failed)?;
    let resp = store_record(ctx, &plan.record, stored.as_ref().map_or(0, |c| c.mod_revision)).await?;
    let record = &plan.record;
    let word = match (resp.created, resp.changed) {
        (true, _) => "defined",
        (false, true) => "updated",
        (false, false) => "unchanged",
    };
    let mut text = format!(
        "Cluster {name} {word} (zones {} from {})\n",
        record.spec.zones.join(", "),
        plan.zones_from
    );
    let templates: Vec<pb::UnitFile> = core_es::templates(&record.spec)
        .into_iter()
        .map(|(n, t)| pb::UnitFile {
            name: n.to_string(),
            text: t,
        })
        .collect();
    let results = common::submit(ctx, templates, true).await?;
    let mut replaced = false;
    for r in &results {
        replaced |= r.outcome == pb::submit_result::Outcome::Replaced as i32;
        text.push_str(&format!("Template {} {}\n", r.name, common::outcome_word(r)));
    }
    out(&text)?;
    let names: Vec<String> = core_es::instances(&record.spec)
        .iter()
        .map(UnitName::to_string)
        .collect();
    common::transition(ctx, &names, "launched", Goal::Launched, block, false).await?;
    let mut notes = String::new();
    if stored.is_some() && (replaced || resp.changed) {
        notes.push_str(&format!(
            "Running nodes keep their unit file and elasticsearch.yml until they restart: `esfleet es restart {name}` \
             rolls the change through one node at a time.\n"
        ));
    }
    for (role, now, asked) in &plan.scale_down {
        let flag = if *role == Role::Master {
            "masters"
        } else {
            role.as_str()
        };
        notes.push_str(&format!(
            "{name} has {now} {role} nodes and cluster.toml asks for {asked}: nothing was removed. Scale down one \
             node at a time, gated on the cluster's health, with `esfleet es scale-down {name} --{flag} {asked}`.\n"
        ));
    }
    out(&notes)
}

/// The Elasticsearch endpoints of a cluster, from its units' placements.
async fn es_client(ctx: &Ctx, record: &ClusterRecord, timeout: Duration) -> Result<EsHttp, CliError> {
    let nodes = ops::nodes(record);
    let units: Vec<UnitName> = nodes.iter().map(|n| n.unit.clone()).collect();
    let views = unit_views(ctx, &units).await?;
    let pairs: Vec<(Role, ops::UnitView)> = nodes.iter().map(|n| n.role).zip(views).collect();
    Ok(EsHttp::new(
        es_endpoints(record, &pairs),
        timeout,
        es_transport(ctx, record)?,
    ))
}

/// http, or https with the CA and credentials the flags or the cluster's `[http]` name.
/// The credentials file must be the caller's own and mode 0600.
fn es_transport(ctx: &Ctx, record: &ClusterRecord) -> Result<Transport, CliError> {
    let http = &record.spec.http;
    let ca = ctx
        .es_ca_file
        .clone()
        .or_else(|| http.ca_file.as_ref().map(PathBuf::from));
    let credentials = ctx
        .es_credentials_file
        .clone()
        .or_else(|| http.credentials_file.as_ref().map(PathBuf::from));
    Transport::new(ca.as_deref(), credentials.as_deref(), Owner::CurrentUser).map_err(|e| {
        CliError::Failed(format!(
            "cannot reach Elasticsearch cluster {}: {e} (--es-ca-file and --es-credentials-file override the cluster's [http] paths)",
            record.spec.name
        ))
    })
}

async fn status(ctx: &Ctx, cluster: Option<&str>, timeout: Duration) -> Result<(), CliError> {
    let clusters: Vec<(ClusterRecord, i64)> = match cluster {
        Some(n) => vec![get_cluster(ctx, n).await?],
        None => list_clusters(ctx)
            .await?
            .iter()
            .map(|c| Ok((parse_record(c)?, c.mod_revision)))
            .collect::<Result<_, CliError>>()?,
    };
    if clusters.is_empty() {
        return out("No Elasticsearch clusters; define one with `esfleet es apply <cluster.toml>`\n");
    }
    let files = common::list_unit_files(ctx).await?;
    let machines = list_machines(ctx).await?;
    let mut text = String::new();
    for (i, (record, _)) in clusters.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let rows: Vec<NodeRow> = ops::nodes(record)
            .iter()
            .map(|n| node_row(n, &files.units, &machines))
            .collect();
        let http = es_client(ctx, record, timeout).await?;
        let es = es_view(&http).await;
        text.push_str(&render_status(&record.spec, &rows, &es, ctx.color));
    }
    out(&text)
}

fn node_row(n: &ops::NodeRef, units: &[pb::UnitInfo], machines: &[pb::Machine]) -> NodeRow {
    let mut row = NodeRow {
        unit: n.unit.to_string(),
        node: n.name.clone(),
        role: n.role.as_str().into(),
        ..Default::default()
    };
    let Some(u) = units.iter().find(|u| u.name == row.unit) else {
        row.state = "not submitted".into();
        return row;
    };
    let Some(p) = u
        .placements
        .iter()
        .find(|p| p.desired != "inactive")
        .or(u.placements.first())
    else {
        row.state = if u.unplaceable.is_empty() {
            format!("not placed ({})", u.desired)
        } else {
            format!("cannot be placed: {}", u.unplaceable)
        };
        return row;
    };
    let m = machines.iter().find(|m| m.id == p.machine_id);
    row.zone = m.and_then(|m| m.metadata.get("zone").cloned()).unwrap_or_default();
    row.host = match m {
        Some(m) if !m.hostname.is_empty() => format!("{}/{}", m.hostname, p.machine_address),
        _ => p.machine_address.clone(),
    };
    row.state = if !p.reported {
        "placed, not reported yet".into()
    } else if !p.error.is_empty() {
        format!("failed: {}", p.error)
    } else {
        format!("{} ({})", p.active, p.sub)
    };
    row
}

async fn es_view(http: &EsHttp) -> EsView {
    let es = Es { http };
    let answered = async {
        let (cluster_name, version) = es.root().await?;
        let health = es.health().await?;
        let nodes = es.cat_nodes().await?;
        let shards = es.cat_shards().await?;
        Ok::<_, crate::es::http::HttpError>(EsView::Answered {
            cluster_name,
            version,
            health,
            nodes,
            shards,
        })
    };
    answered.await.unwrap_or_else(|e| EsView::Unreachable(e.to_string()))
}

fn waits(w: &EsWaits) -> Waits {
    Waits {
        timeout: w.es_timeout,
        poll: POLL,
    }
}

async fn restart(ctx: &Ctx, name: &str, w: &EsWaits, force: bool) -> Result<(), CliError> {
    let (record, revision) = get_cluster(ctx, name).await?;
    let http = es_client(ctx, &record, w.es_request_timeout).await?;
    let fleet = CliFleet {
        ctx,
        timeout: w.timeout,
    };
    ops::restart(&fleet, &http, &Target { record, revision }, &waits(w), force)
        .await
        .map_err(ops_err)
}

async fn scale_down(ctx: &Ctx, name: &str, role: Role, to: u32, w: &EsWaits) -> Result<(), CliError> {
    let (record, revision) = get_cluster(ctx, name).await?;
    let http = es_client(ctx, &record, w.es_request_timeout).await?;
    let fleet = CliFleet {
        ctx,
        timeout: w.timeout,
    };
    let mut target = Target { record, revision };
    ops::scale_down(&fleet, &http, &mut target, role, to, &waits(w))
        .await
        .map_err(ops_err)
}

async fn delete(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let req = pb::DeleteEsClusterRequest { name: name.to_string() };
    let resp = ctx
        .client
        .call("DeleteEsCluster", Retry::Once, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).delete_es_cluster(req).await }
        })
        .await?;
    let mut text = format!("Cluster {name} deleted\n");
    for t in &resp.templates {
        text.push_str(&format!("Template {t} destroyed\n"));
    }
    out(&text)
}

/// A data node a drain excluded from allocation: released once the drain is done.
pub struct Evacuated {
    http: EsHttp,
    cluster: String,
    node: String,
    id: String,
}

/// Before machine `machine` is drained: moves the shards off every Elasticsearch data node
/// placed there ([`ops::drain_evacuate`]). On a refusal, the nodes already excluded are
/// released again before the error returns.
pub async fn drain_prepare(
    ctx: &Ctx,
    machine: &str,
    force: bool,
    es_timeout: Duration,
    request_timeout: Duration,
) -> Result<Vec<Evacuated>, CliError> {
    let clusters = list_clusters(ctx).await?;
    if clusters.is_empty() {
        return Ok(Vec::new());
    }
    let files = common::list_unit_files(ctx).await?;
    let here = |unit: &UnitName| {
        files.units.iter().any(|u| {
            u.name == unit.as_str()
                && u.placements
                    .iter()
                    .any(|p| p.machine_id == machine && p.desired != "inactive")
        })
    };
    let fleet = CliFleet {
        ctx,
        timeout: es_timeout,
    };
    let w = Waits {
        timeout: es_timeout,
        poll: POLL,
    };
    let mut done: Vec<Evacuated> = Vec::new();
    for c in &clusters {
        let record = parse_record(c)?;
        let name = &record.spec.name;
        for n in ops::nodes(&record)
            .into_iter()
            .filter(|n| n.role == Role::Data && here(&n.unit))
        {
            out(&format!(
                "{} node {} of cluster {name} runs on {machine}: moving its shards off first\n",
                record.spec.flavor.product(),
                n.name
            ))?;
            let http = es_client(ctx, &record, request_timeout).await?;
            let result = ops::drain_evacuate(&fleet, &Es { http: &http }, &w, name, &n.name, force).await;
            match result {
                Ok(Some(id)) => done.push(Evacuated {
                    http,
                    cluster: name.clone(),
                    node: n.name.clone(),
                    id,
                }),
                Ok(None) => {}
                Err(e) => {
                    drain_release(&done).await;
                    return Err(ops_err(e));
                }
            }
        }
    }
    Ok(done)
}

impl Evacuated {
    /// What an operator who did not wait for the drain is left with.
    pub fn left_excluded(&self) -> String {
        format!(
            "{} ({}) stays in cluster {}'s {}: harmless once the drain moved it (the id goes with the old \
             placement), but remove it from that setting if the drain is cancelled",
            self.node,
            self.id,
            self.cluster,
            crate::es::api::EXCLUDE_ID
        )
    }
}

/// Takes the drained nodes' ids out of their clusters' allocation exclusions, saying so.
pub async fn drain_release(evacuated: &[Evacuated]) {
    for e in evacuated {
        let line = match ops::drain_release(&Es { http: &e.http }, &e.id).await {
            Ok(_) => format!(
                "{} ({}) taken out of cluster {}'s allocation exclusions\n",
                e.node, e.id, e.cluster
            ),
            Err(err) => format!(
                "{} ({}) could not be taken out of cluster {}'s allocation exclusions ({err}); \
                 remove {} from {} by hand\n",
                e.node,
                e.id,
                e.cluster,
                e.id,
                crate::es::api::EXCLUDE_ID
            ),
        };
        let _ = out(&line);
    }
}
