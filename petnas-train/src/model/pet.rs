//! PET modules: a frozen base layer plus its bias delta and LoRA factors (paper §3, eq. 1).
//!
//! A PET linear computes `y = x·Wᵀ + (b + m_b⊙Δb) + (x·(m_U⊙U))·(m_V⊙V)ᵀ`. Masks are plain tensors
//! (never `Var`s); a structured architecture is compacted instead (only the kept rank components are
//! allocated), which is exactly equal to masking the others and cheaper.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use petnas_core::arch::{BiasArch, LoraKeep, ModuleArch};
use petnas_core::inventory::{bias_delta_name, lora_u_name, lora_v_name, Activation};
use petnas_core::record::LoraInit;
use petnas_core::rng::Rng;

use super::{fused, ops};

/// What a trainable tensor is, for the optimizer's parameter groups and for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A PET tensor (bias delta, LoRA factor): counted in the PET budget, scored by the criterion.
    Pet,
    /// The classification head: always trained, counted separately.
    Head,
    /// A base weight, trained only under full fine-tuning.
    Base,
}

/// One trainable tensor with its name (HF path + suffix) and optional mask.
#[derive(Debug, Clone)]
pub struct Trainable {
    /// `encoder.layer.3.attention.self.query.lora_u`, `classifier.weight`, ...
    pub name: String,
    /// The variable the optimizer updates.
    pub var: Var,
    /// Kept entries (1.0) for an unstructured architecture.
    pub mask: Option<Tensor>,
    /// What it is.
    pub role: Role,
}

/// A parameter as the forward pass sees it: the variable times its mask.
#[derive(Debug, Clone)]
pub struct Masked {
    value: Tensor,
    mask: Option<Tensor>,
}

impl Masked {
    fn effective(&self) -> Result<Tensor> {
        match &self.mask {
            Some(m) => self.value.mul(m),
            None => Ok(self.value.clone()),
        }
    }
}

/// LoRA factors of one linear module.
#[derive(Debug, Clone)]
pub struct Lora {
    /// [in, r]
    u: Masked,
    /// [out, r]
    v: Masked,
    /// Frozen copies of the initial (masked) factors, subtracted so training starts at the
    /// pre-trained function (`LoraInit::PaperZeroOffset`).
    offset: Option<(Tensor, Tensor)>,
}

/// A linear layer with its PET parameters.
#[derive(Debug, Clone)]
pub struct PetLinear {
    weight: Tensor, // [out, in]
    bias: Tensor,   // [out]
    delta: Option<Masked>,
    lora: Option<Lora>,
    /// bf16 matmuls for the frozen weight (see [`fused::pet_linear`]); `None`: fp32.
    bf16: Option<Option<std::sync::Arc<fused::PackedWeight>>>,
    /// The frozen weight in bf16 for the composite path (CUDA, or the fused op switched off):
    /// x·Wᵀ runs as bf16 × bf16 (and its backward dY·W too), the result back in fp32.
    bf16_weight: Option<Tensor>,
}

/// A LayerNorm with an optional bias delta.
#[derive(Debug, Clone)]
pub struct PetLayerNorm {
    gamma: Tensor,
    beta: Tensor,
    delta: Option<Masked>,
    eps: f64,
}

