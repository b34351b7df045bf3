//! The search run (paper §3.2): train the maximal architecture once while accumulating the
//! criterion, prune to every (mode, budget) from the same scores, re-initialise with the same
//! initial values, retrain each pruned architecture, evaluate.

use std::collections::HashMap;
use std::path::Path;

use petnas_core::arch::{Architecture, PruneMode};
use petnas_core::criterion::{CriterionAccumulator, CriterionKind};
use petnas_core::prune::{prune, RankGroup};
use petnas_core::record::{LoraInit, Recipe, Reinit, RunRecord, RunSpec};
use petnas_core::space::SearchSpace;

use crate::error::Result;
use crate::model::pet::initial_values;
use crate::run::{self, RunInputs, RunPlan};

/// Stream offset for `Reinit::Fresh`: a different draw from the same seed.
const FRESH_STREAM: u64 = 0x4652_4553_48; // "FRESH"

/// What a search does.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// The task's name (record field).
    pub task: String,
    /// Model spec as given (record field).
    pub model: String,
    /// The maximal space.
    pub space: SearchSpace,
    /// Modes to prune in.
    pub modes: Vec<PruneMode>,
    /// Budgets (PET parameters).
    pub budgets: Vec<usize>,
    /// Seed of init, shuffling, dropout.
    pub seed: u64,
    /// Recipe of both trainings.
    pub recipe: Recipe,
    /// Recipe of the maximal training, if different (e.g. a lower LR for a larger space).
    pub search_recipe: Option<Recipe>,
    /// Criterion used to prune.
    pub criterion: CriterionKind,
    /// How the pruned architecture starts.
    pub reinit: Reinit,
    /// LoRA init.
    pub lora_init: LoraInit,
    /// Rank-component grouping for structured pruning.
    pub rank_group: RankGroup,
    /// Device name for records.
    pub device: String,
    /// Length-bucket window.
    pub bucket: usize,
    /// Progress bars.
    pub progress: bool,
}

/// Initial values of every PET tensor of `arch` at maximal shape.
pub fn init_map(arch: &Architecture, seed: u64, init: LoraInit) -> HashMap<String, Vec<f32>> {
    arch.modules.iter().flat_map(|m| initial_values(seed, m, init)).collect()
}

/// Run id of the maximal training of a search.
pub fn maximal_id(cfg: &SearchConfig) -> String {
    format!("{}-{}-maximal-s{}", cfg.task, cfg.space.name, cfg.seed)
}

/// Run id of one pruned retraining.
pub fn pruned_id(cfg: &SearchConfig, mode: PruneMode, budget: usize) -> String {
    let m = match mode {
        PruneMode::Structured => "s",
        PruneMode::Unstructured => "u",
    };
    let crit = serde_json::to_value(cfg.criterion).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let re = serde_json::to_value(cfg.reinit).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    format!("{}-{}-{m}{budget}-{crit}-{re}-s{}", cfg.task, cfg.space.name, cfg.seed)
}

/// Runs the whole search and returns the records (maximal first). Criterion scores are saved in
/// the maximal run's directory (`criterion.safetensors`), so later re-pruning needs no retraining.
pub fn search(inp: &RunInputs, cfg: &SearchConfig, out_dir: &Path, mut on_record: impl FnMut(&RunRecord)) -> Result<Vec<RunRecord>> {
    let model_cfg = &inp.model.config;
    let maximal = Architecture::maximal(&cfg.space, model_cfg)?;
    let init = init_map(&maximal, cfg.seed, cfg.lora_init);
    let mut crit = CriterionAccumulator::new();
    let spec = RunSpec {
        task: cfg.task.clone(),
        model: cfg.model.clone(),
        model_fingerprint: maximal.model.clone(),
        method: "search".into(),
        space: Some(cfg.space.name.clone()),
        mode: None,
        budget: None,
        seed: cfg.seed,
        recipe: cfg.search_recipe.clone().unwrap_or_else(|| cfg.recipe.clone()),
        criterion: Some(cfg.criterion),
        reinit: None,
        lora_init: cfg.lora_init,
        device: cfg.device.clone(),
    };
    let id = maximal_id(cfg);
    let outcome = run::execute(
        inp,
        RunPlan { spec, arch: Some(&maximal), start: &init, criterion: Some(&mut crit), bucket: cfg.bucket, progress: cfg.progress },
        &id,
        out_dir,
    )?;
    on_record(&outcome.record);
    let mut records = vec![outcome.record];
    let Some(trained) = outcome.model else {
        return Ok(records); // the maximal training failed: nothing to prune from
    };
    crit.save(&out_dir.join(&id).join("criterion.safetensors"))?;
    let scores = crit.scores(cfg.criterion, cfg.seed);
    let start: HashMap<String, Vec<f32>> = match cfg.reinit {
        Reinit::Same => init,
        Reinit::Fresh => init_map(&maximal, cfg.seed ^ FRESH_STREAM, cfg.lora_init),
        Reinit::Keep => trained.pet_values()?.into_iter().collect(),
    };
    drop(trained);
    for &mode in &cfg.modes {
        for &budget in &cfg.budgets {
            let arch = prune(&maximal, &scores, mode, budget, cfg.rank_group)?;
            let spec = RunSpec {
                task: cfg.task.clone(),
                model: cfg.model.clone(),
                model_fingerprint: maximal.model.clone(),
                method: "search".into(),
                space: Some(cfg.space.name.clone()),
                mode: Some(mode),
                budget: Some(budget),
                seed: cfg.seed,
                recipe: cfg.recipe.clone(),
                criterion: Some(cfg.criterion),
                reinit: Some(cfg.reinit),
                lora_init: cfg.lora_init,
                device: cfg.device.clone(),
            };
            let id = pruned_id(cfg, mode, budget);
            let o = run::execute(
                inp,
                RunPlan { spec, arch: Some(&arch), start: &start, criterion: None, bucket: cfg.bucket, progress: cfg.progress },
                &id,
                out_dir,
            )?;
            on_record(&o.record);
            records.push(o.record);
        }
    }
    Ok(records)
}
