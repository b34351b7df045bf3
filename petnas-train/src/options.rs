//! The options a user sets for a run, declared once. clap derives the command-line flags from
//! these structs (`#[command(flatten)]` in `main.rs`), serde derives a sweep file's keys from the
//! same structs (`[recipe]` and `[[searches]]`), and both resolve them through the same methods:
//! [`RecipeOptions::resolve`] into the [`Recipe`], [`SearchOptions::resolve`] into the
//! [`SearchConfig`], [`RunBase::baseline_spec`] into the [`RunSpec`] of a fixed-method run. The
//! defaults live in [`Recipe::new`] (and, for the search, in the `default_*` functions here, which
//! the flags' `default_value`s spell the same way: a test checks they agree). Every resolved value
//! is in the run spec and its hash (`record.rs`, `SPEC_FIELDS`).

use std::collections::BTreeMap;
use std::str::FromStr;

use clap::Args;
use petnas_core::arch::{Architecture, ModelFingerprint, PruneMode};
use petnas_core::criterion::CriterionKind;
use petnas_core::inventory::{inventory, EncoderConfig};
use petnas_core::names::Named;
use petnas_core::prune::{parse_budget, RankGroup};
use petnas_core::record::{LoraInit, Method, Precision, Recipe, Reinit, RunSpec};
use petnas_core::space::SearchSpace;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::search::{slug, SearchConfig};
use crate::task::TaskInfo;

/// A value of a [`Named`] enum on the command line: the message lists the valid names.
pub fn parse_named<T: Named>(s: &str) -> std::result::Result<T, String> {
    T::from_name(s).ok_or_else(|| format!("`{s}`: expected one of {}", T::names()))
}

/// The recipe's options. Each one left out takes the value of [`Recipe::new`] (the paper's
/// recipe), which is where the defaults live; every one of them is part of the run's spec and
/// its hash. On the command line `--lr`, `--warmup`, ...; in a sweep file the `[recipe]` table,
/// whose keys are the field names (`warmup_frac`, ...; the learning rate is given per baseline
/// and per search there).
#[derive(Args, Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeOptions {
    /// Epochs (default: the paper's per-task count).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Per-task epochs, overriding `epochs` (sweep files only).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub epochs_per_task: BTreeMap<String, f64>,
    /// Peak learning rate (default: 2e-5 for full fine-tuning, 1e-3 for PET methods). A sweep
    /// gives it per baseline and per search (`lr = ...`), not here.
    #[arg(long)]
    #[serde(skip)]
    pub lr: Option<f64>,
    /// Batch size [default: 16].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Max sequence length in tokens [default: 128].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Warm-up fraction of the linear schedule [default: 0.06].
    #[arg(long = "warmup")]
    pub warmup_frac: Option<f64>,
    /// Adam weight decay [default: 0, plain Adam].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Adam β₁ [default: 0.9].
    #[arg(long)]
    pub adam_beta1: Option<f64>,
    /// Adam β₂ [default: 0.999].
    #[arg(long)]
    pub adam_beta2: Option<f64>,
    /// Adam ε [default: 1e-8].
    #[arg(long)]
    pub adam_eps: Option<f64>,
    /// Clip the global gradient norm to this value (`none`: no clipping) [default: none].
    #[arg(long, value_parser = parse_grad_norm)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<GradNorm>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Use only the first N training examples.
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Per-task caps on training examples, overriding `max_train` (sweep files only).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_train_per_task: BTreeMap<String, usize>,
    /// Use only the first N dev examples.
    #[arg(long)]
    pub max_dev: Option<usize>,
    /// Length-bucketing window in batches (1 = plain shuffle) [default: 1]. A sweep file may
    /// also give it at its top level (`bucket = 50`), as earlier versions did.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<usize>,
}

/// `--max-grad-norm X|none`, `max_grad_norm = X | "none"`. A newtype, because clap reads a field
/// of type `Option<Option<T>>` as "flag with an optional value".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradNorm(pub Option<f64>);

/// `--max-grad-norm`'s parser.
pub fn parse_grad_norm(s: &str) -> std::result::Result<GradNorm, String> {
    if s == "none" {
        return Ok(GradNorm(None));
    }
    s.parse::<f64>()
        .map(|x| GradNorm(Some(x)))
        .map_err(|_| format!("`{s}`: a number or `none`"))
}

impl<'de> Deserialize<'de> for GradNorm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) if s == "none" => Ok(GradNorm(None)),
            toml::Value::Float(f) => Ok(GradNorm(Some(f))),
            toml::Value::Integer(i) => Ok(GradNorm(Some(i as f64))),
            other => Err(D::Error::custom(format!(
                "max_grad_norm = {other}: a number or \"none\""
            ))),
        }
    }
}

