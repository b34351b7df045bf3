//! GLUE task definitions and loaders for the standard `glue_data/<TASK>/{train,dev}.tsv` files.
//!
//! The paper evaluates every searched architecture by its dev score on the GLUE tasks (CoLA, SST-2,
//! MRPC, STS-B, QQP, MNLI matched/mismatched, QNLI, RTE), fine-tuning for a task-dependent number of
//! epochs (§ experimental setup: 20 for the small tasks, 5 for SST-2/QNLI, 2 for MNLI/QQP). This
//! module reads the files written by the original GLUE download script into [`Example`]s.
//!
//! # File format
//!
//! GLUE TSVs are *not* CSV-quoted: a row is split on `'\t'` and nothing else, so a `"` is an
//! ordinary character (MRPC and MNLI contain unbalanced quotes that a CSV reader would swallow).
//! A UTF-8 BOM at the start of the file (MRPC has one) is stripped, CRLF line ends are accepted,
//! and trailing empty lines are skipped; an empty line *between* rows is an error. Text fields are
//! kept verbatim (SST-2 sentences keep their trailing space, as in the Hugging Face release).
//!
//! Every task but CoLA has a header line; its columns are looked up by name (case-insensitively),
//! falling back to the standard position when the name is absent. Tasks with a fixed layout
//! require every row to have exactly as many fields as the header, so a stray tab inside a
//! sentence is reported instead of silently shifting the fields. MNLI rows may carry extra
//! columns (genre, parses, the five annotator labels); its gold label is the last column.
//!
//! # Label ids
//!
//! Class ids follow the Hugging Face `nyu-mll/glue` release, so predictions and checkpoints are
//! interchangeable with models fine-tuned there:
//!
//! | task | ids |
//! |---|---|
//! | CoLA, SST-2, MRPC, QQP | the file's `0` / `1` |
//! | MNLI (both dev sets) | `entailment` = 0, `neutral` = 1, `contradiction` = 2 |
//! | QNLI, RTE | `entailment` = 0, `not_entailment` = 1 |
//! | STS-B | a score in `0..=5` ([`Label::Score`]) |
//!
//! Column numbers in this module and in its error messages are 0-based.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

mod task;
pub use task::{ParseTaskError, Split, Task};

/// The gold answer of one example.
#[derive(Clone, Debug, PartialEq)]
pub enum Label {
    /// A class id in `0..task.num_labels()`, numbered as in the module docs.
    Class(usize),
    /// A similarity score in `0..=5` (STS-B).
    Score(f32),
}

/// One GLUE example: one or two texts and the gold label.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// The first (or only) text, verbatim from the file.
    pub text_a: String,
    /// The second text for pair tasks; `None` for CoLA and SST-2.
    pub text_b: Option<String>,
    /// The gold label.
    pub label: Label,
}

/// What went wrong while reading a GLUE file. Every variant names the file; row errors also name
/// the 1-based line (`path:line`).
#[derive(Debug, thiserror::Error)]
pub enum GlueError {
    /// The file does not exist.
    #[error(
        "{}: GLUE file not found; expected the GLUE download layout <data>/<TASK>/train.tsv and \
         <data>/<TASK>/dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv), with <TASK> one of \
         CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE",
        path.display()
    )]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// Any other I/O failure while opening or reading the file.
    #[error("{}: cannot read GLUE file: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line is not valid UTF-8.
    #[error("{}:{line}: line is not valid UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The file has no rows at all.
    #[error("{}: file is empty (expected {what})", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
        /// What the file should have held.
        what: &'static str,
    },
    /// The file has a header line but no examples.
    #[error("{}: file has a header but no examples", path.display())]
    NoExamples {
        /// The file.
        path: PathBuf,
    },
    /// An empty line between rows.
    #[error("{}:{line}: empty line between rows", path.display())]
    EmptyLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A row is too short to hold a column the task needs.
    #[error(
        "{}:{line}: missing column {column} ({name}): the row has {found} tab-separated fields, \
         expected {expected}",
        path.display()
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 0-based index of the missing column.
        column: usize,
        /// What the column holds (its header name).
        name: String,
        /// Number of fields in the row.
        found: usize,
        /// Number of fields the row should have had (at least).
        expected: usize,
    },
    /// A row of a fixed-layout task has more (or, without a missing needed column, fewer) fields
    /// than the header; usually a stray tab inside a sentence.
    #[error(
        "{}:{line}: row has {found} tab-separated fields but the header has {expected} \
         (a stray tab inside a text?)",
        path.display()
    )]
    FieldCount {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Number of fields in the row.
        found: usize,
        /// Number of fields in the header.
        expected: usize,
    },
    /// A class label that the task does not know.
    #[error("{}:{line}: bad label {value:?} in column {column}; expected one of {expected}", path.display())]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 0-based column of the label.
        column: usize,
        /// The text found.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// An STS-B score that is not a number in `0..=5`.
    #[error(
        "{}:{line}: bad score {value:?} in column {column}: {reason}",
        path.display()
    )]
    BadScore {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 0-based column of the score.
        column: usize,
        /// The text found.
        value: String,
        /// Why it was rejected (non-numeric or out of range).
        reason: &'static str,
    },
}

