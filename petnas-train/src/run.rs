//! One run: build the model for an architecture, train, evaluate on dev, and write the run
//! directory atomically (`record.json`, `architecture.json` + masks, `weights.safetensors`, `log.txt`).
//!
//! A run directory appears only when complete: it is written under `.partial-*` and renamed. A run
//! that fails (e.g. diverges) still gets a directory whose record says `failed`, so analysis never
//! mistakes it for a result and a sweep can move on.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use petnas_core::arch::Architecture;
use petnas_core::criterion::CriterionAccumulator;
use petnas_core::record::{RunRecord, RunResult, RunSpec, RunStatus};

use crate::error::{io_err, Result, TrainError};
use crate::glue;
use crate::model::load::{ModelDir, Weights};
use crate::model::pet::Role;
use crate::model::{BuildOptions, EncoderModel};
use crate::task::{SplitName, TaskInfo};
use crate::tokenize::TextTokenizer;
use crate::train::{self, Dataset, TrainContext};

/// File in the maximal run's directory holding the criterion sums (read back by a resumed search).
pub const CRITERION_FILE: &str = "criterion.safetensors";

/// Everything a run on one (model, task) needs, loaded once and shared by many runs.
pub struct RunInputs {
    /// The model folder and config.
    pub model: ModelDir,
    /// Base weights.
    pub weights: Weights,
    /// The task.
    pub task: TaskInfo,
    /// Tokenised training split.
    pub train: Dataset,
    /// Tokenised dev split.
    pub dev: Dataset,
    /// Padding id of the tokenizer.
    pub pad_id: u32,
    /// Where to compute.
    pub device: Device,
    /// The GLUE folder the splits came from, or a user task's files (written to the run folder,
    /// so `predict` finds them).
    pub data_dir: PathBuf,
}

/// File in a run folder naming the data folder it was trained on.
pub const INPUTS_FILE: &str = "inputs.json";

/// The data folder a run was trained on, from its `inputs.json` (absent in runs of earlier
/// versions, or when the folder no longer exists).
pub fn trained_data_dir(run_dir: &Path) -> Option<PathBuf> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join(INPUTS_FILE)).ok()?).ok()?;
    let d = PathBuf::from(v.get("data")?.as_str()?);
    d.is_dir().then_some(d)
}

/// A user task's files as its run recorded them in `inputs.json` (`train`, `dev`, `test`).
pub fn trained_files(run_dir: &Path) -> Option<BTreeMap<String, PathBuf>> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join(INPUTS_FILE)).ok()?).ok()?;
    let f = v.get("files")?.as_object()?;
    Some(
        f.iter()
            .filter_map(|(k, p)| Some((k.clone(), PathBuf::from(p.as_str()?))))
            .collect(),
    )
}

/// Limits on data size, for quick runs and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataLimits {
    /// Use at most this many training examples (the first ones of the file).
    pub max_train: Option<usize>,
    /// Use at most this many dev examples.
    pub max_dev: Option<usize>,
}

fn dataset(
    tok: &TextTokenizer,
    mut ex: Vec<glue::Example>,
    limit: Option<usize>,
) -> Result<Dataset> {
    if let Some(n) = limit {
        ex.truncate(n);
    }
    let encoded = tok.encode_all(&ex)?;
    Ok(Dataset {
        encoded,
        labels: ex.into_iter().map(|e| e.label).collect(),
    })
}

impl RunInputs {
    /// Loads the model, its tokenizer and the task's train and dev splits.
    pub fn load(
        model: &str,
        task: &TaskInfo,
        max_len: usize,
        limits: DataLimits,
        device: &Device,
    ) -> Result<Self> {
        let md = ModelDir::open(model)?;
        let family = md.config.family()?;
        let positions = md.config.max_len_limit()?;
        if max_len > positions {
            return Err(TrainError::Invalid(format!(
                "max length {max_len} is above what {} can encode ({positions} positions)",
                md.dir.display()
            )));
        }
        let tok = TextTokenizer::from_file(&md.tokenizer_path()?, family, max_len)?;
        let weights = md.weights()?;
        let train = dataset(&tok, task.load(SplitName::Train)?, limits.max_train)?;
        let dev = dataset(&tok, task.load(SplitName::Dev)?, limits.max_dev)?;
        let pad_id = md.config.pad_token_id as u32;
        let data_dir = task.data_dir();
        let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
        Ok(Self {
            model: md,
            weights,
            task: task.clone(),
            train,
            dev,
            pad_id,
            device: device.clone(),
            data_dir,
        })
    }
}

