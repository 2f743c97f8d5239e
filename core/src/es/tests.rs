use std::collections::BTreeMap;

use super::*;
use crate::model::{HostFacts, MachineRecord};
use crate::options::{Distinct, HealthCheck, XFleet};
use crate::unit::validate_unit;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn units_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/es")
}

fn example_text() -> String {
    std::fs::read_to_string(units_dir().join("logs.toml")).unwrap()
}

/// The smallest valid file: a name and the two required counts.
const MINIMAL: &str = "name = \"logs\"\n[master]\ncount = 3\n[data]\ncount = 6\n";

fn parse_err(text: &str) -> SpecError {
    parse_spec(text).expect_err("the spec should be refused")
}

/// `MINIMAL` with `extra` lines appended to the top level (before the tables).
fn with_top(extra: &str) -> String {
    format!("name = \"logs\"\n{extra}\n[master]\ncount = 3\n[data]\ncount = 6\n")
}

fn machine(id: &str, address: &str, zone: Option<&str>, rack: Option<&str>) -> MachineRecord {
    let mut metadata = BTreeMap::new();
    if let Some(z) = zone {
        metadata.insert("zone".to_string(), z.to_string());
    }
    if let Some(r) = rack {
        metadata.insert("rack".to_string(), r.to_string());
    }
    MachineRecord {
        id: id.to_string(),
        hostname: format!("host-{id}"),
        address: address.to_string(),
        agent_endpoint: String::new(),
        metadata,
        facts: HostFacts::default(),
        agent_version: String::new(),
    }
}

fn record(text: &str, bootstrapped: bool) -> ClusterRecord {
    ClusterRecord {
        spec: parse_spec(text).unwrap(),
        bootstrapped,
    }
}

fn three_masters() -> Vec<MasterAddr> {
    vec![
        MasterAddr {
            node: "logs-m2".into(),
            address: "10.77.0.2".into(),
        },
        MasterAddr {
            node: "logs-m1".into(),
            address: "10.77.0.1".into(),
        },
        MasterAddr {
            node: "logs-m3".into(),
            address: "10.77.0.7".into(),
        },
    ]
}

// ---------------------------------------------------------------- parsing and defaults

#[test]
fn example_parses_with_its_values() {
    let spec = parse_spec(&example_text()).unwrap();
    assert_eq!(spec.name, "logs");
    assert_eq!(spec.zones, ["a", "b", "c"]);
    assert_eq!(spec.runtime, Runtime::Nspawn);
    assert_eq!(spec.image, "/var/lib/machines/elasticsearch");
    assert_eq!(
        spec.master,
        RoleSpec {
            count: 3,
            memory_bytes: 2 * GIB,
            heap_bytes: GIB,
            cpu_millis: 1000,
            http_port: 9201,
            transport_port: 9301,
        }
    );
    assert_eq!(spec.data.count, 6);
    assert_eq!(spec.data.memory_bytes, 8 * GIB);
    assert_eq!(spec.data.heap_bytes, 4 * GIB);
    assert_eq!(spec.data.cpu_millis, 2000);
    assert_eq!((spec.data.http_port, spec.data.transport_port), (9200, 9300));
    assert_eq!(spec.coordinating.count, 0);
    assert_eq!(
        spec.settings,
        BTreeMap::from([
            ("action.destructive_requires_name".to_string(), serde_json::json!(true)),
            (
                "indices.recovery.max_bytes_per_sec".to_string(),
                serde_json::json!("100mb")
            ),
        ])
    );
}

#[test]
fn minimal_file_gets_every_default() {
    let spec = parse_spec(MINIMAL).unwrap();
    assert_eq!(
        spec,
        ClusterSpec {
            name: "logs".into(),
            zones: vec![],
            flavor: Flavor::Elasticsearch,
            runtime: Runtime::Plain,
            user: "elasticsearch".into(),
            exec: "/usr/share/elasticsearch/bin/elasticsearch".into(),
            config_template: "/etc/elasticsearch".into(),
            image: "/var/lib/machines/elasticsearch".into(),
            data_root: "/var/lib/esfleet/es".into(),
            memory_lock: false,
            env: BTreeMap::new(),
            master: RoleSpec {
                count: 3,
                memory_bytes: 0,
                heap_bytes: 0,
                cpu_millis: 0,
                http_port: 9201,
                transport_port: 9301
            },
            data: RoleSpec {
                count: 6,
                memory_bytes: 0,
                heap_bytes: 0,
                cpu_millis: 0,
                http_port: 9200,
                transport_port: 9300
            },
            coordinating: RoleSpec {
                count: 0,
                memory_bytes: 0,
                heap_bytes: 0,
                cpu_millis: 0,
                http_port: 9202,
                transport_port: 9302
            },
            settings: BTreeMap::new(),
            config_files: vec![],
            http: HttpSpec::default(),
        }
    );
}

#[test]
fn contract_example_parses() {
    // The file shown in ES_CONTRACT.md, verbatim apart from the removal of `exec`'s and
    // `image`'s runtime mismatch (the contract lists every key at once).
    let text = r#"
name = "logs"
zones = ["a", "b", "c"]
runtime = "plain"
user = "elasticsearch"
exec = "/usr/share/elasticsearch/bin/elasticsearch"
config_template = "/etc/elasticsearch"
data_root = "/var/lib/esfleet/es"
memory_lock = false
[env]
SOME_VAR = "x"
[master]
count = 3
memory = "2g"
heap = "1g"
cpu = 1
http_port = 9201
transport_port = 9301
[data]
count = 6
memory = "4g"
[coordinating]
count = 0
[settings]
"indices.recovery.max_bytes_per_sec" = "100mb"
"#;
    let spec = parse_spec(text).unwrap();
    assert_eq!(spec.env["SOME_VAR"], "x");
    assert_eq!(spec.data.heap_bytes, 2 * GIB);
    assert_eq!(spec.master.heap_bytes, GIB);
}

#[test]
fn cpu_takes_integers_fractions_and_strings() {
    for (value, millis) in [("2", 2000), ("0.5", 500), ("1.25", 1250), ("\"1.5\"", 1500)] {
        let spec = parse_spec(&format!(
            "name = \"x\"\n[master]\ncount = 1\ncpu = {value}\n[data]\ncount = 1\n"
        ))
        .unwrap();
        assert_eq!(spec.master.cpu_millis, millis, "cpu = {value}");
    }
    let e = parse_err("name = \"x\"\n[master]\ncount = 1\ncpu = 0.0001\n[data]\ncount = 1\n");
    assert_eq!(
        e.to_string(),
        "line 4, column 7: master.cpu: \"0.0001\" has more than three decimals; CPUs are counted in thousandths"
    );
}

