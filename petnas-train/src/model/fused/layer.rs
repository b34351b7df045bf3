//! A whole encoder layer as one op (PET training with every base weight frozen).
//!
//! Why: through candle's autograd, every edge of the layer's graph costs a zero-filled gradient
//! buffer and a full-size add in backward (`or_insert` + `add` in candle's backprop), and every
//! intermediate output is a fresh allocation. A BERT layer has about twenty such edges over
//! [tokens, hidden] and [tokens, 4·hidden] tensors; as one op the layer has two inputs (its input
//! and one flat vector of its small trainable tensors) and its backward hands candle two
//! gradients. Inside, the layer runs exactly the per-op kernels of [`super::linear`],
//! [`super::attention`], [`super::layernorm`] and [`super::dropout`], in the same order, and sums
//! gradients where two paths meet in the order candle's backprop does, so results are bit for bit
//! those of the per-op path (`the_fused_layer_op_matches_the_per_op_path_bit_for_bit` in tests/model.rs).
//!
//! Scope: CPU, f32 activations (either precision of the frozen matmuls), erf GELU, no trained base
//! weight (full fine-tuning keeps the per-op path, which computes weight gradients).

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, Layout, Result, Shape, Tensor};

use super::attention::Attention;
use super::dropout::dropout_slice;
use super::layernorm::{ln_backward, ln_forward};
use super::linear::{DxThen, PetLinearOp};
use super::*;

/// One PET linear of the layer: the frozen weight, its effective bias `b + m⊙Δb` and effective
/// LoRA factors (masks applied), as [`super::pet_linear`] takes them.
pub struct LinearParts {
    /// Frozen [out, in].
    pub weight: Tensor,
    /// Effective bias [out] (may carry gradients).
    pub bias: Tensor,
    /// Effective (U [in, r], V [out, r]) (may carry gradients).
    pub lora: Option<(Tensor, Tensor)>,
    /// Frozen (U₀, V₀) subtracted by the zero-offset init.
    pub offset: Option<(Tensor, Tensor)>,
    /// bf16 matmuls, as for [`super::pet_linear`].
    pub bf16: Option<Option<Arc<PackedWeight>>>,
}

/// One LayerNorm of the layer: frozen γ, effective β (may carry gradients).
pub struct NormParts {
    /// Frozen [hidden].
    pub gamma: Tensor,
    /// Effective [hidden].
    pub beta: Tensor,
    /// ε.
    pub eps: f64,
}

/// The modules of one encoder layer, in forward order.
pub struct LayerParts {
    /// Q, K, V, attention output.
    pub query: LinearParts,
    /// Key.
    pub key: LinearParts,
    /// Value.
    pub value: LinearParts,
    /// Attention output dense.
    pub attn_out: LinearParts,
    /// LayerNorm after attention.
    pub attn_ln: NormParts,
    /// FFN first dense (followed by the erf GELU).
    pub inter: LinearParts,
    /// FFN second dense.
    pub out: LinearParts,
    /// LayerNorm after the FFN.
    pub out_ln: NormParts,
}

/// The layer's dropout draws: (seed, base counter, p) each, reserved from the run's
/// [`super::super::ops::DropoutRng`] in the per-op path's order (attention probabilities, then
/// after the attention output, then after the FFN).
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerDropout {
    /// On the attention probabilities.
    pub attn: Option<(u64, u64, f32)>,
    /// After the attention output dense.
    pub hidden1: Option<(u64, u64, f32)>,
    /// After the FFN second dense.
    pub hidden2: Option<(u64, u64, f32)>,
}

/// Where one linear's tensors sit in the flat parameter vector.
#[derive(Debug, Clone, Copy)]
struct Section {
    bias: usize,
    out: usize,
    uv: usize,
    uv_len: usize,
}

/// Activations kept for backward.
struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    s1: Vec<f32>,
    a: Vec<f32>,
    i: Vec<f32>,
    s2: Vec<f32>,
}