/// How one run trains.
pub struct RunPlan<'a> {
    /// The record's spec.
    pub spec: RunSpec,
    /// The PET architecture (`None` for full fine-tuning).
    pub arch: Option<&'a Architecture>,
    /// Initial PET values at maximal shape.
    pub start: &'a HashMap<String, Vec<f32>>,
    /// Accumulate the criterion during training (the search's maximal run).
    pub criterion: Option<&'a mut CriterionAccumulator>,
    /// Progress bars (drawn into this group), or none.
    pub progress: Option<indicatif::MultiProgress>,
}

/// A finished (or failed) run and, when it trained, its model.
pub struct RunOutcome {
    /// The record as written.
    pub record: RunRecord,
    /// The trained model (absent when the run failed).
    pub model: Option<EncoderModel>,
}

/// Runs one training and evaluation, and writes `out_dir/<id>/` atomically.
pub fn execute(inp: &RunInputs, plan: RunPlan, id: &str, out_dir: &Path) -> Result<RunOutcome> {
    let t0 = Instant::now();
    let spec = plan.spec.clone();
    let full = spec.method.is_full();
    let opts = BuildOptions {
        num_labels: inp.task.num_labels(),
        seed: spec.seed,
        lora_init: spec.lora_init,
        full_finetune: full,
        dtype: DType::F32,
        precision: spec.precision,
    };
    let cfg = &inp.model.config;
    let model = EncoderModel::build(cfg, &inp.weights, plan.arch, plan.start, &opts, &inp.device)?;
    let ctx = TrainContext {
        task: &inp.task,
        family: cfg.family()?,
        pad_id: inp.pad_id,
        device: &inp.device,
        progress: plan.progress.clone(),
        label: id.to_string(),
    };
    let pet_params = model.param_count(Role::Pet)?
        + if full {
            model.param_count(Role::Base)?
        } else {
            0
        };
    let head_params = model.param_count(Role::Head)?;
    let modules = plan.arch.map(|a| a.module_counts()).unwrap_or_default();
    let mut criterion = plan.criterion;
    let trained = train::train(
        &model,
        &inp.train,
        &spec.recipe,
        spec.seed,
        &ctx,
        criterion.as_deref_mut(),
    );
    let mut log = String::new();
    let (result, model) = match trained {
        Ok(stats) => {
            let metrics = train::evaluate(&model, &inp.dev, &ctx, 64)?;
            log.push_str(&format!(
                "trained {} steps in {:.1}s ({:.1} examples/s, {:.1}% padded positions), final loss {:.5}\ndev: {metrics:?}\n",
                stats.steps,
                stats.seconds,
                stats.examples as f64 / stats.seconds.max(1e-9),
                100.0 * stats.padded_fraction,
                stats.final_loss
            ));
            let r = RunResult {
                status: RunStatus::Completed,
                primary_metric: Some(inp.task.primary_metric().to_string()),
                metrics,
                pet_params,
                head_params,
                modules,
                steps: stats.steps,
                final_train_loss: Some(stats.final_loss),
                wall_seconds: t0.elapsed().as_secs_f64(),
                examples_per_second: stats.examples as f64 / stats.seconds.max(1e-9),
            };
            (r, Some(model))
        }
        Err(e @ TrainError::Diverged { .. }) => {
            log.push_str(&format!("failed: {e}\n"));
            let r = RunResult {
                status: RunStatus::Failed {
                    reason: e.to_string(),
                },
                primary_metric: Some(inp.task.primary_metric().to_string()),
                metrics: Default::default(),
                pet_params,
                head_params,
                modules,
                steps: 0,
                final_train_loss: None,
                wall_seconds: t0.elapsed().as_secs_f64(),
                examples_per_second: 0.0,
            };
            (r, None)
        }
        Err(e) => return Err(e),
    };
    let host = crate::device::host(&inp.device, spec.precision);
    let record = RunRecord::new(id.to_string(), spec, result, git_commit()).with_host(host);
    // The criterion sums go into the run folder before it appears: a search resumed after a kill
    // must never find its maximal run done but without the scores to prune from.
    let criterion = criterion.as_deref().filter(|_| model.is_some());
    write_dir(
        out_dir,
        id,
        &record,
        plan.arch,
        model.as_ref(),
        criterion,
        Some(inp),
        &log,
    )?;
    Ok(RunOutcome { record, model })
}