impl PetLinear {
    /// A plain linear layer (no PET parameters).
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self {
            weight,
            bias,
            delta: None,
            lora: None,
            bf16: None,
            bf16_weight: None,
        }
    }

    /// Runs this layer's frozen matmuls in bf16 (`Precision::Bf16`): the weight is packed once
    /// when no LoRA factor changes it, else on each forward pass. A trained weight (full
    /// fine-tuning, the head) stays fp32. `composite`: the layer runs the composite path (CUDA,
    /// or the fused op switched off), which keeps a bf16 copy of the weight for candle's matmul.
    pub fn use_bf16(&mut self, composite: bool) -> Result<()> {
        if self.weight.track_op() {
            return Ok(());
        }
        if composite {
            self.bf16_weight = Some(self.weight.to_dtype(DType::BF16)?);
            return Ok(());
        }
        let packed = match &self.lora {
            None => Some(std::sync::Arc::new(fused::PackedWeight::from_tensor(
                &self.weight,
            )?)),
            Some(_) => None,
        };
        self.bf16 = Some(packed);
        Ok(())
    }

    /// `x·Wᵀ + (b + m⊙Δb) + (x·(m⊙U))·(m⊙V)ᵀ` for `x` [.., in].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }

    /// `act(forward(x))`; the erf GELU (BERT's and RoBERTa's) is fused into the op on CPU.
    pub fn forward_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match act {
            Activation::GeluErf => self.forward_act(x, true),
            Activation::GeluTanh => self.forward_act(x, false)?.gelu(),
            Activation::Relu => self.forward_act(x, false)?.relu(),
            Activation::Silu => self.forward_act(x, false)?.silu(),
        }
    }

    fn forward_act(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        // A frozen weight (plain tensor) takes the fused op, whose backward skips the weight
        // gradient; a trained one (full fine-tuning, the head) needs candle's matmul backward.
        if !self.weight.track_op() && fused::enabled(fused::Kind::Linear, x) {
            let dims = x.dims().to_vec();
            let in_dim = dims[dims.len() - 1];
            let x2 = x.reshape((x.elem_count() / in_dim, in_dim))?; // [n, in]
            let b = match &self.delta {
                Some(d) => self.bias.add(&d.effective()?)?,
                None => self.bias.clone(),
            };
            let (u, v) = match &self.lora {
                Some(l) => (Some(l.u.effective()?), Some(l.v.effective()?)),
                None => (None, None),
            };
            let lora = match (&self.lora, &u, &v) {
                (Some(l), Some(u), Some(v)) => Some(fused::LoraParts {
                    u,
                    v,
                    offset: l.offset.as_ref().map(|(a, b)| (a, b)),
                }),
                _ => None,
            };
            let y = fused::pet_linear(&x2, &self.weight, &b, lora, gelu, self.bf16.clone())?;
            let mut out = dims;
            let last = out.len() - 1;
            out[last] = self.weight.dim(0)?;
            return y.reshape(out);
        }
        let y = self.forward_composite(x)?;
        match gelu {
            true if fused::enabled(fused::Kind::Gelu, &y) => fused::gelu(&y),
            true => y.gelu_erf(),
            false => Ok(y),
        }
    }

    /// What the fused encoder-layer op takes of this layer: `None` when the weight is trained
    /// (full fine-tuning), which needs the per-op path's weight gradient.
    pub fn fused_parts(&self) -> Result<Option<fused::LinearParts>> {
        if self.weight.track_op() {
            return Ok(None);
        }
        let bias = match &self.delta {
            Some(d) => self.bias.add(&d.effective()?)?,
            None => self.bias.clone(),
        };
        let (lora, offset) = match &self.lora {
            Some(l) => (Some((l.u.effective()?, l.v.effective()?)), l.offset.clone()),
            None => (None, None),
        };
        Ok(Some(fused::LinearParts {
            weight: self.weight.clone(),
            bias,
            lora,
            offset,
            bf16: self.bf16.clone(),
        }))
    }

    /// The composite (unfused) forward, for any device and dtype.
    pub fn forward_composite(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let n = x.elem_count() / in_dim;
        let x2 = x.reshape((n, in_dim))?; // [n, in]
        let b = match &self.delta {
            Some(d) => self.bias.add(&d.effective()?)?,
            None => self.bias.clone(),
        };
        let xw = match &self.bf16_weight {
            Some(wb) => x2
                .to_dtype(DType::BF16)?
                .matmul(&wb.t()?)?
                .to_dtype(x2.dtype())?,
            None => x2.matmul(&self.weight.t()?)?,
        };
        let mut y = xw.broadcast_add(&b)?; // [n, out]
        if let Some(l) = &self.lora {
            let u = l.u.effective()?;
            let v = l.v.effective()?;
            y = (y + x2.matmul(&u)?.matmul(&v.t()?)?)?;
            if let Some((u0, v0)) = &l.offset {
                y = (y - x2.matmul(u0)?.matmul(&v0.t()?)?)?;
            }
        }
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        y.reshape(out)
    }

    /// `(A, B)` with `B·A = ΔW` in PEFT's layout (A = Uᵀ [r, in], B = V [out, r]), masks applied;
    /// a zero-offset init adds its initial factors as extra ranks with B negated.
    pub fn lora_factors(&self) -> Result<Option<(Tensor, Tensor)>> {
        let Some(l) = &self.lora else { return Ok(None) };
        let mut a = l.u.effective()?.t()?.contiguous()?.detach();
        let mut b = l.v.effective()?.detach();
        if let Some((u0, v0)) = &l.offset {
            a = Tensor::cat(&[&a, &u0.t()?.contiguous()?], 0)?;
            b = Tensor::cat(&[&b, &v0.neg()?], 1)?;
        }
        Ok(Some((a, b)))
    }

    /// The merged layer: `W + V·Uᵀ` (minus the offset product) and `b + m⊙Δb`. The same outputs
    /// as [`PetLinear::forward`] with no extra inference cost.
    pub fn merged(&self) -> Result<(Tensor, Tensor)> {
        let mut w = self.weight.detach();
        if let Some(l) = &self.lora {
            let dw = l.v.effective()?.matmul(&l.u.effective()?.t()?)?; // [out, in]
            w = (w + dw)?;
            if let Some((u0, v0)) = &l.offset {
                w = (w - v0.matmul(&u0.t()?)?)?;
            }
        }
        let b = match &self.delta {
            Some(d) => self.bias.add(&d.effective()?)?,
            None => self.bias.clone(),
        };
        Ok((w.detach(), b.detach()))
    }
}

