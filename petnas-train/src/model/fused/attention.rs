//! The fused attention core.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Attention.

/// Multi-head self-attention core: `ctx = dropout(softmax(scale·Q·Kᵀ + mask))·V`, per batch item
/// and head in parallel. Q, K, V and ctx stay in the [batch, seq, hidden] layout of the linear
/// layers (heads are column blocks read with strides), so no transposes are copied; each (item,
/// head) runs its three small products single-threaded, which keeps both cores busy where candle
/// would run 192 tiny GEMMs one after another. The softmax probabilities are kept for backward
/// (one [batch, heads, seq, seq] buffer, as PyTorch keeps them); the dropout mask is redrawn.
pub(super) struct Attention {
    heads: usize,
    scale: f32,
    /// Additive mask per key position: 0 for tokens, −1e9 for padding. [batch·seq]
    mask_bias: Vec<f32>,
    /// (mixed seed, base counter, p) when dropout is on; counters follow [batch, heads, seq, seq].
    drop: Option<(u64, u64, f32)>,
    /// Probabilities from the forward pass, for backward.
    probs: Mutex<Option<Vec<f32>>>,
    /// With dropout: the forward pass's keep flags (1 kept, 0 dropped), [batch, heads, seq, seq],
    /// so that backward reads the mask instead of drawing it twice more (a hash per element).
    kept: Mutex<Option<Vec<u8>>>,
    /// Whether anything upstream needs gradients (else the probabilities are not kept).
    keep: bool,
}

