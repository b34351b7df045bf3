//! Reading a user's data file into rows of cells: CSV and TSV (RFC 4180 quoting, as pandas,
//! spreadsheets and `datasets` write them; the `csv` crate), JSON Lines (one object per line,
//! `datasets`' `to_json` default; `serde_json`) and Parquet (`datasets`' and the hub's format;
//! polars). The format comes from the extension: `.csv`, `.tsv`, `.jsonl` / `.ndjson` / `.json`,
//! `.parquet`.
//!
//! Every error names the file, and a row error also its place: `file:LINE` for the text formats
//! (1-based, the header is line 1), `file: row N` for Parquet (1-based, data rows only).

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// One value of a table.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Missing (`null` in JSON or Parquet).
    Null,
    /// Text (every CSV/TSV value is text).
    Str(String),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// The file formats petnas reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated, RFC 4180 quoting, header row.
    Csv,
    /// Tab-separated, RFC 4180 quoting, header row.
    Tsv,
    /// One JSON object per line.
    JsonLines,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format from a path's extension.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        Ok(match ext.as_str() {
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "jsonl" | "ndjson" | "json" => Format::JsonLines,
            "parquet" => Format::Parquet,
            _ => {
                return Err(TrainError::Invalid(format!(
                    "{}: unknown file format `.{ext}`: expected .csv, .tsv, .jsonl (.ndjson, .json: JSON Lines) or .parquet",
                    path.display()
                )))
            }
        })
    }
}

/// A whole file: column names and rows, each row as long as `columns`.
#[derive(Clone, Debug)]
pub struct Table {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Column names in file order.
    pub columns: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<Cell>>,
    /// The line of each row (text formats), for messages.
    lines: Vec<usize>,
}

impl Table {
    /// Where row `i` is, for a message: `file:LINE` or `file: row N`.
    pub fn at(&self, i: usize) -> String {
        match self.format {
            Format::Parquet => format!("{}: row {}", self.path.display(), i + 1),
            _ => format!("{}:{}", self.path.display(), self.lines[i]),
        }
    }

    /// The index of column `name`, or an error naming the columns present.
    pub fn column(&self, name: &str, role: &str) -> Result<usize> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            TrainError::Invalid(format!(
                "{}: no column `{name}` ({role}); the columns are: {}",
                self.path.display(),
                self.columns
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(format!("{}: {msg}", path.display()))
}

/// Reads a table in the format its extension names. An empty file, or one with a header and no
/// rows, is an error.
pub fn read(path: &Path) -> Result<Table> {
    let format = Format::of(path)?;
    if !path.is_file() {
        return Err(invalid(path, "file not found"));
    }
    let t = match format {
        Format::Csv => read_delimited(path, b',', format)?,
        Format::Tsv => read_delimited(path, b'\t', format)?,
        Format::JsonLines => read_jsonl(path)?,
        Format::Parquet => read_parquet(path)?,
    };
    if t.columns.is_empty() {
        return Err(invalid(
            path,
            "file is empty (expected a header row and examples)",
        ));
    }
    if t.rows.is_empty() {
        return Err(invalid(path, "file has a header but no examples"));
    }
    Ok(t)
}

fn read_delimited(path: &Path, delimiter: u8, format: Format) -> Result<Table> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .from_path(path)
        .map_err(|e| invalid(path, e))?;
    let headers = rdr.headers().map_err(|e| csv_error(path, e))?.clone();
    let mut columns: Vec<String> = headers.iter().map(str::to_string).collect();
    if let Some(first) = columns.first_mut() {
        // A UTF-8 byte-order mark (Excel writes one) is not part of the first name.
        *first = first.trim_start_matches('\u{feff}').to_string();
    }
    if columns.len() == 1 && columns[0].is_empty() {
        columns.clear();
    }
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                lines.push(rec.position().map_or(0, |p| p.line() as usize));
                rows.push(rec.iter().map(|s| Cell::Str(s.to_string())).collect());
            }
            Err(e) => return Err(csv_error(path, e)),
        }
    }
    Ok(Table {
        path: path.to_path_buf(),
        format,
        columns,
        rows,
        lines,
    })
}

