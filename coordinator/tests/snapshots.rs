//! Snapshots as files on real members (real sled): a member SIGKILLed while it takes
//! snapshots restarts from its file with every acknowledged write, leftover temporary files
//! are deleted at open, a missing snapshot file stops the member with a clear message (the
//! binary, as a process), and a learner that joins after the log was purged is brought up
//! by a snapshot streamed into a file (`server::start` in process).

use std::path::{Path, PathBuf};
use std::time::Duration;

use esfleet_coordinator::config::Flags;
use esfleet_coordinator::node::MemberChange;
use esfleet_coordinator::server::{self, Running};
use esfleet_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(30);

struct Member {
    client_url: String,
    peer_url: String,
    client: tokio::net::TcpListener,
    peer: tokio::net::TcpListener,
}

impl Member {
    async fn bind() -> Member {
        let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Member {
            client_url: format!("http://{}", client.local_addr().unwrap()),
            peer_url: format!("http://{}", peer.local_addr().unwrap()),
            client,
            peer,
        }
    }

    /// Starts the member; `cluster` is `--initial-cluster`, `existing` joins a cluster.
    async fn start(
        self,
        name: &str,
        dir: &Path,
        cluster: &str,
        existing: bool,
        snapshot_count: u64,
    ) -> anyhow::Result<Running> {
        use clap::Parser;
        let count = snapshot_count.to_string();
        let argv = [
            "esfleet-coordinator",
            "--name",
            name,
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen-client-urls",
            &self.client_url,
            "--listen-peer-urls",
            &self.peer_url,
            "--initial-advertise-peer-urls",
            &self.peer_url,
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            if existing { "existing" } else { "new" },
            "--heartbeat-interval",
            "20",
            "--election-timeout",
            "200",
            "--snapshot-count",
            &count,
            "--scheduler",
            "false",
        ];
        let cfg = Flags::try_parse_from(argv)?.validate()?;
        server::start(cfg, self.client, self.peer).await
    }
}

async fn kv(url: &str) -> KvClient<Channel> {
    KvClient::new(Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap())
}

