//! esfleet's process-level test harness: real coordinator processes on loopback.
//!
//! [`ProcessCluster`] boots `n` members of either esfleet's `esfleet-coordinator` or
//! Debian's etcd 3.4 ([`Flavor`]) with the same etcd-style command line, each in its own
//! temporary data dir with free loopback ports, and lets a test kill, stop, restart, add
//! and remove members. The same tests run against both flavors, which keeps them honest
//! about etcd's semantics. The integration tests (`tests/it`) and the benchmark programs
//! (`src/bin`) are its users.
//!
//! Every wait is bounded and polls a condition; when one fails, its error carries the tail
//! of each member's log so the failure explains itself.

mod cluster;
mod etcdctl;
mod flavor;
mod poll;
mod ports;

pub use cluster::{Options, ProcessCluster};
pub use flavor::Flavor;
pub use poll::poll;
pub use ports::free_port;
pub mod hosts;
pub use hosts::Hosts;
pub mod engine;
pub mod es_standin;
pub mod realcluster;
