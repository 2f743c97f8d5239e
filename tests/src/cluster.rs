//! [`ProcessCluster`]: coordinator (or etcd) processes on loopback, one per member.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use crate::{free_port, poll, Flavor};

/// How long a fresh cluster (or a joining member) gets to serve.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an election may take before `leader()` gives up.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a member gets to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long membership RPCs are retried (etcd refuses them for ~5 s after a member
/// connects: "unhealthy cluster").
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a removed member gets to exit by itself before it is killed.
const REMOVED_EXIT_GRACE: Duration = Duration::from_secs(10);
/// Lines of each member's log shown when a wait fails.
const LOG_TAIL_LINES: usize = 40;
/// esfleet members' log filter unless `RUST_LOG` is set: openraft's info is chatty enough
/// to push esfleet's own lines out of a log tail.
const DEFAULT_RUST_LOG: &str = "info,openraft=warn";
/// Set to keep the temp dir (data dirs and logs) after the cluster is dropped.
const KEEP_ENV: &str = "ESFLEET_TEST_KEEP";

/// Tuning flags given to every member; `None` leaves the binary's default.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--heartbeat-interval`, in milliseconds.
    pub heartbeat_interval_ms: Option<u64>,
    /// `--election-timeout`, in milliseconds.
    pub election_timeout_ms: Option<u64>,
    /// `--snapshot-count`: applied entries between snapshots.
    pub snapshot_count: Option<u64>,
    /// Extra environment for the member processes. esfleet members get
    /// `RUST_LOG=info,openraft=warn` unless this or the test process sets `RUST_LOG`.
    pub env: Vec<(String, String)>,
}

/// One member: its identity, its flags and its process, if running.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// `--initial-cluster` it was first started with; restarts reuse it.
    initial_cluster: String,
    /// `--initial-cluster-state` it was first started with; restarts reuse it.
    initial_state: &'static str,
    /// The process; `None` once killed, stopped or removed. A mutex so that waits taking
    /// `&self` can notice a member that exited on its own.
    child: Mutex<Option<Child>>,
    /// Removed from the cluster's membership: never restarted, not in `endpoints()`.
    removed: bool,
}

impl Member {
    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cluster of real member processes on loopback, in a temp dir that is removed (and
/// whose processes are killed) on drop, even when a test panics.
///
/// Members are addressed by index, in start order; an index stays valid after the member
/// is killed or removed. Members added with [`ProcessCluster::add_member`] get the next
/// index.
pub struct ProcessCluster {
    flavor: Flavor,
    binary: PathBuf,
    options: Options,
    /// `None` only while dropping with `ESFLEET_TEST_KEEP` set.
    dir: Option<TempDir>,
    members: Vec<Member>,
}

impl ProcessCluster {
    /// Starts `n` members (`n1`..`nN`) with default options and waits until the cluster
    /// serves a linearizable write.
    pub async fn start(flavor: Flavor, n: usize) -> anyhow::Result<Self> {
        Self::start_with(flavor, n, Options::default()).await
    }

    /// Like [`ProcessCluster::start`], with tuning flags.
    pub async fn start_with(flavor: Flavor, n: usize, options: Options) -> anyhow::Result<Self> {
        anyhow::ensure!(n > 0, "a cluster needs at least one member");
        let binary = flavor.binary()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("esfleet-{}-", flavor.name()))
            .tempdir()
            .context("creating the cluster's temp dir")?;
        let mut members = Vec::with_capacity(n);
        for i in 1..=n {
            members.push((
                format!("n{i}"),
                format!("http://127.0.0.1:{}", free_port()?),
                format!("http://127.0.0.1:{}", free_port()?),
            ));
        }
        let initial_cluster = members
            .iter()
            .map(|(name, _, peer)| format!("{name}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = ProcessCluster {
            flavor,
            binary,
            options,
            members: Vec::new(),
            dir: Some(dir),
        };
        for (name, client_url, peer_url) in members {
            let member = cluster.new_member(name, client_url, peer_url, &initial_cluster, "new");
            cluster.members.push(member);
        }
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Which binary the members run.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// How many members were ever started (including killed and removed ones).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no member was ever started (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i`'s name (`n1`, `n2`, ... or the name given to `add_member`).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Member `i`'s client URL (`http://127.0.0.1:PORT`), whatever its state.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url.clone()
    }

    /// Member `i`'s peer URL.
    pub fn peer_url(&self, i: usize) -> String {
        self.members[i].peer_url.clone()
    }

    /// Member `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    /// The file member `i`'s stdout and stderr go to.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log_path
    }

    /// Member `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child().as_ref().map(Child::id)
    }

