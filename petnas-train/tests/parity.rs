//! Numerical parity with PyTorch + transformers on the real all-MiniLM-L6-v2.
//!
//! Fixture: `../shared/reference/minilm_rte_parity.safetensors`, made by
//! `python make_parity_fixture.py --model DIR --glue DIR --task RTE --out minilm_rte_parity`.
//! The model comes from `data/fetch-model` (run by `scripts/test`). Missing inputs fail the test
//! unless PETNAS_ALLOW_MISSING_MODEL=1.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn minilm_matches_pytorch_within_tolerance() {
    let model = std::env::var("PETNAS_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|_| root().join("data/models/all-MiniLM-L6-v2"));
    let fixture = std::env::var("PETNAS_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("../shared/reference/minilm_rte_parity.safetensors"));
    if !model.join("model.safetensors").exists() || !fixture.exists() {
        if std::env::var("PETNAS_ALLOW_MISSING_MODEL").as_deref() == Ok("1") {
            eprintln!("skipping: {} or {} missing", model.display(), fixture.display());
            return;
        }
        panic!("{} or {} missing: run data/fetch-model (scripts/test does)", model.display(), fixture.display());
    }
    let rep = petnas_train::verify::verify(model.to_str().unwrap(), &fixture, &candle_core::Device::Cpu).unwrap();
    eprintln!("{}", serde_json::to_string(&rep).unwrap());
    assert!(rep.tokens_equal, "tokenizer ids differ from the HF tokenizer's");
    assert!(rep.grad_tensors >= 6 * 8 + 1 + 2 && rep.crit_tensors == 6 * 2 * 2, "{rep:?}");
    assert!(rep.pass, "{rep:?}");
}
