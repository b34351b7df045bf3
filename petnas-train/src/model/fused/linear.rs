//! The fused PET linear layer and its small-matrix helpers.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// PET linear: y = act(x·Wᵀ + b + (x·U)·Vᵀ − (x·U₀)·V₀ᵀ) with a frozen W.

/// Gradients of a PET linear op: (dx when wanted, db, d[U; V]).
pub(super) type LinearGrads = (Option<Vec<f32>>, Vec<f32>, Vec<f32>);

/// A thin-matrix kernel: (a, k, m, out) for [`rows_times_small`].
type RowsKernel = fn(&[f32], usize, &[f32], &mut [f32]);
/// A thin-matrix kernel: (a, rows, cols, first column, b, out) for [`transposed_times_small`].
type TransposedKernel = fn(&[f32], usize, usize, usize, &[f32], &mut [f32]);

/// What a PET linear's forward applies to `z = x·W'ᵀ + b`; on AMX tiles, in the GEMM's
/// store as each block of products leaves the accumulators.
#[derive(Clone, Copy)]
pub(super) enum After<'a> {
    /// `z` itself.
    Nothing,
    /// GELU (`z` is kept for backward).
    Gelu,
    /// `drop(z) + residual`: the dropout (mixed seed, base counter, p) at counters `base +`
    /// element index, then the residual added (a post-LN block's `drop(dense(·)) + x`).
    DropoutAdd(Option<(u64, u64, f32)>, &'a [f32]),
}

/// What a dx GEMM applies to its products `g·W'` on their way out: on packed bf16 weights, in
/// the GEMM's store as each block leaves the accumulators; otherwise as a pass after it, with
/// the same arithmetic per element either way.
#[derive(Clone, Copy)]
pub(super) enum DxThen<'a> {
    /// `dx` itself.
    Nothing,
    /// `dx ⊙ GELU'(z)` for the GELU whose pre-activation `z` [n, in] produced this linear's
    /// input.
    Gelu(&'a [f32]),
    /// `dx + prev`: the gradient of an input that feeds other paths too, `prev` [n, in] the
    /// sum of what they sent (one addition per element, as a separate add would do it).
    Add(&'a [f32]),
}

/// Prefetches the [rows × cols] block at `p` (row stride `ld`) towards L2, so that a store
/// that reads it finds it there after the block's products.
#[inline]
fn prefetch_block(p: *const f32, ld: usize, rows: usize, cols: usize) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        for i in 0..rows {
            let row = p.wrapping_add(i * ld);
            let mut j = 0;
            while j < cols {
                _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(j) as *const i8);
                j += 16;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, ld, rows, cols);
}

/// The bf16 forward's store: `z = products + b`, then [`After`], written from the AMX
/// accumulators' copy straight into `z` (and `a`).
struct BiasStore<'a> {
    a: SendPtr,
    o: usize,
    b: &'a [f32],
    after: After<'a>,
}

impl petnas_amx::Store for BiasStore<'_> {
    fn prepare(&self, r0: usize, rows: usize, c0: usize, cols: usize) {
        if let After::DropoutAdd(_, res) = self.after {
            prefetch_block(res[r0 * self.o + c0..].as_ptr(), self.o, rows, cols);
        }
    }

    fn store(
        &self,
        r0: usize,
        rows: usize,
        c0: usize,
        cols: usize,
        src: &[f32],
        lds: usize,
        z: *mut f32,
        ldz: usize,
    ) {
        let o = self.o;
        debug_assert_eq!(ldz, o);
        for i in 0..rows {
            let at = (r0 + i) * o + c0;
            // SAFETY: z is the GEMM's C [n, o]; regions are disjoint and each is stored once.
            let zr = unsafe { std::slice::from_raw_parts_mut(z.add(at), cols) };
            sum_into(zr, &src[i * lds..i * lds + cols], &self.b[c0..c0 + cols]);
            match self.after {
                After::Nothing => {}
                After::Gelu => {
                    let ar = unsafe {
                        std::slice::from_raw_parts_mut(
                            (self.a.0 as *mut std::mem::MaybeUninit<f32>).add(at),
                            cols,
                        )
                    };
                    gelu_fwd_chunk(zr, ar);
                }
                After::DropoutAdd(drop, res) => {
                    if let Some((sm, base, p)) = drop {
                        dropout_chunk_in_place(zr, sm, base + at as u64, p, 1.0 / (1.0 - p));
                    }
                    add_into(zr, &res[at..at + cols]);
                }
            }
        }
    }
}

impl DxThen<'_> {
    /// The [n, in] operand of the elementwise step, if any (what a store prefetches).
    fn operand(&self) -> Option<&[f32]> {
        match *self {
            DxThen::Nothing => None,
            DxThen::Gelu(z) => Some(z),
            DxThen::Add(prev) => Some(prev),
        }
    }

    /// The step as a pass over a finished `dx` (paths without a store hook).
    fn after(self, mut dx: Vec<f32>) -> Vec<f32> {
        match self {
            DxThen::Nothing => dx,
            DxThen::Gelu(z) => gelu_backward(z, &dx),
            DxThen::Add(prev) => {
                add_assign(&mut dx, prev);
                dx
            }
        }
    }
}

/// The store of a dx GEMM with a [`DxThen`] step, its operand prefetched per region: `Gelu(z)`
/// writes `products ⊙ GELU'(z)` ([`gelu_bwd_chunk`]'s arithmetic), `Add(prev)` writes
/// `products + prev` (one addition per element: the bits of a separate add pass). The operand
/// is a buffer of its own, so the store never reads C, whatever the backend.
struct DxStore<'a> {
    k: usize,
    then: DxThen<'a>,
}