impl PetLayerNorm {
    /// A LayerNorm without PET parameters.
    pub fn new(gamma: Tensor, beta: Tensor, eps: f64) -> Self {
        Self {
            gamma,
            beta,
            delta: None,
            eps,
        }
    }

    /// LayerNorm over the last dimension with bias `beta + m⊙Δb`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let beta = match &self.delta {
            Some(d) => self.beta.add(&d.effective()?)?,
            None => self.beta.clone(),
        };
        if fused::enabled(fused::Kind::LayerNorm, x) {
            fused::layer_norm(x, &self.gamma, &beta, self.eps)
        } else {
            ops::layer_norm_composite(x, &self.gamma, &beta, self.eps)
        }
    }

    /// What the fused encoder-layer op takes of this LayerNorm: `None` when γ is trained.
    pub fn fused_parts(&self) -> Result<Option<fused::NormParts>> {
        if self.gamma.track_op() {
            return Ok(None);
        }
        let beta = match &self.delta {
            Some(d) => self.beta.add(&d.effective()?)?,
            None => self.beta.clone(),
        };
        Ok(Some(fused::NormParts {
            gamma: self.gamma.clone(),
            beta,
            eps: self.eps,
        }))
    }

    /// The merged LayerNorm parameters `(gamma, beta + m⊙Δb)`.
    pub fn merged(&self) -> Result<(Tensor, Tensor)> {
        let beta = match &self.delta {
            Some(d) => self.beta.add(&d.effective()?)?,
            None => self.beta.clone(),
        };
        Ok((self.gamma.detach(), beta.detach()))
    }
}

/// A stable 64-bit hash of a tensor name (FNV-1a), so initial values depend on the name only.
pub fn name_stream(name: &str) -> u64 {
    petnas_core::rng::hash_str(name)
}

/// `n` draws from N(0, std²) in the stream of `(seed, name)`.
pub fn normal_values(seed: u64, name: &str, n: usize, std: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed).fork(name_stream(name));
    (0..n).map(|_| rng.normal_f32() * std).collect()
}

