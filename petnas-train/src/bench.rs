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
use crate::model::pet::Role;
use crate::model::{Batch, BuildOptions, EncoderModel};
use crate::search::init_map;

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
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
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
    let opts = BuildOptions { num_labels: 2, seed: 0, lora_init: LoraInit::Paper, full_finetune: space.full_finetune, dtype: DType::F32 };
    let model = EncoderModel::build(mc, &weights, if space.full_finetune { None } else { Some(&arch) }, &start, &opts, device)?;
    let trainable = model.param_count(Role::Pet)? + model.param_count(Role::Head)? + model.param_count(Role::Base)?;
    let mut rng = Rng::new(0);
    let n = cfg.batch * cfg.seq;
    let ids: Vec<u32> = (0..n).map(|_| 1000 + rng.below(mc.vocab_size - 1000) as u32).collect();
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
    let labels = Tensor::from_vec((0..cfg.batch).map(|_| rng.below(2) as u32).collect::<Vec<_>>(), cfg.batch, device)?;
    let vars: Vec<candle_core::Var> = model.trainables().iter().map(|t| t.var.clone()).collect();
    let mut opt = AdamW::new(vars, ParamsAdamW { lr: 3e-4, weight_decay: 0.0, ..Default::default() })?;
    let mut drop = DropoutRng::new(1);
    let mut crit = CriterionAccumulator::new();
    let (mut tot, mut fw, mut bw, mut cr, mut op) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..cfg.warmup + cfg.steps {
        let t0 = Instant::now();
        let (_, logits) = model.forward(&batch, Some(&mut drop))?;
        let loss = crate::train::task_loss(crate::glue::Task::Rte, &logits, &labels)?;
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
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    Ok(BenchReport {
        r#impl: "petnas",
        threads,
        batch: cfg.batch,
        seq: cfg.seq,
        space: cfg.space.clone(),
        trainable_params: trainable,
        ms_per_step: ms,
        ms_per_step_min: if ms_min.is_finite() { ms_min } else { 0.0 },
        ms_forward: median(&mut fw),
        ms_backward: median(&mut bw),
        ms_criterion: ms_c,
        ms_optimizer: median(&mut op),
        criterion_fraction: ms_c / ms.max(1e-9),
        examples_per_s: cfg.batch as f64 * 1e3 / ms.max(1e-9),
        tokens_per_s: (cfg.batch * cfg.seq) as f64 * 1e3 / ms.max(1e-9),
        peak_rss_mib: peak_rss_mib(),
    })
}
