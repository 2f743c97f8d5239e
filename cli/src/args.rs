//! The command line: every verb, flag and its `ESFLEET_*` environment twin, and the help
//! texts (which are the CLI's manual: `esfleet help <verb>`, `esfleet man`).

use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Run systemd units across a cluster of hosts (an esfleet cluster)";

const LONG_ABOUT: &str = "\
Run systemd units across a cluster of hosts.

esfleet talks to the cluster's coordinators (esfleet-coordinator, 3 or 5 members) over gRPC.
Units are systemd unit files with an optional [X-Fleet] section saying where they may run;
the coordinators' scheduler places them on machines, and each machine's esfleet-agent runs
them with systemd.

A unit's life: `submit` stores it (inactive), `load` places it on a machine and loads it
(loaded), `start` starts it (launched); `stop`, `unload` and `destroy` go back. `start`,
`load`, `stop`, `unload` and `destroy` wait until every unit got there, and fail at once,
with the scheduler's reason, when a unit cannot be placed.

Endpoints: --endpoints (or ESFLEET_ENDPOINTS), a comma list of coordinator client URLs;
members are tried in turn, so one dead member or a leader change does not matter.
Every flag has an ESFLEET_* environment twin, shown in each command's --help.

Exit codes: 0 success, 1 the operation failed (the message says why and what to do),
2 usage error (bad flags or arguments).

Colour is used only on a terminal, and never when NO_COLOR is set.";

const AFTER_HELP: &str = "\
Examples:
  esfleet --endpoints http://10.0.0.1:2379,http://10.0.0.2:2379 list-machines
  export ESFLEET_ENDPOINTS=http://10.0.0.1:2379
  esfleet start units/hello.service        submit the file, start it, wait until it runs
  esfleet start 'es-data@'{1..6}.service   start six instances of a submitted template
  esfleet list-units
  esfleet journal -f hello.service
  esfleet machine drain 1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6
  esfleet completions bash > /etc/bash_completion.d/esfleet";

#[derive(Debug, Parser)]
#[command(name = "esfleet", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Coordinator client URLs, comma separated (`host:port` means `http://host:port`).
    #[arg(
        long,
        global = true,
        env = "ESFLEET_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// How long one request to one member may take before the next member is asked.
    #[arg(long, global = true, env = "ESFLEET_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// The CA file to trust when asking an Elasticsearch cluster's nodes over https,
    /// instead of the cluster's `[http] ca_file` (a path on the hosts).
    #[arg(long, global = true, env = "ESFLEET_ES_CA_FILE", value_name = "FILE")]
    pub es_ca_file: Option<std::path::PathBuf>,
    /// The file with `user:password` (yours, mode 0600) for Elasticsearch, instead of the
    /// cluster's `[http] credentials_file`.
    #[arg(long, global = true, env = "ESFLEET_ES_CREDENTIALS_FILE", value_name = "FILE")]
    pub es_credentials_file: Option<std::path::PathBuf>,
}

/// Output format of the list commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON array (full ids and hashes), for programs.
    Json,
}

