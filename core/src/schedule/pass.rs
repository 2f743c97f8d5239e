//! One scheduling pass over a [`ClusterView`].
//!
//! The pass interns everything it looks at into dense indexes (machines, units, metadata
//! keys and values, groups), so the hot loop — "which machine takes this unit?" — is array
//! lookups: load per machine, resources used per machine, and group members per
//! (group, key, value). It runs in phases, each building on the state the previous left:
//!
//! 1. keep: every valid placement stays (globals first, then MachineOf leaders before their
//!    followers, then by name); invalid ones are deleted.
//! 2. replace: an unplaced unit with `Replaces=` takes the machine of a unit it replaces.
//! 3. place: global units on every machine that fits, then every unplaced unit.
//! 4. drain: units on draining machines get a replacement, `MaxUnavailable` per group.
//! 5. entries: every placement's entry is (re)built and written where it changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::globs::{Globs, SetId};
use super::{Action, ClusterView, Config, Plan};
use crate::model::{placement_env, DesiredState, MachineRecord, RetiredRecord, ScheduleEntry, UnitRecord};
use crate::name::UnitName;

pub(super) type Uid = usize;
pub(super) type Mid = usize;

/// How a machine takes part in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MState {
    /// Registered: keeps its units and takes new ones.
    Ready,
    /// Registered with a drain request: keeps its units until they moved, takes nothing new.
    Draining,
    /// Its record disappeared recently: keeps its units, takes nothing new.
    Suspect,
    /// Has placements but is neither registered nor suspect: its units move.
    Lost,
}

/// Resources in the units `Resources=` uses: CPU thousandths and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Res {
    pub cpu: u64,
    pub mem: u64,
    pub disk: u64,
}

impl Res {
    fn plus(self, o: Res) -> Res {
        Res {
            cpu: self.cpu.saturating_add(o.cpu),
            mem: self.mem.saturating_add(o.mem),
            disk: self.disk.saturating_add(o.disk),
        }
    }
    fn minus(self, o: Res) -> Res {
        Res {
            cpu: self.cpu.saturating_sub(o.cpu),
            mem: self.mem.saturating_sub(o.mem),
            disk: self.disk.saturating_sub(o.disk),
        }
    }
    pub fn is_zero(self) -> bool {
        self == Res::default()
    }
}

pub(super) struct Machine<'a> {
    pub id: &'a str,
    pub state: MState,
    pub cap: Res,
    /// Why the machine fails Elasticsearch's bootstrap checks (`None`: it passes).
    pub es_unfit: Option<String>,
    /// Its `zone` metadata: where a data node with a home zone may be placed.
    pub zone: Option<&'a str>,
}

/// One `MachineMetadata=` condition with its values interned (`u32::MAX`: no machine has it).
pub(super) struct Cond {
    pub kid: usize,
    pub negate: bool,
    pub vids: Vec<u32>,
}

pub(super) struct Unit<'a> {
    pub name: &'a UnitName,
    pub rec: &'a UnitRecord,
    /// Should be on a machine: not a template, desired loaded or launched, not the loser of a
    /// Replaces cycle.
    pub wanted: bool,
    pub global: bool,
    pub group: usize,
    /// `DistinctBy=`: (key, max, count slot).
    pub distinct: Vec<(usize, u32, usize)>,
    /// `SpreadBy=`: (key, count slot).
    pub spread: Vec<(usize, usize)>,
    pub meta: Vec<Cond>,
    /// `Conflicts=` and `Replaces=` together: units never sharing a machine with this one.
    pub excl: Option<SetId>,
    pub replaces: Option<SetId>,
    pub start_after: Option<SetId>,
    pub res: Res,
    /// `MachineOf=` units.
    pub leaders: Vec<Uid>,
    /// `MachineID=`: `Some(None)` when no machine has that id.
    pub pin: Option<Option<Mid>>,
    /// A problem with the unit itself that makes it unplaceable (bad glob, MachineOf cycle, …).
    pub bad: Option<String>,
    pub avoid: Vec<Mid>,
    pub depth: u32,
    pub max_unavailable: u32,
    /// `Elasticsearch=`: the node this unit is in its cluster (placed only on machines that
    /// pass the bootstrap checks; its config files are rendered from its placement).
    pub es: Option<(&'a crate::es::ClusterRecord, crate::es::Node)>,
    /// Why an `Elasticsearch=` unit has no cluster node to render (its cluster record is
    /// missing or unreadable, or the name is not one of its nodes): it gets no new
    /// placement, but a running node keeps its placement and files, so a record deleted
    /// or garbled with etcdctl never stops a whole cluster at once.
    pub es_missing: Option<String>,
}

/// A placement as this pass leaves it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Place<'a> {
    pub m: Mid,
    pub gen: u64,
    pub old: Option<&'a ScheduleEntry>,
    /// Counted in the group counts: a unit is counted once, where it will run — the
    /// replacement while a drain moves it, not the old placement.
    pub counted: bool,
}

pub(super) struct Pass<'a> {
    pub view: &'a ClusterView,
    pub machines: Vec<Machine<'a>>,
    pub mid: HashMap<&'a str, Mid>,
    pub units: Vec<Unit<'a>>,
    pub uid: HashMap<&'a str, Uid>,
    /// Metadata keys by key id; `values[kid][vid]` (vid 0: the machine has no such key);
    /// `attr[kid][mid]`: the machine's value id.
    pub keys: Vec<String>,
    pub values: Vec<Vec<String>>,
    pub attr: Vec<Vec<u32>>,
    pub groups: Vec<String>,
    /// Per group: the (key, count slot) pairs its units' DistinctBy/SpreadBy need.
    pub group_slots: Vec<Vec<(usize, usize)>>,
    /// `counts[slot][vid]`: placed members of the slot's group on machines with that value.
    pub counts: Vec<Vec<u32>>,
    pub load: Vec<u32>,
    pub used: Vec<Res>,
    pub on: Vec<Vec<Uid>>,
    pub placed: Vec<Vec<Place<'a>>>,
    pub globs: Globs,
    pub actions: Vec<Action>,
    pub unplaceable: std::collections::BTreeMap<UnitName, String>,
    /// Data directories left on lost machines by the placements deleted there.
    pub retired: Vec<(String, RetiredRecord)>,
    /// Per group: members mid-move (old placement on a draining machine, replacement not yet
    /// active).
    pub unavailable: Vec<u32>,
    cands: Vec<(u64, u32, Mid)>,
}

