//! The sweep file: tasks, recipe, baselines and searches as TOML (serde).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petnas_core::arch::PruneMode;
use petnas_core::criterion::CriterionKind;
use petnas_core::prune::{parse_budget, RankGroup};
use petnas_core::record::{LoraInit, Precision, Recipe, Reinit};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};
use crate::glue::Task;
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

/// Whether a per-task key of a config (`epochs_per_task`, `max_train_per_task`) means `task`:
/// any spelling of a GLUE task's name, or a user task's exact name.
fn key_means(key: &str, task: &TaskInfo) -> bool {
    match task.glue_task() {
        Some(g) => key.parse::<Task>().ok() == Some(g),
        None => key == task.name(),
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
    /// Recipe defaults for every run.
    #[serde(default)]
    pub recipe: RecipeConfig,
    /// Baseline methods.
    #[serde(default)]
    pub baselines: Vec<BaselineConfig>,
    /// Searches.
    #[serde(default)]
    pub searches: Vec<SearchEntry>,
    /// Length-bucketing window in batches (1 = plain shuffle).
    #[serde(default = "one")]
    pub bucket: usize,
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
fn one() -> usize {
    1
}

/// Recipe settings shared by all runs (each optional; the paper's values otherwise).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeConfig {
    /// Epochs for every task (default: the paper's per-task count).
    pub epochs: Option<f64>,
    /// Per-task epochs, overriding `epochs`.
    #[serde(default)]
    pub epochs_per_task: BTreeMap<String, f64>,
    /// Per-task caps on training examples, overriding `max_train`.
    #[serde(default)]
    pub max_train_per_task: BTreeMap<String, usize>,
    /// Batch size (16).
    pub batch_size: Option<usize>,
    /// Max tokens (128).
    pub max_len: Option<usize>,
    /// Warm-up fraction (0.06).
    pub warmup_frac: Option<f64>,
    /// Adam weight decay (0).
    pub weight_decay: Option<f64>,
    /// Cap on optimizer steps per run.
    pub max_steps: Option<usize>,
    /// Use the first N training examples only.
    pub max_train: Option<usize>,
    /// Use the first N dev examples only.
    pub max_dev: Option<usize>,
    /// Adam β₁ (0.9).
    pub adam_beta1: Option<f64>,
    /// Adam β₂ (0.999).
    pub adam_beta2: Option<f64>,
    /// Adam ε (1e-8).
    pub adam_eps: Option<f64>,
    /// Clip the global gradient norm to this value, or `"none"` for no clipping (default: the
    /// recipe's, [`Recipe::new`]).
    #[serde(
        default,
        deserialize_with = "grad_norm_setting",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_grad_norm: Option<Option<f64>>,
}

/// `max_grad_norm = 1.0` or `max_grad_norm = "none"`; absent: the recipe's default.
fn grad_norm_setting<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<f64>>, D::Error> {
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) if s == "none" => Ok(Some(None)),
        toml::Value::Float(f) => Ok(Some(Some(f))),
        toml::Value::Integer(i) => Ok(Some(Some(i as f64))),
        other => Err(D::Error::custom(format!(
            "max_grad_norm = {other}: a number or \"none\""
        ))),
    }
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

/// A budget as a number or text (`2000`, `"2k"`, `"3.4M"`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum BudgetValue {
    /// A count.
    Count(u64),
    /// Text with an optional k/M suffix.
    Text(String),
}