/// How `start`/`load`/`stop`/`unload`/`destroy` wait.
#[derive(Debug, Clone, Args)]
pub struct Block {
    /// Return once the cluster accepted the change; do not wait for the units.
    #[arg(long, env = "ESFLEET_NO_BLOCK", value_parser = FalseyValueParser::new(), default_value = "false")]
    pub no_block: bool,
    /// Give up waiting after this long (e.g. `90s`, `5m`; `0` waits forever). The desired
    /// state stays as set.
    #[arg(long, env = "ESFLEET_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Options of the table commands.
#[derive(Debug, Clone, Args)]
pub struct Listing {
    /// Leave out the header line.
    #[arg(long, env = "ESFLEET_NO_LEGEND", value_parser = FalseyValueParser::new(), default_value = "false")]
    pub no_legend: bool,
    /// Full machine ids and hashes instead of shortened ones.
    #[arg(short = 'l', long, env = "ESFLEET_FULL", value_parser = FalseyValueParser::new(), default_value = "false")]
    pub full: bool,
    /// Output format.
    #[arg(short = 'o', long, env = "ESFLEET_OUTPUT", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store unit files in the cluster (desired state inactive)
    #[command(
        long_about = "\
Store unit files in the cluster, with desired state `inactive` (nothing runs yet).

Each FILE is checked here first, with the same parser the coordinators use, so a mistake
is reported with file:line before anything is sent. The unit's name is the file's name.
A NAME that is not a file (e.g. `es-data@3.service`) submits an instance of an already
submitted template. Submitting a unit again with the same text does nothing; with
different text it fails unless --replace is given.",
        after_help = "Examples:\n  esfleet submit units/hello.service units/es-data@.service\n  esfleet submit --replace units/hello.service"
    )]
    Submit {
        /// Unit files (or instance names of submitted templates).
        #[arg(required = true, value_name = "FILE|NAME")]
        units: Vec<String>,
        /// Update units whose text changed (running units pick up the new text).
        #[arg(long, env = "ESFLEET_REPLACE", value_parser = FalseyValueParser::new(), default_value = "false")]
        replace: bool,
    },
    /// Place units on machines and load them, without starting them
    #[command(
        long_about = "\
Place units on machines and have systemd load them, without starting them (desired state
`loaded`). FILEs are submitted first. NAMEs may be globs (`es-data@*`, quoted from the
shell); a glob skips templates. Waits until every unit is loaded (see --no-block).",
        after_help = "Examples:\n  esfleet load units/hello.service\n  esfleet load 'es-data@*'"
    )]
    Load(Transition),
    /// Start units (placing them first), and wait until they run
    #[command(
        long_about = "\
Start units (desired state `launched`): the scheduler places each on a machine that
satisfies its [X-Fleet] options, and the machine's agent starts it. FILEs are submitted
first; NAMEs may be globs; an instance of a submitted template (`es-data@4.service`) is
created from it.

Waits until every unit runs, printing `Unit NAME launched on MACHINE/ADDRESS` for each
(a live view on a terminal). If a unit cannot be placed, fails at once with the
scheduler's reason (the unit stays `launched` and starts when it can be placed).",
        after_help = "Examples:\n  esfleet start units/hello.service\n  esfleet start es-master@{1,2,3}.service\n  esfleet start --replace units/hello.service   (update a running unit)\n  esfleet start --no-block 'es-data@*'"
    )]
    Start(Transition),
    /// Stop units (they stay loaded on their machines), and wait
    #[command(
        long_about = "\
Stop units: desired state `loaded`; they stay placed and loaded on their machines.
NAMEs may be globs. Waits until every unit is stopped (see --no-block).",
        after_help = "Examples:\n  esfleet stop hello.service\n  esfleet stop 'es-data@*'"
    )]
    Stop(NamesTransition),
    /// Unload units from their machines (desired state inactive), and wait
    #[command(
        long_about = "\
Unload units: desired state `inactive`; they are stopped and removed from their machines
but stay stored in the cluster (`esfleet start` brings them back). NAMEs may be globs.",
        after_help = "Example:\n  esfleet unload hello.service"
    )]
    Unload(NamesTransition),
    /// Remove units from the cluster (stopped and unloaded first), and wait
    #[command(
        long_about = "\
Remove units from the cluster: they are stopped and unloaded from their machines, then
forgotten. NAMEs may be globs (`es-data@*` also matches the template).",
        after_help = "Example:\n  esfleet destroy hello.service 'es-data@*'"
    )]
    Destroy(NamesTransition),
    /// Stop then start units, and wait until they run again
    #[command(
        long_about = "\
Restart units: stop them, wait until they stopped, then start them and wait until they
run (--no-block skips only the second wait). NAMEs may be globs.",
        after_help = "Example:\n  esfleet restart hello.service"
    )]
    Restart(NamesTransition),
    /// Print a unit's file as stored in the cluster
    #[command(after_help = "Example:\n  esfleet cat hello.service > hello.service")]
    Cat {
        /// The unit's name.
        unit: String,
    },
    /// Show `systemctl status` of a unit, from the machine it runs on
    #[command(after_help = "Example:\n  esfleet status hello.service")]
    Status {
        /// The unit's name.
        unit: String,
        /// For a unit on several machines (Global=true): which machine (default: the first).
        #[arg(long, env = "ESFLEET_MACHINE")]
        machine: Option<String>,
    },
    /// Show a unit's journal, from the machine it runs on
    #[command(after_help = "Examples:\n  esfleet journal hello.service\n  esfleet journal -n 100 -f hello.service")]
    Journal {
        /// The unit's name.
        unit: String,
        /// How many of the last lines to show (0: the agent's default).
        #[arg(short = 'n', long, env = "ESFLEET_LINES", default_value_t = 10)]
        lines: u32,
        /// Keep printing new lines as they come (until Ctrl-C).
        #[arg(short = 'f', long, env = "ESFLEET_FOLLOW", value_parser = FalseyValueParser::new(), default_value = "false")]
        follow: bool,
        /// For a unit on several machines (Global=true): which machine (default: the first).
        #[arg(long, env = "ESFLEET_MACHINE")]
        machine: Option<String>,
    },
    /// List placed units with systemd's live states: UNIT MACHINE ACTIVE SUB
    #[command(
        long_about = "\
List every placed unit with the states systemd reports on its machine, sorted by unit
name then machine. Default columns: UNIT MACHINE ACTIVE SUB.