/// Spread keys beyond this many are ignored when ranking machines (each takes 16 bits).
const MAX_SPREAD_KEYS: usize = 4;

pub(super) fn run(view: &ClusterView, _cfg: &Config) -> Plan {
    let mut pass = Pass::build(view);
    let existing = pass.existing();
    let order = pass.order();
    let to_place = pass.keep(&order, &existing);
    let to_place = pass.take_replaced(&order, to_place);
    pass.place_globals(&order);
    let drains = pass.place(&order, to_place.clone());
    if pass.drain(drains) {
        // A replacement is counted where it goes, not on the draining machine: that may free
        // room a unit could not find a moment ago. Trying again here keeps the pass
        // idempotent (the next pass would otherwise place it).
        let retry: Vec<Uid> = to_place.into_iter().filter(|&u| pass.placed[u].is_empty()).collect();
        for &u in &retry {
            pass.unplaceable.remove(pass.units[u].name);
        }
        pass.place(&order, retry);
    }
    pass.finish()
}

fn attribute_of<'a>(view: &'a ClusterView, id: &'a str, rec: Option<&'a MachineRecord>, key: &str) -> Option<&'a str> {
    if let Some(rec) = rec {
        return rec.attribute(key);
    }
    if key == "host" || key == "machine" {
        return Some(id);
    }
    // A suspect or lost machine has no record: its entries carry the metadata it had when
    // they were written (placement_env), which is what the units on it were placed by.
    let env_key = format!(
        "ESFLEET_{}",
        key.chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            })
            .collect::<String>()
    );
    let env_key = if key == "hostname" {
        "ESFLEET_HOSTNAME".to_string()
    } else {
        env_key
    };
    view.placements
        .get(id)?
        .values()
        .find_map(|e| e.env.get(&env_key).map(String::as_str))
}

