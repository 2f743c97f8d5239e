//! The scheduler loop and the Fleet service on an in-process one-member cluster
//! (`server::start` on 127.0.0.1:0), driven through the Fleet API and etcd's KV/Lease API.
//! Agents are simulated: a machine is a record on a lease, and a small task reports every
//! scheduled unit as running (`states/<machine>/<unit>`, with the entry's generation).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esfleet_coordinator::config::Flags;
use esfleet_coordinator::scheduler::{self, snapshot::StoreSnapshot, txn};
use esfleet_coordinator::server::{self, Running};
use esfleet_core::keys;
use esfleet_core::model::{DesiredState, MachineRecord, ScheduleEntry, UnitState};
use esfleet_proto::etcdserverpb::{self as etcd, kv_client::KvClient, lease_client::LeaseClient};
use esfleet_proto::fleet::{self as pb, fleet_client::FleetClient};
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(20);

struct Cluster {
    running: Option<Running>,
    channel: Channel,
    _dir: tempfile::TempDir,
    sim: Sim,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.sim.task.abort();
    }
}

impl Cluster {
    async fn start(loss_margin_ms: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_url = format!("http://{}", client.local_addr().unwrap());
        let peer_url = format!("http://{}", peer.local_addr().unwrap());
        let cfg = Flags::try_parse_from_args(&[
            "--name",
            "n1",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--heartbeat-interval",
            "20",
            "--election-timeout",
            "200",
            "--machine-loss-margin",
            &loss_margin_ms.to_string(),
        ]);
        let running = server::start(cfg, client, peer).await.unwrap();
        let channel = Channel::from_shared(client_url).unwrap().connect().await.unwrap();
        let sim = Sim::start(channel.clone());
        Cluster {
            running: Some(running),
            channel,
            _dir: dir,
            sim,
        }
    }

    fn fleet(&self) -> FleetClient<Channel> {
        FleetClient::new(self.channel.clone())
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }

    fn snapshot(&self) -> StoreSnapshot {
        let node = &self.running.as_ref().unwrap().node;
        let m = node.store.mvcc.read().unwrap();
        StoreSnapshot::read(&m).unwrap()
    }

