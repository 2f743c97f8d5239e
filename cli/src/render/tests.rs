//! Snapshot tests: fixed answers in, the exact text out. The expected strings are the
//! contract with users (and scripts that parse `--no-legend` output).

use super::*;

const M1: &str = "1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6";
const M2: &str = "2b3c4d5e6f7a48b9c0d1e2f3a4b5c6d7";
const M3: &str = "3c4d5e6f7a8b49c0d1e2f3a4b5c6d7e8";

fn placement(machine: &str, address: &str, active: &str, sub: &str) -> pb::Placement {
    pb::Placement {
        machine_id: machine.into(),
        machine_address: address.into(),
        machine_hostname: format!("host-{}", &machine[..2]),
        desired: "launched".into(),
        hash: "0a4d55a8d778e5022fab701977c5d840bbc486d0".into(),
        generation: 3,
        load: "loaded".into(),
        active: active.into(),
        sub: sub.into(),
        reported_hash: "0a4d55a8d778e5022fab701977c5d840bbc486d0".into(),
        reported_generation: 3,
        since_usec: 1_714_557_600_000_000,
        n_restarts: 0,
        error: String::new(),
        reported: true,
    }
}

fn list_units() -> pb::ListUnitsResponse {
    let status = |name: &str, p: pb::Placement| pb::UnitStatus {
        name: name.into(),
        placement: Some(p),
    };
    let mut failed = placement(M3, "10.88.0.13", "failed", "failed");
    failed.n_restarts = 5;
    let mut unreported = placement(M1, "", "", "");
    unreported.load = String::new();
    unreported.reported = false;
    pb::ListUnitsResponse {
        units: vec![
            status("es-data@1.service", placement(M2, "10.88.0.12", "active", "running")),
            status(
                "es-master@1.service",
                placement(M1, "10.88.0.11", "activating", "start"),
            ),
            status("hello-global.service", placement(M1, "10.88.0.11", "active", "running")),
            status("hello-global.service", placement(M2, "10.88.0.12", "active", "running")),
            status("hello-global.service", failed),
            status("hello.service", unreported),
        ],
        revision: 42,
    }
}