fn csv_error(path: &Path, e: csv::Error) -> TrainError {
    let line = e.position().map(|p| p.line());
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("row has {len} fields but the header has {expected_len} (an unquoted separator inside a text?)")
        }
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        _ => e.to_string(),
    };
    match line {
        Some(l) => TrainError::Invalid(format!("{}:{l}: {what}", path.display())),
        None => invalid(path, what),
    }
}

fn json_cell(v: serde_json::Value) -> std::result::Result<Cell, String> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Bool(b),
        Value::String(s) => Cell::Str(s),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => Cell::Float(n.as_f64().ok_or("a number out of range")?),
        },
        Value::Array(_) | Value::Object(_) => {
            return Err("a nested array or object (expected text, a number or a boolean)".into())
        }
    })
}

fn read_jsonl(path: &Path) -> Result<Table> {
    let text = std::fs::read(path).map_err(|e| invalid(path, e))?;
    let text = String::from_utf8(text).map_err(|e| {
        invalid(
            path,
            format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            TrainError::Invalid(format!(
                "{}:{n}: not a JSON object: {e} (JSON Lines: one object per line)",
                path.display()
            ))
        })?;
        let serde_json::Value::Object(map) = v else {
            return Err(TrainError::Invalid(format!(
                "{}:{n}: not a JSON object (JSON Lines: one object per line)",
                path.display()
            )));
        };
        if columns.is_empty() {
            columns = map.keys().cloned().collect();
            if columns.is_empty() {
                return Err(TrainError::Invalid(format!(
                    "{}:{n}: an empty object",
                    path.display()
                )));
            }
        }
        let mut row = vec![Cell::Null; columns.len()];
        let mut map = map;
        for (j, c) in columns.iter().enumerate() {
            if let Some(v) = map.remove(c) {
                row[j] = json_cell(v).map_err(|e| {
                    TrainError::Invalid(format!("{}:{n}: key `{c}`: {e}", path.display()))
                })?;
            }
        }
        if let Some(extra) = map.keys().next() {
            return Err(TrainError::Invalid(format!(
                "{}:{n}: key `{extra}` is not in the first line's keys ({})",
                path.display(),
                columns.join(", ")
            )));
        }
        rows.push(row);
        lines.push(n);
    }
    if columns.is_empty() {
        return Err(invalid(
            path,
            "file is empty (expected one JSON object per line)",
        ));
    }
    Ok(Table {
        path: path.to_path_buf(),
        format: Format::JsonLines,
        columns,
        rows,
        lines,
    })
}

