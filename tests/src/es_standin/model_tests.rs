//! The model's rules at explicit times: formation, joining, voting, allocation, health.

use serde_json::Value;

use super::*;
use crate::es_standin::api::Reply;
use crate::es_standin::sim::{body_of, data, masters, Sim};

/// The model's unit tests drive it through the shared simulator.
type World = Sim;

const CFG: ModelConfig = ModelConfig {
    recovery_ms: 1000,
    fault_detect_ms: 1500,
};

/// 3 masters + `n_data` data nodes (zones round-robin), formed; index `logs` with
/// `shards`×(1+`replicas`) copies (none without data nodes), green.
fn green_cluster(n_data: usize, shards: u32, replicas: u32) -> World {
    let mut w = World::new(CFG);
    let ms = masters(3, true);
    for m in &ms {
        w.start(m);
    }
    for d in data(n_data, &ms) {
        w.start(&d);
    }
    w.advance(100);
    if n_data == 0 {
        assert_eq!(w.status(), "green");
        return w;
    }
    let (s, b) = w.call(
        "PUT",
        "/logs",
        &format!(r#"{{"settings":{{"number_of_shards":{shards},"number_of_replicas":{replicas}}}}}"#),
    );
    assert_eq!(s, 200, "{b}");
    w.advance(3000);
    assert_eq!(w.status(), "green", "{:?}", w.copies());
    w
}

#[test]
fn cluster_forms_with_a_majority_of_initial_master_nodes() {
    let mut w = World::new(CFG);
    let ms = masters(3, true);
    w.start(&ms[0]);
    w.advance(500);
    assert!(w.m.clusters.is_empty(), "one of three must not bootstrap");
    assert!(matches!(w.req("GET", "/_cluster/health", "", Some("id-logs-m1")), Reply::Done(r) if r.status == 503));
    w.start(&ms[1]);
    w.advance(100);
    assert_eq!(w.m.clusters.len(), 1);
    assert!(w.cluster().master.is_some());
    // the missing third is a placeholder voter, replaced when it shows up
    assert!(
        w.cluster().voting.contains("{bootstrap-placeholder}-logs-m3"),
        "{:?}",
        w.cluster().voting
    );
    w.start(&ms[2]);
    w.advance(100);
    assert_eq!(w.voting_names(), vec!["logs-m1", "logs-m2", "logs-m3"]);
    assert_eq!(w.health()["number_of_nodes"], 3);
    assert!(w.m.violations.is_empty());
}

#[test]
fn a_node_joins_only_through_a_seed_that_is_a_live_master() {
    let mut w = World::new(CFG);
    let ms = masters(3, true);
    for m in &ms {
        w.start(m);
    }
    let mut d = data(1, &ms).remove(0);
    d.seeds = vec!["10.9.9.9:9300".into(), ms[0].publish_address.clone() + ":9301"];
    w.start(&d);
    w.advance(1000);
    assert!(
        !w.cluster().members.contains(&d.node_id),
        "a wrong seed file keeps it out"
    );
    assert!(matches!(w.req("GET", "/_cluster/health", "", Some(&d.node_id)), Reply::Done(r) if r.status == 503));
    // esfleet rewrites unicast_hosts.txt: the next heartbeat carries the new seeds
    d.seeds = vec![ms[2].transport_address()];
    w.start(&d);
    w.advance(200);
    assert!(w.cluster().members.contains(&d.node_id));
    assert!(matches!(w.req("GET", "/_cluster/health", "", Some(&d.node_id)), Reply::Done(r) if r.status == 200));
    // a seed pointing at a dead master does not let a new node in
    w.kill("logs-m3");
    w.advance(2000);
    let mut d2 = data(2, &ms).remove(1);
    d2.seeds = vec![ms[2].transport_address()];
    w.start(&d2);
    w.advance(500);
    assert!(!w.cluster().members.contains(&d2.node_id));
}

#[test]
fn voting_configuration_replaces_dead_voters_and_keeps_quorum_rules() {
    let mut w = green_cluster(0, 1, 0);
    w.kill("logs-m3");
    w.advance(2000);
    // ES keeps 3 voters while only 2 master-eligible nodes live: the dead one stays in
    assert_eq!(w.voting_names(), vec!["logs-m1", "logs-m2", "logs-m3"]);
    assert!(w.cluster().master.is_some());
    // its replacement (new node id: empty data dir, no initial_master_nodes) takes its place
    let mut m3b = masters(3, false).remove(2);
    m3b.node_id = "id-logs-m3-gen2".into();
    w.start(&m3b);
    w.advance(200);
    assert!(
        w.cluster().voting.contains("id-logs-m3-gen2"),
        "{:?}",
        w.cluster().voting
    );
    assert!(!w.cluster().voting.contains("id-logs-m3"));
    assert_eq!(w.cluster().voting.len(), 3);
    // two of three voters gone: no master, 503 everywhere, history says so
    w.kill("logs-m1");
    w.kill("logs-m2");
    w.advance(2000);
    assert!(w.cluster().master.is_none());
    let (s, b) = w.call("GET", "/_cluster/health", "");
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["type"], "master_not_discovered_exception");
    assert_eq!(w.m.history.last().unwrap().status, "no_master");
    // a voter restarting on its own data finds the cluster again without a master
    w.start(&masters(3, false)[0]);
    w.advance(200);
    assert!(w.cluster().master.is_some());
    assert!(w.m.violations.is_empty(), "{:?}", w.m.violations);
}

