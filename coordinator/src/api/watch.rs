//! etcd's Watch service. Each stream serves many watchers from this member's applied
//! state: live events come from the state machine's broadcast; a watcher that starts in
//! the past, or falls behind the broadcast, catches up from stored history first.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use esfleet_proto::etcdserverpb::{self as pb, watch_server::Watch};
use esfleet_proto::mvccpb::{event::EventType, Event};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;
use crate::store::mvcc::{KeyRange, KvError, MvccError};
use crate::store::WatchBatch;
use crate::sync::Recover;

/// Most watchers one Watch stream may hold: each costs memory and work on every write,
/// and a client needing more opens more streams (agents and etcdctl use a handful).
pub const MAX_WATCHERS_PER_STREAM: usize = 10_000;

/// Most events read from history per response.
const HISTORY_CHUNK: usize = 1000;
/// How often a watcher that asked for progress notifications gets one (etcd's default).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

pub struct WatchService {
    pub node: Arc<Node>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<pb::WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(128);
        // Subscribe before anything is read, so no applied batch can fall between.
        let live = self.node.store.watch_tx.subscribe();
        let session = Session {
            node: self.node.clone(),
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
        };
        tokio::spawn(session.run(inbound, live));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    range: KeyRange,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The first revision this watcher has not been sent yet.
    next_rev: i64,
}

struct Session {
    node: Arc<Node>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

/// The client went away; the session ends.
struct Gone;

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>, mut live: broadcast::Receiver<Arc<WatchBatch>>) {
        let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
        progress.tick().await;
        loop {
            let step = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.handle(req).await,
                    Ok(None) | Err(_) => Err(Gone),
                },
                batch = live.recv() => match batch {
                    Ok(b) if b.resync => self.catch_up_all().await,
                    Ok(b) => self.dispatch(&b).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "watch stream fell behind; catching up from history");
                        self.catch_up_all().await
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(Gone),
                },
                _ = progress.tick() => self.progress_notify().await,
                _ = self.tx.closed() => Err(Gone),
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, resp: pb::WatchResponse) -> Result<(), Gone> {
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }

    async fn handle(&mut self, req: pb::WatchRequest) -> Result<(), Gone> {
        use pb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.send(pb::WatchResponse {
                        header: Some(self.node.header(0)),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // As etcd 3.4: one response for the whole stream, watch id -1.
                self.send(pb::WatchResponse {
                    header: Some(self.node.header(0)),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Gone> {
        let refuse = |watch_id: i64, reason: String| pb::WatchResponse {
            header: Some(self.node.header(0)),
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        if let Err(s) = super::check_range(&c.key, &c.range_end) {
            return self.send(refuse(-1, s.message().to_string())).await;
        }
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            let why = format!(
                "esfleet: this stream already has {MAX_WATCHERS_PER_STREAM} watchers; cancel some or open another stream"
            );
            return self.send(refuse(c.watch_id, why)).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self
                    .send(refuse(c.watch_id, "etcdserver: duplicate watch ID".into()))
                    .await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let current = self.node.store.mvcc.read().or_recover().revision();
        let next_rev = if c.start_revision > 0 {
            c.start_revision
        } else {
            current + 1
        };
        use pb::watch_create_request::FilterType;
        let w = Watcher {
            range: KeyRange::new(&c.key, &c.range_end),
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            next_rev,
        };
        self.send(pb::WatchResponse {
            header: Some(self.node.header(current)),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.watchers.insert(id, w);
        if next_rev <= current {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Sends one watcher everything from its `next_rev` up to the current revision.
    async fn catch_up(&mut self, id: i64) -> Result<(), Gone> {
        loop {
            let Some(w) = self.watchers.get(&id) else { return Ok(()) };
            let (found, next, current) = {
                let m = self.node.store.mvcc.read().or_recover();
                if w.next_rev > m.revision() {
                    return Ok(());
                }
                match m.history(w.next_rev, &w.range, w.prev_kv, HISTORY_CHUNK) {
                    Ok((events, next)) => (Ok(events), next, m.revision()),
                    Err(e) => (Err(e), 0, m.revision()),
                }
            };
            match found {
                Ok(events) => {
                    let events: Vec<Event> = events.into_iter().map(|(_, e)| e).filter(|e| w.wants(e)).collect();
                    if !events.is_empty() {
                        self.send(pb::WatchResponse {
                            header: Some(self.node.header(current)),
                            watch_id: id,
                            events,
                            ..Default::default()
                        })
                        .await?;
                    }
                    if let Some(w) = self.watchers.get_mut(&id) {
                        w.next_rev = next;
                    }
                }
                Err(MvccError::Kv(KvError::Compacted)) => {
                    let compact = self.node.store.mvcc.read().or_recover().compact_revision();
                    self.watchers.remove(&id);
                    return self
                        .send(pb::WatchResponse {
                            header: Some(self.node.header(current)),
                            watch_id: id,
                            canceled: true,
                            compact_revision: compact,
                            cancel_reason: KvError::Compacted.to_string(),
                            ..Default::default()
                        })
                        .await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read watch history");
                    self.watchers.remove(&id);
                    return self
                        .send(pb::WatchResponse {
                            header: Some(self.node.header(current)),
                            watch_id: id,
                            canceled: true,
                            cancel_reason: format!("esfleet: cannot read history: {e}"),
                            ..Default::default()
                        })
                        .await;
                }
            }
        }
    }

    async fn catch_up_all(&mut self) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    async fn dispatch(&mut self, b: &WatchBatch) -> Result<(), Gone> {
        let mut behind = Vec::new();
        let mut out = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.next_rev > b.revision {
                continue; // already sent (from history) or starts later
            }
            if w.next_rev < b.revision {
                behind.push(*id); // missed something: history has it all
                continue;
            }
            let events: Vec<Event> = b
                .in_range(&w.range)
                .filter(|e| w.wants(e))
                .map(|e| {
                    let mut e = e.clone();
                    if !w.prev_kv {
                        e.prev_kv = None;
                    }
                    e
                })
                .collect();
            w.next_rev = b.revision + 1;
            if !events.is_empty() {
                out.push(pb::WatchResponse {
                    header: Some(self.node.header(b.revision)),
                    watch_id: *id,
                    events,
                    ..Default::default()
                });
            }
        }
        for resp in out {
            self.send(resp).await?;
        }
        for id in behind {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    async fn progress_notify(&mut self) -> Result<(), Gone> {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(pb::WatchResponse {
                header: Some(self.node.header(0)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let key = e.kv.as_ref().map(|kv| kv.key.as_ref()).unwrap_or_default();
        let is_put = e.r#type == EventType::Put as i32;
        self.range.contains(key) && !(is_put && self.no_put) && (is_put || !self.no_delete)
    }
}
