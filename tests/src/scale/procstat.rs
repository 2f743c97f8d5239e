//! Process figures from `/proc`: CPU time, RSS, bytes written, and finding a member's pid by
//! its data dir (the harness does not hand out pids).

use std::path::Path;

use anyhow::Context;

/// USER_HZ on Linux.
const HZ: f64 = 100.0;

/// utime + stime of `pid`, in seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ").context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok((f[11].parse::<u64>()? + f[12].parse::<u64>()?) as f64 / HZ)
}

/// Resident set size of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib / 1024.0)
}

/// Bytes `pid` caused to be written to storage (`write_bytes` of /proc/<pid>/io), if readable.
pub fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// The pid of the process whose command line mentions `data_dir`.
pub fn pid_by_arg(data_dir: &Path) -> Option<u32> {
    let needle = data_dir.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.split('\0').any(|a| a == needle) && !cmd.contains("--agents-child") {
            return Some(pid);
        }
    }
    None
}

/// Total size of the files under `dir`, in bytes.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