/// The initial LoRA factors at full maximal rank, a pure function of (seed, module path, shape,
/// init), so that re-initialisation after pruning restores them exactly (paper §3.2).
/// Returns (U [in, r] row-major, V [out, r] row-major).
pub fn lora_init_values(
    seed: u64,
    path: &str,
    in_dim: usize,
    out_dim: usize,
    r: usize,
    init: LoraInit,
) -> (Vec<f32>, Vec<f32>) {
    let bound = (in_dim as f32).powf(-0.5);
    let gauss_u = || normal_values(seed, &lora_u_name(path), in_dim * r, bound);
    let gauss_v = || {
        normal_values(
            seed,
            &lora_v_name(path),
            out_dim * r,
            (out_dim as f32).powf(-0.5),
        )
    };
    match init {
        // Eq. 1 of the paper: both factors Gaussian.
        LoraInit::Paper | LoraInit::PaperZeroOffset => (gauss_u(), gauss_v()),
        // Hu et al. / PEFT: lora_B (= V) zero, lora_A (= Uᵀ) kaiming_uniform_(a=√5), whose bound
        // over fan-in `in` is gain·√(3/in) with gain √(2/(1+5)): exactly in^-½.
        LoraInit::Hu => {
            let mut rng = Rng::new(seed).fork(name_stream(&lora_u_name(path)));
            let u = (0..in_dim * r)
                .map(|_| (2.0 * rng.uniform_f32() - 1.0) * bound)
                .collect();
            (u, vec![0.0; out_dim * r])
        }
        // The input-side factor zero instead (the reading of "one factor zero" this project
        // first implemented under the name `lora`).
        LoraInit::UZero => (vec![0.0; in_dim * r], gauss_v()),
    }
}

/// Stream offset for `Reinit::Fresh`: a different draw from the same seed.
pub const FRESH_STREAM: u64 = 0x4652_4553_48; // "FRESH"

/// Initial values of every PET tensor of `arch` at maximal shape: what a run starts from, and
/// what a pruned retraining is re-initialised to (`Reinit::Same`: the same seed; `Fresh`: the
/// seed XOR [`FRESH_STREAM`]).
pub fn init_map(
    arch: &petnas_core::arch::Architecture,
    seed: u64,
    init: LoraInit,
) -> HashMap<String, Vec<f32>> {
    arch.modules
        .iter()
        .flat_map(|m| initial_values(seed, m, init))
        .collect()
}

/// Initial values of every PET tensor of a module at maximal shape: `(name, values)`.
pub fn initial_values(seed: u64, m: &ModuleArch, init: LoraInit) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    if m.bias.is_some() {
        out.push((bias_delta_name(&m.path), vec![0.0; m.out_dim]));
    }
    if let Some(l) = &m.lora {
        let (u, v) = lora_init_values(seed, &m.path, m.in_dim, m.out_dim, l.max_rank, init);
        out.push((lora_u_name(&m.path), u));
        out.push((lora_v_name(&m.path), v));
    }
    out
}

/// Keeps columns `kept` of a row-major [rows, r] matrix.
fn take_columns(values: &[f32], rows: usize, r: usize, kept: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * kept.len());
    for i in 0..rows {
        for &k in kept {
            out.push(values[i * r + k]);
        }
    }
    out
}

/// Builds PET parameters for modules from an architecture, registering each trainable.
pub struct PetFactory<'a> {
    /// Initial values at maximal shape by PET tensor name (from [`initial_values`], or the trained
    /// values of the search run for `Reinit::Keep`).
    pub start: &'a HashMap<String, Vec<f32>>,
    /// LoRA init, for the zero-offset variant.
    pub lora_init: LoraInit,
    /// Where tensors live.
    pub device: &'a Device,
    /// Parameter dtype.
    pub dtype: DType,
}

