mod common;
use common::*;
use petnas_amx::*;

const SHAPES: [usize; 12] = [1, 7, 15, 16, 17, 31, 32, 33, 63, 100, 384, 1536];
const TOL: f64 = 1e-5;

// ---------------------------------------------------------------- rounding

/// Independent reference: pick the nearer of the two bf16 neighbours in f64, ties to even.
fn rne_reference(x: f32) -> u16 {
    if x.is_nan() {
        return ((x.to_bits() >> 16) as u16) | 0x40;
    }
    if x.is_infinite() {
        return (x.to_bits() >> 16) as u16;
    }
    let lo = (x.to_bits() >> 16) as u16; // truncation (towards zero in magnitude)
    let hi = lo + 1; // next magnitude up (same sign)
    let val = |h: u16| -> f64 {
        if h & 0x7fff == 0x7f80 {
            // rounding past the largest finite: treat as 2^128 in magnitude
            let v = 2f64.powi(128);
            if h & 0x8000 != 0 {
                -v
            } else {
                v
            }
        } else {
            bf16_to_f32(h) as f64
        }
    };
    let (dl, dh) = ((x as f64 - val(lo)).abs(), (x as f64 - val(hi)).abs());
    if dl < dh {
        lo
    } else if dh < dl {
        hi
    } else if lo & 1 == 0 {
        lo
    } else {
        hi
    }
}

#[test]
fn rounding_ties_to_even() {
    let one = 1.0f32.to_bits();
    // exactly half an ulp above 1.0 -> stays 1.0 (even)
    assert_eq!(f32_to_bf16_rne(f32::from_bits(one + 0x8000)), 0x3f80);
    // just above half -> rounds up
    assert_eq!(f32_to_bf16_rne(f32::from_bits(one + 0x8001)), 0x3f81);
    // 1 + 1.5 ulp: tie between odd 0x3f81 and even 0x3f82 -> 0x3f82
    assert_eq!(f32_to_bf16_rne(f32::from_bits(one + 0x18000)), 0x3f82);
    assert_eq!(f32_to_bf16_rne(f32::from_bits(one + 0x17fff)), 0x3f81);
    // negative tie
    assert_eq!(f32_to_bf16_rne(-f32::from_bits(one + 0x18000)), 0xbf82);
    assert_eq!(f32_to_bf16_rne(1.0), 0x3f80);
    assert_eq!(f32_to_bf16_rne(-2.0), 0xc000);
    assert_eq!(f32_to_bf16_rne(0.0), 0x0000);
    assert_eq!(f32_to_bf16_rne(-0.0), 0x8000);
    assert_eq!(bf16_to_f32(0x3f80), 1.0);
    assert_eq!(bf16_to_f32(0xc000), -2.0);
}

#[test]
fn rounding_special_values() {
    assert_eq!(f32_to_bf16_rne(f32::INFINITY), 0x7f80);
    assert_eq!(f32_to_bf16_rne(f32::NEG_INFINITY), 0xff80);
    assert_eq!(f32_to_bf16_rne(f32::MAX), 0x7f80); // overflows to inf under RNE
    assert_eq!(f32_to_bf16_rne(f32::MIN), 0xff80);
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x7f7f_7fff)), 0x7f7f); // rounds down to max finite
                                                                      // NaNs stay NaN (also those whose payload is only in the low 16 bits), quiet, sign kept
    for bits in [
        0x7f80_0001u32,
        0x7fc0_0000,
        0x7f80_ffff,
        0xff80_0001,
        0xffff_ffff,
        0x7fff_ffff,
    ] {
        let h = f32_to_bf16_rne(f32::from_bits(bits));
        assert!(bf16_to_f32(h).is_nan(), "{bits:#x} -> {h:#x}");
        assert_eq!(h & 0x8000, ((bits >> 16) as u16) & 0x8000);
        assert_eq!(h & 0x0040, 0x0040);
    }
    assert!(bf16_to_f32(f32_to_bf16_rne(f32::NAN)).is_nan());
    // subnormals are rounded, not flushed
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x0000_0001)), 0x0000);
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x0000_8000)), 0x0000); // tie -> even 0
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x0001_8000)), 0x0002); // tie -> even 2
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x0001_0000)), 0x0001);
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x007f_ffff)), 0x0080); // largest subnormal -> min normal
    assert_eq!(f32_to_bf16_rne(f32::from_bits(0x8000_c000)), 0x8001);
    // round-trip of every bf16 value (except NaN payloads, which get quieted)
    for h in 0..=u16::MAX {
        let x = bf16_to_f32(h);
        if !x.is_nan() {
            assert_eq!(f32_to_bf16_rne(x), h);
        }
    }
}