    /// Whether member `i`'s process is running (started, not killed, stopped, removed or
    /// exited on its own).
    pub fn is_running(&self, i: usize) -> bool {
        let m = &self.members[i];
        let mut child = m.child();
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Indexes of the running members.
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Client URLs of the running members.
    pub fn endpoints(&self) -> Vec<String> {
        self.running().into_iter().map(|i| self.endpoint(i)).collect()
    }

    /// The connect options the harness's clients use: 2 s to connect, 5 s per request.
    pub fn connect_options() -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
    }

    /// A client balanced over the running members.
    pub async fn client(&self) -> Client {
        Self::connect(&self.endpoints()).await
    }

    /// A client of member `i` alone.
    pub async fn client_for(&self, i: usize) -> Client {
        Self::connect(&[self.endpoint(i)]).await
    }

    /// A client balanced over `endpoints` (connections are made lazily, so this does not
    /// fail when a member is down; its requests do).
    pub async fn connect(endpoints: &[String]) -> Client {
        Client::connect(endpoints, Some(Self::connect_options()))
            .await
            .unwrap_or_else(|e| panic!("connecting a client to {endpoints:?}: {e}"))
    }

    /// Fails, with the members' log tails, if a member that should be running has exited.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        for m in &self.members {
            let mut child = m.child();
            if let Some(c) = child.as_mut() {
                if let Some(status) = c.try_wait().context("checking a member process")? {
                    drop(child);
                    return Err(self.with_logs(anyhow!("member {} exited unexpectedly ({status})", m.name)));
                }
            }
        }
        Ok(())
    }

    /// Waits until every running member answers Maintenance Status and the cluster serves
    /// a linearizable write (a lease grant and revoke, which leave the key space and its
    /// revision alone).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive()?;
            let err = match self.try_ready().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(self.with_logs(err.context(format!(
                    "{} cluster did not serve a linearizable write within {START_TIMEOUT:?}",
                    self.flavor.name()
                ))));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_ready(&self) -> anyhow::Result<()> {
        for i in self.running() {
            let mut c = self.client_for(i).await;
            c.status()
                .await
                .with_context(|| format!("Status from {}", self.name(i)))?;
        }
        let mut c = self.client().await;
        let lease = c.lease_grant(60, None).await.context("LeaseGrant")?;
        c.lease_revoke(lease.id()).await.context("LeaseRevoke")?;
        Ok(())
    }

    /// The index of the current leader: a running member whose Maintenance Status says it
    /// is the leader. Waits (bounded) for an election to finish.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let found = poll("a leader", LEADER_TIMEOUT, || async {
            let mut seen = Vec::new();
            for i in self.running() {
                let mut c = self.client_for(i).await;
                match c.status().await {
                    Ok(s) => {
                        let id = s.header().map_or(0, |h| h.member_id());
                        if s.leader() != 0 && s.leader() == id {
                            return Ok(i);
                        }
                        seen.push(format!("{}: id {id:x} leader {:x}", self.name(i), s.leader()));
                    }
                    Err(e) => seen.push(format!("{}: {e}", self.name(i))),
                }
            }
            Err(anyhow!("no running member is the leader: {}", seen.join("; ")))
        })
        .await;
        found.map_err(|e| self.with_logs(e))
    }

    /// Member `i`'s Raft member id, from the member list (matched by peer URL).
    pub async fn member_id(&self, i: usize) -> anyhow::Result<u64> {
        let peer = &self.members[i].peer_url;
        let list = self.client().await.member_list().await?;
        list.members()
            .iter()
            .find(|m| m.peer_urls().iter().any(|u| u == peer))
            .map(|m| m.id())
            .ok_or_else(|| anyhow!("no member with peer URL {peer} in the member list"))
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let mut child = m
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .with_context(|| format!("member {} is not running", m.name))?;
        child.kill().ok();
        child.wait().context("reaping a killed member")?;
        Ok(())
    }

    /// Sends `signal` to member `i`'s process.
    fn signal(&self, i: usize, signal: rustix::process::Signal) -> anyhow::Result<()> {
        let m = &self.members[i];
        let guard = m.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = guard
            .as_ref()
            .with_context(|| format!("member {} is not running", m.name))?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32).context("a child process has pid 0")?;
        rustix::process::kill_process(pid, signal).with_context(|| format!("signalling {}", m.name))
    }

    /// SIGSTOPs member `i`: its sockets stay open and accept connections, but nothing is
    /// answered, like a host that hangs or vanished without resetting its connections
    /// (unlike [`ProcessCluster::kill`], whose refused connections fail fast).
    pub fn freeze(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, rustix::process::Signal::STOP)
    }

    /// SIGCONTs a member frozen by [`ProcessCluster::freeze`].
    pub fn thaw(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, rustix::process::Signal::CONT)
    }

    /// SIGTERMs member `i` and waits for it to exit; returns its exit status. A member that
    /// does not exit within 30 s is killed and reported as an error.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let name = self.members[i].name.clone();
        let mut child = self.members[i]
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .with_context(|| format!("member {name} is not running"))?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32).context("a child process has pid 0")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .with_context(|| format!("sending SIGTERM to {name}"))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                child.kill().ok();
                child.wait().ok();
                return Err(self.with_logs(anyhow!(
                    "member {name} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts member `i` again from its data dir with the flags it was first started with.
    /// Does not wait: with most members down there is no quorum to wait for. Use
    /// [`ProcessCluster::leader`], [`ProcessCluster::wait_ready`] or a poll.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].removed {
            bail!("member {} was removed from the cluster", self.members[i].name);
        }
        if self.is_running(i) {
            bail!("member {} is still running", self.members[i].name);
        }
        self.spawn(i)
    }

    /// Adds a member named `name` with the MemberAdd RPC, then starts it with
    /// `--initial-cluster-state existing`, and waits until it answers Maintenance Status.
    /// Returns its index.
    pub async fn add_member(&mut self, name: &str) -> anyhow::Result<usize> {
        let client_url = format!("http://127.0.0.1:{}", free_port()?);
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let client = self.client().await;
        let members = poll("MemberAdd", MEMBERSHIP_TIMEOUT, || {
            let mut c = client.clone();
            let peer_url = peer_url.clone();
            async move {
                match c.member_add([peer_url.as_str()], None).await {
                    Ok(resp) => Ok(resp.member_list().to_vec()),
                    // An earlier attempt that timed out may have been applied.
                    Err(e) if e.to_string().contains("already exist") => Ok(c.member_list().await?.members().to_vec()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        })
        .await
        .map_err(|e| self.with_logs(e))?;
        // etcdctl builds ETCD_INITIAL_CLUSTER from this list in the same way.
        if !members.iter().any(|m| m.peer_urls().contains(&peer_url)) {
            bail!(
                "the MemberAdd response's member list lacks the added member {peer_url} \
                 (etcd lists every member after the addition): {:?}",
                members.iter().map(|m| (m.name(), m.peer_urls())).collect::<Vec<_>>()
            );
        }
        let mut initial_cluster = Vec::new();
        for m in &members {
            let is_new = m.peer_urls().contains(&peer_url);
            let m_name = if is_new { name } else { m.name() };
            if m_name.is_empty() {
                bail!("member {:x} has no name yet: cannot build --initial-cluster", m.id());
            }
            for u in m.peer_urls() {
                initial_cluster.push(format!("{m_name}={u}"));
            }
        }
        let member = self.new_member(
            name.to_string(),
            client_url,
            peer_url,
            &initial_cluster.join(","),
            "existing",
        );
        self.members.push(member);
        let i = self.members.len() - 1;
        self.spawn(i)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive()?;
            let err = match self.client_for(i).await.status().await {
                Ok(_) => return Ok(i),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(self.with_logs(anyhow!(
                    "added member {name} did not serve within {START_TIMEOUT:?}: {err}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes member `i` with the MemberRemove RPC (sent through the other running
    /// members). A removed member is expected to exit; it is killed if it has not after 10 s.
    pub async fn remove_member(&mut self, i: usize) -> anyhow::Result<()> {
        let id = self.member_id(i).await?;
        let others: Vec<String> = self
            .running()
            .into_iter()
            .filter(|&j| j != i)
            .map(|j| self.endpoint(j))
            .collect();
        let client = Self::connect(&others).await;
        let mut attempts = 0;
        poll("MemberRemove", MEMBERSHIP_TIMEOUT, || {
            let mut c = client.clone();
            attempts += 1;
            let retried = attempts > 1;
            async move {
                match c.member_remove(id).await {
                    Ok(_) => Ok(()),
                    // An earlier attempt that timed out may have been applied.
                    Err(e) if retried && e.to_string().contains("member not found") => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        })
        .await
        .map_err(|e| self.with_logs(e))?;
        self.members[i].removed = true;
        let deadline = Instant::now() + REMOVED_EXIT_GRACE;
        while self.is_running(i) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(mut child) = self.members[i].child().take() {
            child.kill().ok();
            child.wait().ok();
        }
        Ok(())
    }

    /// The last lines of every member's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            out.push_str(&format!(
                "----- {} ({}), last {} lines -----\n",
                m.name,
                m.log_path.display(),
                tail.len()
            ));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// `err`, followed by the members' log tails.
    fn with_logs(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow!("{err:#}\n\nmember logs:\n{}", self.log_tails())
    }

    fn new_member(
        &self,
        name: String,
        client_url: String,
        peer_url: String,
        initial_cluster: &str,
        initial_state: &'static str,
    ) -> Member {
        let root = self.dir.as_ref().expect("cluster dir").path();
        Member {
            data_dir: root.join(&name),
            log_path: root.join(format!("{name}.log")),
            name,
            client_url,
            peer_url,
            initial_cluster: initial_cluster.to_string(),
            initial_state,
            child: Mutex::new(None),
            removed: false,
        }
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .with_context(|| format!("opening {}", m.log_path.display()))?;
        writeln!(log, "===== harness: starting {} =====", m.name)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&m.client_url)
            .arg("--advertise-client-urls")
            .arg(&m.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-cluster")
            .arg(&m.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(m.initial_state);
        let o = &self.options;
        if let Some(v) = o.heartbeat_interval_ms {
            cmd.arg("--heartbeat-interval").arg(v.to_string());
        }
        if let Some(v) = o.election_timeout_ms {
            cmd.arg("--election-timeout").arg(v.to_string());
        }
        if let Some(v) = o.snapshot_count {
            cmd.arg("--snapshot-count").arg(v.to_string());
        }
        if self.flavor == Flavor::Esfleet {
            let sets_log = o.env.iter().any(|(k, _)| k == "RUST_LOG");
            if !sets_log && std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", DEFAULT_RUST_LOG);
            }
            // Plain text in the log files (and so in failure messages).
            cmd.env("NO_COLOR", "1");
        }
        cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", m.name, self.binary.display()))?;
        *m.child() = Some(child);
        Ok(())
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child().take() {
                child.kill().ok();
                child.wait().ok();
            }
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("{KEEP_ENV}: kept {}", dir.keep().display());
            }
        }
    }
}