impl petnas_amx::Store for DxStore<'_> {
    fn prepare(&self, r0: usize, rows: usize, c0: usize, cols: usize) {
        if let Some(x) = self.then.operand() {
            prefetch_block(x[r0 * self.k + c0..].as_ptr(), self.k, rows, cols);
        }
    }

    fn store(
        &self,
        r0: usize,
        rows: usize,
        c0: usize,
        cols: usize,
        src: &[f32],
        lds: usize,
        dx: *mut f32,
        ldx: usize,
    ) {
        debug_assert_eq!(ldx, self.k);
        for i in 0..rows {
            let at = (r0 + i) * self.k + c0;
            let s = &src[i * lds..i * lds + cols];
            // SAFETY: dx is the GEMM's C [n, k]; disjoint regions, each stored once, every
            // element written (by the kernels below, which only write `d`) before anything
            // reads it.
            let d = unsafe { std::slice::from_raw_parts_mut(dx.add(at), cols) };
            match self.then {
                DxThen::Gelu(z) => {
                    let d = unsafe { &mut *(d as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
                    gelu_bwd_chunk(&z[at..at + cols], s, d)
                }
                DxThen::Add(prev) => sum_into(d, s, &prev[at..at + cols]),
                DxThen::Nothing => d.copy_from_slice(s),
            }
        }
    }
}

/// `z ← drop(z) + res`, as [`After::DropoutAdd`] does in the store (the same arithmetic per
/// element: the dropout pass, then the add).
fn dropout_add(z: &mut [f32], drop: Option<(u64, u64, f32)>, res: &[f32]) {
    if let Some((sm, base, p)) = drop {
        super::dropout::dropout_in_place(z, sm, base, p);
    }
    add_assign(z, res);
}

/// A frozen weight `W` [out, in] in bf16, packed once for the GEMMs of both directions.
pub struct PackedWeight {
    out: usize,
    inp: usize,
    kind: Packed,
}

enum Packed {
    /// AMX, or AVX512-BF16 where it outruns fp32 (AMD): `fwd` is `Wᵀ` (for `y = x·Wᵀ`), `bwd`
    /// is `W` (for `dx = g·W`, only when a backward follows), in petnas-amx's tile layout.
    Tiles {
        fwd: petnas_amx::PackedB,
        bwd: Option<petnas_amx::PackedB>,
    },
    /// Neither: `W` rounded to bf16 and kept as f32 [out, in], for gemm's f32 kernels on
    /// bf16-rounded activations. The same arithmetic as bf16 × bf16 → fp32 (a product of two
    /// bf16 values is exact in f32), at fp32 speed. Measured against petnas-amx's other paths:
    /// its portable kernel ran the frozen matmuls about 3× slower than `--precision fp32` on an
    /// AVX2 machine, and its AVX512-BF16 kernel (`vdpbf16ps`) ran at 74–82 GFLOP/s per thread
    /// against gemm f32's 124–166 on a Xeon without AMX
    /// (`reports/bench/petnas-amx-kernels-xeon-avx512bf16-noamx.jsonl`): `vdpbf16ps` issues on
    /// one port where fp32 FMAs issue on two, so it brings no speed over fp32 there (on AMD it
    /// runs at twice gemm f32's rate, and packed weights are used: [`bf16_on_tiles`]).
    Rounded(Vec<f32>),
}

/// `x` rounded to bf16 (nearest even), kept as f32.
fn round_bf16(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK))
        .for_each(|(o, c)| {
            for (o, &v) in o.iter_mut().zip(c) {
                *o = petnas_amx::bf16_to_f32(petnas_amx::f32_to_bf16_rne(v));
            }
        });
    out
}

impl PackedWeight {
    /// Packs `w` [out, in] row-major (rounded to bf16, nearest even).
    pub fn new(w: &[f32], out: usize, inp: usize, with_backward: bool) -> Self {
        Self::with_layout(w, out, inp, with_backward, bf16_on_tiles())
    }

    /// [`PackedWeight::new`] in petnas-amx's tile layout (`tiles`) or as rounded f32 values,
    /// whatever the CPU (the tile layout then runs petnas-amx's portable kernel).
    pub(super) fn with_layout(
        w: &[f32],
        out: usize,
        inp: usize,
        with_backward: bool,
        tiles: bool,
    ) -> Self {
        let kind = if tiles {
            let fwd = petnas_amx::PackedB::pack(w, inp, out, 1, inp as isize);
            let bwd =
                with_backward.then(|| petnas_amx::PackedB::pack(w, out, inp, inp as isize, 1));
            Packed::Tiles { fwd, bwd }
        } else {
            Packed::Rounded(round_bf16(w))
        };
        Self { out, inp, kind }
    }

    /// Packs the weight whose rows `fill(r0, buf)` writes 32 at a time, in petnas-amx's tile
    /// layout, without storing it whole ([`petnas_amx::PackedB::pack_rows_both`]).
    pub(super) fn from_rows(
        out: usize,
        inp: usize,
        with_backward: bool,
        fill: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) -> Self {
        let (fwd, bwd) = petnas_amx::PackedB::pack_rows_both(out, inp, with_backward, fill);
        Self {
            out,
            inp,
            kind: Packed::Tiles { fwd, bwd },
        }
    }

    /// Packs a frozen weight tensor (CPU, f32).
    pub fn from_tensor(w: &Tensor) -> Result<Self> {
        let (o, k) = w.dims2()?;
        with_slice(&w.contiguous()?, "bf16 pack", |s| {
            Ok(Self::new(s, o, k, true))
        })
    }

