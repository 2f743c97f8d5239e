//! The agent against real in-process coordinators, driving the fake systemd. Ordered like
//! the project's other integration tests: registration first, fencing and watch recovery
//! last.

mod fixtures;
mod t10_register;
mod t20_units;
mod t30_hostile;
mod t40_fence;
mod t50_watch_resume;
mod t60_config_files;
mod t70_retired;
