//! Fused CPU kernels with their own backward passes, for training speed.
//!
//! candle 0.11 composes the differentiable LayerNorm, softmax and GELU out of 5–10 full-size
//! temporaries each (every one a fresh allocation, page faults included, plus a zero-fill and an add
//! per gradient edge in backward), computes a weight gradient for every matmul even when the weight
//! is a frozen plain tensor, and runs batched attention products one small GEMM at a time. Each op
//! here is a [`candle_core::CustomOp1`]/`2`/`3` with a `cpu_fwd` and a `bwd`, so gradients flow
//! exactly as through the composite ops in [`super::ops`] (tests below check both the forward values
//! and the gradients against them).
//!
//! The ops: a PET linear layer (frozen `W`, trainable bias, LoRA folded into `W + V·Uᵀ`, optional
//! GELU), LayerNorm, GELU, dropout, and the attention core (scores → mask → softmax → dropout → ·V
//! over batch × heads). See each op's doc for why it exists.
//!
//! Scope: CPU and f32 only. [`enabled`] says when a fused op may be used; callers fall back to the
//! composite ops otherwise (CUDA, half precision), and `PETNAS_UNFUSED` turns fused ops off by name
//! (`linear,attention,layernorm,gelu,dropout` or `all`) to measure each one or to debug.
//!
//! Determinism: every parallel loop splits work into chunks whose size does not depend on the
//! thread count, each output element is written by exactly one task, and reductions across chunks
//! are summed in chunk order, so a seed gives bit-identical results on a given CPU.
//! Dropout masks come from the same counter-based generator as [`super::ops::DropoutRng::mask`]
//! (`petnas_core::rng::counter_uniform`), drawn at the same counters, so fused and composite paths
//! drop the same elements.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// A fused op that can be switched off with `PETNAS_UNFUSED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A PET linear layer with a frozen `W` (bias, LoRA and a following GELU included).
    Linear,
    /// scores → mask → softmax → dropout → ·V.
    Attention,
    /// LayerNorm over the last dimension.
    LayerNorm,
    /// GELU (erf form) on its own (after a fused linear it is part of that op).
    Gelu,
    /// Dropout.
    Dropout,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Linear => "linear",
            Kind::Attention => "attention",
            Kind::LayerNorm => "layernorm",
            Kind::Gelu => "gelu",
            Kind::Dropout => "dropout",
        }
    }
}

fn unfused() -> &'static Vec<String> {
    static OFF: OnceLock<Vec<String>> = OnceLock::new();
    OFF.get_or_init(|| {
        std::env::var("PETNAS_UNFUSED")
            .map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_ascii_lowercase())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Whether the fused PET linear is switched on (`PETNAS_UNFUSED` does not name it).
pub fn linear_enabled() -> bool {
    !unfused()
        .iter()
        .any(|o| o == "all" || o == Kind::Linear.name())
}

/// Whether the fused version of `kind` may run on `t` (CPU, f32, not switched off).
pub fn enabled(kind: Kind, t: &Tensor) -> bool {
    let off = unfused();
    t.device().is_cpu()
        && t.dtype() == DType::F32
        && !off.iter().any(|o| o == "all" || o == kind.name())
}

// ---------------------------------------------------------------------------------------------
// Plumbing: slices out of storages, a shared output pointer, gemm on raw strides, SIMD dispatch.

fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused {what}: input must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (used in backward passes, whose arguments
/// are tensors rather than storages).
fn with_slice<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => f(cpu_slice(c, l, what)?),
        _ => bail!("fused {what}: CPU tensors only"),
    }
}

/// A raw output pointer shared by parallel tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// A strided matrix view: (pointer, row stride, column stride), in elements.
#[derive(Clone, Copy)]
struct Mat(*const f32, isize, isize);

/// `dst = beta·lhs·rhs` (or `dst += beta·lhs·rhs` with `acc`), `dst` [m×n], `lhs` [m×k], `rhs` [k×n].
///
/// # Safety
/// The views must cover valid memory for the given sizes; `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    acc: bool,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    par: Parallelism,
) {
    gemm::gemm(
        m, n, k, dst, dst_cs, dst_rs, acc, lhs.0, lhs.2, lhs.1, rhs.0, rhs.2, rhs.1, 1.0f32, beta,
        false, false, false, par,
    );
}

