//! Separate test binary (own process): PETNAS_NO_AMX=1 must force the non-AMX path.
mod common;
use common::*;
use petnas_amx::*;

#[test]
fn env_var_forces_fallback() {
    // Only test in this binary; set before the backend is first queried.
    std::env::set_var("PETNAS_NO_AMX", "1");
    let name = backend();
    assert_ne!(name, "amx");
    eprintln!("PETNAS_NO_AMX=1 -> backend {name}");
    let sb = selected_backend();
    for (i, &(m, n, k)) in [
        (1, 1, 1),
        (17, 33, 100),
        (100, 63, 384),
        (64, 1536, 32),
        (35, 40, 1536),
    ]
    .iter()
    .enumerate()
    {
        for accumulate in [false, true] {
            let mut rng = Rng(i as u64);
            let a = rng.vec(m * k);
            let b = BMat::new(&mut rng, k, n, i % 2);
            let pb = b.pack();
            let mut c = rng.vec(m * n);
            let c0 = c.clone();
            let (refv, scale) = reference(
                m,
                n,
                k,
                &a,
                k,
                &b,
                if accumulate { Some((&c0, n)) } else { None },
            );
            gemm_bf16(m, n, k, &a, k, &pb, &mut c, n, accumulate);
            let e = max_err(m, n, &c, n, &refv, &scale);
            assert!(e <= 1e-5, "{sb:?} {m}x{n}x{k}: {e:e}");
        }
    }
}
