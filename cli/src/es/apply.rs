//! `esfleet es apply`'s decisions, pure: which zones, which counts, and what to tell the
//! operator. The command ([`crate::cmd`]) does the I/O around it.

use esfleet_core::es::{ClusterRecord, ClusterSpec, Role};

use super::ops::UnitView;

/// What to store, and what the operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyPlan {
    pub record: ClusterRecord,
    /// Where the zones came from: `cluster.toml`, the stored definition, or the machines.
    pub zones_from: &'static str,
    /// Roles whose count the file lowers: (role, nodes now, asked for). Their stored count
    /// stays as it is until `esfleet es scale-down` removes the nodes one at a time.
    pub scale_down: Vec<(Role, u32, u32)>,
}

/// Decides the record to store from the file's spec, the stored record (if any) and the
/// zones of the registered machines.
pub fn plan_apply(
    mut spec: ClusterSpec,
    stored: Option<&ClusterRecord>,
    machine_zones: &[String],
) -> Result<ApplyPlan, String> {
    let zones_from = if !spec.zones.is_empty() {
        "cluster.toml"
    } else if let Some(s) = stored.filter(|s| !s.spec.zones.is_empty()) {
        spec.zones = s.spec.zones.clone();
        "the stored definition"
    } else if !machine_zones.is_empty() {
        spec.zones = machine_zones.to_vec();
        "the machines' zone metadata"
    } else {
        return Err(format!(
            "cluster {} has no zones: cluster.toml names none and no registered machine has `zone` metadata; \
             add zones = [\"a\", \"b\", \"c\"] to cluster.toml, or start the agents with --metadata zone=<zone>",
            spec.name
        ));
    };
    let mut scale_down = Vec::new();
    if let Some(s) = stored {
        for role in Role::ALL {
            let (now, asked) = (s.spec.role(role).count, spec.role(role).count);
            if asked < now {
                spec.role_mut(role).count = now;
                scale_down.push((role, now, asked));
            }
        }
    }
    Ok(ApplyPlan {
        record: ClusterRecord {
            spec,
            bootstrapped: stored.is_some_and(|s| s.bootstrapped),
        },
        zones_from,
        scale_down,
    })
}

/// The Elasticsearch HTTP endpoints of a cluster's placed nodes (`address:http_port`):
/// coordinating nodes first (they exist to take requests), then data, then masters;
/// running ones before the others.
pub fn es_endpoints(record: &ClusterRecord, nodes: &[(Role, UnitView)]) -> Vec<String> {
    let mut v: Vec<(bool, u8, String)> = nodes
        .iter()
        .filter(|(_, u)| !u.address.is_empty())
        .map(|(role, u)| {
            let rank = match role {
                Role::Coordinating => 0,
                Role::Data => 1,
                Role::Master => 2,
            };
            (
                u.active != "active",
                rank,
                format!("{}:{}", u.address, record.spec.role(*role).http_port),
            )
        })
        .collect();
    v.sort();
    let mut out: Vec<String> = Vec::new();
    for (_, _, e) in v {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}