fn parallelism() -> Parallelism {
    let n = candle_core::utils::get_num_threads();
    if n > 1 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// Compiles an elementwise kernel three times (AVX-512, AVX2+FMA, baseline) and picks one at run
/// time: the crate builds for baseline x86-64 (SSE2), where `exp`/`erf` loops vectorise poorly.
/// No fast-math: the same arithmetic in the same order on every path, so results do not depend on
/// which one runs.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma,bmi2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) { inner($($arg),*) }
                if simd_level() == 4 {
                    return unsafe { v4($($arg),*) };
                }
                if simd_level() == 3 {
                    return unsafe { v3($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
fn simd_level() -> u8 {
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512dq")
            && has!("avx512vl")
            && has!("avx512bw")
            && has!("avx2")
            && has!("fma")
            && has!("bmi2")
        {
            4
        } else if has!("avx2") && has!("fma") && has!("bmi2") {
            3
        } else {
            0
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Scalar building blocks, written so that loops over them auto-vectorise.

/// `e^x` in f32 (Cephes `expf` polynomial, relative error ~2e-7). Branch-free so that it
/// vectorises. Below −87.3 (where `e^x` nears f32's smallest normal, 1.2e-38) it returns exactly
/// 0: a masked attention score or a far GELU tail then contributes 0, where ~1e-38 would make
/// subnormal probabilities and products downstream (each a microcode assist on x86).
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round-to-nearest by the 1.5·2²³ trick: `round()` is a libm call on baseline x86-64.
    const MAGIC: f32 = 12_582_912.0;
    const LO: f32 = -87.3;
    let underflow = x < LO;
    let x = x.clamp(LO, 88.3);
    let nm = x * LOG2E + MAGIC;
    let n = nm - MAGIC;
    // n as an integer, read from the mantissa of n + 1.5·2²³ (|n| < 2²²): `n as i32` is a
    // saturating conversion that LLVM does lane by lane here.
    let ni = (nm.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1; // Cephes' constant (rounds to 0.5 in f32)
    let e = p * r * r + r + 1.0;
    let y = e * f32::from_bits(((ni + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        y
    }
}

/// erf(x) in f32 (Abramowitz & Stegun 7.1.26, absolute error ≤ 1.5e-7).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    erf_and_gauss(x).0
}

/// `(erf(x), e^(−x²))`: the formula needs the Gaussian anyway, and GELU's backward needs it too
/// (φ(z) ∝ e^(−z²/2) = e^(−x²) at x = z/√2), so one `exp` serves both.
#[inline(always)]
fn erf_and_gauss(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4f32 * t - 1.453_152) * t + 1.421_413_7) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    let g = exp_f32(-a * a);
    ((1.0 - poly * g).copysign(x), g)
}

const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The dropout keep-scale at `counter`: `1/(1-p)` if kept, else 0. The draw is
/// `petnas_core::rng::counter_uniform`, as in [`super::ops::DropoutRng::mask`], with the seed's
/// mixing hoisted out of the loop so that it vectorises; a test checks the equality.
#[inline(always)]
fn keep_scale(seed_mixed: u64, counter: u64, p: f32, scale: f32) -> f32 {
    if petnas_core::rng::counter_uniform_mixed(seed_mixed, counter) >= p {
        scale
    } else {
        0.0
    }
}

fn mix_seed(seed: u64) -> u64 {
    petnas_core::rng::counter_seed(seed)
}

/// Sum with 16 fixed lanes (vectorises; the order is fixed, so the result is deterministic).
#[inline(always)]
fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let mut s = 0f32;
    for v in rest {
        s += v;
    }
    acc.iter().sum::<f32>() + s
}

/// Maximum with 16 fixed lanes (a plain `fold(max)` is a serial chain: LLVM does not reorder it).
#[inline(always)]
fn max16(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(rest) {
        m = if v > m { v } else { m };
    }
    m
}

/// Dot product with 16 fixed lanes.
#[inline(always)]
fn dot16(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let xc = x.chunks_exact(16);
    let yc = y.chunks_exact(16);
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    let mut s = 0f32;
    for (a, b) in xr.iter().zip(yr) {
        s += a * b;
    }
    acc.iter().sum::<f32>() + s
}

/// Rows per parallel task in row-wise kernels: fixed, so results do not depend on thread count.
const ROWS_PER_TASK: usize = 32;
/// Elements per parallel task in elementwise kernels.
const ELEMS_PER_TASK: usize = 1 << 15;

// ---------------------------------------------------------------------------------------------
// PET linear: y = act(x·Wᵀ + b + (x·U)·Vᵀ − (x·U₀)·V₀ᵀ) with a frozen W.

/// Gradients of a PET linear op: (dx when wanted, db, d[U; V]).
type LinearGrads = (Option<Vec<f32>>, Vec<f32>, Vec<f32>);

/// A thin-matrix kernel: (a, k, m, out) for [`rows_times_small`].
type RowsKernel = fn(&[f32], usize, &[f32], &mut [f32]);
/// A thin-matrix kernel: (a, rows, cols, first column, b, out) for [`transposed_times_small`].
type TransposedKernel = fn(&[f32], usize, usize, usize, &[f32], &mut [f32]);

/// A PET linear layer as one op: frozen base weight, trainable bias, optional LoRA factors and
/// optional GELU. Why one op:
/// - candle's matmul backward computes `xᵀ·grad` for `W` even when `W` is a plain tensor, and
///   throws it away: a third of a PET step's GEMM work;
/// - composed, the LoRA branch adds an [n, out] product and a full-size add in forward, and in
///   backward a zero-fill plus an add of [n, out] or [n, in] per graph edge (six of them), while
///   its own FLOPs are tiny (rank 8);
/// - fusing the GELU that follows the FFN's first dense saves one more [n, 4h] edge.
///
/// Arguments: `x` [n, in], `b` [out], and with LoRA `uv` = [U; V] stacked, [(in + out), r], so
/// that the op has three tensor inputs (candle's limit) while U and V stay separate `Var`s.
/// A frozen weight `W` [out, in] in bf16, packed once for the AMX GEMMs of both directions:
/// `fwd` is `Wᵀ` (for `y = x·Wᵀ`), `bwd` is `W` (for `dx = g·W`, only when a backward follows).
pub struct PackedWeight {
    fwd: petnas_amx::PackedB,
    bwd: Option<petnas_amx::PackedB>,
}

impl PackedWeight {
    /// Packs `w` [out, in] row-major (rounded to bf16, nearest even).
    pub fn new(w: &[f32], out: usize, inp: usize, with_backward: bool) -> Self {
        let fwd = petnas_amx::PackedB::pack(w, inp, out, 1, inp as isize);
        let bwd = with_backward.then(|| petnas_amx::PackedB::pack(w, out, inp, inp as isize, 1));
        Self { fwd, bwd }
    }

    /// Packs a frozen weight tensor (CPU, f32).
    pub fn from_tensor(w: &Tensor) -> Result<Self> {
        let (o, k) = w.dims2()?;
        with_slice(&w.contiguous()?, "bf16 pack", |s| {
            Ok(Self::new(s, o, k, true))
        })
    }
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeight(bf16 [{} × {}])",
            self.fwd.n(),
            self.fwd.k()
        )
    }
}

/// Whether `--precision bf16` runs on AMX tiles here; otherwise a one-line notice of the path it
/// takes instead (AVX512-BF16 `vdpbf16ps`, or fp32 arithmetic on bf16-rounded values).
pub fn bf16_notice() -> Option<String> {
    match petnas_amx::backend() {
        "amx" => None,
        other => Some(format!("--precision bf16: no AMX tiles on this CPU (or the kernel refused them); the frozen matmuls run on the {other} path, slower than AMX")),
    }
}

struct PetLinearOp {
    w: Tensor, // [out, in], contiguous, frozen
    /// bf16 mode: the frozen matmuls run as bf16 × bf16 → fp32 on AMX. `packed` is `W` packed
    /// once (no LoRA); with LoRA the effective weight is packed each forward pass.
    bf16: bool,
    packed: Option<Arc<PackedWeight>>,
    /// The packed effective weight, kept for backward (bf16 mode).
    saved_packed: Mutex<Option<Arc<PackedWeight>>>,
    rank: usize,
    /// Frozen initial factors (U₀ [in, r₀], V₀ [out, r₀]) subtracted by `LoraInit::PaperZeroOffset`.
    offset: Option<(Tensor, Tensor)>,
    gelu: bool,
    /// The pre-activation, kept for GELU's backward.
    saved: Mutex<Option<Vec<f32>>>,
    /// The effective weight `W + V·Uᵀ − V₀·U₀ᵀ`, kept for backward (LoRA only).
    saved_w: Mutex<Option<Vec<f32>>>,
    keep: bool,
}

impl PetLinearOp {
    /// Forward on slices: `uv` empty without LoRA.
    fn forward(&self, x: &[f32], n: usize, k: usize, b: &[f32], uv: &[f32]) -> Result<Vec<f32>> {
        let (o, k2) = self.w.dims2()?;
        if k != k2 || b.len() != o || uv.len() != (k + o) * self.rank {
            bail!(
                "fused linear: x [{n}, {k}], W [{o}, {k2}], b [{}], uv {} (rank {})",
                b.len(),
                uv.len(),
                self.rank
            );
        }
        // Start from the bias rows and let the GEMMs accumulate into them: one pass over y.
        let mut y = Vec::with_capacity(n * o);
        for _ in 0..n {
            y.extend_from_slice(b);
        }
        let (ks, os) = (k as isize, o as isize);
        let xm = Mat(x.as_ptr(), ks, 1);
        // With LoRA, fold the factors into the weight: W' = W + V·Uᵀ (− V₀·U₀ᵀ) costs out·in·r,
        // while applying them to the activations costs n·(in + out)·r in two skinny, memory-bound
        // GEMMs plus a pass over y; backward reuses W' for dx = g·W'.
        let w_eff = self.effective_weight(k, o, uv)?;
        if self.bf16 {
            let packed = match (&w_eff, &self.packed) {
                (Some(w), _) => Arc::new(PackedWeight::new(w, o, k, self.keep)),
                (None, Some(p)) => p.clone(),
                (None, None) => Arc::new(PackedWeight::from_tensor(&self.w)?),
            };
            petnas_amx::gemm_bf16(n, o, k, x, k, &packed.fwd, &mut y, o, true);
            if self.keep {
                *self
                    .saved_packed
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))? =
                    Some(packed);
            }
            return self.activate(y);
        }
        let mut run = |w: &[f32]| unsafe {
            // rhs = W'ᵀ [in, out]: element (i, j) = W'[j, i].
            gemm_f32(
                n,
                o,
                k,
                y.as_mut_ptr(),
                os,
                1,
                true,
                xm,
                Mat(w.as_ptr(), 1, ks),
                1.0,
                parallelism(),
            );
        };
        match &w_eff {
            Some(w) => run(w),
            None => with_slice(&self.w, "linear", |w| {
                run(w);
                Ok(())
            })?,
        }
        if self.keep {
            *self
                .saved_w
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))? =
                w_eff;
        }
        self.activate(y)
    }

    /// The output from the pre-activation `y`: GELU (keeping `y` for backward) or `y` itself.
    fn activate(&self, y: Vec<f32>) -> Result<Vec<f32>> {
        if !self.gelu {
            return Ok(y);
        }
        let mut a = vec![0f32; y.len()];
        a.par_chunks_mut(ELEMS_PER_TASK)
            .zip(y.par_chunks(ELEMS_PER_TASK))
            .for_each(|(ac, yc)| gelu_fwd_chunk(yc, ac));
        if self.keep {
            *self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))? =
                Some(y);
        }
        Ok(a)
    }

    /// `W + V·Uᵀ − V₀·U₀ᵀ` [out, in], or `None` without LoRA (then `W` itself is used).
    fn effective_weight(&self, k: usize, o: usize, uv: &[f32]) -> Result<Option<Vec<f32>>> {
        if self.rank == 0 && self.offset.is_none() {
            return Ok(None);
        }
        let mut w = with_slice(&self.w, "linear", |w| Ok(w.to_vec()))?;
        let add = |w: &mut [f32], u: &[f32], v: &[f32], r: usize, beta: f32| unsafe {
            let rs = r as isize;
            // V [out, r] · Uᵀ [r, in], Uᵀ element (i, j) = U[j, i].
            gemm_f32(
                o,
                k,
                r,
                w.as_mut_ptr(),
                k as isize,
                1,
                true,
                Mat(v.as_ptr(), rs, 1),
                Mat(u.as_ptr(), 1, rs),
                beta,
                parallelism(),
            );
        };
        if self.rank > 0 {
            let (u, v) = uv.split_at(k * self.rank);
            add(&mut w, u, v, self.rank, 1.0);
        }
        if let Some((u0, v0)) = &self.offset {
            let r0 = u0.dim(1)?;
            with_slice(u0, "linear", |u0| {
                with_slice(v0, "linear", |v0| {
                    add(&mut w, u0, v0, r0, -1.0);
                    Ok(())
                })
            })?;
        }
        Ok(Some(w))
    }

    /// Backward on slices: (dx if `want_x`, db, d[U; V]).
    fn backward(
        &self,
        x: &[f32],
        n: usize,
        k: usize,
        uv: &[f32],
        grad: &[f32],
        want_x: bool,
    ) -> Result<LinearGrads> {
        let o = self.w.dim(0)?;
        let (ks, os) = (k as isize, o as isize);
        let par = parallelism();
        // Through the GELU first: g ← g ⊙ gelu'(z).
        let gz_own;
        let g: &[f32] = if self.gelu {
            let guard = self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))?;
            let Some(z) = guard.as_ref() else {
                bail!("fused linear: backward without the saved pre-activation")
            };
            let mut t = vec![0f32; z.len()];
            t.par_chunks_mut(ELEMS_PER_TASK)
                .zip(
                    z.par_chunks(ELEMS_PER_TASK)
                        .zip(grad.par_chunks(ELEMS_PER_TASK)),
                )
                .for_each(|(tc, (zc, gc))| gelu_bwd_chunk(zc, gc, tc));
            gz_own = t;
            &gz_own
        } else {
            grad
        };
        let db = column_sums(g, n, o);
        let gm = Mat(g.as_ptr(), os, 1);
        let dx = if want_x && self.bf16 {
            let saved = self
                .saved_packed
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))?;
            let Some(bwd) = saved.as_ref().and_then(|p| p.bwd.as_ref()) else {
                bail!("fused linear: backward without the packed weight")
            };
            let mut dx = vec![0f32; n * k];
            petnas_amx::gemm_bf16(n, k, o, g, o, bwd, &mut dx, k, false);
            Some(dx)
        } else if want_x {
            // dx = g·W' (W' = W + V·Uᵀ − V₀·U₀ᵀ from the forward pass, or W).
            let mut dx: Vec<f32> = Vec::with_capacity(n * k);
            let mut run = |w: &[f32]| unsafe {
                // Uninitialised is fine: with `acc = false` gemm never reads dst (alpha_status 0
                // in gemm-common's microkernels), and every element is written.
                gemm_f32(
                    n,
                    k,
                    o,
                    dx.as_mut_ptr(),
                    ks,
                    1,
                    false,
                    gm,
                    Mat(w.as_ptr(), ks, 1),
                    1.0,
                    par,
                );
                dx.set_len(n * k);
            };
            let saved = self
                .saved_w
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))?;
            match saved.as_ref() {
                Some(w) => run(w),
                None if self.rank == 0 && self.offset.is_none() => {
                    with_slice(&self.w, "linear", |w| {
                        run(w);
                        Ok(())
                    })?
                }
                None => bail!("fused linear: backward without the saved effective weight"),
            }
            Some(dx)
        } else {
            None
        };
        let mut duv = Vec::new();
        if self.rank > 0 {
            let r = self.rank;
            let (u, v) = uv.split_at(k * r);
            // Skinny products (one side is the rank, ~8): gemm's 16-lane microkernels waste half
            // their width on an 8-wide side or spend their time packing; these loops read each
            // large operand once, vectorised along the rank.
            let mut xu = vec![0f32; n * r]; // [n, r]
            let mut gxu = vec![0f32; n * r]; // [n, r]
            rows_times_small(x, k, u, r, &mut xu);
            // d(xu) = g·V [n, r]; dV = gᵀ·xu [out, r]; dU = xᵀ·d(xu) [in, r]
            rows_times_small(g, o, v, r, &mut gxu);
            duv = vec![0f32; (k + o) * r];
            let (du, dv) = duv.split_at_mut(k * r);
            transposed_times_small(g, n, o, &xu, r, dv);
            transposed_times_small(x, n, k, &gxu, r, du);
        }
        Ok((dx, db, duv))
    }
}

