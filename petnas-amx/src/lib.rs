//! bf16 GEMM for Intel AMX (`tdpbf16ps`), with AVX512-BF16 and plain fp32 fallbacks.
//!
//! `C[m×n] (=|+=) bf16(A)[m×k] · bf16(B)[k×n]`, fp32 in, fp32 out, fp32 accumulation.
//!
//! * `B` is converted once into a [`PackedB`] (bf16, round-to-nearest-even, VNNI tile order,
//!   zero padded to 32 in k and to 32 in n). Each 16(k-pairs)×16(cols) tile is 1 KiB contiguous.
//! * `A` is converted to bf16 once per [`gemm_bf16`] call into a per-thread reusable buffer laid
//!   out as 16×32 tiles (1 KiB contiguous each), zero padded to 32 rows / 32 k. Conversion is
//!   lazy per 32-row stripe, done by the task that first needs the stripe (still hot in cache).
//! * Work is split into blocks of C (64 rows × up to all columns, the column split chosen so a
//!   task's B block stays within ~1.5 MiB of L2) that depend only on (m, n, k), never on the
//!   thread count. Each block is written by exactly one rayon task with a fixed k order, so
//!   results are bit-identical for any number of threads.
//! * AMX inner kernel: 2×2 C tiles (32×32 f32) in tmm0-3, A tiles in tmm4-5, B tiles in tmm6-7,
//!   k innermost (chunks of 512). C accumulates in an aligned per-thread 32-row stripe buffer;
//!   user C is only touched by masked AVX-512 copies (tails and unaligned C handled there).
//! * Backend: AMX if the CPU has amx-tile+amx-bf16 and Linux grants XTILEDATA
//!   (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), else AVX512-BF16 (`vdpbf16ps`), else fp32 arithmetic on
//!   the bf16-rounded values. `PETNAS_NO_AMX=1` (any value except "" / "0") disables AMX.
//!
//! Numerical notes: AMX `tdpbf16ps` and `vdpbf16ps` treat bf16 subnormal inputs as zero and
//! flush subnormal results; the fp32 fallback does not. Otherwise all backends agree with an
//! exact reference to fp32 accumulation accuracy (not bit-identical across backends).
//!
//! Usage (frozen linear layer, `x` [rows × k_in], `w` [k_out × k_in] row-major):
//! ```ignore
//! let wf = PackedB::pack(&w, k_in, k_out, 1, k_in as isize);   // B = Wᵀ, for y = x·Wᵀ
//! let wb = PackedB::pack(&w, k_out, k_in, k_in as isize, 1);   // B = W,  for dx = g·W
//! gemm_bf16(rows, k_out, k_in, &x, k_in, &wf, &mut y, k_out, false);
//! gemm_bf16(rows, k_in, k_out, &g, k_out, &wb, &mut dx, k_in, false);
//! ```
//!
//! Caveats (unsafe internals):
//! * Tile state: every rayon task does `ldtilecfg` on entry and `tilerelease` on exit and never
//!   keeps tiles live across a call into rayon or across tasks, so work stealing / thread
//!   migration is safe. Other AMX code on the same thread must load its own tile config (as
//!   any AMX user does); our `tilerelease` resets it.
//! * Linux: AMX needs `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)` once per process (done by
//!   [`amx_available`]). The kernel refuses it (ENOSPC → we report no AMX) if some thread has a
//!   sigaltstack smaller than the AMX signal frame (~11 KiB); afterwards signal frames are
//!   ~8 KiB bigger and `sigaltstack` with a too-small stack fails. Rust std sizes its
//!   alternate stacks from `AT_MINSIGSTKSZ`, which already accounts for AMX. Tile registers are
//!   saved/restored by the kernel on context switches and signals (XSAVE); a signal handler
//!   that itself used AMX would have to load its own config.
//! * Alignment: tile loads/stores whose rows are not 64-byte aligned are several times slower,
//!   so all tile memory is in internal 64-byte aligned buffers; A, B and C may have any
//!   alignment.
//! * Memory kept: each calling thread caches its A conversion buffer (m·k·2 bytes padded, e.g.
//!   6 MiB for 2048×1536; freed by [`release_thread_buffer`]); each rayon worker caches a C
//!   stripe buffer (≤ ~200 KiB).
//!
//! Self-contained: depends only on `rayon`. Single file, meant to be copied as a module.

#![allow(clippy::too_many_arguments)]
#![allow(clippy::missing_safety_doc)]

use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

// ------------------------------------------------------------------------------------------------
// Constants
// ------------------------------------------------------------------------------------------------

/// Rows of an A / C tile.
const TM: usize = 16;
/// f32 columns of a C tile (= columns of a B tile).
const TN: usize = 16;
/// bf16 k-elements of an A tile row (= 2 × k-pair rows of a B tile).
const TK: usize = 32;
/// u16 elements per 1 KiB tile.
const TILE_U16: usize = 512;
/// Rows of C per rayon task (multiple of 32). Fixed: must not depend on the thread count.
const MB: usize = 64;
/// Budget for one task's B block (k × columns, bf16): sets the columns of C per task (see
/// `block_plan`). Depends only on the problem shape, never on the thread count.
const B_BLOCK_BYTES: usize = 1536 * 1024;
/// k-tiles (of 32) per k-chunk in the AMX task loop (keeps the A stripe chunk in L1; C tiles
/// round-trip through the fp32 stripe buffer between chunks, which is exact, so chunking does
/// not change results).
const KC: usize = 16;

// ------------------------------------------------------------------------------------------------
// Scalar bf16 conversion
// ------------------------------------------------------------------------------------------------

/// f32 → bf16 bits with round-to-nearest-even. NaN stays NaN (quieted, sign and top payload
/// kept), ±inf stays ±inf, finite values that round past the largest bf16 become ±inf,
/// subnormals are rounded like any other value (no flush).
#[inline]
pub fn f32_to_bf16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    if (b & 0x7fff_ffff) > 0x7f80_0000 {
        return ((b >> 16) as u16) | 0x0040;
    }
    // Cannot overflow u32: the largest non-NaN input is 0xff80_0000 (-inf).
    let r = b + 0x7fff + ((b >> 16) & 1);
    (r >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Converts a slice with [`f32_to_bf16_rne`] semantics (AVX-512 when available). Panics if the
/// lengths differ.
pub fn f32_to_bf16_slice(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16_slice: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if avx512_available() {
        let mut i = 0;
        while i < src.len() {
            let valid = (src.len() - i).min(32);
            unsafe {
                if valid == 32 {
                    x86::cvt_row32(src.as_ptr().add(i), 32, dst.as_mut_ptr().add(i));
                } else {
                    let mut tmp = [0u16; 32];
                    x86::cvt_row32(src.as_ptr().add(i), valid, tmp.as_mut_ptr());
                    dst[i..i + valid].copy_from_slice(&tmp[..valid]);
                }
            }
            i += 32;
        }
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32_to_bf16_rne(*s);
    }
}

// ------------------------------------------------------------------------------------------------
// Feature detection and backend selection
// ------------------------------------------------------------------------------------------------

/// True if the CPU has AMX-TILE and AMX-BF16, the OS enabled tile state in XCR0, and Linux
/// granted this process XTILEDATA via `arch_prctl(ARCH_REQ_XCOMP_PERM, 18)`. Evaluated once per
/// process (the permission is process-wide and inherited by threads created later). Never
/// faults on machines without AMX: it just returns false. Ignores `PETNAS_NO_AMX`
/// (see [`backend`]).
pub fn amx_available() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            x86::detect_and_enable_amx()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// AVX-512F + AVX-512BW (used for fast conversion / packing).
fn avx512_available() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// AVX-512F + AVX-512BW + AVX512-BF16 (`vdpbf16ps`).
fn avx512bf16_available() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            avx512_available() && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The CPU vendor string of `cpuid` leaf 0 ("GenuineIntel", "AuthenticAMD", ...), or "" where
/// there is no `cpuid`.
pub fn cpu_vendor() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            #[allow(unused_unsafe)]
            let r = unsafe { std::arch::x86_64::__cpuid(0) };
            let mut b = Vec::with_capacity(12);
            for w in [r.ebx, r.edx, r.ecx] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            String::from_utf8_lossy(&b).into_owned()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            String::new()
        }
    })
}