/// The path of a task's split under `data_dir` in the GLUE download layout:
/// `<data_dir>/<dir_name>/train.tsv` or `dev.tsv`, except the MNLI dev sets
/// (`dev_matched.tsv` for [`Task::Mnli`], `dev_mismatched.tsv` for [`Task::MnliMm`]).
pub fn split_path(data_dir: &Path, task: Task, split: Split) -> PathBuf {
    let file = match (task, split) {
        (_, Split::Train) => "train.tsv",
        (Task::Mnli, Split::Dev) => "dev_matched.tsv",
        (Task::MnliMm, Split::Dev) => "dev_mismatched.tsv",
        (_, Split::Dev) => "dev.tsv",
    };
    data_dir.join(task.dir_name()).join(file)
}

/// Loads one split of a task from a GLUE data directory (see [`split_path`]).
pub fn load(data_dir: &Path, task: Task, split: Split) -> Result<Vec<Example>, GlueError> {
    load_file(&split_path(data_dir, task, split), task)
}

/// Loads a GLUE TSV file in the given task's format (see the module docs for the rules).
pub fn load_file(path: &Path, task: Task) -> Result<Vec<Example>, GlueError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => GlueError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => GlueError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let lines = read_lines(BufReader::new(file), path)?;
    parse_lines(&lines, path, task)
}

/// Reads all lines with their 1-based numbers, BOM and `\r` stripped, trailing empty lines dropped.
fn read_lines(mut reader: impl BufRead, path: &Path) -> Result<Vec<(usize, String)>, GlueError> {
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| GlueError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        number += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        let mut bytes: &[u8] = &buf;
        if number == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| GlueError::NotUtf8 {
            path: path.to_path_buf(),
            line: number,
        })?;
        lines.push((number, text.to_string()));
    }
    while lines.last().is_some_and(|(_, l)| l.is_empty()) {
        lines.pop();
    }
    Ok(lines)
}

/// How to find one needed column.
#[derive(Clone, Copy)]
struct ColumnSpec {
    /// Header names, any of which identifies the column (compared case-insensitively).
    names: &'static [&'static str],
    /// Standard 0-based position, used without a header or when no name matches.
    index: usize,
}

/// Where a task's fields live and how the label is parsed.
struct Layout {
    has_header: bool,
    /// Number of fields of a headerless file (CoLA); with a header, the header's width is used.
    fixed_width: Option<usize>,
    /// Rows may have more fields than needed (MNLI); the label is then the last field.
    label_is_last: bool,
    text_a: ColumnSpec,
    text_b: Option<ColumnSpec>,
    label: ColumnSpec,
    kind: LabelKind,
}

#[derive(Clone, Copy)]
enum LabelKind {
    /// `0` or `1`.
    Binary,
    /// `entailment` / `not_entailment`.
    TwoWayNli,
    /// `entailment` / `neutral` / `contradiction`.
    ThreeWayNli,
    /// A float in `0..=5`.
    Score,
}

const fn col(names: &'static [&'static str], index: usize) -> ColumnSpec {
    ColumnSpec { names, index }
}

