//! The `[X-Fleet]` section: fleet's options with fleet's rules, and esfleet's additions
//! (DESIGN.md "Unit options"), parsed into [`XFleet`].
//!
//! How a value is read, in order: the assignments of one option after the last empty
//! assignment count (`Conflicts=` resets the list; for a single-valued option the last
//! value wins, as in systemd); specifiers `%n %N %p %i %%` are expanded for the unit's
//! name; list options are split into words like systemd's `extract_first_word()` (spaces
//! separate, `"…"`/`'…'` group and are removed, `\` escapes), which accepts both fleet's
//! `MachineMetadata="zone=a" "rack=r1"` and `MachineMetadata=zone=a zone=b`.
//!
//! A template (`foo@.service`) is validated with `%i` empty. A value that only comes out
//! empty because of that (`MachineMetadata=hostname=%i`) is skipped for the template
//! rather than refused: each instance is validated again with its own name.

use globset::Glob;

use crate::name::{validate_machine_id, UnitName};
use crate::options::{Distinct, Fence, HealthCheck, MetadataCond, Resources, XFleet};
use crate::unit::UnitFile;

/// The longest `Group=` name (a label, never a file name on a host).
const MAX_GROUP_NAME: usize = 256;

/// The section fleet and esfleet read.
pub const SECTION: &str = "X-Fleet";

/// What is wrong with a unit's `[X-Fleet]` section. Display is a complete sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("line {line}: unknown [X-Fleet] key {key:?}; {hint}")]
    UnknownKey {
        line: usize,
        key: String,
        /// "did you mean …?" or the list of known keys.
        hint: String,
    },
    #[error("line {line}: {key}= is not supported any more; {hint}")]
    Unsupported { line: usize, key: String, hint: String },
    #[error("line {line}: {message}")]
    BadValue {
        line: usize,
        key: String,
        value: String,
        message: String,
    },
    #[error("{first}= (line {first_line}) cannot be combined with {second}= (line {second_line}): {why}")]
    Combination {
        first: &'static str,
        first_line: usize,
        second: &'static str,
        second_line: usize,
        why: &'static str,
    },
    #[error("line {line}: section [{found}] is not read by esfleet; the section is spelled [X-Fleet]")]
    MisspelledSection { line: usize, found: String },
}