multiversion! {
    /// Row-wise: add the key mask, softmax in place.
    pub(super) fn softmax_rows(s: &mut [f32], mask: &[f32], l: usize) {
        let masked = mask.iter().any(|&m| m != 0.0);
        for row in s.chunks_exact_mut(l) {
            if masked {
                for (v, m) in row.iter_mut().zip(mask) {
                    *v += m;
                }
            }
            let mx = max16(row);
            for v in row.iter_mut() {
                *v = exp_f32(*v - mx);
            }
            let inv = 1.0 / sum16(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

multiversion! {
    /// `out = p ⊙ keep-scale` for one (item, head) block starting at counter `base`.
    fn apply_drop(p: &[f32], out: &mut [f32], seed_mixed: u64, base: u64, pd: f32, scale: f32) {
        for (i, (o, &v)) in out.iter_mut().zip(p).enumerate() {
            *o = v * keep_scale(seed_mixed, base + i as u64, pd, scale);
        }
    }
}

multiversion! {
    /// [`apply_drop`] that also writes the keep flags (1 kept, 0 dropped) into `kept`.
    fn apply_drop_keep(p: &[f32], out: &mut [std::mem::MaybeUninit<f32>], kept: &mut [std::mem::MaybeUninit<u8>], seed_mixed: u64, base: u64, pd: f32, scale: f32) {
        for (i, ((o, k), &v)) in out.iter_mut().zip(kept.iter_mut()).zip(p).enumerate() {
            let s = keep_scale(seed_mixed, base + i as u64, pd, scale);
            o.write(v * s);
            k.write((s != 0.0) as u8);
        }
    }
}

/// The keep-scale of a kept flag: the value [`keep_scale`] returned when the flag was written.
#[inline(always)]
fn flag_scale(k: u8, scale: f32) -> f32 {
    if k != 0 {
        scale
    } else {
        0.0
    }
}

multiversion! {
    /// `out = p ⊙ keep-scale` from the kept flags: the bits [`apply_drop`] wrote in forward.
    fn apply_kept(p: &[f32], out: &mut [f32], kept: &[u8], scale: f32) {
        for ((o, &v), &k) in out.iter_mut().zip(p).zip(kept) {
            *o = v * flag_scale(k, scale);
        }
    }
}

multiversion! {
    /// Softmax backward in place: `d ← P ⊙ (d⊙m − rowsum(d⊙m⊙P))`, with `m` the dropout
    /// keep-scale from the kept flags, if any (so `d` enters as the gradient of the dropped
    /// probabilities).
    fn softmax_bwd_rows(d: &mut [f32], p: &[f32], l: usize, kept: Option<&[u8]>, scale: f32) {
        for (r, (dr, pr)) in d.chunks_exact_mut(l).zip(p.chunks_exact(l)).enumerate() {
            if let Some(kept) = kept {
                for (v, &k) in dr.iter_mut().zip(&kept[r * l..(r + 1) * l]) {
                    *v *= flag_scale(k, scale);
                }
            }
            let dot = dot16(dr, pr);
            for (v, &pv) in dr.iter_mut().zip(pr) {
                *v = pv * (*v - dot);
            }
        }
    }
}

impl Attention {
    /// The op for `attention_mask` [batch, seq] (1.0 tokens, 0.0 padding); `keep`: keep the
    /// probabilities for a backward pass.
    pub(super) fn new(
        attention_mask: &Tensor,
        heads: usize,
        scale: f64,
        drop: Option<(u64, u64, f32)>,
        keep: bool,
    ) -> Result<Self> {
        // Same additive bias as the composite path: (m − 1)·1e9.
        let mask_bias: Vec<f32> = attention_mask
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|m| (m - 1.0) * 1e9)
            .collect();
        Ok(Self {
            heads,
            scale: scale as f32,
            mask_bias,
            drop: drop
                .filter(|d| d.2 > 0.0)
                .map(|(s, b, p)| (mix_seed(s), b, p)),
            probs: Mutex::new(None),
            kept: Mutex::new(None),
            keep,
        })
    }

    /// The forward pass on slices: `q`, `k`, `v` [b, l, h] → ctx [b, l, h]; keeps the
    /// probabilities for backward when `keep`.
    pub(super) fn forward_slices(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        b: usize,
        l: usize,
        h: usize,
    ) -> Result<Vec<f32>> {
        let dh = h / self.heads;
        let nh = self.heads;
        // Both outputs are written in full by non-accumulating GEMMs (which never read their
        // destination: no zero-fill first): the scores of block t fill probs' t-th [l, l] block,
        // and block (bi, hi)'s context fills ctx's [l, dh] columns of that head.
        let mut probs: Vec<f32> = Vec::with_capacity(b * nh * l * l); // [batch, heads, seq, seq]
        let mut ctx: Vec<f32> = Vec::with_capacity(b * l * h); // [batch, seq, hidden]
        // Keep flags for backward, written in full by `apply_drop_keep` (dropout on and kept).
        let flags = self.keep && self.drop.is_some();
        let mut kept: Vec<u8> = Vec::with_capacity(if flags { b * nh * l * l } else { 0 });
        let kp = SendPtr(kept.as_mut_ptr() as *mut f32);
        let cp = SendPtr(ctx.as_mut_ptr());
        let hs = h as isize;
        probs.spare_capacity_mut()[..b * nh * l * l]
            .par_chunks_mut(l * l)
            .enumerate()
            .for_each(|(t, p)| {
                #[allow(clippy::redundant_locals)]
                let kp = kp;
                // Rebinding makes the closure capture the whole `SendPtr` (Send + Sync), not its raw
                // pointer field (edition-2021 disjoint capture), which is neither.
                #[allow(clippy::redundant_locals)]
                let cp = cp;
                let (bi, hi) = (t / nh, t % nh);
                let off = bi * l * h + hi * dh;
                let p: &mut [f32] = unsafe {
                    // scores = scale · Q_h·K_hᵀ; Kᵀ element (d, j) = k[j, d].
                    gemm_f32(
                        l,
                        l,
                        dh,
                        p.as_mut_ptr() as *mut f32,
                        l as isize,
                        1,
                        false,
                        Mat(q.as_ptr().add(off), hs, 1),
                        Mat(k.as_ptr().add(off), 1, hs),
                        self.scale,
                        Parallelism::None,
                    );
                    // Every element of the block is written now.
                    std::slice::from_raw_parts_mut(p.as_mut_ptr() as *mut f32, p.len())
                };
                softmax_rows(p, &self.mask_bias[bi * l..(bi + 1) * l], l);
                with_scratch(if self.drop.is_some() { l * l } else { 0 }, |dropped, _| {
                    let lhs: &[f32] = match self.drop {
                        Some((sm, base, pd)) if flags => {
                            // Writes every element of `dropped` and of this block's flags.
                            let kb = unsafe {
                                std::slice::from_raw_parts_mut(
                                    (kp.0 as *mut std::mem::MaybeUninit<u8>).add(t * l * l),
                                    l * l,
                                )
                            };
                            let out = unsafe {
                                std::slice::from_raw_parts_mut(
                                    dropped.as_mut_ptr() as *mut std::mem::MaybeUninit<f32>,
                                    dropped.len(),
                                )
                            };
                            apply_drop_keep(
                                p,
                                out,
                                kb,
                                sm,
                                base + (t * l * l) as u64,
                                pd,
                                1.0 / (1.0 - pd),
                            );
                            dropped
                        }
                        Some((sm, base, pd)) => {
                            // Writes every element of `dropped`.
                            apply_drop(
                                p,
                                dropped,
                                sm,
                                base + (t * l * l) as u64,
                                pd,
                                1.0 / (1.0 - pd),
                            );
                            dropped
                        }
                        None => p,
                    };
                    unsafe {
                        gemm_f32(
                            l,
                            dh,
                            l,
                            cp.0.add(off),
                            hs,
                            1,
                            false,
                            Mat(lhs.as_ptr(), l as isize, 1),
                            Mat(v.as_ptr().add(off), hs, 1),
                            1.0,
                            Parallelism::None,
                        );
                    }
                });
            });
        // SAFETY: every element of both was written above.
        unsafe {
            probs.set_len(b * nh * l * l);
            ctx.set_len(b * l * h);
            if flags {
                kept.set_len(b * nh * l * l);
            }
        }
        if flags {
            *self
                .kept
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused attention: poisoned lock".into()))? =
                Some(kept);
        }
        if self.keep {
            *self
                .probs
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused attention: poisoned lock".into()))? =
                Some(probs);
        }
        Ok(ctx)
    }

    /// The backward pass on slices: (dq, dk, dv) from the saved probabilities and `grad` (the
    /// gradient of ctx), all [b, l, h].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_slices(
        &self,
        qs: &[f32],
        ks: &[f32],
        vs: &[f32],
        gs: &[f32],
        b: usize,
        l: usize,
        h: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let nh = self.heads;
        let dh = h / nh;
        let guard = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused attention: poisoned lock".into()))?;
        let Some(probs) = guard.as_ref() else {
            bail!("fused attention: backward without saved probabilities")
        };
        let kept_guard = self
            .kept
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused attention: poisoned lock".into()))?;
        let kept: Option<&[u8]> = match (self.drop, kept_guard.as_ref()) {
            (None, _) => None,
            (Some(_), Some(k)) if k.len() == probs.len() => Some(k),
            (Some(_), _) => bail!("fused attention: backward without the saved dropout flags"),
        };
        // Each is written in full by non-accumulating GEMMs, block (bi, hi) filling its head's
        // [l, dh] columns: no zero-fill first.
        let (mut dq, mut dk, mut dv): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            Vec::with_capacity(b * l * h),
            Vec::with_capacity(b * l * h),
            Vec::with_capacity(b * l * h),
        );
        let (dqp, dkp, dvp) = (
            SendPtr(dq.as_mut_ptr()),
            SendPtr(dk.as_mut_ptr()),
            SendPtr(dv.as_mut_ptr()),
        );
        let hs = h as isize;
        let ls = l as isize;
        probs.par_chunks(l * l).enumerate().for_each(|(t, p)| {
            let (dqp, dkp, dvp) = (dqp, dkp, dvp);
            let (bi, hi) = (t / nh, t % nh);
            let off = bi * l * h + hi * dh;
            let dscale = match self.drop {
                Some((_, _, pd)) => 1.0 / (1.0 - pd),
                None => 1.0,
            };
            let kb = kept.map(|k| &k[t * l * l..(t + 1) * l * l]);
            // `dropped` and `d` are per-thread scratch: apply_kept writes all of `dropped`, and
            // the GEMM into `d` does not accumulate (it never reads its destination).
            with_scratch(l * l, |dropped, d| {
                let pdrop: &[f32] = match kb {
                    Some(kb) => {
                        apply_kept(p, dropped, kb, dscale);
                        dropped
                    }
                    None => p,
                };
                unsafe {
                    // dV_h = P_dropᵀ · dctx_h
                    gemm_f32(
                        l,
                        dh,
                        l,
                        dvp.0.add(off),
                        hs,
                        1,
                        false,
                        Mat(pdrop.as_ptr(), 1, ls),
                        Mat(gs.as_ptr().add(off), hs, 1),
                        1.0,
                        Parallelism::None,
                    );
                    // d(P_drop) = dctx_h · V_hᵀ
                    gemm_f32(
                        l,
                        l,
                        dh,
                        d.as_mut_ptr(),
                        ls,
                        1,
                        false,
                        Mat(gs.as_ptr().add(off), hs, 1),
                        Mat(vs.as_ptr().add(off), 1, hs),
                        1.0,
                        Parallelism::None,
                    );
                }
                softmax_bwd_rows(d, p, l, kb, dscale);
                unsafe {
                    // dQ_h = scale · dS · K_h ; dK_h = scale · dSᵀ · Q_h
                    gemm_f32(
                        l,
                        dh,
                        l,
                        dqp.0.add(off),
                        hs,
                        1,
                        false,
                        Mat(d.as_ptr(), ls, 1),
                        Mat(ks.as_ptr().add(off), hs, 1),
                        self.scale,
                        Parallelism::None,
                    );
                    gemm_f32(
                        l,
                        dh,
                        l,
                        dkp.0.add(off),
                        hs,
                        1,
                        false,
                        Mat(d.as_ptr(), 1, ls),
                        Mat(qs.as_ptr().add(off), hs, 1),
                        self.scale,
                        Parallelism::None,
                    );
                }
            });
        });
        drop(kept_guard);
        drop(guard);
        // SAFETY: every element of the three was written above.
        unsafe {
            dq.set_len(b * l * h);
            dk.set_len(b * l * h);
            dv.set_len(b * l * h);
        }
        Ok((dq, dk, dv))
    }

    pub(super) fn dims(&self, l: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (b, s, h) = l.shape().dims3()?;
        if h % self.heads != 0 || self.mask_bias.len() != b * s {
            bail!(
                "fused attention: shape [{b}, {s}, {h}], {} heads, mask of {}",
                self.heads,
                self.mask_bias.len()
            );
        }
        Ok((b, s, h, h / self.heads))
    }
}

impl candle_core::CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "petnas-attention"
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
        let (b, l, h, _) = self.dims(l1)?;
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            bail!(
                "fused attention: q {:?}, k {:?}, v {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let q = cpu_slice(s1, l1, "attention")?;
        let k = cpu_slice(s2, l2, "attention")?;
        let v = cpu_slice(s3, l3, "attention")?;
        let ctx = self.forward_slices(q, k, v, b, l, h)?;
        Ok((CpuStorage::F32(ctx), Shape::from((b, l, h))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (b, l, h, _) = self.dims(q.layout())?;
        let (dq, dk, dv) = with_slice(q, "attention", |qs| {
            with_slice(k, "attention", |ks| {
                with_slice(v, "attention", |vs| {
                    with_slice(&grad, "attention", |gs| {
                        self.backward_slices(qs, ks, vs, gs, b, l, h)
                    })
                })
            })
        })?;
        let dev = q.device();
        let mk = |x: Vec<f32>, t: &Tensor| -> Result<Option<Tensor>> {
            if t.track_op() {
                Ok(Some(Tensor::from_vec(x, (b, l, h), dev)?))
            } else {
                Ok(None)
            }
        };
        Ok((mk(dq, q)?, mk(dk, k)?, mk(dv, v)?))
    }
}

/// Attention core for `q`, `k`, `v` [batch, seq, hidden] (heads = column blocks of width
/// hidden/heads): returns the context [batch, seq, hidden]. `attention_mask` [batch, seq] is 1.0
/// for tokens and 0.0 for padding; `drop` = (seed, base counter, p) for attention dropout.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attention_mask: &Tensor,
    heads: usize,
    scale: f64,
    drop: Option<(u64, u64, f32)>,
) -> Result<Tensor> {
    let keep = q.track_op() || k.track_op() || v.track_op();
    let op = Attention::new(attention_mask, heads, scale, drop, keep)?;
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}
