//! The agent's configuration: command-line flags (each with an `ESFLEET_AGENT_*` twin),
//! parsed once and validated in one place ([`Flags::validate`]) into a [`Config`] the rest
//! of the agent trusts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// esfleet-agent: makes this host part of an esfleet cluster.
#[derive(Parser, Debug, Clone)]
#[command(name = "esfleet-agent", version, about, long_about = None)]
pub struct Flags {
    /// Coordinator client URLs, comma-separated (any member will do), e.g.
    /// http://10.0.0.1:2379,http://10.0.0.2:2379.
    #[arg(long, env = "ESFLEET_AGENT_ENDPOINTS", default_value = "http://127.0.0.1:2379")]
    pub endpoints: String,
    /// The file holding this host's machine id (32 lowercase hex characters).
    #[arg(long, env = "ESFLEET_AGENT_MACHINE_ID_FILE", default_value = "/etc/machine-id")]
    pub machine_id_file: PathBuf,
    /// The address other hosts reach this one at (given to units and shown to operators).
    #[arg(long, env = "ESFLEET_AGENT_ADDRESS")]
    pub address: Option<String>,
    /// Machine metadata, comma-separated key=value pairs, e.g. zone=a,rack=r1.
    #[arg(long, env = "ESFLEET_AGENT_METADATA", default_value = "")]
    pub metadata: String,
    /// Where to serve the agent's status/journal service (host:port).
    #[arg(long, env = "ESFLEET_AGENT_LISTEN", default_value = "0.0.0.0:2390")]
    pub listen: SocketAddr,
    /// The endpoint to advertise for the agent service (default: --address with the port of --listen).
    #[arg(long, env = "ESFLEET_AGENT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where unit files are written.
    #[arg(long, env = "ESFLEET_AGENT_UNIT_DIR", default_value = "/run/systemd/system")]
    pub unit_dir: PathBuf,
    /// Where units' config files are written, one directory per unit: <config-root>/<unit>/
    /// (the unit sees it as ESFLEET_CONFIG_DIR). An absolute path.
    #[arg(long, env = "ESFLEET_AGENT_CONFIG_ROOT", default_value = crate::configfiles::DEFAULT_CONFIG_ROOT)]
    pub config_root: PathBuf,
    /// The only directory tree the agent removes data in: when this machine returns after
    /// being lost, the data directories its placements left (Elasticsearch nodes recreated
    /// elsewhere) are removed if they lie inside it. An absolute path; cluster.toml's
    /// data_root should be inside it.
    #[arg(long, env = "ESFLEET_AGENT_DATA_ROOT", default_value = crate::retire::DEFAULT_DATA_ROOT)]
    pub data_root: PathBuf,
    /// At start, raise vm.max_map_count to N if it is lower (Elasticsearch's bootstrap
    /// check wants 262144). A failure is logged, not fatal.
    #[arg(long, env = "ESFLEET_AGENT_SET_MAX_MAP_COUNT")]
    pub set_max_map_count: Option<u64>,
    /// The filesystem whose free space is reported as the machine's disk.
    #[arg(long, env = "ESFLEET_AGENT_DATA_PATH", default_value = "/var/lib")]
    pub data_path: PathBuf,
    /// The machine's lease TTL (e.g. 5s).
    #[arg(long, env = "ESFLEET_AGENT_LEASE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// How often the lease is renewed.
    #[arg(long, env = "ESFLEET_AGENT_KEEPALIVE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
    /// Fence (stop Fence=stop units) this long before the lease could expire.
    #[arg(long, env = "ESFLEET_AGENT_FENCE_MARGIN", default_value = "1s", value_parser = humantime::parse_duration)]
    pub fence_margin: Duration,
    /// How often unit states are re-read from systemd even without change notices.
    #[arg(long, env = "ESFLEET_AGENT_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Stop this machine's units on SIGTERM/SIGINT and release the machine's lease
    /// (default: leave the units running and the lease to a restarted agent, which takes it
    /// over from --state-dir, so an agent restart neither restarts nor moves any unit).
    #[arg(long, env = "ESFLEET_AGENT_STOP_UNITS_ON_EXIT")]
    pub stop_units_on_exit: bool,
    /// Where the agent keeps what a restarted agent needs (the lease id). Under /run: it
    /// survives an agent restart, not a reboot.
    #[arg(long, env = "ESFLEET_AGENT_STATE_DIR", default_value = "/run/esfleet-agent")]
    pub state_dir: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter expression).
    #[arg(long, env = "ESFLEET_AGENT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Drive an in-memory systemd instead of the real one (benchmarks and tests only).
    #[arg(long, hide = true, env = "ESFLEET_AGENT_FAKE_SYSTEMD")]
    pub fake_systemd: bool,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Coordinator client URLs (`http://host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// This host's machine id (validated).
    pub machine_id: String,
    /// The address other hosts reach this one at.
    pub address: String,
    /// The agent service's advertised endpoint (`host:port`).
    pub agent_endpoint: String,
    pub metadata: BTreeMap<String, String>,
    pub unit_dir: PathBuf,
    /// Units' config directories go under it (`--config-root`; absolute, validated).
    pub config_root: PathBuf,
    /// Retired placements' data is removed only inside it (`--data-root`; absolute, validated).
    pub data_root: PathBuf,
    /// Raise `vm.max_map_count` to this at start (`--set-max-map-count`).
    pub set_max_map_count: Option<u64>,
    pub data_path: PathBuf,
    pub timing: Timing,
    pub stop_units_on_exit: bool,
    /// Lease handoff across restarts (`--state-dir`); `None`: always revoke on exit.
    pub state_dir: Option<PathBuf>,
}

/// The agent's clocks (DESIGN.md "Failure semantics").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The lease TTL asked for.
    pub lease_ttl: Duration,
    /// How often the lease is renewed.
    pub keepalive: Duration,
    /// Fence at `lease_ttl - fence_margin` without an acknowledgment.
    pub fence_margin: Duration,
    /// The safety-net re-read of unit states (and reconcile pass).
    pub poll: Duration,
    /// The longest a single coordinator request may take before the next member is tried.
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_ttl: Duration::from_secs(5),
            keepalive: Duration::from_secs(1),
            fence_margin: Duration::from_secs(1),
            poll: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// How long without an acknowledgment before Fence=stop units are stopped.
    pub fn fence_after(&self) -> Duration {
        self.lease_ttl.saturating_sub(self.fence_margin)
    }

    /// The lease TTL in whole seconds, as etcd's API wants it (rounded up).
    pub fn ttl_secs(&self) -> i64 {
        let ms = self.lease_ttl.as_millis() as i64;
        (ms + 999) / 1000
    }

    pub fn validate(self) -> Result<Timing, ConfigError> {
        if self.lease_ttl < Duration::from_secs(1) {
            return err(format!(
                "--lease-ttl {:?} is below etcd's one-second granularity; use at least 1s",
                self.lease_ttl
            ));
        }
        if self.keepalive.is_zero() || self.keepalive * 2 > self.fence_after() {
            return err(format!(
                "--keepalive-interval ({:?}) must be positive and at most half of --lease-ttl minus --fence-margin ({:?}), \
                 or a single lost keepalive fences the units",
                self.keepalive,
                self.fence_after()
            ));
        }
        if self.fence_margin >= self.lease_ttl {
            return err(format!(
                "--fence-margin ({:?}) must be shorter than --lease-ttl ({:?})",
                self.fence_margin, self.lease_ttl
            ));
        }
        if self.poll.is_zero() {
            return err("--poll-interval must be positive");
        }
        Ok(self)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Parses `--endpoints`: `http://host:port` (a bare `host:port` gets `http://`).
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = if part.contains("://") {
            part.to_string()
        } else {
            format!("http://{part}")
        };
        if !url.starts_with("http://") {
            return err(format!(
                "--endpoints: {part:?} must be http://HOST:PORT (TLS is not supported yet)"
            ));
        }
        if url["http://".len()..].trim_end_matches('/').rsplit_once(':').is_none() {
            return err(format!("--endpoints: {part:?} has no port; e.g. http://10.0.0.1:2379"));
        }
        out.push(url.trim_end_matches('/').to_string());
    }
    if out.is_empty() {
        return err("--endpoints is empty; give at least one coordinator URL, e.g. http://10.0.0.1:2379");
    }
    Ok(out)
}

