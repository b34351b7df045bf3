//! Fused GELU (erf form).

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// GELU (erf form).

struct Gelu;

multiversion! {
    pub(super) fn gelu_fwd_chunk(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erf_f32(v * SQRT_HALF));
        }
    }
}

multiversion! {
    /// grad · gelu'(x), gelu'(x) = Φ(x) + x·φ(x).
    pub(super) fn gelu_bwd_chunk(x: &[f32], g: &[f32], o: &mut [f32]) {
        for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
            let (erf, gauss) = erf_and_gauss(v * SQRT_HALF);
            let cdf = 0.5 * (1.0 + erf);
            let pdf = INV_SQRT_2PI * gauss;
            *o = gv * (cdf + v * pdf);
        }
    }
}

impl candle_core::CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "petnas-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "gelu")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK))
            .for_each(|(yc, xc)| gelu_fwd_chunk(xc, yc));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let out = with_slice(x, "gelu", |xs| {
            with_slice(&grad, "gelu", |g| {
                let mut o = vec![0f32; xs.len()];
                o.par_chunks_mut(ELEMS_PER_TASK)
                    .zip(
                        xs.par_chunks(ELEMS_PER_TASK)
                            .zip(g.par_chunks(ELEMS_PER_TASK)),
                    )
                    .for_each(|(oc, (xc, gc))| gelu_bwd_chunk(xc, gc, oc));
                Ok(o)
            })
        })?;
        Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
    }
}

/// GELU, erf form (fused; candle's `gelu_erf` is scalar libm and its backward 8 temporaries).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}
