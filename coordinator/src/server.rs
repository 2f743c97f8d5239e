//! Assembles a member: opens storage, starts Raft, the peer and client gRPC servers and
//! the background loops, and shuts them down in order.
//!
//! [`run`] takes bound listeners and a shutdown future (tests bind `127.0.0.1:0`). Shutdown
//! order: stop taking requests, stop the loops, stop Raft, flush storage.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use esfleet_proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use esfleet_proto::fleet::fleet_server::FleetServer;
use esfleet_proto::raft::{internal_request, raft_peer_server::RaftPeerServer, InternalRequest, MemberAttributes};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::api::{self, MAX_GRPC_MESSAGE};
use crate::config::{ClusterState, Config};
use crate::lease::LeaseKeeper;
use crate::node::{MemberChange, Node};
use crate::peer::{PeerClients, PeerNetwork, PeerService, MAX_PEER_MESSAGE};
use crate::store::{self, keys, LogStore, StateMachine};
use crate::sync::Recover;
use crate::types::{PeerNode, Raft};

/// Most concurrent streams (requests) one client connection may have open. etcd sets no
/// limit; a client that needs more opens another connection. (A watch or keepalive stream
/// carries many watchers or leases, and etcd's clients share one connection per endpoint.)
/// The peer port has none: a follower forwards its clients' requests to the leader over
/// one connection.
pub const MAX_CLIENT_STREAMS: u32 = 1_000;

/// Runs one member until `shutdown` completes.
pub async fn run(
    cfg: Config,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = start(cfg, client_listener, peer_listener).await?;
    shutdown.await;
    node.stop().await;
    Ok(())
}

/// A running member, for tests and the binary.
pub struct Running {
    pub node: Arc<Node>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        tracing::info!(member = self.node.name, "shutting down");
        let _ = self.stop.send(true);
        for t in self.tasks {
            // Open watch and keepalive streams would hold a graceful shutdown forever.
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), t).await.is_err() {
                abort.abort();
            }
        }
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::error!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.node.backend.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}

