//! `petnas-train verify`: numerical parity with PyTorch + transformers.
//!
//! The fixture (`../shared/reference/minilm_rte_parity.safetensors`, made by
//! `make_parity_fixture.py --model DIR --glue DIR --task RTE --out minilm_rte_parity`) holds the HF
//! tokenizer's ids, last hidden states, logits, loss, gradients of every bias and of LoRA U/V on every
//! query and key, and the criterion −θ·g, for all-MiniLM-L6-v2 with dropout off. We recompute all of
//! them from the fixture's inputs, head weights and LoRA factors.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use petnas_core::arch::Architecture;
use petnas_core::criterion::{CriterionAccumulator, CriterionKind};
use petnas_core::inventory::{bias_delta_name, inventory, lora_u_name, lora_v_name, ModuleType};
use petnas_core::record::{LoraInit, Precision};
use petnas_core::space::SearchSpace;
use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::model::load::ModelDir;
use crate::model::pet::initial_values;
use crate::model::{head_names, Batch, BuildOptions, EncoderModel};
use crate::tokenize::TextTokenizer;

/// Tolerances of the parity check.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tolerances {
    /// max |ours − torch| over the last hidden states.
    pub hidden_abs: f64,
    /// max |ours − torch| / max |torch| over the logits.
    pub logits_rel: f64,
    /// Relative difference of the loss.
    pub loss_rel: f64,
    /// ‖ours − torch‖ / ‖torch‖ per gradient and criterion tensor.
    pub grad_rel: f64,
}

impl Tolerances {
    /// fp32: float rounding only. bf16: twice the deviation of PyTorch's own
    /// `torch.autocast("cpu", bfloat16)` from its fp32 result on a fixture of this kind (logits
    /// 0.7% rel, loss 1e-4 rel, gradients up to 3.2% rel by norm, hidden states up to 0.22 abs),
    /// so petnas in bf16 stays as close to fp32 PyTorch as a PyTorch user's mixed precision does.
    pub fn for_precision(p: Precision) -> Self {
        match p {
            Precision::Fp32 => Self {
                hidden_abs: 1e-4,
                logits_rel: 1e-5,
                loss_rel: 1e-5,
                grad_rel: 1e-4,
            },
            Precision::Bf16 => Self {
                hidden_abs: 0.44,
                logits_rel: 1.4e-2,
                loss_rel: 2e-4,
                grad_rel: 6.4e-2,
            },
        }
    }
}

/// Gradients whose reference norm is below this fraction of the largest one are compared against
/// that floor instead of their own norm (they are zero in exact arithmetic).
pub const GRAD_FLOOR: f64 = 1e-3;

/// The differences found, printed as one JSON object.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// Our tokenizer reproduces the fixture's ids and masks.
    pub tokens_equal: bool,
    /// max |ours − torch| over the last hidden states (real tokens).
    pub hidden_max_abs: f64,
    /// max |ours − torch| / max |torch| over the logits.
    pub logits_max_rel: f64,
    /// |ours − torch| / |torch| for the loss.
    pub loss_rel: f64,
    /// Our loss.
    pub loss: f64,
    /// max over tensors of ‖ours − torch‖ / ‖torch‖ for gradients.
    pub grad_max_rel: f64,
    /// The tensor with the largest gradient difference.
    pub grad_worst: String,
    /// Gradient tensors compared.
    pub grad_tensors: usize,
    /// Of those, how many are (numerically) zero in the reference and were compared against the floor.
    pub grad_near_zero: usize,
    /// max over tensors of ‖ours − torch‖ / ‖torch‖ for the criterion −θ·g.
    pub crit_max_rel: f64,
    /// Criterion tensors compared (LoRA factors, and every bias when the fixture carries deltas).
    pub crit_tensors: usize,
    /// Bias deltas the fixture set (a trained point: the bias criterion is not identically 0).
    pub bias_deltas: usize,
    /// Arithmetic of the frozen matmuls.
    pub precision: Precision,
    /// Which GEMM ran them in bf16 (`amx`, `avx512bf16`, `fp32`), or `f32` in fp32.
    pub backend: String,
    /// The tolerances applied.
    pub tolerances: Tolerances,
    /// All within tolerance.
    pub pass: bool,
}

