//! `petnas-train sweep`: the whole study from one TOML file, resumable and shardable.
//!
//! Layout of a sweep directory:
//! ```text
//! <out>/sweep.toml          the config as given (a copy)
//! <out>/plan.json           the planned runs (id, spec hash)
//! <out>/runs/<run-id>/      one folder per finished run: record.json, architecture.json, ...
//! <out>/index.jsonl         one record per line, rebuilt atomically after every run
//!                           (index.<K>-of-<N>.jsonl for shard K of N)
//! <out>/sweep.log           tracing log
//! ```
//! A run counts as done when `runs/<id>/record.json` exists with the planned spec's hash. Run
//! folders appear by rename only when complete, so `kill -9` at any moment loses nothing finished
//! and leaves only `.partial-*` folders, which analysis ignores and the next start removes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Device;
use petnas_core::arch::{Architecture, ModelFingerprint, PruneMode};
use petnas_core::criterion::CriterionKind;
use petnas_core::inventory::inventory;
use petnas_core::prune::{parse_budget, RankGroup};
use petnas_core::record::{LoraInit, Precision, Recipe, Reinit, RunRecord, RunSpec};
use petnas_core::space::SearchSpace;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};
use crate::glue::Task;
use crate::model::load::ModelDir;
use crate::run::{self, DataLimits, RunInputs, RunPlan};
use crate::search::{self, init_map, slug, SearchConfig, SearchHooks};
use crate::task::{SplitName, TaskInfo, UserTask};

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

    fn recipe_for(&self, task: &TaskInfo, lr: f64) -> Recipe {
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

/// A unit of scheduling: one baseline run, or one search (maximal + its pruned runs). Shards
/// split the plan by job, so a search's runs stay together.
#[derive(Debug, Clone)]
pub enum Job {
    /// One training of a fixed method.
    Baseline {
        /// Task.
        task: TaskInfo,
        /// Run id.
        id: String,
        /// Spec.
        spec: RunSpec,
        /// Architecture (None: full fine-tuning).
        arch: Option<Architecture>,
    },
    /// One search.
    Search {
        /// Task.
        task: TaskInfo,
        /// The search.
        cfg: Box<SearchConfig>,
    },
}

/// A planned run, for the plan display, resume and cost.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRun {
    /// Run id.
    pub id: String,
    /// Task.
    pub task: String,
    /// Index of its job.
    pub job: usize,
    /// Spec hash.
    pub hash: String,
    /// Optimizer steps it will take.
    pub steps: usize,
    /// Its spec (not written to plan.json, which keeps ids, hashes and steps).
    #[serde(skip)]
    pub spec: RunSpec,
}

/// The expanded sweep.
pub struct Plan {
    /// Jobs in order.
    pub jobs: Vec<Job>,
    /// Every run.
    pub runs: Vec<PlannedRun>,
    /// The model's config.
    pub model: ModelDir,
    /// Every task of the config, in order.
    pub tasks: Vec<TaskInfo>,
    /// The records folder of the config, if any.
    pub records: Option<PathBuf>,
}

impl Plan {
    /// The task named `name`.
    pub fn task(&self, name: &str) -> Option<&TaskInfo> {
        self.tasks.iter().find(|t| t.name() == name)
    }

    /// The state of a planned run: done if its record (with this hash) is in the sweep's runs
    /// folder or in the records folder; changed if either holds it with another hash.
    pub fn state(&self, out: &Path, id: &str, hash: &str) -> RunState {
        let here = run_state(out, id, hash);
        let kept = self
            .records
            .as_deref()
            .map_or(RunState::Missing, |r| run_state_in(r, id, hash));
        match (here, kept) {
            (RunState::Done, _) | (_, RunState::Done) => RunState::Done,
            (RunState::Changed, _) | (_, RunState::Changed) => RunState::Changed,
            _ => RunState::Missing,
        }
    }
}

/// Copies a finished run's record and architecture (not its weights) into `records/<id>/`.
pub fn keep_record(records: &Path, run_dir: &Path, id: &str) -> Result<()> {
    let dst = records.join(id);
    std::fs::create_dir_all(&dst).map_err(io_err(&dst))?;
    for f in ["architecture.json", "record.json"] {
        let src = run_dir.join(f);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(io_err(&src))?;
            petnas_core::io::write_atomic(&dst.join(f), &bytes)?;
        }
    }
    Ok(())
}

