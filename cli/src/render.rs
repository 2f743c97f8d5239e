//! From the Fleet service's answers to what the user sees: pure functions, so tests pin
//! the output with fixed messages.
//!
//! Each list first becomes rows ([`UnitRow`], [`UnitFileRow`], [`MachineRow`],
//! [`MemberRow`]): the JSON output is those rows (full ids and hashes), the tables show
//! some of their fields. Machine ids are shortened to 8 characters and hashes to 7 unless
//! `full`, which keeps every table within 80 columns for usual names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use esfleet_proto::etcdserverpb as etcd;
use esfleet_proto::fleet as pb;
use serde::{Deserialize, Serialize};

use crate::error::CliError;
use crate::table::{render, Cell, Color};

/// How a table is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// The header line.
    pub legend: bool,
    /// Full machine ids and hashes.
    pub full: bool,
    /// ANSI colours (only on a terminal, never with NO_COLOR).
    pub color: bool,
}

/// `1a2b3c4d...` (fleetctl's short machine id), or the whole id.
pub fn short_id(id: &str, full: bool) -> String {
    // By characters: the id comes from the server and need not be ASCII.
    match id.char_indices().nth(8) {
        Some((cut, _)) if !full => format!("{}...", &id[..cut]),
        _ => id.to_string(),
    }
}

/// `1a2b3c4d.../10.88.0.11`: where a unit is, as fleetctl shows it.
pub fn machine_label(id: &str, address: &str, full: bool) -> String {
    if address.is_empty() {
        short_id(id, full)
    } else {
        format!("{}/{address}", short_id(id, full))
    }
}

fn short_hash(hash: &str, full: bool) -> String {
    if full {
        hash.to_string()
    } else {
        hash.chars().take(7).collect()
    }
}

fn active_color(active: &str) -> Option<Color> {
    match active {
        "active" | "launched" | "up" => Some(Color::Green),
        "activating" | "deactivating" | "reloading" | "draining" | "loaded" => Some(Color::Yellow),
        "failed" | "suspect" => Some(Color::Red),
        _ => None,
    }
}

/// Checks `--fields` against the known ones; a typo gets the nearest suggestion.
pub fn check_fields<'a>(given: &'a [String], known: &[&str]) -> Result<Vec<&'a str>, CliError> {
    let mut out = Vec::new();
    for f in given {
        let f = f.trim();
        if f.is_empty() {
            continue;
        }
        if !known.contains(&f) {
            let nearest = known
                .iter()
                .min_by_key(|k| edit_distance(k, &f.to_ascii_lowercase()))
                .copied()
                .unwrap_or_default();
            let hint = if edit_distance(nearest, &f.to_ascii_lowercase()) <= 2 {
                format!("did you mean {nearest:?}? ")
            } else {
                String::new()
            };
            return Err(CliError::Usage(format!(
                "--fields: unknown field {f:?}; {hint}known fields: {}",
                known.join(", ")
            )));
        }
        out.push(f);
    }
    if out.is_empty() {
        return Err(CliError::Usage(format!(
            "--fields is empty; give some of: {}",
            known.join(", ")
        )));
    }
    Ok(out)
}

/// Levenshtein distance (short strings only: field names).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn to_json<T: Serialize>(rows: &T) -> String {
    let mut s = serde_json::to_string_pretty(rows).expect("rows serialize");
    s.push('\n');
    s
}

/// `2024-05-01T10:00:00Z` for a systemd timestamp in µs; empty for 0.
fn timestamp(usec: u64) -> String {
    if usec == 0 {
        return String::new();
    }
    // humantime cannot show years past 9999 (its Display fails, `to_string` would panic);
    // a timestamp that far out is garbage from the server, shown raw.
    const YEAR_10000_SECS: u64 = 253_402_300_800;
    if usec / 1_000_000 >= YEAR_10000_SECS {
        return format!("{usec}µs");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(usec)).to_string()
}

// ---- list-units ----

/// One placement of a unit, as `list-units` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRow {
    pub unit: String,
    pub machine_id: String,
    pub machine_address: String,
    pub machine_hostname: String,
    /// systemd's LoadState / ActiveState / SubState on the machine (empty until reported).
    pub load: String,
    pub active: String,
    pub sub: String,
    /// What the scheduler asked the machine for: `loaded` or `launched`.
    pub desired: String,
    pub hash: String,
    pub generation: u64,
    pub restarts: u32,
    pub since_usec: u64,
    /// Why the agent could not act on the unit.
    pub error: String,
}

