//! Export of a finished run: a merged Hugging Face model folder (paper §3: every Δb and U·Vᵀ
//! folds into the base weights, so the searched model has zero inference overhead), and a PEFT
//! LoRA adapter.
//!
//! PEFT mapping: our ΔW = V·Uᵀ (U [in, r], V [out, r]) is PEFT's `lora_B · lora_A` with
//! `lora_A = Uᵀ`, `lora_B = V` and `lora_alpha = r` (scaling 1). Kept ranks of a structured
//! architecture become `rank_pattern`; unstructured masks become dense factors with zeros; the
//! zero-offset init (ΔW = V·Uᵀ − V₀·U₀ᵀ) becomes rank 2r (`[Uᵀ; U₀ᵀ]`, `[V, −V₀]`). Bias deltas
//! cannot be expressed as LoRA: the adapter stores the merged biases (`bias = "all"`), and the
//! head (and BERT's pooler) as `modules_to_save`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use petnas_core::arch::Architecture;
use petnas_core::inventory::{Family, ModuleType};
use petnas_core::record::{Reinit, RunRecord};

use crate::error::{io_err, Result, TrainError};
use crate::glue::Task;
use crate::model::load::ModelDir;
use crate::model::pet::Role;
use crate::model::pet::{init_map, FRESH_STREAM};
use crate::model::{BuildOptions, EncoderModel};

/// A finished run, rebuilt with its trained values.
pub struct LoadedRun {
    /// The run's record.
    pub record: RunRecord,
    /// Its architecture (None: full fine-tuning).
    pub arch: Option<Architecture>,
    /// The model folder it was trained from.
    pub model_dir: ModelDir,
    /// The trained model.
    pub model: EncoderModel,
    /// The task's definition (GLUE: the built-in one).
    pub task_def: petnas_core::task::TaskDef,
    /// The GLUE task, for a built-in one.
    pub glue: Option<Task>,
}

/// Loads `run_dir` (record.json, architecture.json, weights.safetensors) and rebuilds the trained
/// model. `model_override` replaces the model path stored in the record (e.g. after moving it).
pub fn load_run(
    run_dir: &Path,
    model_override: Option<&str>,
    device: &Device,
) -> Result<LoadedRun> {
    let record = RunRecord::load(&run_dir.join("record.json"))?;
    if let petnas_core::record::RunStatus::Failed { reason } = &record.result.status {
        return Err(TrainError::Invalid(format!(
            "{}: the run failed ({reason}); nothing to export",
            run_dir.display()
        )));
    }
    let spec = &record.spec;
    let model_dir = ModelDir::open(model_override.unwrap_or(&spec.model))?;
    let cfg = &model_dir.config;
    let (task_def, glue) = match &spec.task_def {
        Some(d) => (d.clone(), None),
        None => {
            let t: Task = spec
                .task
                .parse()
                .map_err(|e| TrainError::Invalid(format!("{}: task: {e}", run_dir.display())))?;
            (crate::task::glue_def(t), Some(t))
        }
    };
    let num_labels = task_def.num_labels();
    let arch = if spec.method.is_full() {
        None
    } else {
        let a = Architecture::load(run_dir)?;
        a.check_model(cfg)?;
        Some(a)
    };
    // The zero-offset init subtracts the initial product, so rebuild the run's initial values.
    let start = match &arch {
        None => HashMap::new(),
        Some(a) => match spec.reinit {
            Some(Reinit::Keep) if spec.lora_init == petnas_core::record::LoraInit::PaperZeroOffset => {
                return Err(TrainError::Invalid(
                    "export of a zero-offset LoRA run retrained with --reinit keep is not supported".into(),
                ))
            }
            Some(Reinit::Fresh) => init_map(a, spec.seed ^ FRESH_STREAM, spec.lora_init),
            _ => init_map(a, spec.seed, spec.lora_init),
        },
    };
    let weights = model_dir.weights()?;
    let opts = BuildOptions {
        num_labels,
        seed: spec.seed,
        lora_init: spec.lora_init,
        full_finetune: spec.method.is_full(),
        dtype: DType::F32,
        precision: spec.precision,
    };
    let model = EncoderModel::build(cfg, &weights, arch.as_ref(), &start, &opts, device)?;
    let wp = run_dir.join("weights.safetensors");
    let trained = candle_core::safetensors::load(&wp, &Device::Cpu)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", wp.display())))?;
    for t in model.trainables() {
        let v = trained.get(&t.name).ok_or_else(|| {
            TrainError::Invalid(format!(
                "{}: missing trained tensor `{}`",
                wp.display(),
                t.name
            ))
        })?;
        if v.dims() != t.var.dims() {
            return Err(TrainError::Invalid(format!(
                "{}: `{}` has shape {:?}, the architecture implies {:?}",
                wp.display(),
                t.name,
                v.dims(),
                t.var.dims()
            )));
        }
        t.var.set(&v.to_device(device)?.to_dtype(t.var.dtype())?)?;
    }
    Ok(LoadedRun {
        record,
        arch,
        model_dir,
        model,
        task_def,
        glue,
    })
}

