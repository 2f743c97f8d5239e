//! A schedule entry's config files (`ScheduleEntry.files`): written into
//! `<config root>/<unit>/` before the unit starts and named to it as `ESFLEET_CONFIG_DIR`;
//! rewritten in place, without a restart, when only they change; removed with the unit;
//! put back by a restarted agent when edited on disk; refused (and reported) when hostile.
//! Every test writes under a temporary config root, never /etc.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use esfleet_agent::fake::{FakeUnitManager, Op};
use esfleet_core::diff::{MAX_CONFIG_BYTES, MAX_CONFIG_FILES};
use esfleet_core::model::ScheduleEntry;
use esfleet_core::options::Fence;

use crate::fixtures::*;

fn with_files(name: &str, files: &[(&str, &str)]) -> ScheduleEntry {
    let mut e = entry(name, SIMPLE, Fence::Stop);
    e.files = files.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect();
    e
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The calls the fake saw for `unit` that (re)start, stop or reload it, from `from` on.
fn disruptions(fake: &FakeUnitManager, unit: &str, from: usize) -> Vec<Op> {
    fake.calls()[from..]
        .iter()
        .filter(|c| {
            matches!(c.op, Op::Start | Op::Stop | Op::Restart | Op::Reload)
                && c.unit.as_ref().is_none_or(|u| u.as_str() == unit)
        })
        .map(|c| c.op)
        .collect()
}

async fn wait_file(what: &str, path: PathBuf, want: Option<&str>) {
    let want = want.map(str::to_string);
    eventually(what, || {
        let (path, want) = (path.clone(), want.clone());
        async move { (read(&path) == want).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_written_before_start_and_change_without_a_restart() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("units");
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(60);
    let cfg = esfleet_agent::config::Config {
        config_root: root.clone(),
        ..agent_config(cluster.endpoints(), &id, fast_timing())
    };
    let (a, fake) = agent(cfg);

    // A unit whose directory cannot be made (a file in its place) is never started.
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("blocked.service"), "not a directory").unwrap();
    schedule(&mut c, &id, &with_files("blocked.service", &[("x.yml", "x")])).await;

    schedule(&mut c, &id, &entry("plain.service", SIMPLE, Fence::Stop)).await;
    let yml = "cluster.name: \"logs\"\n";
    let e = with_files(
        "es.service",
        &[("elasticsearch.yml", yml), ("unicast_hosts.txt", "10.0.0.1:9300\n")],
    );
    schedule(&mut c, &id, &e).await;
    let st = eventually("es.service active", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            state(&mut c, &id, "es.service")
                .await
                .filter(|(s, _)| s.active == "active")
        }
    })
    .await
    .0;
    assert!(st.error.is_none(), "{st:?}");
    let dir = root.join("es.service");
    assert_eq!(read(&dir.join("elasticsearch.yml")).as_deref(), Some(yml));
    assert_eq!(read(&dir.join("unicast_hosts.txt")).as_deref(), Some("10.0.0.1:9300\n"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join("elasticsearch.yml")), 0o644);
    let dropin = fake.file(&n("es.service")).unwrap().1.unwrap();
    assert!(
        dropin.contains(&format!("Environment=\"ESFLEET_CONFIG_DIR={}\"", dir.display())),
        "{dropin}"
    );
    // A unit without files gets no directory and no variable.
    let plain = eventually("plain.service installed", || {
        let fake = fake.clone();
        async move { fake.file(&n("plain.service")).and_then(|f| f.1) }
    })
    .await;
    assert!(!plain.contains("ESFLEET_CONFIG_DIR"), "{plain}");
    assert!(!root.join("plain.service").exists());

    let blocked = eventually("blocked.service reports its error", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            state(&mut c, &id, "blocked.service")
                .await
                .filter(|(s, _)| s.error.is_some())
        }
    })
    .await
    .0;
    assert!(blocked.error.unwrap().contains("not a directory"));
    assert!(
        fake.calls()
            .iter()
            .all(|c| !(c.op == Op::Start && c.unit == Some(n("blocked.service")))),
        "started without its config files"
    );

    // Only the files change (a master moved): rewritten in place, the unit keeps running.
    let mark = fake.calls().len();
    let since = live_since(&fake, "es.service").await;
    let e2 = with_files(
        "es.service",
        &[("elasticsearch.yml", yml), ("unicast_hosts.txt", "10.0.0.2:9300\n")],
    );
    schedule(&mut c, &id, &e2).await;
    wait_file(
        "unicast_hosts.txt rewritten",
        dir.join("unicast_hosts.txt"),
        Some("10.0.0.2:9300\n"),
    )
    .await;
    // A poll pass later (1 s), still no stop, start, restart or reload.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(disruptions(&fake, "es.service", mark), vec![], "{:?}", fake.calls());
    assert_eq!(live_since(&fake, "es.service").await, since, "never restarted");
    assert_eq!(
        fake.file(&n("es.service")).unwrap().1.unwrap(),
        dropin,
        "drop-in unchanged"
    );

    // A file dropped from the map disappears; a file of the unit's own stays.
    std::fs::write(dir.join("jvm.options"), "-Xms1g\n").unwrap();
    schedule(&mut c, &id, &with_files("es.service", &[("elasticsearch.yml", yml)])).await;
    wait_file("unicast_hosts.txt removed", dir.join("unicast_hosts.txt"), None).await;
    assert_eq!(read(&dir.join("jvm.options")).as_deref(), Some("-Xms1g\n"));
    assert_eq!(disruptions(&fake, "es.service", mark), vec![]);
    assert_eq!(live(&fake, "es.service").await.0, "active");

    // Destroyed: the unit stops and its whole directory goes.
    unschedule(&mut c, &id, "es.service").await;
    eventually("config directory removed", || {
        let dir = dir.clone();
        async move { (!dir.exists()).then_some(()) }
    })
    .await;
    assert!(fake.file(&n("es.service")).is_none());
    assert_ne!(live(&fake, "es.service").await.0, "active");
    a.stop().await;
    cluster.stop().await;
}