#[test]
fn rounding_matches_reference_random() {
    let mut rng = Rng(7);
    for _ in 0..2_000_000 {
        let bits = rng.next_u64() as u32;
        let x = f32::from_bits(bits);
        assert_eq!(f32_to_bf16_rne(x), rne_reference(x), "bits {bits:#x}");
    }
    // every low-16 pattern around a few exponents, including the overflow boundary
    for hi in [
        0x0000u32, 0x0001, 0x007f, 0x0080, 0x3f80, 0x3f81, 0x7f7f, 0x8000, 0x807f, 0xbf80, 0xff7f,
    ] {
        for lo in 0..=0xffffu32 {
            let x = f32::from_bits((hi << 16) | lo);
            assert_eq!(f32_to_bf16_rne(x), rne_reference(x));
        }
    }
}

#[test]
fn slice_conversion_matches_scalar() {
    let mut rng = Rng(11);
    let specials = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        1e-40,
        -1e-40,
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x7f80_0001),
    ];
    for len in 0..100 {
        let src: Vec<f32> = (0..len)
            .map(|i| {
                if i % 5 == 0 {
                    specials[i % specials.len()]
                } else {
                    f32::from_bits(rng.next_u64() as u32)
                }
            })
            .collect();
        let mut dst = vec![0xaaaau16; len];
        f32_to_bf16_slice(&src, &mut dst);
        for i in 0..len {
            assert_eq!(dst[i], f32_to_bf16_rne(src[i]), "len {len} i {i}");
        }
    }
}

// ---------------------------------------------------------------- packing

#[test]
fn packing_layouts_agree_and_match_scalar() {
    let mut rng = Rng(3);
    for &(k, n) in &[
        (1, 1),
        (7, 33),
        (31, 17),
        (32, 32),
        (33, 100),
        (64, 16),
        (100, 63),
        (384, 1536),
        (1536, 384),
        (5, 1),
    ] {
        let base = BMat::new(&mut rng, k, n, 0);
        // the same logical matrix in the three layouts
        let mut variants = vec![];
        for layout in 0..3 {
            let mut b = BMat::new(&mut rng, k, n, layout);
            let (rs, cs) = (b.rs, b.cs);
            for i in 0..k {
                for j in 0..n {
                    b.data[(i as isize * rs + j as isize * cs) as usize] = base.at(i, j);
                }
            }
            variants.push(b.pack());
        }
        for v in &variants[1..] {
            assert_eq!(v.as_raw(), variants[0].as_raw(), "k {k} n {n}");
        }
        let p = &variants[0];
        assert_eq!(p.as_raw().len() % 512, 0);
        let kp = k.div_ceil(32) * 32;
        let np = n.div_ceil(32) * 32;
        assert_eq!(p.as_raw().len(), kp * np);
        for i in 0..kp {
            for j in 0..np {
                let want = if i < k && j < n {
                    f32_to_bf16_rne(base.at(i, j))
                } else {
                    0
                };
                assert_eq!(p.get(i, j), want, "k {k} n {n} ({i},{j})");
            }
        }
    }
}