#[test]
fn voting_exclusions_remove_a_master_and_wait() {
    let mut w = green_cluster(0, 1, 0);
    let (s, b) = w.call("POST", "/_cluster/voting_config_exclusions?node_names=logs-m3", "");
    assert_eq!(s, 200, "{b}");
    // ES's reconfigurator applied to a fixpoint: odd-sized, without the excluded node. With
    // fewer than 3 members of the configuration left unexcluded, its floor is 1, not 3:
    // the configuration shrinks to the master alone (Reconfigurator's
    // `minimumConfigEnforcedSize`), so a second master can then leave without a quorum loss.
    let master = w.cluster().master.clone().expect("a master");
    assert_eq!(w.cluster().voting, BTreeSet::from([master]));
    let (_, state) = w.call(
        "GET",
        "/_cluster/state/metadata?filter_path=metadata.cluster_coordination",
        "",
    );
    let coord = &state["metadata"]["cluster_coordination"];
    assert_eq!(coord["voting_config_exclusions"][0]["node_name"], "logs-m3");
    assert_eq!(
        coord["last_committed_config"].as_array().unwrap().len(),
        w.cluster().voting.len()
    );
    assert!(
        state.get("cluster_name").is_none(),
        "filter_path keeps only what was asked: {state}"
    );
    // clearing waits until the excluded node has left the cluster
    let Reply::Pending(p) = w.req("DELETE", "/_cluster/voting_config_exclusions?timeout=5s", "", None) else {
        panic!("DELETE must wait while logs-m3 is still in the cluster")
    };
    w.stop("logs-m3");
    assert!(matches!(w.m.poll(&p, w.now), Reply::Done(r) if r.status == 200));
    assert!(w.cluster().exclusions.is_empty());
    // neither or both of node_names/node_ids: refused
    let (s, b) = w.call("POST", "/_cluster/voting_config_exclusions", "");
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (400, Some("action_request_validation_exception"))
    );
}

#[test]
fn excluded_node_relocates_its_shards_and_stays_green() {
    let mut w = green_cluster(4, 4, 1);
    let holds = |w: &World, name: &str| w.copies().iter().flatten().filter(|c| c.0 == name).count();
    assert!(holds(&w, "logs-d1") > 0);
    let before = w.m.history.len();
    let (s, b) = w.call(
        "PUT",
        "/_cluster/settings",
        r#"{"persistent":{"cluster.routing.allocation.exclude._name":"logs-d1"}}"#,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["persistent"]["cluster"]["routing"]["allocation"]["exclude"]["_name"],
        "logs-d1"
    );
    let states: Vec<String> = w
        .copies()
        .iter()
        .flatten()
        .filter(|c| c.0 == "logs-d1")
        .map(|c| c.3.clone())
        .collect();
    assert!(states.iter().all(|s| s == "RELOCATING"), "{states:?}");
    let (_, shards) = w.call("GET", "/_cat/shards?format=json", "");
    let relocating: Vec<&Value> = shards
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "RELOCATING")
        .collect();
    assert!(
        relocating[0]["node"]
            .as_str()
            .unwrap()
            .starts_with("logs-d1 -> 10.0.0."),
        "{shards}"
    );
    assert_eq!(w.health()["relocating_shards"].as_u64().unwrap() as usize, states.len());
    w.advance(5000);
    assert_eq!(holds(&w, "logs-d1"), 0, "{:?}", w.copies());
    assert_eq!(w.status(), "green");
    assert!(
        w.m.history[before..].iter().all(|h| h.status == "green"),
        "{:?}",
        w.m.history
    );
    // the excluded node, now empty, leaves gracefully: a decommission, not a node down
    w.stop("logs-d1");
    w.advance(100);
    assert_eq!(w.m.max_data_nodes_down_at_once, 0);
    // resetting with null removes the setting
    let (s, _) = w.call(
        "PUT",
        "/_cluster/settings",
        r#"{"persistent":{"cluster.routing.allocation.exclude._name":null}}"#,
    );
    assert_eq!(s, 200);
    let (_, got) = w.call("GET", "/_cluster/settings?flat_settings=true", "");
    assert_eq!(got["persistent"], serde_json::json!({}));
}