async fn live_since(fake: &FakeUnitManager, unit: &str) -> u64 {
    use esfleet_agent::manager::UnitManager;
    fake.states(&[n(unit)]).await.unwrap().remove(0).since_usec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_config_files_are_refused_and_reported() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("units");
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(61);
    let cfg = esfleet_agent::config::Config {
        config_root: root.clone(),
        ..agent_config(cluster.endpoints(), &id, fast_timing())
    };
    let (a, fake) = agent(cfg);

    // A running unit with files, which then gets a hostile update: it keeps running on
    // its last good entry, reports the refusal, and its files stay as they were.
    let keep = with_files("keep.service", &[("elasticsearch.yml", "a: 1\n")]);
    schedule(&mut c, &id, &keep).await;
    eventually("keep.service active", || {
        let fake = fake.clone();
        async move { (live(&fake, "keep.service").await.0 == "active").then_some(()) }
    })
    .await;

    let many: Vec<(String, String)> = (0..=MAX_CONFIG_FILES)
        .map(|i| (format!("f{i}.txt"), "x".into()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let huge = "x".repeat(MAX_CONFIG_BYTES / 2 + 1);
    let cases: Vec<(&str, ScheduleEntry, &str)> = vec![
        ("up.service", with_files("up.service", &[("../x", "evil")]), "\"../x\""),
        (
            "slash.service",
            with_files("slash.service", &[("a/b", "evil")]),
            "\"a/b\"",
        ),
        ("dot.service", with_files("dot.service", &[(".", "evil")]), "\".\""),
        ("empty.service", with_files("empty.service", &[("", "evil")]), "\"\""),
        ("many.service", with_files("many.service", &many), "17 config files"),
        (
            "huge.service",
            with_files("huge.service", &[("a.yml", &huge), ("b.yml", &huge)]),
            "1 MiB",
        ),
    ];
    for (_, e, _) in &cases {
        schedule(&mut c, &id, e).await;
    }
    let good = with_files("good.service", &[("elasticsearch.yml", "ok\n")]);
    schedule(&mut c, &id, &good).await;
    schedule(
        &mut c,
        &id,
        &with_files("keep.service", &[("../../etc/passwd", "evil")]),
    )
    .await;

    let all = eventually("six refusals, a refused update and a running unit", || {
        let mut c = cluster.client();
        let id = id.clone();
        async move {
            let s = states(&mut c, &id).await;
            let done = s.len() == 8
                && s.get("good.service").is_some_and(|g| g.active == "active")
                && s.get("keep.service").is_some_and(|k| k.error.is_some());
            done.then_some(s)
        }
    })
    .await;
    for (unit, _, why) in &cases {
        let err = all[*unit].error.clone().unwrap_or_else(|| panic!("{unit}: no error"));
        assert!(err.contains(unit) && err.contains(why), "{unit}: {err}");
        assert!(!root.join(unit).exists(), "{unit} reached the disk");
        assert!(
            fake.calls().iter().all(|call| call.unit != Some(n(unit))),
            "{unit} reached the manager"
        );
    }
    let k = &all["keep.service"];
    assert!(k.error.as_deref().unwrap().contains("../../etc/passwd"), "{k:?}");
    assert_eq!(k.active, "active", "kept running on its last good entry");
    assert_eq!(
        read(&root.join("keep.service/elasticsearch.yml")).as_deref(),
        Some("a: 1\n")
    );
    assert!(all["good.service"].error.is_none());
    assert_eq!(
        read(&root.join("good.service/elasticsearch.yml")).as_deref(),
        Some("ok\n")
    );
    // Nothing written anywhere but the two units' directories.
    let mut listing: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    assert_eq!(listing, vec!["good.service", "keep.service"]);
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("etc").exists());
    a.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_puts_edited_files_back_without_a_restart() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("units");
    let state_dir = tmp.path().join("state");
    let mut cluster = Cluster::start(1).await;
    let mut c = cluster.client();
    let id = machine_id(62);
    let cfg = || esfleet_agent::config::Config {
        config_root: root.clone(),
        state_dir: Some(state_dir.clone()),
        ..agent_config(cluster.endpoints(), &id, fast_timing())
    };
    let (a, fake) = agent(cfg());
    let files: BTreeMap<&str, &str> = [
        ("elasticsearch.yml", "a: 1\n"),
        ("unicast_hosts.txt", "10.0.0.1:9300\n"),
    ]
    .into();
    let e = with_files("es.service", &files.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
    schedule(&mut c, &id, &e).await;
    let dir = root.join("es.service");
    wait_file(
        "files written",
        dir.join("unicast_hosts.txt"),
        Some(files["unicast_hosts.txt"]),
    )
    .await;
    eventually("es.service active", || {
        let fake = fake.clone();
        async move { (live(&fake, "es.service").await.0 == "active").then_some(()) }
    })
    .await;
    a.stop().await;

    // While no agent runs: one file edited, one deleted, and a left-over directory of a
    // unit that is gone.
    std::fs::write(dir.join("elasticsearch.yml"), "edited by hand\n").unwrap();
    std::fs::remove_file(dir.join("unicast_hosts.txt")).unwrap();
    let orphan = with_files("gone.service", &[("x.yml", "x\n")]);
    esfleet_agent::configfiles::ConfigRoot::new(&root)
        .write(&orphan.unit, &orphan.files)
        .unwrap();
    let since = live_since(&fake, "es.service").await;
    let mark = fake.calls().len();

    let b = esfleet_agent::agent::start(cfg(), fake.clone(), None);
    wait_file(
        "edited file put back",
        dir.join("elasticsearch.yml"),
        Some(files["elasticsearch.yml"]),
    )
    .await;
    wait_file(
        "deleted file put back",
        dir.join("unicast_hosts.txt"),
        Some(files["unicast_hosts.txt"]),
    )
    .await;
    eventually("orphaned directory removed", || {
        let p = root.join("gone.service");
        async move { (!p.exists()).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        disruptions(&fake, "es.service", mark),
        vec![],
        "{:?}",
        &fake.calls()[mark..]
    );
    assert_eq!(live_since(&fake, "es.service").await, since, "never restarted");
    b.stop().await;
    cluster.stop().await;
}