    /// `y += bf16(x)·bf16(W)ᵀ` for `x` [n, in], `y` [n, out].
    pub(super) fn forward(&self, n: usize, x: &[f32], y: &mut [f32]) {
        let (o, k) = (self.out, self.inp);
        match &self.kind {
            Packed::Tiles { fwd, .. } => petnas_amx::gemm_bf16(n, o, k, x, k, fwd, y, o, true),
            Packed::Rounded(w) => unsafe {
                let xr = round_bf16(&x[..n * k]);
                gemm_f32(
                    n,
                    o,
                    k,
                    y.as_mut_ptr(),
                    o as isize,
                    1,
                    true,
                    Mat(xr.as_ptr(), k as isize, 1),
                    Mat(w.as_ptr(), 1, k as isize),
                    1.0,
                    parallelism(),
                );
            },
        }
    }

    /// `z = bf16(x)·bf16(W)ᵀ + b` for `x` [n, in] and, with `gelu`, `(z, GELU(z))`; else `(z,
    /// None)`. In the tile layout the bias add and the GELU run in the GEMM's store, on each
    /// block of products as it leaves the accumulators; in the rounded-f32 layout `z` starts
    /// from the bias rows and the GELU is a separate pass.
    pub(super) fn forward_bias(
        &self,
        n: usize,
        x: &[f32],
        b: &[f32],
        after: After<'_>,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let (o, k) = (self.out, self.inp);
        let gelu = matches!(after, After::Gelu);
        if let After::DropoutAdd(_, res) = after {
            assert_eq!(res.len(), n * o, "bf16 forward: residual length");
        }
        match &self.kind {
            Packed::Tiles { fwd, .. } => {
                let mut z: Vec<f32> = Vec::with_capacity(n * o);
                let mut a: Vec<f32> = Vec::with_capacity(if gelu { n * o } else { 0 });
                let st = BiasStore {
                    a: SendPtr(a.as_mut_ptr()),
                    o,
                    b,
                    after,
                };
                // SAFETY: the store writes every element of z (and with GELU of a), each once,
                // before anything reads them.
                unsafe { z.set_len(n * o) };
                petnas_amx::gemm_bf16_store(n, o, k, x, k, fwd, &mut z, o, false, &st);
                if gelu {
                    unsafe { a.set_len(n * o) };
                }
                (z, gelu.then_some(a))
            }
            Packed::Rounded(_) => {
                let mut z = Vec::with_capacity(n * o);
                for _ in 0..n {
                    z.extend_from_slice(b);
                }
                self.forward(n, x, &mut z);
                let a = gelu.then(|| gelu_forward(&z));
                if let After::DropoutAdd(drop, res) = after {
                    dropout_add(&mut z, drop, res);
                }
                (z, a)
            }
        }
    }

    /// `bf16(g)·bf16(W)` for `g` [n, out]: dx [n, in]; `None` if packed without backward.
    #[cfg(test)]
    pub(super) fn backward(&self, n: usize, g: &[f32]) -> Option<Vec<f32>> {
        self.backward_then(n, g, DxThen::Nothing)
    }

    /// [`PackedWeight::backward`], then [`DxThen`]: with `Gelu(z)`, `dx ← dx ⊙ GELU'(z)` (the
    /// gradient through the GELU that produced this linear's input); with `Add(prev)`, `dx ←
    /// dx + prev`. On packed weights in the GEMM's store, with the same elementwise arithmetic
    /// as [`gelu_backward`] and as an add pass, so the same bits.
    pub(super) fn backward_then(&self, n: usize, g: &[f32], then: DxThen<'_>) -> Option<Vec<f32>> {
        let (o, k) = (self.out, self.inp);
        match then {
            DxThen::Gelu(z) => assert_eq!(z.len(), n * k, "bf16 backward: GELU input length"),
            DxThen::Add(p) => assert_eq!(p.len(), n * k, "bf16 backward: summand length"),
            DxThen::Nothing => {}
        }
        let mut dx: Vec<f32> = Vec::with_capacity(n * k);
        match &self.kind {
            Packed::Tiles { bwd, .. } => {
                let bwd = bwd.as_ref()?;
                // SAFETY: the non-accumulating GEMM writes every element of dx.
                unsafe { dx.set_len(n * k) };
                match then {
                    DxThen::Nothing => petnas_amx::gemm_bf16(n, k, o, g, o, bwd, &mut dx, k, false),
                    then => {
                        let st = DxStore { k, then };
                        petnas_amx::gemm_bf16_store(n, k, o, g, o, bwd, &mut dx, k, false, &st)
                    }
                }
                return Some(dx);
            }
            Packed::Rounded(_) => {}
        }
        dx.resize(n * k, 0.0);
        match &self.kind {
            Packed::Tiles { .. } => unreachable!("handled above"),
            Packed::Rounded(w) => unsafe {
                let gr = round_bf16(&g[..n * o]);
                gemm_f32(
                    n,
                    k,
                    o,
                    dx.as_mut_ptr(),
                    k as isize,
                    1,
                    false,
                    Mat(gr.as_ptr(), o as isize, 1),
                    Mat(w.as_ptr(), k as isize, 1),
                    1.0,
                    parallelism(),
                );
            },
        }
        Some(then.after(dx))
    }
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.kind {
            Packed::Tiles { .. } => "tiles",
            Packed::Rounded(_) => "rounded f32",
        };
        write!(f, "PackedWeight(bf16 [{} × {}], {how})", self.out, self.inp)
    }
}

/// Whether the CPU bf16 matmuls run on petnas-amx's packed bf16 weights: on AMX tiles, or with
/// `vdpbf16ps` where that outruns fp32 FMAs ([`petnas_amx::avx512bf16_outruns_fp32`]: AMD);
/// otherwise they run gemm's f32 kernels on bf16-rounded values (see [`Packed::Rounded`]).
fn bf16_on_tiles() -> bool {
    match petnas_amx::backend() {
        "amx" => true,
        "avx512bf16" => petnas_amx::avx512bf16_outruns_fp32(),
        _ => false,
    }
}

