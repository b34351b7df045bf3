//! Differentiable building blocks for training.
//!
//! candle's fused `ops::layer_norm` (what `candle_nn::LayerNorm` calls on contiguous input) and
//! `softmax_last_dim` have no backward pass: gradients stop there without an error. Everything here is
//! composed of ops that candle can differentiate, and `tests::grads_reach_layer_zero` in
//! [`crate::model`] guards against a regression. These composite ops are the reference and the
//! fallback (CUDA, half precision) for the fused CPU ops in [`super::fused`], which have their own
//! backward passes and are tested against them; [`dropout`] picks the fused one by itself.
//!
//! Dropout uses our own counter-based random numbers (petnas-core's `counter_uniform`), so that the
//! same seed gives bit-identical training on CPU; candle's CPU generator cannot be seeded.

use candle_core::{DType, Device, Result, Tensor, D};
use rayon::prelude::*;

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`.
/// `beta` is the effective bias (base bias plus its masked delta) so gradients reach the delta.
pub fn layer_norm_composite(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?; // [.., 1]
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// Softmax over the last dimension, composed of differentiable ops (max is subtracted for stability;
/// the max itself receives no meaningful gradient, which is exact because softmax is shift-invariant).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// Log-softmax over the last dimension (differentiable).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let xs = x.broadcast_sub(&max)?;
    let lse = xs.exp()?.sum_keepdim(D::Minus1)?.log()?;
    xs.broadcast_sub(&lse)
}

/// Mean cross-entropy of `logits` [n, c] against class ids `labels` [n] (u32).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let lp = log_softmax_last(logits)?;
    let picked = lp.gather(&labels.unsqueeze(1)?, 1)?; // [n, 1]
    picked.mean_all()?.neg()
}

/// Mean squared error of a single-output regression head `pred` [n, 1] against `target` [n] (f32).
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let d = pred.squeeze(1)?.sub(target)?;
    d.sqr()?.mean_all()
}

/// A source of dropout masks: one seed per training run, a fresh counter range per call, so masks
/// are reproducible bit for bit and independent of thread scheduling.
#[derive(Debug, Clone)]
pub struct DropoutRng {
    seed: u64,
    counter: u64,
}

impl DropoutRng {
    /// A generator for one training run.
    pub fn new(seed: u64) -> Self {
        Self { seed, counter: 0 }
    }

    /// The seed and the next counter (for `PETNAS_TRACE`, so another implementation can draw
    /// the same masks with `petnas_core::rng::counter_uniform`).
    pub fn position(&self) -> (u64, u64) {
        (self.seed, self.counter)
    }

    /// Reserves `n` counters for a mask generated elsewhere (the fused ops): returns the seed and
    /// the first counter, exactly the range [`DropoutRng::mask`] would have drawn.
    pub fn reserve(&mut self, n: usize) -> (u64, u64) {
        let base = self.counter;
        self.counter += n as u64;
        (self.seed, base)
    }

    /// A keep-mask for `shape`, scaled by `1 / (1 - p)`, on `device`.
    pub fn mask(
        &mut self,
        shape: &[usize],
        p: f32,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let base = self.counter;
        self.counter += n as u64;
        let seed = self.seed;
        let scale = 1.0 / (1.0 - p);
        let mut v = vec![0f32; n];
        v.par_chunks_mut(1 << 14)
            .enumerate()
            .for_each(|(c, chunk)| {
                let off = base + (c << 14) as u64;
                for (i, x) in chunk.iter_mut().enumerate() {
                    let u = petnas_core::rng::counter_uniform(seed, off + i as u64);
                    *x = if u >= p { scale } else { 0.0 };
                }
            });
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }
}

/// Dropout with probability `p`; identity when `rng` is `None` (evaluation) or `p == 0`.
/// Fused on CPU (the mask is generated inside the op and redrawn in backward, never stored);
/// the same elements are dropped either way.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 && super::fused::enabled(super::fused::Kind::Dropout, x) => {
            let (seed, base) = rng.reserve(x.elem_count());
            super::fused::dropout(x, p as f32, seed, base)
        }
        rng => dropout_composite(x, p, rng),
    }
}

/// Dropout as a mask tensor times `x` (any device and dtype).
pub fn dropout_composite(x: &Tensor, p: f64, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => {
            let m = rng.mask(x.dims(), p as f32, x.dtype(), x.device())?;
            x.mul(&m)
        }
        _ => Ok(x.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn layer_norm_matches_reference_and_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 4., -1., 0., 3.], (2, 3), &dev)?;
        let g = Tensor::new(&[1f32, 2., 0.5], &dev)?;
        let b = Var::from_vec(vec![0.1f32, 0., -0.1], 3, &dev)?;
        let y = layer_norm_composite(x.as_tensor(), &g, b.as_tensor(), 1e-5)?;
        let row: Vec<f32> = y.get(0)?.to_vec1()?;
        // mean 7/3, var = ((4/3)^2 + (1/3)^2 + (5/3)^2)/3 = 42/27
        let sd = (42f32 / 27. + 1e-5).sqrt();
        let want = [
            (-4. / 3.) / sd + 0.1,
            2. * (-1. / 3.) / sd,
            0.5 * (5. / 3.) / sd - 0.1,
        ];
        for (a, w) in row.iter().zip(want) {
            assert!((a - w).abs() < 1e-5, "{a} vs {w}");
        }
        let grads = (y.sqr()?.sum_all()?).backward()?;
        let gx = grads.get(x.as_tensor()).expect("grad reaches the input");
        assert!(gx.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        assert!(grads.get(b.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn softmax_rows_sum_to_one_and_backprop() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 3., 0., 0., -1e4], (2, 3), &dev)?;
        let p = softmax_last(x.as_tensor())?;
        let s: Vec<f32> = p.sum(1)?.to_vec1()?;
        assert!((s[0] - 1.0).abs() < 1e-6 && (s[1] - 1.0).abs() < 1e-6);
        let w = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.]], &dev)?;
        let grads = (p * w)?.sum_all()?.backward()?;
        let g: Vec<Vec<f32>> = grads.get(x.as_tensor()).unwrap().to_vec2()?;
        // d p0 / d x0 = p0 (1 - p0)
        let p0 = (1f32).exp() / (1f32.exp() + 2f32.exp() + 3f32.exp());
        assert!((g[0][0] - p0 * (1. - p0)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn dropout_masks_are_reproducible_and_scaled() -> Result<()> {
        let dev = Device::Cpu;
        let mut a = DropoutRng::new(7);
        let mut b = DropoutRng::new(7);
        let ma: Vec<f32> = a.mask(&[1000], 0.1, DType::F32, &dev)?.to_vec1()?;
        let mb: Vec<f32> = b.mask(&[1000], 0.1, DType::F32, &dev)?.to_vec1()?;
        assert_eq!(ma, mb);
        let zeros = ma.iter().filter(|&&v| v == 0.0).count();
        assert!(
            (50..150).contains(&zeros),
            "{zeros} of 1000 dropped at p=0.1"
        );
        assert!(ma.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let next: Vec<f32> = a.mask(&[1000], 0.1, DType::F32, &dev)?.to_vec1()?;
        assert_ne!(ma, next, "successive calls draw fresh masks");
        Ok(())
    }

    #[test]
    fn cross_entropy_matches_hand_value() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2f32, 0.], [0., 1.]], &dev)?;
        let labels = Tensor::new(&[0u32, 0], &dev)?;
        let l = cross_entropy(&logits, &labels)?.to_scalar::<f32>()?;
        let want = ((1. + (-2f32).exp()).ln() + (1. + 1f32.exp()).ln()) / 2.;
        assert!((l - want).abs() < 1e-6);
        Ok(())
    }
}
