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

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A GLUE task. MNLI is listed twice because its matched and mismatched dev sets are scored
/// separately; both train on `MNLI/train.tsv`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Task {
    /// Corpus of Linguistic Acceptability (single sentence, Matthews correlation).
    #[serde(rename = "cola")]
    Cola,
    /// Stanford Sentiment Treebank, binary (single sentence, accuracy).
    #[serde(rename = "sst2")]
    Sst2,
    /// Microsoft Research Paraphrase Corpus (pair, accuracy and F1).
    #[serde(rename = "mrpc")]
    Mrpc,
    /// Semantic Textual Similarity Benchmark (pair, regression, Pearson and Spearman).
    #[serde(rename = "stsb")]
    Stsb,
    /// Quora Question Pairs (pair, accuracy and F1).
    #[serde(rename = "qqp")]
    Qqp,
    /// Multi-Genre NLI, matched dev set (pair, 3 classes, accuracy).
    #[serde(rename = "mnli")]
    Mnli,
    /// Multi-Genre NLI, mismatched dev set (pair, 3 classes, accuracy).
    #[serde(rename = "mnli-mm")]
    MnliMm,
    /// Question NLI (pair, accuracy).
    #[serde(rename = "qnli")]
    Qnli,
    /// Recognizing Textual Entailment (pair, accuracy).
    #[serde(rename = "rte")]
    Rte,
}

impl Task {
    /// Every task, in the order of the GLUE leaderboard.
    pub const ALL: [Task; 9] = [
        Task::Cola,
        Task::Sst2,
        Task::Mrpc,
        Task::Stsb,
        Task::Qqp,
        Task::Mnli,
        Task::MnliMm,
        Task::Qnli,
        Task::Rte,
    ];