/// The path the frozen matmuls of `--precision bf16` take on this CPU, as benchmarks and
/// `verify` report it: "amx", "avx512bf16", or "gemm-f32 on bf16-rounded values".
pub fn bf16_path() -> &'static str {
    if bf16_on_tiles() {
        petnas_amx::backend()
    } else {
        "gemm-f32 on bf16-rounded values"
    }
}

/// The path of the frozen matmuls on this CPU in `precision`, as `bench` and run records name
/// it: "gemm-f32" in fp32, [`bf16_path`] in bf16.
pub fn matmul_path(precision: petnas_core::record::Precision) -> &'static str {
    match precision {
        petnas_core::record::Precision::Fp32 => "gemm-f32",
        petnas_core::record::Precision::Bf16 => bf16_path(),
    }
}

/// `None` when `--precision bf16` runs on AMX tiles here; otherwise a one-line notice of the path
/// it takes instead.
pub fn bf16_notice() -> Option<String> {
    const NO_TILES: &str = "no AMX tiles here (the CPU lacks them or Linux refused them)";
    let rounded = "the frozen matmuls run gemm's f32 kernels on bf16-rounded values: bf16 numerics at fp32 speed";
    match (petnas_amx::backend(), bf16_on_tiles()) {
        ("amx", _) => None,
        ("avx512bf16", true) => Some(format!("--precision bf16: {NO_TILES}; the frozen matmuls run AVX512-BF16 (vdpbf16ps), bf16 × bf16 → fp32, which outruns fp32 FMAs on this CPU")),
        ("avx512bf16", false) => Some(format!("--precision bf16: {NO_TILES}, and AVX512-BF16 is no faster than fp32 FMAs on this CPU; {rounded}")),
        _ => Some(format!("--precision bf16: {NO_TILES}; {rounded}")),
    }
}

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
pub(super) struct PetLinearOp {
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
    /// The op for a frozen `weight` [out, in] with LoRA of `rank` (0: none) and the optional
    /// frozen offset factors; `keep`: keep what backward needs.
    pub(super) fn new(
        weight: &Tensor,
        rank: usize,
        offset: Option<(&Tensor, &Tensor)>,
        gelu: bool,
        bf16: Option<Option<Arc<PackedWeight>>>,
        keep: bool,
    ) -> Result<Self> {
        Ok(Self {
            w: weight.contiguous()?,
            bf16: bf16.is_some(),
            packed: bf16.flatten(),
            saved_packed: Mutex::new(None),
            rank,
            offset: match offset {
                Some((u0, v0)) => Some((u0.contiguous()?, v0.contiguous()?)),
                None => None,
            },
            gelu,
            saved: Mutex::new(None),
            saved_w: Mutex::new(None),
            keep,
        })
    }

    /// Forward on slices: `uv` empty without LoRA.
    pub(super) fn forward(
        &self,
        x: &[f32],
        n: usize,
        k: usize,
        b: &[f32],
        uv: &[f32],
    ) -> Result<Vec<f32>> {
        self.forward_then(x, n, k, b, uv, None)
    }