#[test]
fn sizes_are_elasticsearch_sizes() {
    assert_eq!(parse_es_size("512m"), Ok(512 * MIB));
    assert_eq!(parse_es_size("4g"), Ok(4 * GIB));
    assert_eq!(parse_es_size("31G"), Ok(31 * GIB));
    assert_eq!(parse_es_size("2gb"), Ok(2 * GIB));
    assert_eq!(parse_es_size("1024k"), Ok(MIB));
    assert_eq!(
        parse_es_size("512"),
        Err("\"512\" has no unit; write e.g. \"512m\" or \"512g\"".to_string())
    );
    assert!(parse_es_size("1.5g").unwrap_err().contains("is not a size"));
    assert!(parse_es_size("g").unwrap_err().contains("is not a size"));
    assert!(parse_es_size("4x").unwrap_err().contains("is not a size"));
    assert!(parse_es_size("99999999999t").unwrap_err().contains("too large"));
    assert_eq!(jvm_size(GIB), "1g");
    assert_eq!(jvm_size(1536 * MIB), "1536m");
    assert_eq!(unit_size(4 * GIB), "4G");
    assert_eq!(unit_size(512 * MIB), "512M");
}

// ---------------------------------------------------------------- parse errors

/// Each refusal, with its whole message: the position, what is wrong, what to do.
#[test]
fn parse_errors_name_the_place_and_the_fix() {
    let cases: Vec<(String, &str)> = vec![
        (
            "name = \"logs\"\n[master\ncount = 3\n".to_string(),
            "line 2, column 8: ",
        ),
        (
            "nmae = \"logs\"\n".to_string(),
            "line 1, column 1: unknown key \"nmae\" in the top level; did you mean \"name\"?",
        ),
        (
            "name = \"logs\"\n[master]\ncount = 3\nmemroy = \"2g\"\n".to_string(),
            "line 4, column 1: unknown key \"memroy\" in [master]; did you mean \"memory\"?",
        ),
        (
            "name = \"logs\"\n[master]\nweight = 3\n".to_string(),
            "line 3, column 1: unknown key \"weight\" in [master]; known keys are count, memory, heap, cpu, http_port, transport_port",
        ),
        (
            "name = \"logs\"\ncount = 3\n".to_string(),
            "line 2, column 1: unknown key \"count\" in the top level; count belongs in a role's table: [master], [data] or [coordinating]",
        ),
        (
            "name = \"logs\"\n\"cluster.routing.rebalance.enable\" = \"all\"\n".to_string(),
            "line 2, column 1: unknown key \"cluster.routing.rebalance.enable\" in the top level; Elasticsearch settings go in the [settings] table",
        ),
        (
            "name = \"logs\"\n[masters]\ncount = 3\n".to_string(),
            "line 2, column 2: unknown key \"masters\" in the top level; did you mean \"master\"?",
        ),
        (
            "[master]\ncount = 3\n".to_string(),
            "the cluster needs a name: add name = \"logs\" (lower-case letters and digits) at the top",
        ),
        (
            "name = \"Logs\"\n[master]\ncount = 3\n[data]\ncount = 3\n".to_string(),
            "line 1, column 1: name = \"Logs\" is not a cluster name; use a lower-case letter followed by lower-case letters and digits, as in \"logs\"",
        ),
        (
            "name = 7\n".to_string(),
            "line 1, column 8: name must be a string in double quotes; found a integer",
        ),
        (
            "name = \"logs\"\n[master]\ncount = \"3\"\n".to_string(),
            "line 3, column 9: master.count must be a whole number; found a string",
        ),
        (
            "name = \"logs\"\n[master]\ncount = -1\n".to_string(),
            "line 3, column 9: master.count = -1 is out of range; it must be 0 to 4294967295",
        ),
        (
            "name = \"logs\"\n[master]\ncount = 3\n[data]\ncount = 0\n".to_string(),
            "line 5, column 1: a cluster needs data nodes to hold its shards: set count in [data] (at least 1)",
        ),
        (
            "name = \"logs\"\n[data]\ncount = 3\n".to_string(),
            "a cluster needs master-eligible nodes: set count = 3 in [master] (an odd number, one per zone)",
        ),
        (
            "name = \"logs\"\n[master]\ncount = 3\nmemory = 2\n".to_string(),
            "line 4, column 10: master.memory = 2 has no unit; write a string with one, as in memory = \"2g\" or \"2m\"",
        ),
        (
            "name = \"logs\"\n[master]\ncount = 3\nmemory = \"2 gigs\"\n".to_string(),
            "line 4, column 10: master.memory: \"2 gigs\" is not a size; write a whole number and k, m, g or t, as in \"512m\" or \"4g\"",
        ),
        (
            with_top("runtime = \"docker\""),
            "line 2, column 11: runtime = \"docker\" is not known; use \"plain\" (a local install run as a service) or \"nspawn\" (a systemd-nspawn container per node)",
        ),
        (
            with_top("runtime = \"nspawn\"\nexec = \"/opt/es/bin/elasticsearch\""),
            "line 3, column 8: exec is only used with runtime = \"plain\" (this file says runtime = \"nspawn\"); remove it or change the runtime",
        ),
        (
            with_top("image = \"/var/lib/machines/es\""),
            "line 2, column 9: image is only used with runtime = \"nspawn\" (this file says runtime = \"plain\"); remove it or change the runtime",
        ),
        (
            with_top("zones = [\"a\", \"b\", \"a\"]"),
            "line 2, column 20: zone \"a\" is listed twice in zones",
        ),
        (
            with_top("zones = [\"a\", \"\"]"),
            "line 2, column 15: zones holds an empty string; remove it",
        ),
        (
            with_top("zones = [\"a\", 2]"),
            "line 2, column 15: zones holds strings; item 2 is a integer",
        ),
        (
            with_top("zones = [\"eu west\"]"),
            "line 2, column 10: zone \"eu west\" contains ' '; a zone is letters, digits and _.-: (as in the machines' zone metadata)",
        ),
        (
            with_top("data_root = \"var/lib/es\""),
            "line 2, column 1: data_root = \"var/lib/es\" is not an absolute path; write an absolute path such as \"/var/lib/esfleet/es\"",
        ),
        (
            with_top("data_root = \"/srv/es data\""),
            "line 2, column 1: data_root = \"/srv/es data\" contains ' ' (paths are written into unit files unquoted: letters, digits and /_.-+@ only); write an absolute path such as \"/var/lib/esfleet/es\"",
        ),
        (
            with_top("config_template = \"/etc/../elasticsearch\""),
            "line 2, column 1: config_template = \"/etc/../elasticsearch\" has \".\", \"..\" or \"//\" in it; write an absolute path such as \"/etc/elasticsearch\"",
        ),
        (
            with_top("user = \"Elastic Search\""),
            "line 2, column 1: user = \"Elastic Search\" is not a user name; use lower-case letters, digits, _ and - (at most 32), as in \"elasticsearch\"",
        ),
        (
            with_top("memory_lock = \"yes\""),
            "line 2, column 15: memory_lock must be true or false; found a string",
        ),
        (
            with_top("[env]\nESFLEET_ZONE = \"a\""),
            "line 3, column 1: ESFLEET_ZONE is set by esfleet (ESFLEET_* by the agent, ES_JAVA_OPTS from heap, ES_PATH_CONF to the rendered config); remove it from [env]",
        ),
        (
            with_top("[env]\n\"BAD-NAME\" = \"a\""),
            "line 3, column 1: environment variable name \"BAD-NAME\" is not valid; use letters, digits and _, not starting with a digit",
        ),
        (
            with_top("[env]\nLIST = [1]"),
            "line 3, column 8: env.LIST is a array; an environment value is a string, as in LIST = \"value\"",
        ),
        (
            "name = \"logs\"\n[master]\ncount = 3\n[data]\ncount = 3\nhttp_port = 9201\n".to_string(),
            "line 6, column 1: data.http_port = 9201 is also master.http_port; nodes of different roles can share a host, so every role needs its own ports",
        ),
        (
            "name = \"logs\"\n[master]\ncount = 3\ntransport_port = 9201\n[data]\ncount = 3\n".to_string(),
            "line 4, column 1: master.transport_port = 9201 is also master.http_port; nodes of different roles can share a host, so every role needs its own ports",
        ),
        (
            "name = \"logs\"\n[master]\ncount = 3\nhttp_port = 0\n[data]\ncount = 3\n".to_string(),
            "line 4, column 1: master.http_port = 0 is not a port; use 1 to 65535",
        ),
        (
            "name = \"logs\"\n[master]\ncount = 3\nhttp_port = 70000\n".to_string(),
            "line 4, column 13: master.http_port = 70000 is out of range; it must be 0 to 65535",
        ),
        (
            "name = \"logs\"\nmaster = 3\n".to_string(),
            "line 2, column 10: master must be a table, written [master] on its own line; found a integer",
        ),
        (
            "name = \"logs\"\nname = \"other\"\n".to_string(),
            "line 2, column 1: duplicate key name; a key may appear only once in a table",
        ),
    ];
    for (text, want) in cases {
        let e = parse_err(&text);
        let got = e.to_string();
        if want.ends_with(": ") || want.contains("duplicate key") {
            // TOML syntax errors: the position is ours, the wording toml's.
            assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}…");
            assert!(!got.ends_with(": "), "{got}");
            assert!(matches!(e, SpecError::Syntax { .. }), "{e:?}");
        } else {
            assert_eq!(got, want, "for {text:?}");
        }
    }
}