impl Serialize for GradNorm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(x) => s.serialize_f64(x),
            None => s.serialize_str("none"),
        }
    }
}

/// Whether a per-task key (`epochs_per_task`, `max_train_per_task`) means `task`: any spelling
/// of a GLUE task's name, or a user task's exact name.
pub fn key_means(key: &str, task: &TaskInfo) -> bool {
    match task.glue_task() {
        Some(g) => key.parse::<crate::glue::Task>().ok() == Some(g),
        None => key == task.name(),
    }
}

impl RecipeOptions {
    /// The epochs for `task`: its per-task value, else `epochs`, else the task's default.
    pub fn epochs_for(&self, task: &TaskInfo) -> f64 {
        self.epochs_per_task
            .iter()
            .find(|(k, _)| key_means(k, task))
            .map(|(_, v)| *v)
            .or(self.epochs)
            .unwrap_or_else(|| task.default_epochs())
    }

    /// The cap on training examples for `task` (its per-task value, else `max_train`).
    pub fn max_train_for(&self, task: &TaskInfo) -> Option<usize> {
        self.max_train_per_task
            .iter()
            .find(|(k, _)| key_means(k, task))
            .map(|(_, v)| *v)
            .or(self.max_train)
    }

    /// The recipe of a run on `task`: [`Recipe::new`] at the task's epochs and `default_lr`
    /// (the method's, or a sweep entry's `lr`), with every option given here applied. Not yet
    /// checked: callers call [`Recipe::validate`] and name the option in their own spelling.
    pub fn resolve(&self, task: &TaskInfo, default_lr: f64) -> Recipe {
        let base = Recipe::new(self.epochs_for(task), self.lr.unwrap_or(default_lr));
        Recipe {
            batch_size: self.batch_size.unwrap_or(base.batch_size),
            max_len: self.max_len.unwrap_or(base.max_len),
            warmup_frac: self.warmup_frac.unwrap_or(base.warmup_frac),
            weight_decay: self.weight_decay.unwrap_or(base.weight_decay),
            max_steps: self.max_steps.or(base.max_steps),
            max_train: self.max_train_for(task).or(base.max_train),
            max_dev: self.max_dev.or(base.max_dev),
            adam_beta1: self.adam_beta1.unwrap_or(base.adam_beta1),
            adam_beta2: self.adam_beta2.unwrap_or(base.adam_beta2),
            adam_eps: self.adam_eps.unwrap_or(base.adam_eps),
            max_grad_norm: self.max_grad_norm.map_or(base.max_grad_norm, |g| g.0),
            bucket: self.bucket.unwrap_or(base.bucket),
            ..base
        }
    }

    /// The max sequence length every run resolved from these options uses.
    pub fn max_len(&self) -> usize {
        self.max_len.unwrap_or(Recipe::new(1.0, 1.0).max_len)
    }

    /// The batch size every run resolved from these options uses.
    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(Recipe::new(1.0, 1.0).batch_size)
    }
}

/// Prune modes: `--mode structured|unstructured|both` (or a comma list), `modes = [...]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Modes(pub Vec<PruneMode>);

impl Default for Modes {
    fn default() -> Self {
        Modes(vec![PruneMode::Structured, PruneMode::Unstructured])
    }
}

impl FromStr for Modes {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "both" {
            return Ok(Modes::default());
        }
        s.split(',')
            .map(|m| {
                PruneMode::from_name(m.trim())
                    .ok_or_else(|| format!("`{m}`: expected one of {}, both", PruneMode::names()))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Modes)
    }
}

/// A budget as a number or text (`2000`, `"2k"`, `"3.4M"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BudgetValue {
    /// A count.
    Count(u64),
    /// Text with an optional k/M suffix.
    Text(String),
}

impl BudgetValue {
    /// The budget in PET parameters.
    pub fn count(&self) -> Result<usize> {
        match self {
            BudgetValue::Count(n) => Ok(*n as usize),
            BudgetValue::Text(t) => Ok(parse_budget(t)?),
        }
    }
}

/// `--budget 2000,10k`: each checked as it is parsed.
impl FromStr for BudgetValue {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        parse_budget(s).map_err(|e| e.to_string())?;
        Ok(BudgetValue::Text(s.to_string()))
    }
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