struct LayerOp {
    /// q, k, v, attention output, intermediate (with GELU), output.
    lin: [PetLinearOp; 6],
    sections: [Section; 6],
    attn: Attention,
    gamma: [Vec<f32>; 2],
    beta_at: [usize; 2],
    eps: [f32; 2],
    /// (mixed seed, base, p) of the two hidden dropouts.
    drop: [Option<(u64, u64, f32)>; 2],
    params_len: usize,
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

fn lock_err() -> candle_core::Error {
    candle_core::Error::Msg("fused layer: poisoned lock".into())
}

impl LayerOp {
    /// Dropout `which` applied to a copy of `x`, in one pass (the bits of dropout in place on
    /// `x.to_vec()`).
    fn dropout_copy(&self, which: usize, x: &[f32]) -> Vec<f32> {
        match self.drop[which] {
            Some((sm, base, p)) => dropout_slice(x, sm, base, p),
            None => x.to_vec(),
        }
    }

    /// Linear `j` on `x`; with `residual = Some((which, r))`, `drop_which(lin_j(x)) + r`.
    fn lin_forward(
        &self,
        j: usize,
        x: &[f32],
        n: usize,
        params: &[f32],
        residual: Option<(usize, &[f32])>,
    ) -> Result<Vec<f32>> {
        let s = self.sections[j];
        let k = x.len() / n.max(1);
        self.lin[j].forward_then(
            x,
            n,
            k,
            &params[s.bias..s.bias + s.out],
            &params[s.uv..s.uv + s.uv_len],
            residual.map(|(which, r)| (self.drop[which], r)),
        )
    }

    /// Backward of linear `j`: writes its bias and LoRA gradients into `dp`, returns dx.
    fn lin_backward(
        &self,
        j: usize,
        x: &[f32],
        n: usize,
        params: &[f32],
        grad: &[f32],
        want_x: bool,
        dp: &mut [f32],
    ) -> Result<Option<Vec<f32>>> {
        self.lin_backward_fused(j, x, n, params, grad, want_x, dp, false, DxThen::Nothing)
    }

    /// [`LayerOp::lin_backward`] with [`PetLinearOp::backward_fused`]'s GELU fusions.
    #[allow(clippy::too_many_arguments)]
    fn lin_backward_fused(
        &self,
        j: usize,
        x: &[f32],
        n: usize,
        params: &[f32],
        grad: &[f32],
        want_x: bool,
        dp: &mut [f32],
        grad_through_gelu: bool,
        dx_then: DxThen<'_>,
    ) -> Result<Option<Vec<f32>>> {
        let s = self.sections[j];
        let k = x.len() / n.max(1);
        let (dx, db, duv) = self.lin[j].backward_fused(
            x,
            n,
            k,
            &params[s.uv..s.uv + s.uv_len],
            grad,
            want_x,
            grad_through_gelu,
            dx_then,
        )?;
        dp[s.bias..s.bias + s.out].copy_from_slice(&db);
        if s.uv_len > 0 {
            dp[s.uv..s.uv + s.uv_len].copy_from_slice(&duv);
        }
        Ok(dx)
    }

    fn forward(&self, x: &[f32], b: usize, l: usize, h: usize, p: &[f32]) -> Result<Vec<f32>> {
        let n = b * l;
        let q = self.lin_forward(0, x, n, p, None)?;
        let k = self.lin_forward(1, x, n, p, None)?;
        let v = self.lin_forward(2, x, n, p, None)?;
        let ctx = self.attn.forward_slices(&q, &k, &v, b, l, h)?;
        // s1 = drop(ao) + x, summed into ao's buffer (the same additions; on AMX tiles in the
        // GEMM's store).
        let s1 = self.lin_forward(3, &ctx, n, p, Some((0, x)))?;
        let (b1, b2) = (self.beta_at[0], self.beta_at[1]);
        let a = ln_forward(&s1, &self.gamma[0], &p[b1..b1 + h], h, self.eps[0]);
        let i = self.lin_forward(4, &a, n, p, None)?;
        let s2 = self.lin_forward(5, &i, n, p, Some((1, &a)))?;
        let y = ln_forward(&s2, &self.gamma[1], &p[b2..b2 + h], h, self.eps[1]);
        if self.keep {
            *self.saved.lock().map_err(|_| lock_err())? = Some(Saved {
                q,
                k,
                v,
                ctx,
                s1,
                a,
                i,
                s2,
            });
        }
        Ok(y)
    }