pub async fn start(cfg: Config, client_listener: TcpListener, peer_listener: TcpListener) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let (backend, snapshots) = store::open_data_dir(&cfg.data_dir)?;

    let stored_cluster_id = backend
        .get(&keys::meta("cluster-id"))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    let has_state = backend.get(&keys::meta("vote"))?.is_some() || backend.get(&keys::meta("sm"))?.is_some();
    let cluster_id = match (stored_cluster_id, cfg.state) {
        (Some(id), _) => id,
        (None, ClusterState::New) => {
            let mut b = store::backend::WriteBatch::default();
            b.put(keys::meta("cluster-id"), cfg.initial_cluster_id.to_be_bytes().to_vec());
            backend.write(b)?;
            backend.flush()?;
            cfg.initial_cluster_id
        }
        (None, ClusterState::Existing) => 0,
    };

    let log_store = LogStore::new(backend.clone())?;
    let (sm, shared) = StateMachine::open(backend.clone(), snapshots)?;
    let leases: Vec<(i64, i64)> = shared
        .mvcc
        .read()
        .or_recover()
        .leases()
        .map(|(id, l)| (*id, l.ttl))
        .collect();
    let keeper = Arc::new(LeaseKeeper::new(cfg.election_timeout, leases));
    shared.observe_leases(keeper.clone());

    let election = cfg.election_timeout.as_millis() as u64;
    let raft_config = openraft::Config {
        cluster_name: "esfleet".into(),
        heartbeat_interval: cfg.heartbeat.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 3 / 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
        max_in_snapshot_log_to_keep: 1000,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()?;
    let cluster_id = Arc::new(AtomicU64::new(cluster_id));
    let peers = PeerClients::default();
    let network = PeerNetwork {
        node_cluster_id: cluster_id.clone(),
        clients: peers.clone(),
    };
    let raft = Raft::new(cfg.member_id, Arc::new(raft_config), network, log_store, sm).await?;

    let node = Arc::new(Node::new(
        cfg.member_id,
        cfg.name.clone(),
        cfg.advertise_client_urls.clone(),
        cluster_id,
        raft.clone(),
        shared,
        backend,
        peers,
        keeper.clone(),
        Duration::from_secs(5) + 2 * cfg.election_timeout,
        cfg.election_timeout,
        Some(crate::memo::Memo::new(&cfg.data_dir)),
    ));
    node.quota.store(
        cfg.quota_backend_bytes.unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let peer_service = RaftPeerServer::new(PeerService { node: node.clone() })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
    let peer_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(peer_service)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(peer_listener).map(|c| c.map(nodelay)),
            stopped(stop_rx.clone()),
        );
    tasks.push(tokio::spawn(async move {
        if let Err(e) = peer_server.await {
            tracing::error!(error = %e, "peer server failed");
        }
    }));

    if cfg.state == ClusterState::New && !has_state {
        let members: BTreeMap<u64, PeerNode> = cfg
            .initial_cluster
            .iter()
            .map(|(_, url)| (crate::types::member_id(url), PeerNode { peer_url: url.clone() }))
            .collect();
        if let Err(e) = raft.initialize(members).await {
            // Another founding member got there first and replicated to us: fine.
            tracing::info!(error = %e, "not initializing");
        }
    }

    // Like etcd: serve clients only once this member's name and client URLs are in the
    // replicated member list, so `member list` never shows a started member without them.
    tokio::select! {
        _ = publish_attributes(node.clone(), stop_rx.clone()) => {}
        _ = stopped(stop_rx.clone()) => {}
    }

    macro_rules! client_service {
        ($server:ident, $svc:expr) => {
            $server::new($svc)
                .max_decoding_message_size(MAX_GRPC_MESSAGE)
                .max_encoding_message_size(usize::MAX)
        };
    }
    let client_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(MAX_CLIENT_STREAMS)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(client_service!(KvServer, api::kv::KvService { node: node.clone() }))
        .add_service(client_service!(
            WatchServer,
            api::watch::WatchService { node: node.clone() }
        ))
        .add_service(client_service!(
            LeaseServer,
            api::lease::LeaseService { node: node.clone() }
        ))
        .add_service(client_service!(
            ClusterServer,
            api::cluster::ClusterService { node: node.clone() }
        ))
        .add_service(client_service!(
            MaintenanceServer,
            api::maintenance::MaintenanceService { node: node.clone() }
        ))
        .add_service(client_service!(
            FleetServer,
            crate::fleet::FleetService { node: node.clone() }
        ))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(client_listener)
                .map(|conn| conn.map(nodelay).map(crate::authority::FixAuthority::new)),
            stopped(stop_rx.clone()),
        );
    tasks.push(tokio::spawn(async move {
        if let Err(e) = client_server.await {
            tracing::error!(error = %e, "client server failed");
        }
    }));

    tasks.push(tokio::spawn(keeper.run(node.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(promote_learners(node.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(crate::compactor::run(
        node.clone(),
        cfg.auto_compaction,
        stop_rx.clone(),
    )));
    if let Some(scheduler) = cfg.scheduler.clone() {
        tasks.push(tokio::spawn(crate::scheduler::run(
            node.clone(),
            scheduler,
            stop_rx.clone(),
        )));
    } else {
        tracing::info!("the scheduler is off on this member (--scheduler=false)");
    }

    tracing::info!(
        member = cfg.name,
        id = format!("{:x}", cfg.member_id),
        client = %cfg.client_addr,
        peer = %cfg.peer_addr,
        "esfleet-coordinator serving"
    );
    Ok(Running {
        node,
        stop: stop_tx,
        tasks,
    })
}

/// tonic ignores `tcp_nodelay` for listeners it does not bind itself; without it, Nagle's
/// algorithm holds small responses back ~40 ms.
fn nodelay(conn: tokio::net::TcpStream) -> tokio::net::TcpStream {
    if let Err(e) = conn.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    conn
}

/// Publishes this member's name and client URLs through Raft (so `member list` shows
/// them), retrying until it lands.
async fn publish_attributes(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let attrs = MemberAttributes {
        id: node.id,
        name: node.name.clone(),
        client_urls: node.client_urls.clone(),
    };
    loop {
        if node.store.mvcc.read().or_recover().member(node.id) == Some(&attrs) {
            return;
        }
        let req = InternalRequest {
            request: Some(internal_request::Request::MemberAttributes(attrs.clone())),
        };
        let wait = match node.propose(req).await {
            Ok(_) => Duration::ZERO,
            Err(e) => {
                tracing::debug!(error = %e, "cannot publish member attributes yet");
                Duration::from_millis(500)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// On the leader: makes voters of the learners that `member add` meant as voters, once
/// they have caught up with the log.
async fn promote_learners(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !node.is_leader() {
            continue;
        }
        let ready: Vec<u64> = {
            let m = node.raft.metrics();
            let m = m.borrow();
            let last = m.last_log_index.unwrap_or(0);
            let mvcc = node.store.mvcc.read().or_recover();
            m.membership_config
                .membership()
                .learner_ids()
                .filter(|id| mvcc.wants_promotion(*id))
                .filter(|id| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).copied().flatten())
                        .is_some_and(|matched| matched.index + 100 >= last)
                })
                .collect()
        };
        for id in ready {
            match node.change_members_local(MemberChange::Promote { id }).await {
                Ok(()) => tracing::info!(member = format!("{id:x}"), "learner caught up; promoted to voter"),
                Err(e) => tracing::debug!(member = format!("{id:x}"), error = %e, "promotion deferred"),
            }
        }
    }
}
