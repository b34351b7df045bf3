//! The sweep file: tasks, recipe, baselines and searches as TOML (serde).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use petnas_core::record::{LoraInit, Precision, Recipe};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};
use crate::glue::Task;
use crate::options::lora_init_from_str;
pub use crate::options::{BudgetValue, RecipeOptions, SearchOptions};
use crate::task::{TaskInfo, UserTask};

/// One entry of a sweep's `tasks`: a GLUE name (`"mrpc"`) or a user task's table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TaskEntry {
    /// A GLUE task by name.
    Glue(String),
    /// A task from the user's files.
    User(Box<UserTask>),
}

impl<'de> Deserialize<'de> for TaskEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => Ok(TaskEntry::Glue(s)),
            // `[[tasks]]` tables may name a GLUE task alone: `name = "mrpc"`.
            toml::Value::Table(t) if t.len() == 1 && t.get("name").and_then(|n| n.as_str()).is_some_and(|n| n.parse::<Task>().is_ok()) => {
                Ok(TaskEntry::Glue(t["name"].as_str().unwrap_or_default().to_string()))
            }
            v @ toml::Value::Table(_) => v.try_into::<UserTask>().map(|u| TaskEntry::User(Box::new(u))).map_err(|e| D::Error::custom(format!("user task: {e}"))),
            other => Err(D::Error::custom(format!("a task is a GLUE name or a table with train, dev, text_columns and label_column, not {other}"))),
        }
    }
}

impl TaskEntry {
    /// The task's name as runs will carry it (a user task's default name is its file's folder).
    pub fn name(&self) -> String {
        match self {
            TaskEntry::Glue(s) => s
                .parse::<Task>()
                .map(|t| t.name().to_string())
                .unwrap_or_else(|_| s.clone()),
            TaskEntry::User(u) => u.name.clone().unwrap_or_else(|| "(unnamed)".into()),
        }
    }
}

/// A sweep config (TOML). Unknown keys are rejected.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// A name for reports.
    #[serde(default)]
    pub name: Option<String>,
    /// Model folder (relative paths are taken from the current directory).
    pub model: String,
    /// GLUE folder; default: $PETNAS_DATA, data/glue, ../shared/data/glue.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Tasks: GLUE names, and user tasks as tables (`[[tasks]]` with `name`, `train`, `dev`,
    /// `text_columns`, `label_column`, ...; see [`UserTask`]).
    pub tasks: Vec<TaskEntry>,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Recipe settings shared by all runs (each optional; the paper's values otherwise): the
    /// command line's recipe options, by their field names.
    #[serde(default)]
    pub recipe: RecipeOptions,
    /// Baseline methods.
    #[serde(default)]
    pub baselines: Vec<BaselineConfig>,
    /// Searches: the command line's search options, by their field names.
    #[serde(default)]
    pub searches: Vec<SearchOptions>,
    /// Length-bucketing window in batches (1 = plain shuffle): the same as `[recipe] bucket`,
    /// kept at the top level where earlier configs give it.
    #[serde(default)]
    pub bucket: Option<usize>,
    /// Arithmetic of the frozen matmuls: `fp32` (default) or `bf16`.
    #[serde(default)]
    pub precision: Precision,
    /// A folder that keeps each finished run's `record.json` and `architecture.json` (small, no
    /// weights), e.g. `reports/minilm-study/records` to commit as the study advances. A run whose
    /// record is there with the planned spec hash is done, weights or not, so a study resumes on
    /// another machine from the committed records alone. Relative to the current directory.
    #[serde(default)]
    pub records: Option<PathBuf>,
}

fn default_device() -> String {
    "cpu".into()
}

/// One baseline method.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// full, bitfit, lora, mam, mam16, or a space spec.
    pub method: String,
    /// Peak learning rate.
    pub lr: f64,
    /// LoRA init (paper).
    #[serde(default, deserialize_with = "lora_init_from_str")]
    pub lora_init: LoraInit,
    /// Keeps ids apart when a method appears twice (e.g. two LRs).
    #[serde(default)]
    pub tag: Option<String>,
}