/// One line per finished run: id, status, PET params, steps, time, metrics.
pub fn summary_line(r: &RunRecord) -> String {
    let m: Vec<String> = r
        .result
        .metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    let status = match &r.result.status {
        RunStatus::Completed => "completed".to_string(),
        RunStatus::Failed { reason } => format!("FAILED ({reason})"),
    };
    format!(
        "{}: {status} | PET params {} | {} steps, {:.0}s, {:.1} ex/s | {}",
        r.id,
        r.result.pet_params,
        r.result.steps,
        r.result.wall_seconds,
        r.result.examples_per_second,
        m.join(", ")
    )
}

/// The trained PET values saved in a run directory (for `Reinit::Keep`).
pub fn load_pet_values(run_dir: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let p = run_dir.join("weights.safetensors");
    let t = candle_core::safetensors::load(&p, &Device::Cpu)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", p.display())))?;
    let mut out = HashMap::new();
    for (name, v) in t {
        if name.ends_with(".bias_delta") || name.ends_with(".lora_u") || name.ends_with(".lora_v") {
            out.insert(name, v.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?);
        }
    }
    Ok(out)
}

/// The commit this binary was built from (empty when built outside git).
pub fn git_commit() -> Option<String> {
    Some(env!("PETNAS_GIT_COMMIT").to_string()).filter(|c| !c.is_empty())
}

/// Writes a run's directory under a temporary name, then renames it into place (replacing an
/// older directory of the same id).
pub fn write_run_dir(
    out_dir: &Path,
    id: &str,
    record: &RunRecord,
    arch: Option<&Architecture>,
    model: Option<&EncoderModel>,
    log: &str,
) -> Result<PathBuf> {
    write_dir(out_dir, id, record, arch, model, None, None, log)
}

/// [`write_run_dir`], plus the criterion sums (`criterion.safetensors`) of a search's maximal run.
fn write_dir(
    out_dir: &Path,
    id: &str,
    record: &RunRecord,
    arch: Option<&Architecture>,
    model: Option<&EncoderModel>,
    criterion: Option<&CriterionAccumulator>,
    inputs: Option<&RunInputs>,
    log: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let tmp = out_dir.join(format!(".partial-{id}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    if let Some(a) = arch {
        a.save(&tmp)?;
    }
    if let Some(m) = model {
        let mut tensors = Vec::new();
        for t in m.trainables() {
            tensors.push((
                t.name.clone(),
                t.var
                    .as_tensor()
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?,
            ));
        }
        let map: HashMap<String, candle_core::Tensor> = tensors.into_iter().collect();
        let p = tmp.join("weights.safetensors");
        candle_core::safetensors::save(&map, &p)?;
    }
    if let Some(c) = criterion {
        c.save(&tmp.join(CRITERION_FILE))?;
    }
    if let Some(inp) = inputs {
        let mut v = serde_json::json!({ "version": 1, "data": inp.data_dir.display().to_string() });
        if inp.task.glue_task().is_none() {
            let mut files = serde_json::Map::new();
            for split in [SplitName::Train, SplitName::Dev, SplitName::Test] {
                if let Some(p) = inp.task.file(split)? {
                    let p = std::fs::canonicalize(&p).unwrap_or(p);
                    files.insert(split.name().into(), p.display().to_string().into());
                }
            }
            v["files"] = files.into();
        }
        petnas_core::io::write_atomic(&tmp.join(INPUTS_FILE), v.to_string().as_bytes())?;
    }
    let lp = tmp.join("log.txt");
    std::fs::write(&lp, log).map_err(io_err(&lp))?;
    record.save(&tmp.join("record.json"))?;
    let dest = out_dir.join(id);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    Ok(dest)
}