impl<'a> Pass<'a> {
    fn build(view: &'a ClusterView) -> Pass<'a> {
        // Machines: registered, suspect, and any machine that still has placements.
        let mut ids: BTreeSet<&'a str> = view.machines.keys().map(String::as_str).collect();
        ids.extend(view.suspect.iter().map(String::as_str));
        ids.extend(view.placements.keys().map(String::as_str));
        let mut machines = Vec::with_capacity(ids.len());
        let mut recs = Vec::with_capacity(ids.len());
        for id in ids {
            let rec = view.machines.get(id);
            let state = if view.suspect.contains(id) {
                MState::Suspect
            } else if rec.is_some() {
                if view.draining.contains(id) {
                    MState::Draining
                } else {
                    MState::Ready
                }
            } else {
                MState::Lost
            };
            let cap = rec.map_or(Res::default(), |r| Res {
                cpu: u64::from(r.facts.cpus) * 1000,
                mem: r.facts.memory_bytes,
                disk: r.facts.disk_free_bytes,
            });
            let es_unfit = rec.and_then(|r| crate::es::bootstrap_check(&r.facts).err());
            let zone = rec.and_then(|r| r.metadata.get("zone")).map(String::as_str);
            machines.push(Machine {
                id,
                state,
                cap,
                es_unfit,
                zone,
            });
            recs.push(rec);
        }
        let mid: HashMap<&str, Mid> = machines.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        let uid: HashMap<&str, Uid> = view.units.keys().enumerate().map(|(i, n)| (n.as_str(), i)).collect();

        // Metadata keys the units ask about, and every machine's value for each.
        let mut key_ids: HashMap<&str, usize> = HashMap::new();
        let mut keys: Vec<String> = Vec::new();
        for rec in view.units.values() {
            let o = &rec.options;
            let used = o
                .machine_metadata
                .iter()
                .map(|c| c.key.as_str())
                .chain(o.distinct_by.iter().map(|d| d.key.as_str()))
                .chain(o.spread_by.iter().map(String::as_str));
            for k in used {
                if !key_ids.contains_key(k) {
                    key_ids.insert(k, keys.len());
                    keys.push(k.to_string());
                }
            }
        }
        let mut values = Vec::with_capacity(keys.len());
        let mut value_ids: Vec<HashMap<String, u32>> = Vec::with_capacity(keys.len());
        let mut attr = Vec::with_capacity(keys.len());
        for key in &keys {
            // Value ids in sorted order, so messages list values sorted by id.
            let mut present: BTreeSet<&str> = BTreeSet::new();
            let mut per_machine = Vec::with_capacity(machines.len());
            for (m, rec) in machines.iter().zip(&recs) {
                let v = attribute_of(view, m.id, *rec, key);
                if let Some(v) = v {
                    present.insert(v);
                }
                per_machine.push(v);
            }
            let mut names = vec![String::new()];
            let mut ids = HashMap::new();
            for v in present {
                ids.insert(v.to_string(), names.len() as u32);
                names.push(v.to_string());
            }
            attr.push(
                per_machine
                    .iter()
                    .map(|v| v.map_or(0, |v| ids[v]))
                    .collect::<Vec<u32>>(),
            );
            values.push(names);
            value_ids.push(ids);
        }

        let mut pass = Pass {
            view,
            load: vec![0; machines.len()],
            used: vec![Res::default(); machines.len()],
            on: vec![Vec::new(); machines.len()],
            machines,
            mid,
            units: Vec::with_capacity(view.units.len()),
            uid,
            keys,
            values,
            attr,
            groups: Vec::new(),
            group_slots: Vec::new(),
            counts: Vec::new(),
            placed: vec![Vec::new(); view.units.len()],
            globs: Globs::default(),
            actions: Vec::new(),
            unplaceable: Default::default(),
            retired: Vec::new(),
            unavailable: Vec::new(),
            cands: Vec::new(),
        };

        let mut group_ids: HashMap<String, usize> = HashMap::new();
        for (name, rec) in &view.units {
            let o = &rec.options;
            let mut bad = None;
            let group_name = if o.group.is_empty() {
                name.prefix().to_string()
            } else {
                o.group.clone()
            };
            let group = *group_ids.entry(group_name.clone()).or_insert_with(|| {
                pass.groups.push(group_name);
                pass.group_slots.push(Vec::new());
                pass.groups.len() - 1
            });
            let global = o.global;
            let slot_of = |pass: &mut Pass, kid: usize| -> usize {
                if let Some(&(_, s)) = pass.group_slots[group].iter().find(|(k, _)| *k == kid) {
                    return s;
                }
                let s = pass.counts.len();
                pass.counts.push(vec![0; pass.values[kid].len()]);
                pass.group_slots[group].push((kid, s));
                s
            };
            let mut distinct = Vec::new();
            let mut spread = Vec::new();
            if !global {
                for d in &o.distinct_by {
                    let kid = key_ids[d.key.as_str()];
                    distinct.push((kid, d.max.max(1), slot_of(&mut pass, kid)));
                }
                for k in &o.spread_by {
                    let kid = key_ids[k.as_str()];
                    spread.push((kid, slot_of(&mut pass, kid)));
                }
            }
            let meta = o
                .machine_metadata
                .iter()
                .map(|c| {
                    let kid = key_ids[c.key.as_str()];
                    Cond {
                        kid,
                        negate: c.negate,
                        vids: c
                            .values
                            .iter()
                            .map(|v| value_ids[kid].get(v).copied().unwrap_or(u32::MAX))
                            .collect(),
                    }
                })
                .collect();
            let mut glob = |option: &str, patterns: &[String], bad: &mut Option<String>| {
                pass.globs.intern(option, patterns).unwrap_or_else(|e| {
                    bad.get_or_insert(e);
                    None
                })
            };
            let conflicts = glob("Conflicts", &o.conflicts, &mut bad);
            let replaces = glob("Replaces", &o.replaces, &mut bad);
            let start_after = glob("StartAfter", &o.start_after, &mut bad);
            let excl = if conflicts.is_some() && replaces.is_some() {
                let both: Vec<String> = o.conflicts.iter().chain(&o.replaces).cloned().collect();
                glob("Conflicts", &both, &mut bad)
            } else {
                conflicts.or(replaces)
            };
            let mut leaders = Vec::new();
            for l in &o.machine_of {
                match pass.uid.get(l.as_str()) {
                    Some(&u) => leaders.push(u),
                    None => {
                        bad.get_or_insert(format!("MachineOf={l}, but no unit {l} is submitted"));
                    }
                }
            }
            let pin = o.machine_id.as_ref().map(|id| match pass.mid.get(id.as_str()) {
                Some(&m) if pass.machines[m].state != MState::Lost => Some(m),
                _ => None,
            });
            let mut es_missing = None;
            let es = match &o.elasticsearch {
                None => None,
                Some(cluster) => match view.es.get(cluster) {
                    None => {
                        es_missing = Some(format!(
                            "Elasticsearch={cluster}, but no Elasticsearch cluster {cluster} is defined (esfleet es apply)"
                        ));
                        None
                    }
                    Some(rec) => match crate::es::node_of(&rec.spec, name) {
                        Some(node) => Some((rec, node)),
                        None if name.is_template() => None,
                        None => {
                            es_missing = Some(format!(
                                "Elasticsearch={cluster}, but {name} is not one of the cluster's nodes \
                                 (esfleet es apply creates them)"
                            ));
                            None
                        }
                    },
                },
            };
            let r = o.resources;
            pass.units.push(Unit {
                name,
                rec,
                wanted: !name.is_template() && rec.desired != DesiredState::Inactive,
                global,
                group,
                distinct,
                spread,
                meta,
                excl,
                replaces,
                start_after,
                res: Res {
                    cpu: r.cpu_millis,
                    mem: r.memory_bytes,
                    disk: r.disk_bytes,
                },
                leaders,
                pin,
                bad,
                avoid: Vec::new(),
                depth: 0,
                max_unavailable: o.max_unavailable.max(1),
                es,
                es_missing,
            });
        }
        pass.unavailable = vec![0; pass.groups.len()];
        pass.group_distinct();
        for (unit, machine) in &view.avoid {
            if let (Some(&u), Some(&m)) = (pass.uid.get(unit.as_str()), pass.mid.get(machine.as_str())) {
                pass.units[u].avoid.push(m);
            }
        }
        pass.machine_of_depths();
        pass.replace_cycles();
        pass
    }

    /// DistinctBy is a rule about the group, so every member obeys the strictest limit any
    /// member states: otherwise a member without the option could join a host that a member
    /// with `DistinctBy=host` already fills.
    fn group_distinct(&mut self) {
        let mut rules: Vec<Vec<(usize, u32, usize)>> = vec![Vec::new(); self.groups.len()];
        for unit in self.units.iter().filter(|u| !u.global) {
            let rule = &mut rules[unit.group];
            for &(kid, max, slot) in &unit.distinct {
                match rule.iter_mut().find(|(k, _, _)| *k == kid) {
                    Some(r) => r.1 = r.1.min(max),
                    None => rule.push((kid, max, slot)),
                }
            }
        }
        for rule in &mut rules {
            rule.sort_unstable();
        }
        for unit in self.units.iter_mut().filter(|u| !u.global) {
            unit.distinct.clone_from(&rules[unit.group]);
        }
    }

    /// Orders MachineOf leaders before followers; a unit in a MachineOf cycle never schedules.
    fn machine_of_depths(&mut self) {
        // 0: not visited, 1: on the stack, 2: done.
        let mut mark = vec![0u8; self.units.len()];
        for start in 0..self.units.len() {
            if mark[start] != 0 || self.units[start].leaders.is_empty() {
                continue;
            }
            let mut stack: Vec<(Uid, usize)> = vec![(start, 0)];
            mark[start] = 1;
            while let Some(&mut (u, ref mut next)) = stack.last_mut() {
                if let Some(&l) = self.units[u].leaders.get(*next) {
                    *next += 1;
                    match mark[l] {
                        0 => {
                            mark[l] = 1;
                            stack.push((l, 0));
                        }
                        1 => {
                            // A cycle: the stack from `l` up to `u`.
                            let from = stack.iter().position(|&(x, _)| x == l).unwrap_or(0);
                            let cycle: Vec<Uid> = stack[from..].iter().map(|&(x, _)| x).collect();
                            let mut path: Vec<&str> = cycle.iter().map(|&x| self.units[x].name.as_str()).collect();
                            path.push(self.units[l].name.as_str());
                            let msg = format!(
                                "MachineOf cycle {}: units that must follow each other never schedule; remove one MachineOf=",
                                path.join(" → ")
                            );
                            for x in cycle {
                                self.units[x].bad.get_or_insert(msg.clone());
                            }
                        }
                        _ => {}
                    }
                } else {
                    let depth = self.units[u]
                        .leaders
                        .iter()
                        .map(|&l| self.units[l].depth + 1)
                        .max()
                        .unwrap_or(0);
                    self.units[u].depth = depth;
                    mark[u] = 2;
                    stack.pop();
                }
            }
        }
    }

    /// Units that replace each other in a cycle: only one of them is wanted — the first (by
    /// name) that is placed, else the first by name.
    fn replace_cycles(&mut self) {
        let replacers: Vec<Uid> = (0..self.units.len())
            .filter(|&u| self.units[u].wanted && self.units[u].replaces.is_some())
            .collect();
        if replacers.is_empty() {
            return;
        }
        let mut edges: HashMap<Uid, Vec<Uid>> = HashMap::new();
        for &u in &replacers {
            let set = self.units[u].replaces.unwrap_or_default();
            let targets = replacers
                .iter()
                .copied()
                .filter(|&v| v != u && self.globs.is_match(set, self.units[v].name.as_str()))
                .collect();
            edges.insert(u, targets);
        }
        let reach = |from: Uid| -> BTreeSet<Uid> {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from];
            while let Some(x) = todo.pop() {
                for &y in &edges[&x] {
                    if seen.insert(y) {
                        todo.push(y);
                    }
                }
            }
            seen
        };
        let reaches: HashMap<Uid, BTreeSet<Uid>> = replacers.iter().map(|&u| (u, reach(u))).collect();
        let mut done = BTreeSet::new();
        for &u in &replacers {
            if done.contains(&u) || !reaches[&u].contains(&u) {
                continue;
            }
            let cycle: Vec<Uid> = replacers
                .iter()
                .copied()
                .filter(|v| reaches[&u].contains(v) && reaches[v].contains(&u))
                .collect();
            let placed = |v: Uid| {
                self.view.placements.iter().any(|(m, units)| {
                    units.contains_key(self.units[v].name)
                        && self
                            .mid
                            .get(m.as_str())
                            .is_some_and(|&m| self.machines[m].state != MState::Lost)
                })
            };
            let winner = cycle.iter().copied().find(|&v| placed(v)).unwrap_or(cycle[0]);
            let names: Vec<&str> = cycle.iter().map(|&v| self.units[v].name.as_str()).collect();
            for &v in &cycle {
                done.insert(v);
                if v != winner {
                    self.units[v].wanted = false;
                    let msg = format!(
                        "Replaces cycle ({}): only one of them runs, and that is {}",
                        names.join(", "),
                        self.units[winner].name
                    );
                    self.unplaceable.insert(self.units[v].name.clone(), msg);
                }
            }
        }
    }

