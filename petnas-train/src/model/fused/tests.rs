//! The fused ops against the composite ones: forward values and gradients.

use super::*;
use crate::model::ops;
use candle_core::{Device, Var, D};
use petnas_core::rng::Rng;
use std::sync::Arc;

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
    // The zero-offset init's frozen factors (rank 4 here, not the trained rank).
    let u0 = Tensor::from_vec(rand(&[k, 4], 36, 0.5), (k, 4), &dev)?;
    let v0 = Tensor::from_vec(rand(&[o, 4], 37, 0.5), (o, 4), &dev)?;
    for (with_lora, gelu, offset) in [
        (false, false, false),
        (false, true, false),
        (true, false, false),
        (true, true, false),
        (true, true, true),
    ] {
        let lora = || {
            with_lora.then(|| LoraParts {
                u: u.as_tensor(),
                v: v.as_tensor(),
                offset: offset.then_some((&u0, &v0)),
            })
        };
        let packed = (!with_lora).then(|| Arc::new(PackedWeight::from_tensor(&w).unwrap()));
        let y16 = pet_linear(x.as_tensor(), &w, b.as_tensor(), lora(), gelu, Some(packed))?;
        let y32 = pet_linear(x.as_tensor(), &w, b.as_tensor(), lora(), gelu, None)?;
        let r = rel(&y16, &y32);
        assert!(
            r < 1e-2 && r > 0.0,
            "lora {with_lora} gelu {gelu} offset {offset}: forward differs by {r} (0 would mean no bf16)"
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
                "lora {with_lora} gelu {gelu} offset {offset}: gradient {i} differs by {r}"
            );
        }
    }
    Ok(())
}

#[test]
fn both_bf16_weight_layouts_compute_bf16_products_in_fp32() {
    // The tile layout (AMX / AVX512-BF16 / portable kernel) and the rounded-f32 layout (gemm's
    // f32 kernels, for CPUs without bf16 instructions) must both compute bf16(a)·bf16(b) with
    // fp32 accumulation: against an f64 reference on the rounded values, to fp32 accuracy, and
    // clearly apart from the unrounded product.
    let (n, k, o) = (37, 70, 45);
    let x = rand(&[n, k], 41, 1.0);
    let w = rand(&[o, k], 42, 0.3);
    let g = rand(&[n, o], 43, 1.0);
    let r = |v: f32| petnas_amx::bf16_to_f32(petnas_amx::f32_to_bf16_rne(v)) as f64;
    let (mut y_ref, mut y_raw) = (vec![0f64; n * o], vec![0f64; n * o]);
    let mut dx_ref = vec![0f64; n * k];
    for i in 0..n {
        for j in 0..o {
            for t in 0..k {
                y_ref[i * o + j] += r(x[i * k + t]) * r(w[j * k + t]);
                y_raw[i * o + j] += x[i * k + t] as f64 * w[j * k + t] as f64;
                dx_ref[i * k + t] += r(g[i * o + j]) * r(w[j * k + t]);
            }
        }
    }
    let worst = |a: &[f32], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max)
    };
    for tiles in [true, false] {
        let p = PackedWeight::with_layout(&w, o, k, true, tiles);
        let mut y = vec![0f32; n * o];
        p.forward(n, &x, &mut y);
        let dx = p.backward(n, &g).expect("packed with backward");
        assert!(
            worst(&y, &y_ref) < 1e-4,
            "{p:?}: forward {}",
            worst(&y, &y_ref)
        );
        assert!(
            worst(&dx, &dx_ref) < 1e-4,
            "{p:?}: backward {}",
            worst(&dx, &dx_ref)
        );
        assert!(
            worst(&y, &y_raw) > 1e-3,
            "{p:?}: the inputs were not rounded to bf16"
        );
    }
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
    let heads =
        |t: &Tensor| -> Result<Tensor> { t.reshape((b, l, nh, dh))?.transpose(1, 2)?.contiguous() };
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

/// How many values of `got` differ from `want` in their bits.
fn bits_differing(got: &[f32], want: &[f32]) -> usize {
    assert_eq!(got.len(), want.len(), "lengths");
    got.iter()
        .zip(want)
        .filter(|(g, w)| g.to_bits() != w.to_bits())
        .count()
}

