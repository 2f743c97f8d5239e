//! Unit arguments: files are read and validated here with the coordinators' own parser
//! (`esfleet_core::unit::validate_unit`), so a mistake is reported as `file:line` with the
//! offending text before anything is sent; other arguments are unit names or globs.

use std::path::Path;

use esfleet_core::unit::{validate_unit, UnitError, UnitFileError};
use esfleet_core::UnitName;
use esfleet_proto::fleet as pb;

use crate::error::CliError;

/// The arguments of `submit`/`load`/`start`, sorted out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnitArgs {
    /// Unit files to submit (read and validated), and instance names without a file.
    pub submit: Vec<pb::UnitFile>,
    /// What to act on: every file's unit name, and the names and globs given.
    pub names: Vec<String>,
}

/// Whether an argument names a file: it exists as a file, or it looks like a path.
fn is_file_arg(arg: &str) -> bool {
    Path::new(arg).is_file() || arg.contains('/')
}

/// Whether an argument is a glob (`*`, `?`, `[...]`), passed to the server as it is.
pub fn is_glob(arg: &str) -> bool {
    arg.contains(['*', '?', '['])
}

/// Checks a unit name or glob given on the command line (a usage error if it is neither).
pub fn check_name(arg: &str) -> Result<(), CliError> {
    if is_glob(arg) {
        return Ok(());
    }
    UnitName::new(arg).map(|_| ()).map_err(|e| {
        CliError::Usage(format!(
            "{e}; give a unit name such as hello.service, a glob such as 'es-data@*', or the path of a unit file"
        ))
    })
}

/// Reads and validates the unit file at `path`; its name is the file's name.
pub fn read_unit_file(path: &str) -> Result<pb::UnitFile, CliError> {
    let p = Path::new(path);
    let text = std::fs::read_to_string(p).map_err(|e| {
        let fix = match e.kind() {
            std::io::ErrorKind::NotFound => "; check the path (a unit that is already submitted is given by name)",
            std::io::ErrorKind::InvalidData => "; a unit file must be UTF-8 text",
            _ => "",
        };
        CliError::Failed(format!("{path}: cannot read the unit file: {e}{fix}"))
    })?;
    let file_name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = UnitName::new(file_name).map_err(|e| {
        CliError::Failed(format!(
            "{path}: the file's name is the unit's name, and {e}; rename the file, e.g. to hello.service"
        ))
    })?;
    validate_unit(&name, &text).map_err(|e| CliError::Failed(describe(path, &text, &e)))?;
    Ok(pb::UnitFile {
        name: name.to_string(),
        text,
    })
}

/// `path:line[:column]: message`, then the offending line, as compilers print it.
pub fn describe(path: &str, text: &str, e: &UnitError) -> String {
    let (line, column) = match e {
        UnitError::File(UnitFileError::Syntax { line, column, .. }) => (Some(*line), Some(*column)),
        other => (other.line(), None),
    };
    let msg = e.to_string();
    let Some(line) = line else {
        return format!("{path}: {msg}");
    };
    // The inner message starts with "line N: " or "line N, column C: ", already said here.
    let msg = strip_position(&msg, line);
    let at = match column {
        Some(c) => format!("{path}:{line}:{c}"),
        None => format!("{path}:{line}"),
    };
    let mut out = format!("{at}: {msg}");
    if let Some(src) = text.lines().nth(line - 1) {
        out.push_str(&format!("\n{line:>5} | {src}"));
        if let Some(c) = column.filter(|c| *c > 0) {
            out.push_str(&format!("\n      | {}^", " ".repeat(c - 1)));
        }
    }
    out
}

fn strip_position(msg: &str, line: usize) -> &str {
    let prefix = format!("line {line}");
    let Some(rest) = msg.strip_prefix(&prefix) else {
        return msg;
    };
    if let Some(rest) = rest.strip_prefix(": ") {
        return rest;
    }
    if let Some(rest) = rest.strip_prefix(", column ") {
        if let Some((_, after)) = rest.split_once(": ") {
            return after;
        }
    }
    msg
}

/// Sorts the arguments of `submit`/`load`/`start`: files are read and validated (all of
/// them, every problem reported at once), names and globs are checked.
pub fn unit_args(args: &[String], allow_globs: bool) -> Result<UnitArgs, CliError> {
    let mut out = UnitArgs::default();
    let mut problems = Vec::new();
    for arg in args {
        if is_file_arg(arg) {
            match read_unit_file(arg) {
                Ok(f) => {
                    out.names.push(f.name.clone());
                    out.submit.push(f);
                }
                Err(e) => problems.push(e.to_string()),
            }
        } else if is_glob(arg) && !allow_globs {
            return Err(CliError::Usage(format!(
                "{arg:?}: submit takes unit files or instance names, not globs"
            )));
        } else {
            check_name(arg)?;
            out.names.push(arg.clone());
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        let mut msg = problems.join("\n");
        if n > 1 {
            msg.push_str(&format!("\n{n} unit files have errors; nothing was submitted"));
        } else {
            msg.push_str("\nnothing was submitted");
        }
        return Err(CliError::Failed(msg));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    #[test]
    fn a_syntax_error_points_at_file_line_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "bad.service",
            "[Unit]\nDescription=x\n[Service\nExecStart=/bin/true\n",
        );
        let e = read_unit_file(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{p}:3")), "{e}");
        assert!(e.contains("    3 | [Service"), "{e}");
    }

    #[test]
    fn an_unknown_xfleet_key_suggests_the_nearest() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "x.service",
            "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetdata=zone=a\n",
        );
        let e = read_unit_file(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{p}:4: unknown [X-Fleet] key \"MachineMetdata\"")),
            "{e}"
        );
        assert!(e.contains("MachineMetadata"), "{e}");
        assert!(e.contains("    4 | MachineMetdata=zone=a"), "{e}");
    }

    #[test]
    fn every_bad_file_is_reported_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir, "a.service", "no section\n");
        let b = write(&dir, "b.service", "[X-Fleet]\nGlobal=maybe\n");
        let e = unit_args(&[a, b], true).unwrap_err().to_string();
        assert!(e.contains("a.service:1") && e.contains("b.service:2"), "{e}");
        assert!(e.ends_with("2 unit files have errors; nothing was submitted"), "{e}");
        let e = unit_args(&["hello".into()], true).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let ok = unit_args(&["es-data@3.service".into(), "es-*".into()], true).unwrap();
        assert_eq!(ok.names, ["es-data@3.service", "es-*"]);
        assert!(ok.submit.is_empty());
    }

    #[test]
    fn the_example_units_validate() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../units");
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "service") {
                read_unit_file(p.to_str().unwrap()).unwrap();
            }
        }
    }
}
