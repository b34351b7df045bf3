//! A run's task as data: the nine built-in GLUE tasks and a user's own classification or
//! regression task from CSV, TSV, JSON Lines or Parquet files, behind one type, [`TaskInfo`].
//!
//! - GLUE: `--task mrpc` with `--data DIR` in either layout: the GLUE download script's
//!   `<DIR>/<TASK>/{train,dev}.tsv` (read by [`crate::glue`]), or the Hugging Face hub's
//!   `nyu-mll/glue` Parquet files, `<DIR>/<config>/{train,validation}-*.parquet` (MNLI:
//!   `validation_matched` / `validation_mismatched`), whose columns and label ids are the ones
//!   [`crate::glue`] documents.
//! - A user's task ([`UserTask`]): train and dev files, one or two text columns, a label column,
//!   classification or regression, metrics. Class labels (integers or strings) get ids in a stated
//!   order: the `labels` given, else the sorted labels of the training file (numerically when all
//!   are integers, else as text). The order is saved in the run's spec and in an export's
//!   `config.json` (`id2label`).
//!
//! A run's spec stores a user task's [`TaskDef`] and the SHA-256 of each file it read, so a
//! changed file is a changed spec. GLUE files matching the release petnas knows
//! ([`KNOWN_GLUE_FILES`]) add nothing to the spec, as before.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petnas_core::task::{Metric, TaskDef, TaskKind};
use sha2::{Digest, Sha256};

use crate::error::{io_err, Result, TrainError};
use crate::glue::{self, Example, Label, Split, Task};
use crate::table::{self, Cell, Table};

/// SHA-256 of the GLUE download script's files, as the GLUE release distributes them (and as
/// every record before user tasks was trained on). A GLUE run on these files has no `data` in its
/// spec; on any other files (a subset, an edit, the hub's Parquet) the spec carries their
/// checksums.
pub const KNOWN_GLUE_FILES: &[(&str, &str)] = &[
    (
        "CoLA/dev.tsv",
        "8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd",
    ),
    (
        "CoLA/train.tsv",
        "cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624",
    ),
    (
        "MRPC/dev.tsv",
        "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
    ),
    (
        "MRPC/train.tsv",
        "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    ),
    (
        "QNLI/dev.tsv",
        "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd",
    ),
    (
        "RTE/dev.tsv",
        "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb",
    ),
    (
        "RTE/train.tsv",
        "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c",
    ),
    (
        "SST-2/dev.tsv",
        "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    ),
    (
        "SST-2/train.tsv",
        "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    ),
    (
        "STS-B/dev.tsv",
        "fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59",
    ),
    (
        "STS-B/train.tsv",
        "41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2",
    ),
];

/// How a GLUE folder is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlueLayout {
    /// `<DIR>/<TASK>/train.tsv`: the GLUE download script's files.
    Tsv,
    /// `<DIR>/<config>/train-00000-of-00001.parquet`: the hub's `nyu-mll/glue`.
    HubParquet,
}

impl GlueLayout {
    /// How the layout is called in messages.
    pub fn describe(self) -> &'static str {
        match self {
            GlueLayout::Tsv => "GLUE TSV files (<TASK>/train.tsv, dev.tsv)",
            GlueLayout::HubParquet => "the Hugging Face hub's GLUE Parquet files (<config>/train-*.parquet, validation-*.parquet)",
        }
    }
}

/// A user's task, as given on the command line (`--train`, `--dev`, `--text-columns`, ...) or
/// in a sweep's `[[tasks]]` table.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserTask {
    /// The task's name (default: the training file's folder name).
    #[serde(default)]
    pub name: Option<String>,
    /// Training file.
    pub train: PathBuf,
    /// Dev file (scored at the end of training).
    pub dev: PathBuf,
    /// Optional test file (`predict --split test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// One or two text columns.
    pub text_columns: Vec<String>,
    /// The label column.
    pub label_column: String,
    /// Classification or regression (default: regression if every training label is a number
    /// and one is not a whole number, else classification).
    #[serde(default)]
    pub kind: Option<TaskKind>,
    /// Metrics, the primary first (default: accuracy and F1 for two classes, accuracy and
    /// macro-F1 for more, Pearson and Spearman for regression).
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// The class labels in id order (default: the training file's, sorted).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Fine-tuning epochs when the recipe gives none (default 3, as transformers' Trainer).
    #[serde(default)]
    pub epochs: Option<f64>,
}

