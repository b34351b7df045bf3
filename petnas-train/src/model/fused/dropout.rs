//! Fused dropout.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Dropout.

/// Dropout whose mask is a pure function of (seed, counter range): the backward pass applies the
/// same op to the gradient instead of keeping a mask tensor alive.
#[derive(Clone)]
struct Dropout {
    seed_mixed: u64,
    base: u64,
    p: f32,
}

multiversion! {
    pub(super) fn dropout_chunk_in_place(x: &mut [f32], seed_mixed: u64, base: u64, p: f32, scale: f32) {
        for (i, v) in x.iter_mut().enumerate() {
            *v *= keep_scale(seed_mixed, base + i as u64, p, scale);
        }
    }
}

/// `x ← x ⊙ keep-scale` with the mask at counters `base..base + x.len()` (seed already mixed).
pub(super) fn dropout_in_place(x: &mut [f32], seed_mixed: u64, base: u64, p: f32) {
    let scale = 1.0 / (1.0 - p);
    x.par_chunks_mut(ELEMS_PER_TASK)
        .enumerate()
        .for_each(|(c, xc)| {
            dropout_chunk_in_place(xc, seed_mixed, base + (c * ELEMS_PER_TASK) as u64, p, scale)
        });
}

multiversion! {
    /// [`dropout_chunk_in_place`] from `x` into every element of `y` (the same product per
    /// element, so the same bits), so that `y` may start uninitialised.
    fn dropout_chunk_into(x: &[f32], y: &mut [std::mem::MaybeUninit<f32>], seed_mixed: u64, base: u64, p: f32, scale: f32) {
        for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
            o.write(v * keep_scale(seed_mixed, base + i as u64, p, scale));
        }
    }
}

/// `x ⊙ keep-scale` with the mask at counters `base..base + x.len()` (seed already mixed), into
/// a new vector: the bits of [`dropout_in_place`] on a copy, in one pass (no copy first).
pub(super) fn dropout_slice(x: &[f32], seed_mixed: u64, base: u64, p: f32) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK))
        .enumerate()
        .for_each(|(c, (yc, xc))| {
            dropout_chunk_into(
                xc,
                yc,
                seed_mixed,
                base + (c * ELEMS_PER_TASK) as u64,
                p,
                scale,
            )
        });
    // SAFETY: dropout_chunk_into wrote every element.
    unsafe { y.set_len(x.len()) };
    y
}

impl candle_core::CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "petnas-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "dropout")?;
        let y = dropout_slice(x, self.seed_mixed, self.base, self.p);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Dropout with keep-scale `1/(1-p)`, mask drawn at counters `base..base + x.elem_count()` of `seed`.
pub fn dropout(x: &Tensor, p: f32, seed: u64, base: u64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Dropout {
        seed_mixed: mix_seed(seed),
        base,
        p,
    })
}
