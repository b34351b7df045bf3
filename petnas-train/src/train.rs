//! The training loop: Adam, linear schedule with warm-up, seeded shuffling, dropout, criterion
//! accumulation between `backward()` and the optimizer step (paper §3.2), dev evaluation at the end.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use petnas_core::criterion::CriterionAccumulator;
use petnas_core::inventory::Family;
use petnas_core::record::Recipe;
use petnas_core::rng::Rng;

use crate::batch::{epoch_batches, make_batch};
use crate::error::{io_err, Result, TrainError};
use crate::glue::Label;
use crate::metrics::{task_metrics, Predictions};
use crate::model::ops::{self, DropoutRng};
use crate::model::pet::Role;
use crate::model::EncoderModel;
use crate::task::TaskInfo;
use crate::tokenize::Encoded;

/// Learning rate at optimizer step `step` (0-based) of `total`: transformers'
/// `get_linear_schedule_with_warmup` (0 at step 0, peak after warm-up, linear decay to 0).
pub fn lr_at(peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * ((total.saturating_sub(step)) as f64 / (total.saturating_sub(warmup)).max(1) as f64)
            .max(0.0)
    }
}

/// Total optimizer steps of a recipe on `n` training examples.
pub fn total_steps(recipe: &Recipe, n: usize) -> usize {
    let per_epoch = n.div_ceil(recipe.batch_size.max(1));
    let steps = (recipe.epochs * per_epoch as f64).ceil() as usize;
    match recipe.max_steps {
        Some(m) => steps.min(m),
        None => steps,
    }
}

/// A tokenised split with its labels.
pub struct Dataset {
    /// Token ids per example.
    pub encoded: Vec<Encoded>,
    /// Gold labels.
    pub labels: Vec<Label>,
}

/// What one training did.
#[derive(Debug, Clone)]
pub struct TrainStats {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Mean loss over the last 10% of steps.
    pub final_loss: f64,
    /// Seconds spent in the loop.
    pub seconds: f64,
    /// Training examples processed.
    pub examples: usize,
    /// Fraction of the token positions fed to the model that were padding.
    pub padded_fraction: f64,
}

/// Shared context of a training: task, family, padding id, device, progress display.
pub struct TrainContext<'a> {
    /// The task (for the loss, the labels and the metrics).
    pub task: &'a TaskInfo,
    /// Model family (position ids).
    pub family: Family,
    /// The tokenizer's padding id.
    pub pad_id: u32,
    /// Where to compute.
    pub device: &'a Device,
    /// Draw a progress bar into this group (None: no bar).
    pub progress: Option<indicatif::MultiProgress>,
    /// A label for the progress bar.
    pub label: String,
}