Fields (--fields): unit, machine, active, sub, load, desired, hash, generation, restarts,
since, error.",
        after_help = "Examples:\n  esfleet list-units\n  esfleet list-units --fields unit,machine,active,restarts --no-legend\n  esfleet list-units -o json | jq '.[] | select(.active != \"active\")'"
    )]
    ListUnits {
        /// Columns to show, comma separated.
        #[arg(
            long,
            env = "ESFLEET_UNITS_FIELDS",
            value_delimiter = ',',
            default_value = "unit,machine,active,sub"
        )]
        fields: Vec<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// List unit files, desired vs current state: UNIT HASH DSTATE STATE TARGET
    #[command(
        long_about = "\
List every unit stored in the cluster, sorted by name: its hash, desired state (DSTATE),
current state from its machines' reports (STATE), and where it is placed (TARGET). Units
that cannot be placed are listed below the table with the scheduler's reason.

Fields (--fields): unit, hash, dstate, state, target, reason.",
        after_help = "Examples:\n  esfleet list-unit-files\n  esfleet list-unit-files --fields unit,dstate,state -o json"
    )]
    ListUnitFiles {
        /// Columns to show, comma separated.
        #[arg(
            long,
            env = "ESFLEET_UNIT_FILES_FIELDS",
            value_delimiter = ',',
            default_value = "unit,hash,dstate,state,target"
        )]
        fields: Vec<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// List machines: MACHINE IP ZONE RACK METADATA UNITS STATE
    #[command(
        long_about = "\
List every machine the cluster knows, sorted by id: its address, zone and rack, other
metadata, how many units are placed on it, and its state: `up`, `draining`, `drained`, or
`suspect` (its agent's registration is gone; its units move after the loss margin).",
        after_help = "Examples:\n  esfleet list-machines\n  esfleet list-machines -l -o json"
    )]
    ListMachines {
        #[command(flatten)]
        listing: Listing,
    },
    /// Drain or undrain a machine
    #[command(subcommand)]
    Machine(MachineCommand),
    /// The coordinator cluster: status and members
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Elasticsearch clusters: apply a cluster.toml, status, rolling restart, scale-down
    #[command(subcommand)]
    Es(EsCommand),
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  esfleet completions bash > /etc/bash_completion.d/esfleet\n  esfleet completions zsh > \"${fpath[1]}/_esfleet\"\n  esfleet completions fish > ~/.config/fish/completions/esfleet.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output
    #[command(after_help = "Example:\n  esfleet man | man -l -")]
    Man,
}

/// A state change on unit files or names.
#[derive(Debug, Clone, Args)]
pub struct Transition {
    /// Unit files (submitted first) or names and globs of submitted units.
    #[arg(required = true, value_name = "FILE|NAME")]
    pub units: Vec<String>,
    /// Update submitted units whose file changed.
    #[arg(long, env = "ESFLEET_REPLACE", value_parser = FalseyValueParser::new(), default_value = "false")]
    pub replace: bool,
    #[command(flatten)]
    pub block: Block,
}

