//! `esfleet es apply`'s decisions, pure: which zones, which counts, and what to tell the
//! operator. The command ([`crate::cmd`]) does the I/O around it.

use std::path::Path;

use esfleet_core::es::{ClusterRecord, ClusterSpec, Flavor, Role, Runtime};

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

/// Checks the install a spec names against its flavour, where this host can see it: an
/// nspawn `image` must hold the flavour's start script (`/usr/share/opensearch/bin/opensearch`),
/// and a plain `exec` must be an executable file. Every host is expected to carry the same
/// install, so a mismatch here is refused before anything is stored or started; an install
/// this host does not have (the CLI run from a workstation) cannot be checked and passes.
pub fn check_install(spec: &ClusterSpec, root: &Path) -> Result<(), String> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    match spec.runtime {
        Runtime::Nspawn => {
            let image = at(&spec.image);
            if !image.is_dir() {
                return Ok(());
            }
            let want = spec.flavor.default_exec();
            if image.join(want.trim_start_matches('/')).is_file() {
                return Ok(());
            }
            let other = [Flavor::Elasticsearch, Flavor::Opensearch]
                .into_iter()
                .find(|f| *f != spec.flavor && image.join(f.default_exec().trim_start_matches('/')).is_file());
            Err(match other {
                Some(f) => format!(
                    "image {} holds {} ({}), but cluster.toml says flavor = \"{}\": set flavor = \"{}\" or use an {} image",
                    spec.image,
                    f.product(),
                    f.default_exec(),
                    spec.flavor.as_str(),
                    f.as_str(),
                    spec.flavor.product()
                ),
                None => format!(
                    "image {} has no {want}, so no {} install (build one with scripts/es-image, or fix image = ...)",
                    spec.image,
                    spec.flavor.product()
                ),
            })
        }
        Runtime::Plain => {
            let exec = at(&spec.exec);
            let parent_exists = exec.parent().is_some_and(Path::is_dir);
            if !parent_exists || exec.is_file() {
                return Ok(());
            }
            Err(format!(
                "exec = {} does not exist on this host, though its directory does: every host needs the {} install \
                 there (fix exec = ...)",
                spec.exec,
                spec.flavor.product()
            ))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> ClusterSpec {
        esfleet_core::es::parse_spec(&format!(
            "name = \"logs\"\n{extra}\n[master]\ncount = 3\n[data]\ncount = 3\n"
        ))
        .unwrap()
    }

    fn file(root: &Path, path: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "#!/bin/sh\n").unwrap();
    }

    #[test]
    fn an_install_of_the_other_flavour_or_none_is_refused_where_it_can_be_seen() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let os = spec("flavor = \"opensearch\"\nruntime = \"nspawn\"\nimage = \"/img\"");
        // Not on this host: nothing to check.
        assert_eq!(check_install(&os, r), Ok(()));
        // An Elasticsearch image for an OpenSearch cluster.
        file(r, "/img/usr/share/elasticsearch/bin/elasticsearch");
        assert_eq!(
            check_install(&os, r),
            Err(
                "image /img holds Elasticsearch (/usr/share/elasticsearch/bin/elasticsearch), but cluster.toml says \
                 flavor = \"opensearch\": set flavor = \"elasticsearch\" or use an OpenSearch image"
                    .into()
            )
        );
        // An image without any engine.
        let bare = spec("flavor = \"opensearch\"\nruntime = \"nspawn\"\nimage = \"/bare\"");
        std::fs::create_dir_all(r.join("bare/usr")).unwrap();
        let e = check_install(&bare, r).unwrap_err();
        assert!(e.contains("has no /usr/share/opensearch/bin/opensearch"), "{e}");
        // The right one.
        file(r, "/img/usr/share/opensearch/bin/opensearch");
        assert_eq!(check_install(&os, r), Ok(()));
        // Plain: a missing start script in an existing install directory.
        let plain = spec("flavor = \"opensearch\"\nexec = \"/opt/os/bin/opensearch\"");
        std::fs::create_dir_all(r.join("opt/os/bin")).unwrap();
        assert!(check_install(&plain, r)
            .unwrap_err()
            .contains("does not exist on this host"));
        file(r, "/opt/os/bin/opensearch");
        assert_eq!(check_install(&plain, r), Ok(()));
    }
}
