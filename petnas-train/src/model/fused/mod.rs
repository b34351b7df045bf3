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
//! (`linear,attention,layernorm,gelu,dropout,layer` or `all`) to measure each one or to debug.
//!
//! Determinism: every parallel loop splits work into chunks whose size does not depend on the
//! thread count, each output element is written by exactly one task, and reductions across chunks
//! are summed in chunk order, so a seed gives bit-identical results on a given CPU.
//! Dropout masks come from the same counter-based generator as [`super::ops::DropoutRng::mask`]
//! (`petnas_core::rng::counter_uniform`), drawn at the same counters, so fused and composite paths
//! drop the same elements.

use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, DType, Layout, Result, Storage, Tensor};
use gemm::Parallelism;

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
    /// A whole encoder layer as one op (every base weight frozen).
    Layer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Linear => "linear",
            Kind::Attention => "attention",
            Kind::LayerNorm => "layernorm",
            Kind::Gelu => "gelu",
            Kind::Dropout => "dropout",
            Kind::Layer => "layer",
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

thread_local! {
    /// Per-thread scratch buffers for [`with_scratch`].
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` on two scratch buffers of `len` values each, reused across calls on this thread (a
/// parallel task's temporaries, without an allocation and a zero-fill per task). Their contents
/// are whatever an earlier call left: `f` must write every value it reads.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (a, b) = &mut *bufs;
            for v in [&mut *a, &mut *b] {
                if v.len() < len {
                    v.resize(len, 0.0);
                }
            }
            f(&mut a[..len], &mut b[..len])
        }
        // Re-entered on this thread (not expected): fresh buffers.
        Err(_) => f(&mut vec![0f32; len], &mut vec![0f32; len]),
    })
}

/// `a += b` elementwise, in parallel (each element is one addition: deterministic).
fn add_assign(a: &mut [f32], b: &[f32]) {
    use rayon::prelude::*;
    a.par_chunks_mut(ELEMS_PER_TASK)
        .zip(b.par_chunks(ELEMS_PER_TASK))
        .for_each(|(ac, bc)| linear::add_into(ac, bc));
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

mod attention;
mod dropout;
mod gelu;
mod layer;
mod layernorm;
mod linear;

pub use attention::*;
pub use dropout::*;
pub use gelu::*;
pub use layer::*;
pub use layernorm::*;
pub use linear::*;

#[cfg(test)]
mod tests;
