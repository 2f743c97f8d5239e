//! esfleet-agent: makes a host part of the fleet. Registers the machine on a lease, watches
//! its own schedule, reconciles systemd to it through a [`manager::UnitManager`], reports
//! unit states, and fences its units when it loses the cluster.

pub mod manager;
