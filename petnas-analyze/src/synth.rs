//! Synthetic run records with realistic module lists (MiniLM-sized: 6 layers, hidden 384, FFN
//! 1536; bias deltas on the 49 biased modules, rank-16 LoRA on query/key/intermediate/output),
//! for tests and the `bench` command. Nothing here trains anything: scores and kept counts are
//! made up by simple rules so that aggregates are predictable.

use std::path::Path;

use petnas_core::{
    CriterionKind, Family, LoraInit, ModelFingerprint, ModuleCount, ModuleType, PruneMode, Recipe,
    Reinit, Rng, RunRecord, RunResult, RunSpec, RunStatus,
};

use crate::error::{AnalyzeError, Result};

/// Hidden size of the synthetic model.
pub const HIDDEN: usize = 384;
/// FFN inner size of the synthetic model.
pub const FFN: usize = 1536;
/// LoRA max rank of the synthetic `mam16` space.
pub const MAX_RANK: usize = 16;

/// The primary GLUE metric of a task (MCC for CoLA, Pearson for STS-B, accuracy elsewhere).
pub fn primary_metric(task: &str) -> &'static str {
    match task {
        "cola" => "mcc",
        "stsb" => "pearson",
        _ => "accuracy",
    }
}

fn dims(t: ModuleType) -> (usize, usize) {
    match t {
        ModuleType::Intermediate => (HIDDEN, FFN),
        ModuleType::Output => (FFN, HIDDEN),
        _ => (HIDDEN, HIDDEN),
    }
}

/// The modules of a `num_layers`-layer model in a space with all biases and, if `lora`,
/// rank-16 LoRA on query/key/intermediate/output. `keep(type, layer)` gives the fraction of each
/// module's bias and LoRA kept (rounded down; the kept rank is the same fraction of 16).
pub fn modules(
    num_layers: usize,
    lora: bool,
    keep: impl Fn(ModuleType, Option<usize>) -> f64,
) -> Vec<ModuleCount> {
    let mut out = Vec::with_capacity(1 + 8 * num_layers);
    let mut push = |t: ModuleType, layer: Option<usize>| {
        let (i, o) = dims(t);
        let f = keep(t, layer).clamp(0.0, 1.0);
        let has_lora = lora
            && matches!(
                t,
                ModuleType::Query | ModuleType::Key | ModuleType::Intermediate | ModuleType::Output
            );
        let lora_total = if has_lora { MAX_RANK * (i + o) } else { 0 };
        out.push(ModuleCount {
            path: t.path(layer.unwrap_or(0)),
            module_type: t,
            layer,
            bias_kept: (f * o as f64).floor() as usize,
            bias_total: o,
            lora_kept: (f * lora_total as f64).floor() as usize,
            lora_total,
            kept_rank: has_lora.then(|| (f * MAX_RANK as f64).floor() as usize),
            max_rank: has_lora.then_some(MAX_RANK),
        });
    };
    push(ModuleType::EmbeddingsLayerNorm, None);
    for l in 0..num_layers {
        for t in &ModuleType::ALL[1..] {
            push(*t, Some(l));
        }
    }
    out
}

/// What a synthetic run is.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthRun {
    /// Run id.
    pub id: String,
    /// GLUE task.
    pub task: String,
    /// `"full"`, `"bitfit"`, ..., or `"search"`.
    pub method: String,
    /// Search space (for `search`).
    pub space: Option<String>,
    /// Pruning mode (for `search`; None = the search start).
    pub mode: Option<PruneMode>,
    /// Budget (for `search`).
    pub budget: Option<usize>,
    /// Criterion (for `search`).
    pub criterion: Option<CriterionKind>,
    /// Seed.
    pub seed: u64,
    /// Primary metric value (0–1), or None for a failed run.
    pub score: Option<f64>,
    /// PET parameters.
    pub pet_params: usize,
    /// Module counts.
    pub modules: Vec<ModuleCount>,
}

impl SynthRun {
    /// A baseline run.
    pub fn baseline(task: &str, method: &str, seed: u64, score: f64, pet_params: usize) -> Self {
        SynthRun {
            id: format!("{task}-{method}-s{seed}"),
            task: task.into(),
            method: method.into(),
            space: None,
            mode: None,
            budget: None,
            criterion: None,
            seed,
            score: Some(score),
            pet_params,
            modules: vec![],
        }
    }

    /// A searched (pruned, retrained) run.
    #[allow(clippy::too_many_arguments)]
    pub fn searched(
        task: &str,
        space: &str,
        mode: PruneMode,
        budget: usize,
        criterion: CriterionKind,
        seed: u64,
        score: f64,
        modules: Vec<ModuleCount>,
    ) -> Self {
        let m = match mode {
            PruneMode::Structured => "s",
            PruneMode::Unstructured => "u",
        };
        SynthRun {
            id: format!("{task}-{space}-{m}-{}-{budget}-s{seed}", criterion.as_str()),
            task: task.into(),
            method: "search".into(),
            space: Some(space.into()),
            mode: Some(mode),
            budget: Some(budget),
            criterion: Some(criterion),
            seed,
            score: Some(score),
            pet_params: budget,
            modules,
        }
    }

    /// Marks the run as failed.
    pub fn failed(mut self) -> Self {
        self.score = None;
        self
    }