/// Whether this CPU's `vdpbf16ps` (AVX512-BF16, the [`Backend::Avx512Bf16`] kernel) outruns its
/// fp32 FMAs, so that bf16 without AMX is worth running on it rather than fp32 arithmetic on
/// bf16-rounded values. Decided by the CPU's vendor alone, so that a given CPU always takes the
/// same path (results are bit-identical per path, not across paths). Measured with
/// `cargo run --release -p petnas-amx --example bench`, per thread:
/// * AMD (Zen 5 EPYC, `reports/bench/petnas-amx-kernels-epyc-zen5.jsonl`): `vdpbf16ps`
///   478–501 GFLOP/s against gemm f32's 234–256: it issues on the FMA pipes at their rate and
///   does two products per lane;
/// * Intel without AMX (a Xeon whose hypervisor hides AMX,
///   `reports/bench/petnas-amx-kernels-xeon-avx512bf16-noamx.jsonl`): 74–82 against 124–166:
///   it issues on one port where fp32 FMAs issue on two.
///
/// False where the CPU lacks AVX512-BF16.
pub fn avx512bf16_outruns_fp32() -> bool {
    avx512bf16_available() && cpu_vendor() == "AuthenticAMD"
}

/// Compute path of [`gemm_bf16`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// AMX tiles, `tdpbf16ps`.
    Amx,
    /// AVX512-BF16, `vdpbf16ps`.
    Avx512Bf16,
    /// Portable fp32 arithmetic on the bf16-rounded values.
    Fp32,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Amx => "amx",
            Backend::Avx512Bf16 => "avx512bf16",
            Backend::Fp32 => "fp32",
        }
    }
    /// Whether this backend can run on this machine/process.
    pub fn is_available(self) -> bool {
        match self {
            // The AMX path also uses AVX-512F (every AMX CPU has it).
            Backend::Amx => amx_available() && avx512_available(),
            Backend::Avx512Bf16 => avx512bf16_available(),
            Backend::Fp32 => true,
        }
    }
}

fn env_no_amx() -> bool {
    match std::env::var_os("PETNAS_NO_AMX") {
        Some(v) => !(v.is_empty() || v == "0"),
        None => false,
    }
}

/// The backend [`gemm_bf16`] uses (decided once per process): AMX if [`amx_available`] and
/// `PETNAS_NO_AMX` is unset/""/"0"; else AVX512-BF16 if the CPU has it; else fp32.
pub fn selected_backend() -> Backend {
    static B: OnceLock<Backend> = OnceLock::new();
    *B.get_or_init(|| {
        if !env_no_amx() && Backend::Amx.is_available() {
            Backend::Amx
        } else if avx512bf16_available() {
            Backend::Avx512Bf16
        } else {
            Backend::Fp32
        }
    })
}

/// Name of the path [`gemm_bf16`] runs: "amx", "avx512bf16" or "fp32".
pub fn backend() -> &'static str {
    selected_backend().name()
}

// ------------------------------------------------------------------------------------------------
// 64-byte aligned u16 buffer
// ------------------------------------------------------------------------------------------------

struct AlignedBuf {
    ptr: *mut u16,
    len: usize,
}

// The buffer is plain data owned by the struct.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Uninitialised allocation: callers must write every element before reading any.
    fn new_uninit(len: usize) -> Self {
        if len == 0 {
            return AlignedBuf {
                ptr: std::ptr::NonNull::<[u8; 64]>::dangling().as_ptr().cast(),
                len: 0,
            };
        }
        let layout = std::alloc::Layout::from_size_align(len * 2, 64).expect("buffer too large");
        let ptr = unsafe { std::alloc::alloc(layout) } as *mut u16;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }
}

impl AlignedBuf {
    /// Zero-initialised allocation of `len` u16.
    fn new_zeroed(len: usize) -> Self {
        assert!(len > 0);
        let layout = std::alloc::Layout::from_size_align(len * 2, 64).expect("buffer too large");
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut u16;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len != 0 {
            let layout = std::alloc::Layout::from_size_align(self.len * 2, 64).unwrap();
            unsafe { std::alloc::dealloc(self.ptr.cast(), layout) };
        }
    }
}

#[derive(Copy, Clone)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    #[inline(always)]
    fn get(self) -> *mut T {
        self.0
    }
}

// ------------------------------------------------------------------------------------------------
// PackedB
// ------------------------------------------------------------------------------------------------

/// B[k×n] converted to bf16 (RNE) in AMX VNNI tile order.
///
/// Layout: n is split in tiles of 16 columns (count rounded up to even), k in tiles of 32
/// (16 k-pairs). Tile (nt, kt) starts at u16 offset `(nt * k_tiles + kt) * 512`; inside it, row
/// `r` (k-pair `p = kt*16 + r`) holds, for column `j`, the u16 pair
/// `[B(2p, nt*16+j), B(2p+1, nt*16+j)]` at `r*32 + 2j`. Out-of-range elements are 0.
pub struct PackedB {
    k: usize,
    n: usize,
    k_tiles: usize,
    n_tiles: usize,
    buf: AlignedBuf,
}

impl PackedB {
    /// Packs B (logically [k × n], element (i, j) at `b[i*row_stride + j*col_stride]`).
    /// Forward `y = x·Wᵀ` with W [n × k] row-major: `row_stride = 1, col_stride = k`.
    /// Backward `dx = g·W` with W [k × n] row-major: `row_stride = n, col_stride = 1`.
    /// Panics if any addressed element lies outside `b`.
    pub fn pack(b: &[f32], k: usize, n: usize, row_stride: isize, col_stride: isize) -> PackedB {
        let mut p = PackedB::empty();
        p.repack(b, k, n, row_stride, col_stride);
        p
    }

    /// Like [`PackedB::pack`] from a raw pointer.
    ///
    /// # Safety
    /// Every `b.offset(i*row_stride + j*col_stride)` for `i < k, j < n` must be readable.
    pub unsafe fn pack_ptr(
        b: *const f32,
        k: usize,
        n: usize,
        row_stride: isize,
        col_stride: isize,
    ) -> PackedB {
        let mut p = PackedB::empty();
        p.repack_ptr(b, k, n, row_stride, col_stride);
        p
    }

