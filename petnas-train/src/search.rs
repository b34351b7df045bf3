//! The search run (paper §3.2): train the maximal architecture once while accumulating the
//! criterion, prune to every (mode, budget) from the same scores, re-initialise with the same
//! initial values, retrain each pruned architecture, evaluate.
//!
//! One maximal training serves every budget, both modes, every criterion (the accumulator keeps
//! the sums for all of them) and every re-initialisation policy. Its criterion sums and trained
//! values are saved with its run, so a resumed search re-prunes without retraining.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use petnas_core::arch::{Architecture, PruneMode};
use petnas_core::criterion::{CriterionAccumulator, CriterionKind};
use petnas_core::names::Named;
use petnas_core::prune::{iterative_budgets, prune, scores_at_maximal_shape, RankGroup};
use petnas_core::record::{
    LoraInit, Method, Precision, Recipe, Reinit, RunRecord, RunSpec, RunStatus,
};
use petnas_core::space::SearchSpace;

use crate::error::{Result, TrainError};
use crate::model::pet::{init_map, FRESH_STREAM};
use crate::run::{self, RunInputs, RunPlan, CRITERION_FILE};

/// What a search does.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// The task's name (record field).
    pub task: String,
    /// A user task's definition (record field; none for GLUE).
    pub task_def: Option<petnas_core::task::TaskDef>,
    /// Checksums of the data files (record field; none for the known GLUE files).
    pub data: Option<std::collections::BTreeMap<String, String>>,
    /// Model spec as given (record field).
    pub model: String,
    /// The maximal space.
    pub space: SearchSpace,
    /// An optional tag that keeps run ids apart when one sweep searches a space twice.
    pub tag: String,
    /// Modes to prune in.
    pub modes: Vec<PruneMode>,
    /// Budgets (PET parameters).
    pub budgets: Vec<usize>,
    /// Seed of init, shuffling, dropout.
    pub seed: u64,
    /// Recipe of the pruned trainings.
    pub recipe: Recipe,
    /// Recipe of the maximal training, if different (e.g. a lower LR for a larger space).
    pub search_recipe: Option<Recipe>,
    /// Criteria to prune with.
    pub criteria: Vec<CriterionKind>,
    /// How the pruned architectures start.
    pub reinits: Vec<Reinit>,
    /// LoRA init.
    pub lora_init: LoraInit,
    /// Rank-component grouping for structured pruning.
    pub rank_group: RankGroup,
    /// Device name for records.
    pub device: String,
    /// Arithmetic of the frozen matmuls.
    pub precision: Precision,
    /// Pruning rounds to run (1: one-shot, the paper's main setting; more: iterative pruning).
    pub rounds: Vec<usize>,
}

/// One planned pruned retraining.
#[derive(Debug, Clone)]
pub struct PrunedRun {
    /// Run id.
    pub id: String,
    /// Its spec.
    pub spec: RunSpec,
    /// Criterion.
    pub criterion: CriterionKind,
    /// Re-initialisation.
    pub reinit: Reinit,
    /// Mode.
    pub mode: PruneMode,
    /// Budget.
    pub budget: usize,
    /// Pruning rounds (1: one-shot).
    pub rounds: usize,
}

/// A file-name-safe version of a space name or method (specs contain `=;@,`).
pub fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_string()
}

impl SearchConfig {
    /// Refuses, before any training, a search that cannot mean what it says: a recipe out of
    /// range, a budget of 0, above the maximal space's size or given twice, and the zero-offset
    /// LoRA init with `reinit = keep` (the offset would be taken from the trained factors, so
    /// the retraining would restart from the pre-trained function).
    pub fn validate(&self, maximal: &Architecture) -> Result<()> {
        let what = |e: String| {
            TrainError::Invalid(format!("search {} on {}: {e}", self.space.name, self.task))
        };
        self.recipe.validate().map_err(what)?;
        if let Some(r) = &self.search_recipe {
            r.validate()
                .map_err(|e| what(format!("search_lr recipe: {e}")))?;
        }
        let size = maximal.pet_params();
        let mut seen = std::collections::BTreeSet::new();
        if self.rounds.is_empty() || self.rounds.contains(&0) {
            return Err(what("rounds must be 1 (one-shot) or more".into()));
        }
        for &b in &self.budgets {
            if b == 0 {
                return Err(what("budget 0 keeps no parameter".into()));
            }
            if b > size {
                return Err(what(format!(
                    "budget {b} is above the space's {size} parameters: nothing to prune"
                )));
            }
            if !seen.insert(b) {
                return Err(what(format!("budget {b} is given twice")));
            }
        }
        if self.lora_init == LoraInit::PaperZeroOffset
            && self.reinits.contains(&Reinit::Keep)
            && maximal.modules.iter().any(|m| m.lora.is_some())
        {
            return Err(what("lora_init paper_zero_offset with reinit keep is not supported: the frozen offset is the initial product, which keep discards".into()));
        }
        Ok(())
    }

