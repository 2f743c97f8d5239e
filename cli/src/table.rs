//! Aligned text columns (fleetctl's style: a header line, no borders), with optional
//! colour on some cells. Widths are counted on the plain text, so colour never shifts a
//! column; the last column is not padded.

/// The colours the CLI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Green,
    Yellow,
    Red,
    Dim,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Red => "31",
            Color::Dim => "2",
        }
    }
}

/// `text` in `color` when `enabled` (ANSI SGR), else as it is.
pub fn paint(text: &str, color: Option<Color>, enabled: bool) -> String {
    match color {
        Some(c) if enabled => format!("\x1b[{}m{text}\x1b[0m", c.code()),
        _ => text.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub color: Option<Color>,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Cell {
        let text = text.into();
        Cell {
            text: if text.is_empty() { "-".into() } else { text },
            color: None,
        }
    }

    pub fn colored(text: impl Into<String>, color: Option<Color>) -> Cell {
        Cell {
            color,
            ..Cell::plain(text)
        }
    }
}

/// Columns separated by two spaces; `legend` adds the header line.
pub fn render(headers: &[&str], rows: &[Vec<Cell>], legend: bool, color: bool) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = if legend {
        headers.iter().map(|h| h.chars().count()).collect()
    } else {
        vec![0; n]
    };
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.text.chars().count());
        }
    }
    let mut out = String::with_capacity(rows.len() * (widths.iter().sum::<usize>() + 2 * n + 1));
    let mut line = |cells: &mut dyn Iterator<Item = (&str, Option<Color>)>| {
        for (i, (text, c)) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(&paint(text, c, color));
            if i + 1 < n {
                let pad = widths[i].saturating_sub(text.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    if legend {
        line(&mut headers.iter().map(|h| (*h, None)));
    }
    for row in rows {
        line(&mut row.iter().map(|c| (c.text.as_str(), c.color)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_on_plain_text_and_does_not_pad_the_last_column() {
        let rows = vec![
            vec![Cell::plain("a.service"), Cell::colored("active", Some(Color::Green))],
            vec![Cell::plain("bb.service"), Cell::plain("")],
        ];
        assert_eq!(
            render(&["UNIT", "ACTIVE"], &rows, true, false),
            "UNIT        ACTIVE\na.service   active\nbb.service  -\n"
        );
        assert_eq!(
            render(&["UNIT", "ACTIVE"], &rows, false, true),
            "a.service   \x1b[32mactive\x1b[0m\nbb.service  -\n"
        );
    }
}