    /// (dx if `want_x`, d params).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        x: &[f32],
        p: &[f32],
        g: &[f32],
        b: usize,
        l: usize,
        h: usize,
        want_x: bool,
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let n = b * l;
        let guard = self.saved.lock().map_err(|_| lock_err())?;
        let Some(sv) = guard.as_ref() else {
            bail!("fused layer: backward without the saved activations")
        };
        let mut dp = vec![0f32; self.params_len];
        let (b1, b2) = (self.beta_at[0], self.beta_at[1]);
        // y = LN2(s2), s2 = drop2(out(i)) + a
        let (ds2, _, dbeta2) = ln_backward(&sv.s2, g, &self.gamma[1], h, self.eps[1]);
        dp[b2..b2 + h].copy_from_slice(&dbeta2);
        let d_o = self.dropout_copy(1, &ds2);
        // On AMX tiles the FFN's GELU backward runs in the store of the output dense's dx
        // GEMM (the same elementwise arithmetic, so the same bits as a separate pass).
        let fuse_gelu = self.lin[5].bf16_tiles();
        let di = {
            let z = self.lin[4].saved_pre_activation()?;
            let z = if fuse_gelu {
                let Some(z) = z.as_ref() else {
                    bail!("fused layer: backward without the FFN's saved pre-activation")
                };
                DxThen::Gelu(z.as_slice())
            } else {
                DxThen::Nothing
            };
            self.lin_backward_fused(5, &sv.i, n, p, &d_o, true, &mut dp, false, z)?
                .expect("dx requested")
        };
        drop(d_o);
        // a feeds the residual (its gradient arrives first in candle's order) and the FFN:
        // da = ds2 + (the FFN's dx), added in the dx GEMM's store on packed bf16 weights.
        let da = self
            .lin_backward_fused(
                4,
                &sv.a,
                n,
                p,
                &di,
                true,
                &mut dp,
                fuse_gelu,
                DxThen::Add(&ds2),
            )?
            .expect("dx requested");
        drop(di);
        drop(ds2);
        // a = LN1(s1), s1 = drop1(attn_out(ctx)) + x
        let (ds1, _, dbeta1) = ln_backward(&sv.s1, &da, &self.gamma[0], h, self.eps[0]);
        dp[b1..b1 + h].copy_from_slice(&dbeta1);
        drop(da);
        let d_ao = self.dropout_copy(0, &ds1);
        let dctx = self
            .lin_backward(3, &sv.ctx, n, p, &d_ao, true, &mut dp)?
            .expect("dx requested");
        drop(d_ao);
        let (dq, dk, dv) = self
            .attn
            .backward_slices(&sv.q, &sv.k, &sv.v, &dctx, b, l, h)?;
        drop(dctx);
        // x feeds the residual, then V, K and Q, summed in that order (candle's): each dx GEMM
        // adds the sum so far (in its store on packed bf16 weights).
        let mut dx = want_x.then_some(ds1);
        for (j, dj) in [(2, &dv), (1, &dk), (0, &dq)] {
            let then = dx.as_deref().map_or(DxThen::Nothing, DxThen::Add);
            let sum = self.lin_backward_fused(j, x, n, p, dj, want_x, &mut dp, false, then)?;
            if want_x {
                dx = sum;
            }
        }
        Ok((dx, dp))
    }
}

