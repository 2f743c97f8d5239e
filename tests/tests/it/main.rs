//! esfleet's integration tests: real `esfleet-coordinator` processes on loopback, driven
//! through the etcd v3 API (the `etcd-client` crate) and Debian's real `etcdctl`.
//!
//! One test binary, modules in the order a reader should meet them (as openraft's tests):
//! etcdctl compatibility, failover and restart, membership changes, watch resumption,
//! bad input. Each test boots its own cluster on free ports, so tests run in parallel.
//!
//! Build the coordinator first (`cargo build --bins`). `ESFLEET_TEST_FLAVOR=etcd` runs the
//! same tests against Debian's etcd 3.4, which checks that they test etcd's semantics.

mod fixtures;

mod t10_etcdctl;
mod t20_failover;
mod t30_membership;
mod t40_watch_resume;
mod t45_compaction;
mod t50_bad_input;
mod t51_attacks;
mod t52_quota;
mod t60_systemd;
mod t70_scheduler;
mod t80_realcluster;
mod t81_fleet_scenarios;
mod t82_control_plane_outage;
mod t83_zone_loss;
mod t84_partition_fencing;
mod t85_leader_kill_during_start;
mod t86_drain;
mod t87_elasticsearch;
mod t88_real_engine;
mod t89_nspawn_engine;
mod t90_elasticsearch8;
