//! systemd's unit-file syntax (systemd.syntax(7)), read the way systemd's own
//! `config_parse()` reads it, with every refusal naming the line, the column and the text.
//!
//! Why not `systemd-unit-edit` alone: version 0.1.4 reports errors without positions
//! (`positioned_errors()` is always empty), and it disagrees with systemd on inputs that
//! matter to us. It refuses indented assignments and comments (systemd strips them), keeps
//! a comment line inside a continuation as part of the value (systemd skips it), and
//! silently swallows the following lines into the section name when a header lacks its
//! `]`. It also takes an escaped backslash at the end of a line (`foo\\`) as a
//! continuation, merging the next assignment into the value. Each of those is pinned by a
//! test in `tests.rs` (`crate_quirks_*`). So this scanner, which follows systemd's
//! algorithm line by line, is the authority; the tests use the crate as an oracle on
//! well-formed files and check both agree.
//!
//! What this module accepts is systemd's syntax, more strictly: where systemd logs
//! "ignoring" and carries on (an assignment outside any section, a line without `=`), we
//! refuse, because a unit that silently lost a line is worse than one that was refused.

/// A unit file is at most this large. systemd allows more, but a unit file is a page of
/// text, and every copy of it is stored in the coordinator and sent to agents.
pub const MAX_UNIT_FILE_BYTES: usize = 256 * 1024;

/// What is wrong with a unit file's syntax. Display is a complete sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitFileError {
    #[error("the unit file is {len} bytes; the limit is {MAX_UNIT_FILE_BYTES} bytes (256 KiB)")]
    TooLarge { len: usize },
    #[error("the unit file has no sections; a unit needs at least one, such as [Unit] or [Service]")]
    NoSections,
    /// `line` and `column` count from 1; the column counts characters on that line.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        /// The offending (logical) line, whitespace-trimmed.
        text: String,
        /// What is wrong and what to do, mentioning `text`.
        message: String,
    },
}

impl UnitFileError {
    /// The 1-based line an error points at, if it points at one.
    pub fn line(&self) -> Option<usize> {
        match self {
            UnitFileError::Syntax { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// One `Key=value` assignment, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub section: String,
    pub key: String,
    /// The value as systemd sees it before any option-specific parsing: continuations
    /// joined (each `\` replaced by a space), comment lines inside them dropped, leading
    /// and trailing whitespace removed. Quotes and escapes are kept as written; an empty
    /// value is the empty assignment that resets a list.
    pub value: String,
    /// 1-based line where the assignment starts.
    pub line: usize,
}

/// A parsed unit file: its sections and assignments in file order. Sections with the same
/// name are merged, as systemd merges them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitFile {
    sections: Vec<String>,
    /// Where each of `sections` first appears (1-based).
    section_lines: Vec<usize>,
    assignments: Vec<Assignment>,
}

impl UnitFile {
    /// Parses `text` (at most [`MAX_UNIT_FILE_BYTES`]); the first syntax error is returned.
    pub fn parse(text: &str) -> Result<UnitFile, UnitFileError> {
        if text.len() > MAX_UNIT_FILE_BYTES {
            return Err(UnitFileError::TooLarge { len: text.len() });
        }
        let mut file = UnitFile::default();
        let mut current: Option<String> = None;
        for logical in logical_lines(text)? {
            match classify(&logical)? {
                Line::Section(name) => {
                    if !file.sections.contains(&name) {
                        file.sections.push(name.clone());
                        file.section_lines.push(logical.first_line());
                    }
                    current = Some(name);
                }
                Line::Assignment { key, value } => {
                    let Some(section) = &current else {
                        return Err(logical.error(
                            0,
                            format!(
                                "{:?} comes before any section header; put it under a header such as [Unit]",
                                logical.trimmed()
                            ),
                        ));
                    };
                    file.assignments.push(Assignment {
                        section: section.clone(),
                        key,
                        value,
                        line: logical.first_line(),
                    });
                }
            }
        }
        if file.sections.is_empty() {
            return Err(UnitFileError::NoSections);
        }
        Ok(file)
    }

    /// Section names, each once, in first-seen order.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(String::as_str)
    }

    /// The 1-based line where section `name` first appears.
    pub fn section_line(&self, name: &str) -> Option<usize> {
        self.sections
            .iter()
            .position(|s| s == name)
            .map(|i| self.section_lines[i])
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s == name)
    }

    /// Every assignment in file order, empty ones included.
    pub fn assignments(&self) -> &[Assignment] {
        &self.assignments
    }

    /// The assignments of `key` in `section` that count: those after the last empty
    /// assignment (`Key=` resets the list, as in systemd).
    pub fn effective(&self, section: &str, key: &str) -> Vec<&Assignment> {
        let mut out = Vec::new();
        for a in self.assignments.iter().filter(|a| a.section == section && a.key == key) {
            if a.value.is_empty() {
                out.clear();
            } else {
                out.push(a);
            }
        }
        out
    }

    /// The values of `key` in `section` after empty-assignment resets, raw (quotes kept).
    pub fn values(&self, section: &str, key: &str) -> Vec<String> {
        self.effective(section, key)
            .into_iter()
            .map(|a| a.value.clone())
            .collect()
    }

    /// The value that counts for a single-valued key: the last one, unless reset after it.
    pub fn value(&self, section: &str, key: &str) -> Option<String> {
        self.effective(section, key).last().map(|a| a.value.clone())
    }
}

/// One physical line's share of a logical line.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Byte offset in the logical text where this physical line's text starts.
    start: usize,
    /// 1-based physical line number.
    line: usize,
}

/// A logical line: physical lines joined by continuations.
#[derive(Debug)]
struct Logical {
    text: String,
    segments: Vec<Segment>,
}