#[test]
fn packing_rejects_out_of_range_strides() {
    let b = vec![0f32; 10];
    assert!(std::panic::catch_unwind(|| PackedB::pack(&b, 3, 4, 4, 1)).is_err());
    assert!(std::panic::catch_unwind(|| PackedB::pack(&b, 2, 5, -5, 1)).is_err());
    let _ = PackedB::pack(&b, 2, 5, 5, 1);
    // negative strides via the raw-pointer API (rows reversed)
    let v: Vec<f32> = (0..10).map(|x| x as f32).collect();
    let p = unsafe { PackedB::pack_ptr(v.as_ptr().add(5), 2, 5, -5, 1) };
    assert_eq!(p.get(0, 0), f32_to_bf16_rne(5.0));
    assert_eq!(p.get(1, 4), f32_to_bf16_rne(4.0));
}

#[test]
fn repack_reuses_and_is_correct() {
    let mut rng = Rng(5);
    let b1 = BMat::new(&mut rng, 100, 70, 0);
    let b2 = BMat::new(&mut rng, 40, 30, 1);
    let mut p = b1.pack();
    p.repack(&b2.data, 40, 30, b2.rs, b2.cs);
    let q = b2.pack();
    assert_eq!(p.as_raw(), q.as_raw());
    assert_eq!((p.k(), p.n()), (40, 30));
}

// ---------------------------------------------------------------- gemm correctness

#[test]
fn gemm_shape_sweep_all_backends() {
    let bks = backends();
    eprintln!("backends tested: {:?}, selected {}", bks, backend());
    let mut worst = vec![0f64; bks.len()];
    let mut idx = 0u64;
    for &m in &SHAPES {
        for &n in &SHAPES {
            for &k in &SHAPES {
                if m * n * k > 10_000_000 {
                    continue;
                }
                idx += 1;
                let layout = (idx % 2) as usize;
                let accumulate = (idx / 2) % 2 == 1;
                let pad = if (idx / 4) % 2 == 1 { 5 } else { 0 };
                for (bi, &bk) in bks.iter().enumerate() {
                    let e = run_case(bk, idx, m, n, k, layout, accumulate, pad);
                    assert!(e <= TOL, "{bk:?} m {m} n {n} k {k} layout {layout} acc {accumulate} pad {pad}: err {e:e}");
                    worst[bi] = worst[bi].max(e);
                }
            }
        }
    }
    for (bk, w) in bks.iter().zip(&worst) {
        eprintln!("max normalized error {:?}: {:e}", bk, w);
    }
}