pub const UNIT_FIELDS: &[&str] = &[
    "unit",
    "machine",
    "active",
    "sub",
    "load",
    "desired",
    "hash",
    "generation",
    "restarts",
    "since",
    "error",
];

pub fn unit_rows(resp: &pb::ListUnitsResponse) -> Vec<UnitRow> {
    let mut rows: Vec<UnitRow> = resp
        .units
        .iter()
        .map(|u| {
            let p = u.placement.clone().unwrap_or_default();
            UnitRow {
                unit: u.name.clone(),
                machine_id: p.machine_id,
                machine_address: p.machine_address,
                machine_hostname: p.machine_hostname,
                load: p.load,
                active: p.active,
                sub: p.sub,
                desired: p.desired,
                hash: p.hash,
                generation: p.generation,
                restarts: p.n_restarts,
                since_usec: p.since_usec,
                error: p.error,
            }
        })
        .collect();
    // The server sorts already; sorting a sorted list is cheap and keeps the promise here.
    rows.sort_by(|a, b| (&a.unit, &a.machine_id).cmp(&(&b.unit, &b.machine_id)));
    rows
}

/// A table with one column per field (headers are the field names in capitals); `cell`
/// renders one field of one row.
fn field_table<R>(rows: &[R], fields: &[&str], style: Style, cell: impl Fn(&R, &str) -> Cell) -> String {
    let headers: Vec<String> = fields.iter().map(|f| f.to_ascii_uppercase()).collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| fields.iter().map(|f| cell(r, f)).collect())
        .collect();
    render(&headers, &cells, style.legend, style.color)
}

/// `list-units` as a table of `fields` (checked with [`check_fields`]).
pub fn units_table(rows: &[UnitRow], fields: &[&str], style: Style) -> String {
    field_table(rows, fields, style, |r, f| match f {
        "unit" => Cell::plain(&r.unit),
        "machine" => Cell::plain(machine_label(&r.machine_id, &r.machine_address, style.full)),
        "active" => Cell::colored(&r.active, active_color(&r.active)),
        "sub" => Cell::plain(&r.sub),
        "load" => Cell::plain(&r.load),
        "desired" => Cell::plain(&r.desired),
        "hash" => Cell::plain(short_hash(&r.hash, style.full)),
        "generation" => Cell::plain(r.generation.to_string()),
        "restarts" => Cell::plain(r.restarts.to_string()),
        "since" => Cell::plain(timestamp(r.since_usec)),
        "error" => Cell::colored(&r.error, Some(Color::Red)),
        _ => Cell::plain(""),
    })
}

pub fn units_json(rows: &[UnitRow]) -> String {
    to_json(&rows)
}

// ---- list-unit-files ----

/// Where a unit is placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub machine_id: String,
    pub machine_address: String,
}

/// One stored unit, as `list-unit-files` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFileRow {
    pub unit: String,
    pub hash: String,
    /// DSTATE: the desired state.
    pub desired: String,
    /// STATE: what the machines report.
    pub state: String,
    /// TARGET: where it is placed.
    pub targets: Vec<Target>,
    /// Why the scheduler cannot place it.
    pub unplaceable: String,
}

pub const UNIT_FILE_FIELDS: &[&str] = &["unit", "hash", "dstate", "state", "target", "reason"];

pub fn unit_file_rows(resp: &pb::ListUnitFilesResponse) -> Vec<UnitFileRow> {
    let mut rows: Vec<UnitFileRow> = resp
        .units
        .iter()
        .map(|u| UnitFileRow {
            unit: u.name.clone(),
            hash: u.hash.clone(),
            desired: u.desired.clone(),
            state: u.state.clone(),
            targets: u
                .placements
                .iter()
                .map(|p| Target {
                    machine_id: p.machine_id.clone(),
                    machine_address: p.machine_address.clone(),
                })
                .collect(),
            unplaceable: u.unplaceable.clone(),
        })
        .collect();
    rows.sort_by(|a, b| a.unit.cmp(&b.unit));
    rows
}

