//! `petnas-train bench`: throughput of one PET training step (forward, backward, criterion
//! accumulation, Adam step) on a fixed batch, the same workload as
//! `../shared/reference/torch_pet_bench.py` (all biases + rank-8 LoRA on query, key and both FFN
//! dense modules, batch 16 × 128, dropout on, Adam).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use petnas_core::arch::Architecture;
use petnas_core::criterion::CriterionAccumulator;
use petnas_core::inventory::inventory;
use petnas_core::record::LoraInit;
use petnas_core::rng::Rng;
use petnas_core::space::SearchSpace;
use serde::Serialize;

use crate::error::Result;
use crate::model::load::ModelDir;
use crate::model::ops::DropoutRng;
use crate::model::pet::init_map;
use crate::model::pet::Role;
use crate::model::{Batch, BuildOptions, EncoderModel};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Model folder.
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// Sequence length (every token real).
    pub seq: usize,
    /// Space (`mam` = the PyTorch reference's workload).
    pub space: String,
    /// Timed steps.
    pub steps: usize,
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Accumulate the criterion each step (as a search's maximal training does).
    pub criterion: bool,
    /// Real batches instead of random full-length tokens: the task's training examples in the
    /// order a plain-shuffle epoch (seed 0) visits them, each batch padded to its longest
    /// example, as `train` feeds them. `seq` is then the truncation length.
    pub padded: Option<PaddedData>,
    /// Arithmetic of the frozen matmuls.
    pub precision: petnas_core::record::Precision,
}

/// The real data behind `bench --padded`.
#[derive(Debug, Clone)]
pub struct PaddedData {
    /// GLUE folder.
    pub data: std::path::PathBuf,
    /// The task whose training split is used.
    pub task: crate::glue::Task,
}

/// One JSON line of results.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Always "petnas".
    pub r#impl: &'static str,
    /// Worker threads (RAYON_NUM_THREADS or all cores).
    pub threads: usize,
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Space measured.
    pub space: String,
    /// `random` (full-length random tokens) or `<task> padded` (real batches).
    pub data: String,
    /// Mean padded batch length of the timed steps (= `seq` on random tokens).
    pub mean_batch_len: f64,
    /// Share of the timed steps' token positions that are padding.
    pub padded_fraction: f64,
    /// Whether the main thread and every rayon worker flush denormals (FTZ and DAZ).
    pub flush_denormals: bool,
    /// `fp32` or `bf16`.
    pub precision: petnas_core::record::Precision,
    /// The GEMM of the frozen matmuls: `gemm-f32`, or in bf16 `amx`, `avx512bf16`, `fp32`.
    pub backend: String,
    /// Trainable parameters (PET + head).
    pub trainable_params: usize,
    /// Median step time.
    pub ms_per_step: f64,
    /// Fastest step (a contention-robust figure on a shared machine).
    pub ms_per_step_min: f64,
    /// Median forward time.
    pub ms_forward: f64,
    /// Median backward time.
    pub ms_backward: f64,
    /// Median criterion-accumulation time.
    pub ms_criterion: f64,
    /// Median optimizer time.
    pub ms_optimizer: f64,
    /// Criterion share of the step.
    pub criterion_fraction: f64,
    /// batch / step time.
    pub examples_per_s: f64,
    /// batch × seq / step time.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Peak resident set size in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs the benchmark on `device`.