#[test]
fn errors_carry_a_location_for_the_cli() {
    let e = parse_err("name = \"logs\"\n[master]\n  count = 3\n  memroy = \"2g\"\n");
    assert_eq!(e.location(), Some(Location { line: 4, column: 3 }));
    assert!(matches!(e, SpecError::UnknownKey { ref key, .. } if key == "memroy"));
    assert_eq!(
        e.message(),
        "unknown key \"memroy\" in [master]; did you mean \"memory\"?"
    );
    // A spec read back from JSON has no file to point into.
    let mut spec = parse_spec(MINIMAL).unwrap();
    spec.name = "9lives".into();
    let e = spec.validate().unwrap_err();
    assert_eq!(e.location(), None);
    assert!(
        e.to_string().starts_with("name = \"9lives\" is not a cluster name"),
        "{e}"
    );
}

// ---------------------------------------------------------------- heap and memory

#[test]
fn heap_defaults_to_half_of_memory_capped_at_31g() {
    let heap = |memory: &str| {
        parse_spec(&format!(
            "name = \"x\"\n[master]\ncount = 1\nmemory = \"{memory}\"\n[data]\ncount = 1\n"
        ))
        .unwrap()
        .master
        .heap_bytes
    };
    assert_eq!(heap("2g"), GIB);
    assert_eq!(heap("3g"), 1536 * MIB);
    assert_eq!(heap("62g"), 31 * GIB);
    assert_eq!(heap("128g"), 31 * GIB);
    // Rounded down to a MiB so -Xmx is exact.
    assert_eq!(heap("2049m"), 1024 * MIB);
    assert_eq!(heap("4097k"), 2 * MIB);
    assert_eq!(default_heap(64 * GIB), MAX_HEAP_BYTES);
}

#[test]
fn heap_rules_are_enforced() {
    let spec = |role: &str| format!("name = \"x\"\n[master]\ncount = 1\n[data]\ncount = 1\n{role}");
    let e = parse_err(&spec("memory = \"4g\"\nheap = \"3g\"\n"));
    assert_eq!(
        e.to_string(),
        "line 7, column 1: heap 3g is more than half of memory 4g; Elasticsearch needs the other half for the filesystem cache and off-heap buffers: use at most \"2g\" or raise memory"
    );
    let e = parse_err(&spec("heap = \"32g\"\n"));
    assert_eq!(
        e.to_string(),
        "line 6, column 1: heap 32g is above 31g, where the JVM loses compressed object pointers; use at most \"31g\""
    );
    let e = parse_err(&spec("memory = \"128g\"\nheap = \"40g\"\n"));
    assert!(e.to_string().contains("heap 40g is above 31g"), "{e}");
    let e = parse_err(&spec("memory = \"1m\"\n"));
    assert_eq!(
        e.to_string(),
        "line 6, column 1: memory 1m leaves no heap (the heap is at most half the memory); give at least \"2m\", realistically \"1g\" or more"
    );
    // Exactly half, and exactly 31g, are fine; a heap without memory is the operator's call.
    assert_eq!(
        parse_spec(&spec("memory = \"4g\"\nheap = \"2g\"\n"))
            .unwrap()
            .data
            .heap_bytes,
        2 * GIB
    );
    assert_eq!(
        parse_spec(&spec("memory = \"64g\"\nheap = \"31g\"\n"))
            .unwrap()
            .data
            .heap_bytes,
        31 * GIB
    );
    assert_eq!(
        parse_spec(&spec("heap = \"1g\"\n")).unwrap().data,
        RoleSpec {
            count: 1,
            memory_bytes: 0,
            heap_bytes: GIB,
            cpu_millis: 0,
            http_port: 9200,
            transport_port: 9300
        }
    );
}

// ---------------------------------------------------------------- names

#[test]
fn node_names_are_at_most_11_characters() {
    let file = |name: &str, masters: u32, data: u32| {
        format!("name = \"{name}\"\n[master]\ncount = {masters}\n[data]\ncount = {data}\n")
    };
    // logsclu-d10: 11 characters.
    assert!(parse_spec(&file("logsclu", 3, 10)).is_ok());
    let e = parse_err(&file("logsclu", 3, 100));
    assert_eq!(
        e.to_string(),
        "line 5, column 1: node name \"logsclu-d100\" is 12 characters; node names are systemd-nspawn machine names and may be at most 11, so with 100 data node(s) the cluster name can have at most 6 characters"
    );
    let e = parse_err(&file("logsclust", 1, 1));
    assert_eq!(
        e.to_string(),
        "line 1, column 1: node name \"logsclust-m1\" is 12 characters; node names are systemd-nspawn machine names and may be at most 11, so with 1 master node(s) the cluster name can have at most 8 characters"
    );
    // Coordinating nodes count too, even when the name fits the others.
    let e = parse_err(&format!("{}[coordinating]\ncount = 100\n", file("abcdefg", 3, 3)));
    assert!(e.to_string().contains("\"abcdefg-c100\" is 12 characters"), "{e}");
    assert!(parse_spec(&format!("{}[coordinating]\ncount = 99\n", file("abcdefg", 3, 3))).is_ok());
}

// ---------------------------------------------------------------- [settings]