    /// [`PetLinearOp::forward`], then with `residual = Some((dropout, r))`, `drop(y) + r`
    /// (no GELU): in the GEMM's store on AMX tiles, as separate passes otherwise, with the
    /// same arithmetic per element either way.
    pub(super) fn forward_then(
        &self,
        x: &[f32],
        n: usize,
        k: usize,
        b: &[f32],
        uv: &[f32],
        residual: Option<(Option<(u64, u64, f32)>, &[f32])>,
    ) -> Result<Vec<f32>> {
        let (o, k2) = self.w.dims2()?;
        if residual.is_some() && self.gelu {
            bail!("fused linear: a residual after a GELU is not a post-LN block");
        }
        if let Some((_, r)) = residual {
            if r.len() != n * o {
                bail!("fused linear: residual of {} for [{n}, {o}]", r.len());
            }
        }
        if k != k2 || b.len() != o || uv.len() != (k + o) * self.rank {
            bail!(
                "fused linear: x [{n}, {k}], W [{o}, {k2}], b [{}], uv {} (rank {})",
                b.len(),
                uv.len(),
                self.rank
            );
        }
        let (ks, os) = (k as isize, o as isize);
        let xm = Mat(x.as_ptr(), ks, 1);
        // With LoRA, fold the factors into the weight: W' = W + V·Uᵀ (− V₀·U₀ᵀ) costs out·in·r,
        // while applying them to the activations costs n·(in + out)·r in two skinny, memory-bound
        // GEMMs plus a pass over y; backward reuses W' for dx = g·W'.
        let lora = self.rank > 0 || self.offset.is_some();
        if self.bf16 {
            let packed = if !lora {
                match &self.packed {
                    Some(p) => p.clone(),
                    None => Arc::new(PackedWeight::from_tensor(&self.w)?),
                }
            } else if bf16_on_tiles() {
                Arc::new(self.packed_effective_weight(k, o, uv)?)
            } else {
                let w = self.effective_weight(k, o, uv)?.expect("LoRA or offset");
                Arc::new(PackedWeight::new(&w, o, k, self.keep))
            };
            let after = match residual {
                Some((d, r)) => After::DropoutAdd(d, r),
                None if self.gelu => After::Gelu,
                None => After::Nothing,
            };
            let (z, a) = packed.forward_bias(n, x, b, after);
            if self.keep {
                *self
                    .saved_packed
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))? =
                    Some(packed);
            }
            return match a {
                Some(a) => {
                    if self.keep {
                        *self.saved.lock().map_err(|_| {
                            candle_core::Error::Msg("fused linear: poisoned lock".into())
                        })? = Some(z);
                    }
                    Ok(a)
                }
                None => Ok(z),
            };
        }
        let w_eff = self.effective_weight(k, o, uv)?;
        // Start from the bias rows and let the GEMMs accumulate into them: one pass over y.
        let mut y = Vec::with_capacity(n * o);
        for _ in 0..n {
            y.extend_from_slice(b);
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
        let mut y = self.activate(y)?;
        if let Some((d, r)) = residual {
            dropout_add(&mut y, d, r);
        }
        Ok(y)
    }

    /// The output from the pre-activation `y`: GELU (keeping `y` for backward) or `y` itself.
    fn activate(&self, y: Vec<f32>) -> Result<Vec<f32>> {
        if !self.gelu {
            return Ok(y);
        }
        let a = gelu_forward(&y);
        if self.keep {
            *self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))? =
                Some(y);
        }
        Ok(a)
    }

    /// `W + V·Uᵀ − V₀·U₀ᵀ` packed for AMX in both directions, computed 32 rows at a time
    /// inside the packing (each block in cache) instead of stored whole and read back twice.
    /// Row `j` is `W[j] + Σ_q V[j, q]·Uᵀ[q] − Σ_q V₀[j, q]·U₀ᵀ[q]`, summed in that order.
    fn packed_effective_weight(&self, k: usize, o: usize, uv: &[f32]) -> Result<PackedWeight> {
        let r = self.rank;
        let (u, v) = uv.split_at(k * r);
        let transpose = |m: &[f32], rows: usize, cols: usize| -> Vec<f32> {
            let mut t = vec![0f32; rows * cols];
            for i in 0..rows {
                for j in 0..cols {
                    t[j * rows + i] = m[i * cols + j];
                }
            }
            t
        };
        let ut = transpose(u, k, r); // [r, in]
        let off = match &self.offset {
            Some((u0, v0)) => {
                let r0 = u0.dim(1)?;
                let u0 = with_slice(u0, "linear", |s| Ok(s.to_vec()))?;
                let v0 = with_slice(v0, "linear", |s| Ok(s.to_vec()))?;
                Some((transpose(&u0, k, r0), v0, r0))
            }
            None => None,
        };
        with_slice(&self.w, "linear", |w| {
            let fill = |r0: usize, buf: &mut [f32]| {
                for (i, dst) in buf.chunks_exact_mut(k).enumerate() {
                    let row = r0 + i;
                    dst.copy_from_slice(&w[row * k..(row + 1) * k]);
                    for q in 0..r {
                        axpy(dst, v[row * r + q], &ut[q * k..(q + 1) * k]);
                    }
                    if let Some((u0t, v0, r0n)) = &off {
                        for q in 0..*r0n {
                            axpy(dst, -v0[row * r0n + q], &u0t[q * k..(q + 1) * k]);
                        }
                    }
                }
            };
            Ok(PackedWeight::from_rows(o, k, self.keep, &fill))
        })
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
    pub(super) fn backward(
        &self,
        x: &[f32],
        n: usize,
        k: usize,
        uv: &[f32],
        grad: &[f32],
        want_x: bool,
    ) -> Result<LinearGrads> {
        self.backward_fused(x, n, k, uv, grad, want_x, false, DxThen::Nothing)
    }

    /// The pre-activation `z` this op's GELU saved in forward (for [`PetLinearOp::backward_fused`]
    /// of the linear that reads the GELU's output); `None` without GELU or before forward.
    pub(super) fn saved_pre_activation(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, Option<Vec<f32>>>> {
        self.saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))
    }

    /// Whether dx runs on packed bf16 weights (so [`PetLinearOp::backward_fused`] can take the
    /// GELU of the layer below into the dx GEMM's store).
    pub(super) fn bf16_tiles(&self) -> bool {
        self.bf16 && bf16_on_tiles()
    }

    /// [`PetLinearOp::backward`] with fusions of the bf16 path: `grad_through_gelu` says `grad`
    /// is already the gradient of this op's pre-activation (its GELU's backward ran in the store
    /// of the layer above), and `dx_then` is applied to dx, in the dx GEMM's store on packed
    /// weights: `Gelu(z)` (bf16 only) for the GELU that produced `x`, `Add(prev)` (either
    /// precision; after the GEMM in fp32) for an `x` that feeds other paths too.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_fused(
        &self,
        x: &[f32],
        n: usize,
        k: usize,
        uv: &[f32],
        grad: &[f32],
        want_x: bool,
        grad_through_gelu: bool,
        dx_then: DxThen<'_>,
    ) -> Result<LinearGrads> {
        let o = self.w.dim(0)?;
        let (ks, os) = (k as isize, o as isize);
        let par = parallelism();
        if matches!(dx_then, DxThen::Gelu(_)) && !(want_x && self.bf16) {
            bail!("fused linear: a GELU in the dx store needs the bf16 path and dx");
        }
        if let DxThen::Add(prev) = dx_then {
            if !want_x || prev.len() != n * k {
                bail!(
                    "fused linear: a summand of {} for dx [{n}, {k}]",
                    prev.len()
                );
            }
        }
        // Through the GELU first: g ← g ⊙ gelu'(z).
        let gz_own;
        let g: &[f32] = if self.gelu && !grad_through_gelu {
            let guard = self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))?;
            let Some(z) = guard.as_ref() else {
                bail!("fused linear: backward without the saved pre-activation")
            };
            gz_own = gelu_backward(z, grad);
            &gz_own
        } else {
            grad
        };
        // bf16: the bias and LoRA gradients in one blocked pass (fp32 keeps its own sums).
        let blocked = if self.bf16 && self.rank > 0 {
            lora_grads_blocked(x, g, n, k, o, uv, self.rank)
        } else {
            None
        };
        let db = match &blocked {
            Some(_) => Vec::new(),
            None => column_sums(g, n, o),
        };
        let gm = Mat(g.as_ptr(), os, 1);
        let dx = if want_x && self.bf16 {
            let saved = self
                .saved_packed
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused linear: poisoned lock".into()))?;
            let Some(dx) = saved.as_ref().and_then(|p| p.backward_then(n, g, dx_then)) else {
                bail!("fused linear: backward without the packed weight")
            };
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
            // Gelu was refused above: this path adds `prev` after the GEMM, if anything.
            Some(dx_then.after(dx))
        } else {
            None
        };
        if let Some((db, duv)) = blocked {
            return Ok((dx, db, duv));
        }
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
    match rows_kernel(r) {
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
/// in a fixed order) hide the FMA latency. (Four rows at a time, 16 independent chains, measured
/// no faster: the kernel is bound by reading `a`, not by the chains.)
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

/// [`rows_times_small_r`] with AVX-512 intrinsics, for CPUs at `simd_level() == 4`, `ROWS` rows
/// at a time (their chains independent, each `m` load shared by them). Rank 8: one register
/// holds two of the portable kernel's partial sums side by side (lanes 0–7 the sum of
/// `j ≡ 0 mod 4`, lanes 8–15 of `j ≡ 1`, and a second register `j ≡ 2, 3`), so each step of four
/// `j` is two multiplies and two adds on `m`'s rows `j..j+4` as two registers, with `a`'s four
/// values spread across the halves by one permute each. Rank 16: one register per partial sum,
/// as in the portable kernel. Either way every partial sum takes the same products in the same
/// order, as a multiply then an add (no FMA), and they are added as `(s0 + s1) + (s2 + s3)`, so
/// the bits equal the portable kernel's; a test checks it. The portable kernel spent most of
/// its time on bounds checks and on 8-lane chains of dependent adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_times_small_avx512<const R: usize>(a: &[f32], k: usize, m: &[f32], out: &mut [f32]) {
    const ROWS: usize = 4;
    let rows = out.len() / R;
    assert!((R == 8 || R == 16) && a.len() >= rows * k && m.len() >= k * R);
    let mut i = 0;
    while i + ROWS <= rows {
        rows_block_avx512::<R, ROWS>(
            a.as_ptr().add(i * k),
            k,
            m.as_ptr(),
            out.as_mut_ptr().add(i * R),
        );
        i += ROWS;
    }
    while i < rows {
        rows_block_avx512::<R, 1>(
            a.as_ptr().add(i * k),
            k,
            m.as_ptr(),
            out.as_mut_ptr().add(i * R),
        );
        i += 1;
    }
}

