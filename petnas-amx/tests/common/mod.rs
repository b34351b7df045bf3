#![allow(clippy::too_many_arguments)]
#![allow(dead_code)]
use petnas_amx::*;

pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.uniform()).collect()
    }
}

pub fn r(x: f32) -> f64 {
    bf16_to_f32(f32_to_bf16_rne(x)) as f64
}

/// A B matrix [k x n] stored in a buffer with the given layout.
pub struct BMat {
    pub data: Vec<f32>,
    pub k: usize,
    pub n: usize,
    pub rs: isize,
    pub cs: isize,
}
impl BMat {
    /// layout 0: forward (W [n x k] row-major: rs=1, cs=k); 1: backward (row-major [k x n]: rs=n, cs=1);
    /// 2: generic strided (rs = 2n+1... cs = 2), embedded with gaps.
    pub fn new(rng: &mut Rng, k: usize, n: usize, layout: usize) -> BMat {
        match layout {
            0 => BMat {
                data: rng.vec(k * n),
                k,
                n,
                rs: 1,
                cs: k as isize,
            },
            1 => BMat {
                data: rng.vec(k * n),
                k,
                n,
                rs: n as isize,
                cs: 1,
            },
            _ => {
                let rs = (2 * n + 3) as isize;
                BMat {
                    data: rng.vec(k * (2 * n + 3)),
                    k,
                    n,
                    rs,
                    cs: 2,
                }
            }
        }
    }
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[(i as isize * self.rs + j as isize * self.cs) as usize]
    }
    pub fn pack(&self) -> PackedB {
        PackedB::pack(&self.data, self.k, self.n, self.rs, self.cs)
    }
}

/// Returns (reference values, abs-sum scale) for C = [C0 +] bf16(A) bf16(B), in f64.
pub fn reference(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &BMat,
    c0: Option<(&[f32], usize)>,
) -> (Vec<f64>, Vec<f64>) {
    let mut bt = vec![0f64; k * n]; // [k][n]
    for i in 0..k {
        for j in 0..n {
            bt[i * n + j] = r(b.at(i, j));
        }
    }
    let mut out = vec![0f64; m * n];
    let mut scale = vec![0f64; m * n];
    for i in 0..m {
        let o = &mut out[i * n..(i + 1) * n];
        let s = &mut scale[i * n..(i + 1) * n];
        if let Some((c, ldc)) = c0 {
            for j in 0..n {
                o[j] = c[i * ldc + j] as f64;
                s[j] = o[j].abs();
            }
        }
        for p in 0..k {
            let av = r(a[i * lda + p]);
            let brow = &bt[p * n..(p + 1) * n];
            for j in 0..n {
                o[j] += av * brow[j];
                s[j] += (av * brow[j]).abs();
            }
        }
    }
    (out, scale)
}

/// Max of |c - ref| / (abs-sum scale) over the m x n result; panics on non-finite.
pub fn max_err(m: usize, n: usize, c: &[f32], ldc: usize, refv: &[f64], scale: &[f64]) -> f64 {
    let mut e: f64 = 0.0;
    for i in 0..m {
        for j in 0..n {
            let x = c[i * ldc + j] as f64;
            assert!(x.is_finite(), "non-finite at ({i},{j})");
            let d = (x - refv[i * n + j]).abs() / (scale[i * n + j] + 1e-30);
            if scale[i * n + j] == 0.0 {
                assert_eq!(x, 0.0, "expected exact zero at ({i},{j})");
            } else {
                e = e.max(d);
            }
        }
    }
    e
}

/// (max |c-ref| / max|ref|, max |c-ref|/|ref| over entries with |ref| >= 1e-2 * max|ref|)
pub fn plain_rel_errs(m: usize, n: usize, c: &[f32], ldc: usize, refv: &[f64]) -> (f64, f64) {
    let mx = refv.iter().fold(0f64, |a, &b| a.max(b.abs()));
    let (mut e1, mut e2) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let r = refv[i * n + j];
            let d = (c[i * ldc + j] as f64 - r).abs();
            e1 = e1.max(d / mx);
            if r.abs() >= 1e-2 * mx {
                e2 = e2.max(d / r.abs());
            }
        }
    }
    (e1, e2)
}

pub const SENTINEL: f32 = -12345.5;

/// Runs one case on `backend` and returns the max normalized error. Checks that C padding
/// columns (n..ldc) and rows are untouched.
pub fn run_case(
    backend: Backend,
    rng_seed: u64,
    m: usize,
    n: usize,
    k: usize,
    layout: usize,
    accumulate: bool,
    pad: usize,
) -> f64 {
    let mut rng = Rng(rng_seed);
    let lda = k + pad;
    let ldc = n + pad;
    let mut a = rng.vec(m * lda);
    // A padding must never be read: poison it.
    for i in 0..m {
        for p in k..lda {
            a[i * lda + p] = f32::NAN;
        }
    }
    let b = BMat::new(&mut rng, k, n, layout);
    let pb = b.pack();
    let mut c = vec![SENTINEL; m * ldc];
    if accumulate {
        for i in 0..m {
            for j in 0..n {
                c[i * ldc + j] = rng.uniform() * 4.0;
            }
        }
    }
    let c_init = c.clone();
    let (refv, scale) = reference(
        m,
        n,
        k,
        &a,
        lda,
        &b,
        if accumulate {
            Some((&c_init, ldc))
        } else {
            None
        },
    );
    gemm_bf16_with(backend, m, n, k, &a, lda, &pb, &mut c, ldc, accumulate);
    for i in 0..m {
        for j in n..ldc {
            assert_eq!(
                c[i * ldc + j].to_bits(),
                SENTINEL.to_bits(),
                "padding touched at ({i},{j})"
            );
        }
    }
    max_err(m, n, &c, ldc, &refv, &scale)
}

pub fn backends() -> Vec<Backend> {
    [Backend::Amx, Backend::Avx512Bf16, Backend::Fp32]
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}
