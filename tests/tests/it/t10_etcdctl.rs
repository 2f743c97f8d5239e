//! Debian's real `etcdctl` (3.4) against a 3-member cluster: every command a user of
//! esfleet's store would reach for, with its output parsed and checked.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use esfleet_tests::{free_port, poll, ProcessCluster};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::fixtures::{cluster, PATIENCE};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> String {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64: {s:?}: {e}"));
    String::from_utf8(bytes).expect("utf-8")
}

/// An integer field of etcdctl's JSON (absent means 0, as protobuf's JSON omits zeros).
fn int(v: &Value, field: &str) -> i64 {
    match &v[field] {
        Value::Null => 0,
        x => x
            .as_i64()
            .or_else(|| x.as_u64().map(|u| u as i64))
            .unwrap_or_else(|| panic!("{field} is not an integer in {v}")),
    }
}

fn uint(v: &Value, field: &str) -> u64 {
    match &v[field] {
        Value::Null => 0,
        x => x
            .as_u64()
            .unwrap_or_else(|| panic!("{field} is not an unsigned integer in {v}")),
    }
}

fn ok(c: &ProcessCluster, args: &[&str]) -> String {
    c.etcdctl_ok(args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn json(c: &ProcessCluster, args: &[&str]) -> Value {
    c.etcdctl_json(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `etcdctl put -w json`, returning the revision of the put.
fn put(c: &ProcessCluster, key: &str, value: &str) -> i64 {
    int(&json(c, &["put", key, value])["header"], "revision")
}

/// A running `etcdctl watch ... -w json`, its responses (one JSON line each) arriving on
/// a channel. Killed on drop.
struct WatchProcess {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl WatchProcess {
    fn spawn(c: &ProcessCluster, args: &[&str]) -> Self {
        let mut all = vec!["watch"];
        all.extend(args);
        all.extend(["-w", "json"]);
        let mut cmd = tokio::process::Command::from(c.etcdctl_cmd(&all));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawning etcdctl watch");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        WatchProcess { child, lines }
    }

    /// The next watch response, or `None` after `PATIENCE` or when etcdctl exits.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv()).await.ok()??;
            if line.trim().is_empty() {
                continue;
            }
            return Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("etcdctl watch printed {line:?}: {e}")));
        }
    }

    /// The next `n` events: (type, key, value, mod_revision).
    async fn events(&mut self, n: usize) -> Vec<(String, String, String, i64)> {
        let mut out = Vec::new();
        while out.len() < n {
            let resp = self
                .next()
                .await
                .unwrap_or_else(|| panic!("etcdctl watch ended after {} events: {out:?}", out.len()));
            for ev in resp["Events"].as_array().into_iter().flatten() {
                out.push(event(ev));
            }
        }
        out
    }
}

fn event(ev: &Value) -> (String, String, String, i64) {
    let kind = match int(ev, "type") {
        0 => "PUT",
        1 => "DELETE",
        t => panic!("unknown event type {t}"),
    };
    let kv = &ev["kv"];
    let value = if kv["value"].is_null() {
        String::new()
    } else {
        unb64(&kv["value"])
    };
    (kind.to_string(), unb64(&kv["key"]), value, int(kv, "mod_revision"))
}

#[tokio::test(flavor = "multi_thread")]
async fn put_and_get_with_prefix_rev_limit_keys_only_and_json() {
    let c = cluster(3).await;
    assert_eq!(ok(&c, &["put", "/t10/a", "1"]), "OK\n");
    let a1 = int(&json(&c, &["get", "/t10/a"])["kvs"][0], "mod_revision");
    let a2 = put(&c, "/t10/a", "2");
    let b = put(&c, "/t10/b", "3");
    let cc = put(&c, "/t10/c", "4");
    let last = put(&c, "/t10x", "outside the prefix");
    assert!(a1 < a2 && a2 < b && b < cc && cc < last, "{a1} {a2} {b} {cc} {last}");

    assert_eq!(ok(&c, &["get", "/t10/a"]), "/t10/a\n2\n");

    let got = json(&c, &["get", "/t10/a"]);
    let header = &got["header"];
    assert_eq!(int(header, "revision"), last, "header revision: {got}");
    assert_ne!(uint(header, "cluster_id"), 0, "{got}");
    assert_ne!(uint(header, "member_id"), 0, "{got}");
    assert!(int(header, "raft_term") > 0, "{got}");
    assert_eq!(int(&got, "count"), 1, "{got}");
    let kv = &got["kvs"][0];
    assert_eq!(unb64(&kv["key"]), "/t10/a");
    assert_eq!(kv["key"], Value::String(b64("/t10/a")));
    assert_eq!(unb64(&kv["value"]), "2");
    assert_eq!(int(kv, "create_revision"), a1, "{got}");
    assert_eq!(int(kv, "mod_revision"), a2, "{got}");
    assert_eq!(int(kv, "version"), 2, "{got}");

    assert_eq!(
        ok(&c, &["get", "/t10/", "--prefix"]),
        "/t10/a\n2\n/t10/b\n3\n/t10/c\n4\n"
    );
    // A positional range end is exclusive.
    assert_eq!(ok(&c, &["get", "/t10/a", "/t10/c"]), "/t10/a\n2\n/t10/b\n3\n");

    // History: the value and version as of an earlier revision.
    assert_eq!(ok(&c, &["get", "/t10/a", &format!("--rev={a1}")]), "/t10/a\n1\n");
    let old = json(&c, &["get", "/t10/a", &format!("--rev={a1}")]);
    assert_eq!(int(&old["kvs"][0], "version"), 1, "{old}");
    assert_eq!(int(&old["kvs"][0], "mod_revision"), a1, "{old}");
    let before_b = json(&c, &["get", "/t10/", "--prefix", &format!("--rev={a2}")]);
    assert_eq!(int(&before_b, "count"), 1, "/t10/b did not exist yet: {before_b}");

    let limited = json(&c, &["get", "/t10/", "--prefix", "--limit=2"]);
    let keys: Vec<String> = limited["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| unb64(&kv["key"]))
        .collect();
    assert_eq!(keys, ["/t10/a", "/t10/b"], "{limited}");
    assert_eq!(int(&limited, "count"), 3, "count is the whole range: {limited}");
    assert_eq!(limited["more"], Value::Bool(true), "{limited}");

    let keys_only = ok(&c, &["get", "/t10/", "--prefix", "--keys-only"]);
    let printed: Vec<&str> = keys_only.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(printed, ["/t10/a", "/t10/b", "/t10/c"], "{keys_only:?}");
    let keys_only = json(&c, &["get", "/t10/", "--prefix", "--keys-only"]);
    for kv in keys_only["kvs"].as_array().expect("kvs") {
        assert!(kv["value"].is_null(), "--keys-only returned a value: {kv}");
    }

    assert_eq!(ok(&c, &["get", "/t10/nothing"]), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn del_prints_how_many_keys_it_deleted() {
    let c = cluster(3).await;
    for k in ["/del/a", "/del/b", "/del/c", "/dell"] {
        ok(&c, &["put", k, "v"]);
    }
    assert_eq!(ok(&c, &["del", "/del/a"]), "1\n");
    assert_eq!(ok(&c, &["del", "/del/nothing"]), "0\n");
    assert_eq!(ok(&c, &["del", "/del/", "--prefix"]), "2\n");
    assert_eq!(ok(&c, &["del", "--prev-kv", "/dell"]), "1\n/dell\nv\n");
    assert_eq!(ok(&c, &["get", "/del", "--prefix"]), "");

    let put_rev = put(&c, "/del/x", "v");
    let del = json(&c, &["del", "/del/x"]);
    assert_eq!(int(&del, "deleted"), 1, "{del}");
    assert_eq!(
        int(&del["header"], "revision"),
        put_rev + 1,
        "a delete is a revision: {del}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_reads_compares_and_branches_from_stdin() {
    let c = cluster(3).await;
    ok(&c, &["put", "/txn/k", "v1"]);
    let txn = "value(\"/txn/k\") = \"v1\"\n\nput /txn/k v2\nget /txn/k\n\nput /txn/k failed\n\n";

    let out = c.etcdctl_stdin(&["txn", "--interactive=false"], txn);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout, "SUCCESS\n\nOK\n\n/txn/k\nv2\n", "{out:?}");

    // Same txn again: the value is v2 now, so the failure branch runs.
    let out = c.etcdctl_stdin(&["txn", "-i=false"], txn);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout, "FAILURE\n\nOK\n", "{out:?}");
    assert_eq!(ok(&c, &["get", "/txn/k"]), "/txn/k\nfailed\n");

    // Compares on revisions and versions, several at once, JSON output.
    let rev = int(&json(&c, &["get", "/txn/k"])["kvs"][0], "mod_revision");
    let txn = format!(
        "mod(\"/txn/k\") = \"{rev}\"\nversion(\"/txn/k\") = \"3\"\ncreate(\"/txn/k\") < \"{rev}\"\nversion(\"/txn/missing\") = \"0\"\n\nput /txn/other yes\n\n\n"
    );
    let out = c.etcdctl_stdin(&["txn", "-w", "json"], &txn);
    assert!(out.status.success(), "{out:?}");
    let resp: Value = serde_json::from_slice(&out.stdout).expect("txn -w json");
    assert_eq!(resp["succeeded"], Value::Bool(true), "{resp}");
    assert_eq!(int(&resp["header"], "revision"), rev + 1, "{resp}");
    assert_eq!(ok(&c, &["get", "/txn/other"]), "/txn/other\nyes\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_sees_live_events() {
    let c = cluster(3).await;
    let mut watch = WatchProcess::spawn(&c, &["/w/key"]);

    // etcdctl does not say when its watch is established: put until an event shows up.
    let mut puts = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let first = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcdctl watch reported none of {} puts",
            puts.len()
        );
        let value = format!("early-{}", puts.len());
        let rev = put(&c, "/w/key", &value);
        puts.push((value, rev));
        match tokio::time::timeout(Duration::from_millis(200), watch.lines.recv()).await {
            Ok(Some(line)) if line.trim().is_empty() => continue,
            Ok(Some(line)) => break line,
            Ok(None) => panic!("etcdctl watch exited"),
            Err(_) => continue,
        }
    };
    let first: Value = serde_json::from_str(&first).expect("watch -w json");
    let mut seen: Vec<_> = first["Events"].as_array().expect("events").iter().map(event).collect();
    let first_value = seen[0].2.clone();
    let from = puts
        .iter()
        .position(|(v, _)| *v == first_value)
        .unwrap_or_else(|| panic!("watch reported {first_value:?}, never put"));

    let final_rev = put(&c, "/w/key", "final");
    let del_rev = int(&json(&c, &["del", "/w/key"])["header"], "revision");
    let expected_len = puts.len() - from + 2;
    seen.extend(watch.events(expected_len - seen.len()).await);

    let mut expected: Vec<_> = puts[from..]
        .iter()
        .map(|(v, rev)| ("PUT".to_string(), "/w/key".to_string(), v.clone(), *rev))
        .collect();
    expected.push(("PUT".into(), "/w/key".into(), "final".into(), final_rev));
    expected.push(("DELETE".into(), "/w/key".into(), String::new(), del_rev));
    assert_eq!(seen, expected, "once established, the watch sees every event in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_replays_history_from_a_past_revision() {
    let c = cluster(3).await;
    let r1 = put(&c, "/h/k", "v1");
    let r2 = put(&c, "/h/k", "v2");
    let r3 = int(&json(&c, &["del", "/h/k"])["header"], "revision");
    let r4 = put(&c, "/h/other", "o");
    let r5 = put(&c, "/h/k", "v3");

    let mut watch = WatchProcess::spawn(&c, &["/h/k", &format!("--rev={r1}")]);
    let expected = vec![
        ("PUT".to_string(), "/h/k".to_string(), "v1".to_string(), r1),
        ("PUT".into(), "/h/k".into(), "v2".into(), r2),
        ("DELETE".into(), "/h/k".into(), String::new(), r3),
        ("PUT".into(), "/h/k".into(), "v3".into(), r5),
    ];
    assert_eq!(watch.events(4).await, expected);

    let mut watch = WatchProcess::spawn(&c, &["--prefix", "/h/", &format!("--rev={r3}")]);
    let expected = vec![
        ("DELETE".to_string(), "/h/k".to_string(), String::new(), r3),
        ("PUT".into(), "/h/other".into(), "o".into(), r4),
        ("PUT".into(), "/h/k".into(), "v3".into(), r5),
    ];
    assert_eq!(watch.events(3).await, expected);
    // And it stays live after the replay.
    let r6 = put(&c, "/h/new", "n");
    assert_eq!(
        watch.events(1).await,
        [("PUT".to_string(), "/h/new".to_string(), "n".to_string(), r6)]
    );
    watch.child.kill().await.ok();
}

/// Parses the hex lease id out of `lease 694d7b0a1c2e4f05 granted with TTL(600s)`.
fn lease_id(granted: &str) -> String {
    let words: Vec<&str> = granted.split_whitespace().collect();
    assert!(
        words.len() >= 3 && words[0] == "lease" && words[2] == "granted",
        "unexpected lease grant output {granted:?}"
    );
    words[1].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_grant_keep_alive_timetolive_and_revoke() {
    let c = cluster(3).await;
    let granted = ok(&c, &["lease", "grant", "600"]);
    let id = lease_id(&granted);
    assert_eq!(granted, format!("lease {id} granted with TTL(600s)\n"));
    let id_num = i64::from_str_radix(&id, 16).expect("hex lease id");

    ok(&c, &["put", &format!("--lease={id}"), "/l/k", "v"]);
    let got = json(&c, &["get", "/l/k"]);
    assert_eq!(int(&got["kvs"][0], "lease"), id_num, "{got}");

    assert_eq!(
        ok(&c, &["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(600)\n")
    );

    let ttl = ok(&c, &["lease", "timetolive", "--keys", &id]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(600s), remaining(")),
        "{ttl:?}"
    );
    assert!(ttl.ends_with("s), attached keys([/l/k])\n"), "{ttl:?}");
    let ttl = json(&c, &["lease", "timetolive", "--keys", &id]);
    assert_eq!(int(&ttl, "id"), id_num, "{ttl}");
    assert_eq!(int(&ttl, "granted-ttl"), 600, "{ttl}");
    let remaining = int(&ttl, "ttl");
    assert!(0 < remaining && remaining <= 600, "{ttl}");
    let keys: Vec<String> = ttl["keys"].as_array().expect("keys").iter().map(unb64).collect();
    assert_eq!(keys, ["/l/k"], "{ttl}");

    let list = ok(&c, &["lease", "list"]);
    assert!(list.lines().any(|l| l == id), "{list:?}");

    assert_eq!(ok(&c, &["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    assert_eq!(ok(&c, &["get", "/l/k"]), "", "revoking deletes the lease's keys");
    assert_eq!(
        ok(&c, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    let list = ok(&c, &["lease", "list"]);
    assert!(!list.lines().any(|l| l == id), "{list:?}");

    // A lease that is not kept alive expires, and its keys go with it.
    let short = lease_id(&ok(&c, &["lease", "grant", "2"]));
    ok(&c, &["put", &format!("--lease={short}"), "/l/short", "v"]);
    poll("the 2 s lease to expire", PATIENCE, || async {
        let left = ok(&c, &["get", "/l/short"]);
        anyhow::ensure!(left.is_empty(), "still there: {left:?}");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        ok(&c, &["lease", "timetolive", &short]),
        format!("lease {short} already expired\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn member_list_add_and_remove() {
    let c = cluster(3).await;
    let list = json(&c, &["member", "list"]);
    assert_ne!(uint(&list["header"], "cluster_id"), 0, "{list}");
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{list}");
    let mut ids = Vec::new();
    for i in 0..3 {
        let m = members
            .iter()
            .find(|m| m["name"] == c.name(i))
            .unwrap_or_else(|| panic!("{} not in {list}", c.name(i)));
        assert_eq!(m["peerURLs"], serde_json::json!([c.peer_url(i)]), "{m}");
        assert_eq!(m["clientURLs"], serde_json::json!([c.endpoint(i)]), "{m}");
        ids.push(uint(m, "ID"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "member ids are distinct: {list}");
    assert!(!ids.contains(&0), "{list}");
    let plain = ok(&c, &["member", "list"]);
    assert_eq!(plain.lines().count(), 3, "{plain:?}");
    assert!(plain.lines().all(|l| l.contains(", started, ")), "{plain:?}");

    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let peer_flag = format!("--peer-urls={peer}");
    // etcd refuses membership changes for a few seconds after members connect.
    let added = poll("etcdctl member add", PATIENCE, || async {
        c.etcdctl_ok(&["member", "add", "n4", &peer_flag])
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let first = added.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("Member ") && first.contains(" added to cluster "),
        "{added:?}"
    );
    let new_id = first.split_whitespace().nth(1).unwrap().to_string();
    assert!(added.contains("ETCD_NAME=\"n4\"\n"), "{added:?}");
    assert!(added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n"), "{added:?}");
    assert!(added.contains(&format!("n4={peer}")), "{added:?}");
    for i in 0..3 {
        assert!(added.contains(&format!("{}={}", c.name(i), c.peer_url(i))), "{added:?}");
    }

    let list = json(&c, &["member", "list"]);
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 4, "{list}");
    let new = members
        .iter()
        .find(|m| m["peerURLs"] == serde_json::json!([peer]))
        .unwrap_or_else(|| panic!("the added member is not listed: {list}"));
    assert_eq!(format!("{:x}", uint(new, "ID")), new_id, "{list}");
    assert!(
        new["clientURLs"].as_array().is_none_or(|u| u.is_empty()),
        "a member that never started has no client URLs: {new}"
    );
    let plain = ok(&c, &["member", "list"]);
    assert!(
        plain
            .lines()
            .any(|l| l.starts_with(&new_id) && l.contains(", unstarted, ")),
        "{plain:?}"
    );

    let removed = poll("etcdctl member remove", PATIENCE, || async {
        c.etcdctl_ok(&["member", "remove", &new_id])
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        removed.starts_with(&format!("Member {new_id} removed from cluster ")),
        "{removed:?}"
    );
    let list = json(&c, &["member", "list"]);
    assert_eq!(list["members"].as_array().expect("members").len(), 3, "{list}");
    // The cluster still serves writes with its three members.
    ok(&c, &["put", "/m/after", "v"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_status_and_health() {
    let c = cluster(3).await;
    ok(&c, &["put", "/e/k", "v"]);
    let mut endpoints = c.endpoints();
    endpoints.sort();

    for args in [&["endpoint", "status"][..], &["endpoint", "status", "--cluster"]] {
        let status = json(&c, args);
        let entries = status.as_array().unwrap_or_else(|| panic!("{status}"));
        let mut listed: Vec<String> = entries
            .iter()
            .map(|e| e["Endpoint"].as_str().expect("Endpoint").to_string())
            .collect();
        listed.sort();
        assert_eq!(listed, endpoints, "{args:?}: {status}");
        let leader = uint(&entries[0]["Status"], "leader");
        assert_ne!(leader, 0, "{status}");
        let mut leaders = 0;
        for e in entries {
            let s = &e["Status"];
            assert_eq!(uint(s, "leader"), leader, "members agree on the leader: {status}");
            assert!(uint(s, "raftTerm") > 0, "{status}");
            assert!(uint(s, "raftIndex") > 0, "{status}");
            assert!(int(s, "dbSize") > 0, "{status}");
            assert!(!s["version"].as_str().unwrap_or("").is_empty(), "{status}");
            assert!(int(&s["header"], "revision") >= 2, "{status}");
            if uint(&s["header"], "member_id") == leader {
                leaders += 1;
            }
        }
        assert_eq!(leaders, 1, "exactly one endpoint is the leader: {status}");
    }
    let table = ok(&c, &["endpoint", "status"]);
    assert_eq!(table.lines().count(), 3, "{table:?}");

    for args in [&["endpoint", "health"][..], &["endpoint", "health", "--cluster"]] {
        let health = json(&c, args);
        let entries = health.as_array().unwrap_or_else(|| panic!("{health}"));
        let mut listed: Vec<String> = entries
            .iter()
            .map(|e| e["endpoint"].as_str().expect("endpoint").to_string())
            .collect();
        listed.sort();
        assert_eq!(listed, endpoints, "{args:?}: {health}");
        for e in entries {
            assert_eq!(e["health"], Value::Bool(true), "{health}");
        }
    }
    let out = c.etcdctl(&["endpoint", "health"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.matches(" is healthy: ").count(), 3, "{said:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_discards_history_below_the_revision() {
    let c = cluster(3).await;
    let revs: Vec<i64> = (1..=5).map(|i| put(&c, "/c/k", &format!("v{i}"))).collect();
    let at = revs[2];
    assert_eq!(
        ok(&c, &["compaction", &at.to_string()]),
        format!("compacted revision {at}\n")
    );
    assert_eq!(ok(&c, &["get", "/c/k", &format!("--rev={at}")]), "/c/k\nv3\n");
    assert_eq!(ok(&c, &["get", "/c/k"]), "/c/k\nv5\n");

    let below = format!("--rev={}", revs[1]);
    let out = c.etcdctl(&["get", "/c/k", &below]);
    assert!(!out.status.success(), "reading below the compaction worked: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("required revision has been compacted"), "{stderr}");

    // A watch from below the compaction is canceled, saying why.
    let mut cmd = tokio::process::Command::from(c.etcdctl_cmd(&["watch", "/c/k", &below]));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("etcdctl watch below the compaction did not exit")
        .expect("running etcdctl watch");
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("required revision has been compacted"), "{said}");

    // Compacting again at or below the compacted revision is an error.
    let out = c.etcdctl(&["compaction", &revs[0].to_string()]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("required revision has been compacted"), "{stderr}");
}