#[test]
fn the_rank_major_transposed_kernel_gives_the_bits_of_plain_ordered_sums() {
    // xᵀ·b for the LoRA factor gradients: each sum runs over the rows in order, whatever the
    // register layout, so the result equals the plain triple loop bit for bit (the kernel's
    // layout changed in a later commit; the study's records rest on these bits).
    for &(rows, cols, r) in &[
        (300usize, 212usize, 8usize),
        (257, 1536, 8),
        (33, 117, 8),
        (40, 384, 8),
        (129, 70, 16),
        (64, 384, 16),
    ] {
        let a = rand(&[rows, cols], 11 + cols as u64, 1.0);
        let b = rand(&[rows, r], 7 + r as u64, 1.0);
        let got = super::linear::transposed_times_small_for_test(&a, rows, cols, &b, r);
        let want = super::linear::transposed_times_small_reference(&a, rows, cols, &b, r);
        let diff = bits_differing(&got, &want);
        assert_eq!(
            diff,
            0,
            "rows {rows} cols {cols} rank {r}: {diff} of {} sums differ",
            want.len()
        );
    }
}

#[test]
fn the_rows_kernel_gives_the_bits_of_its_plain_loop() {
    // x·U and g·V for the LoRA gradients: whatever the kernel's vectorisation, each output is
    // its four partial sums (j mod 4, the tail in the first) added in a fixed order (the study's
    // records rest on these bits). Row counts off the task blocks, k with a tail, both ranks.
    for &(rows, k, r) in &[
        (2048usize, 384usize, 8usize),
        (67, 1536, 8),
        (33, 30, 8),
        (130, 384, 16),
        (7, 13, 16),
    ] {
        let a = rand(&[rows, k], 3 + k as u64, 1.0);
        let m = rand(&[k, r], 5 + r as u64, 1.0);
        let got = super::linear::rows_times_small_for_test(&a, k, &m, r);
        let want = super::linear::rows_times_small_reference(&a, k, &m, r);
        let diff = bits_differing(&got, &want);
        assert_eq!(
            diff,
            0,
            "rows {rows} k {k} rank {r}: {diff} of {} differ",
            want.len()
        );
    }
}

/// The bf16 path's blocked bias + LoRA gradients equal the plain products in f64 (several
/// row blocks and a partial one, both ranks with kernels), and do not depend on the thread
/// count; a rank without kernels is declined.
#[test]
fn blocked_lora_gradients_match_the_plain_products() {
    let (n, k, o) = (300, 40, 70);
    let x = rand(&[n, k], 41, 1.0);
    let g = rand(&[n, o], 42, 1.0);
    for r in [8usize, 16] {
        let uv = rand(&[k + o, r], 43 + r as u64, 0.5);
        let (u, v) = uv.split_at(k * r);
        let (db, duv) = super::linear::lora_grads_blocked_for_test(&x, &g, n, k, o, &uv, r).unwrap();
        // f64 references: db = Σ_i g_i, dV = gᵀ(xU), dU = xᵀ(gV).
        let xu: Vec<f64> = (0..n * r).map(|t| (0..k).map(|j| x[t / r * k + j] as f64 * u[j * r + t % r] as f64).sum()).collect();
        let gxu: Vec<f64> = (0..n * r).map(|t| (0..o).map(|j| g[t / r * o + j] as f64 * v[j * r + t % r] as f64).sum()).collect();
        let close = |got: f32, want: f64, what: &str| {
            assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "rank {r} {what}: {got} vs {want}");
        };
        for c in 0..o {
            close(db[c], (0..n).map(|i| g[i * o + c] as f64).sum(), "db");
            for t in 0..r {
                close(duv[k * r + c * r + t], (0..n).map(|i| g[i * o + c] as f64 * xu[i * r + t]).sum(), "dV");
            }
        }
        for c in 0..k {
            for t in 0..r {
                close(duv[c * r + t], (0..n).map(|i| x[i * k + c] as f64 * gxu[i * r + t]).sum(), "dU");
            }
        }
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let (db1, duv1) = one.install(|| super::linear::lora_grads_blocked_for_test(&x, &g, n, k, o, &uv, r).unwrap());
        assert!(db1.iter().zip(&db).all(|(a, b)| a.to_bits() == b.to_bits()), "rank {r}: db depends on threads");
        assert!(duv1.iter().zip(&duv).all(|(a, b)| a.to_bits() == b.to_bits()), "rank {r}: d[U; V] depends on threads");
    }
    let uv = rand(&[k + o, 5], 50, 0.5);
    assert!(super::linear::lora_grads_blocked_for_test(&x, &g, n, k, o, &uv, 5).is_none());
}