/// Parses `--metadata zone=a,rack=r1`.
pub fn parse_metadata(list: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return err(format!("--metadata: {part:?} is not key=value (e.g. zone=a,rack=r1)"));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return err(format!(
                "--metadata: key {k:?} must be letters, digits, '_', '-' or '.'"
            ));
        }
        if v.chars().any(char::is_control) {
            return err(format!("--metadata: the value of {k} contains a control character"));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return err(format!("--metadata: key {k:?} appears twice"));
        }
    }
    Ok(out)
}

/// Validates `--config-root`: an absolute path, not `/`, without `..`, of plain
/// characters only (it reaches units as `ESFLEET_CONFIG_DIR`, which unit files use in
/// command lines, so nothing that needs quoting). Returns it normalised (no `.`, no
/// trailing or doubled `/`).
pub fn validate_config_root(path: &std::path::Path) -> Result<PathBuf, ConfigError> {
    validate_root(
        "--config-root",
        path,
        crate::configfiles::DEFAULT_CONFIG_ROOT,
        "the path reaches unit command lines as ESFLEET_CONFIG_DIR",
    )
}

/// Validates `--data-root` by the rules of `--config-root`: the agent removes retired data
/// directories only inside it, so it must be a real directory of its own, never `/`.
pub fn validate_data_root(path: &std::path::Path) -> Result<PathBuf, ConfigError> {
    validate_root(
        "--data-root",
        path,
        crate::retire::DEFAULT_DATA_ROOT,
        "cluster.toml's data_root, which must lie inside it, allows no others",
    )
}