fn labels_tensor(task: &TaskInfo, labels: &[&Label], device: &Device) -> Result<Tensor> {
    if task.is_regression() {
        let v: Vec<f32> = labels
            .iter()
            .map(|l| match l {
                Label::Score(s) => Ok(*s),
                Label::Class(_) => Err(TrainError::Invalid(format!(
                    "{}: class label in a regression task",
                    task.name()
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(Tensor::from_vec(v, labels.len(), device)?)
    } else {
        let v: Vec<u32> = labels
            .iter()
            .map(|l| match l {
                Label::Class(c) => Ok(*c as u32),
                Label::Score(_) => Err(TrainError::Invalid(format!(
                    "{}: score label in a classification task",
                    task.name()
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(Tensor::from_vec(v, labels.len(), device)?)
    }
}

/// The task's loss on `logits`: mean squared error for a regression, else cross-entropy.
pub fn task_loss(
    regression: bool,
    logits: &Tensor,
    labels: &Tensor,
) -> candle_core::Result<Tensor> {
    if regression {
        ops::mse(&logits.to_dtype(DType::F32)?, labels)
    } else {
        ops::cross_entropy(&logits.to_dtype(DType::F32)?, labels)
    }
}

/// Reads each PET tensor's gradient and feeds −θ·g to the criterion accumulator.
pub fn observe_criterion(
    model: &EncoderModel,
    grads: &candle_core::backprop::GradStore,
    crit: &mut CriterionAccumulator,
) -> Result<()> {
    for t in model.trainables().iter().filter(|t| t.role == Role::Pet) {
        let theta: Vec<f32> = t
            .var
            .as_tensor()
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let g: Vec<f32> = match grads.get(t.var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            None => vec![0.0; theta.len()],
        };
        crit.observe(&t.name, &theta, &g)?;
    }
    Ok(())
}

/// Trains `model` on `data` with `recipe`, seeded by `seed` (shuffling and dropout).
/// When `crit` is given, the criterion is accumulated at every step.
pub fn train(
    model: &EncoderModel,
    data: &Dataset,
    recipe: &Recipe,
    seed: u64,
    ctx: &TrainContext,
    mut crit: Option<&mut CriterionAccumulator>,
) -> Result<TrainStats> {
    let vars: Vec<candle_core::Var> = model.trainables().iter().map(|t| t.var.clone()).collect();
    let params = ParamsAdamW {
        lr: recipe.lr,
        beta1: recipe.adam_beta1,
        beta2: recipe.adam_beta2,
        eps: recipe.adam_eps,
        weight_decay: recipe.weight_decay,
    };
    let mut opt = AdamW::new(vars.clone(), params)?;
    let n = data.encoded.len();
    if n == 0 {
        return Err(TrainError::Invalid("no training examples".into()));
    }
    let total = total_steps(recipe, n);
    let warmup = (recipe.warmup_frac * total as f64).round() as usize;
    let lengths: Vec<usize> = data.encoded.iter().map(|e| e.ids.len()).collect();
    let mut shuffle_rng = Rng::new(seed).fork(0x5348_5546); // "SHUF"
    let mut drop_rng = DropoutRng::new(Rng::new(seed).fork(0x4452_4f50).next_u64()); // "DROP"
    let mut trace = Trace::from_env(model, &drop_rng)?;
    let bar = progress_bar(ctx, total as u64);
    let start = Instant::now();
    let mut step = 0usize;
    let mut losses: Vec<f64> = Vec::with_capacity(total);
    let (mut examples, mut positions, mut real) = (0usize, 0usize, 0usize);
    'outer: loop {
        for idx in epoch_batches(&lengths, recipe.batch_size, &mut shuffle_rng, recipe.bucket) {
            if step >= total {
                break 'outer;
            }
            let items: Vec<&Encoded> = idx.iter().map(|&i| &data.encoded[i]).collect();
            let labs: Vec<&Label> = idx.iter().map(|&i| &data.labels[i]).collect();
            let batch = make_batch(&items, ctx.family, ctx.pad_id, ctx.device)?;
            examples += items.len();
            real += items.iter().map(|e| e.ids.len()).sum::<usize>();
            positions += items.len() * items.iter().map(|e| e.ids.len()).max().unwrap_or(0);
            let y = labels_tensor(ctx.task, &labs, ctx.device)?;
            let drop_at = drop_rng.position().1;
            let (_, logits) = model.forward(&batch, Some(&mut drop_rng))?;
            let loss = task_loss(ctx.task.is_regression(), &logits, &y)?;
            let lv = loss.to_scalar::<f32>()?;
            if !lv.is_finite() {
                bar.abandon();
                return Err(TrainError::Diverged { step, loss: lv });
            }
            opt.set_learning_rate(lr_at(recipe.lr, step, total, warmup));
            // The order the paper's criterion needs: the loss gradient as backward made it is
            // observed first (−θ·∂L/∂θ, before clipping or the update changes θ), then clipped,
            // then applied.
            let mut grads = loss.backward()?;
            if let Some(c) = crit.as_deref_mut() {
                observe_criterion(model, &grads, c)?;
            }
            if let Some(max_norm) = recipe.max_grad_norm {
                clip_grad_norm(&vars, &mut grads, max_norm)?;
            }
            opt.step(&grads)?;
            if let Some(t) = trace.as_mut() {
                t.step(step, &idx, lv, drop_at)?;
            }
            losses.push(lv as f64);
            step += 1;
            bar.set_position(step as u64);
            if step % 10 == 0 || step == total {
                let k = losses.len().min(20);
                bar.set_message(format!(
                    "loss {:.4}",
                    losses[losses.len() - k..].iter().sum::<f64>() / k as f64
                ));
            }
        }
    }
    bar.finish_and_clear();
    let tail = (losses.len() / 10).max(1).min(losses.len());
    let final_loss = losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64;
    let padded_fraction = if positions == 0 {
        0.0
    } else {
        (positions - real) as f64 / positions as f64
    };
    Ok(TrainStats {
        steps: step,
        final_loss,
        seconds: start.elapsed().as_secs_f64(),
        examples,
        padded_fraction,
    })
}

/// `PETNAS_TRACE=DIR`: a debugging record of one training's random draws, so that another
/// implementation can replay them (`scripts/learning-gap --replay`): `init.safetensors` holds every
/// trainable tensor before the first step (the head's random init among them) under its
/// Hugging Face name, `dropout.json` the dropout generator's seed, and `steps.jsonl` one line per
/// optimizer step with the training-example indices of its batch (file order), its loss, and the
/// dropout counter its forward pass started at (the masks are `counter_uniform(seed, counter)`
/// in the order the forward pass draws them). It writes and never changes what is trained,
/// so it is not part of a run's spec. A folder that already holds a trace is refused.
struct Trace {
    steps: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
}

impl Trace {
    fn from_env(model: &EncoderModel, drop: &DropoutRng) -> Result<Option<Trace>> {
        let Some(dir) = std::env::var_os("PETNAS_TRACE").map(std::path::PathBuf::from) else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join("steps.jsonl");
        if path.exists() {
            return Err(TrainError::Invalid(format!(
                "PETNAS_TRACE: {} already holds a trace; give each training its own folder",
                dir.display()
            )));
        }
        let init: std::collections::HashMap<String, Tensor> = model
            .trainables()
            .iter()
            .map(|t| Ok((t.name.clone(), t.var.as_tensor().to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&init, dir.join("init.safetensors"))?;
        let dj = dir.join("dropout.json");
        let meta = serde_json::json!({ "seed": drop.position().0.to_string(),
            "draw": "petnas_core::rng::counter_uniform(seed, counter) >= p keeps, scaled by 1/(1-p)" });
        std::fs::write(&dj, format!("{meta}\n")).map_err(io_err(&dj))?;
        let f = std::fs::File::create(&path).map_err(io_err(&path))?;
        Ok(Some(Trace {
            steps: std::io::BufWriter::new(f),
            path,
        }))
    }

    fn step(&mut self, step: usize, idx: &[usize], loss: f32, drop_at: u64) -> Result<()> {
        use std::io::Write;
        let line = serde_json::json!({ "step": step, "idx": idx, "loss": loss, "dropout_counter": drop_at });
        writeln!(self.steps, "{line}")
            .and_then(|_| self.steps.flush())
            .map_err(io_err(&self.path))
    }
}

/// Scales all gradients by `max_norm / (‖g‖ + 1e-6)` when their global L2 norm ‖g‖ exceeds
/// `max_norm`: `torch.nn.utils.clip_grad_norm_` as transformers' Trainer calls it. Returns ‖g‖.
pub fn clip_grad_norm(
    vars: &[candle_core::Var],
    grads: &mut candle_core::backprop::GradStore,
    max_norm: f64,
) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}

fn progress_bar(ctx: &TrainContext, total: u64) -> indicatif::ProgressBar {
    let Some(multi) = &ctx.progress else {
        return indicatif::ProgressBar::hidden();
    };
    let bar = multi.add(indicatif::ProgressBar::new(total));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(ctx.label.clone());
    bar
}

/// Predictions of `model` on `data` (evaluation mode: no dropout).
pub fn predict(
    model: &EncoderModel,
    data: &Dataset,
    ctx: &TrainContext,
    batch_size: usize,
) -> Result<Predictions> {
    // Sort by length so evaluation batches carry little padding; results go back in input order.
    let mut order: Vec<usize> = (0..data.encoded.len()).collect();
    order.sort_by_key(|&i| data.encoded[i].ids.len());
    let mut classes = vec![0usize; order.len()];
    let mut scores = vec![0f64; order.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let items: Vec<&Encoded> = chunk.iter().map(|&i| &data.encoded[i]).collect();
        let batch = make_batch(&items, ctx.family, ctx.pad_id, ctx.device)?;
        let (_, logits) = model.forward(&batch, None)?;
        let logits = logits.to_dtype(DType::F32)?;
        if ctx.task.is_regression() {
            let v: Vec<f32> = logits.squeeze(1)?.to_vec1()?;
            for (&i, s) in chunk.iter().zip(v) {
                scores[i] = s as f64;
            }
        } else {
            let v: Vec<u32> = logits.argmax(1)?.to_vec1()?;
            for (&i, c) in chunk.iter().zip(v) {
                classes[i] = c as usize;
            }
        }
    }
    Ok(if ctx.task.is_regression() {
        Predictions::Scores(scores)
    } else {
        Predictions::Classes(classes)
    })
}

/// The task's metrics of `model` on `data`.
pub fn evaluate(
    model: &EncoderModel,
    data: &Dataset,
    ctx: &TrainContext,
    batch_size: usize,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let p = predict(model, data, ctx, batch_size)?;
    Ok(task_metrics(ctx.task, &p, &data.labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers() {
        // total 100, warm-up 6: lr(0) = 0, lr(3) = peak/2, lr(6) = peak, lr(53) = peak/2, lr(100) = 0
        let p = 1.0;
        assert_eq!(lr_at(p, 0, 100, 6), 0.0);
        assert!((lr_at(p, 3, 100, 6) - 0.5).abs() < 1e-12);
        assert!((lr_at(p, 6, 100, 6) - 1.0).abs() < 1e-12);
        assert!((lr_at(p, 53, 100, 6) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(p, 100, 100, 6), 0.0);
        assert_eq!(lr_at(p, 1, 10, 0), 0.9);
    }

    #[test]
    fn total_steps_rounds_up_and_caps() {
        let mut r = Recipe::new(3.0, 1e-3);
        assert_eq!(total_steps(&r, 3668), 3 * 230);
        r.epochs = 0.5;
        assert_eq!(total_steps(&r, 100), 4);
        r.max_steps = Some(2);
        assert_eq!(total_steps(&r, 100), 2);
    }
}
