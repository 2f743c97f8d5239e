//! Unit names with systemd's (and fleet's) rules: `[a-zA-Z0-9:_.@-]+` plus a unit-type
//! suffix, at most 234 characters, never `/` or `..`. A name is checked once, at the edge,
//! and a [`UnitName`] is valid from then on: the agent builds file paths from it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest unit name. systemd's limit is 255 bytes (`UNIT_NAME_MAX` is 256 with the
/// terminating NUL), and a host's file names are at most 255 bytes, but the agent also
/// writes files named after the unit with suffixes: the drop-in directory (`<unit>.d`) and
/// temporary files while writing atomically (`.<unit>.esfleet-tmp-<pid>`, 21 bytes more
/// with a 7-digit pid). A longer name could be stored but never installed on any host, so
/// it is refused where it enters.
pub const MAX_UNIT_NAME: usize = 255 - ".".len() - ".esfleet-tmp-".len() - 7;

/// The unit types systemd knows.
pub const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("unit name is empty")]
    Empty,
    #[error("unit name {0:?} is longer than {MAX_UNIT_NAME} characters")]
    TooLong(String),
    #[error("unit name {name:?} contains {ch:?}; allowed are letters, digits and ':_.@-'")]
    BadChar { name: String, ch: char },
    #[error("unit name {0:?} contains '..'")]
    DotDot(String),
    #[error("unit name {0:?} has no unit type suffix (one of .service, .socket, .timer, ...)")]
    NoType(String),
    #[error("unit name {0:?} has an empty name before the '@' or the suffix")]
    EmptyPrefix(String),
}

/// A valid systemd unit name: `foo.service`, a template `foo@.service` or an instance
/// `foo@bar.service`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnitName(String);

impl UnitName {
    pub fn new(name: &str) -> Result<UnitName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_UNIT_NAME {
            let mut shown: String = name.chars().take(40).collect();
            shown.push('…');
            return Err(NameError::TooLong(shown));
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-')))
        {
            return Err(NameError::BadChar {
                name: name.to_string(),
                ch,
            });
        }
        if name.contains("..") {
            return Err(NameError::DotDot(name.to_string()));
        }
        let Some((stem, ty)) = name.rsplit_once('.') else {
            return Err(NameError::NoType(name.to_string()));
        };
        if !UNIT_TYPES.contains(&ty) {
            return Err(NameError::NoType(name.to_string()));
        }
        let prefix = stem.split_once('@').map_or(stem, |(p, _)| p);
        if prefix.is_empty() {
            return Err(NameError::EmptyPrefix(name.to_string()));
        }
        Ok(UnitName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `service` for `foo@bar.service`.
    pub fn unit_type(&self) -> &str {
        self.0.rsplit_once('.').map(|(_, t)| t).unwrap_or_default()
    }

    /// The name without the type suffix: `foo@bar` (systemd's `%N`).
    pub fn stem(&self) -> &str {
        self.0.rsplit_once('.').map(|(s, _)| s).unwrap_or(&self.0)
    }

    /// `foo` for `foo@bar.service` and for `foo.service` (systemd's `%p`).
    pub fn prefix(&self) -> &str {
        let stem = self.stem();
        stem.split_once('@').map_or(stem, |(p, _)| p)
    }

    /// `Some("bar")` for `foo@bar.service`, `Some("")` for the template `foo@.service`,
    /// `None` for a plain unit (systemd's `%i`).
    pub fn instance(&self) -> Option<&str> {
        self.stem().split_once('@').map(|(_, i)| i)
    }

    /// A template (`foo@.service`) cannot run itself; its instances can.
    pub fn is_template(&self) -> bool {
        self.instance() == Some("")
    }

    pub fn is_instance(&self) -> bool {
        matches!(self.instance(), Some(i) if !i.is_empty())
    }

    /// The template an instance comes from: `foo@.service` for `foo@bar.service`.
    pub fn template(&self) -> Option<UnitName> {
        if !self.is_instance() {
            return None;
        }
        Some(UnitName(format!("{}@.{}", self.prefix(), self.unit_type())))
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for UnitName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnitName::new(s)
    }
}

impl TryFrom<String> for UnitName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        UnitName::new(&s)
    }
}

impl From<UnitName> for String {
    fn from(n: UnitName) -> String {
        n.0
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Machine ids are systemd's: 32 lowercase hex characters (`/etc/machine-id`). They are
/// used in keys and in file names, so nothing else is accepted.
pub fn validate_machine_id(id: &str) -> Result<(), String> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(format!(
            "machine id {id:?} is not 32 lowercase hex characters (as in /etc/machine-id)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_systemd_names() {
        for n in [
            "a.service",
            "es-data@3.service",
            "es-data@.service",
            "x:y_z.timer",
            "a.b.mount",
        ] {
            UnitName::new(n).unwrap();
        }
        let n = UnitName::new("es-data@3.service").unwrap();
        assert_eq!(
            (n.prefix(), n.instance(), n.stem(), n.unit_type()),
            ("es-data", Some("3"), "es-data@3", "service")
        );
        assert_eq!(n.template().unwrap().as_str(), "es-data@.service");
        assert!(UnitName::new("es-data@.service").unwrap().is_template());
        assert_eq!(UnitName::new("plain.service").unwrap().instance(), None);
    }

    #[test]
    fn the_longest_name_fits_every_file_the_agent_names_after_it() {
        assert_eq!(MAX_UNIT_NAME, 234);
        let longest = format!("{}.service", "a".repeat(MAX_UNIT_NAME - ".service".len()));
        UnitName::new(&longest).unwrap();
        let tmp = format!(".{longest}.esfleet-tmp-{}", 4_194_304); // Linux's largest pid
        assert!(tmp.len() <= 255, "{}", tmp.len());
        let one_more = format!("a{longest}");
        assert!(matches!(UnitName::new(&one_more), Err(NameError::TooLong(_))));
    }

    #[test]
    fn rejects_hostile_names() {
        for n in [
            "",
            "../../etc/passwd.service",
            "a/b.service",
            "..service",
            "a b.service",
            "foo",
            "foo.exe",
            "@x.service",
            ".service",
            "a\0.service",
            "é.service",
        ] {
            assert!(UnitName::new(n).is_err(), "{n:?} accepted");
        }
        assert!(UnitName::new(&format!("{}.service", "a".repeat(300))).is_err());
        assert!(serde_json::from_str::<UnitName>("\"../x.service\"").is_err());
    }

    #[test]
    fn machine_ids() {
        assert!(validate_machine_id("0123456789abcdef0123456789abcdef").is_ok());
        assert!(validate_machine_id("../etc").is_err());
        assert!(validate_machine_id("0123456789ABCDEF0123456789abcdef").is_err());
    }
}