#[test]
fn gemm_all_variants_small() {
    let small = [1usize, 15, 17, 33, 100];
    let mut seed = 1000;
    for bk in backends() {
        for &m in &small {
            for &n in &small {
                for &k in &small {
                    for layout in 0..3 {
                        for accumulate in [false, true] {
                            for pad in [0, 3] {
                                seed += 1;
                                let e = run_case(bk, seed, m, n, k, layout, accumulate, pad);
                                assert!(e <= TOL, "{bk:?} m {m} n {n} k {k} layout {layout} acc {accumulate} pad {pad}: err {e:e}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_training_shapes() {
    let mut worst = 0f64;
    for bk in backends() {
        if bk == Backend::Fp32 {
            continue; // slow scalar path; covered by the sweep
        }
        for &(m, n, k, layout) in &[
            (2048, 1536, 384, 0),
            (2048, 384, 1536, 1),
            (2048, 384, 384, 0),
            (333, 1536, 1535, 1),
        ] {
            for accumulate in [false, true] {
                let e = run_case(
                    bk,
                    77,
                    m,
                    n,
                    k,
                    layout,
                    accumulate,
                    if accumulate { 16 } else { 0 },
                );
                assert!(e <= TOL, "{bk:?} m {m} n {n} k {k}: err {e:e}");
                worst = worst.max(e);
            }
        }
    }
    eprintln!("training shapes max normalized error {worst:e}");
    // plain relative errors of the selected backend on the three benchmark shapes
    for &(m, n, k, layout) in &[
        (2048, 1536, 384, 0),
        (2048, 384, 384, 0),
        (2048, 384, 1536, 1),
    ] {
        let mut rng = Rng(5);
        let a = rng.vec(m * k);
        let b = BMat::new(&mut rng, k, n, layout);
        let pb = b.pack();
        let mut c = vec![0f32; m * n];
        gemm_bf16(m, n, k, &a, k, &pb, &mut c, n, false);
        let (refv, scale) = reference(m, n, k, &a, k, &b, None);
        let (e1, e2) = plain_rel_errs(m, n, &c, n, &refv);
        let e0 = max_err(m, n, &c, n, &refv, &scale);
        eprintln!("{} {m}x{n}x{k}: max|err|/max|ref| {e1:e}, max rel (|ref|>=1e-2 max) {e2:e}, max err/sum|ab| {e0:e}", backend());
        assert!(e1 < 1e-5 && e0 < 1e-5);
    }
}

#[test]
fn gemm_degenerate() {
    for bk in backends() {
        let pb = PackedB::pack(&[], 0, 5, 1, 0);
        let mut c = vec![3.0f32; 10];
        gemm_bf16_with(bk, 2, 5, 0, &[], 0, &pb, &mut c, 5, true);
        assert!(c.iter().all(|&x| x == 3.0));
        gemm_bf16_with(bk, 2, 5, 0, &[], 0, &pb, &mut c, 5, false);
        assert!(c.iter().all(|&x| x == 0.0));
        let pb = PackedB::pack(&[1.0; 6], 2, 3, 3, 1);
        let mut c: Vec<f32> = vec![];
        gemm_bf16_with(bk, 0, 3, 2, &[], 2, &pb, &mut c, 3, false);
        // exact small integers
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let bm = [1.0f32, 0.0, 2.0, 0.0, 1.0, 3.0]; // [2x3]
        let pb = PackedB::pack(&bm, 2, 3, 3, 1);
        let mut c = vec![0f32; 6];
        gemm_bf16_with(bk, 2, 3, 2, &a, 2, &pb, &mut c, 3, false);
        assert_eq!(c, vec![1.0, 2.0, 8.0, 3.0, 4.0, 18.0]);
        gemm_bf16_with(bk, 2, 3, 2, &a, 2, &pb, &mut c, 3, true);
        assert_eq!(c, vec![2.0, 4.0, 16.0, 6.0, 8.0, 36.0]);
    }
}

#[test]
fn gemm_bit_identical_across_thread_counts() {
    let mut rng = Rng(99);
    for bk in backends() {
        // (300, 1600, 1100) has several column blocks per row block (B block > 1.5 MiB), so
        // tasks on different threads share lazily converted A stripes.
        let shapes: &[(usize, usize, usize)] = if bk == Backend::Fp32 {
            &[(200, 300, 150), (33, 65, 17)]
        } else {
            &[
                (2048, 1536, 384),
                (517, 771, 555),
                (300, 1600, 1100),
                (33, 65, 17),
            ]
        };
        for &(m, n, k) in shapes {
            let a = rng.vec(m * k);
            let b = BMat::new(&mut rng, k, n, 0);
            let pb = b.pack();
            let c0 = rng.vec(m * n);
            let mut results = vec![];
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut c = c0.clone();
                // pack inside the pool too: packing must also be thread-count independent
                let pb2 = pool.install(|| b.pack());
                assert_eq!(pb2.as_raw(), pb.as_raw());
                pool.install(|| gemm_bf16_with(bk, m, n, k, &a, k, &pb2, &mut c, n, true));
                results.push(c.iter().map(|x| x.to_bits()).collect::<Vec<u32>>());
            }
            assert!(
                results.windows(2).all(|w| w[0] == w[1]),
                "{bk:?} {m}x{n}x{k} differs across thread counts"
            );
        }
    }
}

#[test]
fn backend_selection() {
    let name = backend();
    assert!(["amx", "avx512bf16", "fp32"].contains(&name));
    assert_eq!(name, selected_backend().name());
    if std::env::var_os("PETNAS_NO_AMX").is_none() {
        assert_eq!(amx_available(), name == "amx");
    }
    eprintln!("backend {name}, amx_available {}", amx_available());
}

/// The vendor that decides whether bf16 without AMX runs `vdpbf16ps` is the one Linux reports,
/// and the rule needs AVX512-BF16.
#[test]
fn cpu_vendor_matches_linux_and_gates_avx512bf16() {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let linux = info
            .lines()
            .find_map(|l| l.strip_prefix("vendor_id"))
            .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .expect("vendor_id in /proc/cpuinfo");
        assert_eq!(cpu_vendor(), linux);
    }
    if avx512bf16_outruns_fp32() {
        assert!(Backend::Avx512Bf16.is_available());
        assert_eq!(cpu_vendor(), "AuthenticAMD");
    }
    eprintln!(
        "vendor {}, avx512bf16_outruns_fp32 {}",
        cpu_vendor(),
        avx512bf16_outruns_fp32()
    );
}

#[test]
fn gemm_concurrent_callers_and_nested_rayon() {
    // Several OS threads calling gemm at once on a shared PackedB, and gemm called from
    // inside rayon tasks (nested parallelism), must all produce the single-call result.
    let mut rng = Rng(123);
    let (m, n, k) = (130, 200, 300);
    let a = rng.vec(m * k);
    let b = BMat::new(&mut rng, k, n, 1);
    let pb = b.pack();
    for bk in backends() {
        let mut want = vec![0f32; m * n];
        gemm_bf16_with(bk, m, n, k, &a, k, &pb, &mut want, n, false);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut c = vec![0f32; m * n];
                        for _ in 0..5 {
                            gemm_bf16_with(bk, m, n, k, &a, k, &pb, &mut c, n, false);
                        }
                        c
                    })
                })
                .collect();
            for h in hs {
                assert_eq!(h.join().unwrap(), want, "{bk:?} concurrent");
            }
        });
        use rayon::prelude::*;
        let outs: Vec<Vec<f32>> = (0..6)
            .into_par_iter()
            .map(|_| {
                let mut c = vec![0f32; m * n];
                gemm_bf16_with(bk, m, n, k, &a, k, &pb, &mut c, n, false);
                c
            })
            .collect();
        for c in outs {
            assert_eq!(c, want, "{bk:?} nested");
        }
    }
}

