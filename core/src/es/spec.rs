//! `cluster.toml`: the operator's declaration of one Elasticsearch cluster, parsed into a
//! [`ClusterSpec`] and validated in one place ([`ClusterSpec::validate`]), so the CLI, the
//! scheduler and the renderers can trust every field afterwards.
//!
//! The TOML is read through `toml`'s spanned document tree rather than serde derive: every
//! error can then point at `line:column` and an unknown key can name the nearest known one.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::Role;

/// Node names are systemd-nspawn machine names, and the host side of a container's veth
/// pair is `ve-<machine>` truncated to the kernel's 15 characters: longer names collide.
pub const MAX_NODE_NAME: usize = 11;

/// Above ~31 GiB the JVM can no longer use compressed object pointers (Elasticsearch's
/// documented ceiling).
pub const MAX_HEAP_BYTES: u64 = 31 << 30;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// How a node runs on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A service running `exec` from a local install, as `user`.
    #[default]
    Plain,
    /// A systemd-nspawn container per node: its own machine directory copied from `image`.
    Nspawn,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Plain => "plain",
            Runtime::Nspawn => "nspawn",
        }
    }
}

/// Which engine the cluster runs. Elasticsearch and OpenSearch (its Apache-2.0 fork of
/// 7.10) share coordination, allocation awareness, voting exclusions and the REST APIs
/// esfleet calls; they differ in names: the master role (`master` / `cluster_manager`),
/// the bootstrap key, the configuration file, the start script's environment and the
/// install's paths. Everything that differs is answered here, nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    #[default]
    Elasticsearch,
    Opensearch,
}

impl Flavor {
    /// The value in `cluster.toml`: `elasticsearch`, `opensearch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "elasticsearch",
            Flavor::Opensearch => "opensearch",
        }
    }

    /// The product's name, for messages.
    pub fn product(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "Elasticsearch",
            Flavor::Opensearch => "OpenSearch",
        }
    }

    /// The configuration file the engine reads from its configuration directory.
    pub fn config_file(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "elasticsearch.yml",
            Flavor::Opensearch => "opensearch.yml",
        }
    }

    /// The start script's variable naming the configuration directory.
    pub fn path_conf_env(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "ES_PATH_CONF",
            Flavor::Opensearch => "OPENSEARCH_PATH_CONF",
        }
    }

    /// The start script's variable with extra JVM options (the heap).
    pub fn java_opts_env(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "ES_JAVA_OPTS",
            Flavor::Opensearch => "OPENSEARCH_JAVA_OPTS",
        }
    }

    /// The master-eligible role in `node.roles` (OpenSearch 2.x deprecates `master`).
    pub fn master_role(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "master",
            Flavor::Opensearch => "cluster_manager",
        }
    }

    /// The setting that bootstraps a new cluster's first voting configuration.
    pub fn initial_masters_key(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "cluster.initial_master_nodes",
            Flavor::Opensearch => "cluster.initial_cluster_manager_nodes",
        }
    }

    /// The install's directory in the Debian packages' layout (and in an nspawn image).
    pub fn home(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "/usr/share/elasticsearch",
            Flavor::Opensearch => "/usr/share/opensearch",
        }
    }

    /// The start script inside an nspawn image, and `exec`'s default.
    pub fn default_exec(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => DEFAULT_EXEC,
            Flavor::Opensearch => "/usr/share/opensearch/bin/opensearch",
        }
    }

    pub fn default_user(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => DEFAULT_USER,
            Flavor::Opensearch => "opensearch",
        }
    }

    pub fn default_config_template(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => DEFAULT_CONFIG_TEMPLATE,
            Flavor::Opensearch => "/etc/opensearch",
        }
    }

    pub fn default_image(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => DEFAULT_IMAGE,
            Flavor::Opensearch => "/var/lib/machines/opensearch",
        }
    }

    /// Where an nspawn node writes its logs inside its container.
    pub fn container_logs(self) -> &'static str {
        match self {
            Flavor::Elasticsearch => "/var/log/elasticsearch",
            Flavor::Opensearch => "/var/log/opensearch",
        }
    }
}

/// One role's nodes: how many, their size and their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSpec {
    /// Nodes `<cluster>-<letter>1 ..= <count>`.
    pub count: u32,
    /// `Resources=memory=`; 0 when not given (no reservation, and the heap is left to
    /// Elasticsearch's own sizing unless `heap_bytes` is set).
    #[serde(default)]
    pub memory_bytes: u64,
    /// `-Xms`/`-Xmx`; defaults to min(memory / 2, 31g) rounded down to a MiB; 0 only when
    /// neither memory nor heap was given.
    #[serde(default)]
    pub heap_bytes: u64,
    /// `Resources=cpu=` in thousandths of a CPU; 0 when not given.
    #[serde(default)]
    pub cpu_millis: u64,
    pub http_port: u16,
    pub transport_port: u16,
}

impl RoleSpec {
    /// The defaults of a role: no nodes, no reservation, the role's ports (master
    /// 9201/9301, data 9200/9300, coordinating 9202/9302, so one of each fits on a host).
    pub fn default_for(role: Role) -> RoleSpec {
        let (http_port, transport_port) = match role {
            Role::Data => (9200, 9300),
            Role::Master => (9201, 9301),
            Role::Coordinating => (9202, 9302),
        };
        RoleSpec {
            count: 0,
            memory_bytes: 0,
            heap_bytes: 0,
            cpu_millis: 0,
            http_port,
            transport_port,
        }
    }
}