    /// The run record.
    pub fn record(&self) -> RunRecord {
        let primary = primary_metric(&self.task);
        let spec = RunSpec {
            task: self.task.clone(),
            model: "models/all-MiniLM-L6-v2".into(),
            model_fingerprint: ModelFingerprint {
                family: Family::Bert,
                num_layers: 6,
                hidden_size: HIDDEN,
                intermediate_size: FFN,
            },
            method: petnas_core::record::Method::parse(&self.method),
            space: self.space.clone(),
            mode: self.mode,
            budget: self.budget,
            seed: self.seed,
            recipe: Recipe {
                batch_size: 32,
                ..Recipe::new(
                    if self.method == "full" { 3.0 } else { 10.0 },
                    if self.method == "full" { 2e-5 } else { 1e-3 },
                )
            },
            criterion: self.criterion,
            reinit: (self.method == "search").then_some(Reinit::Same),
            lora_init: LoraInit::Paper,
            device: "cpu".into(),
            rank_group: None,
            maximal_hash: None,
            precision: Default::default(),
            prune_rounds: None,
            task_def: None,
            data: None,
        };
        let (status, metrics) = match self.score {
            Some(v) => {
                let mut m = std::collections::BTreeMap::new();
                m.insert(primary.to_string(), v);
                if primary == "accuracy" {
                    m.insert("f1".to_string(), (v - 0.02).max(0.0));
                }
                if primary == "pearson" {
                    m.insert("spearman".to_string(), v - 0.01);
                }
                (RunStatus::Completed, m)
            }
            None => (
                RunStatus::Failed {
                    reason: "synthetic failure".into(),
                },
                Default::default(),
            ),
        };
        RunRecord {
            version: petnas_core::record::RECORD_VERSION,
            id: self.id.clone(),
            config_hash: spec.hash(),
            spec,
            result: RunResult {
                status,
                metrics,
                primary_metric: Some(primary.to_string()),
                pet_params: self.pet_params,
                head_params: 148_226,
                modules: self.modules.clone(),
                steps: 1000,
                final_train_loss: Some(0.3),
                wall_seconds: 60.0,
                examples_per_second: 1500.0,
            },
            git_commit: Some("0123abc".into()),
            created_unix: 1_700_000_000,
            host: None,
        }
    }
}

/// Kept fraction of a module in a synthetic search at `budget`: middle layers kept most,
/// FFN modules more than attention, scaled by the budget (up to 200k entries).
pub fn synthetic_keep(budget: usize, t: ModuleType, layer: Option<usize>, noise: f64) -> f64 {
    let level = (budget as f64 / 200_000.0).min(1.0);
    let layer_w = match layer {
        None => 0.5,
        Some(l) => 1.0 - ((l as f64 - 2.5).abs() / 3.0),
    };
    let type_w = match t {
        ModuleType::Intermediate | ModuleType::Output => 1.0,
        ModuleType::Query | ModuleType::Key | ModuleType::Value => 0.6,
        _ => 0.8,
    };
    (level * layer_w * type_w + 0.1 * noise).clamp(0.0, 1.0)
}

/// Tasks of the synthetic sweep.
pub const SYNTH_TASKS: [&str; 8] = ["mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte"];

/// The `i`-th run of a synthetic sweep cycling over tasks, baselines and searched
/// configurations (S/U × BitFit/MaM × 3 budgets × mean/random), seeds counting up.
pub fn synthetic_run(i: usize) -> SynthRun {
    let baselines = ["full", "bitfit", "lora", "mam"];
    let budgets = [10_000usize, 50_000, 100_000];
    let n_searched = 2 * 2 * budgets.len() * 2;
    let per_task = baselines.len() + n_searched;
    let task = SYNTH_TASKS[i % SYNTH_TASKS.len()];
    let j = (i / SYNTH_TASKS.len()) % per_task;
    let seed = (i / (SYNTH_TASKS.len() * per_task)) as u64;
    let mut rng = Rng::new(i as u64 ^ 0x5eed);
    let noise = rng.uniform_f64() - 0.5;
    let base_score = 0.6 + 0.03 * (i % SYNTH_TASKS.len()) as f64;
    if j < baselines.len() {
        let method = baselines[j];
        let params = [22_700_000usize, 31_000, 80_000, 160_000][j];
        let mut r = SynthRun::baseline(task, method, seed, base_score + 0.02 * noise, params);
        r.id = format!("{}-{i}", r.id);
        return r;
    }
    let k = j - baselines.len();
    let space = ["bitfit", "mam16"][k % 2];
    let mode = [PruneMode::Structured, PruneMode::Unstructured][(k / 2) % 2];
    let budget = budgets[(k / 4) % budgets.len()];
    let criterion = [CriterionKind::Mean, CriterionKind::Random][(k / 12) % 2];
    let mods = modules(6, space == "mam16", |t, l| {
        synthetic_keep(budget, t, l, rng.fork(l.unwrap_or(99) as u64).uniform_f64())
    });
    let score = base_score + 0.01 * (budget as f64 / 50_000.0) + 0.02 * noise
        - if criterion == CriterionKind::Random {
            0.03
        } else {
            0.0
        };
    let mut r = SynthRun::searched(task, space, mode, budget, criterion, seed, score, mods);
    r.id = format!("{}-{i}", r.id);
    r
}

/// Writes `n` synthetic records as `<dir>/<id>/record.json` (plain writes, no fsync: this is
/// for benchmarks and tests, not for sweeps).
pub fn write_synthetic_sweep(dir: &Path, n: usize) -> Result<()> {
    use rayon::prelude::*;
    (0..n).into_par_iter().try_for_each(|i| {
        let r = synthetic_run(i).record();
        let d = dir.join(&r.id);
        std::fs::create_dir_all(&d).map_err(|e| AnalyzeError::io(&d, e))?;
        let bytes = serde_json::to_vec_pretty(&r).map_err(|source| {
            AnalyzeError::Core(petnas_core::CoreError::JsonEncode {
                what: "run record".into(),
                source,
            })
        })?;
        let p = d.join(crate::load::RECORD_FILE);
        std::fs::write(&p, bytes).map_err(|e| AnalyzeError::io(&p, e))
    })
}