/// `N` rows of [`rows_times_small_avx512`] from `a` (row stride `k`) into `out` (row stride `R`).
/// The caller checks the bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn rows_block_avx512<const R: usize, const N: usize>(
    a: *const f32,
    k: usize,
    m: *const f32,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let k4 = k / 4 * 4;
    // s[0..4] per row: the four partial sums (rank 8: s[0] = sums 0|1, s[1] = sums 2|3).
    let mut s = [[_mm512_setzero_ps(); 4]; N];
    if R == 8 {
        let idx01 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let idx23 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
        let mut j = 0;
        while j < k4 {
            let m01 = _mm512_loadu_ps(m.add(j * 8));
            let m23 = _mm512_loadu_ps(m.add(j * 8 + 16));
            for (r, sr) in s.iter_mut().enumerate() {
                let av = _mm512_castps128_ps512(_mm_loadu_ps(a.add(r * k + j)));
                let p01 = _mm512_permutexvar_ps(idx01, av);
                let p23 = _mm512_permutexvar_ps(idx23, av);
                sr[0] = _mm512_add_ps(sr[0], _mm512_mul_ps(p01, m01));
                sr[1] = _mm512_add_ps(sr[1], _mm512_mul_ps(p23, m23));
            }
            j += 4;
        }
        for (r, sr) in s.iter().enumerate() {
            let mut s0 = _mm512_castps512_ps256(sr[0]);
            let s1 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sr[0])));
            let s2 = _mm512_castps512_ps256(sr[1]);
            let s3 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sr[1])));
            for j in k4..k {
                let av = _mm256_set1_ps(*a.add(r * k + j));
                s0 = _mm256_add_ps(s0, _mm256_mul_ps(av, _mm256_loadu_ps(m.add(j * 8))));
            }
            let t = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
            _mm256_storeu_ps(out.add(r * 8), t);
        }
    } else {
        let mut j = 0;
        while j < k4 {
            let mj = [
                _mm512_loadu_ps(m.add(j * 16)),
                _mm512_loadu_ps(m.add(j * 16 + 16)),
                _mm512_loadu_ps(m.add(j * 16 + 32)),
                _mm512_loadu_ps(m.add(j * 16 + 48)),
            ];
            for (r, sr) in s.iter_mut().enumerate() {
                for q in 0..4 {
                    let av = _mm512_set1_ps(*a.add(r * k + j + q));
                    sr[q] = _mm512_add_ps(sr[q], _mm512_mul_ps(av, mj[q]));
                }
            }
            j += 4;
        }
        for (r, sr) in s.iter_mut().enumerate() {
            for j in k4..k {
                let av = _mm512_set1_ps(*a.add(r * k + j));
                sr[0] = _mm512_add_ps(sr[0], _mm512_mul_ps(av, _mm512_loadu_ps(m.add(j * 16))));
            }
            let t = _mm512_add_ps(_mm512_add_ps(sr[0], sr[1]), _mm512_add_ps(sr[2], sr[3]));
            _mm512_storeu_ps(out.add(r * 16), t);
        }
    }
}