#[test]
fn forced_awareness_survives_a_zone_loss_yellow_never_red() {
    let mut w = green_cluster(6, 3, 1);
    for shard in w.copies() {
        let zones: BTreeSet<&String> = shard.iter().map(|c| &c.1).collect();
        assert_eq!(zones.len(), 2, "two copies in two zones: {shard:?}");
    }
    // zone a dies: its master and both data nodes
    for name in ["logs-m1", "logs-d1", "logs-d4"] {
        w.kill(name);
    }
    w.advance(2000);
    assert!(w.cluster().master.is_some());
    w.advance(5000);
    assert_eq!(w.status(), "yellow", "the lost copies wait for their nodes' delay");
    w.advance(DEFAULT_DELAYED_TIMEOUT_MS);
    assert_eq!(
        w.status(),
        "green",
        "the third zone takes the lost copies: {:?}",
        w.copies()
    );
    for shard in w.copies() {
        let zones: BTreeSet<&String> = shard.iter().map(|c| &c.1).collect();
        assert_eq!(zones, BTreeSet::from([&"b".to_string(), &"c".to_string()]), "{shard:?}");
    }
    assert!(!w.statuses_seen().contains("red"), "{:?}", w.m.history);
    assert!(w.statuses_seen().contains("yellow"));
    assert_eq!(w.m.max_data_nodes_down_at_once, 2);
}

#[test]
fn forced_awareness_keeps_copies_out_of_the_surviving_zone() {
    // two forced zones, one replica: after losing zone a, the replica has nowhere to go
    let mut w = World::new(CFG);
    let mut ms = masters(3, true);
    let forced = BTreeMap::from([("zone".to_string(), vec!["a".to_string(), "b".to_string()])]);
    for m in &mut ms {
        m.forced_awareness = forced.clone();
    }
    for m in &ms {
        w.start(m);
    }
    let mut ds = data(4, &ms);
    for (i, d) in ds.iter_mut().enumerate() {
        d.attributes.insert("zone".into(), ["a", "b"][i % 2].into());
        d.forced_awareness = forced.clone();
    }
    for d in &ds {
        w.start(d);
    }
    w.advance(100);
    w.call(
        "PUT",
        "/logs",
        r#"{"settings":{"index":{"number_of_shards":2,"number_of_replicas":1}}}"#,
    );
    w.advance(3000);
    assert_eq!(w.status(), "green");
    w.kill("logs-d1");
    w.kill("logs-d3");
    w.advance(8000);
    let h = w.health();
    assert_eq!(
        (h["status"].as_str(), h["unassigned_shards"].as_u64()),
        (Some("yellow"), Some(2)),
        "{:?}",
        w.copies()
    );
    // without forced values the surviving zone would take them
    w.call(
        "PUT",
        "/_cluster/settings",
        r#"{"transient":{"cluster.routing.allocation.awareness.force.zone.values":""}}"#,
    );
    w.advance(DEFAULT_DELAYED_TIMEOUT_MS + 3000);
    assert_eq!(w.status(), "green", "{:?}", w.copies());
    assert!(!w.statuses_seen().contains("red"));
}