    /// Current placements per unit; entries of units without a record are deleted here.
    fn existing(&mut self) -> Vec<Vec<(Mid, &'a ScheduleEntry)>> {
        let mut out = vec![Vec::new(); self.units.len()];
        for (machine, units) in &self.view.placements {
            let m = self.mid[machine.as_str()];
            for (name, entry) in units {
                match self.uid.get(name.as_str()) {
                    Some(&u) => out[u].push((m, entry)),
                    None => self.delete(m, name),
                }
            }
        }
        out
    }

    /// Wanted units in processing order: globals, then by MachineOf depth, then by name.
    fn order(&self) -> Vec<Uid> {
        let mut order: Vec<Uid> = (0..self.units.len()).filter(|&u| self.units[u].wanted).collect();
        order.sort_by_key(|&u| (!self.units[u].global, self.units[u].depth, u));
        order
    }

    pub(super) fn delete(&mut self, m: Mid, unit: &UnitName) {
        if self.machines[m].state == MState::Lost {
            self.retire(m, unit);
        }
        self.actions.push(Action::Delete {
            machine: self.machines[m].id.to_string(),
            unit: unit.clone(),
        });
    }

    /// A placement of an Elasticsearch node deleted from a lost machine: record the data
    /// directory it used there, so the machine's agent removes it when the machine returns.
    /// Only for a unit still wanted (it is placed anew, on an empty directory of a new
    /// generation): a unit unloaded or destroyed while its machine was away keeps its data,
    /// as an unload on a live machine does.
    fn retire(&mut self, m: Mid, unit: &UnitName) {
        let Some(&u) = self.uid.get(unit.as_str()) else { return };
        let Some((rec, node)) = self.units[u].es.as_ref().filter(|_| self.units[u].wanted) else {
            return;
        };
        let machine = self.machines[m].id;
        let Some(entry) = self.view.placements.get(machine).and_then(|p| p.get(unit)) else {
            return;
        };
        self.retired.push((
            machine.to_string(),
            RetiredRecord {
                unit: unit.clone(),
                generation: entry.generation,
                paths: vec![crate::es::data_dir(&rec.spec, &node.name, entry.generation)],
                cluster: rec.spec.name.clone(),
                released: false,
            },
        ));
    }

    fn occupy(&mut self, u: Uid, m: Mid, counted: bool) {
        self.load[m] += 1;
        self.used[m] = self.used[m].plus(self.units[u].res);
        self.on[m].push(u);
        if counted {
            self.count(u, m, true);
        }
    }

    fn vacate(&mut self, u: Uid, m: Mid, counted: bool) {
        self.load[m] -= 1;
        self.used[m] = self.used[m].minus(self.units[u].res);
        if let Some(i) = self.on[m].iter().position(|&v| v == u) {
            self.on[m].swap_remove(i);
        }
        if counted {
            self.count(u, m, false);
        }
    }

    fn count(&mut self, u: Uid, m: Mid, add: bool) {
        let unit = &self.units[u];
        if unit.global {
            return;
        }
        for &(kid, slot) in &self.group_slots[unit.group] {
            let c = &mut self.counts[slot][self.attr[kid][m] as usize];
            if add {
                *c += 1;
            } else {
                *c -= 1;
            }
        }
    }

    fn add_place(&mut self, u: Uid, m: Mid) {
        self.occupy(u, m, true);
        let gen = self.view.revision;
        self.placed[u].push(Place {
            m,
            gen,
            old: None,
            counted: true,
        });
    }