pub fn bench(cfg: &BenchConfig, device: &Device) -> Result<BenchReport> {
    let md = ModelDir::open(&cfg.model)?;
    let mc = &md.config;
    let family = mc.family()?;
    let weights = md.weights()?;
    let space = SearchSpace::from_spec(&cfg.space, &inventory(mc))?;
    let arch = Architecture::maximal(&space, mc)?;
    let start = init_map(&arch, 0, LoraInit::Paper);
    let opts = BuildOptions {
        num_labels: 2,
        seed: 0,
        lora_init: LoraInit::Paper,
        full_finetune: space.full_finetune,
        dtype: DType::F32,
        precision: cfg.precision,
    };
    let model = EncoderModel::build(
        mc,
        &weights,
        if space.full_finetune {
            None
        } else {
            Some(&arch)
        },
        &start,
        &opts,
        device,
    )?;
    let trainable = model.param_count(Role::Pet)?
        + model.param_count(Role::Head)?
        + model.param_count(Role::Base)?;
    let mut rng = Rng::new(0);
    let steps = cfg.warmup + cfg.steps;
    let batches: Vec<(Batch, Tensor)> = match &cfg.padded {
        None => vec![random_batch(cfg, mc, family, &mut rng, device)?],
        Some(p) => real_batches(cfg, p, &md, family, steps, device)?,
    };
    let (mut positions, mut real) = (0usize, 0usize);
    for i in cfg.warmup..steps {
        let m: Vec<f32> = batches[i % batches.len()]
            .0
            .attention_mask
            .flatten_all()?
            .to_vec1()?;
        positions += m.len();
        real += m.iter().filter(|&&v| v > 0.0).count();
    }
    let vars: Vec<candle_core::Var> = model.trainables().iter().map(|t| t.var.clone()).collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 3e-4,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut drop = DropoutRng::new(1);
    let mut crit = CriterionAccumulator::new();
    let (mut tot, mut fw, mut bw, mut cr, mut op) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..steps {
        let (batch, labels) = &batches[i % batches.len()];
        let t0 = Instant::now();
        let (_, logits) = model.forward(batch, Some(&mut drop))?;
        let loss = crate::train::task_loss(false, &logits, labels)?;
        let _ = loss.to_scalar::<f32>()?; // syncs the device
        let t1 = Instant::now();
        let grads = loss.backward()?;
        device.synchronize()?;
        let t2 = Instant::now();
        if cfg.criterion {
            crate::train::observe_criterion(&model, &grads, &mut crit)?;
        }
        let t3 = Instant::now();
        opt.step(&grads)?;
        device.synchronize()?;
        let t4 = Instant::now();
        if i >= cfg.warmup {
            tot.push((t4 - t0).as_secs_f64() * 1e3);
            fw.push((t1 - t0).as_secs_f64() * 1e3);
            bw.push((t2 - t1).as_secs_f64() * 1e3);
            cr.push((t3 - t2).as_secs_f64() * 1e3);
            op.push((t4 - t3).as_secs_f64() * 1e3);
        }
    }
    let ms_min = tot.iter().copied().fold(f64::INFINITY, f64::min);
    let ms = median(&mut tot);
    let ms_c = median(&mut cr);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
    let n_timed = cfg.steps.max(1) as f64;
    Ok(BenchReport {
        r#impl: "petnas",
        threads,
        batch: cfg.batch,
        seq: cfg.seq,
        space: cfg.space.clone(),
        data: match &cfg.padded {
            None => "random".into(),
            Some(p) => format!("{} padded", p.task.name()),
        },
        mean_batch_len: positions as f64 / cfg.batch as f64 / n_timed,
        padded_fraction: if positions == 0 {
            0.0
        } else {
            (positions - real) as f64 / positions as f64
        },
        precision: cfg.precision,
        backend: crate::model::fused::matmul_path(cfg.precision).into(),
        flush_denormals: crate::model::cpu::flush_denormals_on()
            && rayon::broadcast(|_| crate::model::cpu::flush_denormals_on())
                .iter()
                .all(|&b| b),
        trainable_params: trainable,
        ms_per_step: ms,
        ms_per_step_min: if ms_min.is_finite() { ms_min } else { 0.0 },
        ms_forward: median(&mut fw),
        ms_backward: median(&mut bw),
        ms_criterion: ms_c,
        ms_optimizer: median(&mut op),
        criterion_fraction: ms_c / ms.max(1e-9),
        examples_per_s: cfg.batch as f64 * 1e3 / ms.max(1e-9),
        tokens_per_s: positions as f64 / n_timed * 1e3 / ms.max(1e-9),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// One batch of random full-length tokens with random binary labels (the PyTorch reference's).
fn random_batch(
    cfg: &BenchConfig,
    mc: &petnas_core::inventory::EncoderConfig,
    family: petnas_core::inventory::Family,
    rng: &mut Rng,
    device: &Device,
) -> Result<(Batch, Tensor)> {
    let n = cfg.batch * cfg.seq;
    let ids: Vec<u32> = (0..n)
        .map(|_| 1000 + rng.below(mc.vocab_size - 1000) as u32)
        .collect();
    let pos: Vec<u32> = (0..n)
        .map(|i| match family {
            petnas_core::inventory::Family::Bert => (i % cfg.seq) as u32,
            petnas_core::inventory::Family::Roberta => (mc.pad_token_id + 1 + i % cfg.seq) as u32,
        })
        .collect();
    let batch = Batch {
        input_ids: Tensor::from_vec(ids, (cfg.batch, cfg.seq), device)?,
        type_ids: Tensor::zeros((cfg.batch, cfg.seq), DType::U32, device)?,
        position_ids: Tensor::from_vec(pos, (cfg.batch, cfg.seq), device)?,
        attention_mask: Tensor::ones((cfg.batch, cfg.seq), DType::F32, device)?,
    };
    let labels = Tensor::from_vec(
        (0..cfg.batch)
            .map(|_| rng.below(2) as u32)
            .collect::<Vec<_>>(),
        cfg.batch,
        device,
    )?;
    Ok((batch, labels))
}

/// The first `steps` batches of a plain-shuffle epoch (seed 0) of the task's training split,
/// tokenised with truncation at `cfg.seq` and dynamically padded, with binary labels (the bench
/// always trains a 2-label head: the labels' values do not change the step's cost).
fn real_batches(
    cfg: &BenchConfig,
    p: &PaddedData,
    md: &ModelDir,
    family: petnas_core::inventory::Family,
    steps: usize,
    device: &Device,
) -> Result<Vec<(Batch, Tensor)>> {
    let tok = crate::tokenize::TextTokenizer::from_file(&md.tokenizer_path()?, family, cfg.seq)?;
    let examples = crate::glue::load(&p.data, p.task, crate::glue::Split::Train)?;
    let encoded = tok.encode_all(&examples)?;
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let mut order_rng = Rng::new(0).fork(0x5348_5546);
    let pad = md.config.pad_token_id as u32;
    crate::batch::epoch_batches(&lengths, cfg.batch, &mut order_rng, 1)
        .into_iter()
        .filter(|b| b.len() == cfg.batch)
        .take(steps.max(1))
        .map(|idx| {
            let items: Vec<&crate::tokenize::Encoded> = idx.iter().map(|&i| &encoded[i]).collect();
            let batch = crate::batch::make_batch(&items, family, pad, device)?;
            let labels = Tensor::from_vec(
                idx.iter().map(|&i| (i % 2) as u32).collect::<Vec<_>>(),
                cfg.batch,
                device,
            )?;
            Ok((batch, labels))
        })
        .collect()
}