#[test]
fn allocation_enable_primaries_holds_replicas_until_reenabled() {
    let mut w = green_cluster(3, 3, 1);
    let (s, _) = w.call(
        "PUT",
        "/_cluster/settings",
        r#"{"transient":{"cluster.routing.allocation.enable":"primaries"}}"#,
    );
    assert_eq!(s, 200);
    let (s, b) = w.call(
        "PUT",
        "/_cluster/settings",
        r#"{"transient":{"cluster.routing.allocation.enable":"some"}}"#,
    );
    assert_eq!(s, 400, "{b}");
    let held = w.copies().iter().flatten().filter(|c| c.0 == "logs-d2").count();
    assert!(held > 0);
    w.stop("logs-d2");
    w.advance(3000);
    let h = w.health();
    assert_eq!(h["status"], "yellow");
    assert_eq!(
        h["unassigned_shards"].as_u64().unwrap() as usize,
        held,
        "replicas are not rebuilt elsewhere"
    );
    assert_eq!(h["active_primary_shards"], 3, "lost primaries were promoted at once");
    // it comes back on its own data: still no replicas while enable=primaries
    w.start(&data(3, &masters(3, false))[1]);
    w.advance(2000);
    assert_eq!(w.status(), "yellow");
    w.call(
        "PUT",
        "/_cluster/settings",
        r#"{"transient":{"cluster.routing.allocation.enable":null}}"#,
    );
    // its own data: recovers in a tenth of a peer recovery
    w.advance(200);
    assert_eq!(w.status(), "green", "{:?}", w.copies());
    assert_eq!(w.copies().iter().flatten().filter(|c| c.0 == "logs-d2").count(), held);
    assert!(!w.statuses_seen().contains("red"));
    assert_eq!(w.m.max_data_nodes_down_at_once, 1);
}

#[test]
fn lost_primary_is_promoted_and_all_copies_lost_is_red() {
    let mut w = green_cluster(3, 1, 1);
    let shard = w.copies().remove(0);
    let primary = shard.iter().find(|c| c.2).unwrap().0.clone();
    let replica = shard.iter().find(|c| !c.2).unwrap().0.clone();
    w.kill(&primary);
    w.advance(1700);
    let now = w.copies().remove(0);
    assert!(now.iter().any(|c| c.0 == replica && c.2), "replica promoted: {now:?}");
    assert_eq!(w.status(), "yellow");
    assert!(!w.statuses_seen().contains("red"));
    w.advance(DEFAULT_DELAYED_TIMEOUT_MS + 2000);
    assert_eq!(w.status(), "green", "a new replica on the third node: {:?}", w.copies());
    // lose both copies at once
    let holders: Vec<String> = w.copies().remove(0).into_iter().map(|c| c.0).collect();
    for h in &holders {
        w.kill(h);
    }
    w.advance(1700);
    let h = w.health();
    assert_eq!(h["status"], "red", "{:?}", w.copies());
    assert_eq!(h["unassigned_shards"], 2);
    let replica = holders[0].clone();
    // an empty node never gets a fresh primary for lost data; the old owner brings it back
    let mut empty = data(4, &masters(3, false)).remove(3);
    empty.attributes.insert("zone".into(), "a".into());
    w.start(&empty);
    w.advance(3000);
    assert_eq!(w.status(), "red", "{:?}", w.copies());
    let back = data(3, &masters(3, false))
        .into_iter()
        .find(|d| d.node_name == replica)
        .unwrap();
    w.start(&back);
    w.advance(200);
    let h = w.health();
    assert_eq!(
        (h["status"].as_str(), h["active_primary_shards"].as_u64()),
        (Some("yellow"), Some(1)),
        "{:?}",
        w.copies()
    );
    w.advance(1000);
    assert_eq!(w.status(), "green", "{:?}", w.copies());
}

