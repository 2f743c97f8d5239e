//! The coordinator's configuration: etcd's flag names, parsed once and validated in one
//! place ([`Flags::validate`]); the rest of the program trusts the resulting [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::types::{cluster_id, member_id};

/// esfleet-coordinator: one member of esfleet's Raft-replicated, etcd v3-compatible store.
#[derive(Parser, Debug, Clone)]
#[command(name = "esfleet-coordinator", version, about, long_about = None)]
pub struct Flags {
    /// This member's name; must appear in --initial-cluster.
    #[arg(long, env = "ESFLEET_NAME", default_value = "default")]
    pub name: String,
    /// Where the member keeps its Raft log and state.
    #[arg(long, env = "ESFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URL to serve clients (etcd's v3 gRPC API) on, e.g. http://127.0.0.1:2379.
    #[arg(long, env = "ESFLEET_LISTEN_CLIENT_URLS", default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Client URL to tell others about (default: the listen URL).
    #[arg(long, env = "ESFLEET_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// URL to serve the other members on, e.g. http://127.0.0.1:2380.
    #[arg(long, env = "ESFLEET_LISTEN_PEER_URLS", default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// Peer URL the other members reach this one at (default: the listen URL).
    #[arg(long, env = "ESFLEET_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Every founding member as name=peer-url, comma-separated.
    #[arg(long, env = "ESFLEET_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to found a cluster, `existing` to join one (after `member add`).
    #[arg(long, env = "ESFLEET_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Raft heartbeat interval, milliseconds.
    #[arg(long, env = "ESFLEET_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Raft election timeout, milliseconds.
    #[arg(long, env = "ESFLEET_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Applied entries between snapshots (after which the log is purged).
    #[arg(long, env = "ESFLEET_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Run the scheduler when this member leads (`--scheduler=false`: serve only the store,
    /// e.g. to use esfleet-coordinator as a plain etcd-compatible store, or to drive agents
    /// with hand-written schedules in tests).
    #[arg(long, env = "ESFLEET_SCHEDULER", default_value_t = true, action = clap::ArgAction::Set)]
    pub scheduler: bool,
    /// Scheduler: how long a machine whose registration disappeared keeps its units before
    /// they are placed elsewhere, milliseconds.
    #[arg(long, env = "ESFLEET_MACHINE_LOSS_MARGIN", default_value_t = 1000)]
    pub machine_loss_margin: u64,
    /// Scheduler: a full pass runs at least this often, milliseconds.
    #[arg(long, env = "ESFLEET_SCHEDULER_RESYNC", default_value_t = 5000)]
    pub scheduler_resync: u64,
    /// Scheduler: a unit that failed this many times on one machine within
    /// --unit-failure-window is moved elsewhere.
    #[arg(long, env = "ESFLEET_UNIT_FAILURE_LIMIT", default_value_t = 5)]
    pub unit_failure_limit: u32,
    /// Scheduler: the window for --unit-failure-limit, seconds.
    #[arg(long, env = "ESFLEET_UNIT_FAILURE_WINDOW", default_value_t = 600)]
    pub unit_failure_window: u64,
    /// `periodic` (keep --auto-compaction-retention of time) or `revision` (keep that many
    /// revisions), as etcd.
    #[arg(long, env = "ESFLEET_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// How much history to keep: a duration (`1h`, `30m`) or a number of hours in periodic
    /// mode, a number of revisions in revision mode; `0` turns auto-compaction off. Unlike
    /// etcd (off by default), esfleet keeps one hour: agents report states all the time, and
    /// an uncompacted store grows without bound.
    #[arg(long, env = "ESFLEET_AUTO_COMPACTION_RETENTION", default_value = "1h")]
    pub auto_compaction_retention: String,
    /// etcd's storage quota: once this member's data on disk exceeds it, it raises the
    /// NOSPACE alarm and the cluster refuses writes that add data until an operator
    /// frees space or raises the quota and disarms it (`etcdctl alarm disarm`). 0: etcd's
    /// default, 2 GiB; negative: no quota.
    #[arg(
        long,
        env = "ESFLEET_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub quota_backend_bytes: i64,
}

/// etcd's default storage quota (`DefaultQuotaBytes`).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_addr: SocketAddr,
    pub advertise_client_urls: Vec<String>,
    pub peer_addr: SocketAddr,
    pub advertise_peer_url: String,
    /// (name, peer URL) of every founding member.
    pub initial_cluster: Vec<(String, String)>,
    pub state: ClusterState,
    pub member_id: u64,
    /// The id of the cluster --initial-cluster describes (a joining member learns the
    /// real one from the leader).
    pub initial_cluster_id: u64,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    /// `None`: this member never schedules (`--scheduler=false`).
    pub scheduler: Option<crate::scheduler::SchedulerConfig>,
    pub auto_compaction: crate::compactor::Retention,
    /// Bytes on disk past which this member raises NOSPACE; `None`: no quota.
    pub quota_backend_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Parses `http://HOST:PORT` into a socket address to listen on.