impl Logical {
    fn first_line(&self) -> usize {
        self.segments[0].line
    }

    fn trimmed(&self) -> &str {
        self.text.trim_matches(is_ws)
    }

    /// Maps a byte offset in `text` to (line, 1-based character column).
    fn position(&self, offset: usize) -> (usize, usize) {
        let seg = self
            .segments
            .iter()
            .rev()
            .find(|s| s.start <= offset)
            .unwrap_or(&self.segments[0]);
        let end = offset.min(self.text.len());
        let column = self.text.get(seg.start..end).map_or(0, |s| s.chars().count()) + 1;
        (seg.line, column)
    }

    /// An error at byte `offset` of the trimmed text.
    fn error(&self, offset: usize, message: String) -> UnitFileError {
        let lead = self.text.len() - self.text.trim_start_matches(is_ws).len();
        let (line, column) = self.position(lead + offset);
        UnitFileError::Syntax {
            line,
            column,
            text: self.trimmed().to_string(),
            message,
        }
    }
}

/// systemd's WHITESPACE for unit files: space, tab, and the line ends we already split on.
fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// True when the line ends in a backslash that is not itself escaped (systemd walks the
/// line toggling an "escaped" flag; only an odd run of trailing backslashes continues).
fn ends_in_continuation(line: &str) -> bool {
    let run = line.bytes().rev().take_while(|&b| b == b'\\').count();
    run % 2 == 1
}

/// Splits `text` into logical lines as systemd's `config_parse()` does: a UTF-8 BOM is
/// dropped, lines end at `\n` or `\r\n`, comment lines (first non-blank character `#` or
/// `;`) are skipped even inside a continuation, and a line ending in an unescaped `\` is
/// joined to the next with the backslash replaced by a space. Blank logical lines are
/// dropped. Control characters other than tab are refused.
fn logical_lines(text: &str) -> Result<Vec<Logical>, UnitFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut pending: Option<Logical> = None;
    for (idx, raw) in text.split('\n').enumerate() {
        let line_no = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some((col, ch)) = line.chars().enumerate().find(|(_, c)| c.is_control() && *c != '\t') {
            let shown = line.trim_matches(is_ws).escape_debug().to_string();
            return Err(UnitFileError::Syntax {
                line: line_no,
                column: col + 1,
                message: format!(
                    "control character U+{:04X} in \"{shown}\" is not allowed; unit files are plain text",
                    ch as u32
                ),
                text: shown,
            });
        }
        let first = line.trim_start_matches(is_ws).chars().next();
        if matches!(first, Some('#' | ';')) {
            continue;
        }
        let logical = pending.get_or_insert_with(|| Logical {
            text: String::new(),
            segments: Vec::new(),
        });
        logical.segments.push(Segment {
            start: logical.text.len(),
            line: line_no,
        });
        if ends_in_continuation(line) {
            logical.text.push_str(&line[..line.len() - 1]);
            logical.text.push(' ');
            continue;
        }
        logical.text.push_str(line);
        if let Some(done) = pending.take() {
            if !done.trimmed().is_empty() {
                out.push(done);
            }
        }
    }
    // A continuation on the last line simply ends there, as in systemd.
    if let Some(done) = pending.take() {
        if !done.trimmed().is_empty() {
            out.push(done);
        }
    }
    Ok(out)
}

enum Line {
    Section(String),
    Assignment { key: String, value: String },
}

/// Characters systemd's `string_is_safe()` refuses in a section name, plus the brackets.
fn bad_section_char(c: char) -> bool {
    matches!(c, '"' | '\'' | '\\' | '[' | ']')
}

fn classify(logical: &Logical) -> Result<Line, UnitFileError> {
    let l = logical.trimmed();
    if l.starts_with('[') {
        let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
            let message = match l.find(']') {
                Some(_) => format!(
                    "text after the section header in {l:?}; a header line is only \"[Name]\", put the rest on its own line"
                ),
                None => format!("section header {l:?} has no closing \"]\""),
            };
            let offset = l.find(']').map_or(0, |at| at + 1);
            return Err(logical.error(offset, message));
        };
        if name.trim_matches(is_ws).is_empty() {
            return Err(logical.error(1, format!("empty section name in {l:?}; write e.g. [Service]")));
        }
        if let Some((at, ch)) = name.char_indices().find(|(_, c)| bad_section_char(*c)) {
            return Err(logical.error(
                1 + at,
                format!("section name in {l:?} contains {ch:?}, which systemd does not allow"),
            ));
        }
        return Ok(Line::Section(name.to_string()));
    }
    if l.starts_with(".include") {
        return Err(logical.error(
            0,
            format!("{l:?}: .include is not supported (systemd removed it); use a drop-in or copy the settings"),
        ));
    }
    let Some(eq) = l.find('=') else {
        return Err(logical.error(0, format!("{l:?} is not an assignment; expected Key=value")));
    };
    let key = l[..eq].trim_matches(is_ws);
    if key.is_empty() {
        return Err(logical.error(0, format!("assignment {l:?} has no key before \"=\"")));
    }
    let key_char_ok = |i: usize, c: char| {
        if i == 0 {
            c.is_ascii_alphabetic()
        } else {
            c.is_ascii_alphanumeric() || c == '-' || c == '_'
        }
    };
    if let Some((at, ch)) = key.char_indices().find(|&(i, c)| !key_char_ok(i, c)) {
        let rule = if at == 0 {
            "must start with a letter"
        } else {
            "may contain only letters, digits, \"-\" and \"_\""
        };
        return Err(logical.error(at, format!("key {key:?} in {l:?} has {ch:?}: a key {rule}")));
    }
    Ok(Line::Assignment {
        key: key.to_string(),
        value: l[eq + 1..].trim_matches(is_ws).to_string(),
    })
}