/// A validated `cluster.toml`, stored as JSON in the cluster record. Every default is
/// filled in, so the JSON says exactly what runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// `[a-z][a-z0-9]*`; node names are `<name>-m1`, `<name>-d12`, ...
    pub name: String,
    /// Forced-awareness zones; empty until `esfleet es apply` fills them from the machines.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Records written before flavours existed are Elasticsearch clusters.
    #[serde(default)]
    pub flavor: Flavor,
    #[serde(default)]
    pub runtime: Runtime,
    /// The user Elasticsearch runs as (plain: on the host; nspawn: inside the image).
    pub user: String,
    /// What ExecStart runs (plain runtime only).
    pub exec: String,
    /// Elasticsearch's configuration directory to take `jvm.options`, `jvm.options.d` and
    /// `log4j2.properties` from (plain: copied from the host; nspawn: the image's own,
    /// used in place).
    pub config_template: String,
    /// The root filesystem each node's machine directory is copied from (nspawn only).
    pub image: String,
    /// `path.data = <data_root>/<node>/<generation>`.
    pub data_root: String,
    /// `bootstrap.memory_lock: true`.
    #[serde(default)]
    pub memory_lock: bool,
    /// Extra `Environment=` for every node.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub master: RoleSpec,
    pub data: RoleSpec,
    pub coordinating: RoleSpec,
    /// Extra `elasticsearch.yml` settings, flattened to dotted keys; values are JSON
    /// scalars or arrays of scalars.
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Files and directories of `config_template` copied into each node's configuration
    /// directory besides `jvm.options`, `jvm.options.d` and `log4j2.properties`: TLS
    /// certificates, the security plugin's configuration (plain runtime; an nspawn image
    /// carries its own).
    #[serde(default)]
    pub config_files: Vec<String>,
    /// How esfleet (CLI and health checks) reaches the nodes' REST API.
    #[serde(default)]
    pub http: HttpSpec,
}

/// `[http]` of `cluster.toml`. With a CA file the nodes are asked over `https://`; with a
/// credentials file (`user:password`, mode 0600) esfleet authenticates. Both are paths on
/// the hosts (the agents' health checks) and, unless the CLI's flags say otherwise, on the
/// machine running `esfleet`: the coordinator stores the paths, never the secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
}

impl HttpSpec {
    pub fn scheme(&self) -> &'static str {
        if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Where in `cluster.toml` an error is, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Why a cluster definition was refused. Display is a complete sentence that starts with
/// the position when there is one (callers prefix the file name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not valid TOML.
    #[error("{}{message}", at(.location))]
    Syntax {
        location: Option<Location>,
        message: String,
    },
    /// A key esfleet does not read.
    #[error("{}unknown key {key:?} in {table}; {hint}", at(.location))]
    UnknownKey {
        location: Option<Location>,
        /// `the top level`, `[master]`, ...
        table: String,
        key: String,
        /// "did you mean …?" or the list of known keys.
        hint: String,
    },
    /// A value of the wrong type or out of its rules.
    #[error("{}{message}", at(.location))]
    Invalid {
        location: Option<Location>,
        /// The dotted path of the offending key (`master.heap`), empty for the whole file.
        key: String,
        message: String,
    },
}

fn at(location: &Option<Location>) -> String {
    match location {
        Some(l) => format!("line {}, column {}: ", l.line, l.column),
        None => String::new(),
    }
}

impl SpecError {
    pub fn location(&self) -> Option<Location> {
        match self {
            SpecError::Syntax { location, .. }
            | SpecError::UnknownKey { location, .. }
            | SpecError::Invalid { location, .. } => *location,
        }
    }

    /// The sentence without its position, for callers that print `file:line:column: `
    /// themselves.
    pub fn message(&self) -> String {
        let full = self.to_string();
        match self.location() {
            Some(l) => full
                .strip_prefix(&format!("line {}, column {}: ", l.line, l.column))
                .map(str::to_string)
                .unwrap_or(full),
            None => full,
        }
    }

    fn invalid(key: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            location: None,
            key: key.into(),
            message: message.into(),
        }
    }
}

const TOP_KEYS: [&str; 17] = [
    "name",
    "zones",
    "flavor",
    "runtime",
    "user",
    "exec",
    "config_template",
    "image",
    "data_root",
    "memory_lock",
    "env",
    "master",
    "data",
    "coordinating",
    "settings",
    "config_files",
    "http",
];
const HTTP_KEYS: [&str; 2] = ["ca_file", "credentials_file"];
/// Names a node's configuration directory holds for esfleet; `config_files` cannot
/// replace them.
const RESERVED_CONFIG_FILES: [&str; 6] = [
    "elasticsearch.yml",
    "opensearch.yml",
    "unicast_hosts.txt",
    "jvm.options",
    "jvm.options.d",
    "log4j2.properties",
];
const ROLE_KEYS: [&str; 6] = ["count", "memory", "heap", "cpu", "http_port", "transport_port"];

pub const DEFAULT_USER: &str = "elasticsearch";
pub const DEFAULT_EXEC: &str = "/usr/share/elasticsearch/bin/elasticsearch";
pub const DEFAULT_CONFIG_TEMPLATE: &str = "/etc/elasticsearch";
pub const DEFAULT_IMAGE: &str = "/var/lib/machines/elasticsearch";
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/esfleet/es";

