//! The GLUE tasks and splits: names, folders, label counts, pair or single text, metrics.

use std::fmt;
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