#[test]
fn health_waits_and_times_out_with_408() {
    let mut w = green_cluster(1, 1, 0); // one data node: a replica can never be assigned
    w.call("PUT", "/x", r#"{"settings":{"number_of_replicas":1}}"#);
    w.advance(1000);
    assert_eq!(w.status(), "yellow");
    let Reply::Pending(p) = w.req("GET", "/_cluster/health?wait_for_status=green&timeout=1s", "", None) else {
        panic!("must wait")
    };
    assert!(matches!(w.m.poll(&p, w.now + 999), Reply::Pending(_)));
    let Reply::Done(r) = w.m.poll(&p, w.now + 1000) else {
        panic!("deadline reached")
    };
    let b = body_of(&r);
    assert_eq!(
        (r.status, &b["timed_out"], &b["status"]),
        (408, &Value::Bool(true), &Value::from("yellow"))
    );
    // satisfied before the deadline: 200 at once
    let (s, b) = w.call("GET", "/_cluster/health?wait_for_status=yellow&timeout=1s", "");
    assert_eq!((s, b["timed_out"].as_bool()), (200, Some(false)));
    // a second data node arrives while waiting: 200
    let Reply::Pending(p) = w.req("GET", "/_cluster/health?wait_for_status=green&timeout=30s", "", None) else {
        panic!("must wait")
    };
    w.start(&data(2, &masters(3, false))[1]);
    w.advance(1500);
    assert!(matches!(w.m.poll(&p, w.now), Reply::Done(r) if r.status == 200));
    let (s, b) = w.call("GET", "/_cluster/health?wait_for_status=blue", "");
    assert_eq!(s, 400, "{b}");
}

#[test]
fn second_bootstrap_is_a_violation() {
    let mut w = green_cluster(0, 1, 0);
    // m2 and m3 are recreated with EMPTY data dirs, still rendered with initial_master_nodes,
    // and their seed files point only at each other: they bootstrap a second cluster.
    w.kill("logs-m2");
    w.kill("logs-m3");
    w.advance(2000);
    let mut fresh = masters(3, true);
    for m in &mut fresh[1..] {
        m.node_id.push_str("-gen2");
        m.seeds = vec!["10.0.0.2:9300".into(), "10.0.0.3:9300".into()];
    }
    w.start(&fresh[1]);
    w.start(&fresh[2]);
    w.advance(200);
    assert_eq!(w.m.clusters.len(), 2);
    assert!(
        w.m.violations[0].message.starts_with("second cluster bootstrapped"),
        "{:?}",
        w.m.violations
    );
}

#[test]
fn cat_endpoints_and_nodes_have_elasticsearch_shapes() {
    let mut w = green_cluster(2, 1, 1);
    let (_, nodes) = w.call("GET", "/_cat/nodes?format=json", "");
    let rows = nodes.as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let m = rows.iter().find(|r| r["master"] == "*").unwrap();
    assert_eq!(m["node.role"], "m");
    assert!(rows
        .iter()
        .any(|r| r["name"] == "logs-d1" && r["node.role"] == "di" && r["ip"] == "10.0.0.11"));
    let (_, info) = w.call("GET", "/_nodes", "");
    let d1 = &info["nodes"]["id-logs-d1"];
    assert_eq!(
        (d1["name"].as_str(), d1["transport_address"].as_str()),
        (Some("logs-d1"), Some("10.0.0.11:9300"))
    );
    assert_eq!(d1["attributes"]["zone"], "a");
    let (_, idx) = w.call("GET", "/_cat/indices?format=json", "");
    assert_eq!(
        (
            idx[0]["index"].as_str(),
            idx[0]["health"].as_str(),
            idx[0]["rep"].as_str()
        ),
        (Some("logs"), Some("green"), Some("1"))
    );
    let (s, b) = w.call("PUT", "/logs", "{}");
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (400, Some("resource_already_exists_exception"))
    );
    let (_, text) = w.call("GET", "/_cat/shards?v", "");
    assert!(text.as_str().unwrap().starts_with("index shard prirep state"), "{text}");
}

#[test]
fn quick_restart_on_own_data_fails_copies_and_recovers_fast() {
    let mut w = green_cluster(3, 2, 1);
    let held = w.copies().iter().flatten().filter(|c| c.0 == "logs-d1").count();
    assert!(held > 0);
    // killed and restarted within the fault-detection window: a new incarnation
    let mut d1 = data(1, &masters(3, false)).remove(0);
    d1.incarnation = 2;
    w.start(&d1);
    assert_eq!(w.status(), "yellow", "its copies were failed: {:?}", w.copies());
    w.advance(200);
    assert_eq!(
        w.status(),
        "green",
        "recovered from its own data in recovery_ms/10: {:?}",
        w.copies()
    );
    assert_eq!(w.copies().iter().flatten().filter(|c| c.0 == "logs-d1").count(), held);
    assert!(!w.statuses_seen().contains("red"));
}