impl SweepConfig {
    /// Reads and checks a sweep file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let cfg: SweepConfig = toml::from_str(&text)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
        if cfg.tasks.is_empty() || cfg.seeds.is_empty() {
            return Err(TrainError::Invalid(format!(
                "{}: `tasks` and `seeds` must not be empty",
                path.display()
            )));
        }
        let mut user_names = BTreeSet::new();
        for t in &cfg.tasks {
            match t {
                TaskEntry::Glue(t) => {
                    t.parse::<Task>().map_err(|e| {
                        TrainError::Invalid(format!("{}: task `{t}`: {e}", path.display()))
                    })?;
                }
                TaskEntry::User(u) => {
                    let Some(n) = &u.name else {
                        return Err(TrainError::Invalid(format!(
                            "{}: a user task ({}) needs a `name`",
                            path.display(),
                            u.train.display()
                        )));
                    };
                    user_names.insert(n.clone());
                }
            }
        }
        for t in cfg
            .recipe
            .epochs_per_task
            .keys()
            .chain(cfg.recipe.max_train_per_task.keys())
        {
            if !user_names.contains(t) {
                t.parse::<Task>().map_err(|e| {
                    TrainError::Invalid(format!("{}: per-task key `{t}`: {e}", path.display()))
                })?;
            }
        }
        if let (Some(a), Some(b)) = (cfg.bucket, cfg.recipe.bucket) {
            return Err(TrainError::Invalid(format!(
                "{}: `bucket = {a}` and `[recipe] bucket = {b}`: give the bucketing window once",
                path.display()
            )));
        }
        if cfg.baselines.is_empty() && cfg.searches.is_empty() {
            return Err(TrainError::Invalid(format!(
                "{}: no [[baselines]] and no [[searches]]: nothing to run",
                path.display()
            )));
        }
        for b in &cfg.baselines {
            if !(b.lr > 0.0 && b.lr.is_finite()) {
                return Err(TrainError::Invalid(format!(
                    "{}: baseline {}: lr must be positive",
                    path.display(),
                    b.method
                )));
            }
        }
        for s in &cfg.searches {
            if !(s.lr > 0.0 && s.lr.is_finite())
                || s.search_lr.is_some_and(|l| !(l > 0.0 && l.is_finite()))
            {
                return Err(TrainError::Invalid(format!(
                    "{}: search {}: lr must be positive",
                    path.display(),
                    s.space
                )));
            }
            for (k, v) in &s.budgets_per_task {
                let named = cfg.tasks.iter().any(|t| match t {
                    TaskEntry::Glue(g) => g
                        .parse::<Task>()
                        .ok()
                        .is_some_and(|g| k.parse::<Task>().ok() == Some(g)),
                    TaskEntry::User(u) => u.name.as_deref() == Some(k.as_str()),
                });
                if !named {
                    return Err(TrainError::Invalid(format!(
                        "{}: search {}: budgets_per_task key `{k}` is not one of this sweep's tasks",
                        path.display(),
                        s.space
                    )));
                }
                if v.is_empty() {
                    return Err(TrainError::Invalid(format!(
                        "{}: search {}: budgets_per_task.{k} must not be empty",
                        path.display(),
                        s.space
                    )));
                }
            }
            if s.budgets.is_empty()
                || s.modes.0.is_empty()
                || s.criteria.is_empty()
                || s.reinit.is_empty()
            {
                return Err(TrainError::Invalid(format!(
                    "{}: search {}: budgets, modes, criteria and reinit must not be empty",
                    path.display(),
                    s.space
                )));
            }
        }
        Ok(cfg)
    }

    /// The recipe options of every run: `[recipe]`, with the top-level `bucket`.
    pub fn recipe_options(&self) -> RecipeOptions {
        RecipeOptions {
            bucket: self.bucket.or(self.recipe.bucket),
            ..self.recipe.clone()
        }
    }

    pub(super) fn recipe_for(&self, task: &TaskInfo, lr: f64) -> Recipe {
        self.recipe_options().resolve(task, lr)
    }

    /// The max sequence length every run of this sweep uses.
    pub fn max_len(&self) -> usize {
        self.recipe.max_len()
    }

    /// The batch size every run of this sweep uses.
    pub fn batch_size(&self) -> usize {
        self.recipe.batch_size()
    }

    /// The cap on training examples for `task` (per-task value, else the global one).
    pub fn max_train_for(&self, task: &TaskInfo) -> Option<usize> {
        self.recipe.max_train_for(task)
    }
}