impl OptionsError {
    /// The 1-based line an error points at (the later one for a combination).
    pub fn line(&self) -> usize {
        match self {
            OptionsError::UnknownKey { line, .. }
            | OptionsError::Unsupported { line, .. }
            | OptionsError::BadValue { line, .. }
            | OptionsError::MisspelledSection { line, .. } => *line,
            OptionsError::Combination { second_line, .. } => *second_line,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    MachineId,
    MachineOf,
    MachineMetadata,
    Conflicts,
    Global,
    Replaces,
    DistinctBy,
    SpreadBy,
    Group,
    Resources,
    StartAfter,
    StartAfterQuorum,
    HealthCheck,
    HealthCheckCa,
    HealthCheckCredentials,
    MaxUnavailable,
    Fence,
    Elasticsearch,
}

/// Every option in the order errors and docs list them.
const OPTS: [Opt; 18] = [
    Opt::MachineId,
    Opt::MachineOf,
    Opt::MachineMetadata,
    Opt::Conflicts,
    Opt::Global,
    Opt::Replaces,
    Opt::DistinctBy,
    Opt::SpreadBy,
    Opt::Group,
    Opt::Resources,
    Opt::StartAfter,
    Opt::StartAfterQuorum,
    Opt::HealthCheck,
    Opt::HealthCheckCa,
    Opt::HealthCheckCredentials,
    Opt::MaxUnavailable,
    Opt::Fence,
    Opt::Elasticsearch,
];

/// fleet's deprecated spellings, which fleet accepted and so do we.
const ALIASES: [(&str, Opt); 4] = [
    ("X-ConditionMachineID", Opt::MachineId),
    ("X-ConditionMachineOf", Opt::MachineOf),
    ("X-ConditionMachineMetadata", Opt::MachineMetadata),
    ("X-Conflicts", Opt::Conflicts),
];

impl Opt {
    fn name(self) -> &'static str {
        match self {
            Opt::MachineId => "MachineID",
            Opt::MachineOf => "MachineOf",
            Opt::MachineMetadata => "MachineMetadata",
            Opt::Conflicts => "Conflicts",
            Opt::Global => "Global",
            Opt::Replaces => "Replaces",
            Opt::DistinctBy => "DistinctBy",
            Opt::SpreadBy => "SpreadBy",
            Opt::Group => "Group",
            Opt::Resources => "Resources",
            Opt::StartAfter => "StartAfter",
            Opt::StartAfterQuorum => "StartAfterQuorum",
            Opt::Elasticsearch => "Elasticsearch",
            Opt::HealthCheck => "HealthCheck",
            Opt::HealthCheckCa => "HealthCheckCA",
            Opt::HealthCheckCredentials => "HealthCheckCredentials",
            Opt::MaxUnavailable => "MaxUnavailable",
            Opt::Fence => "Fence",
        }
    }

    fn lookup(key: &str) -> Option<Opt> {
        OPTS.into_iter()
            .find(|o| o.name() == key)
            .or_else(|| ALIASES.iter().find(|(k, _)| *k == key).map(|(_, o)| *o))
    }
}

/// Pairs that cannot be given together, and why.
const COMBINATIONS: [(Opt, Opt, &str); 11] = [
    (
        Opt::MachineId,
        Opt::MachineOf,
        "fleet rejects this combination; MachineID= alone already picks the machine",
    ),
    (
        Opt::MachineId,
        Opt::Conflicts,
        "fleet rejects this combination; MachineID= alone already picks the machine",
    ),
    (
        Opt::MachineId,
        Opt::Global,
        "fleet rejects this combination; a global unit runs on every matching machine",
    ),
    (
        Opt::MachineId,
        Opt::Replaces,
        "fleet rejects this combination; MachineID= alone already picks the machine",
    ),
    (
        Opt::Global,
        Opt::MachineOf,
        "fleet rejects this combination; a global unit runs on every matching machine",
    ),
    (
        Opt::Global,
        Opt::Replaces,
        "fleet rejects this combination; a global unit runs on every matching machine",
    ),
    (
        Opt::Conflicts,
        Opt::Replaces,
        "fleet rejects this combination; use one or the other",
    ),
    (
        Opt::Global,
        Opt::DistinctBy,
        "a global unit runs once on every matching machine, so there is nothing to keep apart",
    ),
    (
        Opt::Global,
        Opt::SpreadBy,
        "a global unit runs once on every matching machine, so there is nothing to spread",
    ),
    (
        Opt::Global,
        Opt::Elasticsearch,
        "an Elasticsearch node is one instance of a role (esfleet es apply), never one per machine",
    ),
    (
        Opt::Global,
        Opt::Group,
        "Group= only names the set DistinctBy=/SpreadBy= work on, and a global unit has neither",
    ),
];

/// One assignment of an option, as written.
#[derive(Debug)]
struct Raw<'a> {
    line: usize,
    key: &'a str,
    value: &'a str,
}

