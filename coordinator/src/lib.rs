//! esfleet-coordinator: a Raft-replicated store that speaks etcd's v3 API.
//!
//! See ARCHITECTURE.md for the map. In short: [`store`] persists the Raft log and the
//! MVCC state machine; [`node`] ties Raft, storage and the peer transport together;
//! [`api`] serves etcd's gRPC services on top, [`fleet`] esfleet's own API for the CLI;
//! [`scheduler`] is the leader-only scheduling loop; [`server`] wires listeners and shutdown.

pub mod api;
pub mod authority;
pub mod compactor;
pub mod config;
pub mod fleet;
pub mod lease;
pub mod memo;
pub mod node;
pub mod peer;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod sync;
pub mod types;
