//! Rendering results: aligned tables for people, JSON or YAML (the proto3 JSON mapping, the same
//! shape `policy apply` reads) for programs.

use anyhow::Result;
use serde::Serialize;

use crate::args::Output;

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints `value` as JSON or YAML, or the table for `Output::Table`.
pub fn print<T: Serialize>(output: Output, value: &T, table: impl FnOnce() -> Table) -> Result<()> {
    match output {
        Output::Table => print!("{}", table().render()),
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

/// Prints one item of a stream: a JSON document per line, a YAML document, or the rows of its
/// table (the header only before the first item, while `header` is true).
pub fn print_streamed<T: Serialize>(
    output: Output,
    value: &T,
    header: &mut bool,
    table: impl FnOnce() -> Table,
) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string(value)?),
        Output::Yaml => print!("---\n{}", serde_yaml::to_string(value)?),
        Output::Table => {
            let rendered = table().render();
            let mut lines = rendered.lines();
            let head = lines.next().unwrap_or_default();
            if std::mem::take(header) {
                println!("{head}");
            }
            for line in lines {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// RFC 3339 time of a protobuf timestamp, or "-".
pub fn time(ts: Option<&pbjson_types::Timestamp>) -> String {
    ts.and_then(|ts| time::OffsetDateTime::from_unix_timestamp(ts.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(vec!["NAME", "REVISION"]);
        table.row(vec!["a-long-name".into(), "3".into()]);
        table.row(vec!["b".into(), "12".into()]);
        assert_eq!(
            table.render(),
            "NAME         REVISION\na-long-name  3\nb            12\n"
        );
    }

    #[test]
    fn time_formats_rfc3339() {
        let ts = pbjson_types::Timestamp {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(time(Some(&ts)), "1970-01-01T00:00:00Z");
        assert_eq!(time(None), "-");
    }
}