/// Reads the `[X-Fleet]` section of `file` for the unit called `name`: expands specifiers,
/// validates every value and every combination, and fills the defaults (group = the
/// template prefix or the unit's stem, `MaxUnavailable=1`, `Fence=stop`).
pub fn parse_options(name: &UnitName, file: &UnitFile) -> Result<XFleet, OptionsError> {
    for section in file.section_names() {
        if section != SECTION && section.eq_ignore_ascii_case(SECTION) {
            return Err(OptionsError::MisspelledSection {
                line: file.section_line(section).unwrap_or(0),
                found: section.to_string(),
            });
        }
    }

    // Collect each option's effective assignments, aliases folded into their option so an
    // empty `Conflicts=` also resets earlier `X-Conflicts=` values.
    let mut raws: Vec<(Opt, Vec<Raw<'_>>)> = OPTS.iter().map(|o| (*o, Vec::new())).collect();
    for a in file.assignments().iter().filter(|a| a.section == SECTION) {
        let Some(opt) = Opt::lookup(&a.key) else {
            return Err(unknown_key(a.line, &a.key));
        };
        let slot = &mut raws
            .iter_mut()
            .find(|(o, _)| *o == opt)
            .expect("every Opt has a slot")
            .1;
        if a.value.is_empty() {
            slot.clear();
        } else {
            slot.push(Raw {
                line: a.line,
                key: &a.key,
                value: &a.value,
            });
        }
    }
    let get = |opt: Opt| -> &[Raw<'_>] { &raws.iter().find(|(o, _)| *o == opt).expect("slot").1 };

    let mut x = XFleet::for_unit(name);
    let ctx = Ctx { name };
    if let Some(r) = get(Opt::MachineId).last() {
        x.machine_id = ctx.machine_id(r)?;
    }
    for r in get(Opt::MachineOf) {
        for unit in ctx.unit_names(r, "the same machine as itself")? {
            push_unique(&mut x.machine_of, unit);
        }
    }
    for r in get(Opt::MachineMetadata) {
        for (key, negate, value) in ctx.metadata(r)? {
            match x
                .machine_metadata
                .iter_mut()
                .find(|c| c.key == key && c.negate == negate)
            {
                Some(cond) => push_unique(&mut cond.values, value),
                None => x.machine_metadata.push(MetadataCond {
                    key,
                    negate,
                    values: vec![value],
                }),
            }
        }
    }
    for r in get(Opt::Conflicts) {
        for glob in ctx.globs(r)? {
            push_unique(&mut x.conflicts, glob);
        }
    }
    if let Some(r) = get(Opt::Global).last() {
        x.global = ctx.boolean(r)?;
    }
    for r in get(Opt::Replaces) {
        for unit in ctx.unit_names(r, "itself")? {
            push_unique(&mut x.replaces, unit);
        }
    }
    for r in get(Opt::DistinctBy) {
        for d in ctx.distinct(r)? {
            if let Some(prev) = x.distinct_by.iter().find(|p| p.key == d.key) {
                return Err(ctx.bad(
                    r,
                    format!(
                        "DistinctBy= names {:?} twice (limits {} and {}); give each key once",
                        d.key, prev.max, d.max
                    ),
                ));
            }
            x.distinct_by.push(d);
        }
    }
    for r in get(Opt::SpreadBy) {
        for key in ctx.words(r)? {
            check_metadata_key(&ctx, r, &key)?;
            push_unique(&mut x.spread_by, key);
        }
    }
    if let Some(r) = get(Opt::Group).last() {
        if let Some(group) = ctx.group(r)? {
            x.group = group;
        }
    }
    for r in get(Opt::Resources) {
        ctx.resources(r, &mut x.resources)?;
    }
    for r in get(Opt::StartAfter) {
        for glob in ctx.globs(r)? {
            push_unique(&mut x.start_after, glob);
        }
    }
    if let Some(r) = get(Opt::StartAfterQuorum).last() {
        x.start_after_quorum = ctx.boolean(r)?;
        if x.start_after_quorum && x.start_after.is_empty() {
            return Err(ctx.bad(
                r,
                "StartAfterQuorum=true counts the units StartAfter= names, and this unit has no StartAfter=".into(),
            ));
        }
    }
    if let Some(r) = get(Opt::Elasticsearch).last() {
        x.elasticsearch = Some(ctx.es_cluster(r)?);
    }
    if let Some(r) = get(Opt::HealthCheck).last() {
        x.health_check = ctx.health_check(r)?;
    }
    let https = matches!(&x.health_check, Some(HealthCheck::Http(u)) if u.starts_with("https://"));
    if let Some(r) = get(Opt::HealthCheckCa).last() {
        x.health_check_ca = Some(ctx.secret_path(r)?);
        if !https {
            return Err(ctx.bad(
                r,
                format!("{}= is for an https:// HealthCheck=, and this unit has none", r.key),
            ));
        }
    }
    if let Some(r) = get(Opt::HealthCheckCredentials).last() {
        x.health_check_credentials = Some(ctx.secret_path(r)?);
        if !https || x.health_check_ca.is_none() {
            return Err(ctx.bad(
                r,
                format!(
                    "{}= sends a password, which esfleet does only over https: give an https:// HealthCheck= and HealthCheckCA=",
                    r.key
                ),
            ));
        }
    }
    if let Some(r) = get(Opt::MaxUnavailable).last() {
        x.max_unavailable = ctx.max_unavailable(r)?;
    }
    if let Some(r) = get(Opt::Fence).last() {
        x.fence = ctx.fence(r)?;
    }

    for (a, b, why) in COMBINATIONS {
        if let (Some(ra), Some(rb)) = (get(a).first(), get(b).first()) {
            // Name them in file order so the message reads top to bottom.
            let ((first, first_raw), (second, second_raw)) = if ra.line <= rb.line {
                ((a, ra), (b, rb))
            } else {
                ((b, rb), (a, ra))
            };
            return Err(OptionsError::Combination {
                first: first.name(),
                first_line: first_raw.line,
                second: second.name(),
                second_line: second_raw.line,
                why,
            });
        }
    }
    Ok(x)
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn unknown_key(line: usize, key: &str) -> OptionsError {
    if key == "X-ConditionMachineBootID" || key == "MachineBootID" {
        return OptionsError::Unsupported {
            line,
            key: key.to_string(),
            hint: "boot ids change at every boot; use MachineID= with the id in /etc/machine-id".to_string(),
        };
    }
    let known: Vec<&str> = OPTS
        .iter()
        .map(|o| o.name())
        .chain(ALIASES.iter().map(|(k, _)| *k))
        .collect();
    let hint = match suggest(key, &known) {
        Some(s) => format!("did you mean {s:?}?"),
        None => format!(
            "known keys are {}",
            OPTS.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
        ),
    };
    OptionsError::UnknownKey {
        line,
        key: key.to_string(),
        hint,
    }
}

/// The known word closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let (best, dist) = known
        .iter()
        .map(|k| (*k, strsim::damerau_levenshtein(&lower, &k.to_ascii_lowercase())))
        .min_by_key(|(_, d)| *d)?;
    // A third of the word may be wrong: "MachineMetadta" → "MachineMetadata", "Globl" →
    // "Global", but "Weight" suggests nothing.
    (dist <= (best.len() / 3).max(1)).then_some(best)
}

/// Per-unit helpers that turn one raw assignment into typed values with positioned errors.
struct Ctx<'n> {
    name: &'n UnitName,
}

impl Ctx<'_> {
    fn bad(&self, r: &Raw<'_>, message: String) -> OptionsError {
        OptionsError::BadValue {
            line: r.line,
            key: r.key.to_string(),
            value: r.value.to_string(),
            message,
        }
    }

    /// True when an empty result is expected: `%i` of a template is empty.
    fn lenient(&self, r: &Raw<'_>) -> bool {
        self.name.is_template() && r.value.contains("%i")
    }

    fn expand(&self, r: &Raw<'_>) -> Result<String, OptionsError> {
        expand_specifiers(r.value, self.name).map_err(|m| self.bad(r, format!("{}={}: {m}", r.key, r.value)))
    }

    /// The value as a list of words, empty words refused (or, for a template's `%i`,
    /// skipped).
    fn words(&self, r: &Raw<'_>) -> Result<Vec<String>, OptionsError> {
        let expanded = self.expand(r)?;
        let words = split_words(&expanded).map_err(|m| self.bad(r, format!("{}={}: {m}", r.key, r.value)))?;
        let lenient = self.lenient(r);
        let mut out = Vec::with_capacity(words.len());
        for w in words {
            if w.is_empty() {
                if lenient {
                    continue;
                }
                return Err(self.bad(r, format!("{}={} has an empty word (\"\")", r.key, r.value)));
            }
            out.push(w);
        }
        Ok(out)
    }

    /// A single-valued option: one word, or `None` when a template's `%i` left it empty.
    fn single(&self, r: &Raw<'_>, what: &str) -> Result<Option<String>, OptionsError> {
        let words = self.words(r)?;
        match words.as_slice() {
            [] if self.lenient(r) => Ok(None),
            [] => Err(self.bad(r, format!("{}={} gives no {what}", r.key, r.value))),
            [one] => Ok(Some(one.clone())),
            _ => Err(self.bad(
                r,
                format!("{}={} has {} words; it takes one {what}", r.key, r.value, words.len()),
            )),
        }
    }

    fn machine_id(&self, r: &Raw<'_>) -> Result<Option<String>, OptionsError> {
        let Some(id) = self.single(r, "machine id")? else {
            return Ok(None);
        };
        validate_machine_id(&id).map_err(|m| self.bad(r, format!("{}={}: {m}", r.key, r.value)))?;
        Ok(Some(id))
    }

    fn unit_names(&self, r: &Raw<'_>, self_ref: &str) -> Result<Vec<String>, OptionsError> {
        let mut out = Vec::new();
        for w in self.words(r)? {
            let unit = UnitName::new(&w).map_err(|e| self.bad(r, format!("{}={}: {e}", r.key, r.value)))?;
            if &unit == self.name {
                return Err(self.bad(
                    r,
                    format!(
                        "{}={} names this unit; a unit cannot be placed on {self_ref}",
                        r.key, r.value
                    ),
                ));
            }
            out.push(unit.into());
        }
        Ok(out)
    }

    /// `key=value` or `key!=value` words.
    fn metadata(&self, r: &Raw<'_>) -> Result<Vec<(String, bool, String)>, OptionsError> {
        let mut out = Vec::new();
        for w in self.words(r)? {
            let Some((left, value)) = w.split_once('=') else {
                return Err(self.bad(
                    r,
                    format!("{:?} in {}={} is not key=value (or key!=value)", w, r.key, r.value),
                ));
            };
            let (key, negate) = match left.strip_suffix('!') {
                Some(k) => (k, true),
                None => (left, false),
            };
            check_metadata_key(self, r, key)?;
            if value.is_empty() {
                if self.lenient(r) {
                    continue;
                }
                return Err(self.bad(r, format!("{:?} in {}={} has no value after \"=\"", w, r.key, r.value)));
            }
            out.push((key.to_string(), negate, value.to_string()));
        }
        Ok(out)
    }

    fn globs(&self, r: &Raw<'_>) -> Result<Vec<String>, OptionsError> {
        let mut out = Vec::new();
        for w in self.words(r)? {
            if let Err(e) = Glob::new(&w) {
                return Err(self.bad(
                    r,
                    format!("{:?} in {}={} is not a valid glob: {}", w, r.key, r.value, e.kind()),
                ));
            }
            out.push(w);
        }
        Ok(out)
    }

    /// `Elasticsearch=<cluster>`: a cluster name as `esfleet es apply` allows it.
    fn es_cluster(&self, r: &Raw<'_>) -> Result<String, OptionsError> {
        let v = self.expand(r)?;
        let ok = v.len() <= 8
            && v.starts_with(|c: char| c.is_ascii_lowercase())
            && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(self.bad(
                r,
                format!(
                    "{v:?} is not an Elasticsearch cluster name esfleet accepts: a lowercase letter, then \
                     lowercase letters or digits, at most 8 in all (node names must fit systemd's 11-character limit)"
                ),
            ));
        }
        Ok(v)
    }

    fn boolean(&self, r: &Raw<'_>) -> Result<bool, OptionsError> {
        let v = self.expand(r)?;
        parse_bool(&v).ok_or_else(|| {
            self.bad(
                r,
                format!(
                    "\"{}={}\" is not a boolean; use true or false (systemd also takes yes/no, on/off, 1/0)",
                    r.key, r.value
                ),
            )
        })
    }

    fn distinct(&self, r: &Raw<'_>) -> Result<Vec<Distinct>, OptionsError> {
        let mut out = Vec::new();
        for w in self.words(r)? {
            let (key, max) = match w.split_once(':') {
                None => (w.as_str(), 1),
                Some((key, n)) => {
                    let max = n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        self.bad(
                            r,
                            format!(
                                "{:?} in {}={}: the limit after \":\" must be a whole number of at least 1, as in zone:2",
                                w, r.key, r.value
                            ),
                        )
                    })?;
                    (key, max)
                }
            };
            check_metadata_key(self, r, key)?;
            out.push(Distinct {
                key: key.to_string(),
                max,
            });
        }
        Ok(out)
    }

    fn group(&self, r: &Raw<'_>) -> Result<Option<String>, OptionsError> {
        let Some(g) = self.single(r, "group name")? else {
            return Ok(None);
        };
        if g.len() > MAX_GROUP_NAME
            || !g
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-'))
        {
            return Err(self.bad(
                r,
                format!(
                    "{}={}: a group name is at most {} letters, digits and ':_.-'",
                    r.key, r.value, MAX_GROUP_NAME
                ),
            ));
        }
        Ok(Some(g))
    }

    /// `cpu=<n> memory=<size> disk=<size>`; a later assignment overrides the keys it names.
    fn resources(&self, r: &Raw<'_>, res: &mut Resources) -> Result<(), OptionsError> {
        const KEYS: [&str; 3] = ["cpu", "memory", "disk"];
        for w in self.words(r)? {
            let Some((k, v)) = w.split_once('=') else {
                return Err(self.bad(
                    r,
                    format!(
                        "{:?} in {}={} is not key=value; write e.g. Resources=cpu=2 memory=8G disk=100G",
                        w, r.key, r.value
                    ),
                ));
            };
            let parsed = match k {
                "cpu" => parse_cpu_millis(v).map(|n| res.cpu_millis = n),
                "memory" => parse_size(v).map(|n| res.memory_bytes = n),
                "disk" => parse_size(v).map(|n| res.disk_bytes = n),
                _ => {
                    let hint = match suggest(k, &KEYS) {
                        Some(s) => format!("did you mean {s:?}?"),
                        None => "known resources are cpu, memory and disk".to_string(),
                    };
                    return Err(self.bad(r, format!("unknown resource {k:?} in {}={}; {hint}", r.key, r.value)));
                }
            };
            parsed.map_err(|m| self.bad(r, format!("{k}={v} in {}={}: {m}", r.key, r.value)))?;
        }
        Ok(())
    }

    fn health_check(&self, r: &Raw<'_>) -> Result<Option<HealthCheck>, OptionsError> {
        let v = self.expand(r)?;
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        for scheme in ["http://", "https://"] {
            if let Some(rest) = v.strip_prefix(scheme) {
                if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
                    return Err(self.bad(
                        r,
                        format!(
                            "{}={} is not a usable URL; write e.g. http://127.0.0.1:9200/_cluster/health",
                            r.key, r.value
                        ),
                    ));
                }
                return Ok(Some(HealthCheck::Http(v.to_string())));
            }
        }
        // Anything else is a command line, kept as written (quotes included); the agent runs it.
        split_words(v).map_err(|m| self.bad(r, format!("{}={}: {m}", r.key, r.value)))?;
        Ok(Some(HealthCheck::Command(v.to_string())))
    }

    /// An absolute path to a file the agent reads (CA certificates, credentials).
    fn secret_path(&self, r: &Raw<'_>) -> Result<String, OptionsError> {
        let v = self.expand(r)?;
        let v = v.trim();
        let ok = v.starts_with('/')
            && !v.split('/').any(|s| s == "..")
            && !v.chars().any(|c| c.is_control() || c.is_whitespace());
        if !ok {
            return Err(self.bad(
                r,
                format!("{}={} is not an absolute path without spaces or \"..\"", r.key, r.value),
            ));
        }
        Ok(v.to_string())
    }

    fn max_unavailable(&self, r: &Raw<'_>) -> Result<u32, OptionsError> {
        let v = self.expand(r)?;
        v.parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| self.bad(r, format!("{}={} is not a whole number of at least 1", r.key, r.value)))
    }

    fn fence(&self, r: &Raw<'_>) -> Result<Fence, OptionsError> {
        match self.expand(r)?.as_str() {
            "stop" => Ok(Fence::Stop),
            "keep" => Ok(Fence::Keep),
            _ => Err(self.bad(
                r,
                format!(
                    "{}={} is neither \"stop\" nor \"keep\" (stop: stop the unit when this machine loses its lease; keep: leave it running)",
                    r.key, r.value
                ),
            )),
        }
    }
}

