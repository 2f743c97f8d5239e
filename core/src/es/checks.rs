//! Yes/no rules with the operator's reason: may a host run an Elasticsearch node (its
//! bootstrap checks), may the CLI remove a data node or a master now.

use crate::model::HostFacts;

/// Elasticsearch's bootstrap check: mmapped index files need this many map areas.
pub const MIN_MAX_MAP_COUNT: u64 = 262_144;
/// Elasticsearch's bootstrap check on the threads it may create.
pub const MIN_THREADS_MAX: u64 = 4096;

/// Whether a host's facts pass Elasticsearch's bootstrap checks that a unit cannot fix by
/// itself (`vm.max_map_count` and `kernel.threads-max` are host-wide; open files, processes
/// and memlock are raised by the generated unit's limits). A fact of 0 means the agent did
/// not report it, which fails too: placing on an unknown host would only fail later, in
/// Elasticsearch's own log. The error names each failing fact, its value, the minimum and
/// the fix.
pub fn bootstrap_check(facts: &HostFacts) -> Result<(), String> {
    let mut problems = Vec::new();
    match facts.max_map_count {
        0 => problems.push(format!(
            "vm.max_map_count was not reported by the agent (Elasticsearch needs at least {MIN_MAX_MAP_COUNT}); \
             check that the agent can read /proc/sys/vm/max_map_count"
        )),
        n if n < MIN_MAX_MAP_COUNT => problems.push(format!(
            "vm.max_map_count is {n}, Elasticsearch needs at least {MIN_MAX_MAP_COUNT}: run \
             `sysctl -w vm.max_map_count={MIN_MAX_MAP_COUNT}` on the host (and persist it in /etc/sysctl.d/), \
             or start esfleet-agent with --set-max-map-count"
        )),
        _ => {}
    }
    match facts.threads_max {
        0 => problems.push(format!(
            "kernel.threads-max was not reported by the agent (Elasticsearch needs at least {MIN_THREADS_MAX}); \
             check that the agent can read /proc/sys/kernel/threads-max"
        )),
        n if n < MIN_THREADS_MAX => problems.push(format!(
            "kernel.threads-max is {n}, Elasticsearch needs at least {MIN_THREADS_MAX}: run \
             `sysctl -w kernel.threads-max={MIN_THREADS_MAX}` on the host (and persist it in /etc/sysctl.d/)"
        )),
        _ => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// May one more data node be removed now? Only when the cluster is green (every shard
/// copy is assigned, so the node's copies exist elsewhere) and the nodes left can still
/// hold every copy of the most-replicated index apart, with one node to spare:
/// `max_replicas + 1 < data_nodes_after`. `status` is Elasticsearch's health status.
pub fn data_removal_check(status: &str, max_replicas: u32, data_nodes_after: u32) -> Result<(), String> {
    if status != "green" {
        return Err(format!(
            "the cluster is {status}, not green: some shard copies are unassigned, so removing a data node now \
             could lose the last copy of a shard; wait until `esfleet es status` shows green and try again"
        ));
    }
    let copies = u64::from(max_replicas) + 1;
    if copies >= u64::from(data_nodes_after) {
        return Err(format!(
            "removing this data node would leave {data_nodes_after} data node(s), but the most replicated index has \
             {max_replicas} replica(s), i.e. {copies} copies of each shard, which need more than {copies} data nodes \
             (one to spare while a node restarts or moves); keep at least {} data nodes or lower that index's \
             number_of_replicas first",
            copies + 1
        ));
    }
    Ok(())
}

/// May one more master-eligible node be removed now? The caller removes masters one at a
/// time (exclude from voting, wait, stop) and asks before each. `voting_config_size` is the
/// size of the cluster's current voting configuration, `live_voters_after` how many of its
/// members would still be running after this removal, `masters_after` how many master
/// nodes the cluster would have.
pub fn master_removal_check(
    voting_config_size: usize,
    live_voters_after: usize,
    masters_after: u32,
) -> Result<(), String> {
    if masters_after == 0 {
        return Err(
            "a cluster cannot run without master-eligible nodes; keep [master] count at 1 or more (3 for a cluster \
             that survives losing one)"
                .to_string(),
        );
    }
    let quorum = voting_config_size / 2 + 1;
    if live_voters_after < quorum {
        return Err(format!(
            "removing this master would leave {live_voters_after} running member(s) of the voting configuration \
             of {voting_config_size}, below its quorum of {quorum}: the cluster could not elect a master; \
             bring the missing masters back first"
        ));
    }
    if live_voters_after + 1 < voting_config_size {
        return Err(format!(
            "{} member(s) of the voting configuration of {voting_config_size} are already not running; masters \
             are removed one at a time: bring them back (or wait until Elasticsearch has dropped them from the \
             voting configuration) and try again",
            voting_config_size - live_voters_after - 1
        ));
    }
    Ok(())
}