fn layout(task: Task) -> Layout {
    let headed = |text_a, text_b, label, kind| Layout {
        has_header: true,
        fixed_width: None,
        label_is_last: false,
        text_a,
        text_b,
        label,
        kind,
    };
    match task {
        Task::Cola => Layout {
            has_header: false,
            fixed_width: Some(4),
            label_is_last: false,
            text_a: col(&["sentence"], 3),
            text_b: None,
            label: col(&["label"], 1),
            kind: LabelKind::Binary,
        },
        Task::Sst2 => headed(
            col(&["sentence"], 0),
            None,
            col(&["label"], 1),
            LabelKind::Binary,
        ),
        Task::Mrpc => headed(
            col(&["#1 String"], 3),
            Some(col(&["#2 String"], 4)),
            col(&["Quality"], 0),
            LabelKind::Binary,
        ),
        Task::Stsb => headed(
            col(&["sentence1"], 7),
            Some(col(&["sentence2"], 8)),
            col(&["score"], 9),
            LabelKind::Score,
        ),
        Task::Qqp => headed(
            col(&["question1"], 3),
            Some(col(&["question2"], 4)),
            col(&["is_duplicate"], 5),
            LabelKind::Binary,
        ),
        Task::Mnli | Task::MnliMm => Layout {
            label_is_last: true,
            ..headed(
                col(&["sentence1"], 8),
                Some(col(&["sentence2"], 9)),
                // Only used for its name in messages: the gold label is each row's last field.
                col(&["gold_label"], usize::MAX),
                LabelKind::ThreeWayNli,
            )
        },
        Task::Qnli => headed(
            col(&["question"], 1),
            Some(col(&["sentence"], 2)),
            col(&["label"], 3),
            LabelKind::TwoWayNli,
        ),
        Task::Rte => headed(
            col(&["sentence1"], 1),
            Some(col(&["sentence2"], 2)),
            col(&["label"], 3),
            LabelKind::TwoWayNli,
        ),
    }
}

/// The resolved position of a needed column, with the name used in messages.
struct Resolved {
    index: usize,
    name: String,
}

fn resolve(spec: ColumnSpec, header: Option<&[&str]>) -> Resolved {
    if let Some(header) = header {
        for want in spec.names {
            if let Some(i) = header
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(want))
            {
                return Resolved {
                    index: i,
                    name: header[i].trim().to_string(),
                };
            }
        }
    }
    Resolved {
        index: spec.index,
        name: spec.names[0].to_string(),
    }
}