fn vec_of(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
}

/// Runs the parity check of `model_dir` against `fixture` (its `.json` beside it gives the texts).
/// A fixture with `delta.<bias>` tensors (a trained point) sets those bias deltas and compares
/// the bias criterion `crit.<bias>` too.
pub fn verify(
    model_dir: &str,
    fixture: &Path,
    device: &Device,
    precision: Precision,
) -> Result<VerifyReport> {
    let md = ModelDir::open(model_dir)?;
    let cfg = &md.config;
    let family = cfg.family()?;
    let fx = candle_core::safetensors::load(fixture, &Device::Cpu).map_err(|e| {
        TrainError::Invalid(format!(
            "{}: not a readable fixture: {e}",
            fixture.display()
        ))
    })?;
    let get = |k: &str| -> Result<&Tensor> {
        fx.get(k).ok_or_else(|| {
            TrainError::Invalid(format!("{}: fixture lacks tensor `{k}`", fixture.display()))
        })
    };
    let prefix = match family {
        petnas_core::inventory::Family::Bert => "bert.",
        petnas_core::inventory::Family::Roberta => "roberta.",
    };
    let json_path = fixture.with_extension("json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path).map_err(crate::error::io_err(&json_path))?,
    )
    .map_err(|e| TrainError::Invalid(format!("{}: {e}", json_path.display())))?;

    // 1. Tokenisation: ours vs the fixture's ids (compared on real tokens, and the masks).
    let ids_fx: Vec<Vec<i64>> = get("input_ids")?.to_vec2()?;
    let mask_fx: Vec<Vec<i64>> = get("attention_mask")?.to_vec2()?;
    let types_fx: Vec<Vec<i64>> = get("token_type_ids")?.to_vec2()?;
    let tok = TextTokenizer::from_file(&md.tokenizer_path()?, family, 128)?;
    let s1 = meta["sentence1"].as_array().cloned().unwrap_or_default();
    let s2 = meta["sentence2"].as_array().cloned().unwrap_or_default();
    let mut tokens_equal = s1.len() == ids_fx.len();
    for (i, (a, b)) in s1.iter().zip(s2.iter()).enumerate() {
        let e = tok.encode(a.as_str().unwrap_or(""), b.as_str())?;
        let n = mask_fx[i].iter().filter(|&&m| m == 1).count();
        let want: Vec<u32> = ids_fx[i][..n].iter().map(|&x| x as u32).collect();
        let want_t: Vec<u32> = types_fx[i][..n].iter().map(|&x| x as u32).collect();
        tokens_equal &= e.ids == want
            && (family != petnas_core::inventory::Family::Bert || e.type_ids == want_t);
    }

    // 2. The model: all biases get a delta, query/key get LoRA at the fixture's rank with its factors.
    let rank = meta["rank"].as_u64().unwrap_or(4) as usize;
    let inv = inventory(cfg);
    let mut space = SearchSpace::preset("bitfit", &inv)?;
    space.name = format!("verify-r{rank}");
    space.lora = inv
        .iter()
        .filter(|m| matches!(m.module_type, ModuleType::Query | ModuleType::Key))
        .map(|m| (m.path.clone(), rank))
        .collect();
    let arch = Architecture::maximal(&space, cfg)?;
    let mut start: HashMap<String, Vec<f32>> = HashMap::new();
    for m in &arch.modules {
        for (name, v) in initial_values(0, m, LoraInit::Paper) {
            start.insert(name, v);
        }
        if m.bias.is_some() {
            if let Some(d) = fx.get(&format!("delta.{prefix}{}.bias", m.path)) {
                start.insert(bias_delta_name(&m.path), vec_of(d)?);
            }
        }
        if m.lora.is_some() {
            start.insert(
                lora_u_name(&m.path),
                vec_of(get(&format!("lora.{prefix}{}.U", m.path))?)?,
            );
            start.insert(
                lora_v_name(&m.path),
                vec_of(get(&format!("lora.{prefix}{}.V", m.path))?)?,
            );
        }
    }
    let mut weights = md.weights()?;
    for name in head_names(family) {
        let key = if name.starts_with("pooler.") {
            format!("head.{prefix}{name}")
        } else {
            format!("head.{name}")
        };
        weights.insert(name, get(&key)?.clone());
    }
    let labels_fx: Vec<i64> = get("labels")?.to_vec1()?;
    let opts = BuildOptions {
        num_labels: get("logits")?.dim(1)?,
        seed: 0,
        lora_init: LoraInit::Paper,
        full_finetune: false,
        dtype: DType::F32,
        precision,
    };
    let model = EncoderModel::build(cfg, &weights, Some(&arch), &start, &opts, device)?;

    // 3. Forward and backward on the fixture's own inputs.
    let (b, l) = get("input_ids")?.dims2()?;
    let to_u32 = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::U32)?.to_device(device)?) };
    let mut pos = Vec::with_capacity(b * l);
    for row in &mask_fx {
        for (j, &m) in row.iter().enumerate() {
            pos.push(match family {
                petnas_core::inventory::Family::Bert => j as u32,
                petnas_core::inventory::Family::Roberta => {
                    if m == 1 {
                        cfg.pad_token_id as u32 + 1 + j as u32
                    } else {
                        cfg.pad_token_id as u32
                    }
                }
            });
        }
    }
    let batch = Batch {
        input_ids: to_u32(get("input_ids")?)?,
        type_ids: to_u32(get("token_type_ids")?)?,
        position_ids: Tensor::from_vec(pos, (b, l), device)?,
        attention_mask: get("attention_mask")?
            .to_dtype(DType::F32)?
            .to_device(device)?,
    };
    let (hidden, logits) = model.forward(&batch, None)?;
    let y = Tensor::from_vec(
        labels_fx.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        b,
        device,
    )?;
    let loss = crate::train::task_loss(false, &logits, &y)?;
    let grads = loss.backward()?;

    // 4. Compare.
    let hid = hidden.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let mask3 = get("attention_mask")?.to_dtype(DType::F32)?.unsqueeze(2)?;
    let hidden_max_abs = hid
        .sub(get("last_hidden_state")?)?
        .broadcast_mul(&mask3)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()? as f64;
    let lo = vec_of(&logits)?;
    let lo_fx = vec_of(get("logits")?)?;
    let lo_scale = lo_fx.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let logits_max_rel = lo
        .iter()
        .zip(&lo_fx)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max)
        / lo_scale.max(1e-12);
    let loss_v = loss.to_scalar::<f32>()? as f64;
    let loss_fx = get("loss")?.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
    let loss_rel = (loss_v - loss_fx).abs() / loss_fx.abs().max(1e-12);

    let by_name: BTreeMap<&str, &crate::model::pet::Trainable> = model
        .trainables()
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut pairs: Vec<(String, Vec<f32>, Vec<f32>)> = Vec::new();
    let mut collect = |ours: &str, theirs: &str| -> Result<()> {
        let t = by_name
            .get(ours)
            .ok_or_else(|| TrainError::Invalid(format!("no trainable `{ours}`")))?;
        let g = grads
            .get(t.var.as_tensor())
            .ok_or_else(|| TrainError::Invalid(format!("no gradient reached `{ours}`")))?;
        pairs.push((ours.to_string(), vec_of(g)?, vec_of(get(theirs)?)?));
        Ok(())
    };
    for m in &arch.modules {
        if m.bias.is_some() {
            collect(
                &bias_delta_name(&m.path),
                &format!("grad.{prefix}{}.bias", m.path),
            )?;
        }
        if m.lora.is_some() {
            collect(
                &lora_u_name(&m.path),
                &format!("grad.lora.{prefix}{}.U", m.path),
            )?;
            collect(
                &lora_v_name(&m.path),
                &format!("grad.lora.{prefix}{}.V", m.path),
            )?;
        }
    }
    for name in head_names(family).iter().filter(|n| n.ends_with(".bias")) {
        let key = if name.starts_with("pooler.") {
            format!("grad.{prefix}{name}")
        } else {
            format!("grad.{name}")
        };
        if fx.contains_key(&key) {
            collect(name, &key)?;
        }
    }
    // Some gradients are zero in exact arithmetic (a key bias shifts every score of a query by the
    // same amount, and softmax ignores that), so both sides hold float noise and their ratio means
    // nothing. The denominator is therefore floored at GRAD_FLOOR × the largest reference norm.
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let g_max = pairs.iter().map(|(_, _, b)| norm(b)).fold(0.0, f64::max);
    let floor = GRAD_FLOOR * g_max;
    let mut grad_max_rel = 0f64;
    let mut grad_worst = String::new();
    let mut grad_near_zero = 0;
    for (name, a, b) in &pairs {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2))
            .sum::<f64>()
            .sqrt();
        let nb = norm(b);
        if nb < floor {
            grad_near_zero += 1;
        }
        let r = diff / nb.max(floor).max(1e-30);
        if r >= grad_max_rel {
            grad_max_rel = r;
            grad_worst = name.clone();
        }
    }
    let grad_tensors = pairs.len();
    let mut crit = CriterionAccumulator::new();
    crate::train::observe_criterion(&model, &grads, &mut crit)?;
    let scores = crit.scores(CriterionKind::Mean, 0);
    // (ours, theirs) per criterion tensor; compared below with the gradients' floor, since the
    // key biases' criterion −Δb·g is as zero in exact arithmetic as their gradient.
    let mut crit_pairs: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    let mut bias_deltas = 0;
    for m in arch.modules.iter().filter(|m| m.bias.is_some()) {
        let key = format!("crit.{prefix}{}.bias", m.path);
        let Some(want) = fx.get(&key) else { continue };
        if !fx.contains_key(&format!("delta.{prefix}{}.bias", m.path)) {
            return Err(TrainError::Invalid(format!(
                "{}: `{key}` without its delta",
                fixture.display()
            )));
        }
        let name = bias_delta_name(&m.path);
        let s = scores
            .get(&name)
            .ok_or_else(|| TrainError::Invalid(format!("no criterion for `{name}`")))?;
        crit_pairs.push((s.clone(), vec_of(want)?));
        bias_deltas += 1;
    }
    for m in arch.modules.iter().filter(|m| m.lora.is_some()) {
        for (ours, suffix) in [(lora_u_name(&m.path), "U"), (lora_v_name(&m.path), "V")] {
            let s = scores
                .get(&ours)
                .ok_or_else(|| TrainError::Invalid(format!("no criterion for `{ours}`")))?;
            crit_pairs.push((
                s.clone(),
                vec_of(get(&format!("crit.lora.{prefix}{}.{suffix}", m.path))?)?,
            ));
        }
    }
    let c_max = crit_pairs.iter().map(|(_, b)| norm(b)).fold(0.0, f64::max);
    let crit_floor = GRAD_FLOOR * c_max;
    let diff_norm = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let crit_max_rel = crit_pairs
        .iter()
        .map(|(a, b)| diff_norm(a, b) / norm(b).max(crit_floor).max(1e-30))
        .fold(0.0, f64::max);
    let crit_tensors = crit_pairs.len();
    let tol = Tolerances::for_precision(precision);
    let pass = tokens_equal
        && hidden_max_abs <= tol.hidden_abs
        && logits_max_rel <= tol.logits_rel
        && loss_rel <= tol.loss_rel
        && grad_max_rel <= tol.grad_rel
        && crit_max_rel <= tol.grad_rel
        && grad_tensors > 0
        && crit_tensors > 0;
    Ok(VerifyReport {
        tokens_equal,
        hidden_max_abs,
        logits_max_rel,
        loss_rel,
        loss: loss_v,
        grad_max_rel,
        grad_worst,
        grad_tensors,
        grad_near_zero,
        crit_max_rel,
        crit_tensors,
        bias_deltas,
        precision,
        backend: match precision {
            Precision::Fp32 => "f32".into(),
            Precision::Bf16 if device.is_cpu() && crate::model::fused::linear_enabled() => {
                crate::model::fused::bf16_path().into()
            }
            // The composite path: candle's bf16 matmul (cuBLAS on CUDA).
            Precision::Bf16 => format!("candle bf16 matmul on {}", device_name(device)),
        },
        tolerances: tol,
        pass,
    })
}

fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