/// Packing from 32-row blocks gives the bits of packing the whole matrix, in both directions,
/// for row counts that leave partial blocks and tiles, and the fill sees each block once.
#[test]
fn packing_from_row_blocks_equals_packing_the_whole_matrix() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let mut rng = Rng(21);
    for &(rows, cols) in &[(384usize, 384usize), (1536, 384), (384, 1536), (33, 17), (1, 5), (70, 100)] {
        let w = rng.vec(rows * cols);
        let calls: Vec<AtomicU32> = (0..rows.div_ceil(32)).map(|_| AtomicU32::new(0)).collect();
        let fill = |r0: usize, buf: &mut [f32]| {
            assert_eq!(r0 % 32, 0);
            calls[r0 / 32].fetch_add(1, Ordering::Relaxed);
            buf.copy_from_slice(&w[r0 * cols..r0 * cols + buf.len()]);
        };
        let (fwd, bwd) = PackedB::pack_rows_both(rows, cols, true, &fill);
        assert!(calls.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{rows}x{cols}: each block filled once");
        let fwd_ref = PackedB::pack(&w, cols, rows, 1, cols as isize);
        let bwd_ref = PackedB::pack(&w, rows, cols, cols as isize, 1);
        assert_eq!((fwd.k(), fwd.n()), (cols, rows));
        assert_eq!(fwd.as_raw(), fwd_ref.as_raw(), "{rows}x{cols} forward layout");
        let bwd = bwd.expect("asked for backward");
        assert_eq!((bwd.k(), bwd.n()), (rows, cols));
        assert_eq!(bwd.as_raw(), bwd_ref.as_raw(), "{rows}x{cols} backward layout");
        let (_, none) = PackedB::pack_rows_both(rows, cols, false, &|r0, buf: &mut [f32]| {
            buf.copy_from_slice(&w[r0 * cols..r0 * cols + buf.len()])
        });
        assert!(none.is_none());
    }
}