/// The GLUE folder: the config's, $PETNAS_DATA, data/glue, ../shared/data/glue.
pub fn find_data(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = given {
        if !d.is_dir() {
            return Err(TrainError::Invalid(format!(
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
    Err(TrainError::Invalid(format!(
        "no GLUE data found (looked in {}): pass --data DIR (or `data = ...` in the sweep) with <DIR>/<TASK>/train.tsv and dev.tsv, or set PETNAS_DATA",
        tried.join(", ")
    )))
}

/// Expands a config into jobs and runs (reads the model's config and counts training rows).
pub fn plan(cfg: &SweepConfig, data_override: Option<&Path>) -> Result<Plan> {
    let md = ModelDir::open(&cfg.model)?;
    let mc = &md.config;
    let fp = ModelFingerprint::from_config(mc)?;
    let inv = inventory(mc);
    let mut data: Option<PathBuf> = None;
    let mut tasks: Vec<TaskInfo> = Vec::new();
    for t in &cfg.tasks {
        let info = match t {
            TaskEntry::Glue(name) => {
                let task: Task = name
                    .parse()
                    .map_err(|e| TrainError::Invalid(format!("task `{name}`: {e}")))?;
                if data.is_none() {
                    data = Some(find_data(data_override.or(cfg.data.as_deref()))?);
                }
                TaskInfo::glue(task, data.as_deref().expect("found above"))?
            }
            TaskEntry::User(u) => TaskInfo::user(u)?,
        };
        if tasks.iter().any(|x| x.name() == info.name()) {
            return Err(TrainError::Invalid(format!(
                "task `{}` is listed twice",
                info.name()
            )));
        }
        tasks.push(info);
    }
    let mut jobs = Vec::new();
    let mut runs: Vec<PlannedRun> = Vec::new();
    for task in &tasks {
        let n = task.load(SplitName::Train)?.len();
        let n = cfg.max_train_for(task).map_or(n, |m| n.min(m));
        let (task_def, data_sums) = task.spec_parts()?;
        for &seed in &cfg.seeds {
            for b in &cfg.baselines {
                let (arch, space) = if b.method == "full" {
                    (None, None)
                } else {
                    let sp = SearchSpace::from_spec(&b.method, &inv).map_err(|e| {
                        TrainError::Invalid(format!("baseline `{}`: {e}", b.method))
                    })?;
                    (Some(Architecture::maximal(&sp, mc)?), Some(sp.name.clone()))
                };
                let spec = RunSpec {
                    task: task.name().into(),
                    task_def: task_def.clone(),
                    data: data_sums.clone(),
                    model: cfg.model.clone(),
                    model_fingerprint: fp.clone(),
                    method: b.method.clone(),
                    space,
                    mode: None,
                    budget: None,
                    seed,
                    recipe: cfg.recipe_for(task, b.lr),
                    criterion: None,
                    reinit: None,
                    lora_init: b.lora_init,
                    device: cfg.device.clone(),
                    rank_group: None,
                    maximal_hash: None,
                    precision: cfg.precision,
                    prune_rounds: None,
                };
                spec.recipe.validate().map_err(|e| {
                    TrainError::Invalid(format!("baseline `{}` on {}: {e}", b.method, task.name()))
                })?;
                let id = baseline_id(task.name(), &b.method, b.tag.as_deref(), seed);
                runs.push(PlannedRun {
                    id: id.clone(),
                    task: task.name().into(),
                    job: jobs.len(),
                    hash: spec.hash(),
                    steps: crate::train::total_steps(&spec.recipe, n),
                    spec: spec.clone(),
                });
                jobs.push(Job::Baseline {
                    task: task.clone(),
                    id,
                    spec,
                    arch,
                });
            }
            for s in &cfg.searches {
                let space = SearchSpace::from_spec(&s.space, &inv)
                    .map_err(|e| TrainError::Invalid(format!("search space `{}`: {e}", s.space)))?;
                if space.full_finetune {
                    return Err(TrainError::Invalid(format!(
                        "search space `{}` has no PET parameters",
                        s.space
                    )));
                }
                let budgets = s
                    .budgets
                    .iter()
                    .map(|b| match b {
                        BudgetValue::Count(n) => Ok(*n as usize),
                        BudgetValue::Text(t) => parse_budget(t),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let recipe = cfg.recipe_for(task, s.lr);
                let sc = SearchConfig {
                    task: task.name().into(),
                    task_def: task_def.clone(),
                    data: data_sums.clone(),
                    model: cfg.model.clone(),
                    space,
                    tag: s
                        .tag
                        .as_deref()
                        .map(|t| format!("-{}", slug(t)))
                        .unwrap_or_default(),
                    modes: s.modes.clone(),
                    budgets,
                    seed,
                    search_recipe: s.search_lr.map(|lr| Recipe {
                        lr,
                        ..recipe.clone()
                    }),
                    recipe,
                    criteria: s.criteria.clone(),
                    reinits: s.reinit.clone(),
                    lora_init: s.lora_init,
                    rank_group: s.rank_group,
                    device: cfg.device.clone(),
                    precision: cfg.precision,
                    rounds: s.rounds.clone(),
                };
                let maximal = Architecture::maximal(&sc.space, mc)?;
                sc.validate(&maximal)?;
                let ms = sc.maximal_spec(&maximal);
                runs.push(PlannedRun {
                    id: sc.maximal_id(),
                    task: task.name().into(),
                    job: jobs.len(),
                    hash: ms.hash(),
                    steps: crate::train::total_steps(&ms.recipe, n),
                    spec: ms,
                });
                for p in sc.pruned_runs(&maximal) {
                    runs.push(PlannedRun {
                        id: p.id,
                        task: task.name().into(),
                        job: jobs.len(),
                        hash: p.spec.hash(),
                        steps: crate::train::total_steps(&p.spec.recipe, n),
                        spec: p.spec,
                    });
                }
                jobs.push(Job::Search {
                    task: task.clone(),
                    cfg: Box::new(sc),
                });
            }
        }
    }
    let mut seen = BTreeSet::new();
    for r in &runs {
        if !seen.insert(r.id.clone()) {
            return Err(TrainError::Invalid(format!(
                "two planned runs share the id `{}`: give one of the entries a `tag`",
                r.id
            )));
        }
    }
    Ok(Plan {
        jobs,
        runs,
        model: md,
        tasks,
        records: cfg.records.clone(),
    })
}

/// `K/N`: shard K (0-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 0..n.
    pub k: usize,
    /// Shard count.
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard `{s}`: expected K/N, e.g. 0/4"))?;
        let k: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("--shard `{s}`: K is not a number"))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard `{s}`: N is not a number"))?;
        if n == 0 || k >= n {
            return Err(format!("--shard `{s}`: need 0 <= K < N"));
        }
        Ok(Shard { k, n })
    }
}

impl Shard {
    /// Whether job `i` belongs to this shard (round robin: deterministic, independent of state).
    pub fn owns(&self, job: usize) -> bool {
        job % self.n == self.k
    }
}

/// State of a planned run on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Not there.
    Missing,
    /// There, with the planned spec.
    Done,
    /// There, but made from another config (hash differs).
    Changed,
}

/// Where the runs of a sweep live.
pub fn runs_dir(out: &Path) -> PathBuf {
    out.join("runs")
}

/// The run id of a fixed method's training: the same rule for `train` and for a sweep's
/// baselines, so one run lands in one folder name either way.
pub fn baseline_id(task: &str, method: &str, tag: Option<&str>, seed: u64) -> String {
    let tag = tag.map(|t| format!("-{}", slug(t))).unwrap_or_default();
    format!("{task}-{}{tag}-s{seed}", slug(method))
}

/// The state of run `id` in a sweep folder `out` (its runs live in `out/runs/`).
pub fn run_state(out: &Path, id: &str, hash: &str) -> RunState {
    run_state_in(&runs_dir(out), id, hash)
}

/// The state of run `id` directly under `dir` (`dir/<id>/record.json`).
pub fn run_state_in(dir: &Path, id: &str, hash: &str) -> RunState {
    let p = dir.join(id).join("record.json");
    match RunRecord::load(&p) {
        Ok(r) if r.config_hash == hash => RunState::Done,
        Ok(_) => RunState::Changed,
        Err(_) => RunState::Missing,
    }
}

/// Rebuilds `index.jsonl` (or the shard's index) atomically from the finished run folders.
pub fn write_index(
    out: &Path,
    shard: Option<Shard>,
    ids: Option<&BTreeSet<String>>,
) -> Result<usize> {
    let dir = runs_dir(out);
    let mut lines = String::new();
    let mut n = 0;
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || ids.is_some_and(|ids| !ids.contains(&name)) {
            continue;
        }
        if let Ok(r) = RunRecord::load(&p.join("record.json")) {
            lines.push_str(
                &serde_json::to_string(&r).map_err(|e| TrainError::Invalid(e.to_string()))?,
            );
            lines.push('\n');
            n += 1;
        }
    }
    let name = match shard {
        Some(s) => format!("index.{}-of-{}.jsonl", s.k, s.n),
        None => "index.jsonl".into(),
    };
    petnas_core::io::write_atomic(&out.join(name), lines.as_bytes())?;
    Ok(n)
}

/// Removes the temporary files an interrupted atomic write of this invocation's own files
/// (`index*.jsonl`, `plan*.json`, `sweep.toml`) left in `out`: `.<name>.tmp.<pid>.<n>`. Another
/// shard's files are left alone: it may be writing them right now.
pub fn clean_temp_files(out: &Path, shard: Option<Shard>) -> usize {
    let own = match shard {
        Some(s) => vec![
            format!("index.{}-of-{}.jsonl", s.k, s.n),
            format!("plan.{}-of-{}.json", s.k, s.n),
        ],
        None => vec![
            "index.jsonl".to_string(),
            "plan.json".to_string(),
            "sweep.toml".to_string(),
        ],
    };
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(out) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if own.iter().any(|f| name.starts_with(&format!(".{f}.tmp.")))
                && std::fs::remove_file(e.path()).is_ok()
            {
                n += 1;
            }
        }
    }
    n
}