/// [`rows_times_small`] as a plain loop, one row at a time with the kernels' four partial sums:
/// what the kernels must equal bit for bit.
#[cfg(test)]
pub(super) fn rows_times_small_reference(a: &[f32], k: usize, m: &[f32], r: usize) -> Vec<f32> {
    let rows = a.len() / k;
    let mut out = vec![0f32; rows * r];
    for i in 0..rows {
        for t in 0..r {
            let mut acc = [0f32; 4];
            for j in 0..k {
                let q = if j < k / 4 * 4 { j % 4 } else { 0 };
                acc[q] += a[i * k + j] * m[j * r + t];
            }
            out[i * r + t] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }
    out
}

/// [`rows_times_small`] for tests.
#[cfg(test)]
pub(super) fn rows_times_small_for_test(a: &[f32], k: usize, m: &[f32], r: usize) -> Vec<f32> {
    let mut out = vec![0f32; a.len() / k * r];
    rows_times_small(a, k, m, r, &mut out);
    out
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
    match transposed_kernel(r) {
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

/// Output columns per task of [`transposed_times_small`]: a multiple of the AVX-512 kernel's
/// passes (48 columns at rank 8, 16 at rank 16).
const COLS_PER_TASK: usize = 96;

/// The thin-matrix kernel of [`rows_times_small`] for rank `r`, if there is one.
fn rows_kernel(r: usize) -> Option<RowsKernel> {
    #[cfg(target_arch = "x86_64")]
    let wide = simd_level() == 4;
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    match (r, wide) {
        #[cfg(target_arch = "x86_64")]
        (8, true) => Some(|a, k, m, out| unsafe { rows_times_small_avx512::<8>(a, k, m, out) }),
        #[cfg(target_arch = "x86_64")]
        (16, true) => Some(|a, k, m, out| unsafe { rows_times_small_avx512::<16>(a, k, m, out) }),
        (8, _) => Some(rows_times_small_8),
        (16, _) => Some(rows_times_small_16),
        _ => None,
    }
}

/// Rows per block of [`lora_grads_blocked`]: a block of `g` ([128, 1536] f32 = 768 KiB at
/// most here) and of `x` stay in L2 between the passes that read them.
const LORA_ROWS_PER_BLOCK: usize = 128;

/// The bias and LoRA gradients of the bf16 path in one pass over blocks of rows: per block of
/// rows, `xu = x·U`, `gxu = g·V`, `db += Σ g`, `dV += gᵀ·xu`, `dU += xᵀ·gxu`, each block's
/// `x` and `g` read from memory once and reused from cache (the fp32 path makes four whole
/// passes, one per product, and one more for `db`). Blocks are fixed by `n` and their partial
/// sums added in block order, so the result does not depend on the thread count. Returns
/// `None` when rank `r` has no thin kernels (the caller then takes the fp32 path's products).
#[allow(clippy::too_many_arguments)]
fn lora_grads_blocked(
    x: &[f32],
    g: &[f32],
    n: usize,
    k: usize,
    o: usize,
    uv: &[f32],
    r: usize,
) -> Option<(Vec<f32>, Vec<f32>)> {
    let rk = rows_kernel(r)?;
    let tk = transposed_kernel(r)?;
    let (u, v) = uv.split_at(k * r);
    let blocks = n.div_ceil(LORA_ROWS_PER_BLOCK);
    // Per block: [db (o) | dU (k·r) | dV (o·r)].
    let len = o + (k + o) * r;
    let partial: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|bi| {
            let r0 = bi * LORA_ROWS_PER_BLOCK;
            let rows = (n - r0).min(LORA_ROWS_PER_BLOCK);
            let xb = &x[r0 * k..(r0 + rows) * k];
            let gb = &g[r0 * o..(r0 + rows) * o];
            let mut out = vec![0f32; len];
            let (db, duv) = out.split_at_mut(o);
            let (du, dv) = duv.split_at_mut(k * r);
            for row in gb.chunks_exact(o) {
                add_into(db, row);
            }
            let mut xu = vec![0f32; rows * r];
            let mut gxu = vec![0f32; rows * r];
            rk(xb, k, u, &mut xu);
            rk(gb, o, v, &mut gxu);
            for (t, oc) in dv.chunks_mut(COLS_PER_TASK * r).enumerate() {
                tk(gb, rows, o, t * COLS_PER_TASK, &xu, oc);
            }
            for (t, oc) in du.chunks_mut(COLS_PER_TASK * r).enumerate() {
                tk(xb, rows, k, t * COLS_PER_TASK, &gxu, oc);
            }
            out
        })
        .collect();
    let mut sum = vec![0f32; len];
    for p in &partial {
        add_into(&mut sum, p);
    }
    let duv = sum.split_off(o);
    Some((sum, duv))
}

/// [`lora_grads_blocked`] for tests.
#[cfg(test)]
pub(super) fn lora_grads_blocked_for_test(
    x: &[f32],
    g: &[f32],
    n: usize,
    k: usize,
    o: usize,
    uv: &[f32],
    r: usize,
) -> Option<(Vec<f32>, Vec<f32>)> {
    lora_grads_blocked(x, g, n, k, o, uv, r)
}

/// The kernel of [`transposed_times_small`] for rank `r`, if there is one.
fn transposed_kernel(r: usize) -> Option<TransposedKernel> {
    #[cfg(target_arch = "x86_64")]
    let wide = simd_level() == 4;
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    match (r, wide) {
        #[cfg(target_arch = "x86_64")]
        (8, true) => Some(|a, rows, cols, c0, b, out| unsafe {
            transposed_times_small_avx512::<8, 3>(a, rows, cols, c0, b, out)
        }),
        #[cfg(target_arch = "x86_64")]
        (16, true) => Some(|a, rows, cols, c0, b, out| unsafe {
            transposed_times_small_avx512::<16, 1>(a, rows, cols, c0, b, out)
        }),
        (8, _) => Some(transposed_times_small_8),
        (16, _) => Some(transposed_times_small_16),
        _ => None,
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

/// [`transposed_times_small_r`] with AVX-512 intrinsics, for CPUs at `simd_level() == 4`: passes
/// over the rows with `V` sub-blocks of 16 columns each, whose sums are held rank-major
/// (`acc[s][t]` is the 16 columns of sub-block `s` at rank `t`: one register), so each row costs
/// `V` loads of `a`, R broadcasts of `b` and `V`·R multiplies and adds, with no shuffles. LLVM
/// vectorises the portable loop along the rank instead, with gathers (4.6× slower when it was
/// tried). The kernel is bound by the latency of reading one row's columns (rows are far apart),
/// not by arithmetic, so wider passes (`V` = 3 at rank 8: 24 accumulators) read the rows fewer
/// times. Each sum still runs over the rows in order, as a multiply then an add (no FMA), so the
/// bits equal the portable kernel's whatever `V` is; a test checks it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transposed_times_small_avx512<const R: usize, const V: usize>(
    a: &[f32],
    rows: usize,
    cols: usize,
    c0: usize,
    b: &[f32],
    out: &mut [f32],
) {
    const W: usize = 16;
    let width = out.len() / R;
    assert!(a.len() >= rows * cols && b.len() >= rows * R && c0 + width <= cols);
    let mut w0 = 0;
    while w0 + V * W <= width {
        transposed_pass_avx512::<R, V>(a, rows, cols, c0 + w0, b, &mut out[w0 * R..]);
        w0 += V * W;
    }
    while w0 + W <= width {
        transposed_pass_avx512::<R, 1>(a, rows, cols, c0 + w0, b, &mut out[w0 * R..]);
        w0 += W;
    }
    if w0 < width {
        transposed_times_small_r::<R>(a, rows, cols, c0 + w0, b, &mut out[w0 * R..]);
    }
}

/// One pass of [`transposed_times_small_avx512`]: the `V`·16 columns from `c` into the first
/// `V`·16·R values of `out`. The caller checks the bounds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // `t` indexes across the V sub-blocks' accumulators
unsafe fn transposed_pass_avx512<const R: usize, const V: usize>(
    a: &[f32],
    rows: usize,
    cols: usize,
    c: usize,
    b: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const W: usize = 16;
    let mut acc = [[_mm512_setzero_ps(); R]; V];
    let mut ap = a.as_ptr().add(c);
    let mut bp = b.as_ptr();
    for _ in 0..rows {
        // Rows are `cols` floats apart: a stride the hardware prefetcher does not follow across
        // pages, so each row's lines would be fresh misses. Fetch 16 rows ahead.
        for s in 0..V {
            _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(16 * cols + s * W) as *const i8);
        }
        let mut av = [_mm512_setzero_ps(); V];
        for (s, v) in av.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(ap.add(s * W));
        }
        for t in 0..R {
            let bt = _mm512_set1_ps(*bp.add(t));
            for s in 0..V {
                acc[s][t] = _mm512_add_ps(acc[s][t], _mm512_mul_ps(av[s], bt));
            }
        }
        // Wrapping: after the last row these point past the block (never read).
        ap = ap.wrapping_add(cols);
        bp = bp.wrapping_add(R);
    }
    let mut sums = [0f32; W];
    for (s, accs) in acc.iter().enumerate() {
        for (t, v) in accs.iter().enumerate() {
            _mm512_storeu_ps(sums.as_mut_ptr(), *v);
            for (q, &x) in sums.iter().enumerate() {
                out[(s * W + q) * R + t] = x;
            }
        }
    }
}

/// [`transposed_times_small`] as a plain triple loop (each sum over the rows in order): what
/// both of its kernels must equal bit for bit.
#[cfg(test)]
pub(super) fn transposed_times_small_reference(
    a: &[f32],
    rows: usize,
    cols: usize,
    b: &[f32],
    r: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; cols * r];
    for c in 0..cols {
        for t in 0..r {
            let mut acc = 0f32;
            for i in 0..rows {
                acc += a[i * cols + c] * b[i * r + t];
            }
            out[c * r + t] = acc;
        }
    }
    out
}

