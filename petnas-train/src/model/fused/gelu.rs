//! Fused GELU (erf form).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// GELU (erf form).

struct Gelu;

multiversion! {
    /// Writes every element of `y` (so `y` may start uninitialised).
    pub(super) fn gelu_fwd_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (o, &v) in y.iter_mut().zip(x) {
            o.write(0.5 * v * (1.0 + erf_f32(v * SQRT_HALF)));
        }
    }
}

multiversion! {
    /// grad · gelu'(x), gelu'(x) = Φ(x) + x·φ(x), into every element of `o`.
    pub(super) fn gelu_bwd_chunk(x: &[f32], g: &[f32], o: &mut [MaybeUninit<f32>]) {
        for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
            let (erf, gauss) = erf_and_gauss(v * SQRT_HALF);
            let cdf = 0.5 * (1.0 + erf);
            let pdf = INV_SQRT_2PI * gauss;
            o.write(gv * (cdf + v * pdf));
        }
    }
}

/// GELU of `x` into a new vector (written once: no zero-fill).
pub(super) fn gelu_forward(x: &[f32]) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK))
        .for_each(|(yc, xc)| gelu_fwd_chunk(xc, yc));
    // SAFETY: gelu_fwd_chunk wrote every element.
    unsafe { y.set_len(x.len()) };
    y
}

/// `g ⊙ gelu'(x)` into a new vector (written once: no zero-fill).
pub(super) fn gelu_backward(x: &[f32], g: &[f32]) -> Vec<f32> {
    assert_eq!(
        x.len(),
        g.len(),
        "gelu backward: input and gradient lengths"
    );
    let mut o = Vec::with_capacity(x.len());
    o.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(
            x.par_chunks(ELEMS_PER_TASK)
                .zip(g.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|(oc, (xc, gc))| gelu_bwd_chunk(xc, gc, oc));
    // SAFETY: gelu_bwd_chunk wrote every element.
    unsafe { o.set_len(x.len()) };
    o
}

impl candle_core::CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "petnas-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "gelu")?;
        let y = gelu_forward(x);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let out = with_slice(x, "gelu", |xs| {
            with_slice(&grad, "gelu", |g| Ok(gelu_backward(xs, g)))
        })?;
        Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
    }
}

/// GELU, erf form (fused; candle's `gelu_erf` is scalar libm and its backward 8 temporaries).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}