    fn empty() -> PackedB {
        PackedB {
            k: 0,
            n: 0,
            k_tiles: 0,
            n_tiles: 0,
            buf: AlignedBuf::new_uninit(0),
        }
    }

    /// Re-packs in place (reuses the allocation when large enough), e.g. every training step.
    pub fn repack(&mut self, b: &[f32], k: usize, n: usize, row_stride: isize, col_stride: isize) {
        if k > 0 && n > 0 {
            // Offsets are linear in (i, j): the extremes are at the corners.
            let corners = [
                0isize,
                (k as isize - 1) * row_stride,
                (n as isize - 1) * col_stride,
                (k as isize - 1) * row_stride + (n as isize - 1) * col_stride,
            ];
            let lo = *corners.iter().min().unwrap();
            let hi = *corners.iter().max().unwrap();
            assert!(
                lo >= 0 && (hi as usize) < b.len(),
                "PackedB::pack: strides address outside the slice"
            );
        }
        unsafe { self.repack_ptr(b.as_ptr(), k, n, row_stride, col_stride) }
    }

    /// # Safety
    /// See [`PackedB::pack_ptr`].
    pub unsafe fn repack_ptr(&mut self, b: *const f32, k: usize, n: usize, rs: isize, cs: isize) {
        let k_tiles = k.div_ceil(TK);
        let n_tiles = n.div_ceil(TN).next_multiple_of(2);
        let len = k_tiles * n_tiles * TILE_U16;
        if self.buf.len < len {
            self.buf = AlignedBuf::new_uninit(len);
        }
        self.k = k;
        self.n = n;
        self.k_tiles = k_tiles;
        self.n_tiles = n_tiles;
        if len == 0 {
            return;
        }
        let dst = SendPtr(self.buf.ptr);
        let src = SendPtr(b as *mut f32);
        #[cfg(target_arch = "x86_64")]
        if cs == 1 && avx512_available() {
            // Row-major B: one work item per k-tile (32 rows of B), walking the rows
            // sequentially across all column tiles.
            (0..k_tiles).into_par_iter().for_each(|kt| {
                x86::pack_b_ktile_rowmajor(src.get(), k, n, rs, kt, k_tiles, n_tiles, dst.get());
            });
            return;
        }
        let per_nt = k_tiles * TILE_U16;
        (0..n_tiles).into_par_iter().for_each(|nt| {
            let d = dst.get().add(nt * per_nt);
            pack_b_ntile(src.get(), k, n, rs, cs, nt, k_tiles, d);
        });
    }

    /// Sets the shape and makes room for it (contents undefined); returns the u16 length.
    fn alloc(&mut self, k: usize, n: usize) -> usize {
        let k_tiles = k.div_ceil(TK);
        let n_tiles = n.div_ceil(TN).next_multiple_of(2);
        let len = k_tiles * n_tiles * TILE_U16;
        if self.buf.len < len {
            self.buf = AlignedBuf::new_uninit(len);
        }
        self.k = k;
        self.n = n;
        self.k_tiles = k_tiles;
        self.n_tiles = n_tiles;
        len
    }