    pub(super) fn meta_ok(&self, u: Uid, m: Mid) -> bool {
        self.units[u].meta.iter().all(|c| {
            let v = self.attr[c.kid][m];
            let hit = v != 0 && c.vids.contains(&v);
            hit != c.negate
        })
    }

    /// MachineID, MachineMetadata and the avoid list: what does not change during a pass.
    pub(super) fn static_ok(&self, u: Uid, m: Mid) -> bool {
        let unit = &self.units[u];
        match unit.pin {
            Some(Some(p)) if p != m => return false,
            Some(None) => return false,
            _ => {}
        }
        self.meta_ok(u, m) && !unit.avoid.contains(&m)
    }

    pub(super) fn distinct_ok(&self, u: Uid, m: Mid) -> bool {
        self.units[u]
            .distinct
            .iter()
            .all(|&(kid, max, slot)| self.counts[slot][self.attr[kid][m] as usize] < max)
    }

    /// Host checks a unit needs of a machine it is newly placed on (a running unit is never
    /// moved for them: a fact read wrongly once must not move an Elasticsearch node).
    pub(super) fn host_ok(&self, u: Uid, m: Mid) -> bool {
        let unit = &self.units[u];
        unit.rec.options.elasticsearch.is_none()
            || (unit.es_missing.is_none() && self.machines[m].es_unfit.is_none() && self.home_zone_ok(u, m))
    }

