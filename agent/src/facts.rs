//! Host facts the agent reports in its machine record (DESIGN.md "Unit options": the
//! scheduler places `Resources=` by them): hostname, CPUs, memory, free disk of the data
//! path, `vm.max_map_count`, the open-file limit units get, `kernel.threads-max`.
//!
//! Each fact is best effort: one that cannot be read is 0 (and logged at debug), never a
//! reason not to register.
//!
//! Also host preparation: `--set-max-map-count` raises `vm.max_map_count` at start
//! ([`ensure_max_map_count`]), before the facts are read, so Elasticsearch's bootstrap
//! check passes and the machine record says so.

use std::path::Path;

use esfleet_core::model::{HostFacts, MachineRecord};

/// The host's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else empty).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// Detects every fact; `data_path` is the filesystem whose free space counts as the disk.
pub fn detect(data_path: &Path) -> HostFacts {
    HostFacts {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        memory_bytes: read("/proc/meminfo").and_then(|t| meminfo_total(&t)).unwrap_or(0),
        disk_free_bytes: disk_free(data_path).unwrap_or(0),
        max_map_count: read_u64(MAX_MAP_COUNT_PATH),
        nofile_limit: nofile_limit(),
        threads_max: read_u64("/proc/sys/kernel/threads-max"),
    }
}

/// Whether `new` should replace `old` in the cluster: any fact but the free disk changed
/// (or the hostname), or the free disk moved by more than a tenth (at least 1 GiB). Free
/// disk drifts all the time; writing each drift from every host would load the store for
/// nothing the scheduler decides by.
pub fn worth_reporting(old: &MachineRecord, new: &MachineRecord) -> bool {
    let (a, b) = (&old.facts, &new.facts);
    let same_but_disk = HostFacts {
        disk_free_bytes: b.disk_free_bytes,
        ..a.clone()
    } == *b;
    let drift = a.disk_free_bytes.abs_diff(b.disk_free_bytes);
    old.hostname != new.hostname || !same_but_disk || drift > (a.disk_free_bytes / 10).max(1 << 30)
}

/// `vm.max_map_count`.
pub const MAX_MAP_COUNT_PATH: &str = "/proc/sys/vm/max_map_count";

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not a number")]
    Parse { path: String, text: String },
    #[error("cannot write {value} to {path}: {source} (the agent must run as root, outside a container whose /proc/sys is read-only)")]
    Write {
        path: String,
        value: u64,
        #[source]
        source: std::io::Error,
    },
}

/// What [`raise_sysctl`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// The value was already at least the one asked for.
    Already(u64),
    /// Raised from the first value to the second.
    From(u64, u64),
}

/// Raises the number in the sysctl file `path` to `want` if it is lower; never lowers it.
pub fn raise_sysctl(path: &Path, want: u64) -> Result<Raised, SysctlError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SysctlError::Read { path: shown(), source })?;
    let now: u64 = text.trim().parse().map_err(|_| SysctlError::Parse {
        path: shown(),
        text: text.trim().to_string(),
    })?;
    if now >= want {
        return Ok(Raised::Already(now));
    }
    std::fs::write(path, format!("{want}\n")).map_err(|source| SysctlError::Write {
        path: shown(),
        value: want,
        source,
    })?;
    Ok(Raised::From(now, want))
}

/// `--set-max-map-count`: raises `vm.max_map_count` to `want`, logging what happened. An
/// error is logged, never fatal: the facts then show the old value and the scheduler
/// keeps Elasticsearch off this host, with the reason.
pub fn ensure_max_map_count(want: u64) {
    match raise_sysctl(Path::new(MAX_MAP_COUNT_PATH), want) {
        Ok(Raised::Already(now)) => tracing::info!(now, want, "vm.max_map_count is high enough"),
        Ok(Raised::From(was, now)) => tracing::info!(was, now, "raised vm.max_map_count"),
        Err(e) => tracing::error!(error = %e, "cannot raise vm.max_map_count (--set-max-map-count)"),
    }
}

fn read(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::debug!(path, error = %e, "cannot read host fact");
            None
        }
    }
}

fn read_u64(path: &str) -> u64 {
    read(path).and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// `MemTotal:  16314124 kB` → bytes.
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free bytes available to unprivileged users on the filesystem of `path` (statvfs).
pub fn disk_free(path: &Path) -> Option<u64> {
    match rustix::fs::statvfs(path) {
        Ok(s) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "statvfs failed");
            None
        }
    }
}

