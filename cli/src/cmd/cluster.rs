//! `esfleet cluster status` (the Fleet service's ClusterStatus) and `esfleet cluster member
//! list|add|remove` (etcd's Cluster API, which the coordinators serve).

use esfleet_proto::etcdserverpb::{self as etcd, cluster_client::ClusterClient};
use esfleet_proto::fleet as pb;

use super::{out, Ctx};
use crate::args::{ClusterCommand, Format, MemberCommand};
use crate::client::{normalize_endpoint, Retry};
use crate::error::CliError;
use crate::render::{cluster_json, cluster_status_text, cluster_view, member_rows, members_json, members_table};

pub async fn run(ctx: &Ctx, cmd: ClusterCommand) -> Result<(), CliError> {
    match cmd {
        ClusterCommand::Status { output } => {
            let resp = ctx
                .client
                .call("ClusterStatus", Retry::Idempotent, |ch| async move {
                    crate::client::fleet(ch)
                        .cluster_status(pb::ClusterStatusRequest {})
                        .await
                })
                .await?;
            let view = cluster_view(&resp);
            out(&match output {
                Format::Json => cluster_json(&view),
                Format::Table => cluster_status_text(&view, ctx.color),
            })
        }
        ClusterCommand::Member(MemberCommand::List { listing }) => {
            let resp = ctx
                .client
                .call("MemberList", Retry::Idempotent, |ch| async move {
                    ClusterClient::new(ch)
                        .member_list(etcd::MemberListRequest { linearizable: true })
                        .await
                })
                .await?;
            let rows = member_rows(&resp.members);
            out(&match listing.output {
                Format::Json => members_json(&rows),
                Format::Table => members_table(&rows, ctx.style(!listing.no_legend, listing.full)),
            })
        }
        ClusterCommand::Member(MemberCommand::Add { peer_urls, learner }) => {
            let mut urls = Vec::new();
            for u in &peer_urls {
                let url = normalize_endpoint(u);
                url.parse::<tonic::transport::Uri>().map_err(|e| {
                    CliError::Usage(format!(
                        "{u:?} is not a peer URL ({e}); write e.g. http://10.0.0.4:2380"
                    ))
                })?;
                urls.push(url);
            }
            let req = etcd::MemberAddRequest {
                peer_ur_ls: urls.clone(),
                is_learner: learner,
            };
            let resp = ctx
                .client
                .call("MemberAdd", Retry::Once, |ch| {
                    let req = req.clone();
                    async move { ClusterClient::new(ch).member_add(req).await }
                })
                .await?;
            let id = resp.member.as_ref().map_or(0, |m| m.id);
            let initial: Vec<String> = resp
                .members
                .iter()
                .flat_map(|m| {
                    let name = if m.id == id || m.name.is_empty() {
                        "NEW_NAME".to_string()
                    } else {
                        m.name.clone()
                    };
                    m.peer_ur_ls.iter().map(move |p| format!("{name}={p}"))
                })
                .collect();
            out(&format!(
                "Member {id:016x} added{}.\nStart it with:\n  esfleet-coordinator --name NEW_NAME \
                 --initial-advertise-peer-urls {} --listen-peer-urls {} \\\n    --initial-cluster {} \
                 --initial-cluster-state existing ...\n",
                if learner { " as a learner" } else { "" },
                urls.join(","),
                urls.join(","),
                initial.join(","),
            ))
        }
        ClusterCommand::Member(MemberCommand::Remove { id }) => {
            let parsed = u64::from_str_radix(id.trim_start_matches("0x"), 16).map_err(|_| {
                CliError::Usage(format!(
                    "{id:?} is not a member id; give the hex id from `esfleet cluster member list`"
                ))
            })?;
            ctx.client
                .call("MemberRemove", Retry::Once, |ch| async move {
                    ClusterClient::new(ch)
                        .member_remove(etcd::MemberRemoveRequest { id: parsed })
                        .await
                })
                .await?;
            out(&format!("Member {parsed:016x} removed\n"))
        }
    }
}