fn prefix(family: Family) -> &'static str {
    match family {
        Family::Bert => "bert.",
        Family::Roberta => "roberta.",
    }
}

/// HF key of one of our tensor names inside a `*ForSequenceClassification` checkpoint.
fn hf_key(family: Family, name: &str) -> String {
    if name.starts_with("classifier.") {
        name.to_string()
    } else {
        format!("{}{name}", prefix(family))
    }
}

/// `id2label` / `label2id` of the exported `config.json`: a user task's labels in its id order;
/// for GLUE the names transformers' GLUE examples use (`"0"`/`"1"` for the binary tasks).
fn label_maps(run: &LoadedRun) -> (serde_json::Value, serde_json::Value) {
    let names: Vec<&str> = match run.glue {
        Some(Task::Mnli | Task::MnliMm) => vec!["entailment", "neutral", "contradiction"],
        Some(Task::Rte | Task::Qnli) => vec!["entailment", "not_entailment"],
        Some(Task::Stsb) => vec!["score"],
        Some(_) => vec!["0", "1"],
        None if run.task_def.labels.is_empty() => vec!["score"],
        None => run.task_def.labels.iter().map(String::as_str).collect(),
    };
    let id2label: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), serde_json::json!(n)))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), serde_json::json!(i)))
        .collect();
    (
        serde_json::Value::Object(id2label),
        serde_json::Value::Object(label2id),
    )
}

/// Files of the tokenizer copied along with an export (those present).
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

