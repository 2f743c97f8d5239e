//! `esfleet es status`: the view (pure: from the Fleet service's and Elasticsearch's answers
//! to text), so it is tested without a cluster.

use std::collections::BTreeMap;

use crate::table::{render, Cell, Color};

use super::api::{CatNode, CatShard, Health};

/// One node as esfleet sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRow {
    pub unit: String,
    pub node: String,
    pub role: String,
    pub zone: String,
    /// `hostname/address`.
    pub host: String,
    /// systemd's `active (sub)`, or `not submitted` / `not placed` / the unplaceable reason.
    pub state: String,
}

/// What Elasticsearch said, or why it could not be asked.
#[derive(Debug, Clone)]
pub enum EsView {
    Unreachable(String),
    Answered {
        cluster_name: String,
        version: String,
        health: Health,
        nodes: Vec<CatNode>,
        shards: Vec<CatShard>,
    },
}

fn state_color(state: &str) -> Option<Color> {
    if state.starts_with("active") {
        Some(Color::Green)
    } else if state.starts_with("failed") || state.starts_with("cannot") {
        Some(Color::Red)
    } else {
        Some(Color::Yellow)
    }
}

/// The text of one cluster's status.
pub fn render_status(spec: &esfleet_core::es::ClusterSpec, rows: &[NodeRow], es: &EsView, color: bool) -> String {
    let product = spec.flavor.product();
    let mut out = format!("Cluster {}\n", spec.name);
    let (joined, shards): (BTreeMap<&str, &CatNode>, BTreeMap<&str, usize>) = match es {
        EsView::Answered { nodes, shards, .. } => {
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for s in shards {
                for w in s.node.split_whitespace().filter(|w| nodes.iter().any(|n| n.name == *w)) {
                    *per.entry(w).or_default() += 1;
                }
            }
            (nodes.iter().map(|n| (n.name.as_str(), n)).collect(), per)
        }
        EsView::Unreachable(_) => (BTreeMap::new(), BTreeMap::new()),
    };
    let reachable = matches!(es, EsView::Answered { .. });
    let table: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            let in_es = joined.get(r.node.as_str());
            let es_cell = match (reachable, in_es) {
                (false, _) => Cell::plain("?"),
                (true, Some(n)) if n.master => Cell::colored("joined*", Some(Color::Green)),
                (true, Some(_)) => Cell::colored("joined", Some(Color::Green)),
                (true, None) => Cell::colored("missing", Some(Color::Red)),
            };
            vec![
                Cell::plain(r.unit.clone()),
                Cell::plain(r.node.clone()),
                Cell::plain(r.role.clone()),
                Cell::plain(r.zone.clone()),
                Cell::plain(r.host.clone()),
                Cell::colored(r.state.clone(), state_color(&r.state)),
                es_cell,
                Cell::plain(if reachable {
                    shards.get(r.node.as_str()).copied().unwrap_or(0).to_string()
                } else {
                    "?".into()
                }),
            ]
        })
        .collect();
    out.push_str(&render(
        &["UNIT", "NODE", "ROLE", "ZONE", "HOST", "STATE", "ES", "SHARDS"],
        &table,
        true,
        color,
    ));
    match es {
        EsView::Unreachable(why) => out.push_str(&format!("{product}: unreachable ({why})\n")),
        EsView::Answered {
            cluster_name,
            version,
            health,
            nodes,
            shards,
        } => {
            let c = match health.status.as_str() {
                "green" => Some(Color::Green),
                "yellow" => Some(Color::Yellow),
                _ => Some(Color::Red),
            };
            out.push_str(&format!(
                "{product}: cluster {cluster_name:?}{}, health {}\n",
                if version.is_empty() {
                    String::new()
                } else {
                    format!(" (version {version})")
                },
                crate::table::paint(&health.summary(), c, color)
            ));
            let master = nodes.iter().find(|n| n.master).map_or("none", |n| n.name.as_str());
            out.push_str(&format!(
                "  {} nodes in the cluster, elected master {master}; {} shard copies\n",
                nodes.len(),
                shards.len()
            ));
            let strangers: Vec<&str> = nodes
                .iter()
                .filter(|n| !rows.iter().any(|r| r.node == n.name))
                .map(|n| n.name.as_str())
                .collect();
            if !strangers.is_empty() {
                out.push_str(&format!("  nodes esfleet does not run: {}\n", strangers.join(", ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(flavor: &str) -> esfleet_core::es::ClusterSpec {
        esfleet_core::es::parse_spec(&format!(
            "name = \"logs\"\nflavor = \"{flavor}\"\n[master]\ncount = 3\n[data]\ncount = 3\n"
        ))
        .unwrap()
    }

    fn row(unit: &str, node: &str, state: &str) -> NodeRow {
        NodeRow {
            unit: unit.into(),
            node: node.into(),
            role: "data".into(),
            zone: "a".into(),
            host: "host1/10.0.0.1".into(),
            state: state.into(),
        }
    }

    #[test]
    fn unreachable_says_so() {
        let t = render_status(
            &spec("elasticsearch"),
            &[row("logs-d@1.service", "logs-d1", "active (running)")],
            &EsView::Unreachable("connection refused".into()),
            false,
        );
        assert_eq!(
            t,
            "Cluster logs\nUNIT              NODE     ROLE  ZONE  HOST            STATE             ES  SHARDS\n\
             logs-d@1.service  logs-d1  data  a     host1/10.0.0.1  active (running)  ?   ?\n\
             Elasticsearch: unreachable (connection refused)\n"
        );
    }

    #[test]
    fn answered_shows_membership_and_shards() {
        let es = EsView::Answered {
            cluster_name: "logs".into(),
            version: "8.15.0".into(),
            health: Health {
                status: "yellow".into(),
                number_of_nodes: 2,
                unassigned_shards: 1,
                ..Default::default()
            },
            nodes: vec![
                CatNode {
                    name: "logs-d1".into(),
                    role: "di".into(),
                    master: true,
                    ..Default::default()
                },
                CatNode {
                    name: "other".into(),
                    ..Default::default()
                },
            ],
            shards: vec![
                CatShard {
                    node: "logs-d1".into(),
                    ..Default::default()
                },
                CatShard::default(),
            ],
        };
        let t = render_status(
            &spec("opensearch"),
            &[
                row("logs-d@1.service", "logs-d1", "active (running)"),
                row("logs-d@2.service", "logs-d2", "not placed"),
            ],
            &es,
            false,
        );
        assert!(
            t.contains("logs-d1  data  a     host1/10.0.0.1  active (running)  joined*  1\n"),
            "{t}"
        );
        assert!(
            t.contains("logs-d2  data  a     host1/10.0.0.1  not placed        missing  0\n"),
            "{t}"
        );
        assert!(t.contains("health yellow: 2 nodes, 1 unassigned"), "{t}");
        assert!(t.contains("\nOpenSearch: cluster \"logs\" (version 8.15.0)"), "{t}");
        assert!(t.contains("nodes esfleet does not run: other"), "{t}");
    }
}