/// A state change on names (and globs) of submitted units.
#[derive(Debug, Clone, Args)]
pub struct NamesTransition {
    /// Names or globs of submitted units.
    #[arg(required = true, value_name = "NAME")]
    pub units: Vec<String>,
    #[command(flatten)]
    pub block: Block,
}

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Move every unit off a machine and place nothing new there; wait until it is empty
    #[command(
        long_about = "\
Drain a machine: the scheduler moves its units elsewhere (one at a time within a group's
MaxUnavailable) and places nothing new there. Shows progress until the machine is empty
(see --no-block). `esfleet machine undrain` gives the machine back.

An Elasticsearch data node on the machine is first excluded from allocation (by node id)
and its shards moved off, before the scheduler is asked to move it; the exclusion is taken
out once the drain is done. Refused when a copy that is the last of its shard cannot move
(stopping the node would turn the cluster red), unless --force.",
        after_help = "Example:\n  esfleet machine drain --reason 'disk replacement' 1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6"
    )]
    Drain {
        /// The machine's id (32 hex characters, see `esfleet list-machines -l`).
        id: String,
        /// Why, for other operators (shown in `list-machines -o json`).
        #[arg(long, env = "ESFLEET_DRAIN_REASON", default_value = "")]
        reason: String,
        #[command(flatten)]
        block: Block,
        /// Drain even when an Elasticsearch data node there holds the last copy of a shard
        /// that cannot move (the cluster goes red when it stops).
        #[arg(long, env = "ESFLEET_FORCE", value_parser = FalseyValueParser::new(), default_value = "false")]
        force: bool,
        /// How long the shards of an Elasticsearch data node may take to move off; `0`
        /// waits forever.
        #[arg(long, env = "ESFLEET_ES_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
        es_timeout: Duration,
        /// How long one HTTP request to Elasticsearch may take before the next node is asked.
        #[arg(long, env = "ESFLEET_ES_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
        es_request_timeout: Duration,
    },
    /// Cancel a drain: the machine takes units again
    #[command(after_help = "Example:\n  esfleet machine undrain 1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6")]
    Undrain {
        /// The machine's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, Raft term and index, and each member's health
    #[command(after_help = "Example:\n  esfleet cluster status")]
    Status {
        /// Output format.
        #[arg(short = 'o', long, env = "ESFLEET_OUTPUT", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// List, add or remove coordinator members
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members: ID NAME PEER URLS CLIENT URLS LEARNER
    List {
        #[command(flatten)]
        listing: Listing,
    },
    /// Add a member by its peer URL; then start it with --initial-cluster-state existing
    #[command(
        after_help = "Example:\n  esfleet cluster member add http://10.0.0.4:2380\n  (then on 10.0.0.4: esfleet-coordinator --initial-cluster-state existing ...)"
    )]
    Add {
        /// The new member's peer URL(s).
        #[arg(required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner (a non-voting member).
        #[arg(long, env = "ESFLEET_LEARNER", value_parser = FalseyValueParser::new(), default_value = "false")]
        learner: bool,
    },
    /// Remove a member by its id (hex, from `esfleet cluster member list`)
    #[command(after_help = "Example:\n  esfleet cluster member remove 8e9e05c52164694d")]
    Remove {
        /// The member's id in hex.
        id: String,
    },
}