/// One search: a space pruned to budgets in modes, with criteria and re-initialisations. On the
/// command line `petnas-train search --space S --budget B ...` (the learning rate and LoRA init
/// are the run's common `--lr` and `--lora-init`); in a sweep file a `[[searches]]` table.
#[derive(Args, Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchOptions {
    /// Maximal space: bitfit, mam16, ... or a space spec.
    #[arg(long)]
    pub space: String,
    /// structured, unstructured, or both.
    #[arg(long = "mode", default_value = "both")]
    #[serde(default)]
    pub modes: Modes,
    /// Budgets in PET parameters, comma separated (2000,10k,3.4M).
    #[arg(
        long = "budget",
        value_delimiter = ',',
        required = true,
        allow_hyphen_values = true
    )]
    pub budgets: Vec<BudgetValue>,
    /// Per-task budgets, replacing `budgets` on the tasks named (sweep files only), e.g.
    /// `budgets_per_task = { sst2 = ["1k", "2k", "5k", "10k"] }` to draw a score-vs-budget curve
    /// on the cheap task while the costly one runs at `budgets` alone.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub budgets_per_task: BTreeMap<String, Vec<BudgetValue>>,
    /// Criteria, comma separated: mean (the paper's), last, abs, magnitude, random, adalora.
    #[arg(long = "criterion", value_delimiter = ',', default_value = "mean", value_parser = parse_named::<CriterionKind>)]
    #[serde(default = "default_criteria")]
    pub criteria: Vec<CriterionKind>,
    /// Pruned training starts from, comma separated: same (the paper's), fresh, keep.
    #[arg(long, value_delimiter = ',', default_value = "same", value_parser = parse_named::<Reinit>)]
    #[serde(default = "default_reinit")]
    pub reinit: Vec<Reinit>,
    /// Peak LR of the pruned retrainings (sweep files; on the command line `--lr`).
    #[arg(skip)]
    pub lr: f64,
    /// Peak LR of the maximal (search) training, if it should differ from the retrainings'.
    #[arg(long)]
    #[serde(default)]
    pub search_lr: Option<f64>,
    /// LoRA init (sweep files; on the command line the common `--lora-init`).
    #[arg(skip)]
    #[serde(default, deserialize_with = "lora_init_from_str")]
    pub lora_init: LoraInit,
    /// Rank-component score: uv (column k of U and of V) or u_only.
    #[arg(long, default_value = "uv", value_parser = parse_named::<RankGroup>)]
    #[serde(default)]
    pub rank_group: RankGroup,
    /// Pruning rounds, comma separated: 1 = one-shot (the paper's main setting); N > 1 = iterative
    /// pruning over N geometric budgets with a retraining (and fresh criterion) between rounds.
    #[arg(long = "prune-rounds", value_delimiter = ',', default_value = "1")]
    #[serde(default = "default_rounds")]
    pub rounds: Vec<usize>,
    /// A tag that keeps run ids apart when a space is searched twice (in one sweep or one
    /// output folder).
    #[arg(long)]
    #[serde(default)]
    pub tag: Option<String>,
}

/// `criteria`'s default: the paper's mean.
pub fn default_criteria() -> Vec<CriterionKind> {
    vec![CriterionKind::Mean]
}
/// `reinit`'s default: the paper's same initialisation.
pub fn default_reinit() -> Vec<Reinit> {
    vec![Reinit::Same]
}
/// `rounds`' default: one-shot.
pub fn default_rounds() -> Vec<usize> {
    vec![1]
}

/// A `lora_init` by its CLI name: the records' alias `lora` (the old name of `u_zero`) is
/// refused here as on the command line, since a new config saying `lora` most likely means
/// Hu et al.'s init.
pub fn lora_init_from_str<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<LoraInit, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// What every run of one task and seed shares: the task, the model, the seed, the device and
/// the precision (the CLI's common flags, or a sweep's top level).
#[derive(Debug, Clone)]
pub struct RunBase {
    /// The task's name.
    pub task: String,
    /// A user task's definition (none for GLUE).
    pub task_def: Option<petnas_core::task::TaskDef>,
    /// Checksums of the data files (none for the known GLUE files).
    pub data: Option<BTreeMap<String, String>>,
    /// The model as given.
    pub model: String,
    /// The model's shape.
    pub model_fingerprint: ModelFingerprint,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Arithmetic of the frozen matmuls.
    pub precision: Precision,
}

impl RunBase {
    /// The shared part of every run of `task` with `seed`.
    pub fn new(
        task: &TaskInfo,
        model: &str,
        config: &EncoderConfig,
        seed: u64,
        device: &str,
        precision: Precision,
    ) -> Result<Self> {
        let (task_def, data) = task.spec_parts()?;
        Ok(RunBase {
            task: task.name().to_string(),
            task_def,
            data,
            model: model.to_string(),
            model_fingerprint: ModelFingerprint::from_config(config)?,
            seed,
            device: device.to_string(),
            precision,
        })
    }