/// `names`, after checking them as `--fields` would.
fn checked(names: &[&'static str], known: &[&str]) -> Vec<&'static str> {
    let owned: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    check_fields(&owned, known).unwrap();
    names.to_vec()
}

fn style() -> Style {
    Style {
        legend: true,
        full: false,
        color: false,
    }
}

#[test]
fn list_units_default_columns() {
    let rows = unit_rows(&list_units());
    let fields = checked(&["unit", "machine", "active", "sub"], UNIT_FIELDS);
    assert_eq!(
        units_table(&rows, &fields, style()),
        "\
UNIT                  MACHINE                 ACTIVE      SUB
es-data@1.service     2b3c4d5e.../10.88.0.12  active      running
es-master@1.service   1a2b3c4d.../10.88.0.11  activating  start
hello-global.service  1a2b3c4d.../10.88.0.11  active      running
hello-global.service  2b3c4d5e.../10.88.0.12  active      running
hello-global.service  3c4d5e6f.../10.88.0.13  failed      failed
hello.service         1a2b3c4d...             -           -
"
    );
}

#[test]
fn list_units_fields_no_legend_full() {
    let rows = unit_rows(&list_units());
    let given = ["unit", "machine", "restarts", "hash", "since"].map(String::from);
    let fields = check_fields(&given, UNIT_FIELDS).unwrap();
    let s = Style {
        legend: false,
        full: true,
        color: false,
    };
    let table = units_table(&rows[4..], &fields, s);
    assert_eq!(
        table,
        "\
hello-global.service  3c4d5e6f7a8b49c0d1e2f3a4b5c6d7e8/10.88.0.13  5  0a4d55a8d778e5022fab701977c5d840bbc486d0  2024-05-01T10:00:00Z
hello.service         1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6             0  0a4d55a8d778e5022fab701977c5d840bbc486d0  2024-05-01T10:00:00Z
"
    );
}

#[test]
fn list_units_colour_only_when_asked() {
    let rows = unit_rows(&list_units());
    let fields = checked(&["unit", "active"], UNIT_FIELDS);
    let plain = units_table(&rows, &fields, style());
    assert!(!plain.contains('\x1b'));
    let colored = units_table(&rows, &fields, Style { color: true, ..style() });
    assert!(colored.contains("\x1b[31mfailed\x1b[0m"), "{colored}");
    // Colour never moves a column: without the escapes the text is the same.
    assert_eq!(strip_ansi(&colored), plain);
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn list_units_json_parses_back() {
    let rows = unit_rows(&list_units());
    let back: Vec<UnitRow> = serde_json::from_str(&units_json(&rows)).unwrap();
    assert_eq!(back, rows);
    assert_eq!(back[4].machine_id, M3);
    assert_eq!(back[4].restarts, 5);
}

#[test]
fn unknown_field_suggests_the_nearest() {
    let e = check_fields(&["unit".into(), "mahcine".into()], UNIT_FIELDS).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("did you mean \"machine\"?"), "{e}");
}

fn list_unit_files() -> pb::ListUnitFilesResponse {
    let info = |name: &str, desired: &str, state: &str, placements: Vec<pb::Placement>| pb::UnitInfo {
        name: name.into(),
        hash: "0a4d55a8d778e5022fab701977c5d840bbc486d0".into(),
        desired: desired.into(),
        state: state.into(),
        placements,
        exists: true,
        is_template: name.contains("@."),
        ..Default::default()
    };
    let mut unplaceable = info("es-master@4.service", "launched", "inactive", vec![]);
    unplaceable.unplaceable = "DistinctBy=zone: every zone (a, b, c) already has an es-master unit".into();
    pb::ListUnitFilesResponse {
        // Deliberately unsorted: the rows are sorted by name.
        units: vec![
            info(
                "hello.service",
                "launched",
                "launched",
                vec![placement(M1, "10.88.0.11", "active", "running")],
            ),
            info("es-master@.service", "inactive", "inactive", vec![]),
            unplaceable,
            info(
                "hello-global.service",
                "launched",
                "launched",
                vec![
                    placement(M1, "10.88.0.11", "active", "running"),
                    placement(M2, "10.88.0.12", "active", "running"),
                    placement(M3, "10.88.0.13", "failed", "failed"),
                ],
            ),
            info(
                "es-data@1.service",
                "loaded",
                "loaded",
                vec![placement(M2, "10.88.0.12", "inactive", "dead")],
            ),
        ],
        revision: 7,
    }
}

#[test]
fn list_unit_files_sorted_with_reasons_below() {
    let rows = unit_file_rows(&list_unit_files());
    let fields = checked(&["unit", "hash", "dstate", "state", "target"], UNIT_FILE_FIELDS);
    assert_eq!(
        unit_files_table(&rows, &fields, style()),
        "\
UNIT                  HASH     DSTATE    STATE     TARGET
es-data@1.service     0a4d55a  loaded    loaded    2b3c4d5e.../10.88.0.12
es-master@.service    0a4d55a  inactive  inactive  -
es-master@4.service   0a4d55a  launched  inactive  unplaceable
hello-global.service  0a4d55a  launched  launched  1a2b3c4d.../10.88.0.11 +2
hello.service         0a4d55a  launched  launched  1a2b3c4d.../10.88.0.11
es-master@4.service cannot be placed: DistinctBy=zone: every zone (a, b, c) already has an es-master unit
"
    );
    // Every line fits an 80-column terminal.
    for line in unit_files_table(&rows, &fields, style()).lines().take(6) {
        assert!(line.chars().count() <= 80, "{line}");
    }
}

#[test]
fn list_unit_files_no_legend_and_json() {
    let rows = unit_file_rows(&list_unit_files());
    let fields = checked(&["unit", "state"], UNIT_FILE_FIELDS);
    let s = Style {
        legend: false,
        ..style()
    };
    assert_eq!(
        unit_files_table(&rows, &fields, s),
        "\
es-data@1.service     loaded
es-master@.service    inactive
es-master@4.service   inactive
hello-global.service  launched
hello.service         launched
"
    );
    let back: Vec<UnitFileRow> = serde_json::from_str(&unit_files_json(&rows)).unwrap();
    assert_eq!(back, rows);
    assert_eq!(back[3].targets.len(), 3);
    assert!(back[2].unplaceable.starts_with("DistinctBy=zone"));
}

fn list_machines() -> pb::ListMachinesResponse {
    let machine = |id: &str, addr: &str, md: &[(&str, &str)], units: u32, state: &str| pb::Machine {
        id: id.into(),
        address: addr.into(),
        hostname: format!("host-{}", &id[..2]),
        metadata: md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        facts: Some(pb::HostFacts {
            cpus: 8,
            memory_bytes: 32 << 30,
            ..Default::default()
        }),
        agent_version: "0.1.0".into(),
        agent_endpoint: format!("{addr}:7001"),
        unit_count: units,
        state: state.into(),
        drain: None,
    };
    let mut draining = machine(M2, "10.88.0.12", &[("zone", "b"), ("rack", "r2")], 1, "draining");
    draining.drain = Some(pb::DrainInfo {
        reason: "disk replacement".into(),
        remaining: vec!["es-data@1.service".into()],
        done: false,
    });
    pb::ListMachinesResponse {
        machines: vec![
            machine(M3, "", &[], 1, "suspect"),
            machine(
                M1,
                "10.88.0.11",
                &[("zone", "a"), ("rack", "r1"), ("disk", "ssd"), ("role", "es")],
                3,
                "up",
            ),
            draining,
        ],
        revision: 9,
    }
}

#[test]
fn list_machines_table_and_json() {
    let rows = machine_rows(&list_machines());
    assert_eq!(
        machines_table(&rows, style()),
        "\
MACHINE      IP          ZONE  RACK  METADATA          UNITS  STATE
1a2b3c4d...  10.88.0.11  a     r1    disk=ssd,role=es  3      up
2b3c4d5e...  10.88.0.12  b     r2    -                 1      draining
3c4d5e6f...  -           -     -     -                 1      suspect
"
    );
    let back: Vec<MachineRow> = serde_json::from_str(&machines_json(&rows)).unwrap();
    assert_eq!(back, rows);
    assert_eq!(back[1].drain_remaining, ["es-data@1.service"]);
    assert_eq!(back[0].metadata["role"], "es");
}

fn cluster_status() -> pb::ClusterStatusResponse {
    let member = |id: u64, name: &str, port: u16, leader: bool| pb::MemberStatus {
        id,
        name: name.into(),
        peer_urls: vec![format!("http://10.0.0.{port}:2380")],
        client_urls: vec![format!("http://10.0.0.{port}:2379")],
        is_learner: false,
        is_leader: leader,
        reachable: true,
        error: String::new(),
        raft_term: 4,
        raft_index: 1207,
        raft_applied_index: 1207,
        db_size: 3 << 20,
    };
    let mut down = member(0x3c, "n3", 3, false);
    down.reachable = false;
    down.error = "cannot reach http://10.0.0.3:2379: tcp connect error: Connection refused".into();
    down.db_size = 0;
    pb::ClusterStatusResponse {
        cluster_id: 0xcdf818194e3a8c32,
        member_id: 0x8e9e05c52164694d,
        leader_id: 0x8e9e05c52164694d,
        raft_term: 4,
        raft_index: 1207,
        raft_applied_index: 1207,
        revision: 311,
        members: vec![
            member(0x8e9e05c52164694d, "n1", 1, true),
            member(0x2a, "n2", 2, false),
            down,
        ],
        healthy: true,
        scheduler_epoch: 4,
    }
}

#[test]
fn cluster_status_text_and_json() {
    let view = cluster_view(&cluster_status());
    assert_eq!(
        cluster_status_text(&view, false),
        "\
cluster cdf818194e3a8c32 is healthy
leader: 8e9e05c52164694d (n1)
raft term 4, index 1207, applied 1207; revision 311; scheduler epoch 4

MEMBER            NAME  CLIENT URL            ROLE      HEALTH       INDEX  DB
8e9e05c52164694d  n1    http://10.0.0.1:2379  leader    ok           1207   3.0 MiB
000000000000002a  n2    http://10.0.0.2:2379  follower  ok           1207   3.0 MiB
000000000000003c  n3    http://10.0.0.3:2379  follower  unreachable  -      -
n3 (000000000000003c): cannot reach http://10.0.0.3:2379: tcp connect error: Connection refused
"
    );
    let back: ClusterView = serde_json::from_str(&cluster_json(&view)).unwrap();
    assert_eq!(back, view);
    assert_eq!(back.leader, "8e9e05c52164694d");
}

#[test]
fn cluster_without_leader() {
    let mut s = cluster_status();
    s.leader_id = 0;
    s.healthy = false;
    for m in &mut s.members {
        m.is_leader = false;
    }
    let text = cluster_status_text(&cluster_view(&s), false);
    assert!(text
        .starts_with("cluster cdf818194e3a8c32 is unhealthy\nleader: none (an election is under way, or no quorum)\n"));
}

#[test]
fn member_list() {
    let members = vec![
        etcd::Member {
            id: 0x2a,
            name: "n2".into(),
            peer_ur_ls: vec!["http://10.0.0.2:2380".into()],
            client_ur_ls: vec!["http://10.0.0.2:2379".into()],
            is_learner: false,
        },
        etcd::Member {
            id: 0x8e9e05c52164694d,
            name: String::new(),
            peer_ur_ls: vec!["http://10.0.0.4:2380".into()],
            client_ur_ls: vec![],
            is_learner: true,
        },
    ];
    let rows = member_rows(&members);
    assert_eq!(
        members_table(&rows, style()),
        "\
MEMBER            NAME           PEER URLS             CLIENT URLS           ROLE
8e9e05c52164694d  (not started)  http://10.0.0.4:2380  -                     learner
000000000000002a  n2             http://10.0.0.2:2380  http://10.0.0.2:2379  voter
"
    );
    let back: Vec<MemberRow> = serde_json::from_str(&members_json(&rows)).unwrap();
    assert_eq!(back, rows);
}

#[test]
fn garbled_ids_and_timestamps_from_the_server_do_not_panic() {
    assert_eq!(short_id("éééééééééé", false), "éééééééé...");
    assert_eq!(short_id("0123456789abcdef", false), "01234567...");
    assert_eq!(short_id("0123", false), "0123");
    assert_eq!(timestamp(u64::MAX), format!("{}µs", u64::MAX));
    assert_eq!(timestamp(1_700_000_000_000_000), "2023-11-14T22:13:20Z");
}