fn copy_tokenizer(src: &Path, out: &Path) -> Result<()> {
    for f in TOKENIZER_FILES {
        let p = src.join(f);
        if p.exists() {
            std::fs::copy(&p, out.join(f)).map_err(io_err(&p))?;
        }
    }
    for f in ["merges.txt", "vocab.json"] {
        let p = src.join(f);
        if p.exists() {
            std::fs::copy(&p, out.join(f)).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

fn save_tensors(tensors: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in tensors {
        map.insert(
            k,
            t.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .contiguous()?,
        );
    }
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

/// Writes the merged model folder (config.json, model.safetensors, tokenizer files) to `out`,
/// atomically (a temp folder renamed into place).
pub fn export_merged(run: &LoadedRun, out: &Path) -> Result<PathBuf> {
    let family = run.model.family();
    let tmp = staging(out)?;
    let tensors: Vec<(String, Tensor)> = run
        .model
        .merged_weights()?
        .into_iter()
        .map(|(k, t)| (hf_key(family, &k), t))
        .collect();
    save_tensors(tensors, &tmp.join("model.safetensors"))?;
    let cfg_path = run.model_dir.dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", cfg_path.display())))?;
    let (id2label, label2id) = label_maps(run);
    let arch_name = match family {
        Family::Bert => "BertForSequenceClassification",
        Family::Roberta => "RobertaForSequenceClassification",
    };
    if let Some(o) = cfg.as_object_mut() {
        o.insert("architectures".into(), serde_json::json!([arch_name]));
        o.insert("id2label".into(), id2label);
        o.insert("label2id".into(), label2id);
        o.insert("num_labels".into(), serde_json::json!(run.num_labels()));
        o.insert(
            "problem_type".into(),
            serde_json::json!(
                if run.task_def.kind == petnas_core::task::TaskKind::Regression {
                    "regression"
                } else {
                    "single_label_classification"
                }
            ),
        );
        o.insert("petnas_run".into(), serde_json::json!(run.record.id));
    }
    petnas_core::io::write_atomic(
        &tmp.join("config.json"),
        serde_json::to_string_pretty(&cfg)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    copy_tokenizer(&run.model_dir.dir, &tmp)?;
    finish(tmp, out)
}

fn staging(out: &Path) -> Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = out
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".partial-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    Ok(tmp)
}

fn finish(tmp: PathBuf, out: &Path) -> Result<PathBuf> {
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io_err(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(out.to_path_buf())
}

/// Writes a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) to `out`.
pub fn export_peft(run: &LoadedRun, out: &Path) -> Result<PathBuf> {
    let family = run.model.family();
    if run.arch.is_none() {
        return Err(TrainError::Invalid(
            "a full fine-tuning run has no adapter: use --merged".into(),
        ));
    }
    let tmp = staging(out)?;
    let pre = format!("base_model.model.{}", prefix(family));
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut rank_pattern = BTreeMap::new();
    let mut alpha_pattern = BTreeMap::new();
    let mut targets = Vec::new();
    for (path, (a, b)) in run.model.lora_factors()? {
        // lora_A [r, in] = Uᵀ, lora_B [out, r] = V.
        let r = a.dim(0)?;
        tensors.push((format!("{pre}{path}.lora_A.weight"), a));
        tensors.push((format!("{pre}{path}.lora_B.weight"), b));
        rank_pattern.insert(path.clone(), r);
        alpha_pattern.insert(path.clone(), r);
        targets.push(path);
    }
    if targets.is_empty() {
        // A bias-only architecture: PEFT's LoRA needs a target, so give every query an explicit
        // all-zero rank-1 factor pair (ΔW = 0, exactly).
        let cfg = run.model.config();
        let h = cfg.hidden_size;
        for i in 0..cfg.num_hidden_layers {
            let path = ModuleType::Query.path(i);
            tensors.push((
                format!("{pre}{path}.lora_A.weight"),
                Tensor::zeros((1, h), DType::F32, &Device::Cpu)?,
            ));
            tensors.push((
                format!("{pre}{path}.lora_B.weight"),
                Tensor::zeros((h, 1), DType::F32, &Device::Cpu)?,
            ));
            rank_pattern.insert(path.clone(), 1);
            alpha_pattern.insert(path.clone(), 1);
            targets.push(path);
        }
    }
    // Every bias, merged with its delta (PEFT's bias = "all" saves biases whole).
    for (name, t) in run.model.merged_weights()? {
        if name.ends_with(".bias")
            && !name.starts_with("classifier.")
            && !name.starts_with("pooler.")
        {
            // A LoRA-wrapped module keeps its own layer as `base_layer`.
            let module = name.trim_end_matches(".bias");
            let key = if targets.iter().any(|p| p == module) {
                format!("{pre}{module}.base_layer.bias")
            } else {
                format!("{pre}{name}")
            };
            tensors.push((key, t));
        }
    }
    // The head as modules_to_save (saved under the module's own name; PEFT maps it to its copy).
    let head: Vec<(String, Tensor)> = run
        .model
        .trainables()
        .iter()
        .filter(|t| t.role == Role::Head)
        .map(|t| (t.name.clone(), t.var.as_tensor().clone()))
        .collect();
    let mut modules_to_save: Vec<String> = vec!["classifier".into()];
    for (name, t) in head {
        if let Some(rest) = name.strip_prefix("pooler.") {
            tensors.push((format!("{pre}pooler.{rest}"), t));
            if !modules_to_save.contains(&"pooler".to_string()) {
                modules_to_save.push("pooler".into());
            }
        } else if let Some(rest) = name.strip_prefix("classifier.") {
            tensors.push((format!("base_model.model.classifier.{rest}"), t));
        }
    }
    let default_r = rank_pattern.values().copied().max().unwrap_or(1);
    let cfg = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": std::fs::canonicalize(&run.model_dir.dir).unwrap_or_else(|_| run.model_dir.dir.clone()).display().to_string(),
        "r": default_r,
        "lora_alpha": default_r,
        "lora_dropout": 0.0,
        "bias": "all",
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": modules_to_save,
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
    });
    petnas_core::io::write_atomic(
        &tmp.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    // Our metadata beside PEFT's file, not in it: PEFT warns about keys it does not know.
    let meta = serde_json::json!({
        "version": 1,
        "petnas_run": run.record.id,
        "config_hash": run.record.config_hash,
        "note": "bias deltas are stored as merged biases (bias = all); unstructured masks as zeros in dense factors",
    });
    petnas_core::io::write_atomic(
        &tmp.join("petnas_export.json"),
        serde_json::to_string_pretty(&meta)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    save_tensors(tensors, &tmp.join("adapter_model.safetensors"))?;
    copy_tokenizer(&run.model_dir.dir, &tmp)?;
    finish(tmp, out)
}

impl LoadedRun {
    /// Width of the head.
    pub fn num_labels(&self) -> usize {
        self.task_def.num_labels()
    }

    /// The run's task, ready to load: a GLUE task in `data`, or a user task at the files its
    /// run folder's `inputs.json` names.
    pub fn task_info(&self, run_dir: &Path, data: Option<&Path>) -> Result<crate::task::TaskInfo> {
        match self.glue {
            Some(t) => {
                let d = match (data, crate::run::trained_data_dir(run_dir)) {
                    (Some(d), _) => d.to_path_buf(),
                    (None, Some(d)) => d,
                    (None, None) => crate::glue::find_data(None)?,
                };
                crate::task::TaskInfo::glue(t, &d)
            }
            None => {
                let files = crate::run::trained_files(run_dir).ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "{}: inputs.json does not name the task's files",
                        run_dir.display()
                    ))
                })?;
                crate::task::TaskInfo::from_def(self.task_def.clone(), &files)
            }
        }
    }
}

/// Logits of the trained run on the first `max_dev` dev examples of its GLUE task in `data`.
pub fn predict_dev(
    run: &LoadedRun,
    data: &Path,
    max_dev: Option<usize>,
) -> Result<Vec<Prediction>> {
    let t = run.glue.ok_or_else(|| {
        TrainError::Invalid(format!("run {} is not on a GLUE task", run.record.id))
    })?;
    predict(
        run,
        &crate::task::TaskInfo::glue(t, data)?,
        crate::task::SplitName::Dev,
        max_dev,
    )
}

/// One dev example with the run's logits (for cross-checks against PyTorch).
#[derive(Debug, serde::Serialize)]
pub struct Prediction {
    /// First text.
    pub text_a: String,
    /// Second text, for pair tasks.
    pub text_b: Option<String>,
    /// The head's outputs.
    pub logits: Vec<f32>,
    /// The predicted class's name (user classification tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Logits of the trained run on the first `max` examples of a split of its task (for a user
/// task with class labels, also the predicted label's name).
pub fn predict(
    run: &LoadedRun,
    task: &crate::task::TaskInfo,
    split: crate::task::SplitName,
    max: Option<usize>,
) -> Result<Vec<Prediction>> {
    let family = run.model.family();
    let max_len = run.record.spec.recipe.max_len;
    let tok = crate::tokenize::TextTokenizer::from_file(
        &run.model_dir.tokenizer_path()?,
        family,
        max_len,
    )?;
    let mut ex = task.load(split)?;
    let max_dev = max;
    if let Some(n) = max_dev {
        ex.truncate(n);
    }
    let enc = tok.encode_all(&ex)?;
    let pad = run.model_dir.config.pad_token_id as u32;
    let mut out = Vec::with_capacity(ex.len());
    for (chunk_e, chunk_x) in enc.chunks(32).zip(ex.chunks(32)) {
        let items: Vec<&crate::tokenize::Encoded> = chunk_e.iter().collect();
        let batch = crate::batch::make_batch(&items, family, pad, run.model.device())?;
        let (_, logits) = run.model.forward(&batch, None)?;
        let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        for (x, l) in chunk_x.iter().zip(rows) {
            let label = (run.glue.is_none() && !run.task_def.labels.is_empty()).then(|| {
                let best = l
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i);
                run.task_def.labels[best].clone()
            });
            out.push(Prediction {
                text_a: x.text_a.clone(),
                text_b: x.text_b.clone(),
                logits: l,
                label,
            });
        }
    }
    Ok(out)
}
