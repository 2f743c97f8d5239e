//! `esfleet`, the command line for an esfleet cluster (issue 5).
//!
//! - [`args`]: the command line (clap) and its help texts.
//! - [`client`]: the coordinator members, tried in turn.
//! - [`cmd`]: one module per verb: fetch, then render.
//! - [`es`]: Elasticsearch clusters: its REST API and the health-gated operations.
//! - [`render`] and [`table`]: pure functions from the Fleet service's answers to text and
//!   JSON (the snapshot tests call them with fixed messages).
//! - [`unitfiles`]: local validation of unit files before anything is sent.
//! - [`wait`]: waiting for units on the WatchUnitStates stream.

pub mod args;
pub mod client;
pub mod cmd;
pub mod error;
pub mod es;
pub mod render;
pub mod table;
pub mod unitfiles;
pub mod wait;

pub use args::Cli;
pub use cmd::run;
pub use error::CliError;