// By hand rather than `untagged`: a bad budget (`-5`, `1.5`, `"abc"`) is then reported with its
// reason at its line in the TOML, not as "data did not match any variant".
impl<'de> Deserialize<'de> for BudgetValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BudgetValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a parameter budget: a whole number (2000) or text with a k/M suffix (\"2k\", \"3.4M\")")
            }
            fn visit_u64<E: Error>(self, v: u64) -> std::result::Result<BudgetValue, E> {
                Ok(BudgetValue::Count(v))
            }
            fn visit_i64<E: Error>(self, v: i64) -> std::result::Result<BudgetValue, E> {
                u64::try_from(v).map(BudgetValue::Count).map_err(|_| {
                    E::custom(format!(
                        "bad parameter budget {v}: a budget cannot be negative"
                    ))
                })
            }
            fn visit_f64<E: Error>(self, v: f64) -> std::result::Result<BudgetValue, E> {
                if v < 0.0 {
                    Err(E::custom(format!(
                        "bad parameter budget {v}: a budget cannot be negative"
                    )))
                } else if v.fract() != 0.0 || v > u64::MAX as f64 {
                    Err(E::custom(format!(
                        "bad parameter budget {v}: not a whole number of parameters"
                    )))
                } else {
                    Ok(BudgetValue::Count(v as u64))
                }
            }
            fn visit_str<E: Error>(self, v: &str) -> std::result::Result<BudgetValue, E> {
                parse_budget(v).map_err(E::custom)?;
                Ok(BudgetValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One search: a space pruned to budgets in modes, with criteria and re-initialisations.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchEntry {
    /// Maximal space (bitfit, mam16, or a spec).
    pub space: String,
    /// structured / unstructured (default both).
    #[serde(default = "both_modes")]
    pub modes: Vec<PruneMode>,
    /// Budgets.
    pub budgets: Vec<BudgetValue>,
    /// Criteria (default: mean, the paper's).
    #[serde(default = "mean_only")]
    pub criteria: Vec<CriterionKind>,
    /// Re-initialisations (default: same, the paper's).
    #[serde(default = "same_only")]
    pub reinit: Vec<Reinit>,
    /// Peak LR of the pruned retrainings.
    pub lr: f64,
    /// Peak LR of the maximal training (default: `lr`).
    #[serde(default)]
    pub search_lr: Option<f64>,
    /// LoRA init.
    #[serde(default, deserialize_with = "lora_init_from_str")]
    pub lora_init: LoraInit,
    /// Rank grouping.
    #[serde(default)]
    pub rank_group: RankGroup,
    /// Pruning rounds (default [1], one-shot; e.g. [1, 3] adds iterative pruning in 3 rounds).
    #[serde(default = "one_round")]
    pub rounds: Vec<usize>,
    /// Keeps ids apart when a space is searched twice.
    #[serde(default)]
    pub tag: Option<String>,
}

/// A config's `lora_init` by its CLI name: the records' alias `lora` (the old name of `u_zero`)
/// is refused here as on the command line, since a new config saying `lora` most likely means
/// Hu et al.'s init.
fn lora_init_from_str<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<LoraInit, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn one_round() -> Vec<usize> {
    vec![1]
}

fn both_modes() -> Vec<PruneMode> {
    vec![PruneMode::Structured, PruneMode::Unstructured]
}
fn mean_only() -> Vec<CriterionKind> {
    vec![CriterionKind::Mean]
}
fn same_only() -> Vec<Reinit> {
    vec![Reinit::Same]
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
            if s.budgets.is_empty()
                || s.modes.is_empty()
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

    pub(super) fn recipe_for(&self, task: &TaskInfo, lr: f64) -> Recipe {
        let r = &self.recipe;
        let epochs = r
            .epochs_per_task
            .iter()
            .find(|(k, _)| key_means(k, task))
            .map(|(_, v)| *v)
            .or(r.epochs)
            .unwrap_or_else(|| task.default_epochs());
        let d = Recipe::new(epochs, lr);
        Recipe {
            batch_size: r.batch_size.unwrap_or(d.batch_size),
            max_len: r.max_len.unwrap_or(d.max_len),
            warmup_frac: r.warmup_frac.unwrap_or(d.warmup_frac),
            weight_decay: r.weight_decay.unwrap_or(d.weight_decay),
            max_steps: r.max_steps,
            max_train: self.max_train_for(task),
            max_dev: r.max_dev,
            adam_beta1: r.adam_beta1.unwrap_or(d.adam_beta1),
            adam_beta2: r.adam_beta2.unwrap_or(d.adam_beta2),
            adam_eps: r.adam_eps.unwrap_or(d.adam_eps),
            max_grad_norm: r.max_grad_norm.unwrap_or(d.max_grad_norm),
            bucket: self.bucket,
            ..d
        }
    }

    /// The max sequence length every run of this sweep uses.
    pub fn max_len(&self) -> usize {
        self.recipe.max_len.unwrap_or(Recipe::new(1.0, 1.0).max_len)
    }

    /// The batch size every run of this sweep uses.
    pub fn batch_size(&self) -> usize {
        self.recipe
            .batch_size
            .unwrap_or(Recipe::new(1.0, 1.0).batch_size)
    }

    /// The cap on training examples for `task` (per-task value, else the global one).
    pub fn max_train_for(&self, task: &TaskInfo) -> Option<usize> {
        let r = &self.recipe;
        r.max_train_per_task
            .iter()
            .find(|(k, _)| key_means(k, task))
            .map(|(_, v)| *v)
            .or(r.max_train)
    }
}
