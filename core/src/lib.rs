//! esfleet's pure domain. No I/O, no clock, no randomness: the same input gives the same
//! output, so most of esfleet's tests live here.
//!
//! - [`name`]: unit names (systemd's rules) and machine ids.
//! - [`unit`]: unit files and their `[X-Fleet]` section ([`options`]).
//! - [`model`]: the records stored under `/esfleet/`, and [`keys`]: where.
//! - [`schedule`]: `schedule(&ClusterView, &Config) -> Plan`.
//! - [`diff`]: the agent's `diff(desired, actual) -> Vec<Task>`.
//! - [`es`]: Elasticsearch clusters: `cluster.toml`, generated units, rendered config.
//! - [`lease`]: the bound on a "no leader" answer that agents and leader share.

pub mod keys;
pub mod lease;
pub mod model;
pub mod name;
pub mod options;
pub mod schedule;

pub use name::UnitName;
pub mod diff;
pub mod es;
#[cfg(feature = "http")]
pub mod http;
pub mod unit;