/// [`transposed_times_small`] for tests.
#[cfg(test)]
pub(super) fn transposed_times_small_for_test(
    a: &[f32],
    rows: usize,
    cols: usize,
    b: &[f32],
    r: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; cols * r];
    transposed_times_small(a, rows, cols, b, r, &mut out);
    out
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
    /// `o = x + y`.
    fn sum_into(o: &mut [f32], x: &[f32], y: &[f32]) {
        for ((o, a), b) in o.iter_mut().zip(x).zip(y) {
            *o = a + b;
        }
    }
}

multiversion! {
    /// `y += s·x`.
    fn axpy(y: &mut [f32], s: f32, x: &[f32]) {
        for (a, v) in y.iter_mut().zip(x) {
            *a += s * v;
        }
    }
}

multiversion! {
    pub(super) fn add_into(acc: &mut [f32], x: &[f32]) {
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
    match lora {
        None => {
            let keep = x.track_op() || bias.track_op();
            let op = PetLinearOp::new(weight, 0, None, gelu, bf16, keep)?;
            x.apply_op2(&bias, op)
        }
        Some(l) => {
            // [U; V]: one input for both factors; `cat`'s backward splits the gradient again.
            let uv = Tensor::cat(&[l.u, l.v], 0)?.contiguous()?;
            let keep = x.track_op() || bias.track_op() || uv.track_op();
            let op = PetLinearOp::new(weight, l.u.dim(1)?, l.offset, gelu, bf16, keep)?;
            x.apply_op3(&bias, &uv, op)
        }
    }
}

/// `x·Wᵀ + b` for `x` [n, in] and a frozen `weight` [out, in]; `bias` [out] may carry gradients.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    pet_linear(x, weight, bias, None, false, None)
}