    /// The spec of a fixed-method run (`train`, a sweep's baseline): `arch` is its
    /// architecture (none for full fine-tuning).
    pub fn baseline_spec(
        &self,
        method: Method,
        arch: Option<&Architecture>,
        recipe: Recipe,
        lora_init: LoraInit,
    ) -> RunSpec {
        RunSpec {
            task: self.task.clone(),
            task_def: self.task_def.clone(),
            data: self.data.clone(),
            model: self.model.clone(),
            model_fingerprint: self.model_fingerprint.clone(),
            method,
            space: arch.map(|a| a.space.clone()),
            mode: arch.and_then(|a| a.mode),
            budget: arch.and_then(|a| a.budget),
            seed: self.seed,
            recipe,
            criterion: None,
            reinit: None,
            lora_init,
            device: self.device.clone(),
            rank_group: None,
            maximal_hash: None,
            precision: self.precision,
            prune_rounds: None,
        }
    }
}

impl SearchOptions {
    /// The budgets of this search on `task`: its `budgets_per_task` entry, else `budgets`.
    pub fn budgets_for(&self, task: &TaskInfo) -> &[BudgetValue] {
        self.budgets_per_task
            .iter()
            .find(|(k, _)| key_means(k, task))
            .map_or(&self.budgets, |(_, v)| v)
    }