/// Removes the `.partial-<id>-<pid>` folders that interrupted runs left, for the runs in `ids`
/// (all when `None`): another shard's partial folder may be a run in progress.
pub fn clean_partials(out: &Path, ids: Option<&BTreeSet<String>>) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(runs_dir(out)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".partial-") else {
                continue;
            };
            let id = rest.rsplit_once('-').map_or(rest, |(id, _pid)| id);
            if ids.is_none_or(|ids| ids.contains(id)) && std::fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// The sweep folder's lock, held while a sweep writes there. Two sweeps writing one folder at
/// once would each check the folder before the other wrote and leave a mix of configs. An
/// unsharded sweep holds `.sweep.lock` exclusively; shard K of N holds it shared plus
/// `.sweep.K-of-N.lock` exclusively, so the shards of a job array run side by side while a
/// second copy of any of them, or an unsharded sweep, is refused. The OS drops the locks when
/// the process ends, however it ends.
pub struct SweepLock {
    _files: Vec<std::fs::File>,
}

/// Takes the lock of `out` for this shard, or says who holds it.
pub fn lock(out: &Path, shard: Option<Shard>) -> Result<SweepLock> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let open = |name: &str| {
        let p = out.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))
    };
    let busy = |what: &str| {
        TrainError::Invalid(format!(
            "another petnas-train sweep is writing {} ({what}); wait for it to finish, or use another --out",
            out.display()
        ))
    };
    let main = open(".sweep.lock")?;
    match shard {
        None => {
            main.try_lock()
                .map_err(|_| busy("a sweep or shard holds .sweep.lock"))?;
            Ok(SweepLock { _files: vec![main] })
        }
        Some(s) => {
            main.try_lock_shared()
                .map_err(|_| busy("an unsharded sweep holds .sweep.lock"))?;
            let name = format!(".sweep.{}-of-{}.lock", s.k, s.n);
            let own = open(&name)?;
            own.try_lock()
                .map_err(|_| busy(&format!("shard {}/{} is already running", s.k, s.n)))?;
            Ok(SweepLock {
                _files: vec![main, own],
            })
        }
    }
}

