//! Fused LayerNorm.

use candle_core::{bail, CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// LayerNorm.

/// LayerNorm over the last dimension with affine `gamma`, `beta`; mean and 1/σ are recomputed in
/// backward (cheaper than keeping them).
struct LayerNorm {
    eps: f32,
}

multiversion! {
    fn ln_rows(x: &[f32], g: &[f32], b: &[f32], y: &mut [f32], h: usize, eps: f32) {
        for (xr, yr) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
            let mean = sum16(xr) / h as f32;
            for (yv, xv) in yr.iter_mut().zip(xr) {
                *yv = xv - mean;
            }
            let var = dot16(yr, yr) / h as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for ((yv, gv), bv) in yr.iter_mut().zip(g).zip(b) {
                *yv = *yv * rstd * gv + bv;
            }
        }
    }
}

multiversion! {
    /// dx for a block of rows; dγ and dβ accumulated into `dg`, `db`. `xh` is scratch of length h.
    fn ln_bwd_rows(x: &[f32], dy: &[f32], g: &[f32], dx: &mut [f32], dg: &mut [f32], db: &mut [f32], xh: &mut [f32], h: usize, eps: f32) {
        for ((xr, dyr), dxr) in x.chunks_exact(h).zip(dy.chunks_exact(h)).zip(dx.chunks_exact_mut(h)) {
            let mean = sum16(xr) / h as f32;
            for (o, xv) in xh.iter_mut().zip(xr) {
                *o = xv - mean;
            }
            let var = dot16(xh, xh) / h as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for o in xh.iter_mut() {
                *o *= rstd;
            }
            // g = dy⊙γ, kept in dx; dx = rstd·(g − mean(g) − x̂·mean(g⊙x̂))
            for ((o, d), gv) in dxr.iter_mut().zip(dyr).zip(g) {
                *o = d * gv;
            }
            let mg = sum16(dxr) / h as f32;
            let mgx = dot16(dxr, xh) / h as f32;
            for (o, xhv) in dxr.iter_mut().zip(xh.iter()) {
                *o = rstd * (*o - mg - xhv * mgx);
            }
            for (((dgv, dbv), d), xhv) in dg.iter_mut().zip(db.iter_mut()).zip(dyr).zip(xh.iter()) {
                *dgv += d * xhv;
                *dbv += d;
            }
        }
    }
}

/// LayerNorm forward over rows of width `h` (parallel over fixed row blocks).
pub(super) fn ln_forward(x: &[f32], g: &[f32], b: &[f32], h: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(ROWS_PER_TASK * h)
        .zip(x.par_chunks(ROWS_PER_TASK * h))
        .for_each(|(yc, xc)| ln_rows(xc, g, b, yc, h, eps));
    y
}

/// LayerNorm backward: (dx, dγ, dβ); the per-block partial sums of dγ and dβ are added in block
/// order (deterministic).
pub(super) fn ln_backward(
    xs: &[f32],
    dy: &[f32],
    g: &[f32],
    h: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; xs.len()];
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(ROWS_PER_TASK * h)
        .zip(
            xs.par_chunks(ROWS_PER_TASK * h)
                .zip(dy.par_chunks(ROWS_PER_TASK * h)),
        )
        .map(|(dxc, (xc, dyc))| {
            let (mut dg, mut db, mut xh) = (vec![0f32; h], vec![0f32; h], vec![0f32; h]);
            ln_bwd_rows(xc, dyc, g, dxc, &mut dg, &mut db, &mut xh, h, eps);
            (dg, db)
        })
        .collect();
    let (mut dg, mut db) = (vec![0f32; h], vec![0f32; h]);
    for (pg, pb) in &partial {
        add_into(&mut dg, pg);
        add_into(&mut db, pb);
    }
    (dx, dg, db)
}

impl candle_core::CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "petnas-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "layer norm")?;
        let g = cpu_slice(s2, l2, "layer norm")?;
        let b = cpu_slice(s3, l3, "layer norm")?;
        let h = l1.shape().dims().last().copied().unwrap_or(1);
        if g.len() != h || b.len() != h {
            bail!(
                "fused layer norm: hidden {h}, gamma {}, beta {}",
                g.len(),
                b.len()
            );
        }
        let y = ln_forward(x, g, b, h, self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let h = x.dims().last().copied().unwrap_or(1);
        let eps = self.eps;
        let (dx, dg, db) = with_slice(x, "layer norm", |xs| {
            with_slice(&grad, "layer norm", |dy| {
                with_slice(gamma, "layer norm", |g| Ok(ln_backward(xs, dy, g, h, eps)))
            })
        })?;
        let dev = x.device();
        let gx = if x.track_op() {
            Some(Tensor::from_vec(dx, x.shape(), dev)?)
        } else {
            None
        };
        let gg = if gamma.track_op() {
            Some(Tensor::from_vec(dg, h, dev)?)
        } else {
            None
        };
        let gb = if beta.track_op() {
            Some(Tensor::from_vec(db, h, dev)?)
        } else {
            None
        };
        Ok((gx, gg, gb))
    }
}

/// LayerNorm over the last dimension (fused; see [`super::ops::layer_norm_composite`] for the composite).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}