impl candle_core::CustomOp2 for LayerOp {
    fn name(&self) -> &'static str {
        "petnas-encoder-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, l, h, _) = self.attn.dims(l1)?;
        let x = cpu_slice(s1, l1, "layer")?;
        let p = cpu_slice(s2, l2, "layer")?;
        if p.len() != self.params_len {
            bail!(
                "fused layer: {} parameters, expected {}",
                p.len(),
                self.params_len
            );
        }
        let y = self.forward(x, b, l, h, p)?;
        Ok((CpuStorage::F32(y), Shape::from((b, l, h))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (b, l, h) = x.dims3()?;
        let (dx, dp) = with_slice(x, "layer", |xs| {
            with_slice(params, "layer", |ps| {
                with_slice(&grad, "layer", |gs| {
                    self.backward(xs, ps, gs, b, l, h, x.track_op())
                })
            })
        })?;
        let dx = match dx {
            Some(d) => Some(Tensor::from_vec(d, (b, l, h), x.device())?),
            None => None,
        };
        let dp = if params.track_op() {
            Some(Tensor::from_vec(dp, self.params_len, params.device())?)
        } else {
            None
        };
        Ok((dx, dp))
    }
}

/// One encoder layer (BERT/RoBERTa post-LN) as a single op: `x` [batch, seq, hidden] →
/// `LN2(drop(out(gelu(inter(a)))) + a)` with `a = LN1(drop(attn_out(attention(x))) + x)`.
/// `attention_mask` [batch, seq]: 1.0 tokens, 0.0 padding. Gradients reach `x` and every
/// effective bias and LoRA factor of `parts` exactly as through the per-op path.
pub fn encoder_layer(
    x: &Tensor,
    attention_mask: &Tensor,
    heads: usize,
    scale: f64,
    parts: &LayerParts,
    drop: LayerDropout,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (_, _, h) = x.dims3()?;
    let lins = [
        &parts.query,
        &parts.key,
        &parts.value,
        &parts.attn_out,
        &parts.inter,
        &parts.out,
    ];
    // The flat parameter vector: per linear [b, U, V], then β₁, β₂.
    let mut pieces: Vec<Tensor> = Vec::new();
    let mut sections = [Section {
        bias: 0,
        out: 0,
        uv: 0,
        uv_len: 0,
    }; 6];
    let mut at = 0;
    for (s, lp) in sections.iter_mut().zip(lins.iter()) {
        if lp.weight.track_op() {
            bail!("fused layer: a trained base weight needs the per-op path");
        }
        let out = lp.weight.dim(0)?;
        s.bias = at;
        s.out = out;
        pieces.push(lp.bias.flatten_all()?);
        at += out;
        s.uv = at;
        if let Some((u, v)) = &lp.lora {
            pieces.push(u.flatten_all()?);
            pieces.push(v.flatten_all()?);
            s.uv_len = u.elem_count() + v.elem_count();
            at += s.uv_len;
        }
    }
    let mut beta_at = [0; 2];
    for (j, nm) in [&parts.attn_ln, &parts.out_ln].iter().enumerate() {
        if nm.gamma.track_op() {
            bail!("fused layer: a trained LayerNorm weight needs the per-op path");
        }
        beta_at[j] = at;
        pieces.push(nm.beta.flatten_all()?);
        at += h;
    }
    let refs: Vec<&Tensor> = pieces.iter().collect();
    let params = Tensor::cat(&refs, 0)?.contiguous()?;
    let keep = x.track_op() || params.track_op();
    let mk = |lp: &LinearParts, gelu: bool| -> Result<PetLinearOp> {
        let rank = match &lp.lora {
            Some((u, _)) => u.dim(1)?,
            None => 0,
        };
        let offset = lp.offset.as_ref().map(|(a, b)| (a, b));
        PetLinearOp::new(&lp.weight, rank, offset, gelu, lp.bf16.clone(), keep)
    };
    let lin = [
        mk(&parts.query, false)?,
        mk(&parts.key, false)?,
        mk(&parts.value, false)?,
        mk(&parts.attn_out, false)?,
        mk(&parts.inter, true)?,
        mk(&parts.out, false)?,
    ];
    let gamma = |nm: &NormParts| -> Result<Vec<f32>> {
        with_slice(&nm.gamma.contiguous()?, "layer", |g| Ok(g.to_vec()))
    };
    let mixed =
        |d: Option<(u64, u64, f32)>| d.filter(|d| d.2 > 0.0).map(|(s, b, p)| (mix_seed(s), b, p));
    let op = LayerOp {
        lin,
        sections,
        attn: Attention::new(attention_mask, heads, scale, drop.attn, keep)?,
        gamma: [gamma(&parts.attn_ln)?, gamma(&parts.out_ln)?],
        beta_at,
        eps: [parts.attn_ln.eps as f32, parts.out_ln.eps as f32],
        drop: [mixed(drop.hidden1), mixed(drop.hidden2)],
        params_len: at,
        keep,
        saved: Mutex::new(None),
    };
    x.apply_op2(&params, op)
}