/// Options of one sweep invocation.
pub struct SweepOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Only this shard's jobs.
    pub shard: Option<Shard>,
    /// Redo runs whose config changed instead of stopping.
    pub rerun_changed: bool,
    /// Draw progress bars.
    pub progress: bool,
}

/// What a sweep invocation did.
#[derive(Debug, Default)]
pub struct SweepSummary {
    /// Runs planned for this shard.
    pub planned: usize,
    /// Already done before this call.
    pub skipped: usize,
    /// Completed in this call.
    pub completed: usize,
    /// Failed (diverged) in this call.
    pub failed: usize,
}

/// Runs every missing run of the plan (this shard's part), writing as it goes.
pub fn execute(
    cfg: &SweepConfig,
    config_text: &str,
    plan: &Plan,
    opts: &SweepOptions,
    device: &Device,
) -> Result<SweepSummary> {
    let out = &opts.out;
    let _lock = lock(out, opts.shard)?;
    std::fs::create_dir_all(runs_dir(out)).map_err(io_err(out))?;
    let mine: Vec<&PlannedRun> = plan
        .runs
        .iter()
        .filter(|r| opts.shard.is_none_or(|s| s.owns(r.job)))
        .collect();
    let my_ids: BTreeSet<String> = mine.iter().map(|r| r.id.clone()).collect();
    let cleaned = clean_partials(out, Some(&my_ids)) + clean_temp_files(out, opts.shard);
    if cleaned > 0 {
        tracing::info!(cleaned, "removed what interrupted runs and writes left");
    }
    let changed: Vec<&str> = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) == RunState::Changed)
        .map(|r| r.id.as_str())
        .collect();
    if !changed.is_empty() && !opts.rerun_changed {
        return Err(TrainError::Invalid(format!(
            "{} finished run(s) in {} were made with a different config (e.g. {}); use another --out, or --rerun-changed to redo them",
            changed.len(),
            out.display(),
            changed.iter().take(3).copied().collect::<Vec<_>>().join(", ")
        )));
    }
    // Only now: a refused config must not replace the copy of the one the runs were made with.
    petnas_core::io::write_atomic(&out.join("sweep.toml"), config_text.as_bytes())?;
    let plan_json: Vec<_> = mine
        .iter()
        .map(|r| serde_json::json!({"id": r.id, "hash": r.hash, "steps": r.steps}))
        .collect();
    let pname = match opts.shard {
        Some(s) => format!("plan.{}-of-{}.json", s.k, s.n),
        None => "plan.json".into(),
    };
    petnas_core::io::write_atomic(
        &out.join(pname),
        serde_json::to_string_pretty(&plan_json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let ids: BTreeSet<String> = mine.iter().map(|r| r.id.clone()).collect();
    let hashes: HashMap<String, String> = mine
        .iter()
        .map(|r| (r.id.clone(), r.hash.clone()))
        .collect();
    let mut summary = SweepSummary {
        planned: mine.len(),
        ..Default::default()
    };
    summary.skipped = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) == RunState::Done)
        .count();

    let multi = if opts.progress {
        Some(indicatif::MultiProgress::new())
    } else {
        None
    };
    let overall = match &multi {
        Some(m) => {
            let b = m.add(indicatif::ProgressBar::new(mine.len() as u64));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "sweep [{bar:30}] {pos}/{len} runs, ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_position(summary.skipped as u64);
            b
        }
        None => indicatif::ProgressBar::hidden(),
    };
    let say = |line: String| {
        tracing::info!("{line}");
        match &multi {
            Some(m) => {
                let _ = m.println(&line);
            }
            None => println!("{line}"),
        }
    };
    let max_len = cfg.max_len();
    let mut inputs: Option<(TaskInfo, RunInputs)> = None;
    let is_done = |id: &str, _spec: &RunSpec| -> bool {
        let h = hashes.get(id).cloned().unwrap_or_default();
        plan.state(out, id, &h) == RunState::Done
    };
    for (ji, job) in plan.jobs.iter().enumerate() {
        if opts.shard.is_some_and(|s| !s.owns(ji)) {
            continue;
        }
        let job_runs: Vec<&&PlannedRun> = mine.iter().filter(|r| r.job == ji).collect();
        if job_runs.iter().all(|r| is_done(&r.id, &r.spec)) {
            continue;
        }
        let task = match job {
            Job::Baseline { task, .. } | Job::Search { task, .. } => task,
        };
        if inputs.as_ref().is_none_or(|(t, _)| t != task) {
            drop(inputs.take()); // free the previous task's data first
            let limits = DataLimits {
                max_train: cfg.max_train_for(task),
                max_dev: cfg.recipe.max_dev,
            };
            inputs = Some((
                task.clone(),
                RunInputs::load(&cfg.model, task, max_len, limits, device)?,
            ));
        }
        let inp = &inputs.as_ref().expect("loaded above").1;
        let mut on_record = |r: &RunRecord| {
            match &r.result.status {
                petnas_core::record::RunStatus::Completed => summary.completed += 1,
                petnas_core::record::RunStatus::Failed { .. } => summary.failed += 1,
            }
            say(run::summary_line(r));
            overall.inc(1);
            if let Some(records) = &plan.records {
                if let Err(e) = keep_record(records, &runs_dir(out).join(&r.id), &r.id) {
                    say(format!(
                        "warning: record of {} not kept in {}: {e}",
                        r.id,
                        records.display()
                    ));
                }
            }
            if let Err(e) = write_index(out, opts.shard, Some(&ids)) {
                tracing::warn!("index not written: {e}");
            }
        };
        match job {
            Job::Baseline { id, spec, arch, .. } => {
                let start = arch
                    .as_ref()
                    .map(|a| init_map(a, spec.seed, spec.lora_init))
                    .unwrap_or_default();
                let o = run::execute(
                    inp,
                    RunPlan {
                        spec: spec.clone(),
                        arch: arch.as_ref(),
                        start: &start,
                        criterion: None,
                        progress: multi.clone(),
                    },
                    id,
                    &runs_dir(out),
                )?;
                on_record(&o.record);
            }
            Job::Search { cfg: sc, .. } => {
                search::search(
                    inp,
                    sc,
                    &runs_dir(out),
                    SearchHooks {
                        is_done: &is_done,
                        on_record: &mut on_record,
                        progress: multi.clone(),
                    },
                )?;
            }
        }
    }
    overall.finish_and_clear();
    write_index(out, opts.shard, Some(&ids))?;
    Ok(summary)
}

