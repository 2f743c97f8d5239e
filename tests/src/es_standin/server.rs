//! The `model` process: one HTTP server holding the [`Model`]. Nodes heartbeat into it and
//! forward their REST requests (header `x-standin-node: <node id>`); tests read
//! `/_standin/history` and `/_standin/state`. Requests without the header are answered as
//! the first cluster's master would.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::api::{es_error, Reply};
use super::http::{self, Request, Response};
use super::model::{Event, Model, ModelConfig, NodeInfo};

/// How often time advances in the model (fault detection, recoveries).
const TICK: Duration = Duration::from_millis(50);
/// The header carrying the forwarding node's id.
pub const NODE_HEADER: &str = "x-standin-node";

#[derive(Clone)]
struct Shared {
    model: Arc<Mutex<Model>>,
    start: Instant,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn with<T>(&self, f: impl FnOnce(&mut Model, u64) -> T) -> T {
        let now = self.now();
        let mut m = self.model.lock().expect("model lock poisoned");
        f(&mut m, now)
    }
}

/// Serves the model on `listener` until `shutdown`.
pub async fn run_model(cfg: ModelConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let shared = Shared {
        model: Arc::new(Mutex::new(Model::new(cfg))),
        start: Instant::now(),
    };
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                shared.with(|m, now| m.apply(Event::Tick, now));
            }
        })
    };
    http::serve(listener, move |req| handle(shared.clone(), req), shutdown).await;
    ticker.abort();
}

fn bad(reason: String) -> Response {
    Response::json(400, &es_error(400, "standin_protocol_exception", &reason))
}

async fn handle(shared: Shared, req: Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/_standin/node/heartbeat") => match serde_json::from_slice::<NodeInfo>(&req.body) {
            Ok(info) => {
                shared.with(|m, now| m.apply(Event::Heartbeat(Box::new(info)), now));
                Response::json(200, &json!({}))
            }
            Err(e) => bad(format!("heartbeat body: {e}")),
        },
        ("POST", "/_standin/node/leave") => match serde_json::from_slice::<Value>(&req.body) {
            Ok(v) if v["node_id"].is_string() => {
                let node_id = v["node_id"].as_str().unwrap_or_default().to_string();
                shared.with(|m, now| m.apply(Event::Leave { node_id }, now));
                Response::json(200, &json!({}))
            }
            _ => bad("leave body must be {\"node_id\": ...}".into()),
        },
        ("POST", "/_standin/violation") => match serde_json::from_slice::<Value>(&req.body) {
            Ok(v) if v["message"].is_string() => {
                let message = v["message"].as_str().unwrap_or_default().to_string();
                shared.with(|m, now| m.apply(Event::Violation { message }, now));
                Response::json(200, &json!({}))
            }
            _ => bad("violation body must be {\"message\": ...}".into()),
        },
        ("GET", "/_standin/history") => shared.with(|m, now| {
            Response::json(
                200,
                &json!({
                    "now_ms": now,
                    "history": m.history,
                    "violations": m.violations,
                    "max_data_nodes_down_at_once": m.max_data_nodes_down_at_once,
                    "max_nodes_down_at_once": m.max_nodes_down_at_once,
                }),
            )
        }),
        ("GET", "/_standin/state") => shared.with(|m, now| {
            let mut v = serde_json::to_value(&*m).unwrap_or(Value::Null);
            v["now_ms"] = json!(now);
            v["config"] = json!(m.cfg);
            Response::json(200, &v)
        }),
        (_, p) if p.starts_with("/_standin") => Response::json(
            404,
            &es_error(
                404,
                "standin_protocol_exception",
                &format!("unknown stand-in endpoint {} {p}", req.method),
            ),
        ),
        _ => {
            let from = req.header(NODE_HEADER).map(String::from);
            let mut reply = shared.with(|m, now| m.rest(&req, from.as_deref(), now));
            loop {
                match reply {
                    Reply::Done(resp) => return resp,
                    Reply::Pending(p) => {
                        tokio::time::sleep(TICK).await;
                        reply = shared.with(|m, now| m.poll(&p, now));
                    }
                }
            }
        }
    }
}
