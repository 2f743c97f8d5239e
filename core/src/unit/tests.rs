use proptest::prelude::*;

use super::*;
use crate::options::{Distinct, Fence, HealthCheck, MetadataCond, Resources};

fn name(n: &str) -> UnitName {
    UnitName::new(n).unwrap()
}

/// `[X-Fleet]` options of a small service unit with `body` as its X-Fleet section.
fn opts_for(unit: &str, body: &str) -> Result<XFleet, UnitError> {
    let text = format!("[Unit]\nDescription=test\n\n[Service]\nExecStart=/bin/true\n\n[X-Fleet]\n{body}");
    validate_unit(&name(unit), &text).map(|v| v.options)
}

fn opts(body: &str) -> XFleet {
    opts_for("web.service", body).unwrap_or_else(|e| panic!("{body:?} refused: {e}"))
}

fn err(body: &str) -> String {
    match opts_for("web.service", body) {
        Ok(x) => panic!("{body:?} accepted: {x:?}"),
        Err(e) => e.to_string(),
    }
}

fn file_err(text: &str) -> UnitFileError {
    match UnitFile::parse(text) {
        Ok(f) => panic!("{text:?} accepted: {f:?}"),
        Err(e) => e,
    }
}

fn cond(key: &str, negate: bool, values: &[&str]) -> MetadataCond {
    MetadataCond {
        key: key.into(),
        negate,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

// ---- syntax -------------------------------------------------------------------------

#[test]
fn sections_keys_and_repeated_keys() {
    let f = UnitFile::parse(
        "[Unit]\nDescription=A web server\nAfter=network.target\nAfter=remote-fs.target\n\n[Service]\nExecStart=/bin/web\n",
    )
    .unwrap();
    assert_eq!(f.section_names().collect::<Vec<_>>(), ["Unit", "Service"]);
    assert_eq!(f.values("Unit", "After"), ["network.target", "remote-fs.target"]);
    assert_eq!(f.value("Unit", "After").as_deref(), Some("remote-fs.target"));
    assert_eq!(f.value("Service", "ExecStart").as_deref(), Some("/bin/web"));
    assert_eq!(f.value("Service", "Missing"), None);
    assert!(f.has_section("Service") && !f.has_section("Install"));
    assert_eq!(f.section_line("Service"), Some(6));
    let lines: Vec<usize> = f.assignments().iter().map(|a| a.line).collect();
    assert_eq!(lines, [2, 3, 4, 7]);
}

#[test]
fn empty_assignment_resets_the_list() {
    let f = UnitFile::parse("[X-Fleet]\nConflicts=a.service\nConflicts=\nConflicts=b.service c.service\n").unwrap();
    assert_eq!(f.values("X-Fleet", "Conflicts"), ["b.service c.service"]);
    let f = UnitFile::parse("[Service]\nExecStart=/bin/a\nExecStart=\n").unwrap();
    assert!(f.values("Service", "ExecStart").is_empty());
    assert_eq!(f.value("Service", "ExecStart"), None);
    // Every assignment stays visible in order, the empty one included.
    assert_eq!(f.assignments().len(), 2);
}

#[test]
fn continuations_join_with_a_space_as_systemd_does() {
    let f = UnitFile::parse("[Service]\nExecStart=/bin/echo one \\\n    two\\\nthree\nType=simple\n").unwrap();
    // systemd replaces each trailing backslash by a space and keeps the next line as is.
    assert_eq!(
        f.value("Service", "ExecStart").as_deref(),
        Some("/bin/echo one      two three")
    );
    assert_eq!(f.assignments()[1].line, 5);
    // A comment line inside a continuation is skipped (systemd.syntax(7)'s own example).
    let f = UnitFile::parse(
        "[C]\nKeyThree=value 3\\\n# this line is ignored\n; this line is ignored too\n       value 3 continued\n",
    )
    .unwrap();
    assert_eq!(
        f.value("C", "KeyThree").as_deref(),
        Some("value 3        value 3 continued")
    );
    // An escaped backslash at the end is not a continuation.
    let f = UnitFile::parse("[S]\nA=foo\\\\\nB=x\n").unwrap();
    assert_eq!(f.value("S", "A").as_deref(), Some("foo\\\\"));
    assert_eq!(f.value("S", "B").as_deref(), Some("x"));
    // A continuation on the last line just ends.
    let f = UnitFile::parse("[S]\nA=x \\").unwrap();
    assert_eq!(f.value("S", "A").as_deref(), Some("x"));
    // An empty line ends a continuation.
    let f = UnitFile::parse("[S]\nA=x \\\n\nB=y\n").unwrap();
    assert_eq!(f.values("S", "A"), ["x"]);
    assert_eq!(f.values("S", "B"), ["y"]);
}

#[test]
fn comments_blank_lines_and_indentation() {
    let f = UnitFile::parse(
        "# leading comment\n; another\n\n[Unit]\n  # indented comment\n\tDescription = spaced out  \n\n   \n[Service]\nExecStart=/bin/a # not a comment\n",
    )
    .unwrap();
    assert_eq!(f.value("Unit", "Description").as_deref(), Some("spaced out"));
    // `#` only starts a comment at the start of a line.
    assert_eq!(
        f.value("Service", "ExecStart").as_deref(),
        Some("/bin/a # not a comment")
    );
}

#[test]
fn quotes_are_kept_in_raw_values() {
    let f = UnitFile::parse("[X-Fleet]\nMachineMetadata=\"zone=a\" \"rack=r1\"\n").unwrap();
    assert_eq!(
        f.value("X-Fleet", "MachineMetadata").as_deref(),
        Some("\"zone=a\" \"rack=r1\"")
    );
}

#[test]
fn crlf_bom_and_duplicate_sections() {
    let f = UnitFile::parse("\u{feff}[S]\r\nA=1\r\nB=x \\\r\n y\r\n[T]\r\n[S]\r\nA=2\r\n").unwrap();
    assert_eq!(f.values("S", "A"), ["1", "2"]);
    assert_eq!(f.value("S", "B").as_deref(), Some("x   y"));
    assert_eq!(f.section_names().collect::<Vec<_>>(), ["S", "T"]);
    assert_eq!(f.assignments()[2].line, 7);
}

#[test]
fn values_may_contain_equals_signs() {
    let f = UnitFile::parse("[S]\nEnvironment=A=B C==D\nX==y\n").unwrap();
    assert_eq!(f.value("S", "Environment").as_deref(), Some("A=B C==D"));
    assert_eq!(f.value("S", "X").as_deref(), Some("=y"));
}

#[test]
fn syntax_errors_name_line_column_and_text() {
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "Description=x\n[Unit]\n",
            1,
            1,
            "\"Description=x\" comes before any section header",
        ),
        (
            "[Unit]\nDescription=x\n\n[Service\nExecStart=/bin/a\n",
            4,
            1,
            "section header \"[Service\" has no closing \"]\"",
        ),
        (
            "[Unit] trailing\n",
            1,
            7,
            "text after the section header in \"[Unit] trailing\"",
        ),
        ("[Unit]\n[]\n", 2, 2, "empty section name in \"[]\""),
        ("[Unit]\n[Un\"it]\n", 2, 4, "contains '\"'"),
        (
            "[Service]\nExecStart /bin/a\n",
            2,
            1,
            "\"ExecStart /bin/a\" is not an assignment; expected Key=value",
        ),
        ("[Service]\n  =/bin/a\n", 2, 3, "has no key"),
        (
            "[Service]\nExec Start=/bin/a\n",
            2,
            5,
            "key \"Exec Start\" in \"Exec Start=/bin/a\" has ' '",
        ),
        ("[Service]\n1Type=simple\n", 2, 1, "must start with a letter"),
        ("[Service]\nType=simple\n  Exec.Start=x\n", 3, 7, "has '.'"),
        ("[Service]\nA=b\u{7}c\n", 2, 4, "control character U+0007"),
        ("[S]\nA=b\rC=d\n", 2, 4, "control character U+000D"),
        ("[S]\nA=1\n.include /etc/x\n", 3, 1, ".include is not supported"),
        // The error in a continued line points at the physical line where it is.
        ("[S]\nA=1\nB \\\n  C\n", 3, 1, "\"B    C\" is not an assignment"),
    ];
    for (text, line, column, needle) in cases {
        let e = file_err(text);
        let msg = e.to_string();
        assert!(
            matches!(e, UnitFileError::Syntax { line: l, column: c, .. } if l == *line && c == *column),
            "{text:?}: got {msg:?} ({e:?}), want line {line} column {column}"
        );
        assert!(msg.contains(needle), "{text:?}: {msg:?} lacks {needle:?}");
        assert!(msg.starts_with(&format!("line {line}, column {column}: ")), "{msg}");
    }
}