/// Metadata keys are `[A-Za-z0-9_.-]+`.
fn check_metadata_key(ctx: &Ctx<'_>, r: &Raw<'_>, key: &str) -> Result<(), OptionsError> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(ctx.bad(
            r,
            format!(
                "{key:?} in {}={} is not a metadata key; keys are letters, digits and '_.-'",
                r.key, r.value
            ),
        ));
    }
    Ok(())
}

/// Expands `%n %N %p %i %%` for `name` (systemd's meanings; `%i` of a template is empty).
/// Any other specifier is an error: systemd resolves the others per host, and an
/// `[X-Fleet]` value is read by the scheduler, not by systemd.
pub fn expand_specifiers(value: &str, name: &UnitName) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(name.as_str()),
            Some('N') => out.push_str(name.stem()),
            Some('p') => out.push_str(name.prefix()),
            Some('i') => out.push_str(name.instance().unwrap_or("")),
            Some('%') => out.push('%'),
            Some(other) => {
                return Err(format!(
                    "specifier %{other} is not expanded in [X-Fleet]; only %n %N %p %i and %% are (write %% for a literal %)"
                ))
            }
            None => return Err("a lone % at the end; write %% for a literal %".to_string()),
        }
    }
    Ok(out)
}

/// Splits a value into words like systemd's `extract_first_word(…, EXTRACT_UNQUOTE)`:
/// spaces and tabs separate, `"…"` and `'…'` group (the quotes are removed, and may sit
/// inside a word), a backslash escapes the next character outside single quotes.
pub fn split_words(value: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => match chars.next() {
                Some(next) => {
                    cur.push(next);
                    in_word = true;
                }
                None => return Err("a backslash at the end escapes nothing".to_string()),
            },
            (Some(_), c) => cur.push(c),
            (None, ' ' | '\t') => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("a {q} quote is not closed"));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// systemd's `parse_boolean()`: 1/yes/y/true/t/on and 0/no/n/false/f/off, any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// A size like systemd's `parse_size(…, 1024)`: a decimal number with an optional suffix