#[test]
fn settings_are_flattened_to_dotted_keys() {
    let text = format!(
        "{MINIMAL}[settings]\n\"indices.recovery.max_bytes_per_sec\" = \"100mb\"\nthread_pool.write.queue_size = 1000\n\
         [settings.cluster.routing.allocation.disk]\nthreshold_enabled = true\nwatermark.low = \"85%\"\n\
         [settings.xpack]\nsecurity.enabled = false\nratio = 0.75\nlist = [\"a\", 1, true]\n"
    );
    let spec = parse_spec(&text).unwrap();
    let keys: Vec<&str> = spec.settings.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "cluster.routing.allocation.disk.threshold_enabled",
            "cluster.routing.allocation.disk.watermark.low",
            "indices.recovery.max_bytes_per_sec",
            "thread_pool.write.queue_size",
            "xpack.list",
            "xpack.ratio",
            "xpack.security.enabled",
        ]
    );
    assert_eq!(spec.settings["thread_pool.write.queue_size"], serde_json::json!(1000));
    assert_eq!(spec.settings["xpack.ratio"], serde_json::json!(0.75));
    assert_eq!(spec.settings["xpack.list"], serde_json::json!(["a", 1, true]));
}

#[test]
fn owned_settings_are_refused() {
    let cases = [
        (
            "\"cluster.name\" = \"other\"",
            "setting \"cluster.name\" is managed by esfleet and cannot be set in [settings]: it is the cluster's name = ...",
        ),
        (
            "network.host = \"0.0.0.0\"",
            "setting \"network.host\" is managed by esfleet and cannot be set in [settings]: nodes bind to 127.0.0.1 and their machine's address",
        ),
        (
            "discovery.seed_hosts = [\"a:9300\"]",
            "setting \"discovery.seed_hosts\" is managed by esfleet and cannot be set in [settings]: seed hosts come from the masters' placements (unicast_hosts.txt)",
        ),
        (
            "\"cluster.routing.allocation.awareness.attributes\" = \"rack\"",
            "setting \"cluster.routing.allocation.awareness.attributes\" is managed by esfleet and cannot be set in [settings]: zone awareness is forced over the cluster's zones = [...]",
        ),
        (
            "node.roles = [\"data\"]",
            "setting \"node.roles\" is managed by esfleet and cannot be set in [settings]: the roles come from the [master], [data] and [coordinating] tables",
        ),
        (
            "node.attr.zone = \"a\"",
            "setting \"node.attr.zone\" is managed by esfleet and cannot be set in [settings]: the zone comes from the machine's zone metadata",
        ),
        (
            "path.data = \"/data\"",
            "setting \"path.data\" is managed by esfleet and cannot be set in [settings]: set data_root; each placement gets <data_root>/<node>/<generation>",
        ),
        (
            "http.port = 9999",
            "setting \"http.port\" is managed by esfleet and cannot be set in [settings]: set http_port in the role's table",
        ),
        (
            "cluster.initial_master_nodes = [\"a\"]",
            "setting \"cluster.initial_master_nodes\" is managed by esfleet and cannot be set in [settings]: esfleet sets it for the first bootstrap only",
        ),
        (
            "bootstrap.memory_lock = true",
            "setting \"bootstrap.memory_lock\" is managed by esfleet and cannot be set in [settings]: set memory_lock = true at the top level",
        ),
    ];
    for (line, message) in cases {
        let e = parse_err(&format!("{MINIMAL}[settings]\n{line}\n"));
        // A dotted key points at its last part (`host` of `network.host`).
        assert_eq!(e.location().map(|l| l.line), Some(7), "for {line}");
        assert!(e.to_string().ends_with(message), "for {line}: {e}");
    }
    // The table form is refused the same way, pointing at the innermost key.
    let e = parse_err(&format!("{MINIMAL}[settings.discovery]\ntype = \"single-node\"\n"));
    assert_eq!(
        e.to_string(),
        "line 7, column 1: setting \"discovery.type\" is managed by esfleet and cannot be set in [settings]: seed hosts come from the masters' placements (unicast_hosts.txt)"
    );
}

#[test]
fn bad_settings_values_are_refused() {
    let e = parse_err(&format!("{MINIMAL}[settings]\nwhen = 1979-05-27\n"));
    assert_eq!(
        e.to_string(),
        "line 7, column 8: setting \"when\" is a TOML date; write it as a string, as in \"1979-05-27\""
    );
    let e = parse_err(&format!("{MINIMAL}[settings]\nnested = [[1]]\n"));
    assert_eq!(
        e.to_string(),
        "line 7, column 11: setting \"nested\": an array holds plain values (strings, numbers, booleans), not arrays or tables"
    );
    let e = parse_err(&format!("{MINIMAL}[settings]\n\"a.b\" = 1\n[settings.a]\nb = 2\n"));
    assert!(e.to_string().contains("setting \"a.b\" is given twice"), "{e}");
    // From JSON, an object value (which TOML flattening never makes) is refused.
    let mut spec = parse_spec(MINIMAL).unwrap();
    spec.settings.insert("x".into(), serde_json::json!({"y": 1}));
    assert_eq!(
        spec.validate().unwrap_err().to_string(),
        "setting \"x\" must be a string, number, boolean or an array of those"
    );
}

// ---------------------------------------------------------------- JSON record

#[test]
fn record_round_trips_through_json_and_validates() {
    let rec = record(&example_text(), false);
    let json = serde_json::to_string(&rec).unwrap();
    let back: ClusterRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rec);
    back.spec.validate().unwrap();
    // `bootstrapped` defaults to false for a record written without it.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_object_mut().unwrap().remove("bootstrapped");
    let back: ClusterRecord = serde_json::from_value(v).unwrap();
    assert!(!back.bootstrapped);
    // Field names other parts read are stable.
    let v: serde_json::Value = serde_json::to_value(&rec).unwrap();
    assert_eq!(v["spec"]["runtime"], "nspawn");
    assert_eq!(v["spec"]["master"]["count"], 3);
    assert_eq!(v["spec"]["data"]["http_port"], 9200);
    assert_eq!(v["spec"]["zones"], serde_json::json!(["a", "b", "c"]));
}

// ---------------------------------------------------------------- render_files

