//! Numerical parity with PyTorch + transformers on the real all-MiniLM-L6-v2.
//!
//! Fixtures (`../shared/reference/`), made by `make_parity_fixture.py`:
//! - `minilm_rte_parity`: `--model DIR --glue DIR --task RTE --out minilm_rte_parity` (every bias
//!   delta 0: the bias criterion is identically 0 there, so only LoRA's is compared);
//! - `minilm_rte_parity_trained`: `--first 8 --n 4 --rank 4 --seed 2024 --delta-std 0.02` (every
//!   encoder bias carries a delta: all 49 bias criteria are compared too).
//! Each is checked in fp32 and in bf16 (against bf16 tolerances, see `verify::Tolerances`).
//! The model comes from `data/fetch-model` (run by `scripts/test`). Missing inputs fail the test
//! unless PETNAS_ALLOW_MISSING_MODEL=1.

use std::path::PathBuf;

use petnas_core::record::Precision;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(fixture_name: &str, precision: Precision, crit_tensors: usize) {
    let model = std::env::var("PETNAS_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("data/models/all-MiniLM-L6-v2"));
    let dir = std::env::var("PETNAS_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("../shared/reference"));
    let fixture = dir.join(format!("{fixture_name}.safetensors"));
    if !model.join("model.safetensors").exists() || !fixture.exists() {
        if std::env::var("PETNAS_ALLOW_MISSING_MODEL").as_deref() == Ok("1") {
            eprintln!(
                "skipping: {} or {} missing",
                model.display(),
                fixture.display()
            );
            return;
        }
        panic!(
            "{} or {} missing: run data/fetch-model (scripts/test does)",
            model.display(),
            fixture.display()
        );
    }
    let rep = petnas_train::verify::verify(
        model.to_str().unwrap(),
        &fixture,
        &candle_core::Device::Cpu,
        precision,
    )
    .unwrap();
    eprintln!(
        "{fixture_name} {}: {}",
        precision.as_str(),
        serde_json::to_string(&rep).unwrap()
    );
    assert!(
        rep.tokens_equal,
        "tokenizer ids differ from the HF tokenizer's"
    );
    assert!(rep.grad_tensors >= 6 * 8 + 1 + 2, "{rep:?}");
    assert_eq!(rep.crit_tensors, crit_tensors, "{rep:?}");
    assert!(rep.pass, "{rep:?}");
}

#[test]
fn minilm_matches_pytorch_within_tolerance() {
    check("minilm_rte_parity", Precision::Fp32, 6 * 2 * 2);
}

#[test]
fn minilm_at_a_trained_point_matches_pytorch_bias_criterion_included() {
    // 49 bias vectors (6 layers × 8 + the embeddings LayerNorm) + 24 LoRA factors.
    check("minilm_rte_parity_trained", Precision::Fp32, 49 + 24);
}

#[test]
fn minilm_bf16_stays_within_twice_autocast_deviation() {
    check("minilm_rte_parity", Precision::Bf16, 6 * 2 * 2);
    check("minilm_rte_parity_trained", Precision::Bf16, 49 + 24);
}