    /// The short lowercase name used on the command line, in run records and by serde.
    pub fn name(self) -> &'static str {
        match self {
            Task::Cola => "cola",
            Task::Sst2 => "sst2",
            Task::Mrpc => "mrpc",
            Task::Stsb => "stsb",
            Task::Qqp => "qqp",
            Task::Mnli => "mnli",
            Task::MnliMm => "mnli-mm",
            Task::Qnli => "qnli",
            Task::Rte => "rte",
        }
    }

    /// The folder holding the task's files in the GLUE download layout (`MNLI` for both MNLI tasks).
    pub fn dir_name(self) -> &'static str {
        match self {
            Task::Cola => "CoLA",
            Task::Sst2 => "SST-2",
            Task::Mrpc => "MRPC",
            Task::Stsb => "STS-B",
            Task::Qqp => "QQP",
            Task::Mnli | Task::MnliMm => "MNLI",
            Task::Qnli => "QNLI",
            Task::Rte => "RTE",
        }
    }

    /// Width of the classification head: 1 for the STS-B regression, 3 for MNLI, otherwise 2.
    pub fn num_labels(self) -> usize {
        match self {
            Task::Stsb => 1,
            Task::Mnli | Task::MnliMm => 3,
            _ => 2,
        }
    }

    /// Whether the task is scored as a regression (STS-B only).
    pub fn is_regression(self) -> bool {
        self == Task::Stsb
    }

    /// Fine-tuning epochs used in the paper: 20 for MRPC, RTE, CoLA and STS-B, 5 for SST-2 and
    /// QNLI, 2 for MNLI and QQP.
    pub fn default_epochs(self) -> f64 {
        match self {
            Task::Mrpc | Task::Rte | Task::Cola | Task::Stsb => 20.0,
            Task::Sst2 | Task::Qnli => 5.0,
            Task::Mnli | Task::MnliMm | Task::Qqp => 2.0,
        }
    }

    /// The metric key (as produced by `metrics::glue_metrics`) that selects checkpoints and is
    /// reported: `"mcc"` for CoLA, `"pearson"` for STS-B, `"accuracy"` otherwise.
    pub fn primary_metric(self) -> &'static str {
        match self {
            Task::Cola => "mcc",
            Task::Stsb => "pearson",
            _ => "accuracy",
        }
    }

    /// Whether an example has a second text (`false` only for the single-sentence CoLA and SST-2).
    pub fn has_pair(self) -> bool {
        !matches!(self, Task::Cola | Task::Sst2)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A task name that [`Task::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown GLUE task {given:?}; valid names: cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte \
     (case-insensitive; '-' and '_' are optional, e.g. SST-2, STS-B, mnli_mm)"
)]
pub struct ParseTaskError {
    /// The name as given.
    pub given: String,
}

impl FromStr for Task {
    type Err = ParseTaskError;

    /// Parses a task name case-insensitively, ignoring `-`, `_` and spaces, so `SST-2`, `sst2`,
    /// `STS-B`, `MNLI-mm` and `mnli_mm` are all accepted, as are the spelled-out MNLI dev set
    /// names (`mnli-matched`, `mnli-mismatched`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        let task = match key.as_str() {
            "cola" => Task::Cola,
            "sst2" | "sst" => Task::Sst2,
            "mrpc" => Task::Mrpc,
            "stsb" | "sts" => Task::Stsb,
            "qqp" => Task::Qqp,
            "mnli" | "mnlim" | "mnlimatched" => Task::Mnli,
            "mnlimm" | "mnlimismatched" => Task::MnliMm,
            "qnli" => Task::Qnli,
            "rte" => Task::Rte,
            _ => {
                return Err(ParseTaskError {
                    given: s.to_string(),
                })
            }
        };
        Ok(task)
    }
}

/// Which file of a task to read. GLUE test labels are hidden, so only train and dev exist here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `train.tsv`.
    Train,
    /// `dev.tsv` (`dev_matched.tsv` / `dev_mismatched.tsv` for MNLI).
    Dev,
}

impl Split {
    /// `"train"` or `"dev"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "petnas-glue-test-{}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                nanos
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        /// Writes `<dir>/<TASK>/<file>` and returns its path.
        fn write(&self, task_dir: &str, file: &str, contents: &[u8]) -> PathBuf {
            let dir = self.0.join(task_dir);
            std::fs::create_dir_all(&dir).expect("create task dir");
            let path = dir.join(file);
            std::fs::write(&path, contents).expect("write test file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ex(a: &str, b: Option<&str>, label: Label) -> Example {
        Example {
            text_a: a.to_string(),
            text_b: b.map(str::to_string),
            label,
        }
    }

    /// Loads `contents` as `<TASK>/<file>` and returns the error's message (panics on success).
    fn error_of(task: Task, file: &str, contents: &str) -> (String, GlueError) {
        let tmp = TempDir::new();
        let path = tmp.write(task.dir_name(), file, contents.as_bytes());
        match load_file(&path, task) {
            Ok(v) => panic!(
                "{task} {file}: expected an error, loaded {} examples",
                v.len()
            ),
            Err(e) => (e.to_string(), e),
        }
    }

    // ---------- Task ----------

    #[test]
    fn task_names_round_trip_through_from_str_and_serde() {
        for task in Task::ALL {
            assert_eq!(task.name().parse::<Task>(), Ok(task));
            let json = format!("\"{}\"", task.name());
            assert_eq!(serde_json::to_string(&task).expect("serialize"), json);
            assert_eq!(
                serde_json::from_str::<Task>(&json).expect("deserialize"),
                task
            );
        }
        assert!(serde_json::from_str::<Task>("\"MNLI-mm\"").is_err());
    }

    #[test]
    fn task_from_str_accepts_common_spellings() {
        let cases = [
            ("SST-2", Task::Sst2),
            ("sst-2", Task::Sst2),
            ("sst2", Task::Sst2),
            ("STS-B", Task::Stsb),
            ("stsb", Task::Stsb),
            ("sts_b", Task::Stsb),
            ("CoLA", Task::Cola),
            ("MRPC", Task::Mrpc),
            ("QQP", Task::Qqp),
            ("MNLI", Task::Mnli),
            ("mnli_matched", Task::Mnli),
            ("mnli-mm", Task::MnliMm),
            ("mnli_mm", Task::MnliMm),
            ("MNLI-mm", Task::MnliMm),
            ("MNLI-MM", Task::MnliMm),
            ("mnli-mismatched", Task::MnliMm),
            ("QNLI", Task::Qnli),
            (" rte ", Task::Rte),
        ];
        for (s, task) in cases {
            assert_eq!(s.parse::<Task>(), Ok(task), "{s:?}");
        }
    }

    #[test]
    fn unknown_task_lists_valid_names() {
        let err = "wnli".parse::<Task>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"wnli\""), "{msg}");
        for task in Task::ALL {
            assert!(msg.contains(task.name()), "{msg} lacks {}", task.name());
        }
        assert!("".parse::<Task>().is_err());
        assert!("mnli-mmm".parse::<Task>().is_err());
    }

    #[test]
    fn task_properties_match_the_paper_setup() {
        use Task::*;
        assert_eq!(Task::ALL.len(), 9);
        for t in [Cola, Sst2, Mrpc, Qqp, Qnli, Rte] {
            assert_eq!(t.num_labels(), 2, "{t}");
            assert!(!t.is_regression());
        }
        assert_eq!(Stsb.num_labels(), 1);
        assert!(Stsb.is_regression());
        assert_eq!(Mnli.num_labels(), 3);
        assert_eq!(MnliMm.num_labels(), 3);
        for t in [Mrpc, Rte, Cola, Stsb] {
            assert_eq!(t.default_epochs(), 20.0, "{t}");
        }
        for t in [Sst2, Qnli] {
            assert_eq!(t.default_epochs(), 5.0, "{t}");
        }
        for t in [Mnli, MnliMm, Qqp] {
            assert_eq!(t.default_epochs(), 2.0, "{t}");
        }
        assert_eq!(Cola.primary_metric(), "mcc");
        assert_eq!(Stsb.primary_metric(), "pearson");
        for t in [Sst2, Mrpc, Qqp, Mnli, MnliMm, Qnli, Rte] {
            assert_eq!(t.primary_metric(), "accuracy", "{t}");
        }
        assert!(!Cola.has_pair() && !Sst2.has_pair());
        for t in [Mrpc, Stsb, Qqp, Mnli, MnliMm, Qnli, Rte] {
            assert!(t.has_pair(), "{t}");
        }
        let dirs: Vec<_> = Task::ALL.iter().map(|t| t.dir_name()).collect();
        assert_eq!(
            dirs,
            ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "MNLI", "QNLI", "RTE"]
        );
    }

    #[test]
    fn split_paths_follow_the_glue_layout() {
        let d = Path::new("/data/glue");
        assert_eq!(
            split_path(d, Task::Rte, Split::Train),
            d.join("RTE/train.tsv")
        );
        assert_eq!(
            split_path(d, Task::Sst2, Split::Dev),
            d.join("SST-2/dev.tsv")
        );
        assert_eq!(
            split_path(d, Task::Mnli, Split::Train),
            d.join("MNLI/train.tsv")
        );
        assert_eq!(
            split_path(d, Task::MnliMm, Split::Train),
            d.join("MNLI/train.tsv")
        );
        assert_eq!(
            split_path(d, Task::Mnli, Split::Dev),
            d.join("MNLI/dev_matched.tsv")
        );
        assert_eq!(
            split_path(d, Task::MnliMm, Split::Dev),
            d.join("MNLI/dev_mismatched.tsv")
        );
        assert_eq!(
            split_path(d, Task::Stsb, Split::Dev),
            d.join("STS-B/dev.tsv")
        );
    }

    // ---------- formats not shipped with the real data ----------

    #[test]
    fn loads_qqp() {
        let tmp = TempDir::new();
        let contents = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n\
            133273\t213221\t213222\tHow is the life of a math student? Could you describe your own experiences?\tWhich level of prepration is enough for the exam jlpt5?\t0\n\
            402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n\
            7\t15\t16\tWhat does \"quote\" mean?\t\t0\n";
        tmp.write("QQP", "train.tsv", contents.as_bytes());
        tmp.write("QQP", "dev.tsv", contents.as_bytes());
        for split in [Split::Train, Split::Dev] {
            let got = load(&tmp.0, Task::Qqp, split).expect("load QQP");
            assert_eq!(
                got,
                vec![
                    ex(
                        "How is the life of a math student? Could you describe your own experiences?",
                        Some("Which level of prepration is enough for the exam jlpt5?"),
                        Label::Class(0)
                    ),
                    ex(
                        "How do I control my horny emotions?",
                        Some("How do you control your horniness?"),
                        Label::Class(1)
                    ),
                    // Quotes are ordinary characters; an empty question is kept as is.
                    ex("What does \"quote\" mean?", Some(""), Label::Class(0)),
                ]
            );
        }
    }

    const MNLI_TRAIN_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label";
    const MNLI_DEV_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label";

    #[test]
    fn loads_mnli_train_and_both_dev_sets() {
        let tmp = TempDir::new();
        let train = format!(
            "{MNLI_TRAIN_HEADER}\n\
             0\t31193\t31193n\tgovernment\t( ( Conceptually cream ) skimming )\t( ( Product and ) geography )\t(ROOT (S))\t(ROOT (S))\tConceptually cream skimming has two basic dimensions - product and geography.\tProduct and geography are what make cream skimming work. \tneutral\tneutral\n\
             1\t101457\t101457e\ttelephone\t( you ( know ) )\t( You ( lose ) )\t(ROOT)\t(ROOT)\tyou know during the season and i guess at at your level uh you lose them to the next level if if they decide to recall the the parent team the Braves decide to call to recall a guy from triple A then a double A guy goes up to replace him and a single A guy goes up to replace him\tYou lose the things to the following level if the people recall.\tentailment\tentailment\n\
             2\t134793\t134793c\tfiction\t( a )\t( b )\t(ROOT)\t(ROOT)\tHe said \"no.\tHe agreed.\tcontradiction\tcontradiction\n"
        );
        let dev_m = format!(
            "{MNLI_DEV_HEADER}\n\
             0\t63735\t63735n\tslate\t( a )\t( b )\t(ROOT)\t(ROOT)\tThe new rights are nice enough\tEveryone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n\
             1\t91383\t91383c\tgovernment\t( a )\t( b )\t(ROOT)\t(ROOT)\tThis site includes a list.\tThe Government Executive articles are not on the site.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"
        );
        let dev_mm = format!(
            "{MNLI_DEV_HEADER}\n\
             0\t75290\t75290c\tletters\t( a )\t( b )\t(ROOT)\t(ROOT)\tYour contribution helped make it possible.\tYour contributions were of no help.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n\
             1\t133794\t133794c\tverbatim\t( a )\t( b )\t(ROOT)\t(ROOT)\tThe answer has nothing to do with their cause.\tDictionaries are indeed exercises.\tentailment\tneutral\tentailment\tentailment\t\tentailment\n"
        );
        tmp.write("MNLI", "train.tsv", train.as_bytes());
        tmp.write("MNLI", "dev_matched.tsv", dev_m.as_bytes());
        tmp.write("MNLI", "dev_mismatched.tsv", dev_mm.as_bytes());

        let got = load(&tmp.0, Task::Mnli, Split::Train).expect("MNLI train");
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            ex(
                "Conceptually cream skimming has two basic dimensions - product and geography.",
                Some("Product and geography are what make cream skimming work. "),
                Label::Class(1)
            )
        );
        assert_eq!(got[1].label, Label::Class(0));
        assert_eq!(
            got[1].text_b.as_deref(),
            Some("You lose the things to the following level if the people recall.")
        );
        assert_eq!(
            got[2],
            ex("He said \"no.", Some("He agreed."), Label::Class(2))
        );
        // Both MNLI tasks train on the same file.
        assert_eq!(
            load(&tmp.0, Task::MnliMm, Split::Train).expect("MNLI-mm train"),
            got
        );

        let m = load(&tmp.0, Task::Mnli, Split::Dev).expect("MNLI dev_matched");
        assert_eq!(
            m,
            vec![
                ex(
                    "The new rights are nice enough",
                    Some("Everyone really likes the newest benefits "),
                    Label::Class(1)
                ),
                ex(
                    "This site includes a list.",
                    Some("The Government Executive articles are not on the site."),
                    Label::Class(2)
                ),
            ]
        );
        let mm = load(&tmp.0, Task::MnliMm, Split::Dev).expect("MNLI dev_mismatched");
        assert_eq!(mm.len(), 2);
        assert_eq!(mm[0].text_a, "Your contribution helped make it possible.");
        assert_eq!(mm[0].label, Label::Class(2));
        // The gold label is the last column even when an annotator label is empty.
        assert_eq!(mm[1].label, Label::Class(0));
    }

    #[test]
    fn mnli_falls_back_to_positions_without_header_names() {
        let header = "a\tb\tc\td\te\tf\tg\th\ti\tj\tk\tl";
        let body = "0\t1\t2\tgenre\t-\t-\t-\t-\tpremise\thypothesis\tneutral\tneutral\n";
        let tmp = TempDir::new();
        let p = tmp.write("MNLI", "train.tsv", format!("{header}\n{body}").as_bytes());
        let got = load_file(&p, Task::Mnli).expect("load");
        assert_eq!(
            got,
            vec![ex("premise", Some("hypothesis"), Label::Class(1))]
        );
    }

    #[test]
    fn mnli_short_row_and_bad_label_are_errors() {
        let short = format!("{MNLI_TRAIN_HEADER}\n0\t1\t2\tgenre\t-\t-\t-\t-\tpremise\n");
        let (msg, err) = error_of(Task::Mnli, "train.tsv", &short);
        assert!(
            matches!(
                err,
                GlueError::MissingColumn {
                    line: 2,
                    column: 9,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            msg.contains("MNLI/train.tsv:2") && msg.contains("sentence2"),
            "{msg}"
        );

        // Premise and hypothesis but no label column after them.
        let no_label =
            format!("{MNLI_TRAIN_HEADER}\n0\t1\t2\tgenre\t-\t-\t-\t-\tpremise\thypothesis\n");
        let (msg, err) = error_of(Task::Mnli, "train.tsv", &no_label);
        assert!(
            matches!(
                err,
                GlueError::MissingColumn {
                    line: 2,
                    column: 10,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(msg.contains("gold_label"), "{msg}");

        let bad = format!(
            "{MNLI_DEV_HEADER}\n0\t1\t2\tg\t-\t-\t-\t-\tp\th\tneutral\tneutral\tneutral\tneutral\tneutral\tneutral\n\
             1\t1\t2\tg\t-\t-\t-\t-\tp\th\tneutral\t\t\t\t\t-\n"
        );
        let (msg, err) = error_of(Task::Mnli, "dev_matched.tsv", &bad);
        assert!(
            matches!(
                err,
                GlueError::BadLabel {
                    line: 3,
                    column: 15,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            msg.contains("dev_matched.tsv:3") && msg.contains("\"-\""),
            "{msg}"
        );
    }

    #[test]
    fn loads_qnli_train() {
        let tmp = TempDir::new();
        tmp.write(
            "QNLI",
            "train.tsv",
            b"index\tquestion\tsentence\tlabel\n\
              0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it, Digimon Tamers takes a darker approach.\tnot_entailment\n\
              1\tWhich missile batteries often have individual launchers several kilometres from one another?\tWhen MANPADS is operated by specialists, batteries may have several dozen teams.\tentailment\n",
        );
        let got = load(&tmp.0, Task::Qnli, Split::Train).expect("QNLI train");
        assert_eq!(
            got,
            vec![
                ex(
                    "When did the third Digimon series begin?",
                    Some("Unlike the two seasons before it, Digimon Tamers takes a darker approach."),
                    Label::Class(1)
                ),
                ex(
                    "Which missile batteries often have individual launchers several kilometres from one another?",
                    Some("When MANPADS is operated by specialists, batteries may have several dozen teams."),
                    Label::Class(0)
                ),
            ]
        );
    }

    #[test]
    fn columns_are_found_by_header_name() {
        // A reordered RTE file: the header names win over the standard positions.
        let tmp = TempDir::new();
        let p = tmp.write(
            "RTE",
            "dev.tsv",
            b"label\tsentence2\tindex\tsentence1\nentailment\thyp\t0\tprem\n",
        );
        assert_eq!(
            load_file(&p, Task::Rte).expect("load"),
            vec![ex("prem", Some("hyp"), Label::Class(0))]
        );
    }

    // ---------- encodings and line ends ----------

    #[test]
    fn bom_crlf_and_trailing_empty_lines_just_work() {
        let tmp = TempDir::new();
        let p = tmp.write(
            "MRPC",
            "dev.tsv",
            b"\xEF\xBB\xBFQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n\
              1\t1\t2\tHe said \" yes .\tShe said \" no \" .\r\n\
              0\t3\t4\tA .\tB .\r\n\r\n\n",
        );
        let got = load_file(&p, Task::Mrpc).expect("load MRPC");
        assert_eq!(
            got,
            vec![
                ex(
                    "He said \" yes .",
                    Some("She said \" no \" ."),
                    Label::Class(1)
                ),
                ex("A .", Some("B ."), Label::Class(0)),
            ]
        );
        // A BOM on a headerless file must not leak into the first field either.
        let p = tmp.write(
            "CoLA",
            "train.tsv",
            b"\xEF\xBB\xBFgj04\t1\t\tA sentence.\r\ngj04\t0\t*\tSentence a.",
        );
        let got = load_file(&p, Task::Cola).expect("load CoLA");
        assert_eq!(
            got,
            vec![
                ex("A sentence.", None, Label::Class(1)),
                ex("Sentence a.", None, Label::Class(0)),
            ]
        );
    }

    #[test]
    fn sst2_keeps_text_verbatim() {
        let tmp = TempDir::new();
        let p = tmp.write(
            "SST-2",
            "dev.tsv",
            b"sentence\tlabel\nit 's a \"charming\" journey . \t1\n",
        );
        assert_eq!(
            load_file(&p, Task::Sst2).expect("load"),
            vec![ex("it 's a \"charming\" journey . ", None, Label::Class(1))]
        );
    }

    // ---------- malformed files ----------

    #[test]
    fn missing_column_names_file_line_and_column() {
        let (msg, err) = error_of(
            Task::Rte,
            "train.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n",
        );
        assert!(
            matches!(
                err,
                GlueError::MissingColumn {
                    line: 3,
                    column: 3,
                    found: 3,
                    expected: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(msg.contains("RTE/train.tsv:3:"), "{msg}");
        assert!(msg.contains("missing column 3 (label)"), "{msg}");

        let (msg, err) = error_of(Task::Cola, "dev.tsv", "gj04\t1\t\tFine.\ngj04\t1\n");
        assert!(
            matches!(
                err,
                GlueError::MissingColumn {
                    line: 2,
                    column: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            msg.contains("CoLA/dev.tsv:2:") && msg.contains("sentence"),
            "{msg}"
        );
    }

    #[test]
    fn extra_tab_is_an_error_not_a_shift() {
        // The second sentence contains a stray tab, which would shift the label otherwise.
        let (msg, err) = error_of(
            Task::Rte,
            "dev.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tpart two\tnot_entailment\n",
        );
        assert!(
            matches!(
                err,
                GlueError::FieldCount {
                    line: 3,
                    found: 5,
                    expected: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(msg.contains("RTE/dev.tsv:3:"), "{msg}");

        let (msg, err) = error_of(Task::Sst2, "train.tsv", "sentence\tlabel\ngood\tstuff\t1\n");
        assert!(
            matches!(err, GlueError::FieldCount { line: 2, .. }),
            "{err:?}"
        );
        assert!(msg.contains("SST-2/train.tsv:2:"), "{msg}");

        let (_, err) = error_of(
            Task::Cola,
            "train.tsv",
            "gj04\t1\t\tFine.\ngj04\t1\t\tA\tB.\n",
        );
        assert!(
            matches!(
                err,
                GlueError::FieldCount {
                    line: 2,
                    found: 5,
                    expected: 4,
                    ..
                }
            ),
            "{err:?}"
        );

        // STS-B: a row one field short ends before the score column.
        let header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore";
        let (msg, err) = error_of(
            Task::Stsb,
            "train.tsv",
            &format!("{header}\n0\tg\tf\t2012\t1\tnone\tnone\tA.\tB.\n"),
        );
        assert!(
            matches!(
                err,
                GlueError::MissingColumn {
                    line: 2,
                    column: 9,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(msg.contains("score"), "{msg}");
    }

    #[test]
    fn bad_labels_are_quoted() {
        let (msg, err) = error_of(
            Task::Sst2,
            "dev.tsv",
            "sentence\tlabel\ngood\t1\nbad\tpositive\n",
        );
        assert!(
            matches!(
                err,
                GlueError::BadLabel {
                    line: 3,
                    column: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            msg.contains("SST-2/dev.tsv:3:") && msg.contains("\"positive\""),
            "{msg}"
        );

        let (msg, _) = error_of(Task::Cola, "train.tsv", "gj04\t2\t\tOdd.\n");
        assert!(
            msg.contains("CoLA/train.tsv:1:") && msg.contains("\"2\""),
            "{msg}"
        );

        // RTE labels are names; a numeric label is rejected rather than guessed.
        let (msg, _) = error_of(
            Task::Rte,
            "dev.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n",
        );
        assert!(
            msg.contains("RTE/dev.tsv:2:")
                && msg.contains("\"1\"")
                && msg.contains("not_entailment"),
            "{msg}"
        );

        let (msg, _) = error_of(
            Task::Qqp,
            "dev.tsv",
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tq1\tq2\tyes\n",
        );
        assert!(
            msg.contains("QQP/dev.tsv:2:") && msg.contains("\"yes\""),
            "{msg}"
        );
    }

    #[test]
    fn stsb_scores_must_be_numbers_in_range() {
        let header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore";
        let row = |score: &str| format!("0\tg\tf\t2012\t1\tnone\tnone\tA.\tB.\t{score}");
        let tmp = TempDir::new();
        let p = tmp.write(
            "STS-B",
            "dev.tsv",
            format!("{header}\n{}\n{}\n", row("5.000"), row("0.25")).as_bytes(),
        );
        let got = load_file(&p, Task::Stsb).expect("load");
        assert_eq!(got[0], ex("A.", Some("B."), Label::Score(5.0)));
        assert_eq!(got[1].label, Label::Score(0.25));

        let (msg, err) = error_of(
            Task::Stsb,
            "dev.tsv",
            &format!("{header}\n{}\n{}\n", row("1.0"), row("n/a")),
        );
        assert!(
            matches!(
                err,
                GlueError::BadScore {
                    line: 3,
                    column: 9,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            msg.contains("STS-B/dev.tsv:3:") && msg.contains("\"n/a\""),
            "{msg}"
        );

        let (msg, _) = error_of(
            Task::Stsb,
            "dev.tsv",
            &format!("{header}\n{}\n", row("5.5")),
        );
        assert!(msg.contains("\"5.5\"") && msg.contains("0..=5"), "{msg}");
        let (msg, _) = error_of(
            Task::Stsb,
            "dev.tsv",
            &format!("{header}\n{}\n", row("NaN")),
        );
        assert!(msg.contains("\"NaN\""), "{msg}");
    }

    #[test]
    fn empty_and_header_only_files_are_errors() {
        for contents in ["", "\n", "\r\n\r\n"] {
            let (msg, err) = error_of(Task::Rte, "train.tsv", contents);
            assert!(
                matches!(err, GlueError::EmptyFile { .. }),
                "{contents:?}: {err:?}"
            );
            assert!(
                msg.contains("RTE/train.tsv") && msg.contains("empty"),
                "{msg}"
            );
        }
        let (_, err) = error_of(Task::Cola, "train.tsv", "");
        assert!(matches!(err, GlueError::EmptyFile { .. }), "{err:?}");
        // A BOM alone is still empty.
        let tmp = TempDir::new();
        let p = tmp.write("MRPC", "train.tsv", b"\xEF\xBB\xBF\n");
        assert!(matches!(
            load_file(&p, Task::Mrpc),
            Err(GlueError::EmptyFile { .. })
        ));

        let (msg, err) = error_of(Task::Rte, "dev.tsv", "index\tsentence1\tsentence2\tlabel\n");
        assert!(matches!(err, GlueError::NoExamples { .. }), "{err:?}");
        assert!(
            msg.contains("RTE/dev.tsv") && msg.contains("no examples"),
            "{msg}"
        );
    }

    #[test]
    fn empty_line_between_rows_is_an_error() {
        let (msg, err) = error_of(Task::Sst2, "dev.tsv", "sentence\tlabel\na\t1\n\nb\t0\n");
        assert!(
            matches!(err, GlueError::EmptyLine { line: 3, .. }),
            "{err:?}"
        );
        assert!(msg.contains("SST-2/dev.tsv:3:"), "{msg}");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let tmp = TempDir::new();
        let p = tmp.write(
            "SST-2",
            "dev.tsv",
            b"sentence\tlabel\nok\t1\nbad \xFF byte\t0\n",
        );
        let err = load_file(&p, Task::Sst2).unwrap_err();
        assert!(matches!(err, GlueError::NotUtf8 { line: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("SST-2/dev.tsv:3:"), "{err}");
    }

    #[test]
    fn missing_file_hints_at_the_layout() {
        let tmp = TempDir::new();
        let err = load(&tmp.0, Task::Qnli, Split::Train).unwrap_err();
        assert!(matches!(err, GlueError::MissingFile { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("QNLI/train.tsv"), "{msg}");
        assert!(msg.contains("<data>/<TASK>/train.tsv"), "{msg}");
    }

    // ---------- the real data ----------

    /// The shared GLUE directory: `$PETNAS_GLUE`, else `<workspace>/../shared/data/glue`.
    /// Missing data fails the test unless `PETNAS_ALLOW_MISSING_DATA=1`.
    fn real_data_dir() -> Option<PathBuf> {
        let dir = match std::env::var_os("PETNAS_GLUE") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/glue"),
        };
        if dir.is_dir() {
            return Some(dir);
        }
        if std::env::var("PETNAS_ALLOW_MISSING_DATA").as_deref() == Ok("1") {
            eprintln!("skipping: GLUE data not found at {}", dir.display());
            return None;
        }
        panic!(
            "GLUE data not found at {}; set PETNAS_GLUE to the glue_data directory, \
             or PETNAS_ALLOW_MISSING_DATA=1 to skip",
            dir.display()
        );
    }

    fn class_counts(examples: &[Example], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for e in examples {
            match e.label {
                Label::Class(c) => counts[c] += 1,
                Label::Score(_) => panic!("unexpected score label"),
            }
        }
        counts
    }

    #[test]
    fn real_files_have_the_readme_row_counts() {
        let Some(dir) = real_data_dir() else { return };
        let cases = [
            (Task::Cola, Split::Train, 8551),
            (Task::Cola, Split::Dev, 1043),
            (Task::Sst2, Split::Train, 67349),
            (Task::Sst2, Split::Dev, 872),
            (Task::Mrpc, Split::Train, 3668),
            (Task::Mrpc, Split::Dev, 408),
            (Task::Stsb, Split::Train, 5749),
            (Task::Stsb, Split::Dev, 1500),
            (Task::Rte, Split::Train, 2490),
            (Task::Rte, Split::Dev, 277),
            (Task::Qnli, Split::Dev, 5463),
        ];
        for (task, split, rows) in cases {
            let examples =
                load(&dir, task, split).unwrap_or_else(|e| panic!("{task} {split}: {e}"));
            assert_eq!(examples.len(), rows, "{task} {split}");
            for e in &examples {
                assert_eq!(e.text_b.is_some(), task.has_pair(), "{task} {split}");
                match e.label {
                    Label::Class(c) => assert!(c < task.num_labels(), "{task} {split}"),
                    Label::Score(s) => {
                        assert!(
                            task.is_regression() && (0.0..=5.0).contains(&s),
                            "{task} {split}"
                        )
                    }
                }
            }
        }
    }

    #[test]
    fn real_files_spot_checks() {
        let Some(dir) = real_data_dir() else { return };
        let load = |task, split| {
            super::load(&dir, task, split).unwrap_or_else(|e| panic!("{task} {split}: {e}"))
        };

        let cola = load(Task::Cola, Split::Train);
        assert_eq!(
            cola[0],
            ex(
                "Our friends won't buy this analysis, let alone the next one we propose.",
                None,
                Label::Class(1)
            )
        );
        assert_eq!(class_counts(&cola, 2), [2528, 6023]);
        // CoLA dev has no final newline.
        let cola_dev = load(Task::Cola, Split::Dev);
        assert_eq!(
            cola_dev.last().map(|e| e.text_a.as_str()),
            Some("John talked to Bill about himself.")
        );
        assert_eq!(class_counts(&cola_dev, 2), [322, 721]);

        let sst = load(Task::Sst2, Split::Train);
        assert_eq!(
            sst[0],
            ex(
                "hide new secretions from the parental units ",
                None,
                Label::Class(0)
            )
        );
        assert_eq!(class_counts(&sst, 2), [29780, 37569]);

        // MRPC starts with a BOM and has quotes in its texts.
        let mrpc = load(Task::Mrpc, Split::Train);
        assert_eq!(
            mrpc[0],
            ex(
                "Amrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence .",
                Some("Referring to him as only \" the witness \" , Amrozi accused his brother of deliberately distorting his evidence ."),
                Label::Class(1)
            )
        );
        assert_eq!(class_counts(&mrpc, 2), [1194, 2474]);

        let stsb = load(Task::Stsb, Split::Train);
        assert_eq!(
            stsb[0],
            ex(
                "A plane is taking off.",
                Some("An air plane is taking off."),
                Label::Score(5.0)
            )
        );
        assert_eq!(stsb[1].label, Label::Score(3.8));
        let dev_sum: f64 = load(Task::Stsb, Split::Dev)
            .iter()
            .map(|e| match e.label {
                Label::Score(s) => f64::from(s),
                Label::Class(_) => panic!("class label in STS-B"),
            })
            .sum();
        assert!((dev_sum - 3545.8613).abs() < 1e-2, "{dev_sum}");

        let rte = load(Task::Rte, Split::Train);
        assert_eq!(
            rte[0],
            ex(
                "No Weapons of Mass Destruction Found in Iraq Yet.",
                Some("Weapons of Mass Destruction Found in Iraq."),
                Label::Class(1)
            )
        );
        assert_eq!(class_counts(&rte, 2), [1249, 1241]);

        let qnli = load(Task::Qnli, Split::Dev);
        assert_eq!(
            qnli[0],
            ex(
                "What came into force after the new constitution was herald?",
                Some("As of that day, the new constitution heralding the Second Republic came into force."),
                Label::Class(0)
            )
        );
        assert_eq!(class_counts(&qnli, 2), [2702, 2761]);
    }

    #[test]
    fn real_files_match_a_naive_split_of_the_raw_text() {
        // Independent of the loader's column logic: split line 2 of each headed file by hand.
        let Some(dir) = real_data_dir() else { return };
        let cases = [
            (Task::Sst2, 0, None),
            (Task::Mrpc, 3, Some(4)),
            (Task::Stsb, 7, Some(8)),
            (Task::Rte, 1, Some(2)),
            (Task::Qnli, 1, Some(2)),
        ];
        for (task, a, b) in cases {
            let path = split_path(&dir, task, Split::Dev);
            let raw = std::fs::read_to_string(&path).expect("read raw");
            let line = raw.lines().nth(1).expect("a second line");
            let fields: Vec<&str> = line.split('\t').collect();
            let first = &load_file(&path, task).expect("load")[0];
            assert_eq!(first.text_a, fields[a], "{task}");
            assert_eq!(first.text_b.as_deref(), b.map(|b| fields[b]), "{task}");
        }
    }
}
