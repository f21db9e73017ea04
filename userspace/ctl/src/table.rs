//! A tiny aligned-column formatter for human output.

/// Horizontal alignment of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// Rows of cells printed with each column as wide as its widest cell,
/// columns separated by two spaces, trailing spaces trimmed.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these `(header, alignment)` columns.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Table {
            columns: columns
                .iter()
                .map(|(h, a)| ((*h).to_string(), *a))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank, extra cells are ignored.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.columns.len())
            .map(Into::into)
            .collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
    }

    /// The header line and the rows, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let header: Vec<&str> = self.columns.iter().map(|(h, _)| h.as_str()).collect();
        let mut out = String::new();
        for line in std::iter::once(header).chain(
            self.rows
                .iter()
                .map(|r| r.iter().map(String::as_str).collect()),
        ) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - width(cell));
                match self.columns[i].1 {
                    Align::Left => {
                        text.push_str(cell);
                        text.push_str(&pad);
                    }
                    Align::Right => {
                        text.push_str(&pad);
                        text.push_str(cell);
                    }
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width of a cell (characters; the cells are ASCII in practice).
fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&[("Name", Align::Left), ("Count", Align::Right)]);
        t.row(["ip4-lookup", "7"]);
        t.row(["a", "12345678"]);
        assert_eq!(
            t.render(),
            "Name           Count\n\
             ip4-lookup         7\n\
             a           12345678\n"
        );
    }

    #[test]
    fn pads_short_rows_and_trims() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Left), ("C", Align::Right)]);
        t.row(["x"]);
        t.row(["", "yy", "1", "ignored"]);
        assert_eq!(t.render(), "A  B   C\nx\n   yy  1\n");
    }

    #[test]
    fn empty_table_is_header_only() {
        let t = Table::new(&[("Count", Align::Right), ("Node", Align::Left)]);
        assert_eq!(t.render(), "Count  Node\n");
    }
}