#[test]
fn a_unit_needs_a_section() {
    for text in ["", "\n\n", "# only a comment\n; and another\n"] {
        assert_eq!(file_err(text), UnitFileError::NoSections);
    }
    UnitFile::parse("[Unit]\n").unwrap();
}

#[test]
fn oversize_files_are_refused_before_parsing() {
    let mut text = String::from("[Service]\n");
    while text.len() <= MAX_UNIT_FILE_BYTES {
        text.push_str("Environment=PADDING=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
    }
    let e = validate_unit(&name("big.service"), &text).unwrap_err();
    assert_eq!(e, UnitError::File(UnitFileError::TooLarge { len: text.len() }));
    assert!(e.to_string().contains("the limit is 262144 bytes"), "{e}");
    // Exactly at the limit is fine.
    let mut ok = String::from("[Service]\n#");
    ok.push_str(&"x".repeat(MAX_UNIT_FILE_BYTES - ok.len()));
    assert_eq!(ok.len(), MAX_UNIT_FILE_BYTES);
    validate_unit(&name("big.service"), &ok).unwrap();
}

#[test]
fn large_files_parse_in_linear_time() {
    // ~20,000 assignments: a quadratic line lookup would take seconds here.
    let mut text = String::from("[Service]\n");
    while text.len() < MAX_UNIT_FILE_BYTES - 64 {
        text.push_str("Environment=A=1 \\\n  B=2\n");
    }
    let f = UnitFile::parse(&text).unwrap();
    assert!(f.assignments().len() > 10_000);
    assert_eq!(f.assignments().last().unwrap().line, 2 * f.assignments().len());
}

// ---- the crate we do not parse with, and why ------------------------------------------

mod crate_quirks {
    //! systemd-unit-edit 0.1.4's behaviour on the inputs where it disagrees with systemd
    //! (see `file.rs`). If an upgrade changes one of these, reconsider using it directly.
    use systemd_unit_edit::{Parse, SystemdUnit};

    fn crate_parse(text: &str) -> Parse<SystemdUnit> {
        Parse::<SystemdUnit>::parse_unit(text)
    }

    #[test]
    fn crate_quirks_errors_have_no_positions() {
        let p = crate_parse("[Unit]\nNoEquals\n");
        assert!(!p.errors().is_empty());
        assert!(p.positioned_errors().is_empty());
    }

    #[test]
    fn crate_quirks_refuses_indentation_systemd_accepts() {
        assert!(!crate_parse("[Unit]\n  Description=x\n").ok());
        assert!(!crate_parse("[Unit]\n  # comment\n").ok());
        super::UnitFile::parse("[Unit]\n  Description=x\n  # comment\n").unwrap();
    }

    #[test]
    fn crate_quirks_keeps_comments_inside_continuations() {
        let p = crate_parse("[S]\nK=v\\\n# ignored\nL=w\n");
        let unit = p.tree();
        let k = unit.get_section("S").unwrap().get("K").unwrap();
        assert_eq!(k, "v # ignored");
    }

    #[test]
    fn crate_quirks_missing_bracket_swallows_lines() {
        let p = crate_parse("[Unit\nA=b\n[Service]\nC=d\n");
        assert!(p.ok(), "the crate reports nothing");
        let names: Vec<_> = p.tree().sections().filter_map(|s| s.name()).collect();
        assert_eq!(names, ["Unit\nA=b\n[Service"]);
    }

    #[test]
    fn crate_quirks_escaped_backslash_continues() {
        let p = crate_parse("[S]\nA=foo\\\\\nB=x\n");
        let s = p.tree().get_section("S").unwrap();
        assert_eq!(s.get("A").unwrap(), "foo\\ B=x");
        assert_eq!(s.get("B"), None);
    }

    #[test]
    fn crate_quirks_splits_quoted_lists_wrongly() {
        let unit = crate_parse("[X-Fleet]\nMachineMetadata=\"zone=a\" \"rack=r1\"\n").tree();
        let e = unit.get_section("X-Fleet").unwrap().entries().next().unwrap();
        assert_eq!(e.value_as_list(), ["zone=a\"", "\"rack=r1"]);
        assert_eq!(super::split_words(&e.value().unwrap()).unwrap(), ["zone=a", "rack=r1"]);
    }

    #[test]
    fn crate_quirks_drops_the_backslash_space_after_a_space() {
        // systemd replaces the backslash by a space whatever precedes it: "a " + " " + "  b".
        let unit = crate_parse("[S]\nA=a \\\n  b\n").tree();
        assert_eq!(unit.get_section("S").unwrap().get("A").unwrap(), "a   b");
        let ours = super::UnitFile::parse("[S]\nA=a \\\n  b\n").unwrap();
        assert_eq!(ours.value("S", "A").unwrap(), "a    b");
    }

    /// On ordinary files both parsers agree, entry for entry (up to the width of the
    /// whitespace a continuation leaves, see above).
    pub(super) fn assert_agrees(text: &str) {
        let ours = super::UnitFile::parse(text).unwrap();
        let p = crate_parse(text);
        assert!(p.ok(), "crate refused: {:?}", p.errors());
        let mut theirs = Vec::new();
        for s in p.tree().sections() {
            for e in s.entries() {
                if let Some(key) = e.key() {
                    theirs.push((s.name().unwrap(), key, squeeze(&e.value().unwrap_or_default())));
                }
            }
        }
        let ours: Vec<_> = ours
            .assignments()
            .iter()
            .map(|a| (a.section.clone(), a.key.clone(), squeeze(&a.value)))
            .collect();
        assert_eq!(ours, theirs);
    }

    fn squeeze(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

// ---- [X-Fleet] ------------------------------------------------------------------------

#[test]
fn defaults() {
    let x = opts("");
    assert_eq!(x, XFleet::for_unit(&name("web.service")));
    assert_eq!(x.group, "web");
    assert_eq!(x.max_unavailable, 1);
    assert_eq!(x.fence, Fence::Stop);
    assert!(!x.global && x.machine_id.is_none() && x.resources.is_zero());
    // A unit without any [X-Fleet] section gets the same.
    let v = validate_unit(&name("es-data@3.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    assert_eq!(v.options.group, "es-data");
    assert!(!v.has_install);
    let v = validate_unit(
        &name("a.service"),
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    assert!(v.has_install);
}

#[test]
fn machine_id() {
    let id = "0123456789abcdef0123456789abcdef";
    assert_eq!(opts(&format!("MachineID={id}\n")).machine_id.as_deref(), Some(id));
    assert_eq!(
        opts(&format!("X-ConditionMachineID={id}\n")).machine_id.as_deref(),
        Some(id)
    );
    // Single-valued: the last one wins, an empty one resets.
    let other = "ffffffffffffffffffffffffffffffff";
    assert_eq!(
        opts(&format!("MachineID={id}\nMachineID={other}\n"))
            .machine_id
            .as_deref(),
        Some(other)
    );
    assert_eq!(opts(&format!("MachineID={id}\nMachineID=\n")).machine_id, None);
    let e = err("MachineID=node-1\n");
    assert!(
        e.starts_with("line 8: MachineID=node-1: machine id \"node-1\" is not 32 lowercase hex"),
        "{e}"
    );
    let e = err(&format!("MachineID={id} {other}\n"));
    assert!(e.contains("has 2 words; it takes one machine id"), "{e}");
}

#[test]
fn machine_of_and_replaces() {
    let x = opts("MachineOf=db.service\nX-ConditionMachineOf=cache.service db.service\n");
    assert_eq!(x.machine_of, ["db.service", "cache.service"]);
    assert_eq!(opts("Replaces=old.service\n").replaces, ["old.service"]);
    let e = err("MachineOf=../etc.service\n");
    assert!(
        e.contains("line 8: MachineOf=../etc.service: unit name \"../etc.service\" contains '/'"),
        "{e}"
    );
    let e = err("MachineOf=db\n");
    assert!(e.contains("has no unit type suffix"), "{e}");
    let e = err("MachineOf=%n\n");
    assert!(
        e.contains("names this unit; a unit cannot be placed on the same machine as itself"),
        "{e}"
    );
    let e = err("Replaces=web.service\n");
    assert!(e.contains("cannot be placed on itself"), "{e}");
}

#[test]
fn machine_metadata() {
    let cases: &[(&str, Vec<MetadataCond>)] = &[
        ("MachineMetadata=zone=a\n", vec![cond("zone", false, &["a"])]),
        (
            "MachineMetadata=\"zone=a\" \"rack=r1\"\n",
            vec![cond("zone", false, &["a"]), cond("rack", false, &["r1"])],
        ),
        // OR within a key, AND across keys, across lines and the deprecated spelling.
        (
            "MachineMetadata=zone=a zone=b\nX-ConditionMachineMetadata=disk=ssd\nMachineMetadata=zone=c zone=a\n",
            vec![cond("zone", false, &["a", "b", "c"]), cond("disk", false, &["ssd"])],
        ),
        // Negation (fleet #1143).
        (
            "MachineMetadata=zone!=a zone!=b region=eu\n",
            vec![cond("zone", true, &["a", "b"]), cond("region", false, &["eu"])],
        ),
        (
            "MachineMetadata='role=es data'\n",
            vec![cond("role", false, &["es data"])],
        ),
        (
            "MachineMetadata=k8s.io_x-1=v=w\n",
            vec![cond("k8s.io_x-1", false, &["v=w"])],
        ),
        // Reset.
        (
            "MachineMetadata=zone=a\nMachineMetadata=\nMachineMetadata=rack=r2\n",
            vec![cond("rack", false, &["r2"])],
        ),
    ];
    for (body, want) in cases {
        assert_eq!(&opts(body).machine_metadata, want, "{body:?}");
    }
    for (body, needle) in [
        (
            "MachineMetadata=zone\n",
            "\"zone\" in MachineMetadata=zone is not key=value (or key!=value)",
        ),
        (
            "MachineMetadata=zone=\n",
            "\"zone=\" in MachineMetadata=zone= has no value after \"=\"",
        ),
        (
            "MachineMetadata==a\n",
            "\"\" in MachineMetadata==a is not a metadata key",
        ),
        (
            "MachineMetadata=zo/ne=a\n",
            "\"zo/ne\" in MachineMetadata=zo/ne=a is not a metadata key",
        ),
        ("MachineMetadata=\"zone=a\n", "a \" quote is not closed"),
        ("MachineMetadata=\"\"\n", "has an empty word"),
    ] {
        let e = err(body);
        assert!(e.starts_with("line 8: ") && e.contains(needle), "{body:?}: {e}");
    }
}

#[test]
fn metadata_conditions_match() {
    let zone = cond("zone", false, &["a", "b"]);
    assert!(zone.matches(Some("a")) && zone.matches(Some("b")));
    assert!(!zone.matches(Some("c")) && !zone.matches(None));
    let not_zone = cond("zone", true, &["a"]);
    assert!(!not_zone.matches(Some("a")));
    assert!(not_zone.matches(Some("b")) && not_zone.matches(None));
}

#[test]
fn conflicts_and_start_after_are_globs() {
    let x = opts("Conflicts=es-data@*.service\nX-Conflicts=web?.service {a,b}.service\n");
    assert_eq!(x.conflicts, ["es-data@*.service", "web?.service", "{a,b}.service"]);
    let x = opts("Conflicts=a.service\nConflicts=\nX-Conflicts=b.service\n");
    assert_eq!(
        x.conflicts,
        ["b.service"],
        "an empty Conflicts= also resets X-Conflicts="
    );
    assert_eq!(
        opts("StartAfter=es-master@*.service\n").start_after,
        ["es-master@*.service"]
    );
    let e = err("Conflicts=es-[data.service\n");
    assert!(
        e.contains("\"es-[data.service\" in Conflicts=es-[data.service is not a valid glob"),
        "{e}"
    );
    let e = err("StartAfter=a{b.service\n");
    assert!(e.contains("is not a valid glob"), "{e}");
    let set = glob_set(&x.start_after);
    assert!(set.is_empty());
    let set = glob_set(&["es-master@*.service", "web.service"]);
    assert!(set.is_match("es-master@1.service") && set.is_match("web.service"));
    assert!(!set.is_match("es-data@1.service"));
}

#[test]
fn start_after_quorum_and_elasticsearch() {
    let x = opts("StartAfter=logs-m@*.service\nStartAfterQuorum=yes\nElasticsearch=logs\n");
    assert!(x.start_after_quorum);
    assert_eq!(x.elasticsearch.as_deref(), Some("logs"));
    assert!(!opts("StartAfter=a.service\n").start_after_quorum);
    let e = err("StartAfterQuorum=true\n");
    assert!(e.contains("this unit has no StartAfter="), "{e}");
    let e = err("StartAfter=a.service\nStartAfterQuorum=most\n");
    assert!(e.contains("is not a boolean"), "{e}");
    for bad in ["Logs", "1logs", "logs-1", "toolongname", "l_s"] {
        let e = err(&format!("Elasticsearch={bad}\n"));
        assert!(e.contains("not an Elasticsearch cluster name"), "{bad}: {e}");
    }
    let e = err("Global=true\nElasticsearch=logs\n");
    assert!(e.contains("never one per machine"), "{e}");
}

#[test]
fn global_takes_systemd_booleans() {
    for v in ["1", "yes", "y", "true", "t", "on", "YES", "True"] {
        assert!(opts(&format!("Global={v}\n")).global, "{v}");
    }
    for v in ["0", "no", "n", "false", "f", "off", "OFF"] {
        assert!(!opts(&format!("Global={v}\n")).global, "{v}");
    }
    assert_eq!(
        err("Global=yes please\n"),
        "line 8: \"Global=yes please\" is not a boolean; use true or false (systemd also takes yes/no, on/off, 1/0)"
    );
    assert!(!opts("Global=true\nGlobal=\n").global);
}

#[test]
fn distinct_by_and_spread_by() {
    let x = opts("DistinctBy=zone\nDistinctBy=rack:2 host\nSpreadBy=zone rack\nSpreadBy=zone\n");
    assert_eq!(
        x.distinct_by,
        [
            Distinct {
                key: "zone".into(),
                max: 1
            },
            Distinct {
                key: "rack".into(),
                max: 2
            },
            Distinct {
                key: "host".into(),
                max: 1
            },
        ]
    );
    assert_eq!(x.spread_by, ["zone", "rack"]);
    for (body, needle) in [
        (
            "DistinctBy=zone:0\n",
            "the limit after \":\" must be a whole number of at least 1, as in zone:2",
        ),
        ("DistinctBy=zone:x\n", "must be a whole number"),
        ("DistinctBy=zone:-1\n", "must be a whole number"),
        ("DistinctBy=:2\n", "\"\" in DistinctBy=:2 is not a metadata key"),
        (
            "DistinctBy=zone\nDistinctBy=zone:2\n",
            "DistinctBy= names \"zone\" twice (limits 1 and 2)",
        ),
        ("SpreadBy=zo ne!\n", "\"ne!\" in SpreadBy=zo ne! is not a metadata key"),
    ] {
        let e = err(body);
        assert!(e.contains(needle), "{body:?}: {e}");
    }
}

#[test]
fn group() {
    assert_eq!(opts("Group=search\n").group, "search");
    assert_eq!(opts_for("es-data@7.service", "").unwrap().group, "es-data");
    assert_eq!(opts_for("es-data@.service", "").unwrap().group, "es-data");
    assert_eq!(
        opts_for("es-data@7.service", "Group=%p-v2\n").unwrap().group,
        "es-data-v2"
    );
    let e = err("Group=a/b\n");
    assert!(
        e.contains("a group name is at most 256 letters, digits and ':_.-'"),
        "{e}"
    );
    let e = err("Group=a b\n");
    assert!(e.contains("has 2 words; it takes one group name"), "{e}");
}

#[test]
fn resources() {
    let x = opts("Resources=cpu=1.5 memory=512M disk=100G\n");
    assert_eq!(
        x.resources,
        Resources {
            cpu_millis: 1500,
            memory_bytes: 512 << 20,
            disk_bytes: 100 << 30,
        }
    );
    // A later line overrides only what it names; an empty one resets everything.
    let x = opts("Resources=cpu=2 memory=1G\nResources=memory=1.5G\n");
    assert_eq!((x.resources.cpu_millis, x.resources.memory_bytes), (2000, 3 << 29));
    assert!(opts("Resources=cpu=2\nResources=\n").resources.is_zero());
    for (body, needle) in [
        ("Resources=cpu=1.2345\n", "has more than three decimals"),
        ("Resources=cpu=two\n", "\"two\" is not a number of CPUs"),
        ("Resources=memory=1g\n", "unknown size suffix 'g'; use K, M, G or T"),
        ("Resources=memory=G\n", "\"G\" is not a size such as 512M or 1.5G"),
        ("Resources=memory=20000000E\n", "is too large"),
        (
            "Resources=memroy=1G\n",
            "unknown resource \"memroy\" in Resources=memroy=1G; did you mean \"memory\"?",
        ),
        ("Resources=gpu=1\n", "unknown resource \"gpu\""),
        (
            "Resources=cpu\n",
            "is not key=value; write e.g. Resources=cpu=2 memory=8G disk=100G",
        ),
    ] {
        let e = err(body);
        assert!(e.starts_with("line 8: ") && e.contains(needle), "{body:?}: {e}");
    }
}

#[test]
fn sizes_and_cpus() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("1024"), Ok(1024));
    assert_eq!(parse_size("10B"), Ok(10));
    assert_eq!(parse_size("1K"), Ok(1024));
    assert_eq!(parse_size("2T"), Ok(2 << 40));
    assert_eq!(parse_size("1.5K"), Ok(1536));
    assert_eq!(parse_size("0.1K"), Ok(102));
    assert_eq!(parse_size("15E"), Ok(15 << 60));
    assert!(parse_size("16E").is_err());
    assert!(parse_size("1.K").is_err());
    assert!(parse_size(".5K").is_err());
    assert!(parse_size("-1").is_err());
    assert!(parse_size("").is_err());
    assert_eq!(parse_cpu_millis("0.25"), Ok(250));
    assert_eq!(parse_cpu_millis("4"), Ok(4000));
    assert_eq!(parse_cpu_millis("0.001"), Ok(1));
    assert!(parse_cpu_millis("1e3").is_err());
}

#[test]
fn https_health_checks_name_their_ca_and_credentials_files() {
    let x = opts(
        "HealthCheck=https://127.0.0.1:9200/_cluster/health\nHealthCheckCA=/etc/os/ca.pem\n\
         HealthCheckCredentials=/etc/esfleet/logs.credentials\n",
    );
    assert_eq!(x.health_check_ca.as_deref(), Some("/etc/os/ca.pem"));
    assert_eq!(
        x.health_check_credentials.as_deref(),
        Some("/etc/esfleet/logs.credentials")
    );
    let e = err("HealthCheck=http://127.0.0.1:9200/\nHealthCheckCA=/ca.pem\n");
    assert!(e.contains("HealthCheckCA= is for an https:// HealthCheck="), "{e}");
    let e = err("HealthCheck=https://127.0.0.1:9200/\nHealthCheckCredentials=/c\n");
    assert!(e.contains("esfleet does only over https"), "{e}");
    let e = err("HealthCheck=https://127.0.0.1:9200/\nHealthCheckCA=ca.pem\n");
    assert!(e.contains("is not an absolute path"), "{e}");
    let e = err("HealthCheck=https://127.0.0.1:9200/\nHealthCheckCA=/etc/../ca.pem\n");
    assert!(e.contains("is not an absolute path"), "{e}");
}

#[test]
fn health_check() {
    assert_eq!(
        opts("HealthCheck=http://127.0.0.1:9200/_cluster/health?local=true\n").health_check,
        Some(HealthCheck::Http(
            "http://127.0.0.1:9200/_cluster/health?local=true".into()
        ))
    );
    assert_eq!(
        opts("HealthCheck=https://localhost/ok\n").health_check,
        Some(HealthCheck::Http("https://localhost/ok".into()))
    );
    assert_eq!(
        opts("HealthCheck=/usr/bin/curl -fs 'http://localhost:9200/_cat/health'\n").health_check,
        Some(HealthCheck::Command(
            "/usr/bin/curl -fs 'http://localhost:9200/_cat/health'".into()
        ))
    );
    assert_eq!(opts("HealthCheck=/bin/true\nHealthCheck=\n").health_check, None);
    let e = err("HealthCheck=http://\n");
    assert!(e.contains("is not a usable URL"), "{e}");
    let e = err("HealthCheck=/bin/check 'unclosed\n");
    assert!(e.contains("' quote is not closed"), "{e}");
    let e = err("HealthCheck=date +%s\n");
    assert!(e.contains("specifier %s is not expanded in [X-Fleet]"), "{e}");
    assert_eq!(
        opts("HealthCheck=date +%%s\n").health_check,
        Some(HealthCheck::Command("date +%s".into()))
    );
}

#[test]
fn max_unavailable_and_fence() {
    assert_eq!(opts("MaxUnavailable=3\n").max_unavailable, 3);
    assert_eq!(opts("MaxUnavailable=3\nMaxUnavailable=\n").max_unavailable, 1);
    for v in ["0", "-1", "two", "1.5"] {
        let e = err(&format!("MaxUnavailable={v}\n"));
        assert_eq!(
            e,
            format!("line 8: MaxUnavailable={v} is not a whole number of at least 1")
        );
    }
    assert_eq!(opts("Fence=keep\n").fence, Fence::Keep);
    assert_eq!(opts("Fence=keep\nFence=stop\n").fence, Fence::Stop);
    let e = err("Fence=kill\n");
    assert!(
        e.starts_with("line 8: Fence=kill is neither \"stop\" nor \"keep\""),
        "{e}"
    );
}

#[test]
fn unknown_keys_suggest_the_nearest() {
    assert_eq!(
        err("Global=false\nMachineMetadta=zone=a\n"),
        "line 9: unknown [X-Fleet] key \"MachineMetadta\"; did you mean \"MachineMetadata\"?"
    );
    for (key, want) in [
        ("Globl", "Global"),
        ("machineid", "MachineID"),
        ("Conflict", "Conflicts"),
        ("DistinctBY", "DistinctBy"),
        ("Spreadby", "SpreadBy"),
        ("StartAftr", "StartAfter"),
        ("X-Conflict", "X-Conflicts"),
        ("Healthcheck", "HealthCheck"),
    ] {
        let e = err(&format!("{key}=x\n"));
        assert!(e.ends_with(&format!("did you mean {want:?}?")), "{key}: {e}");
    }
    let e = err("Weight=3\n");
    assert!(
        e.contains("unknown [X-Fleet] key \"Weight\"; known keys are MachineID, MachineOf, MachineMetadata"),
        "{e}"
    );
    let e = err("X-ConditionMachineBootID=abc\n");
    assert!(
        e.contains("X-ConditionMachineBootID= is not supported any more; boot ids change"),
        "{e}"
    );
}

#[test]
fn misspelled_section_is_refused() {
    let e = validate_unit(
        &name("a.service"),
        "[Service]\nExecStart=/bin/a\n[X-fleet]\nGlobal=true\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 3: section [X-fleet] is not read by esfleet; the section is spelled [X-Fleet]"
    );
}

#[test]
fn rejected_combinations() {
    let id = "MachineID=0123456789abcdef0123456789abcdef";
    let cases: &[(String, &str)] = &[
        (format!("{id}\nMachineOf=db.service\n"), "MachineID= (line 8) cannot be combined with MachineOf= (line 9)"),
        (format!("{id}\nConflicts=x*.service\n"), "MachineID= (line 8) cannot be combined with Conflicts= (line 9): fleet rejects this combination"),
        (format!("Global=true\n{id}\n"), "Global= (line 8) cannot be combined with MachineID= (line 9)"),
        (format!("{id}\nReplaces=old.service\n"), "MachineID= (line 8) cannot be combined with Replaces= (line 9)"),
        ("Global=yes\nMachineOf=db.service\n".into(), "Global= (line 8) cannot be combined with MachineOf= (line 9)"),
        ("Replaces=old.service\nGlobal=1\n".into(), "Replaces= (line 8) cannot be combined with Global= (line 9)"),
        ("Conflicts=a.service\nReplaces=old.service\n".into(), "Conflicts= (line 8) cannot be combined with Replaces= (line 9)"),
        ("X-Conflicts=a.service\nReplaces=old.service\n".into(), "Conflicts= (line 8) cannot be combined with Replaces= (line 9)"),
        ("Global=true\nDistinctBy=zone\n".into(), "Global= (line 8) cannot be combined with DistinctBy= (line 9): a global unit runs once on every matching machine"),
        ("Global=true\nSpreadBy=zone\n".into(), "cannot be combined with SpreadBy="),
        ("Global=true\nGroup=x\n".into(), "cannot be combined with Group="),
    ];
    for (body, needle) in cases {
        let e = opts_for("web.service", body).unwrap_err();
        assert!(
            matches!(e, UnitError::Options(OptionsError::Combination { .. })),
            "{body:?}: {e:?}"
        );
        assert!(e.to_string().contains(needle), "{body:?}: {e}");
    }
    // Global=false is still "given": fleet's check is on the option's presence.
    assert!(opts_for("web.service", "Global=false\nMachineOf=db.service\n").is_err());
    // An emptied option is not given.
    opts(&format!("{id}\nConflicts=a.service\nConflicts=\n"));
    // Global combines with what it may.
    let x = opts(
        "Global=true\nMachineMetadata=role=worker\nConflicts=x.service\nFence=keep\nHealthCheck=/bin/true\nMaxUnavailable=2\nResources=memory=64M\nStartAfter=net*.service\n",
    );
    assert!(x.global && x.fence == Fence::Keep && x.resources.memory_bytes == 64 << 20);
}

#[test]
fn specifiers_follow_systemd() {
    let n = name("es-data@host3.service");
    for (value, want) in [
        ("%n", "es-data@host3.service"),
        ("%N", "es-data@host3"),
        ("%p", "es-data"),
        ("%i", "host3"),
        ("100%%", "100%"),
        ("%p-%i.%%", "es-data-host3.%"),
        ("plain", "plain"),
    ] {
        assert_eq!(expand_specifiers(value, &n).as_deref(), Ok(want), "{value}");
    }
    let plain = name("web.service");
    assert_eq!(expand_specifiers("%N|%p|%i", &plain).as_deref(), Ok("web|web|"));
    assert!(expand_specifiers("%H", &n).unwrap_err().contains("%H is not expanded"));
    assert!(expand_specifiers("50%", &n).unwrap_err().contains("lone %"));

    let x = opts_for(
        "foo@host3.service",
        "MachineMetadata=hostname=%i\nConflicts=%p@*.service\n",
    )
    .unwrap();
    assert_eq!(x.machine_metadata, [cond("hostname", false, &["host3"])]);
    assert_eq!(x.conflicts, ["foo@*.service"]);
    let x = opts_for(
        "es-data@2.service",
        "MachineOf=es-master@%i.service\nStartAfter=%N-init.service\n",
    )
    .unwrap();
    assert_eq!(x.machine_of, ["es-master@2.service"]);
    assert_eq!(x.start_after, ["es-data@2-init.service"]);
}

#[test]
fn templates_validate_with_an_empty_instance() {
    // `%i` is empty for the template: what it empties is skipped, not refused...
    let body = "MachineMetadata=hostname=%i zone=a\nMachineID=%i\nGroup=%i\n";
    let x = opts_for("foo@.service", body).unwrap();
    assert_eq!(x.machine_metadata, [cond("zone", false, &["a"])]);
    assert_eq!(x.machine_id, None);
    assert_eq!(x.group, "foo");
    // ...and each instance is validated with its own name.
    let e = opts_for("foo@host3.service", body).unwrap_err();
    assert!(e.to_string().contains("MachineID=%i: machine id \"host3\""), "{e}");
    // Combinations count for the template even when `%i` emptied a value.
    let e = opts_for("foo@.service", "MachineID=%i\nConflicts=foo@*.service\n").unwrap_err();
    assert!(matches!(e, UnitError::Options(OptionsError::Combination { .. })), "{e}");
    // Emptiness that is not `%i`'s fault is still an error for a template.
    let e = opts_for("foo@.service", "MachineMetadata=hostname=\n").unwrap_err();
    assert!(e.to_string().contains("has no value"), "{e}");
}

#[test]
fn errors_point_at_lines() {
    let e = validate_unit(&name("a.service"), "[Unit]\n[X-Fleet]\nGlobal=maybe\n").unwrap_err();
    assert_eq!(e.line(), Some(3));
    let e = validate_unit(&name("a.service"), "[Unit\n").unwrap_err();
    assert_eq!(e.line(), Some(1));
    let e = validate_unit(&name("a.service"), "").unwrap_err();
    assert_eq!(e.line(), None);
}

#[test]
fn word_splitting() {
    for (value, want) in [
        ("a b\tc", vec!["a", "b", "c"]),
        ("  a   b  ", vec!["a", "b"]),
        ("\"zone=a\" \"rack=r1\"", vec!["zone=a", "rack=r1"]),
        ("'a b' \"c d\"", vec!["a b", "c d"]),
        ("x\"a b\"y", vec!["xa by"]),
        ("a\\ b", vec!["a b"]),
        ("\"a\\\"b\"", vec!["a\"b"]),
        ("'a\\b'", vec!["a\\b"]),
        ("\"\"", vec![""]),
        ("", vec![]),
    ] {
        assert_eq!(split_words(value).unwrap(), want, "{value:?}");
    }
    assert!(split_words("\"open").is_err());
    assert!(split_words("trailing\\").is_err());
}

// ---- the example units in /units ----------------------------------------------------

#[test]
fn units_directory_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../units");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        // units/es/ holds `esfleet es apply`'s example and its generated units, checked by
        // core/src/es/tests.rs.
        if file.ends_with(".md") || path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let unit = UnitName::new(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let v = validate_unit(&unit, &text).unwrap_or_else(|e| panic!("{file}: {e}"));
        crate_quirks::assert_agrees(&text);
        // Instances of templates validate too.
        if unit.is_template() {
            let inst = UnitName::new(&file.replace("@.", "@1.")).unwrap();
            validate_unit(&inst, &text).unwrap_or_else(|e| panic!("{inst}: {e}"));
        }
        seen.push((file, v));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = seen.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, ["hello-global.service", "hello.service", "web@.service"]);
    let get = |f: &str| &seen.iter().find(|(n, _)| n == f).unwrap().1;
    let web = &get("web@.service").options;
    assert_eq!(
        (web.spread_by.as_slice(), web.group.as_str()),
        (["zone".to_string()].as_slice(), "web")
    );
    let global = get("hello-global.service");
    assert!(global.options.global && global.has_install && global.options.fence == Fence::Keep);
    let hello = get("hello.service");
    assert!(!hello.options.global && !hello.has_install);
}

#[test]
fn parsers_agree_on_ordinary_files() {
    for text in [
        "[Unit]\nDescription=x\nAfter=a b\n\n[Service]\nExecStart=/bin/sh -c 'echo \"hi\"'\nExecStart=\n",
        "# c\n[S]\nA=1\n; c\nB = 2 \n[T]\nC=a \\\n  b\n",
        "[S]\r\nA=1\r\n",
    ] {
        crate_quirks::assert_agrees(text);
    }
}

// ---- never panic ----------------------------------------------------------------------

/// Unit-file-shaped fragments, so random files reach the option parser, not just the
/// first syntax check.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[Unit]".to_string()),
        Just("[X-Fleet]".to_string()),
        Just("[Install]".to_string()),
        Just("\\".to_string()),
        Just("# c".to_string()),
        Just("".to_string()),
        prop::sample::select(vec![
            "MachineID",
            "MachineOf",
            "MachineMetadata",
            "Conflicts",
            "Global",
            "Replaces",
            "DistinctBy",
            "SpreadBy",
            "Group",
            "Resources",
            "StartAfter",
            "StartAfterQuorum",
            "HealthCheck",
            "HealthCheckCA",
            "HealthCheckCredentials",
            "MaxUnavailable",
            "Fence",
            "Elasticsearch",
            "X-Conflicts",
            "Description",
        ])
        .prop_flat_map(|k| "[ -~%\"'\\\\éß]{0,24}".prop_map(move |v| format!("{k}={v}"))),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn validate_unit_never_panics_on_any_text(text in any::<String>(), unit in prop::sample::select(vec![
        "a.service", "es-data@.service", "es-data@3.service",
    ])) {
        let _ = validate_unit(&name(unit), &text);
    }

    #[test]
    fn validate_unit_never_panics_on_unit_shaped_text(
        lines in prop::collection::vec(fragment(), 0..24),
        sep in prop::sample::select(vec!["\n", "\r\n"]),
        unit in prop::sample::select(vec!["a.service", "es-data@.service", "es-data@3.service"]),
    ) {
        let text = lines.join(sep);
        match validate_unit(&name(unit), &text) {
            Ok(v) => {
                // Invariants of accepted options.
                prop_assert!(v.options.max_unavailable >= 1);
                prop_assert!(!v.options.group.is_empty());
                prop_assert!(v.options.distinct_by.iter().all(|d| d.max >= 1));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.is_empty());
                if let Some(line) = e.line() {
                    prop_assert!(line >= 1 && line <= text.split('\n').count());
                }
            }
        }
    }
}
