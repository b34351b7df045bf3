//! Small bf16 products for the attention core, on CPUs where `vdpbf16ps` outruns fp32 FMAs.
//!
//! Operands are bf16 *pairs* along the summed dimension, one `u32` each (element `2p` in the low
//! half, `2p + 1` in the high half: `vdpbf16ps`'s layout), converted with round-to-nearest-even
//! (`vcvtne2ps2bf16`). An odd length gets a zero high half in its last pair. Products accumulate
//! in fp32 in a fixed order, so a result does not depend on the thread that computes it.

/// Whether the attention products of bf16 runs take this path: AVX512-BF16 without AMX, on a CPU
/// whose `vdpbf16ps` outruns fp32 FMAs ([`petnas_amx::avx512bf16_outruns_fp32`]: AMD).
pub(super) fn available() -> bool {
    petnas_amx::backend() == "avx512bf16" && petnas_amx::avx512bf16_outruns_fp32()
}

/// Pairs along the columns of `rows` × `cols` f32 at `src` (row stride `rs`, columns contiguous)
/// into `dst` [rows][cols.div_ceil(2)].
///
/// # Safety
/// `src` covers the view; `dst` holds `rows · cols.div_ceil(2)` values; the CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pairs_along_rows(src: *const f32, rows: usize, cols: usize, rs: usize, dst: *mut u32) {
    use std::arch::x86_64::*;
    let kp = cols.div_ceil(2);
    for i in 0..rows {
        let s = src.add(i * rs);
        let d = dst.add(i * kp);
        let mut c = 0;
        while c < cols {
            let left = cols - c;
            let m0 = lane_mask(left);
            let m1 = lane_mask(left.saturating_sub(16));
            let lo = _mm512_maskz_loadu_ps(m0, s.add(c));
            let hi = _mm512_maskz_loadu_ps(m1, s.wrapping_add(c + 16));
            // Lower 16 bf16 from `lo`, upper 16 from `hi`: 32 consecutive elements = 16 pairs.
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let pairs = left.min(32).div_ceil(2);
            _mm512_mask_storeu_epi32(d.add(c / 2) as *mut i32, lane_mask(pairs), v);
            c += 32;
        }
    }
}

/// Pairs down the rows of `rows` × `cols` f32 at `src` (row stride `rs`, columns contiguous): row
/// pair `p` = rows `2p`, `2p + 1` into `dst` [rows.div_ceil(2)][cols].
///
/// # Safety
/// As for [`pairs_along_rows`], with `dst` of `rows.div_ceil(2) · cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pairs_down_cols(src: *const f32, rows: usize, cols: usize, rs: usize, dst: *mut u32) {
    use std::arch::x86_64::*;
    for p in 0..rows.div_ceil(2) {
        let r0 = src.add(2 * p * rs);
        let two = 2 * p + 1 < rows;
        let d = dst.add(p * cols);
        let mut c = 0;
        while c < cols {
            let m = lane_mask(cols - c);
            let lo = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, r0.add(c)));
            let hi = if two {
                _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, r0.add(rs + c)))
            } else {
                std::mem::transmute::<__m256i, __m256bh>(_mm256_setzero_si256())
            };
            let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(lo));
            let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(hi));
            let v = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
            _mm512_mask_storeu_epi32(d.add(c) as *mut i32, m, v);
            c += 16;
        }
    }
}

/// `dst[c][r] = src[r][c]` for a `rows` × `cols` u32 matrix (both contiguous).
///
/// # Safety
/// Both hold `rows · cols` values and do not overlap.
pub(super) unsafe fn transpose_u32(src: *const u32, rows: usize, cols: usize, dst: *mut u32) {
    for r in 0..rows {
        for c in 0..cols {
            *dst.add(c * rows + r) = *src.add(r * cols + c);
        }
    }
}

/// `C[i][j] = alpha · Σ_p A[i][p] ⋅ B[p][j]` for `i < m`, `j < n`, with `A` [m][kp] and `B`
/// [kp][n] in pairs (row strides `lda`, `ldb` in pairs), `C` f32 (row stride `ldc`): blocks of 8
/// rows × 32 columns in registers, `p` in order, `alpha` applied once at the end.
///
/// # Safety
/// The views cover valid memory; `C` does not overlap `A` or `B`; the CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn gemm_pairs(
    m: usize,
    n: usize,
    kp: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
) {
    use std::arch::x86_64::*;
    let va = _mm512_set1_ps(alpha);
    let mut cc = 0;
    while cc < n {
        let m0 = lane_mask(n - cc);
        let m1 = lane_mask((n - cc).saturating_sub(16));
        let mut rr = 0;
        while rr < m {
            let vr = (m - rr).min(8);
            let mut acc = [[_mm512_setzero_ps(); 2]; 8];
            // Rows past `m` repeat the last row (read, never stored).
            let arow: [*const u32; 8] =
                std::array::from_fn(|i| a.add((rr + i.min(vr - 1)) * lda));
            for p in 0..kp {
                let bp = b.add(p * ldb + cc);
                let b0: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(m0, bp as *const i32));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_maskz_loadu_epi32(m1, bp.wrapping_add(16) as *const i32));
                for (i, ac) in acc.iter_mut().enumerate() {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*arow[i].add(p) as i32));
                    ac[0] = _mm512_dpbf16_ps(ac[0], x, b0);
                    ac[1] = _mm512_dpbf16_ps(ac[1], x, b1);
                }
            }
            for (i, ac) in acc.iter().enumerate().take(vr) {
                let cr = c.add((rr + i) * ldc + cc);
                _mm512_mask_storeu_ps(cr, m0, _mm512_mul_ps(ac[0], va));
                _mm512_mask_storeu_ps(cr.wrapping_add(16), m1, _mm512_mul_ps(ac[1], va));
            }
            rr += 8;
        }
        cc += 32;
    }
}

/// The first `min(left, 16)` lanes.
#[inline(always)]
fn lane_mask(left: usize) -> u16 {
    if left >= 16 {
        0xffff
    } else {
        ((1u32 << left) - 1) as u16
    }
}