/// Parses and validates a `cluster.toml` (format: ES_CONTRACT.md "cluster.toml"). Every
/// default is filled in; `zones` stays empty when the file has none (the CLI fills it).
pub fn parse_spec(toml_text: &str) -> Result<ClusterSpec, SpecError> {
    let doc = DeTable::parse(toml_text).map_err(|e| {
        let mut message = e.message().trim_end().to_string();
        // toml says only "duplicate key": name it, since the first one may be far above.
        if let Some(key) = e.span().and_then(|s| toml_text.get(s)).filter(|k| !k.contains('\n')) {
            if message == "duplicate key" {
                message = format!("duplicate key {key}; a key may appear only once in a table");
            }
        }
        SpecError::Syntax {
            location: e.span().map(|s| locate(toml_text, s.start)),
            message,
        }
    })?;
    let mut reader = Reader {
        text: toml_text,
        spans: BTreeMap::new(),
    };
    let spec = reader.spec(doc.get_ref()).map_err(|e| reader.place(e))?;
    spec.validate().map_err(|e| reader.place(e))?;
    Ok(spec)
}

/// 1-based line and column (in characters) of a byte offset.
fn locate(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

/// The known word closest to `word`, if close enough to be a likely typo.
fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase().replace('-', "_");
    let (best, dist) = known
        .iter()
        .map(|k| (*k, strsim::damerau_levenshtein(&lower, k)))
        .min_by_key(|(_, d)| *d)?;
    (dist <= (best.len() / 3).max(1)).then_some(best)
}

type Item<'i> = Spanned<DeValue<'i>>;

/// Walks the spanned document, remembering where each key was so that errors found later
/// by [`ClusterSpec::validate`] (which knows only key paths) can point into the file.
struct Reader<'t> {
    text: &'t str,
    /// Dotted key path → span of the key as written.
    spans: BTreeMap<String, Range<usize>>,
}