impl candle_core::CustomOp2 for PetLinearOp {
    fn name(&self) -> &'static str {
        "petnas-pet-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s1, l1, "linear")?;
        let b = cpu_slice(s2, l2, "linear")?;
        let (n, k) = l1.shape().dims2()?;
        let y = self.forward(x, n, k, b, &[])?;
        Ok((CpuStorage::F32(y), Shape::from((n, self.w.dim(0)?))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (n, k) = x.dims2()?;
        let (dx, db, _) = with_slice(x, "linear", |xs| {
            with_slice(&grad, "linear", |g| {
                self.backward(xs, n, k, &[], g, x.track_op())
            })
        })?;
        let dx = match dx {
            Some(d) => Some(Tensor::from_vec(d, (n, k), x.device())?),
            None => None,
        };
        let db = if b.track_op() {
            Some(Tensor::from_vec(db, b.dims(), b.device())?)
        } else {
            None
        };
        Ok((dx, db))
    }
}

impl candle_core::CustomOp3 for PetLinearOp {
    fn name(&self) -> &'static str {
        "petnas-pet-linear-lora"
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
        let x = cpu_slice(s1, l1, "linear")?;
        let b = cpu_slice(s2, l2, "linear")?;
        let uv = cpu_slice(s3, l3, "linear")?;
        let (n, k) = l1.shape().dims2()?;
        let y = self.forward(x, n, k, b, uv)?;
        Ok((CpuStorage::F32(y), Shape::from((n, self.w.dim(0)?))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        uv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (n, k) = x.dims2()?;
        let (dx, db, duv) = with_slice(x, "linear", |xs| {
            with_slice(uv, "linear", |uvs| {
                with_slice(&grad, "linear", |g| {
                    self.backward(xs, n, k, uvs, g, x.track_op())
                })
            })
        })?;
        let dx = match dx {
            Some(d) => Some(Tensor::from_vec(d, (n, k), x.device())?),
            None => None,
        };
        let db = if b.track_op() {
            Some(Tensor::from_vec(db, b.dims(), b.device())?)
        } else {
            None
        };
        let duv = if uv.track_op() {
            Some(Tensor::from_vec(duv, uv.dims(), uv.device())?)
        } else {
            None
        };
        Ok((dx, db, duv))
    }
}

/// `out = a·m` for `a` [rows, k] and a thin `m` [k, r], all row-major; parallel over fixed row
/// blocks. Ranks 8 and 16 (the search space's) get unrolled kernels; others go through gemm.
fn rows_times_small(a: &[f32], k: usize, m: &[f32], r: usize, out: &mut [f32]) {
    let kernel: Option<RowsKernel> = match r {
        8 => Some(rows_times_small_8),
        16 => Some(rows_times_small_16),
        _ => None,
    };
    match kernel {
        Some(f) => out
            .par_chunks_mut(ROWS_PER_TASK * r)
            .zip(a.par_chunks(ROWS_PER_TASK * k))
            .for_each(|(oc, ac)| f(ac, k, m, oc)),
        None => unsafe {
            let n = a.len() / k;
            gemm_f32(
                n,
                r,
                k,
                out.as_mut_ptr(),
                r as isize,
                1,
                false,
                Mat(a.as_ptr(), k as isize, 1),
                Mat(m.as_ptr(), r as isize, 1),
                1.0,
                parallelism(),
            );
        },
    }
}

/// One row block of [`rows_times_small`] for rank `R`: four accumulators per row (j mod 4, summed
/// in a fixed order) hide the FMA latency.
#[inline(always)]
fn rows_times_small_r<const R: usize>(a: &[f32], k: usize, m: &[f32], out: &mut [f32]) {
    for (ar, or) in a.chunks_exact(k).zip(out.chunks_exact_mut(R)) {
        let mut acc = [[0f32; R]; 4];
        let mut j = 0;
        while j + 4 <= k {
            for (q, accq) in acc.iter_mut().enumerate() {
                let av = ar[j + q];
                let mr = &m[(j + q) * R..(j + q + 1) * R];
                for t in 0..R {
                    accq[t] += av * mr[t];
                }
            }
            j += 4;
        }
        while j < k {
            let av = ar[j];
            let mr = &m[j * R..(j + 1) * R];
            for t in 0..R {
                acc[0][t] += av * mr[t];
            }
            j += 1;
        }
        for t in 0..R {
            or[t] = (acc[0][t] + acc[1][t]) + (acc[2][t] + acc[3][t]);
        }
    }
}

multiversion! {
    fn rows_times_small_8(a: &[f32], k: usize, m: &[f32], out: &mut [f32]) {
        rows_times_small_r::<8>(a, k, m, out)
    }
}

multiversion! {
    fn rows_times_small_16(a: &[f32], k: usize, m: &[f32], out: &mut [f32]) {
        rows_times_small_r::<16>(a, k, m, out)
    }
}

/// `out = aᵀ·b` for `a` [rows, cols], a thin `b` [rows, r]: `out` [cols, r]. Parallel over fixed
/// blocks of output rows (columns of `a`), each summing over all rows in order: no cross-task
/// reduction, so the result does not depend on the thread count.
fn transposed_times_small(
    a: &[f32],
    rows: usize,
    cols: usize,
    b: &[f32],
    r: usize,
    out: &mut [f32],
) {
    const COLS_PER_TASK: usize = 64;
    let kernel: Option<TransposedKernel> = match r {
        8 => Some(transposed_times_small_8),
        16 => Some(transposed_times_small_16),
        _ => None,
    };
    match kernel {
        Some(f) => out
            .par_chunks_mut(COLS_PER_TASK * r)
            .enumerate()
            .for_each(|(t, oc)| f(a, rows, cols, t * COLS_PER_TASK, b, oc)),
        None => unsafe {
            gemm_f32(
                cols,
                r,
                rows,
                out.as_mut_ptr(),
                r as isize,
                1,
                false,
                Mat(a.as_ptr(), 1, cols as isize),
                Mat(b.as_ptr(), r as isize, 1),
                1.0,
                parallelism(),
            );
        },
    }
}

/// One block of [`transposed_times_small`]: sub-blocks of 8 columns whose 8·R sums stay in
/// registers over the whole row loop (accumulating in `out` would be load/store bound).
#[inline(always)]
fn transposed_times_small_r<const R: usize>(
    a: &[f32],
    rows: usize,
    cols: usize,
    c0: usize,
    b: &[f32],
    out: &mut [f32],
) {
    const W: usize = 8;
    let width = out.len() / R; // columns of `a` in this block
    let mut w0 = 0;
    while w0 < width {
        let w = W.min(width - w0);
        let mut acc = [[0f32; R]; W];
        if w == W {
            for i in 0..rows {
                let ar: &[f32; W] = a[i * cols + c0 + w0..i * cols + c0 + w0 + W]
                    .try_into()
                    .expect("W columns");
                let br: &[f32; R] = b[i * R..(i + 1) * R].try_into().expect("R ranks");
                for q in 0..W {
                    for t in 0..R {
                        acc[q][t] += ar[q] * br[t];
                    }
                }
            }
        } else {
            for i in 0..rows {
                let ar = &a[i * cols + c0 + w0..i * cols + c0 + w0 + w];
                let br = &b[i * R..(i + 1) * R];
                for q in 0..w {
                    for t in 0..R {
                        acc[q][t] += ar[q] * br[t];
                    }
                }
            }
        }
        for q in 0..w {
            out[(w0 + q) * R..(w0 + q + 1) * R].copy_from_slice(&acc[q]);
        }
        w0 += W;
    }
}

multiversion! {
    fn transposed_times_small_8(a: &[f32], rows: usize, cols: usize, c0: usize, b: &[f32], out: &mut [f32]) {
        transposed_times_small_r::<8>(a, rows, cols, c0, b, out)
    }
}

multiversion! {
    fn transposed_times_small_16(a: &[f32], rows: usize, cols: usize, c0: usize, b: &[f32], out: &mut [f32]) {
        transposed_times_small_r::<16>(a, rows, cols, c0, b, out)
    }
}

/// Column sums of a row-major [rows, cols] matrix: partial sums over fixed row blocks, added in
/// block order (deterministic).
fn column_sums(g: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let block = 256;
    let partial: Vec<Vec<f32>> = (0..rows.div_ceil(block))
        .into_par_iter()
        .map(|bi| {
            let mut acc = vec![0f32; cols];
            for r in bi * block..((bi + 1) * block).min(rows) {
                add_into(&mut acc, &g[r * cols..(r + 1) * cols]);
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; cols];
    for p in &partial {
        add_into(&mut out, p);
    }
    out
}

multiversion! {
    fn add_into(acc: &mut [f32], x: &[f32]) {
        for (a, v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
}

/// The LoRA part of a fused PET linear: effective factors and the optional frozen offset.
pub struct LoraParts<'a> {
    /// Effective U (masked), [in, r].
    pub u: &'a Tensor,
    /// Effective V (masked), [out, r].
    pub v: &'a Tensor,
    /// Frozen (U₀, V₀) subtracted so training starts at the pre-trained function.
    pub offset: Option<(&'a Tensor, &'a Tensor)>,
}

/// `act(x·Wᵀ + b + (x·U)·Vᵀ − (x·U₀)·V₀ᵀ)` for `x` [n, in] and a frozen `weight` [out, in];
/// `bias` [out] and the LoRA factors may carry gradients; `act` is GELU when `gelu`.
///
/// `bf16`: `None` for fp32; `Some(packed)` for bf16 matmuls, with `W` packed once (`Some(Some)`,
/// no LoRA) or packed with the LoRA product folded in on each call (`Some(None)`).
pub fn pet_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    lora: Option<LoraParts<'_>>,
    gelu: bool,
    bf16: Option<Option<Arc<PackedWeight>>>,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let bias = bias.contiguous()?;
    let mut op = PetLinearOp {
        w: weight.contiguous()?,
        bf16: bf16.is_some(),
        packed: bf16.flatten(),
        saved_packed: Mutex::new(None),
        rank: 0,
        offset: None,
        gelu,
        saved: Mutex::new(None),
        saved_w: Mutex::new(None),
        keep: false,
    };
    match lora {
        None => {
            op.keep = x.track_op() || bias.track_op();
            x.apply_op2(&bias, op)
        }
        Some(l) => {
            op.rank = l.u.dim(1)?;
            op.offset = match l.offset {
                Some((u0, v0)) => Some((u0.contiguous()?, v0.contiguous()?)),
                None => None,
            };
            // [U; V]: one input for both factors; `cat`'s backward splits the gradient again.
            let uv = Tensor::cat(&[l.u, l.v], 0)?.contiguous()?;
            op.keep = x.track_op() || bias.track_op() || uv.track_op();
            x.apply_op3(&bias, &uv, op)
        }
    }
}

/// `x·Wᵀ + b` for `x` [n, in] and a frozen `weight` [out, in]; `bias` [out] may carry gradients.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    pet_linear(x, weight, bias, None, false, None)
}

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
        let mut y = vec![0f32; x.len()];
        let eps = self.eps;
        y.par_chunks_mut(ROWS_PER_TASK * h)
            .zip(x.par_chunks(ROWS_PER_TASK * h))
            .for_each(|(yc, xc)| ln_rows(xc, g, b, yc, h, eps));
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
                with_slice(gamma, "layer norm", |g| {
                    let mut dx = vec![0f32; xs.len()];
                    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
                        .par_chunks_mut(ROWS_PER_TASK * h)
                        .zip(
                            xs.par_chunks(ROWS_PER_TASK * h)
                                .zip(dy.par_chunks(ROWS_PER_TASK * h)),
                        )
                        .map(|(dxc, (xc, dyc))| {
                            let (mut dg, mut db, mut xh) =
                                (vec![0f32; h], vec![0f32; h], vec![0f32; h]);
                            ln_bwd_rows(xc, dyc, g, dxc, &mut dg, &mut db, &mut xh, h, eps);
                            (dg, db)
                        })
                        .collect();
                    let (mut dg, mut db) = (vec![0f32; h], vec![0f32; h]);
                    for (pg, pb) in &partial {
                        add_into(&mut dg, pg);
                        add_into(&mut db, pb);
                    }
                    Ok((dx, dg, db))
                })
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

// ---------------------------------------------------------------------------------------------
// GELU (erf form).

struct Gelu;

multiversion! {
    fn gelu_fwd_chunk(x: &[f32], y: &mut [f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erf_f32(v * SQRT_HALF));
        }
    }
}

multiversion! {
    /// grad · gelu'(x), gelu'(x) = Φ(x) + x·φ(x).
    fn gelu_bwd_chunk(x: &[f32], g: &[f32], o: &mut [f32]) {
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
    fn dropout_chunk(x: &[f32], y: &mut [f32], seed_mixed: u64, base: u64, p: f32, scale: f32) {
        for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
            *o = v * keep_scale(seed_mixed, base + i as u64, p, scale);
        }
    }
}

impl candle_core::CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "petnas-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l, "dropout")?;
        let mut y = vec![0f32; x.len()];
        let scale = 1.0 / (1.0 - self.p);
        let (sm, base, p) = (self.seed_mixed, self.base, self.p);
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK))
            .enumerate()
            .for_each(|(c, (yc, xc))| {
                dropout_chunk(xc, yc, sm, base + (c * ELEMS_PER_TASK) as u64, p, scale)
            });
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