/// The open-file limit units get: systemd's `DefaultLimitNOFILE` (from system.conf or its
/// drop-ins, soft limit), else this process's own soft limit (`/proc/self/limits`).
fn nofile_limit() -> u64 {
    let mut found = None;
    let mut files = vec![std::path::PathBuf::from("/etc/systemd/system.conf")];
    if let Ok(dir) = std::fs::read_dir("/etc/systemd/system.conf.d") {
        let mut extra: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        extra.sort();
        files.extend(extra);
    }
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            if let Some(v) = default_limit_nofile(&text) {
                found = Some(v);
            }
        }
    }
    found
        .or_else(|| read("/proc/self/limits").and_then(|t| limits_nofile(&t)))
        .unwrap_or(0)
}

/// The soft value of an uncommented `DefaultLimitNOFILE=soft[:hard]`.
fn default_limit_nofile(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("DefaultLimitNOFILE="))
        .filter_map(|v| {
            let soft = v.split(':').next()?.trim();
            if soft == "infinity" {
                Some(u64::MAX)
            } else {
                soft.parse().ok()
            }
        })
        .next_back()
}

/// `Max open files            1024                 524288               files`.
fn limits_nofile(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(
            meminfo_total("MemTotal:       1000 kB\nMemFree: 1 kB\n"),
            Some(1_024_000)
        );
        assert_eq!(
            default_limit_nofile("#DefaultLimitNOFILE=1\nDefaultLimitNOFILE=1024:524288\n"),
            Some(1024)
        );
        assert_eq!(
            limits_nofile("Max cpu time  unlimited unlimited seconds\nMax open files  1024  4096  files\n"),
            Some(1024)
        );
    }

    #[test]
    fn only_facts_the_scheduler_decides_by_are_worth_a_write() {
        let rec = |max_map_count: u64, disk_free_bytes: u64| MachineRecord {
            id: "m".into(),
            hostname: "h".into(),
            address: String::new(),
            agent_endpoint: String::new(),
            metadata: Default::default(),
            facts: HostFacts {
                max_map_count,
                disk_free_bytes,
                ..HostFacts::default()
            },
            agent_version: String::new(),
        };
        let gib = 1u64 << 30;
        let base = rec(65_530, 100 * gib);
        assert!(!worth_reporting(&base, &base));
        assert!(worth_reporting(&base, &rec(262_144, 100 * gib)), "a sysctl raised");
        assert!(!worth_reporting(&base, &rec(65_530, 95 * gib)), "disk drift");
        assert!(worth_reporting(&base, &rec(65_530, 80 * gib)), "a tenth of the disk");
        // Small disks: at least 1 GiB of change.
        assert!(!worth_reporting(&rec(1, gib), &rec(1, gib / 2)));
        assert!(worth_reporting(&rec(1, 3 * gib), &rec(1, gib)));
        let mut renamed = base.clone();
        renamed.hostname = "h2".into();
        assert!(worth_reporting(&base, &renamed));
    }

    #[test]
    fn detects_this_host() {
        let f = detect(Path::new("/"));
        assert!(f.cpus > 0 && f.memory_bytes > 0 && f.disk_free_bytes > 0);
        assert!(f.nofile_limit > 0);
        // The sysctls come from /proc, as Elasticsearch's bootstrap checks read them.
        let proc = |p: &str| std::fs::read_to_string(p).unwrap().trim().parse::<u64>().unwrap();
        assert_eq!(f.max_map_count, proc("/proc/sys/vm/max_map_count"));
        assert_eq!(f.threads_max, proc("/proc/sys/kernel/threads-max"));
        assert!(f.max_map_count > 0 && f.threads_max > 0);
    }

    #[test]
    fn raises_a_sysctl_never_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("max_map_count");
        std::fs::write(&p, "65530\n").unwrap();
        assert_eq!(raise_sysctl(&p, 262_144).unwrap(), Raised::From(65_530, 262_144));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "262144\n");
        assert_eq!(raise_sysctl(&p, 100_000).unwrap(), Raised::Already(262_144));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "262144\n");
        std::fs::write(&p, "junk").unwrap();
        assert!(matches!(raise_sysctl(&p, 1), Err(SysctlError::Parse { .. })));
        let e = raise_sysctl(&dir.path().join("missing"), 1).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        // Not a sysctl file at all.
        assert!(matches!(raise_sysctl(dir.path(), 5), Err(SysctlError::Read { .. })));
    }
}
