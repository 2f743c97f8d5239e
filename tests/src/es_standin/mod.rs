//! **A test double for Elasticsearch, not Elasticsearch.** The Elasticsearch stand-in
//! serves the few REST endpoints esfleet calls (cluster health, settings, nodes, `_cat`,
//! index creation, voting configuration exclusions) over a simplified model of cluster
//! formation, master election and shard allocation with replicas and zone awareness, so
//! that esfleet's real-cluster tests can see a cluster turn yellow or red when copies are
//! lost (issue 8: Elasticsearch cannot be installed on the test machines). It is never
//! shipped; it lives only in the test crate.
//!
//! It is the project's only Elasticsearch fake: the `es_standin` binary serves it to the
//! real-cluster tests, and [`sim::Sim`] drives the same model in one process for the unit
//! tests here and the CLI's operation tests. Where the real engine (`tests/es-engine*`)
//! showed the model wrong, the model was fixed and a test in `model_tests.rs` pins it.
//!
//! Two roles of the `es_standin` binary:
//! - `es_standin model --listen ADDR`: one central process holding the whole simulated
//!   cluster ([`model::Model`]), serving the node protocol and a test-only API under
//!   `/_standin/` (`history`, `state`).
//! - `es_standin node`: what a generated unit runs instead of `bin/elasticsearch`; it reads
//!   `$ES_PATH_CONF/elasticsearch.yml` and `unicast_hosts.txt`, heartbeats the model
//!   (`$STANDIN_MODEL_URL`) and forwards REST requests to it under its own identity.
//!
//! Real Elasticsearch is a distributed system; here the shared state lives in the model
//! process so a test can observe it, and the model decides what each node would see.
//!
//! Test-only API of the model: `GET /_standin/history` (health transitions
//! `[{t_ms, status, nodes, data_nodes, down}]` of the first cluster, `violations`,
//! `max_nodes_down_at_once`, `max_data_nodes_down_at_once`), `GET /_standin/state` (a full
//! dump, including each node's real http/transport ports). Node protocol:
//! `POST /_standin/node/heartbeat` ([`NodeInfo`]), `POST /_standin/node/leave`,
//! `POST /_standin/violation`; REST requests forwarded with header `x-standin-node`.
//! Requests sent to the model directly are answered as the first cluster's master would.
//!
//! Simplified on purpose: no documents, no transport
//! protocol (the port is only bound), no security (a secured real node answers 503 until
//! its security index is ready; the stand-in never does), fault detection after
//! `--fault-detect-ms` of silence (Elasticsearch: about 30 s for a host that vanishes, at
//! once for a process whose connections close), no rebalancing (only moves off excluded nodes), only `exclude.*` filters, requests
//! without a master answer 503 at once instead of after `master_timeout`, and a node is
//! "down" in the history from the moment the model drops it until a node of the same name
//! joins again (a node leaving gracefully with no shard copies and no vote is forgotten:
//! that is a decommission).

pub mod api;
pub mod config;
pub mod http;
pub mod model;
pub mod node;
pub mod server;
pub mod sim;

#[cfg(test)]
mod process_tests;

pub use model::{Event, Model, ModelConfig, NodeInfo};
pub use node::{run_node, NodeOptions};
pub use server::run_model;