#[test]
fn data_node_config_is_the_contracts_example() {
    let rec = record(&with_top("zones = [\"a\", \"b\", \"c\"]"), true);
    let node = node_of(&rec.spec, &UnitName::new("logs-d@3.service").unwrap()).unwrap();
    let m = machine("4f2c", "10.77.0.3", Some("a"), Some("r1"));
    let files = render_files(&rec, &node, &m, 17, &three_masters());
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["elasticsearch.yml", "unicast_hosts.txt"]
    );
    assert_eq!(
        files["elasticsearch.yml"],
        "# Generated by esfleet for node logs-d3 of cluster logs on machine 4f2c (generation 17).
# esfleet rewrites this file; edit cluster.toml and run `esfleet es apply` instead.
cluster.name: \"logs\"
cluster.routing.allocation.awareness.attributes: \"zone\"
cluster.routing.allocation.awareness.force.zone.values: [\"a\",\"b\",\"c\"]
discovery.seed_providers: \"file\"
http.port: 9200
network.bind_host: [\"127.0.0.1\",\"10.77.0.3\"]
network.publish_host: \"10.77.0.3\"
node.attr.rack: \"r1\"
node.attr.zone: \"a\"
node.name: \"logs-d3\"
node.roles: [\"data\",\"ingest\"]
path.data: \"/var/lib/esfleet/es/logs-d3/17\"
transport.port: 9300
"
    );
    // Bootstrapped or not, a data node never gets initial_master_nodes.
    let unboot = ClusterRecord {
        bootstrapped: false,
        ..rec.clone()
    };
    assert_eq!(render_files(&unboot, &node, &m, 17, &three_masters()), files);
}

#[test]
fn master_before_bootstrap_lists_initial_masters() {
    let rec = record(&example_text(), false);
    let node = node_of(&rec.spec, &UnitName::new("logs-m@2.service").unwrap()).unwrap();
    let m = machine("aa01", "10.77.0.2", Some("b"), None);
    let files = render_files(&rec, &node, &m, 5, &three_masters());
    assert_eq!(
        files["elasticsearch.yml"],
        "# Generated by esfleet for node logs-m2 of cluster logs on machine aa01 (generation 5).
# esfleet rewrites this file; edit cluster.toml and run `esfleet es apply` instead.
action.destructive_requires_name: true
cluster.initial_master_nodes: [\"logs-m1\",\"logs-m2\",\"logs-m3\"]
cluster.name: \"logs\"
cluster.routing.allocation.awareness.attributes: \"zone\"
cluster.routing.allocation.awareness.force.zone.values: [\"a\",\"b\",\"c\"]
discovery.seed_providers: \"file\"
http.port: 9201
indices.recovery.max_bytes_per_sec: \"100mb\"
network.bind_host: [\"127.0.0.1\",\"10.77.0.2\"]
network.publish_host: \"10.77.0.2\"
node.attr.zone: \"b\"
node.name: \"logs-m2\"
node.roles: [\"master\"]
path.data: \"/var/lib/esfleet/es/logs-m2/5\"
transport.port: 9301
"
    );
}

#[test]
fn master_after_bootstrap_has_no_initial_masters() {
    let rec = record(&example_text(), true);
    let node = node_of(&rec.spec, &UnitName::new("logs-m@1.service").unwrap()).unwrap();
    let m = machine("aa01", "10.77.0.1", Some("a"), Some("r2"));
    let yml = &render_files(&rec, &node, &m, 9, &three_masters())["elasticsearch.yml"];
    assert!(!yml.contains("initial_master_nodes"), "{yml}");
    assert!(yml.contains("\nnode.roles: [\"master\"]\n"), "{yml}");
    assert!(yml.contains("\nnode.attr.rack: \"r2\"\n"), "{yml}");
    // Forced awareness keeps every zone of the record, whatever the machine's zone.
    assert!(
        yml.contains("\ncluster.routing.allocation.awareness.force.zone.values: [\"a\",\"b\",\"c\"]\n"),
        "{yml}"
    );
}

#[test]
fn coordinating_node_has_no_roles() {
    let text = format!("{MINIMAL}[coordinating]\ncount = 2\n");
    let rec = record(&text, true);
    let node = node_of(&rec.spec, &UnitName::new("logs-c@2.service").unwrap()).unwrap();
    assert_eq!(
        node,
        Node {
            role: Role::Coordinating,
            ordinal: 2,
            name: "logs-c2".into()
        }
    );
    // A machine without zone or rack metadata, and a spec without zones: no awareness.
    let m = machine("cc", "10.1.1.1", None, None);
    let yml = &render_files(&rec, &node, &m, 1, &[])["elasticsearch.yml"];
    let lines: Vec<&str> = yml.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "cluster.name: \"logs\"",
            "discovery.seed_providers: \"file\"",
            "http.port: 9202",
            "network.bind_host: [\"127.0.0.1\",\"10.1.1.1\"]",
            "network.publish_host: \"10.1.1.1\"",
            "node.name: \"logs-c2\"",
            "node.roles: []",
            "path.data: \"/var/lib/esfleet/es/logs-c2/1\"",
            "transport.port: 9302",
        ]
    );
}

#[test]
fn rendered_yml_parses_back_as_key_json_lines() {
    // The format the test stand-in reads: `#` comments, else `key: <JSON>`, keys sorted.
    let rec = record(&format!("{MINIMAL}[settings]\nx.y = \"quote \\\" and \\\\\"\n"), false);
    let rec = ClusterRecord {
        spec: ClusterSpec {
            memory_lock: true,
            ..rec.spec
        },
        ..rec
    };
    let node = node_of(&rec.spec, &UnitName::new("logs-m@1.service").unwrap()).unwrap();
    let yml = &render_files(&rec, &node, &machine("m", "127.0.0.1", None, None), 3, &[])["elasticsearch.yml"];
    let mut keys = Vec::new();
    for line in yml.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (k, v) = line.split_once(": ").unwrap();
        let _: serde_json::Value = serde_json::from_str(v).unwrap_or_else(|e| panic!("{line}: {e}"));
        keys.push(k.to_string());
    }
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(yml.contains("\nbootstrap.memory_lock: true\n"), "{yml}");
    assert!(yml.contains("\nx.y: \"quote \\\" and \\\\\"\n"), "{yml}");
    // A machine at 127.0.0.1 binds it once.
    assert!(yml.contains("\nnetwork.bind_host: [\"127.0.0.1\"]\n"), "{yml}");
}

#[test]
fn unicast_hosts_lists_master_transport_addresses_sorted() {
    let rec = record(&example_text(), false);
    let node = node_of(&rec.spec, &UnitName::new("logs-d@1.service").unwrap()).unwrap();
    let m = machine("d1", "10.77.0.9", Some("c"), None);
    let files = render_files(&rec, &node, &m, 1, &three_masters());
    assert_eq!(
        files["unicast_hosts.txt"],
        "# Generated by esfleet: the transport addresses of cluster logs's master nodes (3 of 3 placed).
# Elasticsearch re-reads this file by itself; esfleet rewrites it as masters move.
10.77.0.1:9301
10.77.0.2:9301
10.77.0.7:9301
"
    );
    // Every node of the cluster gets the same seed list, whatever its role.
    let master = node_of(&rec.spec, &UnitName::new("logs-m@3.service").unwrap()).unwrap();
    assert_eq!(
        render_files(&rec, &master, &m, 1, &three_masters())["unicast_hosts.txt"],
        files["unicast_hosts.txt"]
    );
    // IPv6 in brackets; before any master is placed, comments only.
    let v6 = [MasterAddr {
        node: "logs-m1".into(),
        address: "fd00::1".into(),
    }];
    let text = &render_files(&rec, &node, &m, 1, &v6)["unicast_hosts.txt"];
    assert!(text.ends_with("(1 of 3 placed).\n# Elasticsearch re-reads this file by itself; esfleet rewrites it as masters move.\n[fd00::1]:9301\n"), "{text}");
    let none = &render_files(&rec, &node, &m, 1, &[])["unicast_hosts.txt"];
    assert!(none.lines().all(|l| l.starts_with('#')), "{none}");
}

// ---------------------------------------------------------------- bootstrap checks

#[test]
fn bootstrap_check_requires_map_count_and_threads() {
    let good = HostFacts {
        max_map_count: 262_144,
        threads_max: 4096,
        ..HostFacts::default()
    };
    assert_eq!(bootstrap_check(&good), Ok(()));
    let low = HostFacts {
        max_map_count: 65_530,
        ..good.clone()
    };
    assert_eq!(
        bootstrap_check(&low),
        Err("vm.max_map_count is 65530, Elasticsearch needs at least 262144: run `sysctl -w vm.max_map_count=262144` on the host (and persist it in /etc/sysctl.d/), or start esfleet-agent with --set-max-map-count".to_string())
    );
    let threads = HostFacts {
        threads_max: 1000,
        ..good.clone()
    };
    assert_eq!(
        bootstrap_check(&threads),
        Err("kernel.threads-max is 1000, Elasticsearch needs at least 4096: run `sysctl -w kernel.threads-max=4096` on the host (and persist it in /etc/sysctl.d/)".to_string())
    );
    // Not reported: fails, saying so, for each fact.
    let e = bootstrap_check(&HostFacts::default()).unwrap_err();
    assert_eq!(
        e,
        "vm.max_map_count was not reported by the agent (Elasticsearch needs at least 262144); check that the agent can read /proc/sys/vm/max_map_count; kernel.threads-max was not reported by the agent (Elasticsearch needs at least 4096); check that the agent can read /proc/sys/kernel/threads-max"
    );
}

// ---------------------------------------------------------------- removal rules

#[test]
fn data_removal_needs_green_and_room_for_every_copy() {
    assert_eq!(data_removal_check("green", 1, 3), Ok(()));
    assert_eq!(data_removal_check("green", 0, 2), Ok(()));
    let e = data_removal_check("yellow", 1, 5).unwrap_err();
    assert!(e.starts_with("the cluster is yellow, not green"), "{e}");
    assert!(e.contains("wait until `esfleet es status` shows green"), "{e}");
    assert!(data_removal_check("red", 0, 9)
        .unwrap_err()
        .starts_with("the cluster is red"));
    assert_eq!(
        data_removal_check("green", 1, 2).unwrap_err(),
        "removing this data node would leave 2 data node(s), but the most replicated index has 1 replica(s), i.e. 2 copies of each shard, which need more than 2 data nodes (one to spare while a node restarts or moves); keep at least 3 data nodes or lower that index's number_of_replicas first"
    );
    assert!(data_removal_check("green", 2, 3).is_err());
    assert!(data_removal_check("green", 0, 1).is_err());
    assert!(data_removal_check("green", u32::MAX, u32::MAX).is_err());
}

#[test]
fn master_removal_keeps_a_quorum_one_at_a_time() {
    // 5 voters, all running: removing one leaves 4 ≥ quorum 3.
    assert_eq!(master_removal_check(5, 4, 4), Ok(()));
    // 3 voters: removing one leaves 2 ≥ quorum 2.
    assert_eq!(master_removal_check(3, 2, 2), Ok(()));
    assert_eq!(master_removal_check(1, 0, 0).unwrap_err(), "a cluster cannot run without master-eligible nodes; keep [master] count at 1 or more (3 for a cluster that survives losing one)");
    assert_eq!(
        master_removal_check(3, 1, 2).unwrap_err(),
        "removing this master would leave 1 running member(s) of the voting configuration of 3, below its quorum of 2: the cluster could not elect a master; bring the missing masters back first"
    );
    assert_eq!(
        master_removal_check(5, 3, 4).unwrap_err(),
        "1 member(s) of the voting configuration of 5 are already not running; masters are removed one at a time: bring them back (or wait until Elasticsearch has dropped them from the voting configuration) and try again"
    );
    // An even voting configuration of 4 needs 3.
    assert_eq!(master_removal_check(4, 3, 3), Ok(()));
    assert!(master_removal_check(4, 2, 3)
        .unwrap_err()
        .contains("below its quorum of 3"));
}

// ---------------------------------------------------------------- names of units and nodes

#[test]
fn instances_and_node_of_round_trip() {
    let spec = parse_spec(&format!("{MINIMAL}[coordinating]\ncount = 2\n")).unwrap();
    let units = instances(&spec);
    let names: Vec<&str> = units.iter().map(UnitName::as_str).collect();
    assert_eq!(
        names,
        [
            "logs-m@1.service",
            "logs-m@2.service",
            "logs-m@3.service",
            "logs-d@1.service",
            "logs-d@2.service",
            "logs-d@3.service",
            "logs-d@4.service",
            "logs-d@5.service",
            "logs-d@6.service",
            "logs-c@1.service",
            "logs-c@2.service",
        ]
    );
    for unit in &units {
        let node = node_of(&spec, unit).unwrap_or_else(|| panic!("{unit}"));
        assert_eq!(spec.unit(node.role, node.ordinal), *unit);
        assert_eq!(format!("{}{}", unit.prefix(), unit.instance().unwrap()), node.name);
        assert_eq!(node.name, spec.node_name(node.role, node.ordinal));
    }
    assert_eq!(
        node_of(&spec, &UnitName::new("logs-d@12.service").unwrap()),
        Some(Node {
            role: Role::Data,
            ordinal: 12,
            name: "logs-d12".into()
        }),
        "an ordinal above the count is still this cluster's node (being scaled down)"
    );
    for other in [
        "logs-d@.service",
        "logs-d@0.service",
        "logs-d@01.service",
        "logs-d@x.service",
        "logs-x@1.service",
        "logs-m@1.socket",
        "logs2-m@1.service",
        "log-m@1.service",
        "logs-m.service",
        "logs@1.service",
        "logs-dd@1.service",
        "logs-d@99999999999.service",
    ] {
        assert_eq!(node_of(&spec, &UnitName::new(other).unwrap()), None, "{other}");
    }
    assert_eq!(Role::Master.as_str(), "master");
    assert_eq!(Role::ALL.map(Role::letter), ['m', 'd', 'c']);
}

#[test]
fn machine_zones_are_sorted_and_unique() {
    let ms = [
        machine("1", "a", Some("c"), None),
        machine("2", "b", Some("a"), None),
        machine("3", "c", None, None),
        machine("4", "d", Some("c"), None),
    ];
    assert_eq!(machine_zones(&ms), ["a", "c"]);
}

// ---------------------------------------------------------------- templates

/// Validates a generated unit (the template's text, for the template or an instance).
fn validated(name: &UnitName, text: &str) -> XFleet {
    validate_unit(name, text)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"))
        .options
}

fn check_templates(spec: &ClusterSpec) {
    let ts = templates(spec);
    let roles: Vec<Role> = Role::ALL.into_iter().filter(|r| spec.role(*r).count > 0).collect();
    assert_eq!(ts.len(), roles.len());
    for ((name, text), role) in ts.iter().zip(roles) {
        assert_eq!(*name, spec.template(role));
        let x = validated(name, text);
        assert_eq!(x.elasticsearch.as_deref(), Some(spec.name.as_str()));
        assert_eq!(x.start_after_quorum, role != Role::Master);
        assert_eq!(x.group, spec.prefix(role));
        assert_eq!(x.max_unavailable, 1);
        let r = spec.role(role);
        // Masters: "an elected master" (the bootstrapped signal); others: "and green".
        let query = if role == Role::Master {
            "timeout=1s"
        } else {
            "wait_for_status=green&timeout=1s"
        };
        assert_eq!(
            x.health_check,
            Some(HealthCheck::Http(format!(
                "{}://127.0.0.1:{}/_cluster/health?{query}",
                spec.http.scheme(),
                r.http_port
            )))
        );
        assert_eq!(x.health_check_ca, spec.http.ca_file);
        assert_eq!(x.health_check_credentials, spec.http.credentials_file);
        for f in &spec.config_files {
            assert!(text.contains(&format!(" {f}")), "{f} copied in {text}");
        }
        assert_eq!(x.resources.memory_bytes, r.memory_bytes);
        assert_eq!(x.resources.cpu_millis, r.cpu_millis);
        if spec.zones.is_empty() {
            assert!(x.machine_metadata.is_empty());
        } else {
            assert_eq!(x.machine_metadata.len(), 1);
            assert_eq!(x.machine_metadata[0].key, "zone");
            assert_eq!(x.machine_metadata[0].values, spec.zones);
        }
        let one_per_zone = role == Role::Master && r.count as usize <= spec.zones.len();
        if one_per_zone {
            assert_eq!(
                x.distinct_by,
                [Distinct {
                    key: "zone".into(),
                    max: 1
                }]
            );
            assert!(x.spread_by.is_empty());
        } else {
            assert_eq!(
                x.distinct_by,
                [Distinct {
                    key: "host".into(),
                    max: 1
                }]
            );
            assert_eq!(x.spread_by, ["zone"]);
        }
        if role == Role::Master {
            assert!(x.start_after.is_empty());
        } else {
            assert_eq!(x.start_after, [format!("{}-m@*.service", spec.name)]);
        }
        // Every instance validates too, and the unit's %p%i is the node name.
        let unit = spec.unit(role, r.count);
        validated(&unit, text);
        assert!(text.contains("%p%i"));
        let heap = jvm_size(r.heap_bytes);
        if r.heap_bytes > 0 {
            let opts = spec.flavor.java_opts_env();
            assert!(text.contains(&format!("{opts}=-Xms{heap} -Xmx{heap}")), "{text}");
        } else {
            assert!(!text.contains("JAVA_OPTS"), "{text}");
        }
        assert!(text.contains(&format!("{}/%p%i/${{ESFLEET_GENERATION}}", spec.data_root)));
        for k in spec.env.keys() {
            assert!(text.contains(&format!("\"{k}=")), "{k} in {text}");
        }
        match spec.runtime {
            Runtime::Plain => {
                let conf = format!("{}/%p%i/config", spec.data_root);
                let var = spec.flavor.path_conf_env();
                assert!(text.contains(&format!("ExecStart=/usr/bin/env {var}={conf} ")));
                assert!(text.contains("ln -sfn \"${ESFLEET_CONFIG_DIR}/unicast_hosts.txt\" unicast_hosts.txt"));
                // Root ("+") never works inside a directory the Elasticsearch user owns.
                let root_step = text
                    .split("ExecStartPre=+")
                    .nth(1)
                    .unwrap()
                    .split("\nExecStartPre=")
                    .next()
                    .unwrap();
                assert!(
                    !root_step.contains("cp ") && !root_step.contains("chown -R") && !root_step.contains("rm "),
                    "{root_step}"
                );
                assert!(root_step.contains("chown -h"), "{root_step}");
                assert!(text.contains(&format!("\nUser={}\n", spec.user)));
                for limit in ["LimitNOFILE=65536", "LimitNPROC=4096", "LimitMEMLOCK=infinity"] {
                    assert!(text.contains(limit), "{limit}");
                }
            }
            Runtime::Nspawn => {
                assert!(text.contains("--machine=%p%i --directory=/var/lib/machines/%p%i"));
                assert!(text.contains(&format!("--template={}", spec.image)));
                assert!(text.contains("--bind-ro=${ESFLEET_CONFIG_DIR}:/run/esfleet/config"));
                assert!(text.contains("--keep-unit"));
                // The stub PID 1 of --as-pid2 ignores SIGTERM: halt is what it forwards.
                assert!(text.contains("--kill-signal=SIGRTMIN+3"), "{text}");
                assert!(text.contains("--rlimit=RLIMIT_NOFILE=65536"));
            }
        }
    }
}

#[test]
fn templates_validate_for_both_runtimes() {
    check_templates(&parse_spec(&example_text()).unwrap());
    // Plain, no zones, every role, env with characters systemd treats specially.
    let text = "name = \"search\"\n[env]\nSOME_VAR = \"x\"\nODD = \"50% \\\"q\\\" \\\\ $HOME\"\n\
                [master]\ncount = 5\nmemory = \"3g\"\ncpu = 0.5\n[data]\ncount = 12\n[coordinating]\ncount = 2\nheap = \"512m\"\n";
    let spec = parse_spec(text).unwrap();
    check_templates(&spec);
    let data = &templates(&spec)[1].1;
    assert!(
        data.contains("\nEnvironment=\"ODD=50%% \\\"q\\\" \\\\ $HOME\"\n"),
        "{data}"
    );
    assert!(data.contains("\nEnvironment=\"SOME_VAR=x\"\n"), "{data}");
    // More masters than zones: spread, and never two on one host.
    let spec = parse_spec(&with_top(
        "zones = [\"a\", \"b\"]\nruntime = \"nspawn\"\n[env]\nK = \"v\"",
    ))
    .unwrap();
    check_templates(&spec);
    let master = &templates(&spec)[0].1;
    assert!(master.contains("--setenv=K=${K} \\\n"), "{master}");
}

#[test]
fn https_clusters_check_health_over_tls_with_their_ca_and_credentials() {
    let text = with_top(
        "config_files = [\"certs\", \"opensearch-security\"]\n\
         [http]\nca_file = \"/etc/opensearch/certs/ca.pem\"\ncredentials_file = \"/etc/esfleet/logs.credentials\"",
    );
    let spec = parse_spec(&text).unwrap();
    assert_eq!(spec.http.scheme(), "https");
    assert_eq!(spec.config_files, ["certs", "opensearch-security"]);
    check_templates(&spec);
    let master = &templates(&spec)[0].1;
    assert!(
        master.contains("for f in jvm.options jvm.options.d log4j2.properties certs opensearch-security; do"),
        "{master}"
    );
    assert!(
        master.contains("\nHealthCheckCA=/etc/opensearch/certs/ca.pem\n"),
        "{master}"
    );
    // The record stores the paths, nothing else.
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        json["http"],
        serde_json::json!({"ca_file": "/etc/opensearch/certs/ca.pem", "credentials_file": "/etc/esfleet/logs.credentials"})
    );
    // Records from before [http] existed read as plain http.
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("http");
    old.as_object_mut().unwrap().remove("config_files");
    let old: ClusterSpec = serde_json::from_value(old).unwrap();
    assert_eq!((old.http.scheme(), old.config_files.len()), ("http", 0));
}

#[test]
fn bad_http_and_config_files_are_refused() {
    let cases = [
        (
            "[http]\ncredentials_file = \"/etc/esfleet/c\"",
            "credentials are sent only over https: set http.ca_file to the CA that signed the nodes' HTTP certificates",
        ),
        (
            "[http]\nca_file = \"certs/ca.pem\"",
            "http.ca_file = \"certs/ca.pem\" is not an absolute path",
        ),
        ("[http]\ncafile = \"/x\"", "did you mean \"ca_file\"?"),
        (
            "config_files = [\"../secrets\"]",
            "config_files entry \"../secrets\" is not a plain name in config_template",
        ),
        (
            "config_files = [\"a b\"]",
            "config_files entry \"a b\" is not a plain name",
        ),
        (
            "config_files = [\"jvm.options\"]",
            "jvm.options is written or copied by esfleet already",
        ),
        ("config_files = [\"x\", \"x\"]", "x is listed twice in config_files"),
        (
            "runtime = \"nspawn\"\nconfig_files = [\"certs\"]",
            "config_files is only used with runtime = \"plain\"",
        ),
    ];
    for (lines, message) in cases {
        let text = match lines.strip_prefix("[http]") {
            Some(rest) => format!("{MINIMAL}[http]{rest}\n"),
            None => with_top(lines),
        };
        let e = parse_err(&text);
        assert!(e.to_string().contains(message), "for {lines}: {e}");
    }
}

/// OpenSearch clusters get OpenSearch's names everywhere Elasticsearch's would differ: the
/// install's defaults, the master role, the bootstrap key, the settings file the engine
/// reads, and its start script's environment. A record stored before flavours existed
/// reads back as Elasticsearch.
#[test]
fn opensearch_flavor_renders_opensearch_names() {
    let spec = parse_spec(
        "name = \"logs\"\nflavor = \"opensearch\"\nzones = [\"a\", \"b\", \"c\"]\n\
         [master]\ncount = 3\n[data]\ncount = 6\nheap = \"256m\"\n",
    )
    .unwrap();
    assert_eq!(spec.flavor, Flavor::Opensearch);
    assert_eq!(
        (
            spec.user.as_str(),
            spec.exec.as_str(),
            spec.config_template.as_str(),
            spec.image.as_str()
        ),
        (
            "opensearch",
            "/usr/share/opensearch/bin/opensearch",
            "/etc/opensearch",
            "/var/lib/machines/opensearch"
        )
    );
    let rec = ClusterRecord {
        spec: spec.clone(),
        bootstrapped: false,
    };
    let m = machine("m1", "10.0.0.1", Some("a"), None);
    let master = node_of(&spec, &UnitName::new("logs-m@1.service").unwrap()).unwrap();
    let yml = &render_files(&rec, &master, &m, 1, &[])[ELASTICSEARCH_YML];
    assert!(yml.contains("\nnode.roles: [\"cluster_manager\"]\n"), "{yml}");
    assert!(
        yml.contains("\ncluster.initial_cluster_manager_nodes: [\"logs-m1\",\"logs-m2\",\"logs-m3\"]\n"),
        "{yml}"
    );
    assert!(
        !yml.contains("initial_master_nodes") && !yml.contains("\"master\""),
        "{yml}"
    );

    check_templates(&spec);
    let plain = &templates(&spec)[1].1;
    assert!(
        plain.contains("OPENSEARCH_PATH_CONF=/var/lib/esfleet/es/%p%i/config /usr/share/opensearch/bin/opensearch "),
        "{plain}"
    );
    assert!(
        plain.contains("\"${ESFLEET_CONFIG_DIR}/elasticsearch.yml\" opensearch.yml;"),
        "{plain}"
    );
    assert!(
        plain.contains("\nEnvironment=\"OPENSEARCH_JAVA_OPTS=-Xms256m -Xmx256m\"\n"),
        "{plain}"
    );
    assert!(plain.starts_with("# OpenSearch cluster logs: data nodes"), "{plain}");
    assert!(
        !plain.contains("ES_PATH_CONF") && !plain.contains("ES_JAVA_OPTS=") && !plain.contains("\nUser=elasticsearch"),
        "{plain}"
    );

    let nspawn = parse_spec(&with_top("flavor = \"opensearch\"\nruntime = \"nspawn\"")).unwrap();
    check_templates(&nspawn);
    let unit = &templates(&nspawn)[0].1;
    assert!(
        unit.contains("/run/esfleet/config/elasticsearch.yml /etc/opensearch/opensearch.yml;"),
        "{unit}"
    );
    assert!(
        unit.contains("    --setenv=OPENSEARCH_PATH_CONF=/etc/opensearch \\\n"),
        "{unit}"
    );
    assert!(
        unit.contains("    /usr/share/opensearch/bin/opensearch -Epath.logs=/var/log/opensearch\n"),
        "{unit}"
    );
    assert!(
        !unit.contains("elasticsearch -E") && !unit.contains("ES_PATH_CONF="),
        "{unit}"
    );

    // Each flavour refuses its own start script's variables in [env], and the bootstrap key.
    let e = parse_err(&with_top(
        "flavor = \"opensearch\"\n[env]\nOPENSEARCH_JAVA_OPTS = \"-Xmx1g\"",
    ));
    assert!(e.to_string().contains("OPENSEARCH_JAVA_OPTS is set by esfleet"), "{e}");
    let e = parse_err(&format!(
        "{MINIMAL}[settings]\n\"cluster.initial_cluster_manager_nodes\" = [\"x\"]\n"
    ));
    assert!(e.to_string().contains("managed by esfleet"), "{e}");
    let e = parse_err(&with_top("flavor = \"solr\""));
    assert_eq!(
        e.to_string(),
        "line 2, column 10: flavor = \"solr\" is not known; use \"elasticsearch\" or \"opensearch\""
    );

    // A record written before flavours existed.
    let mut old = serde_json::to_value(parse_spec(MINIMAL).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("flavor");
    let back: ClusterSpec = serde_json::from_value(old).unwrap();
    assert_eq!(back.flavor, Flavor::Elasticsearch);
}

#[test]
fn no_template_for_a_role_without_nodes() {
    let spec = parse_spec(MINIMAL).unwrap();
    let names: Vec<String> = templates(&spec).into_iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, ["logs-m@.service", "logs-d@.service"]);
}

/// The committed example units are exactly what `templates()` makes of `logs.toml`, so the
/// examples never drift. `ESFLEET_BLESS=1 cargo test -p esfleet-core es::` rewrites them.
#[test]
fn committed_example_units_are_generated() {
    let spec = parse_spec(&example_text()).unwrap();
    let ts = templates(&spec);
    let names: Vec<&str> = ts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["logs-m@.service", "logs-d@.service"]);
    for (name, text) in ts {
        let path = units_dir().join(name.as_str());
        if std::env::var_os("ESFLEET_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            committed,
            text,
            "{} differs from templates(); rerun with ESFLEET_BLESS=1 after checking the change",
            path.display()
        );
    }
}
