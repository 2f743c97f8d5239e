//! esfleet-agent: makes a host part of the fleet. Registers the machine on a lease, watches
//! its own schedule, reconciles systemd to it through a [`manager::UnitManager`], reports
//! unit states, and fences its units when it loses the cluster.

pub mod agent;
pub mod client;
pub mod config;
pub mod configfiles;
pub mod conformance;
pub mod dbus;
pub mod facts;
pub mod fake;
pub mod health;
pub mod inspect;
pub mod jitter;
pub mod manager;
pub mod reconcile;
pub mod report;
pub mod retire;
pub mod session;
pub mod state;
pub mod unitfiles;
