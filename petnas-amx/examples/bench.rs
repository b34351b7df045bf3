//! cargo run --release --example bench
//! Prints one JSON object per line. GFLOP/s = 2·m·n·k / time; the AMX/bf16 timings include
//! the per-call f32→bf16 conversion of A (B is pre-packed; pack time is reported separately).
use petnas_amx::*;
use std::time::Instant;

fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// (best, median) seconds of `f` over enough repetitions for ~`budget` seconds.
fn time<F: FnMut()>(mut f: F, budget: f64) -> (f64, f64) {
    for _ in 0..3 {
        f();
    }
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-7);
    let reps = ((budget / once) as usize).clamp(5, 2000);
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn main() {
    let budget: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.4);
    println!(
        "{{\"kind\":\"info\",\"backend\":\"{}\",\"amx_available\":{}}}",
        backend(),
        amx_available()
    );
    // (m, n, k, B layout): forward y = x·Wᵀ (W [n×k] row-major: rs=1, cs=k) or backward dx = g·W (rs=n, cs=1)
    let shapes = [
        (2048usize, 1536usize, 384usize, "fwd"),
        (2048, 384, 384, "fwd"),
        (2048, 384, 1536, "bwd"),
    ];
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for &(m, n, k, lay) in &shapes {
                let a = rand_vec(m * k, 1);
                let w = rand_vec(n * k, 2);
                let (rs, cs) = if lay == "fwd" { (1isize, k as isize) } else { (n as isize, 1isize) };
                let pb = PackedB::pack(&w, k, n, rs, cs);
                let mut c = vec![0f32; m * n];
                let flop = 2.0 * (m * n * k) as f64;
                let mut impls: Vec<(&str, Backend)> = vec![];
                for bk in [Backend::Amx, Backend::Avx512Bf16, Backend::Fp32] {
                    // the portable fp32 path is slow: time it on the smallest shape only
                    if bk.is_available() && (bk != Backend::Fp32 || (threads == 1 && n == 384 && k == 384)) {
                        impls.push((bk.name(), bk));
                    }
                }
                for (name, bk) in impls {
                    let (best, med) = time(|| gemm_bf16_with(bk, m, n, k, &a, k, &pb, &mut c, n, false), budget);
                    println!(
                        "{{\"kind\":\"gemm\",\"impl\":\"{name}\",\"m\":{m},\"n\":{n},\"k\":{k},\"b_layout\":\"{lay}\",\"threads\":{threads},\"best_ms\":{:.4},\"median_ms\":{:.4},\"gflops_best\":{:.1},\"gflops_median\":{:.1}}}",
                        best * 1e3, med * 1e3, flop / best * 1e-9, flop / med * 1e-9
                    );
                }
                let par = if threads == 1 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
                let (best, med) = time(
                    || unsafe {
                        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, w.as_ptr(), cs, rs, 0.0f32, 1.0f32, false, false, false, par)
                    },
                    budget,
                );
                println!(
                    "{{\"kind\":\"gemm\",\"impl\":\"gemm-0.19-f32\",\"m\":{m},\"n\":{n},\"k\":{k},\"b_layout\":\"{lay}\",\"threads\":{threads},\"best_ms\":{:.4},\"median_ms\":{:.4},\"gflops_best\":{:.1},\"gflops_median\":{:.1}}}",
                    best * 1e3, med * 1e3, flop / best * 1e-9, flop / med * 1e-9
                );
            }
            // Packing a 384×1536 weight (the 384→1536 layer): forward and backward layouts.
            for (lay, k, n) in [("fwd", 384usize, 1536usize), ("bwd", 1536, 384)] {
                let w = rand_vec(k * n, 3);
                let (rs, cs) = if lay == "fwd" { (1isize, k as isize) } else { (n as isize, 1isize) };
                let mut pb = PackedB::pack(&w, k, n, rs, cs);
                let (best, med) = time(|| pb.repack(&w, k, n, rs, cs), budget / 2.0);
                println!("{{\"kind\":\"pack_b\",\"mode\":\"repack\",\"k\":{k},\"n\":{n},\"b_layout\":\"{lay}\",\"threads\":{threads},\"best_us\":{:.1},\"median_us\":{:.1}}}", best * 1e6, med * 1e6);
                let (best, med) = time(|| drop(std::hint::black_box(PackedB::pack(&w, k, n, rs, cs))), budget / 2.0);
                println!("{{\"kind\":\"pack_b\",\"mode\":\"fresh\",\"k\":{k},\"n\":{n},\"b_layout\":\"{lay}\",\"threads\":{threads},\"best_us\":{:.1},\"median_us\":{:.1}}}", best * 1e6, med * 1e6);
            }
        });
    }
    // Plain f32→bf16 conversion rate of a 2048×384 A (single thread, for reference).
    let a = rand_vec(2048 * 384, 4);
    let mut d = vec![0u16; a.len()];
    let (best, med) = time(|| f32_to_bf16_slice(&a, &mut d), budget / 2.0);
    println!(
        "{{\"kind\":\"convert\",\"elems\":{},\"threads\":1,\"best_us\":{:.1},\"median_us\":{:.1}}}",
        a.len(),
        best * 1e6,
        med * 1e6
    );
}
