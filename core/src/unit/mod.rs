//! Unit files: systemd's syntax ([`UnitFile`]) and the `[X-Fleet]` section
//! ([`parse_options`] into [`crate::options::XFleet`]).
//!
//! [`validate_unit`] is the one call the Fleet service, the CLI and the agent make on a
//! unit's text: size limit, syntax, options. A template (`foo@.service`) validates like
//! any unit (with `%i` empty); callers refuse to start it, and validate each instance again
//! with the instance's name on the template's text. Error messages are complete sentences
//! that point at a line; callers prefix the unit's name.

mod file;
mod xfleet;

#[cfg(test)]
mod tests;

use globset::{Glob, GlobSet, GlobSetBuilder};

pub use file::{Assignment, UnitFile, UnitFileError, MAX_UNIT_FILE_BYTES};
pub use xfleet::{
    expand_specifiers, parse_bool, parse_cpu_millis, parse_options, parse_size, split_words, OptionsError, SECTION,
};

use crate::name::UnitName;
use crate::options::XFleet;

/// A unit file that passed [`validate_unit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedUnit {
    pub options: XFleet,
    /// The file has an `[Install]` section: the agent enables the unit on its machine.
    pub has_install: bool,
}

/// Why a unit file was refused. Display is the inner error's sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(transparent)]
    File(#[from] UnitFileError),
    #[error(transparent)]
    Options(#[from] OptionsError),
}

impl UnitError {
    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            UnitError::File(e) => e.line(),
            UnitError::Options(e) => Some(e.line()),
        }
    }
}

/// Checks a unit's text for the unit called `name`: at most [`MAX_UNIT_FILE_BYTES`],
/// systemd syntax with at least one section, and a valid `[X-Fleet]` section.
pub fn validate_unit(name: &UnitName, text: &str) -> Result<ValidatedUnit, UnitError> {
    let file = UnitFile::parse(text)?;
    let options = parse_options(name, &file)?;
    Ok(ValidatedUnit {
        options,
        has_install: file.has_section("Install"),
    })
}

/// The glob dialect of `Conflicts=` and `StartAfter=` (globset's: `*`, `?`, `[...]`,
/// `{a,b}`), so every caller matches unit names the way validation checked the patterns.
/// Patterns from a validated unit always compile; any that do not are left out.
pub fn glob_set<S: AsRef<str>>(patterns: &[S]) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        if let Ok(glob) = Glob::new(p.as_ref()) {
            builder.add(glob);
        }
    }
    builder.build().unwrap_or_else(|_| GlobSet::empty())
}