    /// Registers a machine on a lease; the simulated agent reports its units.
    async fn add_machine(&self, n: u8, metadata: &[(&str, &str)]) -> String {
        let id = format!("{:032x}", 0xa000 + u32::from(n));
        let rec = MachineRecord {
            id: id.clone(),
            hostname: format!("host{n}"),
            address: format!("10.0.0.{n}"),
            agent_endpoint: String::new(),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            facts: Default::default(),
            agent_version: "test".into(),
        };
        let lease = LeaseClient::new(self.channel.clone())
            .lease_grant(etcd::LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .unwrap()
            .into_inner()
            .id;
        self.kv()
            .put(etcd::PutRequest {
                key: keys::machine(&id).into_bytes().into(),
                value: serde_json::to_vec(&rec).unwrap().into(),
                lease,
                ..Default::default()
            })
            .await
            .unwrap();
        self.sim.machines.lock().unwrap().insert(id.clone(), lease);
        id
    }

    /// The machine's agent dies: its lease is revoked (its record and states vanish).
    async fn lose_machine(&self, id: &str) {
        let lease = self.sim.machines.lock().unwrap().remove(id).unwrap();
        LeaseClient::new(self.channel.clone())
            .lease_revoke(etcd::LeaseRevokeRequest { id: lease })
            .await
            .unwrap();
    }

    async fn submit(&self, units: &[(&str, &str)]) -> Result<pb::SubmitUnitsResponse, tonic::Status> {
        self.submit_with(units, false).await
    }

    async fn submit_with(
        &self,
        units: &[(&str, &str)],
        replace: bool,
    ) -> Result<pb::SubmitUnitsResponse, tonic::Status> {
        self.fleet()
            .submit_units(pb::SubmitUnitsRequest {
                units: units
                    .iter()
                    .map(|(n, t)| pb::UnitFile {
                        name: n.to_string(),
                        text: t.to_string(),
                    })
                    .collect(),
                replace,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn set(&self, names: &[&str], desired: &str) -> Result<pb::SetDesiredStateResponse, tonic::Status> {
        self.fleet()
            .set_desired_state(pb::SetDesiredStateRequest {
                names: names.iter().map(|s| s.to_string()).collect(),
                desired: desired.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// machine → units placed there.
    fn placements(&self) -> BTreeMap<String, BTreeMap<String, ScheduleEntry>> {
        self.snapshot()
            .placements
            .into_iter()
            .map(|(m, u)| (m, u.into_iter().map(|(n, e)| (n.to_string(), e)).collect()))
            .collect()
    }

    fn machines_of(&self, unit: &str) -> Vec<String> {
        self.placements()
            .into_iter()
            .filter(|(_, u)| u.contains_key(unit))
            .map(|(m, _)| m)
            .collect()
    }

    async fn stop(mut self) {
        self.sim.task.abort();
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// Simulated agents: report every unit scheduled on a live machine as running.
struct Sim {
    machines: Arc<Mutex<BTreeMap<String, i64>>>,
    /// (machine, unit) pairs the simulated agent reports as crash-looping: failed, with a
    /// restart count that grows every tick.
    failing: Arc<Mutex<BTreeSet<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sim {
    fn start(channel: Channel) -> Sim {
        let machines: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
        let failing: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
        let task = tokio::spawn({
            let machines = machines.clone();
            let failing = failing.clone();
            async move {
                let mut restarts = 0u32;
                let mut kv = KvClient::new(channel);
                let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let alive = machines.lock().unwrap().clone();
                    let crashing = failing.lock().unwrap().clone();
                    restarts += 1;
                    let Ok(r) = kv
                        .range(etcd::RangeRequest {
                            key: keys::SCHEDULE.as_bytes().to_vec().into(),
                            range_end: keys::prefix_end(keys::SCHEDULE).into(),
                            ..Default::default()
                        })
                        .await
                    else {
                        continue;
                    };
                    let mut want: BTreeMap<String, (Vec<u8>, i64)> = BTreeMap::new();
                    for kv in r.into_inner().kvs {
                        let key = String::from_utf8(kv.key.to_vec()).unwrap();
                        let (machine, _) = keys::split_two(&key, keys::SCHEDULE).unwrap();
                        let Some(lease) = alive.get(machine) else { continue };
                        let e: ScheduleEntry = serde_json::from_slice(&kv.value).unwrap();
                        let launched = e.desired == DesiredState::Launched;
                        let crash = crashing.contains(&(machine.to_string(), e.unit.to_string()));
                        let state = if crash {
                            UnitState {
                                unit: e.unit.to_string(),
                                load: "loaded".into(),
                                active: "failed".into(),
                                sub: "failed".into(),
                                hash: e.hash.clone(),
                                generation: e.generation,
                                n_restarts: restarts,
                                ..Default::default()
                            }
                        } else {
                            UnitState {
                                unit: e.unit.to_string(),
                                load: "loaded".into(),
                                active: if launched { "active" } else { "inactive" }.into(),
                                sub: if launched { "running" } else { "dead" }.into(),
                                hash: e.hash.clone(),
                                generation: e.generation,
                                ..Default::default()
                            }
                        };
                        want.insert(
                            keys::state(machine, &e.unit),
                            (serde_json::to_vec(&state).unwrap(), *lease),
                        );
                    }
                    for (key, (value, lease)) in &want {
                        if written.get(key) != Some(value) {
                            let put = etcd::PutRequest {
                                key: key.clone().into_bytes().into(),
                                value: value.clone().into(),
                                lease: *lease,
                                ..Default::default()
                            };
                            if kv.put(put).await.is_ok() {
                                written.insert(key.clone(), value.clone());
                            }
                        }
                    }
                    let gone: Vec<String> = written.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
                    for key in gone {
                        let del = etcd::DeleteRangeRequest {
                            key: key.clone().into_bytes().into(),
                            ..Default::default()
                        };
                        if kv.delete_range(del).await.is_ok() {
                            written.remove(&key);
                        }
                    }
                }
            }
        });
        Sim {
            machines,
            failing,
            task,
        }
    }
}

trait ParseArgs {
    fn try_parse_from_args(args: &[&str]) -> esfleet_coordinator::config::Config;
}

impl ParseArgs for Flags {
    fn try_parse_from_args(args: &[&str]) -> esfleet_coordinator::config::Config {
        use clap::Parser;
        let mut argv = vec!["esfleet-coordinator"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap().validate().unwrap()
    }
}

/// Polls `check` until it returns Ok, for at most [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

const PLAIN: &str = "[Service]\nExecStart=/bin/true\n";

fn with_xfleet(x: &str) -> String {
    format!("{PLAIN}\n[X-Fleet]\n{x}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_units_honouring_constraints() {
    let c = Cluster::start(1000).await;
    let m1 = c.add_machine(1, &[("zone", "a")]).await;
    let m2 = c.add_machine(2, &[("zone", "b")]).await;
    let m3 = c.add_machine(3, &[("zone", "b")]).await;
    let all: BTreeSet<String> = [m1.clone(), m2.clone(), m3.clone()].into();

    // MachineOf: b follows a.
    let b_text = with_xfleet("MachineOf=a.service");
    c.submit(&[("a.service", PLAIN), ("b.service", &b_text)]).await.unwrap();
    c.set(&["a.service", "b.service"], "launched").await.unwrap();
    let on = eventually("a and b placed", || async {
        let (a, b) = (c.machines_of("a.service"), c.machines_of("b.service"));
        if a.len() == 1 && a == b {
            Ok(a[0].clone())
        } else {
            Err(format!("a on {a:?}, b on {b:?}"))
        }
    })
    .await;
    assert!(all.contains(&on));

    // Five mutually conflicting units on three machines: three placed, two unplaceable.
    let conflicting = with_xfleet("Conflicts=c@*.service");
    c.submit(&[("c@.service", &conflicting)]).await.unwrap();
    let names: Vec<String> = (1..=5).map(|i| format!("c@{i}.service")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = c.set(&refs, "launched").await.unwrap();
    assert_eq!(r.changes.len(), 5, "instances created from the template");
    let files = eventually("3 placed, 2 unplaceable", || async {
        let files = c
            .fleet()
            .list_unit_files(pb::ListUnitFilesRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let cs: Vec<&pb::UnitInfo> = files
            .units
            .iter()
            .filter(|u| u.name.starts_with("c@") && !u.is_template)
            .collect();
        let placed = cs.iter().filter(|u| u.placements.len() == 1).count();
        let unplaceable = cs.iter().filter(|u| !u.unplaceable.is_empty()).count();
        if placed == 3 && unplaceable == 2 {
            Ok(files)
        } else {
            Err(format!("{placed} placed, {unplaceable} unplaceable"))
        }
    })
    .await;
    let machines: BTreeSet<&str> = files
        .units
        .iter()
        .filter(|u| u.name.starts_with("c@"))
        .flat_map(|u| u.placements.iter().map(|p| p.machine_id.as_str()))
        .collect();
    assert_eq!(machines.len(), 3, "one conflicting unit per machine");
    let reason = files.units.iter().find(|u| !u.unplaceable.is_empty()).unwrap();
    assert!(reason.placements.is_empty());
    eprintln!("unplaceable reason: {}", reason.unplaceable);

    // Global on every machine matching its metadata.
    let global = with_xfleet("Global=true\nMachineMetadata=zone=b");
    c.submit(&[("g.service", &global)]).await.unwrap();
    c.set(&["g.service"], "launched").await.unwrap();
    eventually("global on zone b", || async {
        let on: BTreeSet<String> = c.machines_of("g.service").into_iter().collect();
        let want: BTreeSet<String> = [m2.clone(), m3.clone()].into();
        if on == want {
            Ok(())
        } else {
            Err(format!("on {on:?}"))
        }
    })
    .await;

    // Template with a specifier: h@host2 goes to the machine whose hostname is host2.
    c.submit(&[("h@.service", &with_xfleet("MachineMetadata=hostname=%i"))])
        .await
        .unwrap();
    c.set(&["h@host2.service"], "launched").await.unwrap();
    eventually("h@host2 on host2", || async {
        let on = c.machines_of("h@host2.service");
        if on == vec![m2.clone()] {
            Ok(())
        } else {
            Err(format!("on {on:?}"))
        }
    })
    .await;

    // Every placement gets reported running by the simulated agents: list-units shows it.
    let units = eventually("list-units shows running placements", || async {
        let r = c
            .fleet()
            .list_units(pb::ListUnitsRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if r.units
            .iter()
            .all(|u| u.placement.as_ref().is_some_and(|p| p.reported && p.active == "active"))
        {
            Ok(r)
        } else {
            Err(format!("{:?}", r.units))
        }
    })
    .await;
    assert_eq!(units.units.len(), 2 + 3 + 2 + 1);
    let unit = c
        .fleet()
        .get_unit(pb::GetUnitRequest {
            name: "b.service".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .unit
        .unwrap();
    assert_eq!((unit.desired.as_str(), unit.state.as_str()), ("launched", "launched"));
    assert_eq!(unit.text, b_text);

    // Destroy: the scheduler removes the placements.
    c.fleet()
        .destroy_units(pb::DestroyUnitsRequest {
            names: vec!["c@*".into()],
        })
        .await
        .unwrap();
    eventually("c@ placements removed", || async {
        let left: usize = c
            .placements()
            .values()
            .map(|u| u.keys().filter(|n| n.starts_with("c@")).count())
            .sum();
        let unplaceable = c.snapshot().unplaceable.len();
        if left == 0 && unplaceable == 0 {
            Ok(())
        } else {
            Err(format!("{left} placements, {unplaceable} unplaceable records"))
        }
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_machines_units_move_after_the_margin() {
    let c = Cluster::start(300).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(c.add_machine(n, &[]).await);
    }
    let names: Vec<String> = (1..=6).map(|i| format!("u{i}.service")).collect();
    let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), PLAIN)).collect();
    c.submit(&files).await.unwrap();
    c.set(&["u*"], "launched").await.unwrap();
    let before = eventually("6 placed", || async {
        let p = c.placements();
        let n: usize = p.values().map(BTreeMap::len).sum();
        if n == 6 {
            Ok(p)
        } else {
            Err(format!("{n} placed"))
        }
    })
    .await;
    let victim = before.keys().next().unwrap().clone();
    let moved: BTreeMap<String, u64> = before[&victim].iter().map(|(n, e)| (n.clone(), e.generation)).collect();
    assert!(!moved.is_empty());

    let lost_at = tokio::time::Instant::now();
    c.lose_machine(&victim).await;
    // Within the margin the units stay where they were (the machine is suspect).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = c.placements();
    assert_eq!(
        during.get(&victim).map(BTreeMap::len),
        Some(moved.len()),
        "moved before the margin"
    );
    let machines = c
        .fleet()
        .list_machines(pb::ListMachinesRequest {})
        .await
        .unwrap()
        .into_inner();
    let state = machines
        .machines
        .iter()
        .find(|m| m.id == victim)
        .map(|m| m.state.clone());
    assert_eq!(state.as_deref(), Some("suspect"));

    let after = eventually("units moved off the lost machine", || async {
        let p = c.placements();
        if p.contains_key(&victim) {
            return Err("still placed on the lost machine".into());
        }
        let n: usize = p.values().map(BTreeMap::len).sum();
        if n == 6 {
            Ok(p)
        } else {
            Err(format!("{n} placed"))
        }
    })
    .await;
    assert!(
        lost_at.elapsed() >= Duration::from_millis(300),
        "moved before the margin"
    );
    for (machine, units) in &after {
        for (name, e) in units {
            match moved.get(name) {
                Some(old) => assert!(e.generation > *old, "{name} kept generation {old} on {machine}"),
                None => assert_eq!(
                    before[machine][name].generation, e.generation,
                    "{name} on a healthy machine was touched"
                ),
            }
        }
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_units_one_at_a_time_and_records_progress() {
    let c = Cluster::start(1000).await;
    let m1 = c.add_machine(1, &[]).await;
    // es@1..3 in one group (the template prefix), all on m1 (the only machine at first).
    c.submit(&[("es@.service", PLAIN)]).await.unwrap();
    c.set(&["es@1.service", "es@2.service", "es@3.service"], "launched")
        .await
        .unwrap();
    eventually("3 on m1", || async {
        let n = c.placements().get(&m1).map_or(0, BTreeMap::len);
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    let _m2 = c.add_machine(2, &[]).await;
    let _m3 = c.add_machine(3, &[]).await;

    let r = c
        .fleet()
        .drain(pb::DrainRequest {
            machine_id: m1.clone(),
            reason: "kernel upgrade".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.created);
    // Watch the drain: never more than one unit of the group mid-move (two copies) at once,
    // and the record's `remaining` only shrinks.
    let mut remaining_seen = Vec::new();
    eventually("drain done", || {
        let snap = c.snapshot();
        let doubled = snap
            .units
            .keys()
            .filter(|u| !u.is_template() && snap.placements_of(u).count() > 1)
            .count();
        assert!(doubled <= 1, "{doubled} units mid-move at once");
        let rec = snap.drains.get(&m1).cloned().unwrap_or_default();
        // (The record as the Fleet service wrote it has no progress yet: not counted.)
        let progressed = rec.done || !rec.remaining.is_empty();
        if progressed && remaining_seen.last() != Some(&rec.remaining) {
            remaining_seen.push(rec.remaining.clone());
        }
        async move {
            if rec.done && rec.remaining.is_empty() {
                Ok(())
            } else {
                Err(format!("{rec:?}"))
            }
        }
    })
    .await;
    assert!(!c.placements().contains_key(&m1));
    assert!(
        remaining_seen.windows(2).all(|w| w[1].len() <= w[0].len()),
        "{remaining_seen:?}"
    );
    assert!(
        remaining_seen.len() >= 3,
        "progress recorded step by step: {remaining_seen:?}"
    );
    let d = c
        .fleet()
        .get_drain(pb::GetDrainRequest { machine_id: m1.clone() })
        .await
        .unwrap()
        .into_inner()
        .drain
        .unwrap();
    assert_eq!((d.reason.as_str(), d.done), ("kernel upgrade", true));
    // Undrain: the machine takes units again.
    let r = c
        .fleet()
        .undrain(pb::UndrainRequest { machine_id: m1.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.removed);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_plan_is_refused() {
    let c = Cluster::start(1000).await;
    c.add_machine(1, &[]).await;
    c.submit(&[("a.service", PLAIN)]).await.unwrap();
    c.set(&["a.service"], "launched").await.unwrap();
    eventually("a placed", || async {
        if c.machines_of("a.service").len() == 1 {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let node = c.running.as_ref().unwrap().node.clone();
    let term = node.raft.metrics().borrow().current_term;
    let snap = c.snapshot();
    assert_eq!(snap.epoch, Some(term), "the leader wrote its epoch");
    let probe = || vec![txn::put("/esfleet/schedule/x/probe.service", "{}")];

    // A deposed leader (older term) cannot write.
    let (resp, _) = txn::propose(&node, scheduler::guarded(term - 1, snap.revision, probe()))
        .await
        .unwrap();
    assert!(!resp.succeeded, "a plan from an older epoch landed");
    // A plan computed from a view older than the last unit change cannot land.
    let old = snap.revision;
    c.submit(&[("b.service", PLAIN)]).await.unwrap();
    let (resp, _) = txn::propose(&node, scheduler::guarded(term, old, probe()))
        .await
        .unwrap();
    assert!(!resp.succeeded, "a plan from a stale view landed");
    // The same plan from a fresh view lands.
    let fresh = c.snapshot().revision;
    let (resp, _) = txn::propose(&node, scheduler::guarded(term, fresh, probe()))
        .await
        .unwrap();
    assert!(resp.succeeded);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_no_leader_wrote_does_not_park_the_scheduler() {
    let c = Cluster::start(1000).await;
    c.add_machine(1, &[]).await;
    let node = c.running.as_ref().unwrap().node.clone();
    let term = node.raft.metrics().borrow().current_term;
    // Written by a client (an etcdctl put): the highest epoch there can be, then one that
    // is not a number. Either once stood the scheduler down until the next election.
    let forged = [scheduler::snapshot::encode_epoch(u64::MAX), "garbage".to_string()];
    for (i, value) in forged.iter().enumerate() {
        c.kv()
            .put(etcd::PutRequest {
                key: keys::SCHEDULER_EPOCH.into(),
                value: value.clone().into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let unit = format!("e{i}.service");
        c.submit(&[(unit.as_str(), PLAIN)]).await.unwrap();
        c.set(&[unit.as_str()], "launched").await.unwrap();
        eventually(&format!("{unit} placed after epoch {value:?}"), || async {
            if c.machines_of(&unit).len() == 1 {
                Ok(())
            } else {
                Err(format!("epoch {:?}", c.snapshot().epoch))
            }
        })
        .await;
        assert_eq!(c.snapshot().epoch, Some(term), "the leader's own epoch is back");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_api_refuses_bad_input_with_a_clear_error() {
    let c = Cluster::start(1000).await;
    let err = c.submit(&[("../etc/passwd", PLAIN)]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("../etc/passwd"), "{}", err.message());

    let err = c
        .submit(&[("x.service", &with_xfleet("MachinOf=a.service"))])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("x.service") && err.message().contains("MachineOf"),
        "{}",
        err.message()
    );

    c.submit(&[("t@.service", PLAIN)]).await.unwrap();
    let err = c.set(&["t@.service"], "launched").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("template"), "{}", err.message());

    c.submit(&[("r.service", PLAIN)]).await.unwrap();
    let again = c.submit(&[("r.service", PLAIN)]).await.unwrap();
    assert_eq!(again.results[0].outcome, pb::submit_result::Outcome::Unchanged as i32);
    let changed = format!("{PLAIN}# changed\n");
    let err = c.submit(&[("r.service", &changed)]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("use --replace"), "{}", err.message());
    let ok = c.submit_with(&[("r.service", &changed)], true).await.unwrap();
    assert_eq!(ok.results[0].outcome, pb::submit_result::Outcome::Replaced as i32);

    let err = c.set(&["r.service"], "running").await.unwrap_err();
    assert!(
        err.message().contains("inactive, loaded or launched"),
        "{}",
        err.message()
    );
    let err = c.set(&["nope.service"], "launched").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c.submit(&[("i@1.service", "")]).await.unwrap_err();
    assert!(err.message().contains("i@.service"), "{}", err.message());
    let err = c
        .fleet()
        .drain(pb::DrainRequest {
            machine_id: "not-a-machine".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Nothing of the refused requests was stored.
    let snap = c.snapshot();
    let stored: Vec<String> = snap.units.keys().map(|n| n.to_string()).collect();
    assert_eq!(stored, vec!["r.service", "t@.service"]);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_unit_states_follows_a_start_and_reports_unplaceable() {
    use tokio_stream::StreamExt;
    let c = Cluster::start(1000).await;
    let m1 = c.add_machine(1, &[("zone", "a")]).await;
    c.submit(&[
        ("w.service", PLAIN),
        ("nowhere.service", &with_xfleet("MachineMetadata=zone=z")),
    ])
    .await
    .unwrap();
    let mut stream = c
        .fleet()
        .watch_unit_states(pb::WatchUnitStatesRequest {
            names: vec!["w.service".into(), "nowhere.service".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.units.len(), 2);
    assert!(first.units.iter().all(|u| u.exists && u.state == "inactive"));
    c.set(&["w.service", "nowhere.service"], "launched").await.unwrap();
    let mut launched_on = None;
    let mut unplaceable = None;
    tokio::time::timeout(PATIENCE, async {
        while launched_on.is_none() || unplaceable.is_none() {
            let msg = stream.next().await.unwrap().unwrap();
            for u in msg.units {
                if u.name == "w.service" && u.state == "launched" {
                    launched_on = Some(u.placements[0].machine_id.clone());
                }
                if u.name == "nowhere.service" && !u.unplaceable.is_empty() {
                    unplaceable = Some(u.unplaceable);
                }
            }
        }
    })
    .await
    .expect("the watch reported the start and the unplaceable unit");
    assert_eq!(launched_on.as_deref(), Some(m1.as_str()));
    eprintln!("unplaceable: {}", unplaceable.unwrap());
    let status = c
        .fleet()
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.healthy);
    assert_eq!(status.scheduler_epoch, status.raft_term);
    assert_eq!(status.members.len(), 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_keeps_failing_moves_to_another_machine() {
    let c = Cluster::start(1000).await;
    let m1 = c.add_machine(1, &[]).await;
    let m2 = c.add_machine(2, &[]).await;
    c.submit(&[("f.service", PLAIN)]).await.unwrap();
    c.set(&["f.service"], "launched").await.unwrap();
    let first = eventually("f placed", || async {
        match c.machines_of("f.service").as_slice() {
            [m] => Ok(m.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let other = if first == m1 { m2.clone() } else { m1.clone() };
    // It crash-loops there: after 5 failures (the default limit) it moves.
    c.sim
        .failing
        .lock()
        .unwrap()
        .insert((first.clone(), "f.service".into()));
    eventually("f moved off the machine it keeps failing on", || async {
        match c.machines_of("f.service").as_slice() {
            [m] if *m == other => Ok(()),
            got => Err(format!("on {got:?}")),
        }
    })
    .await;
    // And stays away while the failures are within the window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.machines_of("f.service"), vec![other]);
    c.stop().await;
}