/// The rules both roots share; `chars`: why only plain characters.
fn validate_root(flag: &str, path: &std::path::Path, example: &str, chars: &str) -> Result<PathBuf, ConfigError> {
    use std::path::Component;
    let shown = path.display();
    if !path.is_absolute() {
        return err(format!(
            "{flag} {shown:?} is not an absolute path; give one such as {example}"
        ));
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return err(format!("{flag} {shown:?} contains '..'; give the path without it")),
            Component::Prefix(_) => return err(format!("{flag} {shown:?} is not a Unix path")),
            Component::Normal(part) => {
                let ok = part.to_str().is_some_and(|p| {
                    p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@'))
                });
                if !ok {
                    return err(format!(
                        "{flag} {shown:?}: {:?} has characters other than letters, digits, '.', '_', '-', '+', '@' ({chars})",
                        part.to_string_lossy()
                    ));
                }
                out.push(part);
            }
        }
    }
    if out == std::path::Path::new("/") {
        return err(format!(
            "{flag} must not be / itself; give a directory of its own, e.g. {example}"
        ));
    }
    Ok(out)
}

/// The largest value `vm.max_map_count` takes (the kernel stores an int).
pub const MAX_MAP_COUNT_LIMIT: u64 = i32::MAX as u64;

/// Reads and validates a machine id file (systemd's `/etc/machine-id` format).
pub fn read_machine_id(path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read the machine id from {}: {e}; set --machine-id-file (systemd-machine-id-setup creates /etc/machine-id)",
            path.display()
        ))
    })?;
    let id = text.trim().to_string();
    esfleet_core::name::validate_machine_id(&id).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    Ok(id)
}