/// Where a task's files are.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A built-in GLUE task in a GLUE folder.
    Glue {
        /// The task.
        task: Task,
        /// The folder.
        dir: PathBuf,
        /// Its layout.
        layout: GlueLayout,
    },
    /// A user's files.
    Files {
        /// Training file.
        train: PathBuf,
        /// Dev file.
        dev: PathBuf,
        /// Test file.
        test: Option<PathBuf>,
        /// Default epochs.
        epochs: f64,
    },
}

/// A task ready to load: its definition and where its files are.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskInfo {
    /// The definition (for GLUE, the built-in one).
    pub def: TaskDef,
    /// The files.
    pub source: Source,
}

/// The definition of a built-in GLUE task.
pub fn glue_def(task: Task) -> TaskDef {
    let (a, b, labels): (&str, Option<&str>, &[&str]) = match task {
        Task::Cola => ("sentence", None, &["unacceptable", "acceptable"]),
        Task::Sst2 => ("sentence", None, &["negative", "positive"]),
        Task::Mrpc => (
            "sentence1",
            Some("sentence2"),
            &["not_equivalent", "equivalent"],
        ),
        Task::Stsb => ("sentence1", Some("sentence2"), &[]),
        Task::Qqp => (
            "question1",
            Some("question2"),
            &["not_duplicate", "duplicate"],
        ),
        Task::Mnli | Task::MnliMm => (
            "premise",
            Some("hypothesis"),
            &["entailment", "neutral", "contradiction"],
        ),
        Task::Qnli => (
            "question",
            Some("sentence"),
            &["entailment", "not_entailment"],
        ),
        Task::Rte => (
            "sentence1",
            Some("sentence2"),
            &["entailment", "not_entailment"],
        ),
    };
    let metrics = match task {
        Task::Cola => vec![Metric::Mcc, Metric::Accuracy],
        Task::Mrpc | Task::Qqp => vec![Metric::Accuracy, Metric::F1],
        Task::Stsb => vec![Metric::Pearson, Metric::Spearman],
        _ => vec![Metric::Accuracy],
    };
    TaskDef {
        name: task.name().to_string(),
        text_columns: std::iter::once(a).chain(b).map(str::to_string).collect(),
        label_column: "label".into(),
        kind: if task.is_regression() {
            TaskKind::Regression
        } else {
            TaskKind::Classification
        },
        labels: labels.iter().map(|s| s.to_string()).collect(),
        metrics,
    }
}

/// The hub's config name and split file stem of a GLUE task.
fn hub_names(task: Task, split: Split) -> (&'static str, &'static str) {
    let config = match task {
        Task::Mnli | Task::MnliMm => "mnli",
        t => t.name(),
    };
    let stem = match (task, split) {
        (_, Split::Train) => "train",
        (Task::Mnli, Split::Dev) => "validation_matched",
        (Task::MnliMm, Split::Dev) => "validation_mismatched",
        (_, Split::Dev) => "validation",
    };
    (config, stem)
}

/// The hub-layout file of a split: `<dir>/<config>/<stem>-*.parquet` (one shard; several are
/// an error, since petnas reads one file per split).
fn hub_file(dir: &Path, task: Task, split: Split) -> Result<Option<PathBuf>> {
    let (config, stem) = hub_names(task, split);
    let folder = dir.join(config);
    let Ok(rd) = std::fs::read_dir(&folder) else {
        return Ok(None);
    };
    let mut found: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{stem}-")))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(TrainError::Invalid(format!(
            "{}: {} Parquet shards of {stem}; petnas reads one file per split (merge them, or pass --train/--dev)",
            folder.display(),
            found.len()
        ))),
    }
}