    /// Packs a matrix `W` [rows × cols] in both GEMM directions at once, from rows that
    /// `fill` produces 32 at a time: `fwd` is `Wᵀ` as B [k = cols, n = rows] (for `y = x·Wᵀ`),
    /// and with `with_backward`, `bwd` is `W` as B [k = rows, n = cols] (for `dx = g·W`).
    /// `fill(r0, buf)` must write all of `buf`: rows `r0..r0 + buf.len() / cols` of `W`
    /// (row-major; the buffer is reused, so anything left unwritten would be packed).
    /// Each block of rows is filled once and packed while it is in cache, and `W` is never
    /// stored whole: for a weight computed every step (`W + V·Uᵀ` under LoRA) this saves
    /// writing it out and reading it back twice. The result equals [`PackedB::pack`] of the
    /// whole `W` in both layouts (test).
    pub fn pack_rows_both(
        rows: usize,
        cols: usize,
        with_backward: bool,
        fill: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) -> (PackedB, Option<PackedB>) {
        let mut fwd = PackedB::empty();
        let mut bwd = with_backward.then(PackedB::empty);
        if rows == 0 || cols == 0 || !avx512_available() {
            // Whole W, then the general packers.
            let mut w = vec![0f32; rows * cols];
            for (t, blk) in w.chunks_mut(32 * cols.max(1)).enumerate() {
                fill(32 * t, blk);
            }
            fwd.repack(&w, cols, rows, 1, cols as isize);
            if let Some(b) = bwd.as_mut() {
                b.repack(&w, rows, cols, cols as isize, 1);
            }
            return (fwd, bwd);
        }
        fwd.alloc(cols, rows);
        if let Some(b) = bwd.as_mut() {
            b.alloc(rows, cols);
        }
        let fk_tiles = fwd.k_tiles;
        let fd = SendPtr(fwd.buf.ptr);
        let bgeom = bwd.as_ref().map(|b| (b.k_tiles, b.n_tiles, SendPtr(b.buf.ptr)));
        (0..rows.div_ceil(32)).into_par_iter().for_each(|t| {
            let r0 = 32 * t;
            let nr = (rows - r0).min(32);
            // Taken out of the cell while in use, so a `fill` that re-enters (through rayon)
            // gets a fresh buffer instead of a borrow panic.
            let mut buf = ROWS_BUF.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
            {
                if buf.len() < nr * cols {
                    buf.resize(nr * cols, 0.0);
                }
                let blk = &mut buf[..nr * cols];
                fill(r0, blk);
                // Row j of W sits at base + j·cols for j in r0..r0 + nr.
                let base = blk.as_ptr().wrapping_sub(r0 * cols);
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    // fwd: B(i, j) = W[j, i]; column tiles 2t and 2t + 1 are rows r0..r0 + 32.
                    for nt in [2 * t, 2 * t + 1] {
                        let d = fd.get().add(nt * fk_tiles * TILE_U16);
                        x86::pack_b_ntile_colmajor(base, cols, rows, cols as isize, nt, fk_tiles, d);
                    }
                    // bwd: B(i, j) = W[i, j]; k-tile t is rows r0..r0 + 32.
                    if let Some((kt_all, nt_all, bd)) = bgeom {
                        x86::pack_b_ktile_rowmajor(
                            base,
                            rows,
                            cols,
                            cols as isize,
                            t,
                            kt_all,
                            nt_all,
                            bd.get(),
                        );
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (base, fk_tiles, fd, bgeom);
            }
            ROWS_BUF.with(|cell| *cell.borrow_mut() = buf);
        });
        (fwd, bwd)
    }

    /// Logical k (rows of B).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Logical n (columns of B).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The packed bf16 data (layout documented on the type).
    pub fn as_raw(&self) -> &[u16] {
        let len = self.k_tiles * self.n_tiles * TILE_U16;
        if len == 0 {
            return &[];
        }
        unsafe { std::slice::from_raw_parts(self.buf.ptr, len) }
    }

    /// bf16 bits of element (i, j) of the packed matrix (0 for padding).
    pub fn get(&self, i: usize, j: usize) -> u16 {
        assert!(i < self.k_tiles * TK && j < self.n_tiles * TN);
        let (nt, jj) = (j / TN, j % TN);
        let (kt, kk) = (i / TK, i % TK);
        self.as_raw()[(nt * self.k_tiles + kt) * TILE_U16 + (kk / 2) * 32 + jj * 2 + (kk & 1)]
    }
}

/// Packs all k-tiles of column tile `nt` into `d` (k_tiles × 512 u16, fully written).
unsafe fn pack_b_ntile(
    b: *const f32,
    k: usize,
    n: usize,
    rs: isize,
    cs: isize,
    nt: usize,
    k_tiles: usize,
    d: *mut u16,
) {
    #[cfg(target_arch = "x86_64")]
    if rs == 1 && avx512_available() {
        x86::pack_b_ntile_colmajor(b, k, n, cs, nt, k_tiles, d);
        return;
    }
    pack_b_ntile_generic(b, k, n, rs, cs, nt, k_tiles, d);
}

unsafe fn pack_b_ntile_generic(
    b: *const f32,
    k: usize,
    n: usize,
    rs: isize,
    cs: isize,
    nt: usize,
    k_tiles: usize,
    d: *mut u16,
) {
    for kt in 0..k_tiles {
        let t = d.add(kt * TILE_U16);
        for r in 0..16 {
            for jj in 0..TN {
                let j = nt * TN + jj;
                for h in 0..2 {
                    let i = kt * TK + 2 * r + h;
                    let v = if i < k && j < n {
                        f32_to_bf16_rne(*b.offset(i as isize * rs + j as isize * cs))
                    } else {
                        0
                    };
                    *t.add(r * 32 + jj * 2 + h) = v;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// A packing (once per gemm call)
// ------------------------------------------------------------------------------------------------

thread_local! {
    static A_BUF: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
    /// Per-thread block of rows for [`PackedB::pack_rows_both`].
    static ROWS_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread block of C for the AVX512-BF16 path with a [`Store`].
    static BLOCK_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A (m × k f32, row-major with lda) packed into 16×32 bf16 tiles: tile (mt, kt) at
/// `(mt * k_tiles + kt) * 512`, row r = A[mt*16 + r][kt*32 .. kt*32+32], zeros outside A.
///
/// Conversion is lazy per 32-row stripe: the first task that needs a stripe converts it
/// (right before using it, so it is still in cache), others needing the same stripe wait.
/// Each element is converted exactly once per gemm call.
struct APack {
    a: *const f32,
    m: usize,
    k: usize,
    lda: usize,
    k_tiles: usize,
    buf: *mut u16,
    /// Per stripe: 0 = not converted, 1 = being converted, 2 = done.
    state: Vec<std::sync::atomic::AtomicU8>,
}

unsafe impl Sync for APack {}
unsafe impl Send for APack {}

impl APack {
    /// Makes sure stripe `s` (rows 32s..32s+32) is converted.
    #[inline]
    fn ensure(&self, s: usize) {
        use std::sync::atomic::Ordering::*;
        let st = &self.state[s];
        if st.load(Acquire) == 2 {
            return;
        }
        if st.compare_exchange(0, 1, Acquire, Acquire).is_ok() {
            // Cannot panic: only raw-pointer conversion inside.
            unsafe { self.convert_stripe(s) };
            st.store(2, Release);
        } else {
            let mut spins = 0u32;
            while st.load(Acquire) != 2 {
                spins += 1;
                if spins < 1000 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    fn ensure_rows(&self, r0: usize, r1: usize) {
        for s in r0 / 32..r1.div_ceil(32) {
            self.ensure(s);
        }
    }

    unsafe fn convert_stripe(&self, s: usize) {
        #[cfg(target_arch = "x86_64")]
        if avx512_available() {
            x86::convert_a_stripe(self.a, self.m, self.k, self.lda, self.k_tiles, s, self.buf);
            return;
        }
        let fast = false;
        for mt in 2 * s..2 * s + 2 {
            let d = self.buf.add(mt * self.k_tiles * TILE_U16);
            for r in 0..TM {
                let row = mt * TM + r;
                for kt in 0..self.k_tiles {
                    let t = d.add(kt * TILE_U16 + r * TK);
                    if row >= self.m {
                        std::ptr::write_bytes(t, 0, TK);
                        continue;
                    }
                    let k0 = kt * TK;
                    let valid = (self.k - k0).min(TK);
                    let src = self.a.add(row * self.lda + k0);
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        x86::cvt_row32(src, valid, t);
                        continue;
                    }
                    let _ = fast;
                    for c in 0..TK {
                        *t.add(c) = if c < valid {
                            f32_to_bf16_rne(*src.add(c))
                        } else {
                            0
                        };
                    }
                }
            }
        }
    }
}

fn with_a_buffer<R>(len: usize, f: impl FnOnce(*mut u16) -> R) -> R {
    let taken = A_BUF.with(|c| c.borrow_mut().take());
    let buf = match taken {
        Some(b) if b.len >= len => b,
        _ => AlignedBuf::new_uninit(len.max(1)),
    };
    let r = f(buf.ptr);
    A_BUF.with(|c| *c.borrow_mut() = Some(buf));
    r
}

/// Frees this thread's cached A conversion buffer (it grows to the largest A seen).
pub fn release_thread_buffer() {
    A_BUF.with(|c| *c.borrow_mut() = None);
}

// ------------------------------------------------------------------------------------------------
// GEMM entry points
// ------------------------------------------------------------------------------------------------

/// `C[m×n] = bf16(A)[m×k] · B` (or `+=` when `accumulate`), fp32 accumulation.
///
/// A is row-major with leading dimension `lda` (≥ k), C row-major with `ldc` (≥ n); columns
/// `n..ldc` of C are never touched. `b` must have been packed with the same k and n.
/// Runs on the current rayon pool; results are bit-identical for any thread count.
pub fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_bf16_with(selected_backend(), m, n, k, a, lda, b, c, ldc, accumulate)
}

/// Where each finished region of C goes, for [`gemm_bf16_store`]: `store` receives the
/// computed values and writes C itself, so that a bias add or an activation runs on the way out
/// of the accumulators instead of as a second pass over C.
///
/// Hooks run on the GEMM's worker threads between its tile instructions: they must not call
/// into rayon (a stolen task of the same GEMM would release the tiles under it) or use AMX.
pub trait Store: Sync {
    /// Called before the products of rows `r0..r0 + rows`, columns `c0..c0 + cols` are computed,
    /// on the thread that will store them (e.g. to prefetch what `store` will read).
    fn prepare(&self, _r0: usize, _rows: usize, _c0: usize, _cols: usize) {}
    /// The finished region: `src[i·lds + j]` is C(r0 + i, c0 + j) as computed (after
    /// accumulation). The implementation must write every C(r0 + i, c0 + j) of the region, at
    /// `c.add((r0 + i)·ldc + c0 + j)` (`c`: C's first element, derived from the `&mut` the GEMM
    /// was given, so writing through it is the GEMM's own write). Each element of C lies in
    /// exactly one region, passed once.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        r0: usize,
        rows: usize,
        c0: usize,
        cols: usize,
        src: &[f32],
        lds: usize,
        c: *mut f32,
        ldc: usize,
    );
}

/// [`gemm_bf16`] with C written by `store` from each finished region (see [`Store`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_store(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    store: &dyn Store,
) {
    gemm_impl(selected_backend(), m, n, k, a, lda, b, c, ldc, accumulate, Some(store))
}

/// [`gemm_bf16_store`] on an explicit backend (for tests). Panics if it is unavailable.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_store_with(
    backend: Backend,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    store: &dyn Store,
) {
    gemm_impl(backend, m, n, k, a, lda, b, c, ldc, accumulate, Some(store))
}

/// [`gemm_bf16`] on an explicit backend (for tests/benchmarks). Panics if it is unavailable.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_with(
    backend: Backend,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_impl(backend, m, n, k, a, lda, b, c, ldc, accumulate, None)
}

#[allow(clippy::too_many_arguments)]
fn gemm_impl(
    backend: Backend,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    store: Option<&dyn Store>,
) {
    assert!(
        backend.is_available(),
        "gemm_bf16: backend {} not available",
        backend.name()
    );
    assert!(
        b.k == k && b.n == n,
        "gemm_bf16: PackedB is {}x{}, expected {}x{}",
        b.k,
        b.n,
        k,
        n
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "gemm_bf16: ldc < n");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm_bf16: c too short");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        if let Some(st) = store {
            st.prepare(0, m, 0, n);
            let src: Vec<f32> = (0..m).flat_map(|i| c[i * ldc..i * ldc + n].to_vec()).collect();
            st.store(0, m, 0, n, &src, n, c.as_mut_ptr(), ldc);
        }
        return;
    }
    assert!(lda >= k, "gemm_bf16: lda < k");
    assert!(a.len() >= (m - 1) * lda + k, "gemm_bf16: a too short");

    let k_tiles = b.k_tiles;
    let m_tiles = m.div_ceil(TM).next_multiple_of(2);
    let n_tiles = b.n_tiles;
    let g = Geom {
        m,
        n,
        k_tiles,
        ldc,
        accumulate,
    };
    with_a_buffer(m_tiles * k_tiles * TILE_U16, |ap| {
        let apack = APack {
            a: a.as_ptr(),
            m,
            k,
            lda,
            k_tiles,
            buf: ap,
            state: (0..m_tiles / 2)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect(),
        };
        let bp = SendPtr(b.buf.ptr);
        let cp = SendPtr(c.as_mut_ptr());
        let (mb, nb) = block_plan(m_tiles * TM, n_tiles * TN, k_tiles * TK);
        let m_blocks = (m_tiles * TM).div_ceil(mb);
        let n_blocks = (n_tiles * TN).div_ceil(nb);
        (0..m_blocks * n_blocks).into_par_iter().for_each(|t| {
            let (bi, bj) = (t / n_blocks, t % n_blocks);
            let r0 = bi * mb;
            let r1 = (r0 + mb).min(m_tiles * TM);
            let c0 = bj * nb;
            let c1 = (c0 + nb).min(n_tiles * TN);
            let blk = Block { r0, r1, c0, c1 };
            // The whole block's region, for the paths that finish a block at once.
            let rows = r1.min(m).saturating_sub(r0);
            let cols = c1.min(n).saturating_sub(c0);
            let whole = |c: *mut f32| unsafe {
                if rows == 0 || cols == 0 {
                    return;
                }
                if let Some(st) = store {
                    // The block as computed, then the store writes C.
                    let mut src = Vec::with_capacity(rows * cols);
                    for i in 0..rows {
                        let row = std::slice::from_raw_parts(c.add((r0 + i) * ldc + c0), cols);
                        src.extend_from_slice(row);
                    }
                    st.store(r0, rows, c0, cols, &src, cols, c, ldc);
                }
            };
            if let (Some(st), false) = (store, matches!(backend, Backend::Amx)) {
                if rows > 0 && cols > 0 {
                    st.prepare(r0, rows, c0, cols);
                }
            }
            unsafe {
                match backend {
                    #[cfg(target_arch = "x86_64")]
                    Backend::Amx => x86::amx_task(&g, &blk, &apack, bp.get(), cp.get(), store),
                    #[cfg(target_arch = "x86_64")]
                    Backend::Avx512Bf16 => {
                        apack.ensure_rows(r0, r1);
                        match store {
                            None => x86::bf16_task(
                                &g,
                                &blk,
                                apack.buf,
                                bp.get(),
                                cp.get(),
                                g.ldc,
                                (0, 0),
                            ),
                            Some(st) if rows > 0 && cols > 0 => {
                                // The block into a per-thread scratch (ld = its width), which
                                // the store reads: C is written once, by the store.
                                let ld = c1 - c0;
                                BLOCK_BUF.with(|b| {
                                    let mut b = b.borrow_mut();
                                    if b.len() < rows * ld {
                                        b.resize(rows * ld, 0.0);
                                    }
                                    let sp = b.as_mut_ptr();
                                    if g.accumulate {
                                        let c = cp.get();
                                        for i in 0..rows {
                                            std::ptr::copy_nonoverlapping(
                                                c.add((r0 + i) * ldc + c0),
                                                sp.add(i * ld),
                                                cols,
                                            );
                                        }
                                    }
                                    let (ap, bq) = (apack.buf, bp.get());
                                    x86::bf16_task(&g, &blk, ap, bq, sp, ld, (r0, c0));
                                    let src = &b[..(rows - 1) * ld + cols];
                                    st.store(r0, rows, c0, cols, src, ld, cp.get(), ldc);
                                });
                            }
                            Some(_) => {}
                        }
                    }
                    _ => {
                        apack.ensure_rows(r0, r1);
                        fp32_task(&g, &blk, apack.buf, bp.get(), cp.get());
                        whole(cp.get());
                    }
                }
            }
        });
    });
}

/// Block sizes of C per task, (rows, cols), from the padded problem shape only (never from the
/// thread count, so results do not depend on it). Columns: as few blocks as keep one B block
/// (k × cols bf16) within ~1.5 MiB (L2-resident while the task's stripes stream through).
fn block_plan(m_pad: usize, n_pad: usize, k_pad: usize) -> (usize, usize) {
    let n_blocks = (n_pad * k_pad * 2).div_ceil(B_BLOCK_BYTES).max(1);
    let nb = n_pad.div_ceil(n_blocks).next_multiple_of(32);
    let mb = MB.min(m_pad);
    (mb, nb)
}

/// Problem geometry shared by all tasks of a call.
struct Geom {
    m: usize,
    n: usize,
    k_tiles: usize,
    ldc: usize,
    accumulate: bool,
}

/// A block of C in padded coordinates: rows r0..r1, cols c0..c1 (multiples of 32).
struct Block {
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
}

#[allow(clippy::needless_range_loop)]
/// Portable path: fp32 multiply-add on bf16 values, per k-pair `acc += a0*b0; acc += a1*b1`.
unsafe fn fp32_task(g: &Geom, blk: &Block, ap: *const u16, bp: *const u16, c: *mut f32) {
    for row in blk.r0..blk.r1.min(g.m) {
        let (mt, r) = (row / TM, row % TM);
        for nt in blk.c0 / TN..blk.c1 / TN {
            let col0 = nt * TN;
            if col0 >= g.n {
                break;
            }
            let nc = (g.n - col0).min(TN);
            let crow = c.add(row * g.ldc + col0);
            let mut acc = [0f32; TN];
            if g.accumulate {
                for j in 0..nc {
                    acc[j] = *crow.add(j);
                }
            }
            for kt in 0..g.k_tiles {
                let at = ap.add((mt * g.k_tiles + kt) * TILE_U16 + r * TK);
                let bt = bp.add((nt * g.k_tiles + kt) * TILE_U16);
                for p in 0..16 {
                    let a0 = bf16_to_f32(*at.add(2 * p));
                    let a1 = bf16_to_f32(*at.add(2 * p + 1));
                    let brow = std::slice::from_raw_parts(bt.add(p * 32), 32);
                    for j in 0..TN {
                        acc[j] += a0 * bf16_to_f32(brow[2 * j]);
                        acc[j] += a1 * bf16_to_f32(brow[2 * j + 1]);
                    }
                }
            }
            for j in 0..nc {
                *crow.add(j) = acc[j];
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// x86_64: detection, conversion, AMX and AVX512-BF16 kernels
// ------------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::asm;
    use std::arch::x86_64::*;

    // ---------------- detection ----------------

    #[cfg(target_os = "linux")]
    pub(super) fn detect_and_enable_amx() -> bool {
        unsafe {
            let l0 = __cpuid(0);
            if l0.eax < 0xd {
                return false;
            }
            let l1 = __cpuid(1);
            let osxsave = (l1.ecx >> 27) & 1 == 1;
            let l7 = __cpuid_count(7, 0);
            let amx_bf16 = (l7.edx >> 22) & 1 == 1;
            let amx_tile = (l7.edx >> 24) & 1 == 1;
            if !(osxsave && amx_bf16 && amx_tile) {
                return false;
            }
            // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA) must be enabled by the OS.
            let (lo, _hi): (u32, u32);
            asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack, preserves_flags));
            if (lo >> 17) & 3 != 3 {
                return false;
            }
            const SYS_ARCH_PRCTL: usize = 158;
            const ARCH_GET_XCOMP_PERM: usize = 0x1022;
            const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
            const XFEATURE_XTILEDATA: usize = 18;
            if syscall2(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0 {
                // Old kernel (EINVAL) or a too-small sigaltstack somewhere (ENOSPC).
                return false;
            }
            let mut perm: u64 = 0;
            if syscall2(
                SYS_ARCH_PRCTL,
                ARCH_GET_XCOMP_PERM,
                &mut perm as *mut u64 as usize,
            ) != 0
            {
                return false;
            }
            (perm >> XFEATURE_XTILEDATA) & 1 == 1
        }
    }

    #[cfg(target_os = "linux")]
    unsafe fn syscall2(nr: usize, a1: usize, a2: usize) -> isize {
        let ret: isize;
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a1,
            in("rsi") a2,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
        ret
    }

    // ---------------- conversion ----------------

    /// u32 lanes whose high 16 bits are the RNE bf16 of the f32 lanes (NaN quieted).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn rne_hi(x: __m512i) -> __m512i {
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
        let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff));
        let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
        _mm512_mask_or_epi32(r, nan, x, _mm512_set1_epi32(0x0040_0000))
    }

    #[inline]
    fn lane_mask(v: usize) -> u16 {
        if v >= 16 {
            0xffff
        } else {
            ((1u32 << v) - 1) as u16
        }
    }

    #[repr(C, align(64))]
    struct Idx([u16; 32]);
    /// Selects the high u16 of each u32 of (r0, r1).
    static HI_HALVES: Idx = Idx([
        1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43, 45, 47,
        49, 51, 53, 55, 57, 59, 61, 63,
    ]);

    /// Converts `valid` (≤ 32) contiguous f32 at `src` to 32 bf16 at `dst` (zeros past `valid`).
    /// Reads only the `valid` elements.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn cvt_row32(src: *const f32, valid: usize, dst: *mut u16) {
        let x0 = _mm512_maskz_loadu_epi32(lane_mask(valid), src.cast());
        let x1 = _mm512_maskz_loadu_epi32(
            lane_mask(valid.saturating_sub(16)),
            src.wrapping_add(16).cast(),
        );
        let idx = _mm512_loadu_si512(HI_HALVES.0.as_ptr().cast());
        let out = _mm512_permutex2var_epi16(rne_hi(x0), idx, rne_hi(x1));
        _mm512_storeu_si512(dst.cast(), out);
    }