impl Flags {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let endpoints = parse_endpoints(&self.endpoints)?;
        let machine_id = read_machine_id(&self.machine_id_file)?;
        let metadata = parse_metadata(&self.metadata)?;
        let address = match self.address {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ => {
                if self.listen.ip().is_unspecified() {
                    return err(
                        "--address is required when --listen is a wildcard address: give the IP other hosts reach this one at",
                    );
                }
                self.listen.ip().to_string()
            }
        };
        let agent_endpoint = match self.advertise {
            Some(a) => a,
            None if self.listen.ip().is_unspecified() => {
                let host = if address.contains(':') && !address.starts_with('[') {
                    format!("[{address}]")
                } else {
                    address.clone()
                };
                format!("{host}:{}", self.listen.port())
            }
            None => self.listen.to_string(),
        };
        let timing = Timing {
            lease_ttl: self.lease_ttl,
            keepalive: self.keepalive_interval,
            fence_margin: self.fence_margin,
            poll: self.poll_interval,
            request_timeout: self.keepalive_interval.max(Duration::from_millis(500)) * 2,
        }
        .validate()?;
        let config_root = validate_config_root(&self.config_root)?;
        let data_root = validate_data_root(&self.data_root)?;
        if let Some(n) = self.set_max_map_count {
            if n == 0 || n > MAX_MAP_COUNT_LIMIT {
                return err(format!(
                    "--set-max-map-count {n} must be between 1 and {MAX_MAP_COUNT_LIMIT} \
                     (Elasticsearch's bootstrap check wants at least 262144)"
                ));
            }
        }
        Ok(Config {
            endpoints,
            machine_id,
            address,
            agent_endpoint,
            metadata,
            unit_dir: self.unit_dir,
            config_root,
            data_root,
            set_max_map_count: self.set_max_map_count,
            data_path: self.data_path,
            timing,
            stop_units_on_exit: self.stop_units_on_exit,
            state_dir: Some(self.state_dir),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_endpoints() {
        let m = parse_metadata("zone=a, rack=r1,k=v").unwrap();
        assert_eq!(m["zone"], "a");
        assert_eq!(m["rack"], "r1");
        assert!(parse_metadata("zone").unwrap_err().0.contains("key=value"));
        assert!(parse_metadata("a=1,a=2").unwrap_err().0.contains("twice"));
        assert_eq!(
            parse_endpoints("127.0.0.1:2379,http://h:1/").unwrap(),
            vec!["http://127.0.0.1:2379", "http://h:1"]
        );
        assert!(parse_endpoints("").is_err());
        assert!(parse_endpoints("https://h:1").is_err());
    }

    #[test]
    fn timing_rules() {
        assert!(Timing::default().validate().is_ok());
        assert_eq!(Timing::default().fence_after(), Duration::from_secs(4));
        let t = Timing {
            keepalive: Duration::from_secs(3),
            ..Timing::default()
        };
        assert!(t.validate().unwrap_err().0.contains("--keepalive-interval"));
        let t = Timing {
            fence_margin: Duration::from_secs(5),
            ..Timing::default()
        };
        assert!(t.validate().is_err());
    }

    #[test]
    fn config_root_rules() {
        let ok = |s: &str| validate_config_root(std::path::Path::new(s)).map(|p| p.display().to_string());
        assert_eq!(ok("/etc/esfleet/units").unwrap(), "/etc/esfleet/units");
        assert_eq!(ok("/etc//esfleet/./units/").unwrap(), "/etc/esfleet/units");
        assert!(ok("etc/esfleet").unwrap_err().0.contains("not an absolute path"));
        assert!(ok("/etc/../tmp").unwrap_err().0.contains(".."));
        assert!(ok("/").unwrap_err().0.contains("not be /"));
        assert!(ok("/etc/my units").unwrap_err().0.contains("characters"));
        assert!(ok("/etc/$HOME").unwrap_err().0.contains("characters"));
        let data = |s: &str| validate_data_root(std::path::Path::new(s)).map(|p| p.display().to_string());
        assert_eq!(data("/var/lib//esfleet/").unwrap(), "/var/lib/esfleet");
        assert!(data("/").unwrap_err().0.contains("--data-root must not be /"));
        assert!(data("/var/../lib").unwrap_err().0.contains("--data-root"));
        assert!(data("lib").unwrap_err().0.contains("/var/lib/esfleet"));
    }

    #[test]
    fn flags_validate_the_new_options() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("machine-id");
        std::fs::write(&id, "0123456789abcdef0123456789abcdef\n").unwrap();
        let parse = |extra: &[&str]| {
            let mut args = vec![
                "esfleet-agent",
                "--machine-id-file",
                id.to_str().unwrap(),
                "--listen",
                "127.0.0.1:2390",
            ];
            args.extend_from_slice(extra);
            Flags::try_parse_from(args).unwrap().validate()
        };
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.config_root, PathBuf::from("/etc/esfleet/units"));
        assert_eq!(cfg.set_max_map_count, None);
        assert_eq!(cfg.data_root, PathBuf::from("/var/lib/esfleet"));
        let cfg = parse(&["--data-root", "/srv/data/"]).unwrap();
        assert_eq!(cfg.data_root, PathBuf::from("/srv/data"));
        assert!(parse(&["--data-root", "/srv/../x"])
            .unwrap_err()
            .0
            .contains("--data-root"));
        let cfg = parse(&["--config-root", "/srv/es/conf/", "--set-max-map-count", "262144"]).unwrap();
        assert_eq!(cfg.config_root, PathBuf::from("/srv/es/conf"));
        assert_eq!(cfg.set_max_map_count, Some(262_144));
        assert!(parse(&["--config-root", "relative"])
            .unwrap_err()
            .0
            .contains("--config-root"));
        assert!(parse(&["--set-max-map-count", "0"]).unwrap_err().0.contains("262144"));
        assert!(parse(&["--set-max-map-count", "4294967296"]).is_err());
    }

    #[test]
    fn machine_id_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("machine-id");
        std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(read_machine_id(&p).unwrap(), "0123456789abcdef0123456789abcdef");
        std::fs::write(&p, "../../etc\n").unwrap();
        assert!(read_machine_id(&p).unwrap_err().0.contains("32 lowercase hex"));
    }
}
