//! Task definitions as data: what a run learns from, so that a user's own CSV/JSONL/Parquet task
//! and the nine built-in GLUE tasks are described the same way, and a run record says in full
//! which task (columns, label order, metrics) and which files (checksums) it was trained on.

use serde::{Deserialize, Serialize};

/// Whether a task predicts a class or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// One of N classes (a softmax head with N outputs, cross-entropy loss).
    Classification,
    /// A real number (a head with one output, mean squared error).
    Regression,
}

impl TaskKind {
    /// `classification` or `regression`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Regression => "regression",
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "classification" => Ok(TaskKind::Classification),
            "regression" => Ok(TaskKind::Regression),
            _ => Err(format!("`{s}`: expected classification or regression")),
        }
    }
}

/// A dev-set metric, computed as scikit-learn / SciPy do (see petnas-train's `metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Fraction of exact class matches.
    Accuracy,
    /// Binary F1 with class id 1 as the positive class.
    F1,
    /// Unweighted mean of the per-class F1 scores.
    MacroF1,
    /// Matthews correlation coefficient (multi-class form).
    Mcc,
    /// Pearson correlation (regression).
    Pearson,
    /// Spearman rank correlation (regression).
    Spearman,
}

impl Metric {
    /// Every metric, in the order the CLI lists them.
    pub const ALL: [Metric; 6] = [
        Metric::Accuracy,
        Metric::F1,
        Metric::MacroF1,
        Metric::Mcc,
        Metric::Pearson,
        Metric::Spearman,
    ];

    /// The key under which a record stores the value (`accuracy`, `f1`, `macro_f1`, `mcc`,
    /// `pearson`, `spearman`).
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::MacroF1 => "macro_f1",
            Metric::Mcc => "mcc",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
        }
    }

    /// Whether the metric scores a task of this kind.
    pub fn fits(self, kind: TaskKind) -> bool {
        matches!(
            (self, kind),
            (Metric::Pearson | Metric::Spearman, TaskKind::Regression)
                | (
                    Metric::Accuracy | Metric::F1 | Metric::MacroF1 | Metric::Mcc,
                    TaskKind::Classification
                )
        )
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let k = s.trim().to_ascii_lowercase().replace('-', "_");
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == k)
            .ok_or_else(|| {
                format!(
                    "metric `{s}`: expected one of {}",
                    Metric::ALL.map(|m| m.as_str()).join(", ")
                )
            })
    }
}

/// A task from the user's files, as a run record stores it (the built-in GLUE tasks are named by
/// `RunSpec::task` alone and have no `TaskDef` in the spec).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDef {
    /// The task's name (in run ids, tables and figures).
    pub name: String,
    /// One or two text columns (a second one makes it a sentence-pair task).
    pub text_columns: Vec<String>,
    /// The label column.
    pub label_column: String,
    /// Classification or regression.
    pub kind: TaskKind,
    /// Class names in id order (class id `i` is `labels[i]`); empty for regression.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Metrics reported on dev; the first is the primary one (the one tables show).
    pub metrics: Vec<Metric>,
}

impl TaskDef {
    /// Checks the definition's own consistency; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let ok_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok_name {
            return Err(format!(
                "task name `{}`: use letters, digits, `-`, `_` or `.` (it names run folders)",
                self.name
            ));
        }
        if self.text_columns.is_empty() || self.text_columns.len() > 2 {
            return Err(format!(
                "text columns {:?}: give one or two",
                self.text_columns
            ));
        }
        if self.text_columns.contains(&self.label_column) {
            return Err(format!(
                "column `{}` is both a text and the label column",
                self.label_column
            ));
        }
        if self.metrics.is_empty() {
            return Err("no metric".into());
        }
        for m in &self.metrics {
            if !m.fits(self.kind) {
                return Err(format!(
                    "metric {} does not score a {} task",
                    m.as_str(),
                    self.kind.as_str()
                ));
            }
        }
        match self.kind {
            TaskKind::Classification if self.labels.len() < 2 => Err(format!(
                "a classification task needs at least 2 labels, found {:?}",
                self.labels
            )),
            TaskKind::Regression if !self.labels.is_empty() => {
                Err("a regression task has no label set".into())
            }
            _ => Ok(()),
        }
    }

    /// Width of the head: the class count, or 1 for a regression.
    pub fn num_labels(&self) -> usize {
        match self.kind {
            TaskKind::Regression => 1,
            TaskKind::Classification => self.labels.len(),
        }
    }

    /// The primary metric's key.
    pub fn primary_metric(&self) -> &'static str {
        self.metrics[0].as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_round_trip_and_bad_ones_list_the_valid() {
        for m in Metric::ALL {
            assert_eq!(m.as_str().parse::<Metric>().unwrap(), m);
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::Value::String(m.as_str().into())
            );
        }
        assert_eq!("Macro-F1".parse::<Metric>().unwrap(), Metric::MacroF1);
        let e = "auc".parse::<Metric>().unwrap_err();
        assert!(e.contains("auc") && e.contains("macro_f1"), "{e}");
    }

    #[test]
    fn definitions_are_checked() {
        let ok = TaskDef {
            name: "reviews".into(),
            text_columns: vec!["text".into()],
            label_column: "label".into(),
            kind: TaskKind::Classification,
            labels: vec!["neg".into(), "pos".into()],
            metrics: vec![Metric::Accuracy, Metric::F1],
        };
        assert!(ok.validate().is_ok());
        for (bad, needle) in [
            (
                TaskDef {
                    name: "a/b".into(),
                    ..ok.clone()
                },
                "task name",
            ),
            (
                TaskDef {
                    text_columns: vec![],
                    ..ok.clone()
                },
                "one or two",
            ),
            (
                TaskDef {
                    text_columns: vec!["label".into()],
                    ..ok.clone()
                },
                "both a text and the label",
            ),
            (
                TaskDef {
                    metrics: vec![Metric::Pearson],
                    ..ok.clone()
                },
                "pearson does not score a classification",
            ),
            (
                TaskDef {
                    labels: vec!["x".into()],
                    ..ok.clone()
                },
                "at least 2 labels",
            ),
            (
                TaskDef {
                    kind: TaskKind::Regression,
                    metrics: vec![Metric::Pearson],
                    ..ok.clone()
                },
                "no label set",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