fn listen_addr(flag: &str, url: &str) -> Result<SocketAddr, ConfigError> {
    if url.contains(',') {
        return err(format!(
            "--{flag} {url:?}: esfleet listens on one URL; give exactly one"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return err(format!(
            "--{flag} {url:?}: must start with http:// (TLS is not supported yet)"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let rest = if rest.starts_with("localhost:") {
        rest.replacen("localhost", "127.0.0.1", 1)
    } else {
        rest.to_string()
    };
    rest.parse().or_else(|_| {
        err(format!(
            "--{flag} {url:?}: expected http://IP:PORT (an IP address, not a host name)"
        ))
    })
}

fn check_url(flag: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim_end_matches('/').to_string();
    crate::api::cluster::validate_peer_url(&url).map_err(|s| ConfigError(format!("--{flag}: {}", s.message())))?;
    Ok(url)
}

impl Flags {
    pub fn validate(self) -> Result<Config, ConfigError> {
        if self.name.is_empty() {
            return err("--name must not be empty");
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.esfleet", self.name)));
        let client_addr = listen_addr("listen-client-urls", &self.listen_client_urls)?;
        let peer_addr = listen_addr("listen-peer-urls", &self.listen_peer_urls)?;
        let advertise_client_urls: Vec<String> = match &self.advertise_client_urls {
            Some(list) => list
                .split(',')
                .map(|u| check_url("advertise-client-urls", u))
                .collect::<Result<_, _>>()?,
            None => vec![check_url("listen-client-urls", &self.listen_client_urls)?],
        };
        let advertise_peer_url = match &self.initial_advertise_peer_urls {
            Some(u) if u.contains(',') => {
                return err("--initial-advertise-peer-urls: esfleet supports one peer URL per member")
            }
            Some(u) => check_url("initial-advertise-peer-urls", u)?,
            None => check_url("listen-peer-urls", &self.listen_peer_urls)?,
        };
        let initial = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, advertise_peer_url));
        let mut initial_cluster = Vec::new();
        for part in initial.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, url)) = part.split_once('=') else {
                return err(format!("--initial-cluster: {part:?} is not name=url"));
            };
            let url = check_url("initial-cluster", url)?;
            if initial_cluster.iter().any(|(n, _): &(String, String)| n == name) {
                return err(format!("--initial-cluster: member name {name:?} appears twice"));
            }
            if initial_cluster.iter().any(|(_, u): &(String, String)| *u == url) {
                return err(format!("--initial-cluster: peer URL {url} appears twice"));
            }
            initial_cluster.push((name.to_string(), url));
        }
        match initial_cluster.iter().find(|(n, _)| *n == self.name) {
            None => {
                return err(format!(
                    "--initial-cluster does not list this member ({}); add {}={}",
                    self.name, self.name, advertise_peer_url
                ))
            }
            Some((_, url)) if *url != advertise_peer_url => {
                return err(format!(
                    "--initial-cluster gives {} the peer URL {url}, but this member advertises {advertise_peer_url}",
                    self.name
                ))
            }
            Some(_) => {}
        }
        let state = match self.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => return err(format!("--initial-cluster-state {other:?}: expected new or existing")),
        };
        if self.heartbeat_interval == 0 {
            return err("--heartbeat-interval must be positive");
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return err(format!(
                "--election-timeout ({} ms) should be at least 5 times --heartbeat-interval ({} ms)",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if self.snapshot_count == 0 {
            return err("--snapshot-count must be positive");
        }
        if self.scheduler_resync == 0 {
            return err("--scheduler-resync must be positive");
        }
        if self.unit_failure_limit == 0 {
            return err("--unit-failure-limit must be at least 1");
        }
        let auto_compaction =
            crate::compactor::Retention::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)
                .map_err(ConfigError)?;
        let scheduler = crate::scheduler::SchedulerConfig {
            loss_margin: Duration::from_millis(self.machine_loss_margin),
            resync: Duration::from_millis(self.scheduler_resync),
            failure_limit: self.unit_failure_limit,
            failure_window: Duration::from_secs(self.unit_failure_window),
            ..Default::default()
        };
        Ok(Config {
            member_id: member_id(&advertise_peer_url),
            initial_cluster_id: cluster_id(&initial_cluster),
            name: self.name,
            data_dir,
            client_addr,
            advertise_client_urls,
            peer_addr,
            advertise_peer_url,
            initial_cluster,
            state,
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            scheduler: self.scheduler.then_some(scheduler),
            auto_compaction,
            quota_backend_bytes: match self.quota_backend_bytes {
                0 => Some(DEFAULT_QUOTA_BYTES),
                n if n < 0 => None,
                n => Some(n as u64),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["esfleet-coordinator"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap().validate()
    }

    #[test]
    fn accepts_an_etcd_style_command_line() {
        let c = flags(&[
            "--name",
            "a",
            "--data-dir",
            "/tmp/x",
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "a=http://127.0.0.1:2380,b=http://127.0.0.1:3380",
        ])
        .unwrap();
        assert_eq!(c.initial_cluster.len(), 2);
        assert_eq!(c.member_id, member_id("http://127.0.0.1:2380"));
        assert_eq!(c.state, ClusterState::New);
    }

    #[test]
    fn names_the_problem() {
        let e = flags(&["--name", "z", "--initial-cluster", "a=http://127.0.0.1:2380"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not list this member (z)"), "{e}");
        let e = flags(&["--listen-client-urls", "https://127.0.0.1:1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://"), "{e}");
        let e = flags(&["--initial-cluster-state", "old"]).unwrap_err().to_string();
        assert!(e.contains("new or existing"), "{e}");
        let e = flags(&["--election-timeout", "100"]).unwrap_err().to_string();
        assert!(e.contains("5 times"), "{e}");
        let e = flags(&[
            "--initial-cluster",
            "default=http://127.0.0.1:2380,default=http://127.0.0.1:2381",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("appears twice"), "{e}");
    }
}