/// How the Elasticsearch operations wait.
#[derive(Debug, Clone, Args)]
pub struct EsWaits {
    /// How long each unit stop, start or destroy may take.
    #[arg(long, env = "ESFLEET_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long each wait on Elasticsearch may take (green, a node rejoined, shards moved
    /// off a node); `0` waits forever.
    #[arg(long, env = "ESFLEET_ES_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub es_timeout: Duration,
    /// How long one HTTP request to Elasticsearch may take before the next node is asked.
    #[arg(long, env = "ESFLEET_ES_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub es_request_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum EsCommand {
    /// Define or update a cluster from cluster.toml, submit its templates, start its nodes
    #[command(
        long_about = "\
Define or update an Elasticsearch cluster from a cluster.toml: the file is checked here
first (errors name file:line), `zones` is filled from the machines' `zone` metadata when
the file has none (and is fixed from then on), the definition is stored, the generated
template units are submitted (replacing older ones) and every node up to the counts is
started; waits until they run, as `esfleet start` does.

Counts that go up start new nodes. Counts that go down remove nothing: the nodes are
removed one at a time, gated on the cluster's health, by `esfleet es scale-down`.
Running nodes keep their unit file and configuration until they restart: after a change,
`esfleet es restart` rolls it through one node at a time.",
        after_help = "Example:\n  esfleet es apply logs.toml"
    )]
    Apply {
        /// The cluster definition (TOML).
        file: std::path::PathBuf,
        #[command(flatten)]
        block: Block,
    },
    /// Nodes (unit, node, role, zone, host, state) and Elasticsearch's own health
    #[command(
        long_about = "\
Show a cluster's nodes: unit, node name, role, zone, host and systemd state, and what
Elasticsearch itself says (health, its node list, shard copies per node) when one of the
nodes answers on its HTTP port. Without a cluster name: every cluster.",
        after_help = "Examples:\n  esfleet es status logs\n  esfleet es status"
    )]
    Status {
        /// The cluster's name (default: every cluster).
        cluster: Option<String>,
        /// How long one HTTP request to Elasticsearch may take.
        #[arg(long, env = "ESFLEET_ES_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
        es_request_timeout: Duration,
    },
    /// Rolling restart, one node at a time, never more than one down
    #[command(
        long_about = "\
Restart every node of a cluster, one at a time: set cluster.routing.allocation.enable to
`primaries`, stop the node's unit and wait, start it and wait, wait until the node is back
in _cat/nodes, reset the allocation setting, wait for green; then the next node. Data and
coordinating nodes go first, masters last (the elected master at the very end). A node is
stopped only when every node is in the cluster. A node whose template changed takes the
new unit file while it is stopped.

Refused while an index has no replica (its shards would be unavailable while their node
restarts), unless --force.

Resumable: after an interruption, run it again; it first resets the allocation setting,
starts a node left stopped, and waits for green.",
        after_help = "Example:\n  esfleet es restart logs"
    )]
    Restart {
        /// The cluster's name.
        cluster: String,
        #[command(flatten)]
        waits: EsWaits,
        /// Restart even when an index has no replica (the cluster goes red while the node
        /// holding its shards is down).
        #[arg(long, env = "ESFLEET_FORCE", value_parser = FalseyValueParser::new(), default_value = "false")]
        force: bool,
    },
    /// Remove data or master nodes one at a time, gated on the cluster's health
    #[command(
        long_about = "\
Remove nodes, highest ordinal first, one at a time, until N are left.

--data N: each removal needs a green cluster and more data nodes left than any index's
replicas + 1; the node is excluded from allocation, its shards move off (watched in
_cat/shards), then its unit is stopped and destroyed and the exclusion cleared; then wait
for green. --masters N: the node is excluded from the voting configuration first, never
below a quorum, then stopped and destroyed, then the exclusion is cleared.
Refused with the reason (exit 1) when a rule says no. The stored definition's count goes
down after each removed node.",
        after_help = "Examples:\n  esfleet es scale-down logs --data 3\n  esfleet es scale-down logs --masters 3"
    )]
    ScaleDown {
        /// The cluster's name.
        cluster: String,
        /// Data nodes to keep.
        #[arg(
            long,
            env = "ESFLEET_ES_DATA",
            conflicts_with = "masters",
            required_unless_present = "masters"
        )]
        data: Option<u32>,
        /// Master nodes to keep.
        #[arg(long, env = "ESFLEET_ES_MASTERS")]
        masters: Option<u32>,
        #[command(flatten)]
        waits: EsWaits,
    },
    /// Forget a cluster definition and its templates (once no node of it is submitted)
    #[command(after_help = "Example:\n  esfleet destroy 'logs-*@*.service' && esfleet es delete logs")]
    Delete {
        /// The cluster's name.
        cluster: String,
    },
}

/// `5s`, `2m`, `1h30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e}; write e.g. 30s, 5m or 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag has an `ESFLEET_*` environment twin (the convention).
    #[test]
    fn every_flag_has_an_environment_twin() {
        fn walk(cmd: &clap::Command, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                match arg.get_env() {
                    Some(env) if env.to_string_lossy().starts_with("ESFLEET_") => {}
                    _ => missing.push(format!("{} --{id}", cmd.get_name())),
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), &mut missing);
        assert!(missing.is_empty(), "flags without an ESFLEET_* twin: {missing:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").unwrap_err().contains("write e.g."));
    }
}