/// B, K, M, G, T, P or E (powers of 1024; upper case, as systemd requires).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (number, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => {
                    return Err(format!(
                        "{s:?} has an unknown size suffix {c:?}; use K, M, G or T (powers of 1024, upper case)"
                    ))
                }
            };
            (&s[..i], 1u64 << shift)
        }
        _ => (s, 1),
    };
    let (whole, frac) = split_decimal(number).ok_or_else(|| format!("{s:?} is not a size such as 512M or 1.5G"))?;
    let mut total = whole.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))?;
    if !frac.is_empty() {
        // Fraction digits times the multiplier, floored, computed without floats.
        let mut denom: u128 = 1;
        let mut num: u128 = 0;
        for d in frac.bytes().take(18) {
            num = num * 10 + u128::from(d - b'0');
            denom *= 10;
        }
        let extra = u64::try_from(num * u128::from(mult) / denom).map_err(|_| format!("{s:?} is too large"))?;
        total = total.checked_add(extra).ok_or_else(|| format!("{s:?} is too large"))?;
    }
    Ok(total)
}

/// CPUs as thousandths: `1.5` → 1500; at most three decimals.
pub fn parse_cpu_millis(s: &str) -> Result<u64, String> {
    let (whole, frac) = split_decimal(s).ok_or_else(|| format!("{s:?} is not a number of CPUs such as 2 or 0.5"))?;
    if frac.len() > 3 {
        return Err(format!(
            "{s:?} has more than three decimals; CPUs are counted in thousandths"
        ));
    }
    let frac_millis = format!("{frac:0<3}").parse::<u64>().unwrap_or(0);
    whole
        .checked_mul(1000)
        .and_then(|m| m.checked_add(frac_millis))
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `12` or `12.5` → (12, "5"); None unless digits, an optional dot and digits.
fn split_decimal(s: &str) -> Option<(u64, &str)> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.ends_with('.') {
        return None;
    }
    Some((whole.parse().ok()?, frac))
}