fn targets_text(targets: &[Target], full: bool) -> String {
    match targets {
        [] => String::new(),
        [t] => machine_label(&t.machine_id, &t.machine_address, full),
        [t, rest @ ..] if !full => format!(
            "{} +{}",
            machine_label(&t.machine_id, &t.machine_address, false),
            rest.len()
        ),
        all => all
            .iter()
            .map(|t| machine_label(&t.machine_id, &t.machine_address, true))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// `list-unit-files` as a table of `fields`; units that cannot be placed are explained
/// below it (unless `reason` is one of the columns).
pub fn unit_files_table(rows: &[UnitFileRow], fields: &[&str], style: Style) -> String {
    let mut out = field_table(rows, fields, style, |r, f| match f {
        "unit" => Cell::plain(&r.unit),
        "hash" => Cell::plain(short_hash(&r.hash, style.full)),
        "dstate" => Cell::plain(&r.desired),
        "state" => Cell::colored(&r.state, active_color(&r.state)),
        "target" if r.targets.is_empty() && !r.unplaceable.is_empty() => Cell::colored("unplaceable", Some(Color::Red)),
        "target" => Cell::plain(targets_text(&r.targets, style.full)),
        "reason" => Cell::plain(&r.unplaceable),
        _ => Cell::plain(""),
    });
    if style.legend && !fields.contains(&"reason") {
        for r in rows.iter().filter(|r| !r.unplaceable.is_empty()) {
            let _ = writeln!(out, "{} cannot be placed: {}", r.unit, r.unplaceable);
        }
    }
    out
}

pub fn unit_files_json(rows: &[UnitFileRow]) -> String {
    to_json(&rows)
}

// ---- list-machines ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRow {
    pub id: String,
    pub address: String,
    pub hostname: String,
    pub zone: String,
    pub rack: String,
    /// Every metadata key (zone and rack included).
    pub metadata: BTreeMap<String, String>,
    pub units: u32,
    /// `up`, `draining`, `drained` or `suspect`.
    pub state: String,
    pub drain_reason: String,
    /// Units still on a draining machine.
    pub drain_remaining: Vec<String>,
    pub agent_version: String,
}

pub fn machine_rows(resp: &pb::ListMachinesResponse) -> Vec<MachineRow> {
    let mut rows: Vec<MachineRow> = resp
        .machines
        .iter()
        .map(|m| {
            let metadata: BTreeMap<String, String> = m.metadata.clone().into_iter().collect();
            MachineRow {
                id: m.id.clone(),
                address: m.address.clone(),
                hostname: m.hostname.clone(),
                zone: metadata.get("zone").cloned().unwrap_or_default(),
                rack: metadata.get("rack").cloned().unwrap_or_default(),
                metadata,
                units: m.unit_count,
                state: m.state.clone(),
                drain_reason: m.drain.as_ref().map(|d| d.reason.clone()).unwrap_or_default(),
                drain_remaining: m.drain.as_ref().map(|d| d.remaining.clone()).unwrap_or_default(),
                agent_version: m.agent_version.clone(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

/// `MACHINE IP ZONE RACK METADATA UNITS STATE`; METADATA holds the keys other than zone
/// and rack.
pub fn machines_table(rows: &[MachineRow], style: Style) -> String {
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            let other: Vec<String> = r
                .metadata
                .iter()
                .filter(|(k, _)| k.as_str() != "zone" && k.as_str() != "rack")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            vec![
                Cell::plain(short_id(&r.id, style.full)),
                Cell::plain(&r.address),
                Cell::plain(&r.zone),
                Cell::plain(&r.rack),
                Cell::plain(other.join(",")),
                Cell::plain(r.units.to_string()),
                Cell::colored(&r.state, active_color(&r.state)),
            ]
        })
        .collect();
    render(
        &["MACHINE", "IP", "ZONE", "RACK", "METADATA", "UNITS", "STATE"],
        &cells,
        style.legend,
        style.color,
    )
}

pub fn machines_json(rows: &[MachineRow]) -> String {
    to_json(&rows)
}

// ---- cluster ----

/// `cluster status` as JSON: the answer, with ids in hex as etcdctl shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster_id: String,
    pub answered_by: String,
    /// Empty when no leader is known.
    pub leader: String,
    pub healthy: bool,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub revision: i64,
    pub scheduler_epoch: u64,
    pub members: Vec<MemberHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealth {
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
    pub leader: bool,
    pub reachable: bool,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub db_size: i64,
    pub error: String,
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

pub fn cluster_view(s: &pb::ClusterStatusResponse) -> ClusterView {
    let mut members: Vec<MemberHealth> = s
        .members
        .iter()
        .map(|m| MemberHealth {
            id: hex(m.id),
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: m.client_urls.clone(),
            learner: m.is_learner,
            leader: m.is_leader,
            reachable: m.reachable,
            raft_term: m.raft_term,
            raft_index: m.raft_index,
            raft_applied_index: m.raft_applied_index,
            db_size: m.db_size,
            error: m.error.clone(),
        })
        .collect();
    members.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    ClusterView {
        cluster_id: hex(s.cluster_id),
        answered_by: hex(s.member_id),
        leader: if s.leader_id == 0 {
            String::new()
        } else {
            hex(s.leader_id)
        },
        healthy: s.healthy,
        raft_term: s.raft_term,
        raft_index: s.raft_index,
        raft_applied_index: s.raft_applied_index,
        revision: s.revision,
        scheduler_epoch: s.scheduler_epoch,
        members,
    }
}

fn bytes(b: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b.max(0) as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `cluster status`: a summary, one line per member, then what unreachable members said.
pub fn cluster_status_text(v: &ClusterView, color: bool) -> String {
    let mut out = String::new();
    let health = if v.healthy {
        crate::table::paint("healthy", Some(Color::Green), color)
    } else {
        crate::table::paint("unhealthy", Some(Color::Red), color)
    };
    let _ = writeln!(out, "cluster {} is {health}", v.cluster_id);
    let leader = match v.members.iter().find(|m| m.id == v.leader) {
        Some(m) => format!("{} ({})", m.id, m.name),
        None if v.leader.is_empty() => "none (an election is under way, or no quorum)".to_string(),
        None => v.leader.clone(),
    };
    let _ = writeln!(out, "leader: {leader}");
    let _ = writeln!(
        out,
        "raft term {}, index {}, applied {}; revision {}; scheduler epoch {}",
        v.raft_term, v.raft_index, v.raft_applied_index, v.revision, v.scheduler_epoch
    );
    out.push('\n');
    let cells: Vec<Vec<Cell>> = v
        .members
        .iter()
        .map(|m| {
            let role = if m.leader {
                "leader"
            } else if m.learner {
                "learner"
            } else {
                "follower"
            };
            let (health, c) = if m.reachable && m.error.is_empty() {
                ("ok", Some(Color::Green))
            } else if m.reachable {
                ("degraded", Some(Color::Yellow))
            } else {
                ("unreachable", Some(Color::Red))
            };
            vec![
                Cell::plain(&m.id),
                Cell::plain(&m.name),
                Cell::plain(m.client_urls.first().cloned().unwrap_or_default()),
                Cell::plain(role),
                Cell::colored(health, c),
                Cell::plain(if m.reachable {
                    m.raft_index.to_string()
                } else {
                    String::new()
                }),
                Cell::plain(if m.reachable { bytes(m.db_size) } else { String::new() }),
            ]
        })
        .collect();
    out.push_str(&render(
        &["MEMBER", "NAME", "CLIENT URL", "ROLE", "HEALTH", "INDEX", "DB"],
        &cells,
        true,
        color,
    ));
    for m in v.members.iter().filter(|m| !m.error.is_empty()) {
        let _ = writeln!(out, "{} ({}): {}", m.name, m.id, m.error);
    }
    out
}

pub fn cluster_json(v: &ClusterView) -> String {
    to_json(v)
}

/// One member, as `cluster member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

pub fn member_rows(members: &[etcd::Member]) -> Vec<MemberRow> {
    let mut rows: Vec<MemberRow> = members
        .iter()
        .map(|m| MemberRow {
            id: hex(m.id),
            name: m.name.clone(),
            peer_urls: m.peer_ur_ls.clone(),
            client_urls: m.client_ur_ls.clone(),
            learner: m.is_learner,
        })
        .collect();
    rows.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    rows
}

pub fn members_table(rows: &[MemberRow], style: Style) -> String {
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|m| {
            vec![
                Cell::plain(&m.id),
                Cell::plain(if m.name.is_empty() { "(not started)" } else { &m.name }),
                Cell::plain(m.peer_urls.join(",")),
                Cell::plain(m.client_urls.join(",")),
                Cell::plain(if m.learner { "learner" } else { "voter" }),
            ]
        })
        .collect();
    render(
        &["MEMBER", "NAME", "PEER URLS", "CLIENT URLS", "ROLE"],
        &cells,
        style.legend,
        style.color,
    )
}

pub fn members_json(rows: &[MemberRow]) -> String {
    to_json(&rows)
}

#[cfg(test)]
mod tests;