/// The layout of a GLUE folder for `task`: TSV if `<DIR>/<TASK>/train.tsv` exists, else the
/// hub's Parquet if its train file exists; an error naming both when neither does.
pub fn detect_layout(dir: &Path, task: Task) -> Result<GlueLayout> {
    let tsv = glue::split_path(dir, task, Split::Train);
    if tsv.is_file() {
        return Ok(GlueLayout::Tsv);
    }
    if hub_file(dir, task, Split::Train)?.is_some() {
        return Ok(GlueLayout::HubParquet);
    }
    let (config, stem) = hub_names(task, Split::Train);
    Err(TrainError::Invalid(format!(
        "{}: no {} data: expected {} (GLUE download layout) or {}/{config}/{stem}-00000-of-00001.parquet (the hub's nyu-mll/glue)",
        dir.display(),
        task.name(),
        tsv.display(),
        dir.display()
    )))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl TaskInfo {
    /// A built-in GLUE task in `dir` (either layout).
    pub fn glue(task: Task, dir: &Path) -> Result<Self> {
        let layout = detect_layout(dir, task)?;
        Ok(Self {
            def: glue_def(task),
            source: Source::Glue {
                task,
                dir: dir.to_path_buf(),
                layout,
            },
        })
    }

    /// A user's task: reads the training file to settle the label set and the kind, and checks
    /// the definition.
    pub fn user(u: &UserTask) -> Result<Self> {
        let name = match &u.name {
            Some(n) => n.clone(),
            None => default_name(&u.train),
        };
        if name.parse::<Task>().is_ok() {
            return Err(TrainError::Invalid(format!(
                "task name `{name}` (from {}) is a GLUE task's: give your task another name (--task-name, or `name` in a sweep)",
                if u.name.is_some() { "the definition" } else { "the training file's folder" }
            )));
        }
        let train = table::read(&u.train)?;
        let label_col = train.column(&u.label_column, "the label column")?;
        for c in &u.text_columns {
            train.column(c, "a text column")?;
        }
        let kind = match u.kind {
            Some(k) => k,
            None => infer_kind(&train, label_col),
        };
        let labels = match kind {
            TaskKind::Regression => {
                if !u.labels.is_empty() {
                    return Err(TrainError::Invalid(format!(
                        "task {name}: labels are given, but it is a regression task"
                    )));
                }
                Vec::new()
            }
            TaskKind::Classification if !u.labels.is_empty() => {
                let mut seen = BTreeSet::new();
                for l in &u.labels {
                    if !seen.insert(l) {
                        return Err(TrainError::Invalid(format!(
                            "task {name}: label `{l}` is given twice"
                        )));
                    }
                }
                u.labels.clone()
            }
            TaskKind::Classification => infer_labels(&train, label_col)?,
        };
        let metrics = if u.metrics.is_empty() {
            match kind {
                TaskKind::Regression => vec![Metric::Pearson, Metric::Spearman],
                TaskKind::Classification if labels.len() == 2 => vec![Metric::Accuracy, Metric::F1],
                TaskKind::Classification => vec![Metric::Accuracy, Metric::MacroF1],
            }
        } else {
            u.metrics.clone()
        };
        if metrics.contains(&Metric::F1) && labels.len() > 2 {
            return Err(TrainError::Invalid(format!(
                "task {name}: binary F1 needs 2 classes, found {}: use macro_f1",
                labels.len()
            )));
        }
        let def = TaskDef {
            name,
            text_columns: u.text_columns.clone(),
            label_column: u.label_column.clone(),
            kind,
            labels,
            metrics,
        };
        def.validate()
            .map_err(|e| TrainError::Invalid(format!("task {}: {e}", def.name)))?;
        if let Some(e) = u.epochs {
            if !(e.is_finite() && e > 0.0) {
                return Err(TrainError::Invalid(format!(
                    "task {}: epochs = {e}: must be a finite number above 0",
                    def.name
                )));
            }
        }
        let info = Self {
            def,
            source: Source::Files {
                train: u.train.clone(),
                dev: u.dev.clone(),
                test: u.test.clone(),
                epochs: u.epochs.unwrap_or(3.0),
            },
        };
        // Check the training file's labels and texts now, before any model is loaded.
        examples_from(&train, &info.def)?;
        Ok(info)
    }

    /// A user task from its recorded definition and files (`train`, `dev`, optional `test`),
    /// as `predict` rebuilds it from a run folder.
    pub fn from_def(def: TaskDef, files: &BTreeMap<String, PathBuf>) -> Result<Self> {
        let get = |k: &str| {
            files.get(k).cloned().ok_or_else(|| {
                TrainError::Invalid(format!("task {}: no {k} file recorded", def.name))
            })
        };
        let source = Source::Files {
            train: get("train")?,
            dev: get("dev")?,
            test: files.get("test").cloned(),
            epochs: 3.0,
        };
        Ok(Self { def, source })
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The GLUE task, for a built-in one.
    pub fn glue_task(&self) -> Option<Task> {
        match &self.source {
            Source::Glue { task, .. } => Some(*task),
            Source::Files { .. } => None,
        }
    }

    /// Width of the head: the class count, or 1 for a regression.
    pub fn num_labels(&self) -> usize {
        self.def.num_labels()
    }

    /// Whether the task is a regression.
    pub fn is_regression(&self) -> bool {
        self.def.kind == TaskKind::Regression
    }

    /// The primary metric's key.
    pub fn primary_metric(&self) -> &'static str {
        self.def.primary_metric()
    }

    /// Epochs when the recipe gives none: the paper's per-task count for GLUE, else the task's.
    pub fn default_epochs(&self) -> f64 {
        match &self.source {
            Source::Glue { task, .. } => task.default_epochs(),
            Source::Files { epochs, .. } => *epochs,
        }
    }

    /// The file of a split (`None`: a test split the task does not have).
    pub fn file(&self, split: SplitName) -> Result<Option<PathBuf>> {
        Ok(match (&self.source, split) {
            (
                Source::Glue {
                    task,
                    dir,
                    layout: GlueLayout::Tsv,
                },
                SplitName::Train,
            ) => Some(glue::split_path(dir, *task, Split::Train)),
            (
                Source::Glue {
                    task,
                    dir,
                    layout: GlueLayout::Tsv,
                },
                SplitName::Dev,
            ) => Some(glue::split_path(dir, *task, Split::Dev)),
            (
                Source::Glue {
                    task,
                    dir,
                    layout: GlueLayout::HubParquet,
                },
                SplitName::Train,
            ) => hub_file(dir, *task, Split::Train)?,
            (
                Source::Glue {
                    task,
                    dir,
                    layout: GlueLayout::HubParquet,
                },
                SplitName::Dev,
            ) => hub_file(dir, *task, Split::Dev)?,
            (Source::Glue { .. }, SplitName::Test) => None,
            (Source::Files { train, .. }, SplitName::Train) => Some(train.clone()),
            (Source::Files { dev, .. }, SplitName::Dev) => Some(dev.clone()),
            (Source::Files { test, .. }, SplitName::Test) => test.clone(),
        })
    }

    /// Reads a split's examples (labels as ids in the definition's order).
    pub fn load(&self, split: SplitName) -> Result<Vec<Example>> {
        let path = self.file(split)?.ok_or_else(|| {
            TrainError::Invalid(format!(
                "task {}: no {} file{}",
                self.name(),
                split.name(),
                match self.glue_task() {
                    Some(_) => " (GLUE test labels are not public)",
                    None => " (give `test` in the task definition)",
                }
            ))
        })?;
        match &self.source {
            Source::Glue {
                task,
                layout: GlueLayout::Tsv,
                ..
            } => Ok(glue::load_file(&path, *task)?),
            Source::Glue {
                task,
                layout: GlueLayout::HubParquet,
                ..
            } => {
                let t = table::read(&path)?;
                glue_examples_from(&t, *task)
            }
            Source::Files { .. } => examples_from(&table::read(&path)?, &self.def),
        }
    }

    /// `(task_def, data)` for the run's spec: the definition of a user task (GLUE tasks: none),
    /// and the SHA-256 of the train and dev files, unless they are the known GLUE release.
    pub fn spec_parts(&self) -> Result<(Option<TaskDef>, Option<BTreeMap<String, String>>)> {
        let mut sums = BTreeMap::new();
        let mut known = true;
        for split in [SplitName::Train, SplitName::Dev] {
            let Some(p) = self.file(split)? else { continue };
            if !p.is_file() {
                return Err(TrainError::Invalid(format!(
                    "{}: file not found ({} split of task {})",
                    p.display(),
                    split.name(),
                    self.name()
                )));
            }
            let sum = sha256_file(&p)?;
            known &= match &self.source {
                Source::Glue {
                    task,
                    layout: GlueLayout::Tsv,
                    ..
                } => {
                    let rel = glue::split_path(
                        Path::new(""),
                        *task,
                        if split == SplitName::Train {
                            Split::Train
                        } else {
                            Split::Dev
                        },
                    );
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    KNOWN_GLUE_FILES.iter().any(|(f, s)| *f == rel && *s == sum)
                }
                _ => false,
            };
            sums.insert(split.name().to_string(), sum);
        }
        let def = match self.source {
            Source::Glue { .. } => None,
            Source::Files { .. } => Some(self.def.clone()),
        };
        Ok((def, (!known).then_some(sums)))
    }

    /// The folder a GLUE task was read from, or the user's training file's folder.
    pub fn data_dir(&self) -> PathBuf {
        match &self.source {
            Source::Glue { dir, .. } => dir.clone(),
            Source::Files { train, .. } => {
                train.parent().map(Path::to_path_buf).unwrap_or_default()
            }
        }
    }

    /// What was found, for the log: `rte from GLUE TSV files in DIR`.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Glue { dir, layout, .. } => format!(
                "{} from {} in {}",
                self.name(),
                layout.describe(),
                dir.display()
            ),
            Source::Files { train, dev, .. } => format!(
                "{} ({}{}) from {} and {}",
                self.name(),
                self.def.kind.as_str(),
                if self.def.labels.is_empty() {
                    String::new()
                } else {
                    format!(", labels {}", self.def.labels.join(", "))
                },
                train.display(),
                dev.display()
            ),
        }
    }
}