    /// These options on one task: `budgets` replaced by the task's own (see [`Self::budgets_for`]).
    pub fn for_task(&self, task: &TaskInfo) -> SearchOptions {
        SearchOptions {
            budgets: self.budgets_for(task).to_vec(),
            budgets_per_task: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// The search these options describe, for one task and seed, with the retrainings' recipe
    /// (`recipe`; the maximal training's differs only in its LR, if `search_lr` is given).
    /// Checked against the maximal architecture as [`SearchConfig::validate`] does.
    pub fn resolve(
        &self,
        base: &RunBase,
        config: &EncoderConfig,
        recipe: Recipe,
    ) -> Result<(SearchConfig, Architecture)> {
        let space = SearchSpace::from_spec(&self.space, &inventory(config))
            .map_err(|e| TrainError::Invalid(format!("search space `{}`: {e}", self.space)))?;
        if space.full_finetune {
            return Err(TrainError::Invalid(format!(
                "search space `{}`: full fine-tuning has no PET parameters to search over",
                self.space
            )));
        }
        let budgets = self
            .budgets
            .iter()
            .map(BudgetValue::count)
            .collect::<Result<Vec<_>>>()?;
        let cfg = SearchConfig {
            task: base.task.clone(),
            task_def: base.task_def.clone(),
            data: base.data.clone(),
            model: base.model.clone(),
            space,
            tag: self
                .tag
                .as_deref()
                .map(|t| format!("-{}", slug(t)))
                .unwrap_or_default(),
            modes: self.modes.0.clone(),
            budgets,
            seed: base.seed,
            search_recipe: self.search_lr.map(|lr| Recipe {
                lr,
                ..recipe.clone()
            }),
            recipe,
            criteria: self.criteria.clone(),
            reinits: self.reinit.clone(),
            lora_init: self.lora_init,
            rank_group: self.rank_group,
            device: base.device.clone(),
            precision: base.precision,
            rounds: self.rounds.clone(),
        };
        let maximal = Architecture::maximal(&cfg.space, config)?;
        cfg.validate(&maximal)?;
        Ok((cfg, maximal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        recipe: RecipeOptions,
        #[command(flatten)]
        search: SearchOptions,
    }

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["petnas-train", "--space", "bitfit", "--budget", "1k"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn toml_search(extra: &str) -> SearchOptions {
        toml::from_str(&format!(
            "space = \"bitfit\"\nbudgets = [\"1k\"]\nlr = 1e-3\n{extra}"
        ))
        .unwrap()
    }

    /// A flag left out and a key left out mean the same thing: the defaults the CLI spells in
    /// `default_value` are the ones the sweep file's serde defaults give.
    #[test]
    fn cli_and_sweep_file_defaults_agree() {
        let c = cli(&[]);
        let t = toml_search("");
        assert_eq!(c.recipe, RecipeOptions::default());
        assert_eq!(
            toml::from_str::<RecipeOptions>("").unwrap(),
            RecipeOptions::default()
        );
        assert_eq!(
            SearchOptions {
                lr: 1e-3,
                ..c.search
            },
            t
        );
    }

    /// Each option, given on the command line and in a sweep file with the same value, gives
    /// the same options; and each recipe option changes the resolved recipe (so the spec and
    /// its hash). A field added to [`RecipeOptions`] without a case here fails the count.
    #[test]
    fn every_recipe_option_reaches_the_recipe_by_either_route() {
        let cases: &[(&str, &str, &str)] = &[
            ("--epochs", "2.5", "epochs = 2.5"),
            ("--lr", "0.01", ""),
            ("--batch-size", "4", "batch_size = 4"),
            ("--max-len", "64", "max_len = 64"),
            ("--warmup", "0.1", "warmup_frac = 0.1"),
            ("--weight-decay", "0.01", "weight_decay = 0.01"),
            ("--adam-beta1", "0.8", "adam_beta1 = 0.8"),
            ("--adam-beta2", "0.99", "adam_beta2 = 0.99"),
            ("--adam-eps", "1e-6", "adam_eps = 1e-6"),
            ("--max-grad-norm", "1", "max_grad_norm = 1"),
            ("--max-steps", "7", "max_steps = 7"),
            ("--max-train", "100", "max_train = 100"),
            ("--max-dev", "50", "max_dev = 50"),
            ("--bucket", "50", "bucket = 50"),
        ];
        let fields = serde_json::to_value(RecipeOptions {
            max_grad_norm: Some(GradNorm(None)),
            bucket: Some(1),
            ..Default::default()
        })
        .unwrap();
        // Every serialised key, plus `lr` (CLI only) and the two per-task maps (tested below).
        assert_eq!(
            fields.as_object().unwrap().len() + 1 + 2,
            cases.len() + 2,
            "a RecipeOptions field has no case here: {fields}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("RTE")).unwrap();
        std::fs::write(
            dir.path().join("RTE/train.tsv"),
            "index\tsentence1\tsentence2\tlabel\n",
        )
        .unwrap();
        let task = TaskInfo::glue(crate::glue::Task::Rte, dir.path()).unwrap();
        let plain = RecipeOptions::default().resolve(&task, 1e-3);
        for (flag, value, key) in cases {
            let c = cli(&[flag, value]).recipe;
            assert_ne!(
                c.resolve(&task, 1e-3),
                plain,
                "{flag} {value} changed nothing"
            );
            if !key.is_empty() {
                let t: RecipeOptions = toml::from_str(key).unwrap();
                assert_eq!(c, t, "{flag} {value} against `{key}`");
            }
        }
        let t: RecipeOptions = toml::from_str(
            "epochs = 2\nepochs_per_task = { RTE = 5 }\nmax_train = 10\nmax_train_per_task = { rte = 20 }",
        )
        .unwrap();
        let r = t.resolve(&task, 1e-3);
        assert_eq!((r.epochs, r.max_train), (5.0, Some(20)));
        assert_eq!(
            toml::from_str::<RecipeOptions>("max_grad_norm = \"none\"")
                .unwrap()
                .max_grad_norm,
            Some(GradNorm(None))
        );
    }

    #[test]
    fn every_search_option_reads_the_same_by_either_route() {
        let cases: &[(&[&str], &str)] = &[
            (&["--mode", "structured"], "modes = [\"structured\"]"),
            (
                &["--mode", "unstructured,structured"],
                "modes = [\"unstructured\", \"structured\"]",
            ),
            (
                &["--criterion", "mean,random"],
                "criteria = [\"mean\", \"random\"]",
            ),
            (&["--reinit", "fresh"], "reinit = [\"fresh\"]"),
            (&["--search-lr", "0.002"], "search_lr = 0.002"),
            (&["--rank-group", "u_only"], "rank_group = \"u_only\""),
            (&["--prune-rounds", "1,3"], "rounds = [1, 3]"),
            (&["--tag", "x"], "tag = \"x\""),
        ];
        for (args, key) in cases {
            let c = SearchOptions {
                lr: 1e-3,
                ..cli(args).search
            };
            assert_eq!(c, toml_search(key), "{args:?} against `{key}`");
            assert_ne!(c, toml_search(""), "{args:?} changed nothing");
        }
        assert_eq!(
            cli(&["--budget", "2000,10k"]).search.budgets,
            vec![
                BudgetValue::Text("1k".into()),
                BudgetValue::Text("2000".into()),
                BudgetValue::Text("10k".into())
            ]
        );
        let err = Cli::try_parse_from([
            "p",
            "--space",
            "bitfit",
            "--budget",
            "1k",
            "--criterion",
            "vibes",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("vibes") && err.contains("mean, last"), "{err}");
        let err = "sideways".parse::<Modes>().unwrap_err();
        assert!(err.contains("structured, unstructured, both"), "{err}");
    }
}