impl Reader<'_> {
    /// Adds the position of the error's key (or of its nearest enclosing table).
    fn place(&self, mut e: SpecError) -> SpecError {
        if let SpecError::Invalid { location, key, .. } = &mut e {
            if location.is_none() {
                let mut path = key.as_str();
                loop {
                    if let Some(span) = self.spans.get(path) {
                        *location = Some(locate(self.text, span.start));
                        break;
                    }
                    match path.rsplit_once('.') {
                        Some((parent, _)) => path = parent,
                        None => break,
                    }
                }
            }
        }
        e
    }

    fn err_at(&self, span: Range<usize>, key: &str, message: String) -> SpecError {
        SpecError::Invalid {
            location: Some(locate(self.text, span.start)),
            key: key.to_string(),
            message,
        }
    }

    fn check_keys(&mut self, table: &DeTable<'_>, prefix: &str, known: &[&str], name: &str) -> Result<(), SpecError> {
        for (k, _) in table.iter() {
            let key: &str = k.get_ref();
            if !known.contains(&key) {
                let hint = match (suggest(key, known), prefix, key) {
                    (Some(s), _, _) => format!("did you mean {s:?}?"),
                    (None, "", "count" | "memory" | "heap" | "cpu" | "http_port" | "transport_port") => {
                        format!("{key} belongs in a role's table: [master], [data] or [coordinating]")
                    }
                    (None, "", k) if k.contains('.') => "Elasticsearch settings go in the [settings] table".to_string(),
                    _ => format!("known keys are {}", known.join(", ")),
                };
                return Err(SpecError::UnknownKey {
                    location: Some(locate(self.text, k.span().start)),
                    table: name.to_string(),
                    key: key.to_string(),
                    hint,
                });
            }
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            self.spans.insert(path, k.span());
        }
        Ok(())
    }

    fn spec(&mut self, doc: &DeTable<'_>) -> Result<ClusterSpec, SpecError> {
        self.check_keys(doc, "", &TOP_KEYS, "the top level")?;
        let name = match doc.get("name") {
            Some(v) => self.string("name", v)?,
            None => {
                return Err(SpecError::invalid(
                    "name",
                    "the cluster needs a name: add name = \"logs\" (lower-case letters and digits) at the top",
                ))
            }
        };
        // The flavour first: the install's defaults depend on it.
        let flavor = match doc.get("flavor") {
            None => Flavor::default(),
            Some(v) => match self.string("flavor", v)?.as_str() {
                "elasticsearch" => Flavor::Elasticsearch,
                "opensearch" => Flavor::Opensearch,
                other => {
                    return Err(self.err_at(
                        v.span(),
                        "flavor",
                        format!("flavor = {other:?} is not known; use \"elasticsearch\" or \"opensearch\""),
                    ))
                }
            },
        };
        let mut spec = ClusterSpec {
            name,
            zones: Vec::new(),
            flavor,
            runtime: Runtime::Plain,
            user: flavor.default_user().to_string(),
            exec: flavor.default_exec().to_string(),
            config_template: flavor.default_config_template().to_string(),
            image: flavor.default_image().to_string(),
            data_root: DEFAULT_DATA_ROOT.to_string(),
            memory_lock: false,
            env: BTreeMap::new(),
            master: RoleSpec::default_for(Role::Master),
            data: RoleSpec::default_for(Role::Data),
            coordinating: RoleSpec::default_for(Role::Coordinating),
            settings: BTreeMap::new(),
            config_files: Vec::new(),
            http: HttpSpec::default(),
        };
        if let Some(v) = doc.get("zones") {
            spec.zones = self.string_array("zones", v)?;
        }
        if let Some(v) = doc.get("runtime") {
            spec.runtime = match self.string("runtime", v)?.as_str() {
                "plain" => Runtime::Plain,
                "nspawn" => Runtime::Nspawn,
                other => {
                    return Err(self.err_at(
                        v.span(),
                        "runtime",
                        format!(
                            "runtime = {other:?} is not known; use \"plain\" (a local install run as a service) or \"nspawn\" (a systemd-nspawn container per node)"
                        ),
                    ))
                }
            };
        }
        // Fields that only one runtime reads are refused under the other: a setting that
        // silently does nothing misleads whoever reads the file next.
        for (key, only) in [
            ("exec", Runtime::Plain),
            ("config_files", Runtime::Plain),
            ("image", Runtime::Nspawn),
        ] {
            if let Some(v) = doc.get(key) {
                if spec.runtime != only {
                    return Err(self.err_at(
                        v.span(),
                        key,
                        format!(
                            "{key} is only used with runtime = \"{}\" (this file says runtime = \"{}\"); remove it or change the runtime",
                            only.as_str(),
                            spec.runtime.as_str()
                        ),
                    ));
                }
            }
        }
        for (key, field) in [
            ("user", &mut spec.user),
            ("exec", &mut spec.exec),
            ("config_template", &mut spec.config_template),
            ("image", &mut spec.image),
            ("data_root", &mut spec.data_root),
        ] {
            if let Some(v) = doc.get(key) {
                *field = self.string(key, v)?;
            }
        }
        if let Some(v) = doc.get("memory_lock") {
            spec.memory_lock = self.boolean("memory_lock", v)?;
        }
        if let Some(v) = doc.get("env") {
            let table = self.table("env", v)?;
            for (k, val) in table.iter() {
                let key = format!("env.{}", k.get_ref());
                self.spans.insert(key.clone(), k.span());
                let value = match val.get_ref() {
                    DeValue::String(s) => s.to_string(),
                    DeValue::Integer(i) => i.to_string(),
                    DeValue::Boolean(b) => b.to_string(),
                    other => {
                        return Err(self.err_at(
                            val.span(),
                            &key,
                            format!(
                                "{key} is a {}; an environment value is a string, as in {} = \"value\"",
                                other.type_str(),
                                k.get_ref()
                            ),
                        ))
                    }
                };
                spec.env.insert(k.get_ref().to_string(), value);
            }
        }
        for role in Role::ALL {
            if let Some(v) = doc.get(role.as_str()) {
                let table = self.table(role.as_str(), v)?;
                let parsed = self.role(role, table)?;
                *spec.role_mut(role) = parsed;
            }
        }
        if let Some(v) = doc.get("settings") {
            let table = self.table("settings", v)?;
            let mut out = BTreeMap::new();
            self.settings("", table, &mut out)?;
            spec.settings = out;
        }
        if let Some(v) = doc.get("config_files") {
            spec.config_files = self.string_array("config_files", v)?;
        }
        if let Some(v) = doc.get("http") {
            let table = self.table("http", v)?;
            self.check_keys(table, "http", &HTTP_KEYS, "[http]")?;
            for (key, field) in [
                ("ca_file", &mut spec.http.ca_file),
                ("credentials_file", &mut spec.http.credentials_file),
            ] {
                if let Some(v) = table.get(key) {
                    *field = Some(self.string(&format!("http.{key}"), v)?);
                }
            }
        }
        Ok(spec)
    }

    fn role(&mut self, role: Role, table: &DeTable<'_>) -> Result<RoleSpec, SpecError> {
        let r = role.as_str();
        self.check_keys(table, r, &ROLE_KEYS, &format!("[{r}]"))?;
        let mut spec = RoleSpec::default_for(role);
        if let Some(v) = table.get("count") {
            spec.count = self.integer(&format!("{r}.count"), v, u64::from(u32::MAX))? as u32;
        }
        if let Some(v) = table.get("memory") {
            spec.memory_bytes = self.size(&format!("{r}.memory"), v)?;
        }
        let heap = match table.get("heap") {
            Some(v) => Some(self.size(&format!("{r}.heap"), v)?),
            None => None,
        };
        spec.heap_bytes = match heap {
            Some(h) => h,
            None => default_heap(spec.memory_bytes),
        };
        if let Some(v) = table.get("cpu") {
            spec.cpu_millis = self.cpu(&format!("{r}.cpu"), v)?;
        }
        if let Some(v) = table.get("http_port") {
            spec.http_port = self.integer(&format!("{r}.http_port"), v, 65535)? as u16;
        }
        if let Some(v) = table.get("transport_port") {
            spec.transport_port = self.integer(&format!("{r}.transport_port"), v, 65535)? as u16;
        }
        Ok(spec)
    }

    /// Flattens `[settings]` (dotted keys and nested tables alike) into `a.b.c` → JSON.
    fn settings(
        &mut self,
        prefix: &str,
        table: &DeTable<'_>,
        out: &mut BTreeMap<String, serde_json::Value>,
    ) -> Result<(), SpecError> {
        for (k, v) in table.iter() {
            let key = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            self.spans.insert(format!("settings.{key}"), k.span());
            if let DeValue::Table(inner) = v.get_ref() {
                self.settings(&key, inner, out)?;
                continue;
            }
            let value = self.setting_value(&key, v)?;
            if out.insert(key.clone(), value).is_some() {
                return Err(self.err_at(
                    k.span(),
                    &format!("settings.{key}"),
                    format!("setting {key:?} is given twice in [settings] (once as a dotted key, once in a table); keep one"),
                ));
            }
        }
        Ok(())
    }

    fn setting_value(&self, key: &str, v: &Item<'_>) -> Result<serde_json::Value, SpecError> {
        let path = format!("settings.{key}");
        Ok(match v.get_ref() {
            DeValue::String(s) => serde_json::Value::String(s.to_string()),
            DeValue::Boolean(b) => serde_json::Value::Bool(*b),
            DeValue::Integer(_) => serde_json::Value::from(self.signed(&path, v)?),
            DeValue::Float(f) => {
                let n = parse_float(f.as_str())
                    .and_then(serde_json::Number::from_f64)
                    .ok_or_else(|| {
                        self.err_at(
                            v.span(),
                            &path,
                            format!("setting {key:?} = {} is not a finite number", f.as_str()),
                        )
                    })?;
                serde_json::Value::Number(n)
            }
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    if matches!(item.get_ref(), DeValue::Array(_) | DeValue::Table(_)) {
                        return Err(self.err_at(
                            item.span(),
                            &path,
                            format!("setting {key:?}: an array holds plain values (strings, numbers, booleans), not arrays or tables"),
                        ));
                    }
                    out.push(self.setting_value(key, item)?);
                }
                serde_json::Value::Array(out)
            }
            DeValue::Datetime(d) => {
                return Err(self.err_at(
                    v.span(),
                    &path,
                    format!("setting {key:?} is a TOML date; write it as a string, as in \"{d}\""),
                ))
            }
            DeValue::Table(_) => unreachable!("tables are flattened by the caller"),
        })
    }

    fn type_error(&self, key: &str, v: &Item<'_>, want: &str) -> SpecError {
        self.err_at(
            v.span(),
            key,
            format!("{key} must be {want}; found a {}", v.get_ref().type_str()),
        )
    }

    fn string(&self, key: &str, v: &Item<'_>) -> Result<String, SpecError> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.type_error(key, v, "a string in double quotes")),
        }
    }

    fn boolean(&self, key: &str, v: &Item<'_>) -> Result<bool, SpecError> {
        v.get_ref()
            .as_bool()
            .ok_or_else(|| self.type_error(key, v, "true or false"))
    }

    fn table<'a, 'i>(&self, key: &str, v: &'a Item<'i>) -> Result<&'a DeTable<'i>, SpecError> {
        v.get_ref()
            .as_table()
            .ok_or_else(|| self.type_error(key, v, &format!("a table, written [{key}] on its own line")))
    }

    fn string_array(&mut self, key: &str, v: &Item<'_>) -> Result<Vec<String>, SpecError> {
        let Some(items) = v.get_ref().as_array() else {
            return Err(self.type_error(key, v, "an array of strings, as in [\"a\", \"b\", \"c\"]"));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{key}.{i}");
            self.spans.insert(path.clone(), item.span());
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                other => {
                    return Err(self.err_at(
                        item.span(),
                        &path,
                        format!("{key} holds strings; item {} is a {}", i + 1, other.type_str()),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn signed(&self, key: &str, v: &Item<'_>) -> Result<i64, SpecError> {
        let DeValue::Integer(i) = v.get_ref() else {
            return Err(self.type_error(key, v, "a whole number"));
        };
        i64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| self.err_at(v.span(), key, format!("{key} = {i} is too large")))
    }

    /// A whole number in `0..=max`.
    fn integer(&self, key: &str, v: &Item<'_>, max: u64) -> Result<u64, SpecError> {
        let n = self.signed(key, v)?;
        u64::try_from(n).ok().filter(|n| *n <= max).ok_or_else(|| {
            self.err_at(
                v.span(),
                key,
                format!("{key} = {n} is out of range; it must be 0 to {max}"),
            )
        })
    }

    fn size(&self, key: &str, v: &Item<'_>) -> Result<u64, SpecError> {
        match v.get_ref() {
            DeValue::String(s) => parse_es_size(s).map_err(|m| self.err_at(v.span(), key, format!("{key}: {m}"))),
            DeValue::Integer(i) => {
                let short = key.rsplit('.').next().unwrap_or(key);
                Err(self.err_at(
                    v.span(),
                    key,
                    format!("{key} = {i} has no unit; write a string with one, as in {short} = \"{i}g\" or \"{i}m\""),
                ))
            }
            _ => Err(self.type_error(key, v, "a size in quotes, as in \"512m\" or \"4g\"")),
        }
    }

    fn cpu(&self, key: &str, v: &Item<'_>) -> Result<u64, SpecError> {
        let text = match v.get_ref() {
            DeValue::Integer(_) => return Ok((self.integer(key, v, u64::MAX / 1000)?) * 1000),
            DeValue::Float(f) => f.as_str().replace('_', ""),
            DeValue::String(s) => s.to_string(),
            _ => return Err(self.type_error(key, v, "a number of CPUs, as in 2 or 0.5")),
        };
        crate::unit::parse_cpu_millis(&text).map_err(|m| self.err_at(v.span(), key, format!("{key}: {m}")))
    }
}

fn parse_float(s: &str) -> Option<f64> {
    s.replace('_', "").parse::<f64>().ok().filter(|f| f.is_finite())
}

/// The default heap for a role's memory: half of it, at most 31g, rounded down to a MiB
/// (the JVM wants a multiple of 1024 and Elasticsearch's docs speak in MiB and GiB).
pub fn default_heap(memory_bytes: u64) -> u64 {
    (memory_bytes / 2).min(MAX_HEAP_BYTES) / MIB * MIB
}

/// A size as Elasticsearch and the JVM write it: a whole number and a unit `k`, `m`, `g` or
/// `t` (powers of 1024, either case, an optional trailing `b`): `512m`, `4g`, `31gb`.
pub fn parse_es_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let body = t
        .strip_suffix(['b', 'B'])
        .filter(|b| b.ends_with(|c: char| c.is_ascii_alphabetic()));
    let body = body.unwrap_or(t);
    let (digits, unit) = body.split_at(body.find(|c: char| !c.is_ascii_digit()).unwrap_or(body.len()));
    let shift = match unit.to_ascii_lowercase().as_str() {
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "" if !digits.is_empty() => {
            return Err(format!("{s:?} has no unit; write e.g. \"{digits}m\" or \"{digits}g\""));
        }
        _ => {
            return Err(format!(
                "{s:?} is not a size; write a whole number and k, m, g or t, as in \"512m\" or \"4g\""
            ))
        }
    };
    if digits.is_empty() {
        return Err(format!(
            "{s:?} is not a size; write a whole number and k, m, g or t, as in \"512m\" or \"4g\""
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A size the JVM reads (`-Xmx`): the largest exact unit, lower case: `1g`, `1536m`.
pub fn jvm_size(bytes: u64) -> String {
    for (shift, unit) in [(40, 't'), (30, 'g'), (20, 'm'), (10, 'k')] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A size `Resources=` reads (systemd's upper-case suffixes): `4G`, `512M`.
pub fn unit_size(bytes: u64) -> String {
    jvm_size(bytes).to_ascii_uppercase()
}

/// Settings esfleet renders itself, and what to change instead.
fn owned_setting(key: &str) -> Option<&'static str> {
    const EXACT: &[(&str, &str)] = &[
        ("cluster.name", "it is the cluster's name = ..."),
        ("node.name", "node names are <cluster>-<role letter><n>, from the unit"),
        (
            "node.roles",
            "the roles come from the [master], [data] and [coordinating] tables",
        ),
        ("node.attr.zone", "the zone comes from the machine's zone metadata"),
        ("node.attr.rack", "the rack comes from the machine's rack metadata"),
        (
            "path.data",
            "set data_root; each placement gets <data_root>/<node>/<generation>",
        ),
        ("path.logs", "logs go to a per-node directory the unit creates"),
        ("http.port", "set http_port in the role's table"),
        ("transport.port", "set transport_port in the role's table"),
        (
            "cluster.initial_master_nodes",
            "esfleet sets it for the first bootstrap only",
        ),
        (
            "cluster.initial_cluster_manager_nodes",
            "esfleet sets it for the first bootstrap only",
        ),
        ("bootstrap.memory_lock", "set memory_lock = true at the top level"),
        ("http.host", "nodes bind to 127.0.0.1 and their machine's address"),
        ("http.bind_host", "nodes bind to 127.0.0.1 and their machine's address"),
        ("http.publish_host", "nodes publish their machine's address"),
        ("http.publish_port", "set http_port in the role's table"),
        ("transport.host", "nodes bind to 127.0.0.1 and their machine's address"),
        (
            "transport.bind_host",
            "nodes bind to 127.0.0.1 and their machine's address",
        ),
        ("transport.publish_host", "nodes publish their machine's address"),
        ("transport.publish_port", "set transport_port in the role's table"),
        ("node.master", "legacy role flag; the role tables set node.roles"),
        (
            "node.cluster_manager",
            "legacy role flag; the role tables set node.roles",
        ),
        ("node.data", "legacy role flag; the role tables set node.roles"),
        ("node.ingest", "legacy role flag; the role tables set node.roles"),
        ("node.voting_only", "legacy role flag; the role tables set node.roles"),
    ];
    const PREFIXES: &[(&str, &str)] = &[
        ("network.", "nodes bind to 127.0.0.1 and their machine's address"),
        (
            "discovery.",
            "seed hosts come from the masters' placements (unicast_hosts.txt)",
        ),
        (
            "cluster.routing.allocation.awareness.",
            "zone awareness is forced over the cluster's zones = [...]",
        ),
    ];
    EXACT
        .iter()
        .find(|(k, _)| *k == key)
        .or_else(|| PREFIXES.iter().find(|(p, _)| key.starts_with(p)))
        .map(|(_, why)| *why)
}

/// Absolute paths go unquoted into unit files, `systemd-nspawn --bind=src:dst` and
/// `sh -c` lines, so they are kept to characters none of those treat specially.
fn check_path(key: &str, path: &str) -> Result<(), SpecError> {
    let bad = |why: &str| {
        SpecError::invalid(
            key,
            format!(
                "{key} = {path:?} {why}; write an absolute path such as {:?}",
                default_path(key)
            ),
        )
    };
    if !path.starts_with('/') {
        return Err(bad("is not an absolute path"));
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err(bad("ends with \"/\""));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '-' | '+' | '@')))
    {
        return Err(bad(&format!(
            "contains {c:?} (paths are written into unit files unquoted: letters, digits and /_.-+@ only)"
        )));
    }
    if path.split('/').any(|seg| seg == ".." || seg == ".") || path.contains("//") {
        return Err(bad("has \".\", \"..\" or \"//\" in it"));
    }
    Ok(())
}

fn default_path(key: &str) -> &'static str {
    match key {
        "exec" => DEFAULT_EXEC,
        "config_template" => DEFAULT_CONFIG_TEMPLATE,
        "image" => DEFAULT_IMAGE,
        "http.ca_file" => "/etc/elasticsearch/certs/http-ca.pem",
        "http.credentials_file" => "/etc/esfleet/es/logs.credentials",
        _ => DEFAULT_DATA_ROOT,
    }
}

impl ClusterSpec {
    pub fn role(&self, role: Role) -> &RoleSpec {
        match role {
            Role::Master => &self.master,
            Role::Data => &self.data,
            Role::Coordinating => &self.coordinating,
        }
    }

    pub fn role_mut(&mut self, role: Role) -> &mut RoleSpec {
        match role {
            Role::Master => &mut self.master,
            Role::Data => &mut self.data,
            Role::Coordinating => &mut self.coordinating,
        }
    }

    /// The template prefix and node-name prefix of a role: `logs-m`.
    pub fn prefix(&self, role: Role) -> String {
        format!("{}-{}", self.name, role.letter())
    }

    /// `logs-d3`.
    pub fn node_name(&self, role: Role, ordinal: u32) -> String {
        format!("{}{ordinal}", self.prefix(role))
    }

    /// The master nodes' names, `logs-m1 ..= logs-m<count>`
    /// (`cluster.initial_master_nodes`).
    pub fn master_names(&self) -> Vec<String> {
        (1..=self.master.count)
            .map(|i| self.node_name(Role::Master, i))
            .collect()
    }

    /// Checks every rule of `cluster.toml` on a spec, also one read back from JSON. Errors
    /// name the key (`master.heap`); [`parse_spec`] adds its position in the file.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_name()?;
        let mut seen = Vec::new();
        for (i, z) in self.zones.iter().enumerate() {
            let key = format!("zones.{i}");
            if z.is_empty() {
                return Err(SpecError::invalid(key, "zones holds an empty string; remove it"));
            }
            if let Some(c) = z
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':')))
            {
                return Err(SpecError::invalid(
                    key,
                    format!("zone {z:?} contains {c:?}; a zone is letters, digits and _.-: (as in the machines' zone metadata)"),
                ));
            }
            if seen.contains(&z) {
                return Err(SpecError::invalid(key, format!("zone {z:?} is listed twice in zones")));
            }
            seen.push(z);
        }
        if !(self.user.len() <= 32
            && self.user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && self
                .user
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
        {
            return Err(SpecError::invalid(
                "user",
                format!(
                    "user = {:?} is not a user name; use lower-case letters, digits, _ and - (at most 32), as in \"elasticsearch\"",
                    self.user
                ),
            ));
        }
        check_path("data_root", &self.data_root)?;
        check_path("config_template", &self.config_template)?;
        match self.runtime {
            Runtime::Plain => check_path("exec", &self.exec)?,
            Runtime::Nspawn => check_path("image", &self.image)?,
        }
        if self.runtime == Runtime::Nspawn && self.image == "/" {
            return Err(SpecError::invalid(
                "image",
                "image = \"/\" would copy the host's root filesystem into every node",
            ));
        }
        for (k, v) in &self.env {
            let key = format!("env.{k}");
            if k.is_empty()
                || k.starts_with(|c: char| c.is_ascii_digit())
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(SpecError::invalid(
                    key,
                    format!("environment variable name {k:?} is not valid; use letters, digits and _, not starting with a digit"),
                ));
            }
            let (opts, conf) = (self.flavor.java_opts_env(), self.flavor.path_conf_env());
            if k.starts_with("ESFLEET_") || k == opts || k == conf {
                return Err(SpecError::invalid(
                    key,
                    format!("{k} is set by esfleet (ESFLEET_* by the agent, {opts} from heap, {conf} to the rendered config); remove it from [env]"),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(SpecError::invalid(
                    key,
                    format!("the value of {k} contains a control character (a newline?); keep it on one line"),
                ));
            }
        }
        self.validate_roles()?;
        self.validate_http()?;
        for (k, v) in &self.settings {
            let key = format!("settings.{k}");
            if k.is_empty()
                || k.split('.').any(str::is_empty)
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                return Err(SpecError::invalid(
                    key,
                    format!("{k:?} is not an Elasticsearch setting name (dotted words of letters, digits, _ and -)"),
                ));
            }
            if let Some(why) = owned_setting(k) {
                return Err(SpecError::invalid(
                    key,
                    format!("setting {k:?} is managed by esfleet and cannot be set in [settings]: {why}"),
                ));
            }
            let scalar = |v: &serde_json::Value| {
                matches!(
                    v,
                    serde_json::Value::String(_) | serde_json::Value::Number(_) | serde_json::Value::Bool(_)
                )
            };
            let ok = match v {
                serde_json::Value::Array(items) => items.iter().all(scalar),
                other => scalar(other),
            };
            if !ok {
                return Err(SpecError::invalid(
                    key,
                    format!("setting {k:?} must be a string, number, boolean or an array of those"),
                ));
            }
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), SpecError> {
        for (i, f) in self.config_files.iter().enumerate() {
            let key = format!("config_files.{i}");
            let plain = !f.is_empty()
                && !f.starts_with('.')
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !plain {
                return Err(SpecError::invalid(
                    key,
                    format!("config_files entry {f:?} is not a plain name in config_template (letters, digits, ._-, not starting with a dot; no paths)"),
                ));
            }
            if RESERVED_CONFIG_FILES.contains(&f.as_str()) {
                return Err(SpecError::invalid(
                    key,
                    format!("{f} is written or copied by esfleet already; remove it from config_files"),
                ));
            }
            if self.config_files[..i].contains(f) {
                return Err(SpecError::invalid(key, format!("{f} is listed twice in config_files")));
            }
        }
        if let Some(f) = &self.http.ca_file {
            check_path("http.ca_file", f)?;
        }
        if let Some(f) = &self.http.credentials_file {
            check_path("http.credentials_file", f)?;
            if self.http.ca_file.is_none() {
                return Err(SpecError::invalid(
                    "http.credentials_file",
                    "credentials are sent only over https: set http.ca_file to the CA that signed the nodes' HTTP certificates",
                ));
            }
        }
        Ok(())
    }

    fn validate_name(&self) -> Result<(), SpecError> {
        let name = &self.name;
        if !(name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        {
            return Err(SpecError::invalid(
                "name",
                format!("name = {name:?} is not a cluster name; use a lower-case letter followed by lower-case letters and digits, as in \"logs\""),
            ));
        }
        for role in Role::ALL {
            let count = self.role(role).count.max(1);
            let longest = self.node_name(role, count);
            if longest.len() > MAX_NODE_NAME {
                let room = MAX_NODE_NAME.saturating_sub(longest.len() - name.len());
                let key = if self.role(role).count > 1 {
                    format!("{}.count", role.as_str())
                } else {
                    "name".to_string()
                };
                return Err(SpecError::invalid(
                    key,
                    format!(
                        "node name {longest:?} is {} characters; node names are systemd-nspawn machine names and may be at most {MAX_NODE_NAME}, so with {count} {} node(s) the cluster name can have at most {room} characters",
                        longest.len(),
                        role.as_str(),
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_roles(&self) -> Result<(), SpecError> {
        if self.master.count == 0 {
            return Err(SpecError::invalid(
                "master.count",
                "a cluster needs master-eligible nodes: set count = 3 in [master] (an odd number, one per zone)",
            ));
        }
        if self.data.count == 0 {
            return Err(SpecError::invalid(
                "data.count",
                "a cluster needs data nodes to hold its shards: set count in [data] (at least 1)",
            ));
        }
        let mut ports: Vec<(u16, String)> = Vec::new();
        for role in Role::ALL {
            let r = role.as_str();
            let spec = self.role(role);
            if spec.heap_bytes > MAX_HEAP_BYTES {
                return Err(SpecError::invalid(
                    format!("{r}.heap"),
                    format!(
                        "heap {} is above 31g, where the JVM loses compressed object pointers; use at most \"31g\"",
                        jvm_size(spec.heap_bytes)
                    ),
                ));
            }
            if !spec.heap_bytes.is_multiple_of(KIB) {
                return Err(SpecError::invalid(
                    format!("{r}.heap"),
                    format!(
                        "heap of {} bytes is not a whole number of KiB, which the JVM requires",
                        spec.heap_bytes
                    ),
                ));
            }
            if spec.memory_bytes > 0 {
                if spec.heap_bytes == 0 {
                    return Err(SpecError::invalid(
                        format!("{r}.memory"),
                        format!(
                            "memory {} leaves no heap (the heap is at most half the memory); give at least \"2m\", realistically \"1g\" or more",
                            jvm_size(spec.memory_bytes)
                        ),
                    ));
                }
                if spec.heap_bytes > spec.memory_bytes / 2 {
                    return Err(SpecError::invalid(
                        format!("{r}.heap"),
                        format!(
                            "heap {} is more than half of memory {}; {} needs the other half for the filesystem cache and off-heap buffers: use at most \"{}\" or raise memory",
                            jvm_size(spec.heap_bytes),
                            jvm_size(spec.memory_bytes),
                            self.flavor.product(),
                            jvm_size(default_heap(spec.memory_bytes)),
                        ),
                    ));
                }
            }
            if spec.count == 0 {
                continue;
            }
            for (what, port) in [("http_port", spec.http_port), ("transport_port", spec.transport_port)] {
                let key = format!("{r}.{what}");
                if port == 0 {
                    let message = format!("{key} = 0 is not a port; use 1 to 65535");
                    return Err(SpecError::invalid(key, message));
                }
                if let Some((_, other)) = ports.iter().find(|(p, _)| *p == port) {
                    return Err(SpecError::invalid(
                        key.clone(),
                        format!(
                            "{key} = {port} is also {other}; nodes of different roles can share a host, so every role needs its own ports"
                        ),
                    ));
                }
                ports.push((port, key));
            }
        }
        Ok(())
    }
}