/// A split by name, including a user task's optional test file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitName {
    /// Training file.
    Train,
    /// Dev file.
    Dev,
    /// Test file (user tasks only).
    Test,
}

impl SplitName {
    /// `train`, `dev` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Dev => "dev",
            SplitName::Test => "test",
        }
    }
}

/// The training file's folder name, made safe for run ids (`data/reviews/train.csv` → `reviews`),
/// or the file's stem when the folder gives nothing.
fn default_name(train: &Path) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let folder = std::fs::canonicalize(train).ok().and_then(|p| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    });
    match folder
        .map(|f| clean(&f))
        .filter(|f| !f.is_empty() && f != "." && f != "-")
    {
        Some(f) => f,
        None => clean(
            &train
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "task".into()),
        ),
    }
}

/// A label cell as the text a label set holds (`1`, `pos`, `true`), or why it cannot be one.
fn label_text(c: &Cell) -> std::result::Result<String, &'static str> {
    match c {
        Cell::Null => Err("the label is missing"),
        Cell::Str(s) if s.trim().is_empty() => Err("the label is empty"),
        Cell::Str(s) => Ok(s.trim().to_string()),
        Cell::Int(i) => Ok(i.to_string()),
        Cell::Bool(b) => Ok(b.to_string()),
        Cell::Float(f) if f.fract() == 0.0 && f.is_finite() => Ok(format!("{}", *f as i64)),
        Cell::Float(_) => Err("a fractional number is not a class label (a regression task? pass --task-kind regression)"),
    }
}