/// Writes `n` keys `/snap/<i>`, 16 at a time (so appends group-commit).
async fn write_keys(kv: &KvClient<Channel>, n: usize) {
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                kv.put(PutRequest {
                    key: format!("/snap/{i:05}").into_bytes().into(),
                    value: vec![b'x'; 200].into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// (count of keys under `/snap/`, store revision), read from this member alone.
async fn local_state(kv: &KvClient<Channel>) -> (i64, i64) {
    let r = kv
        .clone()
        .range(RangeRequest {
            key: b"/snap/".to_vec().into(),
            range_end: b"/snap0".to_vec().into(),
            serializable: true,
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.count, r.header.unwrap().revision)
}

fn snapshot_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("snapshots"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A member as a real process (the binary built with these tests), so it can be killed
/// with SIGKILL and restarted on the same data dir.
struct Process {
    child: std::process::Child,
    url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the binary on `dir`; returns it and its client URL.
/// `ports`: (client, peer). A restart must reuse them: the member id derives from the peer URL.
fn spawn(dir: &Path, (client, peer): (u16, u16)) -> (std::process::Child, String) {
    let peer_url = format!("http://127.0.0.1:{peer}");
    let client_url = format!("http://127.0.0.1:{client}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_esfleet-coordinator"))
        .args(["--name", "n1", "--data-dir", dir.to_str().unwrap()])
        .args(["--listen-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("n1={peer_url}")])
        .args(["--heartbeat-interval", "20", "--election-timeout", "200"])
        .args(["--snapshot-count", "50", "--scheduler", "false"])
        .stdout(std::process::Stdio::null())
        // A file, not a pipe nobody reads (a full pipe would block the member).
        .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    (child, client_url)
}

impl Process {
    async fn start(dir: &Path, ports: (u16, u16)) -> Process {
        let (mut child, port) = spawn(dir, ports);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the member exited with {status}");
            }
            if let Ok(c) = Channel::from_shared(port.clone()).unwrap().connect().await {
                let mut kv = KvClient::new(c);
                let probe = kv.range(RangeRequest {
                    key: b"/probe".to_vec().into(),
                    ..Default::default()
                });
                if tokio::time::timeout(Duration::from_secs(1), probe)
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    return Process { child, url: port };
                }
            }
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                panic!("the member did not start serving; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_during_snapshots_restarts_from_its_file_and_refuses_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    let member = Process::start(dir.path(), ports).await;
    let client = kv(&member.url).await;
    write_keys(&client, 300).await;
    eventually("a snapshot file", || {
        let f = snapshot_files(dir.path());
        (f.len() == 1 && f[0].extension().is_some_and(|e| e == "snap")).then_some(f)
    })
    .await;
    // Keep writing (a snapshot every 50 entries) and SIGKILL the member in the middle.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let mut client = client.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut acked = 0usize;
            for i in 0..100_000 {
                let put = client.put(PutRequest {
                    key: format!("/snap/late/{i:06}").into_bytes().into(),
                    value: vec![b'y'; 200].into(),
                    ..Default::default()
                });
                match tokio::time::timeout(Duration::from_secs(2), put).await {
                    Ok(Ok(_)) => acked = i + 1,
                    _ => break,
                }
                progress.store(acked, std::sync::atomic::Ordering::Relaxed);
            }
            acked
        })
    };
    // Past two more snapshots, then at an arbitrary point.
    eventually("writes after the first snapshot", || {
        (progress.load(std::sync::atomic::Ordering::Relaxed) >= 120).then_some(())
    })
    .await;
    drop(member); // SIGKILL
    let acked = writer.await.unwrap();
    assert!(acked >= 120, "only {acked} writes before the kill");

    // What a kill during a build or a transfer can leave behind, whether or not this one did.
    let leftovers = [
        dir.path().join("snapshots/1-9999-7.1a2b.3.snap.tmp"),
        dir.path().join("snapshots/receiving-0.tmp"),
    ];
    for l in &leftovers {
        std::fs::write(l, b"partial").unwrap();
    }
    let member = Process::start(dir.path(), ports).await;
    let client = kv(&member.url).await;
    let (count, _) = local_state(&client).await;
    assert!(
        count as usize >= 300 + acked,
        "{count} keys after the restart, {} were acknowledged",
        300 + acked
    );
    for l in &leftovers {
        assert!(!l.exists(), "{} was not deleted at open", l.display());
    }
    let files = snapshot_files(dir.path());
    assert_eq!(files.len(), 1, "only the current snapshot: {files:?}");
    drop(member);

    std::fs::remove_file(&files[0]).unwrap();
    let status = spawn(dir.path(), ports).0.wait().unwrap();
    assert!(!status.success(), "a member whose snapshot file is gone must not start");
    let text = std::fs::read_to_string(dir.path().with_extension("log")).unwrap();
    assert!(
        text.contains(&files[0].display().to_string()) && text.contains("is missing"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_joins_after_the_purge_is_installed_from_a_snapshot_file() {
    let dir1 = tempfile::tempdir().unwrap();
    let m1 = Member::bind().await;
    let url1 = m1.client_url.clone();
    let peer1 = m1.peer_url.clone();
    let first = m1
        .start("n1", dir1.path(), &format!("n1={peer1}"), false, 100)
        .await
        .unwrap();
    let client1 = kv(&url1).await;
    // openraft keeps 1,000 entries behind a snapshot: write well past that, so the log
    // the learner would need is gone.
    write_keys(&client1, 1500).await;
    let leader_snapshot = eventually("a snapshot past the kept log", || {
        let f = snapshot_files(dir1.path());
        let name = f.first()?.file_name()?.to_string_lossy().into_owned();
        // Names start with `<term>-<index>-`.
        let index: u64 = name.split('-').nth(1)?.parse().ok()?;
        (index > 1200).then_some(name)
    })
    .await;

    let dir2 = tempfile::tempdir().unwrap();
    let m2 = Member::bind().await;
    let url2 = m2.client_url.clone();
    let peer2 = m2.peer_url.clone();
    first
        .node
        .change_members(MemberChange::AddLearner {
            id: esfleet_coordinator::types::member_id(&peer2),
            peer_url: peer2.clone(),
        })
        .await
        .unwrap();
    // A snapshot count the learner never reaches: any snapshot file it has was installed.
    let second = m2
        .start("n2", dir2.path(), &format!("n1={peer1},n2={peer2}"), true, 1_000_000)
        .await
        .unwrap();
    let client2 = kv(&url2).await;
    let want = local_state(&client1).await;
    let mut got = (0, 0);
    for _ in 0..600 {
        got = local_state(&client2).await;
        if got.0 == want.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.0, 1500, "the learner has every key");
    let files = snapshot_files(dir2.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    // Names start with the leader's snapshot id, `<term>-<index>-<seq>`: the learner never
    // builds one itself, so this came from the leader, from past the purged log.
    let index: u64 = name.split('-').nth(1).unwrap().parse().unwrap();
    assert!(
        index > 1200,
        "learner's snapshot {name} (leader's first: {leader_snapshot})"
    );
    let id = |n: &str| n.split('.').next().unwrap().to_string();
    let leader_now = snapshot_files(dir1.path())[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    if id(&name) == id(&leader_now) {
        assert_eq!(
            std::fs::read(&files[0]).unwrap(),
            std::fs::read(dir1.path().join("snapshots").join(&leader_now)).unwrap(),
            "the learner's file is the leader's, byte for byte"
        );
    }
    second.stop().await;
    first.stop().await;
}