/// Measured examples/s per (task, full fine-tuning) for the cost estimate.
pub type Throughput = BTreeMap<(String, bool), f64>;

/// Whether a planned run fine-tunes every weight (several times slower per example than a PET).
pub fn is_full(spec: &RunSpec) -> bool {
    spec.method == "full"
}

/// Human summary of a plan: counts, trainings, steps and an estimated cost.
pub fn describe(
    plan: &Plan,
    out: &Path,
    shard: Option<Shard>,
    examples_per_s: Option<&Throughput>,
    batch: usize,
) -> String {
    let mine: Vec<&PlannedRun> = plan
        .runs
        .iter()
        .filter(|r| shard.is_none_or(|s| s.owns(r.job)))
        .collect();
    let done = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) == RunState::Done)
        .count();
    let changed = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) == RunState::Changed)
        .count();
    let todo: Vec<&&PlannedRun> = mine
        .iter()
        .filter(|r| plan.state(out, &r.id, &r.hash) != RunState::Done)
        .collect();
    let steps: usize = todo.iter().map(|r| r.steps).sum();
    let searches = plan
        .jobs
        .iter()
        .enumerate()
        .filter(|(i, j)| matches!(j, Job::Search { .. }) && shard.is_none_or(|s| s.owns(*i)))
        .count();
    let mut by_task: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &mine {
        *by_task.entry(r.task.as_str()).or_default() += 1;
    }
    let mut s = format!(
        "plan: {} runs ({} trainings of a maximal search space serve {} pruned runs), {} done, {} to do, {} changed\n",
        mine.len(),
        searches,
        mine.len().saturating_sub(searches).saturating_sub(plan.jobs.iter().enumerate().filter(|(i, j)| matches!(j, Job::Baseline { .. }) && shard.is_none_or(|s| s.owns(*i))).count()),
        done,
        todo.len(),
        changed
    );
    for (t, n) in by_task {
        s.push_str(&format!("  {t}: {n} runs\n"));
    }
    s.push_str(&format!(
        "  optimizer steps to do: {steps} (batch {batch})\n"
    ));
    if let Some(eps) = examples_per_s {
        let mut secs = 0.0;
        let mut unknown = 0usize;
        for r in &todo {
            match eps.get(&(r.task.clone(), is_full(&r.spec))) {
                Some(e) => secs += r.steps as f64 * batch as f64 / e.max(1e-9),
                None => unknown += 1,
            }
        }
        let t = if secs < 3600.0 {
            format!("{:.1} min", secs / 60.0)
        } else {
            format!("{:.1} h", secs / 3600.0)
        };
        let rates: Vec<String> = eps
            .iter()
            .map(|((task, full), e)| format!("{task}{} {e:.0}", if *full { " full" } else { "" }))
            .collect();
        s.push_str(&format!(
            "  estimated training time: {t}, plus evaluation (measured examples/s: {})\n",
            rates.join(", ")
        ));
        if unknown > 0 {
            s.push_str(&format!(
                "  ({unknown} runs without a throughput figure are not counted)\n"
            ));
        }
    }
    s
}