fn number(c: &Cell) -> Option<f64> {
    match c {
        Cell::Int(i) => Some(*i as f64),
        Cell::Float(f) => Some(*f),
        Cell::Str(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Regression if every label is a number and one is not a whole number.
fn infer_kind(t: &Table, col: usize) -> TaskKind {
    let nums: Vec<Option<f64>> = t.rows.iter().map(|r| number(&r[col])).collect();
    if nums.iter().all(Option::is_some) && nums.iter().flatten().any(|f| f.fract() != 0.0) {
        TaskKind::Regression
    } else {
        TaskKind::Classification
    }
}

/// The training labels, sorted: numerically when all are integers, else as text. Labels of
/// both kinds in one file are an error naming the first row that breaks the pattern.
fn infer_labels(t: &Table, col: usize) -> Result<Vec<String>> {
    let col_name = &t.columns[col];
    let mut texts = Vec::with_capacity(t.rows.len());
    let mut first_kind: Option<(bool, usize)> = None;
    for (i, r) in t.rows.iter().enumerate() {
        let s = label_text(&r[col])
            .map_err(|e| TrainError::Invalid(format!("{}: column `{col_name}`: {e}", t.at(i))))?;
        let is_int = s.parse::<i64>().is_ok();
        match first_kind {
            None => first_kind = Some((is_int, i)),
            Some((k, j)) if k != is_int => {
                return Err(TrainError::Invalid(format!(
                    "{}: column `{col_name}`: label {s:?} is {} but the label at {} ({:?}) is {}: mixed label types",
                    t.at(i),
                    if is_int { "a number" } else { "text" },
                    t.at(j),
                    texts[j],
                    if k { "a number" } else { "text" }
                )))
            }
            _ => {}
        }
        texts.push(s);
    }
    let set: BTreeSet<&String> = texts.iter().collect();
    let mut labels: Vec<String> = set.into_iter().cloned().collect();
    if first_kind.is_some_and(|(k, _)| k) {
        labels.sort_by_key(|s| s.parse::<i64>().unwrap_or(0));
    }
    if labels.len() < 2 {
        return Err(TrainError::Invalid(format!(
            "{}: column `{col_name}` has a single label value {:?}: a classification task needs at least two",
            t.path.display(),
            labels
        )));
    }
    Ok(labels)
}

fn text_cell(t: &Table, i: usize, col: usize) -> Result<String> {
    match &t.rows[i][col] {
        Cell::Str(s) => Ok(s.clone()),
        Cell::Int(v) => Ok(v.to_string()),
        Cell::Float(v) => Ok(v.to_string()),
        Cell::Bool(v) => Ok(v.to_string()),
        Cell::Null => Err(TrainError::Invalid(format!(
            "{}: column `{}`: the text is missing (null)",
            t.at(i),
            t.columns[col]
        ))),
    }
}

/// A table's examples under a definition: texts from its columns, labels mapped to ids.
pub fn examples_from(t: &Table, def: &TaskDef) -> Result<Vec<Example>> {
    let cols: Vec<usize> = def
        .text_columns
        .iter()
        .map(|c| t.column(c, "a text column"))
        .collect::<Result<_>>()?;
    let lc = t.column(&def.label_column, "the label column")?;
    let ids: BTreeMap<&str, usize> = def
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut out = Vec::with_capacity(t.rows.len());
    for i in 0..t.rows.len() {
        let text_a = text_cell(t, i, cols[0])?;
        let text_b = cols.get(1).map(|&c| text_cell(t, i, c)).transpose()?;
        let cell = &t.rows[i][lc];
        let label = match def.kind {
            TaskKind::Regression => {
                let v = number(cell).ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "{}: column `{}`: regression label {} is not a number",
                        t.at(i),
                        def.label_column,
                        match cell {
                            Cell::Str(s) => format!("{s:?}"),
                            Cell::Null => "null".into(),
                            c => format!("{c:?}"),
                        }
                    ))
                })?;
                Label::Score(v as f32)
            }
            TaskKind::Classification => {
                let s = label_text(cell).map_err(|e| {
                    TrainError::Invalid(format!("{}: column `{}`: {e}", t.at(i), def.label_column))
                })?;
                let id = ids.get(s.as_str()).ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "{}: column `{}`: label {s:?} is not one of the task's labels ({}), which {}",
                        t.at(i),
                        def.label_column,
                        def.labels.join(", "),
                        "come from the training file unless given (--labels)"
                    ))
                })?;
                Label::Class(*id)
            }
        };
        out.push(Example {
            text_a,
            text_b,
            label,
        });
    }
    Ok(out)
}