fn parse_lines(
    lines: &[(usize, String)],
    path: &Path,
    task: Task,
) -> Result<Vec<Example>, GlueError> {
    let layout = layout(task);
    let Some(((_, first), _)) = lines.split_first() else {
        return Err(GlueError::EmptyFile {
            path: path.to_path_buf(),
            what: if layout.has_header {
                "a header line and examples"
            } else {
                "examples"
            },
        });
    };
    let header: Option<Vec<&str>> = layout.has_header.then(|| first.split('\t').collect());
    let rows = if layout.has_header {
        &lines[1..]
    } else {
        lines
    };
    if rows.is_empty() {
        return Err(GlueError::NoExamples {
            path: path.to_path_buf(),
        });
    }

    let text_a = resolve(layout.text_a, header.as_deref());
    let text_b = layout.text_b.map(|s| resolve(s, header.as_deref()));
    let label = resolve(layout.label, header.as_deref());
    // Every needed column, for "missing column" messages, in index order.
    let mut needed: Vec<&Resolved> = vec![&text_a];
    needed.extend(text_b.as_ref());
    if !layout.label_is_last {
        needed.push(&label);
    }
    needed.sort_by_key(|r| r.index);
    let max_needed = needed.last().map_or(0, |r| r.index);
    let width = if layout.label_is_last {
        None
    } else {
        layout.fixed_width.or(header.as_ref().map(Vec::len))
    };
    // A row must hold every needed column; with the label last it needs one more, distinct field.
    let min_fields = width.unwrap_or(max_needed + 1 + usize::from(layout.label_is_last));

    let mut examples = Vec::with_capacity(rows.len());
    let mut fields: Vec<&str> = Vec::new();
    for (line, text) in rows {
        let line = *line;
        if text.is_empty() {
            return Err(GlueError::EmptyLine {
                path: path.to_path_buf(),
                line,
            });
        }
        fields.clear();
        fields.extend(text.split('\t'));
        let found = fields.len();
        if found < min_fields {
            let missing = needed.iter().find(|r| r.index >= found);
            return Err(match missing {
                Some(r) => GlueError::MissingColumn {
                    path: path.to_path_buf(),
                    line,
                    column: r.index,
                    name: r.name.clone(),
                    found,
                    expected: min_fields,
                },
                None if layout.label_is_last => GlueError::MissingColumn {
                    path: path.to_path_buf(),
                    line,
                    column: found,
                    name: label.name.clone(),
                    found,
                    expected: min_fields,
                },
                None => GlueError::FieldCount {
                    path: path.to_path_buf(),
                    line,
                    found,
                    expected: min_fields,
                },
            });
        }
        if let Some(width) = width {
            if found != width {
                return Err(GlueError::FieldCount {
                    path: path.to_path_buf(),
                    line,
                    found,
                    expected: width,
                });
            }
        }
        let label_col = if layout.label_is_last {
            found - 1
        } else {
            label.index
        };
        let label = parse_label(layout.kind, fields[label_col], path, line, label_col)?;
        examples.push(Example {
            text_a: fields[text_a.index].to_string(),
            text_b: text_b.as_ref().map(|r| fields[r.index].to_string()),
            label,
        });
    }
    Ok(examples)
}

fn parse_label(
    kind: LabelKind,
    raw: &str,
    path: &Path,
    line: usize,
    column: usize,
) -> Result<Label, GlueError> {
    let value = raw.trim();
    let bad = |expected| GlueError::BadLabel {
        path: path.to_path_buf(),
        line,
        column,
        value: raw.to_string(),
        expected,
    };
    let class = match kind {
        LabelKind::Binary => match value {
            "0" => 0,
            "1" => 1,
            _ => return Err(bad("\"0\", \"1\"")),
        },
        LabelKind::TwoWayNli => match value {
            "entailment" => 0,
            "not_entailment" => 1,
            _ => return Err(bad("\"entailment\", \"not_entailment\"")),
        },
        LabelKind::ThreeWayNli => match value {
            "entailment" => 0,
            "neutral" => 1,
            "contradiction" => 2,
            _ => return Err(bad("\"entailment\", \"neutral\", \"contradiction\"")),
        },
        LabelKind::Score => {
            let bad_score = |reason| GlueError::BadScore {
                path: path.to_path_buf(),
                line,
                column,
                value: raw.to_string(),
                reason,
            };
            let score: f32 = value.parse().map_err(|_| bad_score("not a number"))?;
            if !(0.0..=5.0).contains(&score) {
                return Err(bad_score("outside 0..=5"));
            }
            return Ok(Label::Score(score));
        }
    };
    Ok(Label::Class(class))
}

/// The GLUE folder: the one given (`--data`, a sweep's `data`), else $PETNAS_DATA, data/glue, ../shared/data/glue.
pub fn find_data(given: Option<&Path>) -> crate::error::Result<PathBuf> {
    if let Some(d) = given {
        if !d.is_dir() {
            return Err(crate::error::TrainError::Invalid(format!(
                "data folder {} does not exist",
                d.display()
            )));
        }
        return Ok(d.to_path_buf());
    }
    let mut tried = Vec::new();
    let env = std::env::var_os("PETNAS_DATA").map(PathBuf::from);
    for c in env.into_iter().chain([
        PathBuf::from("data/glue"),
        PathBuf::from("../shared/data/glue"),
    ]) {
        if c.is_dir() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(crate::error::TrainError::Invalid(format!(
        "no GLUE data found (looked in {}): pass --data DIR (or `data = ...` in the sweep) with <DIR>/<TASK>/train.tsv and dev.tsv, or set PETNAS_DATA",
        tried.join(", ")
    )))
}

#[cfg(test)]
mod tests;