#[test]
fn losing_the_elected_masters_zone_is_yellow_never_red() {
    let mut w = green_cluster(3, 6, 1);
    let master = w.cluster().master.clone().expect("a master");
    let master_name = w.m.nodes[&master].info.node_name.clone();
    let zone = w.m.nodes[&master].info.attributes["zone"].clone();
    let doomed: Vec<String> =
        w.m.nodes
            .values()
            .filter(|n| n.alive && n.info.attributes.get("zone") == Some(&zone))
            .map(|n| n.info.node_name.clone())
            .collect();
    assert!(
        doomed.len() >= 2,
        "{master_name} in zone {zone} with a data node: {doomed:?}"
    );
    for name in &doomed {
        w.kill(name);
    }
    w.advance(2000);
    assert!(w.cluster().master.is_some());
    w.advance(5000);
    assert!(!w.statuses_seen().contains("red"), "{:#?}", w.m.history);
}

#[test]
fn hidden_indices_are_listed_only_with_expand_wildcards() {
    let mut w = green_cluster(3, 1, 1);
    let (s, b) = w.call(
        "PUT",
        "/.ds-metrics-000001",
        r#"{"settings":{"index.hidden":true,"number_of_replicas":2}}"#,
    );
    assert_eq!(s, 200, "{b}");
    let names = |w: &mut World, target: &str| -> Vec<String> {
        let (s, b) = w.call("GET", target, "");
        assert_eq!(s, 200, "{b}");
        b.as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&mut w, "/_cat/indices?format=json"), ["logs"]);
    assert_eq!(
        names(&mut w, "/_cat/indices?format=json&expand_wildcards=all"),
        [".ds-metrics-000001", "logs"]
    );
    let (s, b) = w.call("PUT", "/x", r#"{"settings":{"index.hidden":"maybe"}}"#);
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (400, Some("illegal_argument_exception"))
    );
}

#[test]
fn a_lost_copy_waits_for_its_node_until_the_delay_ends() {
    // 3 data nodes, one shard with one replica: a node holding a copy crashes.
    let mut w = green_cluster(3, 1, 1);
    let holder = w.copies()[0].iter().find(|c| !c.2).unwrap().0.clone();
    let info = w.up.iter().find(|n| n.node_name == holder).unwrap().clone();
    w.kill(&holder);
    w.advance(5000);
    assert_eq!(w.status(), "yellow", "not rebuilt elsewhere within the delay");
    // It comes back with its data: the copy goes back to it, quickly, and nowhere else.
    w.start(&NodeInfo {
        incarnation: info.incarnation + 1,
        ..info.clone()
    });
    w.advance(500);
    assert_eq!(w.status(), "green", "{:?}", w.copies());
    assert!(w.copies()[0].iter().any(|c| c.0 == holder), "{:?}", w.copies());

    // Gone for longer than the delay: rebuilt on another node.
    w.kill(&holder);
    w.advance(DEFAULT_DELAYED_TIMEOUT_MS - 5000);
    assert_eq!(w.status(), "yellow");
    w.advance(10_000);
    assert_eq!(w.status(), "green", "{:?}", w.copies());
    assert!(!w.copies()[0].iter().any(|c| c.0 == holder));

    // The delay is an index setting; 0 rebuilds at once.
    let (s, b) = w.call(
        "PUT",
        "/logs/_settings",
        r#"{"index":{"unassigned":{"node_left":{"delayed_timeout":"0"}}}}"#,
    );
    assert_eq!(s, 200, "{b}");
    w.start(&NodeInfo {
        incarnation: info.incarnation + 2,
        ..info
    });
    w.advance(500);
    let next = w.copies()[0].iter().find(|c| !c.2).unwrap().0.clone();
    w.kill(&next);
    w.advance(3000);
    assert_eq!(w.status(), "green", "{:?}", w.copies());
    let (s, b) = w.call(
        "PUT",
        "/logs/_settings",
        r#"{"index.unassigned.node_left.delayed_timeout":"soon"}"#,
    );
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (400, Some("illegal_argument_exception"))
    );
    assert!(!w.statuses_seen().contains("red"));
}