/// A hub GLUE Parquet file's examples: the task's columns, its integer label ids (a float score
/// for STS-B), checked against the task's label count.
fn glue_examples_from(t: &Table, task: Task) -> Result<Vec<Example>> {
    let def = glue_def(task);
    let cols: Vec<usize> = def
        .text_columns
        .iter()
        .map(|c| t.column(c, "a text column"))
        .collect::<Result<_>>()?;
    let lc = t.column("label", "the label column")?;
    let mut out = Vec::with_capacity(t.rows.len());
    for i in 0..t.rows.len() {
        let text_a = text_cell(t, i, cols[0])?;
        let text_b = cols.get(1).map(|&c| text_cell(t, i, c)).transpose()?;
        let cell = &t.rows[i][lc];
        let label = if task.is_regression() {
            match number(cell) {
                Some(v) if (0.0..=5.0).contains(&v) => Label::Score(v as f32),
                _ => {
                    return Err(TrainError::Invalid(format!(
                        "{}: column `label`: bad score {cell:?}: expected a number in 0..=5",
                        t.at(i)
                    )))
                }
            }
        } else {
            match cell {
                Cell::Int(v) if *v >= 0 && (*v as usize) < def.labels.len() => Label::Class(*v as usize),
                c => {
                    return Err(TrainError::Invalid(format!(
                        "{}: column `label`: bad label {c:?}: expected a class id 0..{} ({}; -1 marks the hub's unlabelled test rows)",
                        t.at(i),
                        def.labels.len() - 1,
                        def.labels.join(", ")
                    )))
                }
            }
        };
        out.push(Example {
            text_a,
            text_b,
            label,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn user(train: &Path, dev: &Path) -> UserTask {
        UserTask {
            name: Some("t".into()),
            train: train.to_path_buf(),
            dev: dev.to_path_buf(),
            test: None,
            text_columns: vec!["text".into()],
            label_column: "label".into(),
            kind: None,
            metrics: vec![],
            labels: vec![],
            epochs: None,
        }
    }

    #[test]
    fn labels_are_sorted_numerically_or_as_text_and_kind_is_inferred() {
        let d = tempfile::tempdir().unwrap();
        let dev = write(d.path(), "dev.csv", "text,label\na,1\n");
        let num = write(d.path(), "n.csv", "text,label\na,10\nb,2\nc,1\n");
        let t = TaskInfo::user(&user(&num, &dev)).unwrap();
        assert_eq!(t.def.labels, ["1", "2", "10"]);
        assert_eq!(t.def.metrics, [Metric::Accuracy, Metric::MacroF1]);
        let txt = write(d.path(), "s.csv", "text,label\na,pos\nb,neg\n");
        let t = TaskInfo::user(&user(&txt, &dev)).unwrap();
        assert_eq!(
            (t.def.labels.clone(), t.def.metrics.clone()),
            (
                vec!["neg".to_string(), "pos".to_string()],
                vec![Metric::Accuracy, Metric::F1]
            )
        );
        let reg = write(d.path(), "r.csv", "text,label\na,0.5\nb,3\n");
        let t = TaskInfo::user(&user(&reg, &dev)).unwrap();
        assert_eq!((t.def.kind, t.num_labels()), (TaskKind::Regression, 1));
        // Given labels fix the order.
        let mut u = user(&txt, &dev);
        u.labels = vec!["pos".into(), "neg".into()];
        let t = TaskInfo::user(&u).unwrap();
        let ex = examples_from(&table::read(&txt).unwrap(), &t.def).unwrap();
        assert_eq!(
            ex.iter().map(|e| e.label.clone()).collect::<Vec<_>>(),
            [Label::Class(0), Label::Class(1)]
        );
    }

    #[test]
    fn bad_labels_name_file_row_and_column() {
        let d = tempfile::tempdir().unwrap();
        let dev = write(d.path(), "dev.csv", "text,label\na,pos\nb,maybe\n");
        let train = write(d.path(), "train.csv", "text,label\na,pos\nb,neg\n");
        let t = TaskInfo::user(&user(&train, &dev)).unwrap();
        let e = t.load(SplitName::Dev).unwrap_err().to_string();
        assert!(
            e.contains("dev.csv:3")
                && e.contains("`label`")
                && e.contains("\"maybe\"")
                && e.contains("neg, pos"),
            "{e}"
        );
        for (text, needle) in [
            (
                "text,label\na,1\nb,pos\n",
                "mixed.csv:3: column `label`: label \"pos\" is text but the label at",
            ),
            (
                "text,label\na,1\nb,\n",
                "mixed.csv:3: column `label`: the label is empty",
            ),
            ("text,label\na,1\nb,1\n", "single label value"),
        ] {
            let p = write(d.path(), "mixed.csv", text);
            let e = TaskInfo::user(&user(&p, &dev)).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let p = write(d.path(), "reg.csv", "text,label\na,0.5\nb,high\n");
        let mut u = user(&p, &dev);
        u.kind = Some(TaskKind::Regression);
        let e = TaskInfo::user(&u).unwrap_err().to_string();
        assert!(
            e.contains("reg.csv:3") && e.contains("regression label \"high\" is not a number"),
            "{e}"
        );
        let mut u = user(&train, &dev);
        u.text_columns = vec!["sentence".into()];
        let e = TaskInfo::user(&u).unwrap_err().to_string();
        assert!(
            e.contains(
                "train.csv: no column `sentence` (a text column); the columns are: `text`, `label`"
            ),
            "{e}"
        );
    }

    #[test]
    fn known_glue_files_add_nothing_to_the_spec_and_others_do() {
        let glue_dir = &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/glue");
        assert!(
            glue_dir.is_dir(),
            "GLUE data not found at {}",
            glue_dir.display()
        );
        let t = TaskInfo::glue(Task::Rte, glue_dir).unwrap();
        assert_eq!(t.spec_parts().unwrap(), (None, None));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("RTE")).unwrap();
        let train = std::fs::read_to_string(glue_dir.join("RTE/train.tsv")).unwrap();
        std::fs::write(
            d.path().join("RTE/train.tsv"),
            train.lines().take(20).collect::<Vec<_>>().join("\n") + "\n",
        )
        .unwrap();
        std::fs::copy(glue_dir.join("RTE/dev.tsv"), d.path().join("RTE/dev.tsv")).unwrap();
        let (def, data) = TaskInfo::glue(Task::Rte, d.path())
            .unwrap()
            .spec_parts()
            .unwrap();
        assert!(def.is_none());
        let data = data.expect("a cut train file is not the GLUE release");
        assert_eq!(
            data["dev"],
            KNOWN_GLUE_FILES
                .iter()
                .find(|(f, _)| *f == "RTE/dev.tsv")
                .unwrap()
                .1
        );
        assert_ne!(
            data["train"],
            KNOWN_GLUE_FILES
                .iter()
                .find(|(f, _)| *f == "RTE/train.tsv")
                .unwrap()
                .1
        );
    }
}