    /// AVX-512 version of `APack::convert_stripe` (rows 32s..32s+32 of A into tiles).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn convert_a_stripe(
        a: *const f32,
        m: usize,
        k: usize,
        lda: usize,
        k_tiles: usize,
        s: usize,
        buf: *mut u16,
    ) {
        for mt in 2 * s..2 * s + 2 {
            let d = buf.add(mt * k_tiles * TILE_U16);
            for r in 0..TM {
                let row = mt * TM + r;
                if row >= m {
                    for kt in 0..k_tiles {
                        _mm512_storeu_si512(
                            d.add(kt * TILE_U16 + r * TK).cast(),
                            _mm512_setzero_si512(),
                        );
                    }
                    continue;
                }
                let src = a.add(row * lda);
                let full = k / TK;
                for kt in 0..full {
                    cvt_row32(src.add(kt * TK), TK, d.add(kt * TILE_U16 + r * TK));
                }
                if full < k_tiles {
                    cvt_row32(
                        src.add(full * TK),
                        k - full * TK,
                        d.add(full * TILE_U16 + r * TK),
                    );
                }
            }
        }
    }

    /// B with contiguous columns (cs == 1): a tile row interleaves B rows 2p and 2p+1.
    /// Writes tile (nt, kt) for every column tile nt of k-tile `kt`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_b_ktile_rowmajor(
        b: *const f32,
        k: usize,
        n: usize,
        rs: isize,
        kt: usize,
        k_tiles: usize,
        n_tiles: usize,
        d: *mut u16,
    ) {
        let hi_mask = _mm512_set1_epi32(0xffff_0000u32 as i32);
        for r in 0..16 {
            let i0 = kt * TK + 2 * r;
            let row0 = b.wrapping_offset(i0 as isize * rs);
            let row1 = b.wrapping_offset((i0 + 1) as isize * rs);
            for nt in 0..n_tiles {
                let j0 = nt * TN;
                let msk = lane_mask(n.saturating_sub(j0));
                let e = if i0 < k {
                    _mm512_maskz_loadu_epi32(msk, row0.wrapping_add(j0).cast())
                } else {
                    _mm512_setzero_si512()
                };
                let o = if i0 + 1 < k {
                    _mm512_maskz_loadu_epi32(msk, row1.wrapping_add(j0).cast())
                } else {
                    _mm512_setzero_si512()
                };
                let v = _mm512_or_si512(
                    _mm512_srli_epi32::<16>(rne_hi(e)),
                    _mm512_and_si512(rne_hi(o), hi_mask),
                );
                _mm512_storeu_si512(d.add((nt * k_tiles + kt) * TILE_U16 + r * 32).cast(), v);
            }
        }
    }

    /// B with contiguous rows (rs == 1, i.e. Wᵀ of a row-major W): each column converts to 16
    /// k-pairs; a 16×16 u32 transpose puts them in tile order.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_b_ntile_colmajor(
        b: *const f32,
        k: usize,
        n: usize,
        cs: isize,
        nt: usize,
        k_tiles: usize,
        d: *mut u16,
    ) {
        let j0 = nt * TN;
        let idx = _mm512_loadu_si512(HI_HALVES.0.as_ptr().cast());
        for kt in 0..k_tiles {
            let k0 = kt * TK;
            let valid = (k - k0).min(TK);
            let m0 = lane_mask(valid);
            let m1 = lane_mask(valid.saturating_sub(16));
            let mut cols = [_mm512_setzero_si512(); 16];
            for (jj, col) in cols.iter_mut().enumerate() {
                let j = j0 + jj;
                if j < n {
                    let s = b.wrapping_offset(j as isize * cs + k0 as isize);
                    let x0 = _mm512_maskz_loadu_epi32(m0, s.cast());
                    let x1 = _mm512_maskz_loadu_epi32(m1, s.wrapping_add(16).cast());
                    // u32 lane p = pair (2p, 2p+1) of this column
                    *col = _mm512_permutex2var_epi16(rne_hi(x0), idx, rne_hi(x1));
                }
            }
            let rows = transpose16x16_epi32(cols);
            let t = d.add(kt * TILE_U16);
            for (r, v) in rows.iter().enumerate() {
                _mm512_storeu_si512(t.add(r * 32).cast(), *v);
            }
        }
    }

    /// Transposes a 16×16 matrix of u32 held as 16 rows.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16x16_epi32(r: [__m512i; 16]) -> [__m512i; 16] {
        // Stage 1: interleave 32-bit elements of row pairs.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // Stage 2: interleave 64-bit elements.
        let mut u = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            let b = 4 * i;
            u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        // Now, within each 128-bit lane L of u[4i + q], element e = r[4i + e][4L + q'] with
        // q' = [0, 1, 2, 3][q]. Stage 3/4: transpose the 4×4 grid of 128-bit lanes.
        let mut v = [_mm512_setzero_si512(); 16];
        for q in 0..4 {
            // rows groups 0,1 and 2,3
            let a0 = u[q];
            let a1 = u[4 + q];
            let a2 = u[8 + q];
            let a3 = u[12 + q];
            // lanes (0,1) of a0 with lanes (0,1) of a1, etc.
            let b0 = _mm512_shuffle_i32x4::<0x44>(a0, a1); // a0.L0 a0.L1 a1.L0 a1.L1
            let b1 = _mm512_shuffle_i32x4::<0xee>(a0, a1); // a0.L2 a0.L3 a1.L2 a1.L3
            let b2 = _mm512_shuffle_i32x4::<0x44>(a2, a3);
            let b3 = _mm512_shuffle_i32x4::<0xee>(a2, a3);
            v[q] = _mm512_shuffle_i32x4::<0x88>(b0, b2); // a0.L0 a1.L0 a2.L0 a3.L0
            v[4 + q] = _mm512_shuffle_i32x4::<0xdd>(b0, b2); // L1
            v[8 + q] = _mm512_shuffle_i32x4::<0x88>(b1, b3); // L2
            v[12 + q] = _mm512_shuffle_i32x4::<0xdd>(b1, b3); // L3
        }
        // v[4L + q] holds column 4L + q.
        v
    }

    // ---------------- AMX ----------------

    #[repr(C, align(64))]
    struct TileCfg {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// All of tmm0..tmm7: 16 rows × 64 bytes.
    static TILE_CFG: TileCfg = TileCfg {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    thread_local! {
        /// Per-thread 64-byte aligned C stripe (32 rows × block width f32), zero-initialised.
        static STRIPE: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
    }

    /// One rayon task on AMX: C block rows r0..r1 × cols c0..c1.
    ///
    /// For each 32-row stripe the accumulators live in an aligned per-thread stripe buffer
    /// (ld = block width): tiles are loaded/stored there with aligned `tileloadd`/`tilestored`
    /// (tile accesses that split cache lines are several times slower, and user C is rarely
    /// 64-byte aligned), and the user's C is only touched by plain masked AVX-512 copies (in
    /// at the start if accumulating, out at the end). This also handles all m/n tails.
    /// k runs in chunks of KC tiles, C tiles round-tripping through the stripe (exact).
    ///
    /// Loads the tile config at entry and releases the tiles at exit, so nothing depends on
    /// which thread runs the task or what it ran before.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn amx_task(
        g: &Geom,
        blk: &Block,
        apack: &APack,
        bp: *const u16,
        c: *mut f32,
        store: Option<&dyn Store>,
    ) {
        let width = blk.c1 - blk.c0; // multiple of 32
        let stripe_len_u16 = 2 * 32 * (width + 16);
        let taken = STRIPE.with(|s| s.borrow_mut().take());
        let buf = match taken {
            Some(b) if b.len >= stripe_len_u16 => b,
            _ => AlignedBuf::new_zeroed(stripe_len_u16),
        };
        let sp = buf.ptr as *mut f32;
        amx_task_inner(g, blk, apack, bp, c, sp, width, store);
        STRIPE.with(|s| *s.borrow_mut() = Some(buf));
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn amx_task_inner(
        g: &Geom,
        blk: &Block,
        apack: &APack,
        bp: *const u16,
        c: *mut f32,
        sp: *mut f32,
        width: usize,
        store: Option<&dyn Store>,
    ) {
        let ap = apack.buf as *const u16;
        asm!("ldtilecfg [{}]", in(reg) &TILE_CFG as *const TileCfg, options(nostack, readonly, preserves_flags));
        let kt_all = g.k_tiles;
        // Stripe leading dimension (f32): block width + one cache line, so the 16 rows of a
        // tile fall into different L1 sets (a power-of-two-ish stride would alias them).
        let sld = width + 16;
        let c_end = blk.c1.min(g.n); // last real column + 1
        let ncols = c_end - blk.c0;
        let mut rr = blk.r0;
        while rr < blk.r1 && rr < g.m {
            let vr = (g.m - rr).min(32);
            if let Some(st) = store {
                st.prepare(rr, vr, blk.c0, ncols);
                asm!("ldtilecfg [{}]", in(reg) &TILE_CFG as *const TileCfg, options(nostack, readonly, preserves_flags));
            }
            apack.ensure(rr / 32);
            let crow = c.add(rr * g.ldc + blk.c0);
            if g.accumulate {
                copy_rows(crow, g.ldc, sp, sld, vr, ncols);
            }
            let mt = rr / TM;
            let mut kc0 = 0;
            while kc0 < kt_all {
                let nk = KC.min(kt_all - kc0);
                let init_zero = kc0 == 0 && !g.accumulate;
                let a0 = ap.add((mt * kt_all + kc0) * TILE_U16);
                let a1 = ap.add(((mt + 1) * kt_all + kc0) * TILE_U16);
                let mut cc = blk.c0;
                while cc < c_end {
                    let nt = cc / TN;
                    let b0 = bp.add((nt * kt_all + kc0) * TILE_U16);
                    let b1 = bp.add(((nt + 1) * kt_all + kc0) * TILE_U16);
                    micro_2x2(sp.add(cc - blk.c0), sld * 4, a0, a1, b0, b1, nk, init_zero);
                    cc += 32;
                }
                kc0 += nk;
            }
            // Burst copy-out (measured faster than interleaving the stores with the tile work).
            match store {
                None => copy_rows(sp, sld, crow, g.ldc, vr, ncols),
                Some(st) => {
                    let src = std::slice::from_raw_parts(sp, (vr - 1) * sld + ncols);
                    st.store(rr, vr, blk.c0, ncols, src, sld, c, g.ldc);
                }
            }
            if store.is_some() {
                // A hook is user code: restore the tile config in case it ran AMX code.
                asm!("ldtilecfg [{}]", in(reg) &TILE_CFG as *const TileCfg, options(nostack, readonly, preserves_flags));
            }
            rr += 32;
        }
        asm!("tilerelease", options(nomem, nostack, preserves_flags));
    }

    /// Copies `rows` × `cols` f32 between row-major buffers (masked AVX-512, any alignment).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn copy_rows(
        src: *const f32,
        lds: usize,
        dst: *mut f32,
        ldd: usize,
        rows: usize,
        cols: usize,
    ) {
        let full = cols / 16;
        let msk = lane_mask(cols % 16);
        for r in 0..rows {
            let s = src.add(r * lds);
            let d = dst.add(r * ldd);
            for j in 0..full {
                _mm512_storeu_ps(d.add(16 * j), _mm512_loadu_ps(s.add(16 * j)));
            }
            if msk != 0 {
                let v = _mm512_maskz_loadu_ps(msk, s.add(16 * full));
                _mm512_mask_storeu_ps(d.add(16 * full), msk, v);
            }
        }
    }

    /// One 32×32 block of C held in tmm0 (rows 0-15, cols 0-15), tmm1 (0-15, 16-31),
    /// tmm2 (16-31, 0-15), tmm3 (16-31, 16-31) at `cp` (64-byte aligned, stride `ldb` bytes,
    /// a multiple of 64); `nk` k-tiles from the given A/B tile pointers (1 KiB per k-tile).
    #[inline(always)]
    unsafe fn micro_2x2(
        cp: *mut f32,
        ldb: usize,
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        nk: usize,
        init_zero: bool,
    ) {
        let c1 = cp.add(TN);
        let c2 = (cp as *mut u8).add(TM * ldb) as *mut f32;
        let c3 = c2.add(TN);
        if init_zero {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nomem, nostack, preserves_flags)
            );
        } else {
            asm!(
                "tileloadd tmm0, [{p0} + {s} * 1]",
                "tileloadd tmm1, [{p1} + {s} * 1]",
                "tileloadd tmm2, [{p2} + {s} * 1]",
                "tileloadd tmm3, [{p3} + {s} * 1]",
                p0 = in(reg) cp, p1 = in(reg) c1, p2 = in(reg) c2, p3 = in(reg) c3, s = in(reg) ldb,
                options(nostack, readonly, preserves_flags)
            );
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s} * 1]",
            "tileloadd tmm6, [{b0} + {s} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s} * 1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s} * 1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) nk => _,
            s = in(reg) 64usize,
            options(nostack, readonly)
        );
        asm!(
            "tilestored [{p0} + {s} * 1], tmm0",
            "tilestored [{p1} + {s} * 1], tmm1",
            "tilestored [{p2} + {s} * 1], tmm2",
            "tilestored [{p3} + {s} * 1], tmm3",
            p0 = in(reg) cp, p1 = in(reg) c1, p2 = in(reg) c2, p3 = in(reg) c3, s = in(reg) ldb,
            options(nostack, preserves_flags)
        );
    }

    // ---------------- AVX512-BF16 ----------------

    /// One rayon task with `vdpbf16ps`: 8 rows × 32 columns of C in 16 zmm accumulators,
    /// full k per accumulator pass (same k order as AMX: k-tile by k-tile, pair by pair).
    ///
    /// C(i, j) is written at `c.add((i - org.0)·ldc + j - org.1)`: into the user's C with
    /// `org = (0, 0)`, or into a scratch block whose first element is C(org).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn bf16_task(
        g: &Geom,
        blk: &Block,
        ap: *const u16,
        bp: *const u16,
        c: *mut f32,
        ldc: usize,
        org: (usize, usize),
    ) {
        bf16_task_impl(g, blk, ap, bp, c, ldc, org)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn bf16_task_impl(
        g: &Geom,
        blk: &Block,
        ap: *const u16,
        bp: *const u16,
        c: *mut f32,
        ldc: usize,
        org: (usize, usize),
    ) {
        let kt_all = g.k_tiles;
        let mut cc = blk.c0;
        while cc < blk.c1 {
            if cc >= g.n {
                break;
            }
            let nt = cc / TN;
            let msk0 = lane_mask(g.n - cc);
            let msk1 = lane_mask(g.n.saturating_sub(cc + TN));
            let mut rr = blk.r0;
            while rr < blk.r1 {
                if rr >= g.m {
                    break;
                }
                let mt = rr / TM;
                let half = (rr % TM) / 8;
                let vr = (g.m - rr).min(8);
                let mut acc = [[_mm512_setzero_ps(); 2]; 8];
                if g.accumulate {
                    for (i, a) in acc.iter_mut().enumerate().take(vr) {
                        let crow = c.add((rr + i - org.0) * ldc + cc - org.1);
                        a[0] = _mm512_maskz_loadu_ps(msk0, crow);
                        a[1] = _mm512_maskz_loadu_ps(msk1, crow.wrapping_add(TN));
                    }
                }
                for kt in 0..kt_all {
                    let at = ap.add((mt * kt_all + kt) * TILE_U16 + half * 8 * TK) as *const i32;
                    let bt0 = bp.add((nt * kt_all + kt) * TILE_U16);
                    let bt1 = bp.add(((nt + 1) * kt_all + kt) * TILE_U16);
                    for p in 0..16 {
                        let vb0: __m512bh =
                            std::mem::transmute(_mm512_loadu_si512(bt0.add(p * 32).cast()));
                        let vb1: __m512bh =
                            std::mem::transmute(_mm512_loadu_si512(bt1.add(p * 32).cast()));
                        for (i, a) in acc.iter_mut().enumerate() {
                            let va: __m512bh =
                                std::mem::transmute(_mm512_set1_epi32(*at.add(i * 16 + p)));
                            a[0] = _mm512_dpbf16_ps(a[0], va, vb0);
                            a[1] = _mm512_dpbf16_ps(a[1], va, vb1);
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate().take(vr) {
                    let crow = c.add((rr + i - org.0) * ldc + cc - org.1);
                    _mm512_mask_storeu_ps(crow, msk0, a[0]);
                    _mm512_mask_storeu_ps(crow.wrapping_add(TN), msk1, a[1]);
                }
                rr += 8;
            }
            cc += 2 * TN;
        }
    }
}