    fn base(&self) -> String {
        format!("{}-{}{}", self.task, slug(&self.space.name), self.tag)
    }

    /// Run id of the maximal training.
    pub fn maximal_id(&self) -> String {
        format!("{}-maximal-s{}", self.base(), self.seed)
    }

    /// Spec of the maximal training.
    pub fn maximal_spec(&self, maximal: &Architecture) -> RunSpec {
        RunSpec {
            task: self.task.clone(),
            model: self.model.clone(),
            model_fingerprint: maximal.model.clone(),
            method: Method::Search,
            space: Some(self.space.name.clone()),
            mode: None,
            budget: None,
            seed: self.seed,
            recipe: self
                .search_recipe
                .clone()
                .unwrap_or_else(|| self.recipe.clone()),
            criterion: None,
            reinit: None,
            lora_init: self.lora_init,
            device: self.device.clone(),
            rank_group: None,
            maximal_hash: None,
            precision: self.precision,
            prune_rounds: None,
            task_def: self.task_def.clone(),
            data: self.data.clone(),
        }
    }

    /// Every pruned retraining, in a fixed order.
    pub fn pruned_runs(&self, maximal: &Architecture) -> Vec<PrunedRun> {
        let mut out = Vec::new();
        let maximal_spec = self.maximal_spec(maximal);
        let maximal_hash = maximal_spec.hash();
        for &rounds in &self.rounds {
            for &criterion in &self.criteria {
                for &reinit in &self.reinits {
                    for &mode in &self.modes {
                        for &budget in &self.budgets {
                            let m = match mode {
                                PruneMode::Structured => "s",
                                PruneMode::Unstructured => "u",
                            };
                            let it = if rounds > 1 {
                                format!("-it{rounds}")
                            } else {
                                String::new()
                            };
                            let id = format!(
                                "{}-{m}{budget}{it}-{}-{}-s{}",
                                self.base(),
                                criterion.as_str(),
                                reinit.as_str(),
                                self.seed
                            );
                            let spec = RunSpec {
                                mode: Some(mode),
                                budget: Some(budget),
                                recipe: self.recipe.clone(),
                                criterion: Some(criterion),
                                reinit: Some(reinit),
                                rank_group: (mode == PruneMode::Structured)
                                    .then_some(self.rank_group),
                                maximal_hash: Some(maximal_hash.clone()),
                                prune_rounds: (rounds > 1).then_some(rounds),
                                ..maximal_spec.clone()
                            };
                            out.push(PrunedRun {
                                id,
                                spec,
                                criterion,
                                reinit,
                                mode,
                                budget,
                                rounds,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

/// Iterative pruning (paper §B, for small budgets): over budgets falling geometrically from the
/// maximal size to the run's budget, prune to the next budget, retrain that architecture from the
/// same start while accumulating the criterion, and score the next round with it; returns the
/// architecture of the last round's pruning, which the caller trains as the run. The intermediate
/// trainings run in a hidden folder (analysis never sees them) that is removed afterwards.
#[allow(clippy::too_many_arguments)]
fn iterate(
    inp: &RunInputs,
    cfg: &SearchConfig,
    maximal: &Architecture,
    first: &std::collections::BTreeMap<String, Vec<f32>>,
    p: &PrunedRun,
    start: &HashMap<String, Vec<f32>>,
    out_dir: &Path,
    progress: Option<indicatif::MultiProgress>,
) -> Result<Architecture> {
    let budgets = iterative_budgets(maximal.pet_params(), p.budget, p.rounds);
    let scratch = out_dir.join(format!(".rounds-{}-{}", p.id, std::process::id()));
    let mut arch = maximal.clone();
    let mut scores = first.clone();
    let (last, between) = budgets.split_last().expect("at least one budget");
    for (i, &b) in between.iter().enumerate() {
        arch = prune(&arch, &scores, p.mode, b, cfg.rank_group)?;
        let mut crit = CriterionAccumulator::new();
        let spec = RunSpec {
            budget: Some(b),
            ..p.spec.clone()
        };
        let o = run::execute(
            inp,
            RunPlan {
                spec,
                arch: Some(&arch),
                start,
                criterion: Some(&mut crit),
                progress: progress.clone(),
            },
            &format!("round{}", i + 1),
            &scratch,
        )?;
        if let RunStatus::Failed { reason } = &o.record.result.status {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(TrainError::Invalid(format!(
                "{}: round {} of iterative pruning (budget {b}) failed: {reason}",
                p.id,
                i + 1
            )));
        }
        scores = scores_at_maximal_shape(
            &arch,
            &crit.scores(p.criterion, cfg.seed.wrapping_add(i as u64 + 1)),
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(prune(&arch, &scores, p.mode, *last, cfg.rank_group)?)
}

/// Display of runs: progress and one line per finished run.
pub struct SearchHooks<'a> {
    /// Whether a run (id, spec) is already done and must be skipped.
    pub is_done: &'a dyn Fn(&str, &RunSpec) -> bool,
    /// Called with each new record.
    pub on_record: &'a mut dyn FnMut(&RunRecord),
    /// Progress bars.
    pub progress: Option<indicatif::MultiProgress>,
}

/// What the pruned retrainings of one search share once its maximal run is done: the maximal
/// architecture, the initial values (same and fresh), the criterion and, for `keep`, the
/// trained values. Read-only, so several retrainings may run from it at once.
pub struct Prepared {
    maximal: Architecture,
    init: HashMap<String, Vec<f32>>,
    fresh: HashMap<String, Vec<f32>>,
    crit: CriterionAccumulator,
    trained: Option<HashMap<String, Vec<f32>>>,
    scores: std::sync::Mutex<HashMap<&'static str, std::sync::Arc<BTreeMap<String, Vec<f32>>>>>,
}

impl Prepared {
    /// The maximal architecture the retrainings prune.
    pub fn maximal(&self) -> &Architecture {
        &self.maximal
    }

    /// The scores of `kind` (computed once per criterion).
    fn scores(&self, kind: CriterionKind, seed: u64) -> std::sync::Arc<BTreeMap<String, Vec<f32>>> {
        let mut m = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(kind.as_str())
            .or_insert_with(|| std::sync::Arc::new(self.crit.scores(kind, seed)))
            .clone()
    }
}

/// The search's first half: the maximal training (unless done with its criterion saved; its
/// record goes to `on_record`), giving what the retrainings need. `None` when the maximal run
/// failed (diverged): there is nothing to prune from.
pub fn prepare(
    inp: &RunInputs,
    cfg: &SearchConfig,
    out_dir: &Path,
    hooks: SearchHooks,
) -> Result<Option<Prepared>> {
    let SearchHooks {
        is_done,
        on_record,
        progress,
    } = hooks;
    let model_cfg = &inp.model.config;
    let maximal = Architecture::maximal(&cfg.space, model_cfg)?;
    let init = init_map(&maximal, cfg.seed, cfg.lora_init);
    let max_id = cfg.maximal_id();
    let max_spec = cfg.maximal_spec(&maximal);
    let max_dir = out_dir.join(&max_id);

    let need_trained = cfg.reinits.contains(&Reinit::Keep);
    let max_done = is_done(&max_id, &max_spec);
    // A maximal run that completed but has no criterion file (written by an older version, or
    // damaged) is trained again rather than silently skipping every pruned run.
    let max_failed = max_done
        && RunRecord::load(&max_dir.join("record.json"))
            .is_ok_and(|r| matches!(r.result.status, RunStatus::Failed { .. }));
    // A criterion file that cannot give every requested score (one written before AdaLoRA's
    // averages were kept) is treated as absent: the maximal run is trained again.
    let saved = if max_done && max_dir.join(CRITERION_FILE).exists() {
        let c = CriterionAccumulator::load(&max_dir.join(CRITERION_FILE))?;
        cfg.criteria.iter().all(|&k| c.supports(k)).then_some(c)
    } else {
        None
    };
    let (crit, trained): (CriterionAccumulator, Option<HashMap<String, Vec<f32>>>) =
        if let Some(crit) = saved {
            let trained = if need_trained {
                Some(run::load_pet_values(&max_dir)?)
            } else {
                None
            };
            (crit, trained)
        } else if max_failed {
            // Done but failed (diverged): nothing to prune from.
            return Ok(None);
        } else {
            let mut crit = CriterionAccumulator::new();
            let outcome = run::execute(
                inp,
                RunPlan {
                    spec: max_spec,
                    arch: Some(&maximal),
                    start: &init,
                    criterion: Some(&mut crit),
                    progress,
                },
                &max_id,
                out_dir,
            )?;
            on_record(&outcome.record);
            let failed = matches!(outcome.record.result.status, RunStatus::Failed { .. });
            let Some(model) = outcome.model else {
                return Ok(None);
            };
            if failed {
                return Ok(None);
            }
            let trained = if need_trained {
                Some(model.pet_values()?.into_iter().collect())
            } else {
                None
            };
            (crit, trained)
        };
    let fresh = init_map(&maximal, cfg.seed ^ FRESH_STREAM, cfg.lora_init);
    Ok(Some(Prepared {
        maximal,
        init,
        fresh,
        crit,
        trained,
        scores: Default::default(),
    }))
}

/// One pruned retraining of a prepared search: prune (or prune iteratively), re-initialise as
/// `p.reinit` says, train, evaluate. Returns its record.
pub fn run_pruned(
    inp: &RunInputs,
    cfg: &SearchConfig,
    prep: &Prepared,
    p: &PrunedRun,
    out_dir: &Path,
    progress: Option<indicatif::MultiProgress>,
) -> Result<RunRecord> {
    let scores = prep.scores(p.criterion, cfg.seed);
    let start = match p.reinit {
        Reinit::Same => &prep.init,
        Reinit::Fresh => &prep.fresh,
        Reinit::Keep => prep.trained.as_ref().ok_or_else(|| {
            TrainError::Invalid("trained values of the maximal run are missing".into())
        })?,
    };
    let arch = if p.rounds > 1 {
        iterate(
            inp,
            cfg,
            &prep.maximal,
            &scores,
            p,
            start,
            out_dir,
            progress.clone(),
        )?
    } else {
        prune(&prep.maximal, &scores, p.mode, p.budget, cfg.rank_group)?
    };
    let o = run::execute(
        inp,
        RunPlan {
            spec: p.spec.clone(),
            arch: Some(&arch),
            start,
            criterion: None,
            progress,
        },
        &p.id,
        out_dir,
    )?;
    Ok(o.record)
}

/// Runs the search: the maximal training (unless done), then every pruned retraining not done yet.
/// Returns the records made by this call.
pub fn search(
    inp: &RunInputs,
    cfg: &SearchConfig,
    out_dir: &Path,
    hooks: SearchHooks,
) -> Result<Vec<RunRecord>> {
    let SearchHooks {
        is_done,
        on_record,
        progress,
    } = hooks;
    let mut records = Vec::new();
    let prep = {
        let mut keep = |r: &RunRecord| {
            on_record(r);
            records.push(r.clone());
        };
        prepare(
            inp,
            cfg,
            out_dir,
            SearchHooks {
                is_done,
                on_record: &mut keep,
                progress: progress.clone(),
            },
        )?
    };
    let Some(prep) = prep else {
        return Ok(records);
    };
    for p in cfg.pruned_runs(&prep.maximal) {
        if is_done(&p.id, &p.spec) {
            continue;
        }
        let r = run_pruned(inp, cfg, &prep, &p, out_dir, progress.clone())?;
        on_record(&r);
        records.push(r);
    }
    Ok(records)
}