// ---------------------------------------------------------------------------------------------
// Attention.

/// Multi-head self-attention core: `ctx = dropout(softmax(scale·Q·Kᵀ + mask))·V`, per batch item
/// and head in parallel. Q, K, V and ctx stay in the [batch, seq, hidden] layout of the linear
/// layers (heads are column blocks read with strides), so no transposes are copied; each (item,
/// head) runs its three small products single-threaded, which keeps both cores busy where candle
/// would run 192 tiny GEMMs one after another. The softmax probabilities are kept for backward
/// (one [batch, heads, seq, seq] buffer, as PyTorch keeps them); the dropout mask is redrawn.
struct Attention {
    heads: usize,
    scale: f32,
    /// Additive mask per key position: 0 for tokens, −1e9 for padding. [batch·seq]
    mask_bias: Vec<f32>,
    /// (mixed seed, base counter, p) when dropout is on; counters follow [batch, heads, seq, seq].
    drop: Option<(u64, u64, f32)>,
    /// Probabilities from the forward pass, for backward.
    probs: Mutex<Option<Vec<f32>>>,
    /// Whether anything upstream needs gradients (else the probabilities are not kept).
    keep: bool,
}

multiversion! {
    /// Row-wise: add the key mask, softmax in place.
    fn softmax_rows(s: &mut [f32], mask: &[f32], l: usize) {
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
    /// Softmax backward in place: `d ← P ⊙ (d⊙m − rowsum(d⊙m⊙P))`, with `m` the dropout
    /// keep-scale (so `d` enters as the gradient of the dropped probabilities).
    fn softmax_bwd_rows(d: &mut [f32], p: &[f32], l: usize, seed_mixed: u64, base: u64, pd: f32, scale: f32, dropout: bool) {
        for (r, (dr, pr)) in d.chunks_exact_mut(l).zip(p.chunks_exact(l)).enumerate() {
            if dropout {
                let b = base + (r * l) as u64;
                for (j, v) in dr.iter_mut().enumerate() {
                    *v *= keep_scale(seed_mixed, b + j as u64, pd, scale);
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
    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize, usize)> {
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
        let (b, l, h, dh) = self.dims(l1)?;
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
        let nh = self.heads;
        let mut probs = vec![0f32; b * nh * l * l]; // [batch, heads, seq, seq]
        let mut ctx = vec![0f32; b * l * h]; // [batch, seq, hidden]
        let cp = SendPtr(ctx.as_mut_ptr());
        let hs = h as isize;
        probs.par_chunks_mut(l * l).enumerate().for_each(|(t, p)| {
            // Rebinding makes the closure capture the whole `SendPtr` (Send + Sync), not its raw
            // pointer field (edition-2021 disjoint capture), which is neither.
            #[allow(clippy::redundant_locals)]
            let cp = cp;
            let (bi, hi) = (t / nh, t % nh);
            let off = bi * l * h + hi * dh;
            unsafe {
                // scores = scale · Q_h·K_hᵀ; Kᵀ element (d, j) = k[j, d].
                gemm_f32(
                    l,
                    l,
                    dh,
                    p.as_mut_ptr(),
                    l as isize,
                    1,
                    false,
                    Mat(q.as_ptr().add(off), hs, 1),
                    Mat(k.as_ptr().add(off), 1, hs),
                    self.scale,
                    Parallelism::None,
                );
            }
            softmax_rows(p, &self.mask_bias[bi * l..(bi + 1) * l], l);
            let mut dropped = Vec::new();
            let lhs: &[f32] = match self.drop {
                Some((sm, base, pd)) => {
                    dropped = vec![0f32; l * l];
                    apply_drop(
                        p,
                        &mut dropped,
                        sm,
                        base + (t * l * l) as u64,
                        pd,
                        1.0 / (1.0 - pd),
                    );
                    &dropped
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
            drop(dropped);
        });
        if self.keep {
            *self
                .probs
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused attention: poisoned lock".into()))? =
                Some(probs);
        }
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
        let (b, l, h, dh) = self.dims(q.layout())?;
        let nh = self.heads;
        let guard = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused attention: poisoned lock".into()))?;
        let Some(probs) = guard.as_ref() else {
            bail!("fused attention: backward without saved probabilities")
        };
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; b * l * h],
            vec![0f32; b * l * h],
            vec![0f32; b * l * h],
        );
        let (dqp, dkp, dvp) = (
            SendPtr(dq.as_mut_ptr()),
            SendPtr(dk.as_mut_ptr()),
            SendPtr(dv.as_mut_ptr()),
        );
        let hs = h as isize;
        let ls = l as isize;
        with_slice(q, "attention", |qs| {
            with_slice(k, "attention", |ks| {
                with_slice(v, "attention", |vs| {
                    with_slice(&grad, "attention", |gs| {
                        probs.par_chunks(l * l).enumerate().for_each(|(t, p)| {
                            let (dqp, dkp, dvp) = (dqp, dkp, dvp);
                            let (bi, hi) = (t / nh, t % nh);
                            let off = bi * l * h + hi * dh;
                            let (sm, base, pd, dscale, on) = match self.drop {
                                Some((sm, base, pd)) => {
                                    (sm, base + (t * l * l) as u64, pd, 1.0 / (1.0 - pd), true)
                                }
                                None => (0, 0, 0.0, 1.0, false),
                            };
                            let mut dropped = Vec::new();
                            let pdrop: &[f32] = if on {
                                dropped = vec![0f32; l * l];
                                apply_drop(p, &mut dropped, sm, base, pd, dscale);
                                &dropped
                            } else {
                                p
                            };
                            let mut d = vec![0f32; l * l];
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
                            drop(dropped);
                            softmax_bwd_rows(&mut d, p, l, sm, base, pd, dscale, on);
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
                        Ok(())
                    })
                })
            })
        })?;
        drop(guard);
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
    // Same additive bias as the composite path: (m − 1)·1e9.
    let mask_bias: Vec<f32> = attention_mask
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|m| (m - 1.0) * 1e9)
        .collect();
    let keep = q.track_op() || k.track_op() || v.track_op();
    let op = Attention {
        heads,
        scale: scale as f32,
        mask_bias,
        drop: drop
            .filter(|d| d.2 > 0.0)
            .map(|(s, b, p)| (mix_seed(s), b, p)),
        probs: Mutex::new(None),
        keep,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops;
    use candle_core::{Device, Var, D};
    use petnas_core::rng::Rng;

    fn rand(shape: &[usize], seed: u64, scale: f32) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..shape.iter().product::<usize>())
            .map(|_| r.normal_f32() * scale)
            .collect()
    }

    fn var(shape: &[usize], seed: u64, scale: f32) -> Var {
        Var::from_vec(rand(shape, seed, scale), shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn max_abs(a: &Tensor) -> f32 {
        a.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// A fixed random projection of `y`, so that every output element gets a different gradient.
    fn probe(y: &Tensor, seed: u64) -> Tensor {
        let w = Tensor::from_vec(rand(y.dims(), seed, 1.0), y.dims(), &Device::Cpu).unwrap();
        (y * w).unwrap().sum_all().unwrap()
    }

    /// Compares the gradients of `vars` under the fused and composite versions of a function.
    fn check_grads(vars: &[&Var], fused: &Tensor, composite: &Tensor, tol: f32) {
        let gf = probe(fused, 99).backward().unwrap();
        let gc = probe(composite, 99).backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let a = gf
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("fused: no gradient for input {i}"));
            let b = gc
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("composite: no gradient for input {i}"));
            let d = max_abs_diff(a, b);
            assert!(
                d <= tol * (1.0 + max_abs(b)),
                "input {i}: gradient differs by {d} (scale {})",
                max_abs(b)
            );
        }
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.04;
            let (a, b) = (exp_f32(x), x.exp());
            assert!(((a - b) / b).abs() < 5e-7, "exp({x}) = {a} vs {b}");
        }
        assert_eq!(exp_f32(-1e9), 0.0);
        assert_eq!(exp_f32(-87.31), 0.0);
        assert!(exp_f32(-87.29).is_normal());
        // erf reference: erf(x) = 1 − erfc; check against a high-precision series at a few points.
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.5, -0.966_105_1),
            (4.0, 0.999_999_98),
        ] {
            assert!(
                (erf_f32(x) - want).abs() < 3e-7,
                "erf({x}) = {} vs {want}",
                erf_f32(x)
            );
        }
    }

    #[test]
    fn keep_scale_matches_dropout_rng() {
        let seed = 1234;
        let mut rng = ops::DropoutRng::new(seed);
        let m: Vec<f32> = rng
            .mask(&[5000], 0.1, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let sm = mix_seed(seed);
        for (i, v) in m.iter().enumerate() {
            assert_eq!(*v, keep_scale(sm, i as u64, 0.1, 1.0 / 0.9), "counter {i}");
        }
    }

    #[test]
    fn frozen_linear_matches_matmul() -> Result<()> {
        let x = var(&[37, 24], 1, 1.0);
        let w = Tensor::from_vec(rand(&[19, 24], 2, 0.3), (19, 24), &Device::Cpu)?;
        let b = var(&[19], 3, 1.0);
        let yf = frozen_linear(x.as_tensor(), &w, b.as_tensor())?;
        let yc = x
            .as_tensor()
            .matmul(&w.t()?)?
            .broadcast_add(b.as_tensor())?;
        assert!(max_abs_diff(&yf, &yc) < 1e-5);
        check_grads(&[&x, &b], &yf, &yc, 1e-5);
        // A plain (frozen) weight gets no gradient, and a plain bias neither.
        let bt = b.as_tensor().detach();
        let g = probe(&frozen_linear(x.as_tensor(), &w, &bt)?, 5).backward()?;
        assert!(g.get(&w).is_none() && g.get(&bt).is_none() && g.get(x.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn pet_linear_with_lora_offset_and_gelu_matches_composite() -> Result<()> {
        let dev = Device::Cpu;
        // Ranks 8 and 16 take the unrolled skinny kernels, 3 the gemm fallback; 37 rows and 75
        // columns leave partial row and column blocks.
        let (n, k, o) = (37, 24, 75);
        let x = var(&[n, k], 21, 1.0);
        let w = Tensor::from_vec(rand(&[o, k], 22, 0.3), (o, k), &dev)?;
        let b = var(&[o], 23, 1.0);
        let u0 = Tensor::from_vec(rand(&[k, 2], 26, 0.5), (k, 2), &dev)?;
        let v0 = Tensor::from_vec(rand(&[o, 2], 27, 0.5), (o, 2), &dev)?;
        for (r, offset, gelu) in [
            (3, false, false),
            (3, true, false),
            (3, false, true),
            (8, true, true),
            (8, false, false),
            (16, false, true),
        ] {
            let u = var(&[k, r], 24, 0.5);
            let v = var(&[o, r], 25, 0.5);
            let lora = LoraParts {
                u: u.as_tensor(),
                v: v.as_tensor(),
                offset: offset.then_some((&u0, &v0)),
            };
            let yf = pet_linear(x.as_tensor(), &w, b.as_tensor(), Some(lora), gelu, None)?;
            let xt = x.as_tensor();
            let mut yc = (xt.matmul(&w.t()?)?.broadcast_add(b.as_tensor())?
                + xt.matmul(u.as_tensor())?.matmul(&v.as_tensor().t()?)?)?;
            if offset {
                yc = (yc - xt.matmul(&u0)?.matmul(&v0.t()?)?)?;
            }
            if gelu {
                yc = yc.gelu_erf()?;
            }
            assert!(
                max_abs_diff(&yf, &yc) < 1e-5,
                "rank {r} offset {offset} gelu {gelu}: {}",
                max_abs_diff(&yf, &yc)
            );
            check_grads(&[&x, &b, &u, &v], &yf, &yc, 2e-5);
        }
        Ok(())
    }

    /// ‖a − b‖ / ‖b‖.
    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = a
            .sub(b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        d / b
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
            .max(1e-30)
    }

    #[test]
    fn pet_linear_in_bf16_stays_near_fp32_forward_and_backward() -> Result<()> {
        // bf16 keeps 8 mantissa bits: products of rounded inputs summed in fp32 land within a
        // few 1e-3 of fp32 by norm; every gradient must arrive, and the bias gradient (a column
        // sum of the fp32 output gradient) is exact.
        let dev = Device::Cpu;
        let (n, k, o) = (70, 48, 75);
        let x = var(&[n, k], 31, 1.0);
        let w = Tensor::from_vec(rand(&[o, k], 32, 0.3), (o, k), &dev)?;
        let b = var(&[o], 33, 1.0);
        let u = var(&[k, 8], 34, 0.5);
        let v = var(&[o, 8], 35, 0.5);
        for (with_lora, gelu) in [(false, false), (false, true), (true, false), (true, true)] {
            let lora = || {
                with_lora.then(|| LoraParts {
                    u: u.as_tensor(),
                    v: v.as_tensor(),
                    offset: None,
                })
            };
            let packed = (!with_lora).then(|| Arc::new(PackedWeight::from_tensor(&w).unwrap()));
            let y16 = pet_linear(x.as_tensor(), &w, b.as_tensor(), lora(), gelu, Some(packed))?;
            let y32 = pet_linear(x.as_tensor(), &w, b.as_tensor(), lora(), gelu, None)?;
            let r = rel(&y16, &y32);
            assert!(
                r < 1e-2 && r > 0.0,
                "lora {with_lora} gelu {gelu}: forward differs by {r} (0 would mean no bf16)"
            );
            let g16 = probe(&y16, 9).backward()?;
            let g32 = probe(&y32, 9).backward()?;
            let mut vars = vec![&x, &b];
            if with_lora {
                vars.extend([&u, &v]);
            }
            for (i, t) in vars.iter().enumerate() {
                let (a, c) = (
                    g16.get(t.as_tensor()).expect("bf16 gradient"),
                    g32.get(t.as_tensor()).expect("fp32 gradient"),
                );
                let r = rel(a, c);
                assert!(
                    r < 2e-2,
                    "lora {with_lora} gelu {gelu}: gradient {i} differs by {r}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn layer_norm_matches_composite() -> Result<()> {
        for h in [7usize, 48] {
            let x = var(&[3, 11, h], 4, 2.0);
            let x = Var::from_tensor(&(x.as_tensor() + 0.7)?)?;
            let g = var(&[h], 5, 1.0);
            let b = var(&[h], 6, 1.0);
            let yf = layer_norm(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-12)?;
            let yc = ops::layer_norm_composite(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-12)?;
            assert!(
                max_abs_diff(&yf, &yc) < 1e-5,
                "h={h}: {}",
                max_abs_diff(&yf, &yc)
            );
            check_grads(&[&x, &g, &b], &yf, &yc, 2e-5);
        }
        Ok(())
    }

    #[test]
    fn layer_norm_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = rand(&[2, 5], 7, 1.0);
        let g = Tensor::from_vec(rand(&[5], 8, 1.0), 5, &dev)?;
        let b = Tensor::from_vec(rand(&[5], 9, 1.0), 5, &dev)?;
        let f = |xv: &[f32]| -> f32 {
            let x = Tensor::from_vec(xv.to_vec(), (2, 5), &dev).unwrap();
            let y = layer_norm(&x, &g, &b, 1e-5).unwrap();
            probe(&y, 10).to_scalar::<f32>().unwrap()
        };
        let x = Var::from_vec(x0.clone(), (2, 5), &dev)?;
        let grads = probe(&layer_norm(x.as_tensor(), &g, &b, 1e-5)?, 10).backward()?;
        let gx: Vec<f32> = grads.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1()?;
        for i in 0..x0.len() {
            let (mut a, mut c) = (x0.clone(), x0.clone());
            a[i] += 1e-2;
            c[i] -= 1e-2;
            let fd = (f(&a) - f(&c)) / 2e-2;
            assert!(
                (fd - gx[i]).abs() < 2e-2 * (1.0 + fd.abs()),
                "x[{i}]: fd {fd} vs {}",
                gx[i]
            );
        }
        Ok(())
    }

    #[test]
    fn gelu_matches_candle() -> Result<()> {
        let x = var(&[1000], 11, 3.0);
        let yf = gelu(x.as_tensor())?;
        let yc = x.as_tensor().gelu_erf()?;
        assert!(max_abs_diff(&yf, &yc) < 2e-6, "{}", max_abs_diff(&yf, &yc));
        check_grads(&[&x], &yf, &yc, 2e-5);
        Ok(())
    }

    #[test]
    fn dropout_matches_composite() -> Result<()> {
        let x = var(&[3, 70_000], 12, 1.0); // several parallel chunks
        let mut rng = ops::DropoutRng::new(42);
        let _ = rng.mask(&[17], 0.1, DType::F32, &Device::Cpu)?; // a non-zero base counter
        let mut r2 = rng.clone();
        let yc = ops::dropout_composite(x.as_tensor(), 0.1, Some(&mut rng))?;
        let (seed, base) = r2.reserve(x.elem_count());
        let yf = dropout(x.as_tensor(), 0.1, seed, base)?;
        assert_eq!(max_abs_diff(&yf, &yc), 0.0);
        check_grads(&[&x], &yf, &yc, 0.0);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn composite_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        nh: usize,
        scale: f64,
        drop: Option<&mut ops::DropoutRng>,
        p: f64,
    ) -> Result<Tensor> {
        let (b, l, h) = q.dims3()?;
        let dh = h / nh;
        let heads = |t: &Tensor| -> Result<Tensor> {
            t.reshape((b, l, nh, dh))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
        let bias = ((mask - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        let s = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
        let pr = ops::softmax_last(&s)?;
        let pr = ops::dropout_composite(&pr, p, drop)?;
        pr.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))
    }

    #[test]
    fn attention_matches_composite_with_mask_and_dropout() -> Result<()> {
        let (b, l, h, nh) = (3, 9, 12, 3);
        let q = var(&[b, l, h], 13, 1.0);
        let k = var(&[b, l, h], 14, 1.0);
        let v = var(&[b, l, h], 15, 1.0);
        let mut m = vec![1f32; b * l];
        m[l - 1] = 0.0; // padding in item 0
        m[2 * l - 3..2 * l].fill(0.0); // and in item 1
        let mask = Tensor::from_vec(m, (b, l), &Device::Cpu)?;
        let scale = 1.0 / ((h / nh) as f64).sqrt();
        for p in [0.0, 0.3] {
            let mut rng = ops::DropoutRng::new(5);
            let mut r2 = rng.clone();
            let yc = composite_attention(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                &mask,
                nh,
                scale,
                Some(&mut rng),
                p,
            )?;
            let drop = if p > 0.0 {
                let (s, base) = r2.reserve(b * nh * l * l);
                Some((s, base, p as f32))
            } else {
                None
            };
            let yf = attention(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                &mask,
                nh,
                scale,
                drop,
            )?;
            assert!(
                max_abs_diff(&yf, &yc) < 1e-5,
                "p={p}: {}",
                max_abs_diff(&yf, &yc)
            );
            check_grads(&[&q, &k, &v], &yf, &yc, 1e-5);
        }
        Ok(())
    }

    #[test]
    fn softmax_rows_match_composite() -> Result<()> {
        let x = Tensor::from_vec(rand(&[5, 33], 16, 3.0), (5, 33), &Device::Cpu)?;
        let mut s: Vec<f32> = x.flatten_all()?.to_vec1()?;
        softmax_rows(&mut s, &[0f32; 33], 33);
        let want = ops::softmax_last(&x)?;
        let got = Tensor::from_vec(s, (5, 33), &Device::Cpu)?;
        assert!(max_abs_diff(&got, &want) < 1e-6);
        let _ = want.sum_keepdim(D::Minus1)?;
        Ok(())
    }
}