/// A store sees every element of C exactly once, as computed (accumulation included), and
/// what it writes is what C holds; `prepare` announces each region before its store (several
/// column blocks per row block, m and n tails, a leading dimension wider than n).
#[test]
fn store_receives_each_finished_element_once_and_writes_c() {
    use std::sync::atomic::{AtomicU32, Ordering};
    struct BiasStore<'a> {
        c: usize,
        ldc: usize,
        m: usize,
        n: usize,
        bias: &'a [f32],
        visits: &'a [AtomicU32],
        prepared: &'a [AtomicU32],
    }
    impl Store for BiasStore<'_> {
        fn prepare(&self, r0: usize, rows: usize, c0: usize, cols: usize) {
            for r in r0..r0 + rows {
                for j in c0..c0 + cols {
                    self.prepared[r * self.ldc + j].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        fn store(&self, r0: usize, rows: usize, c0: usize, cols: usize, src: &[f32], lds: usize, c: *mut f32, ldc: usize) {
            assert!(r0 + rows <= self.m && c0 + cols <= self.n, "region outside C");
            assert_eq!((c as usize, ldc), (self.c, self.ldc), "C as the GEMM was given it");
            for i in 0..rows {
                for j in 0..cols {
                    let at = (r0 + i) * self.ldc + c0 + j;
                    assert_eq!(self.prepared[at].load(Ordering::Relaxed), 1, "stored before prepared");
                    self.visits[at].fetch_add(1, Ordering::Relaxed);
                    // SAFETY: regions are disjoint (checked by the visit counts).
                    unsafe { *c.add(at) = src[i * lds + j] + self.bias[c0 + j] };
                }
            }
        }
    }
    let mut rng = Rng(8);
    for bk in backends() {
        let shapes: &[(usize, usize, usize)] = if bk == Backend::Fp32 {
            &[(37, 70, 33), (1, 5, 3)]
        } else {
            &[(300, 1600, 1100), (517, 771, 555), (37, 70, 33), (1, 5, 3)]
        };
        for &(m, n, k) in shapes {
            let ldc = n + 3;
            let a = rng.vec(m * k);
            let pb = BMat::new(&mut rng, k, n, 0).pack();
            let bias = rng.vec(n);
            for accumulate in [false, true] {
                let c0 = rng.vec(m * ldc);
                let mut plain = c0.clone();
                gemm_bf16_with(bk, m, n, k, &a, k, &pb, &mut plain, ldc, accumulate);
                let mut c = c0.clone();
                let visits: Vec<AtomicU32> = (0..m * ldc).map(|_| AtomicU32::new(0)).collect();
                let prepared: Vec<AtomicU32> = (0..m * ldc).map(|_| AtomicU32::new(0)).collect();
                let st = BiasStore { c: c.as_mut_ptr() as usize, ldc, m, n, bias: &bias, visits: &visits, prepared: &prepared };
                gemm_bf16_store_with(bk, m, n, k, &a, k, &pb, &mut c, ldc, accumulate, &st);
                for r in 0..m {
                    for j in 0..ldc {
                        let i = r * ldc + j;
                        if j < n {
                            assert_eq!(visits[i].load(Ordering::Relaxed), 1, "{bk:?} {m}x{n}x{k} ({r}, {j}) visits");
                            assert_eq!(c[i].to_bits(), (plain[i] + bias[j]).to_bits(), "{bk:?} {m}x{n}x{k} ({r}, {j})");
                        } else {
                            assert_eq!(c[i].to_bits(), c0[i].to_bits(), "column past n touched");
                        }
                    }
                }
            }
        }
    }
}