fn read_parquet(path: &Path) -> Result<Table> {
    use polars::prelude::*;
    let file = std::fs::File::open(path).map_err(|e| invalid(path, e))?;
    let df = ParquetReader::new(file)
        .finish()
        .map_err(|e| invalid(path, format!("cannot read Parquet: {e}")))?;
    let columns: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let n = df.height();
    let mut rows: Vec<Vec<Cell>> = vec![Vec::with_capacity(columns.len()); n];
    for c in df.columns() {
        let s = c.as_materialized_series();
        let bad = |e: PolarsError| invalid(path, format!("column `{}`: {e}", s.name()));
        let dt = s.dtype().clone();
        let cells: Vec<Cell> = if dt.is_integer() {
            s.cast(&DataType::Int64)
                .map_err(bad)?
                .i64()
                .map_err(bad)?
                .iter()
                .map(|v| v.map_or(Cell::Null, Cell::Int))
                .collect()
        } else if dt.is_float() {
            s.cast(&DataType::Float64)
                .map_err(bad)?
                .f64()
                .map_err(bad)?
                .iter()
                .map(|v| v.map_or(Cell::Null, Cell::Float))
                .collect()
        } else if dt == DataType::Boolean {
            s.bool()
                .map_err(bad)?
                .iter()
                .map(|v| v.map_or(Cell::Null, Cell::Bool))
                .collect()
        } else {
            // Text, and anything else (categoricals, dates) as its text form.
            let t = s.cast(&DataType::String).map_err(bad)?;
            t.str()
                .map_err(bad)?
                .iter()
                .map(|v| v.map_or(Cell::Null, |x| Cell::Str(x.to_string())))
                .collect()
        };
        for (row, cell) in rows.iter_mut().zip(cells) {
            row.push(cell);
        }
    }
    Ok(Table {
        path: path.to_path_buf(),
        format: Format::Parquet,
        columns,
        rows,
        lines: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn csv_quoting_as_exports_write_it() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "a.csv",
            "\u{feff}text,label\n\"He said \"\"no\"\", twice\",neg\n\"line one\nline two\",pos\nplain,pos\n",
        );
        let t = read(&p).unwrap();
        assert_eq!(t.columns, ["text", "label"]);
        assert_eq!(t.rows[0][0], Cell::Str("He said \"no\", twice".into()));
        assert_eq!(t.rows[1][0], Cell::Str("line one\nline two".into()));
        // The third row starts on line 5 (the second row spans lines 3 and 4).
        assert_eq!(t.at(2), format!("{}:5", p.display()));
        let bad = write(d.path(), "b.csv", "text,label\na,b\nc,d,e\n");
        let e = read(&bad).unwrap_err().to_string();
        assert!(
            e.contains("b.csv:3") && e.contains("3 fields but the header has 2"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_types_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "a.jsonl",
            "{\"t\": \"x\", \"y\": 1}\n\n{\"t\": \"z\", \"y\": 2.5}\n{\"t\": null, \"y\": true}\n",
        );
        let t = read(&p).unwrap();
        assert_eq!(
            t.rows,
            vec![
                vec![Cell::Str("x".into()), Cell::Int(1)],
                vec![Cell::Str("z".into()), Cell::Float(2.5)],
                vec![Cell::Null, Cell::Bool(true)],
            ]
        );
        assert_eq!(t.at(1), format!("{}:3", p.display()));
        for (text, needle) in [
            ("{\"t\": \"x\"}\n[1]\n", "a.jsonl:2: not a JSON object"),
            (
                "{\"t\": \"x\"}\n{\"t\": \"x\", \"u\": 1}\n",
                "a.jsonl:2: key `u` is not in the first line's keys",
            ),
            ("{\"t\": [1]}\n", "a.jsonl:1: key `t`: a nested array"),
            ("", "file is empty"),
        ] {
            let p = write(d.path(), "a.jsonl", text);
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn empty_header_only_and_unknown_extension() {
        let d = tempfile::tempdir().unwrap();
        for (name, text, needle) in [
            ("e.csv", "", "file is empty"),
            ("h.csv", "text,label\n", "header but no examples"),
            ("h.tsv", "text\tlabel\n", "header but no examples"),
            ("x.xlsx", "", "unknown file format `.xlsx`"),
        ] {
            let p = write(d.path(), name, text);
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(name), "{name}: {e}");
        }
        let e = read(&d.path().join("missing.csv")).unwrap_err().to_string();
        assert!(e.contains("missing.csv: file not found"), "{e}");
    }

    #[test]
    fn parquet_columns_by_type() {
        use polars::prelude::*;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.parquet");
        let mut df = df!(
            "sentence" => ["a", "b"],
            "label" => [1i64, 0],
            "score" => [0.5f64, 4.0],
        )
        .unwrap();
        ParquetWriter::new(std::fs::File::create(&p).unwrap())
            .finish(&mut df)
            .unwrap();
        let t = read(&p).unwrap();
        assert_eq!(t.columns, ["sentence", "label", "score"]);
        assert_eq!(
            t.rows[1],
            vec![Cell::Str("b".into()), Cell::Int(0), Cell::Float(4.0)]
        );
        assert_eq!(t.at(1), format!("{}: row 2", p.display()));
        let e = t.column("text", "text column").unwrap_err().to_string();
        assert!(
            e.contains("no column `text`") && e.contains("`sentence`, `label`, `score`"),
            "{e}"
        );
    }
}