impl PetFactory<'_> {
    fn start_values(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        match self.start.get(name) {
            Some(v) if v.len() == len => Ok(v.clone()),
            Some(v) => candle_core::bail!(
                "initial values for {name}: {} entries, expected {len}",
                v.len()
            ),
            None => candle_core::bail!("no initial values for PET tensor {name}"),
        }
    }

    fn var(
        &self,
        name: String,
        values: Vec<f32>,
        shape: &[usize],
        mask: Option<Vec<f32>>,
        reg: &mut Vec<Trainable>,
    ) -> Result<Masked> {
        let t = Tensor::from_vec(values, shape, self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        let mask = match mask {
            Some(m) => Some(Tensor::from_vec(m, shape, self.device)?.to_dtype(self.dtype)?),
            None => None,
        };
        let value = var.as_tensor().clone();
        reg.push(Trainable {
            name,
            var,
            mask: mask.clone(),
            role: Role::Pet,
        });
        Ok(Masked { value, mask })
    }

    fn bias_delta(&self, m: &ModuleArch, reg: &mut Vec<Trainable>) -> Result<Option<Masked>> {
        let Some(b) = &m.bias else { return Ok(None) };
        let name = bias_delta_name(&m.path);
        let values = self.start_values(&name, m.out_dim)?;
        let mask = match b {
            BiasArch::Full => None,
            // A pruned-away bias vector gets no parameter at all.
            BiasArch::Masked(mask) if mask.count_ones() == 0 => return Ok(None),
            BiasArch::Masked(mask) => Some(mask.to_f32()),
        };
        Ok(Some(self.var(name, values, &[m.out_dim], mask, reg)?))
    }

    fn lora(&self, m: &ModuleArch, reg: &mut Vec<Trainable>) -> Result<Option<Lora>> {
        let Some(l) = &m.lora else { return Ok(None) };
        let r = l.max_rank;
        let (un, vn) = (lora_u_name(&m.path), lora_v_name(&m.path));
        let u0 = self.start_values(&un, m.in_dim * r)?;
        let v0 = self.start_values(&vn, m.out_dim * r)?;
        let (u, v) = match &l.keep {
            LoraKeep::Ranks(kept) => {
                if kept.is_empty() {
                    return Ok(None);
                }
                let k = kept.len();
                let u = take_columns(&u0, m.in_dim, r, kept);
                let v = take_columns(&v0, m.out_dim, r, kept);
                (
                    self.var(un, u, &[m.in_dim, k], None, reg)?,
                    self.var(vn, v, &[m.out_dim, k], None, reg)?,
                )
            }
            LoraKeep::Entries { u: mu, v: mv } => {
                if mu.count_ones() == 0 && mv.count_ones() == 0 {
                    return Ok(None);
                }
                (
                    self.var(un, u0, &[m.in_dim, r], Some(mu.to_f32()), reg)?,
                    self.var(vn, v0, &[m.out_dim, r], Some(mv.to_f32()), reg)?,
                )
            }
        };
        // A copy, not `detach()` alone: a detached tensor shares the Var's storage, which the
        // optimizer updates in place, so the "frozen" offset would follow U and V and ΔW would
        // stay 0 for the whole training.
        let offset = if self.lora_init == LoraInit::PaperZeroOffset {
            Some((
                u.effective()?.detach().copy()?,
                v.effective()?.detach().copy()?,
            ))
        } else {
            None
        };
        Ok(Some(Lora { u, v, offset }))
    }

    /// Adds the PET parameters of `m` (if any) to a linear layer.
    pub fn linear(
        &self,
        mut lin: PetLinear,
        m: Option<&ModuleArch>,
        reg: &mut Vec<Trainable>,
    ) -> Result<PetLinear> {
        if let Some(m) = m {
            lin.delta = self.bias_delta(m, reg)?;
            lin.lora = self.lora(m, reg)?;
        }
        Ok(lin)
    }

    /// Adds the bias delta of `m` (if any) to a LayerNorm.
    pub fn layer_norm(
        &self,
        mut ln: PetLayerNorm,
        m: Option<&ModuleArch>,
        reg: &mut Vec<Trainable>,
    ) -> Result<PetLayerNorm> {
        if let Some(m) = m {
            if m.lora.is_some() {
                candle_core::bail!(
                    "{}: LoRA on a LayerNorm is not part of the search space",
                    m.path
                );
            }
            ln.delta = self.bias_delta(m, reg)?;
        }
        Ok(ln)
    }
}