    /// An Elasticsearch data node's home zone ([`crate::es::home_zone`]), if it has one.
    pub(super) fn home_zone(&self, u: Uid) -> Option<&'a str> {
        let (rec, node) = self.units[u].es.as_ref()?;
        crate::es::home_zone(&rec.spec, node)
    }

    /// `m` is in the unit's home zone, or the unit has none.
    pub(super) fn home_zone_ok(&self, u: Uid, m: Mid) -> bool {
        self.home_zone(u).is_none_or(|z| self.machines[m].zone == Some(z))
    }

    pub(super) fn fits(&self, u: Uid, m: Mid) -> bool {
        let req = self.units[u].res;
        if req.is_zero() {
            return true;
        }
        let used = self.used[m];
        let cap = self.machines[m].cap;
        (req.cpu == 0 || used.cpu.saturating_add(req.cpu) <= cap.cpu)
            && (req.mem == 0 || used.mem.saturating_add(req.mem) <= cap.mem)
            && (req.disk == 0 || used.disk.saturating_add(req.disk) <= cap.disk)
    }

    /// The first unit on `m` that `u` conflicts with (either side's Conflicts/Replaces).
    pub(super) fn conflict_on(&mut self, u: Uid, m: Mid) -> Option<Uid> {
        let mine = self.units[u].excl;
        for i in 0..self.on[m].len() {
            let v = self.on[m][i];
            if v == u {
                continue;
            }
            if let Some(set) = mine {
                if self.globs.matches(set, v, self.units[v].name.as_str()) {
                    return Some(v);
                }
            }
            if let Some(set) = self.units[v].excl {
                if self.globs.matches(set, u, self.units[u].name.as_str()) {
                    return Some(v);
                }
            }
        }
        None
    }

    /// Is `m` where every MachineOf leader of `u` is?
    fn leaders_ok(&self, u: Uid, m: Mid) -> bool {
        self.units[u]
            .leaders
            .iter()
            .all(|&l| self.placed[l].iter().any(|p| p.m == m))
    }

    /// Where a unit runs (or will, once a drain's replacement is up).
    pub(super) fn primary(&self, u: Uid) -> Option<Mid> {
        let places = &self.placed[u];
        places.iter().find(|p| p.counted).or(places.first()).map(|p| p.m)
    }

    /// Phase 1: keeps every valid placement, deletes the rest. Returns the wanted units that
    /// need a machine; units that only sit on a draining machine are kept and marked.
    fn keep(&mut self, order: &[Uid], existing: &[Vec<(Mid, &'a ScheduleEntry)>]) -> Vec<Uid> {
        // Everything placed that should not be: templates, inactive units, Replaces losers.
        for (u, places) in existing.iter().enumerate() {
            if !self.units[u].wanted {
                for &(m, _) in places {
                    self.delete(m, self.units[u].name);
                }
            }
        }
        let mut to_place = Vec::new();
        for &u in order {
            let mut places = existing[u].clone();
            places.sort_by_key(|&(m, e)| (e.generation, m));
            if self.units[u].global {
                for (m, e) in places {
                    let keep = match self.machines[m].state {
                        MState::Suspect => true,
                        MState::Lost | MState::Draining => false,
                        MState::Ready => {
                            self.units[u].bad.is_none()
                                && self.meta_ok(u, m)
                                && !self.units[u].avoid.contains(&m)
                                && self.conflict_on(u, m).is_none()
                        }
                    };
                    self.keep_or_delete(u, m, e, keep, false);
                }
                continue;
            }
            // The placement it runs at: the oldest valid one on a ready or suspect machine.
            let mut primary = None;
            for &(m, e) in &places {
                if primary.is_some() {
                    break;
                }
                let keep = match self.machines[m].state {
                    MState::Suspect => true,
                    MState::Ready => self.valid_here(u, m, true),
                    MState::Lost | MState::Draining => false,
                };
                if keep {
                    self.keep_or_delete(u, m, e, true, true);
                    primary = Some(m);
                }
            }
            // The old placement on a draining machine, if it is still needed.
            let mut drainer = None;
            for &(m, e) in &places {
                if Some(m) == primary {
                    continue;
                }
                let state = self.machines[m].state;
                if state != MState::Draining || drainer.is_some() || !self.valid_here(u, m, primary.is_none()) {
                    self.delete(m, self.units[u].name);
                    continue;
                }
                match primary {
                    Some(p) if self.replacement_active(u, p) => self.delete(m, self.units[u].name),
                    Some(_) => {
                        // Mid-move: the old copy runs until the replacement is active.
                        self.keep_or_delete(u, m, e, true, false);
                        self.unavailable[self.units[u].group] += 1;
                        drainer = Some(m);
                    }
                    None => {
                        self.keep_or_delete(u, m, e, true, true);
                        drainer = Some(m);
                    }
                }
            }
            if primary.is_none() && drainer.is_none() {
                to_place.push(u);
            }
        }
        to_place
    }

    /// Whether `u` may stay on `m` given what is kept so far.
    fn valid_here(&mut self, u: Uid, m: Mid, counted: bool) -> bool {
        self.units[u].bad.is_none()
            && self.static_ok(u, m)
            && self.leaders_ok(u, m)
            && (!counted || self.distinct_ok(u, m))
            && self.conflict_on(u, m).is_none()
    }

    fn keep_or_delete(&mut self, u: Uid, m: Mid, e: &'a ScheduleEntry, keep: bool, counted: bool) {
        if keep {
            self.occupy(u, m, counted);
            self.placed[u].push(Place {
                m,
                gen: e.generation,
                old: Some(e),
                counted,
            });
        } else {
            self.delete(m, self.units[u].name);
        }
    }

    /// A drain's replacement on `m` is up: active, of this placement's generation, and
    /// healthy where the unit has a `HealthCheck=`.
    fn replacement_active(&self, u: Uid, m: Mid) -> bool {
        let Some(p) = self.placed[u].iter().find(|p| p.m == m) else {
            return false;
        };
        let needs_health = self.units[u].rec.options.health_check.is_some();
        self.state_of(u, m)
            .is_some_and(|s| s.is_active() && s.generation == p.gen && (!needs_health || s.healthy == Some(true)))
    }

    fn state_of(&self, u: Uid, m: Mid) -> Option<&'a crate::model::UnitState> {
        self.view.states.get(self.machines[m].id)?.get(self.units[u].name)
    }

    /// Phase 2: an unplaced unit with Replaces= takes the machine of a unit it replaces,
    /// which then moves. Returns the units to place, in order.
    fn take_replaced(&mut self, order: &[Uid], mut to_place: Vec<Uid>) -> Vec<Uid> {
        let pos: HashMap<Uid, usize> = order.iter().enumerate().map(|(i, &u)| (u, i)).collect();
        let candidates: Vec<Uid> = to_place
            .iter()
            .copied()
            .filter(|&u| self.units[u].replaces.is_some())
            .collect();
        for u in candidates {
            if self.units[u].bad.is_some() || self.units[u].global {
                continue;
            }
            let set = self.units[u].replaces.unwrap_or_default();
            for v in 0..self.units.len() {
                if v == u || !self.units[v].wanted || !self.globs.is_match(set, self.units[v].name.as_str()) {
                    continue;
                }
                // Only a unit that sits on one ready machine (not mid-drain).
                let [place] = self.placed[v][..] else { continue };
                let m = place.m;
                if self.machines[m].state != MState::Ready || self.units[v].global {
                    continue;
                }
                self.vacate(v, m, place.counted);
                let ok = self.units[u].leaders.iter().all(|&l| self.primary(l) == Some(m))
                    && self.static_ok(u, m)
                    && self.host_ok(u, m)
                    && self.distinct_ok(u, m)
                    && self.fits(u, m)
                    && self.conflict_on(u, m).is_none();
                if ok {
                    if place.old.is_some() {
                        self.delete(m, self.units[v].name);
                    }
                    self.placed[v].clear();
                    self.add_place(u, m);
                    to_place.retain(|&x| x != u);
                    to_place.push(v);
                    break;
                }
                self.occupy(v, m, place.counted);
            }
        }
        to_place.sort_by_key(|u| pos[u]);
        to_place
    }

    /// Phase 3a: global units on every ready machine that matches and has no conflict.
    fn place_globals(&mut self, order: &[Uid]) {
        let globals: Vec<Uid> = order.iter().copied().take_while(|&u| self.units[u].global).collect();
        for u in globals {
            if let Some(bad) = self.units[u].bad.clone() {
                self.unplaceable.insert(self.units[u].name.clone(), bad);
                continue;
            }
            for m in 0..self.machines.len() {
                if self.machines[m].state != MState::Ready || self.placed[u].iter().any(|p| p.m == m) {
                    continue;
                }
                if self.meta_ok(u, m)
                    && !self.units[u].avoid.contains(&m)
                    && self.host_ok(u, m)
                    && self.fits(u, m)
                    && self.conflict_on(u, m).is_none()
                {
                    self.add_place(u, m);
                }
            }
            if self.placed[u].is_empty() {
                let reason = self.diagnose(u, None);
                self.unplaceable
                    .insert(self.units[u].name.clone(), format!("Global=true, but {reason}"));
            }
        }
    }

    /// Phase 3b: every unplaced unit, in order. Returns the units waiting to leave a
    /// draining machine.
    fn place(&mut self, order: &[Uid], to_place: Vec<Uid>) -> Vec<Uid> {
        for u in to_place {
            if self.units[u].global {
                continue;
            }
            match self.target(u) {
                Ok(only) => match self.find(u, only) {
                    Some(m) => self.add_place(u, m),
                    None => {
                        let reason = self.unplaceable_reason(u, only);
                        self.unplaceable.insert(self.units[u].name.clone(), reason);
                    }
                },
                Err(reason) => {
                    self.unplaceable.insert(self.units[u].name.clone(), reason);
                }
            }
        }
        order
            .iter()
            .copied()
            .filter(|&u| {
                !self.units[u].global
                    && matches!(self.placed[u][..], [p] if self.machines[p.m].state == MState::Draining)
            })
            .collect()
    }

    /// Where MachineOf/MachineID restrict `u` to one machine (`Ok(None)`: anywhere), or why
    /// it cannot be placed at all.
    fn target(&self, u: Uid) -> Result<Option<Mid>, String> {
        let unit = &self.units[u];
        if let Some(bad) = &unit.bad {
            return Err(bad.clone());
        }
        let mut only: Option<Mid> = None;
        for &l in &unit.leaders {
            let leader = &self.units[l];
            let Some(m) = self.primary(l) else {
                let why = if leader.name.is_template() {
                    "it is a template, which never runs itself".to_string()
                } else if leader.rec.desired == DesiredState::Inactive {
                    "it is inactive".to_string()
                } else if let Some(r) = self.unplaceable.get(leader.name) {
                    format!("it is unplaceable itself: {r}")
                } else {
                    "it is not placed".to_string()
                };
                return Err(format!(
                    "MachineOf={}, but {} is not on any machine: {why}",
                    leader.name, leader.name
                ));
            };
            match only {
                Some(o) if o != m => {
                    return Err(format!(
                        "MachineOf= units are on different machines ({} and {}); a unit can follow only one machine",
                        self.machines[o].id, self.machines[m].id
                    ))
                }
                _ => only = Some(m),
            }
        }
        if only.is_none() {
            if let Some(Some(p)) = unit.pin {
                only = Some(p);
            }
        }
        Ok(only)
    }

    /// The best machine for `u`: passes every hard filter; fewest group members per SpreadBy
    /// value, then least loaded, then machine id.
    fn find(&mut self, u: Uid, only: Option<Mid>) -> Option<Mid> {
        let range = match only {
            Some(m) => m..m + 1,
            None => 0..self.machines.len(),
        };
        let mut cands = std::mem::take(&mut self.cands);
        cands.clear();
        let unit = &self.units[u];
        for m in range {
            if self.machines[m].state != MState::Ready
                || !self.static_ok(u, m)
                || !self.host_ok(u, m)
                || !self.distinct_ok(u, m)
                || !self.fits(u, m)
            {
                continue;
            }
            let mut spread = 0u64;
            for &(kid, slot) in unit.spread.iter().take(MAX_SPREAD_KEYS) {
                let c = self.counts[slot][self.attr[kid][m] as usize].min(0xffff);
                spread = (spread << 16) | u64::from(c);
            }
            cands.push((spread, self.load[m], m));
        }
        let mut found = None;
        // Conflicts are the costly check: try the best candidate first, and sort only if it fails.
        if let Some(&best) = cands.iter().min() {
            if self.conflict_on(u, best.2).is_none() {
                found = Some(best.2);
            } else {
                cands.sort_unstable();
                for &(_, _, m) in cands.iter().skip(1) {
                    if self.conflict_on(u, m).is_none() {
                        found = Some(m);
                        break;
                    }
                }
            }
        }
        self.cands = cands;
        found
    }

    /// Phase 4: units on draining machines get a replacement elsewhere, at most
    /// MaxUnavailable per group mid-move; the old placement goes once the replacement is up.
    /// Returns whether any replacement was placed.
    fn drain(&mut self, drains: Vec<Uid>) -> bool {
        let mut moved = false;
        for u in drains {
            let group = self.units[u].group;
            if self.unavailable[group] >= self.units[u].max_unavailable {
                continue;
            }
            let old = self.placed[u][0].m;
            let only = match self.target(u) {
                Ok(only) => only,
                Err(reason) => {
                    let msg = format!("stays on draining machine {}: {reason}", self.machines[old].id);
                    self.unplaceable.insert(self.units[u].name.clone(), msg);
                    continue;
                }
            };
            if let (Some(m), Some(&l)) = (only, self.units[u].leaders.first()) {
                if self.machines[m].state == MState::Draining {
                    // It follows once its leader has moved.
                    let msg = format!(
                        "stays on draining machine {}: it follows its MachineOf leader {}, which has not moved yet",
                        self.machines[old].id, self.units[l].name
                    );
                    self.unplaceable.insert(self.units[u].name.clone(), msg);
                    continue;
                }
            }
            // Counted once: at the replacement, so the group's limits see it there.
            self.count(u, old, false);
            self.placed[u][0].counted = false;
            match self.find(u, only) {
                Some(m) => {
                    self.add_place(u, m);
                    self.unavailable[group] += 1;
                    moved = true;
                }
                None => {
                    let reason = self.unplaceable_reason(u, only);
                    self.count(u, old, true);
                    self.placed[u][0].counted = true;
                    let msg = format!("stays on draining machine {}: {reason}", self.machines[old].id);
                    self.unplaceable.insert(self.units[u].name.clone(), msg);
                }
            }
        }
        moved
    }

    /// The transport addresses of an Elasticsearch cluster's master nodes as this pass
    /// places them (a master mid-drain is listed at both machines), sorted.
    fn master_addrs(&self, cluster: &str) -> Vec<crate::es::MasterAddr> {
        let mut out = Vec::new();
        for (u, unit) in self.units.iter().enumerate() {
            let Some((rec, node)) = &unit.es else { continue };
            if rec.spec.name != cluster || node.role != crate::es::Role::Master || !unit.wanted {
                continue;
            }
            for p in &self.placed[u] {
                if let Some(m) = self.view.machines.get(self.machines[p.m].id) {
                    out.push(crate::es::MasterAddr {
                        node: node.name.clone(),
                        address: m.address.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.address, &a.node).cmp(&(&b.address, &b.node)));
        out
    }

    /// Clusters not yet marked bootstrapped whose masters formed a cluster: a majority of
    /// the spec's masters report healthy (their check answers only with an elected master).
    /// From then on `cluster.initial_master_nodes` is left out of every node's config, so a
    /// master recreated with an empty data dir joins the cluster instead of founding another.
    fn es_bootstrapped(&self) -> BTreeSet<String> {
        let mut healthy: BTreeMap<&str, u32> = BTreeMap::new();
        for (u, unit) in self.units.iter().enumerate() {
            let Some((rec, node)) = &unit.es else { continue };
            if rec.bootstrapped || node.role != crate::es::Role::Master {
                continue;
            }
            let up = self.placed[u].iter().any(|p| {
                self.state_of(u, p.m)
                    .is_some_and(|s| s.is_active() && s.generation == p.gen && s.healthy == Some(true))
            });
            *healthy.entry(rec.spec.name.as_str()).or_default() += u32::from(up);
        }
        healthy
            .into_iter()
            .filter(|(c, n)| self.view.es.get(*c).is_some_and(|r| *n > r.spec.master.count / 2))
            .map(|(c, _)| c.to_string())
            .collect()
    }

    /// Retired records to release: the node runs again elsewhere, in a newer generation,
    /// active and healthy by its `HealthCheck=` ([`RetiredRecord`]). That report was made
    /// after the loss, and a data node's check passes only while the cluster is green, so
    /// every shard has its copies without the old directory. A node without a check, or no
    /// longer wanted (unloaded, destroyed), cannot vouch for that: its record is held, like
    /// the data of a unit unloaded while its machine was away; an operator decides.
    fn releases(&self) -> Vec<(String, RetiredRecord)> {
        let mut out = Vec::new();
        for (machine, recs) in &self.view.retired {
            for rec in recs.values().filter(|r| !r.released) {
                let Some(&u) = self.uid.get(rec.unit.as_str()) else {
                    continue;
                };
                let unit = &self.units[u];
                let Some((es, _)) = unit.es.as_ref() else { continue };
                if !unit.wanted || unit.rec.options.health_check.is_none() {
                    continue;
                }
                let vouched = self.placed[u].iter().any(|p| {
                    self.machines[p.m].id != machine.as_str()
                        && p.gen > rec.generation
                        && self
                            .state_of(u, p.m)
                            .is_some_and(|s| s.is_active() && s.generation == p.gen && s.healthy == Some(true))
                });
                if vouched {
                    out.push((
                        machine.clone(),
                        RetiredRecord {
                            released: true,
                            cluster: es.spec.name.clone(),
                            ..rec.clone()
                        },
                    ));
                }
            }
        }
        out
    }

    /// Phase 5: every placement's entry; a Put where it is new or differs.
    fn finish(mut self) -> Plan {
        let active: Vec<bool> = (0..self.units.len())
            .map(|u| {
                self.units[u].wanted
                    && self.placed[u]
                        .iter()
                        .any(|p| self.state_of(u, p.m).is_some_and(|s| s.is_active()))
            })
            .collect();
        let boot = self.es_bootstrapped();
        let released = self.releases();
        let mut masters: HashMap<&str, Vec<crate::es::MasterAddr>> = HashMap::new();
        // Per StartAfter= set: (wanted units matching it, of which active).
        let mut counts: HashMap<SetId, (u32, u32)> = HashMap::new();
        for u in 0..self.units.len() {
            let unit = &self.units[u];
            for p in &self.placed[u] {
                let desired = match unit.rec.desired {
                    DesiredState::Launched => {
                        // A start-time gate, like systemd's After=: a placement already
                        // launched stays launched when a unit it waited for fails later
                        // (a master dying must not stop every data node).
                        let launched = p
                            .old
                            .is_some_and(|o| o.generation == p.gen && o.desired == DesiredState::Launched);
                        let gated = !launched
                            && unit.start_after.is_some_and(|set| {
                                let (total, up) = *counts.entry(set).or_insert_with(|| {
                                    (0..self.units.len())
                                        .filter(|&v| {
                                            self.units[v].wanted
                                                && self.globs.is_match(set, self.units[v].name.as_str())
                                        })
                                        .fold((0, 0), |(t, a), v| (t + 1, a + u32::from(active[v])))
                                });
                                // A unit matching its own StartAfter= does not wait for itself.
                                let me = self.globs.is_match(set, unit.name.as_str());
                                let total = total - u32::from(me);
                                let up = up - u32::from(me && active[u]);
                                if unit.rec.options.start_after_quorum {
                                    total > 0 && up < total / 2 + 1
                                } else {
                                    up < total
                                }
                            });
                        if gated {
                            DesiredState::Loaded
                        } else {
                            DesiredState::Launched
                        }
                    }
                    other => other,
                };
                let machine = self.machines[p.m].id;
                let (env, files) = match self.view.machines.get(machine) {
                    Some(rec) => {
                        let files = match &unit.es {
                            Some((stored, node)) => {
                                let stored: &'a crate::es::ClusterRecord = stored;
                                let name = stored.spec.name.as_str();
                                let masters = masters.entry(name).or_insert_with(|| self.master_addrs(name));
                                if !stored.bootstrapped && boot.contains(name) {
                                    // Marked bootstrapped by this very plan: render as such
                                    // now, so applying the plan leaves nothing for the next pass.
                                    let marked = crate::es::ClusterRecord {
                                        bootstrapped: true,
                                        ..stored.clone()
                                    };
                                    crate::es::render_files(&marked, node, rec, p.gen, masters)
                                } else {
                                    crate::es::render_files(stored, node, rec, p.gen, masters)
                                }
                            }
                            // No cluster node to render for: keep what it runs with.
                            None if unit.es_missing.is_some() => p.old.map(|o| o.files.clone()).unwrap_or_default(),
                            None => BTreeMap::new(),
                        };
                        (placement_env(rec, p.gen), files)
                    }
                    // A suspect machine keeps what it was given.
                    None => p.old.map(|o| (o.env.clone(), o.files.clone())).unwrap_or_default(),
                };
                let rec = unit.rec;
                let same = p.old.is_some_and(|o| {
                    o.unit == *unit.name
                        && o.desired == desired
                        && o.hash == rec.hash
                        && o.text == rec.text
                        && o.generation == p.gen
                        && o.fence == rec.options.fence
                        && o.enable == rec.has_install
                        && o.env == env
                        && o.files == files
                });
                if !same {
                    let entry = ScheduleEntry {
                        unit: unit.name.clone(),
                        text: rec.text.clone(),
                        hash: rec.hash.clone(),
                        desired,
                        generation: p.gen,
                        fence: rec.options.fence,
                        enable: rec.has_install,
                        env,
                        files,
                    };
                    self.actions.push(Action::Put {
                        machine: machine.to_string(),
                        entry,
                    });
                }
            }
        }
        let mut actions = self.actions;
        actions.sort_by(|a, b| {
            (a.machine(), a.unit(), matches!(a, Action::Put { .. })).cmp(&(
                b.machine(),
                b.unit(),
                matches!(b, Action::Put { .. }),
            ))
        });
        // A Put overwrites: a Delete of the same key next to it is redundant.
        let puts: BTreeSet<(String, UnitName)> = actions
            .iter()
            .filter(|a| matches!(a, Action::Put { .. }))
            .map(|a| (a.machine().to_string(), a.unit().clone()))
            .collect();
        actions.retain(|a| {
            matches!(a, Action::Put { .. }) || !puts.contains(&(a.machine().to_string(), a.unit().clone()))
        });
        actions.dedup();
        // One record per key: a placement retired in this pass replaces a release of the
        // same machine and unit.
        let mut by_key: BTreeMap<(String, UnitName), RetiredRecord> = BTreeMap::new();
        for (m, r) in released.into_iter().chain(self.retired) {
            by_key.insert((m, r.unit.clone()), r);
        }
        let retired: Vec<(String, RetiredRecord)> = by_key.into_iter().map(|((m, _), r)| (m, r)).collect();
        Plan {
            actions,
            unplaceable: self.unplaceable,
            es_bootstrapped: boot,
            retired,
        }
    }
}
