//! Export round trip without PyTorch: a merged folder, loaded back as a plain model, predicts
//! what the trained PET model predicts (the paper's zero-latency claim), for BERT and RoBERTa.
//! (`scripts/check-exports` does the same through transformers and PEFT.)

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device};
use petnas_core::arch::Architecture;
use petnas_core::inventory::{inventory, Family};
use petnas_core::record::{LoraInit, Recipe, RunSpec};
use petnas_core::space::SearchSpace;
use petnas_train::export::{export_merged, export_peft, load_run, predict_dev};
use petnas_train::glue::Task;
use petnas_train::model::load::{write_tiny_model, ModelDir};
use petnas_train::model::pet::init_map;
use petnas_train::model::{BuildOptions, EncoderModel};
use petnas_train::run::{execute, DataLimits, RunInputs, RunPlan};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn glue_dir() -> PathBuf {
    std::env::var("PETNAS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("../shared/data/glue"))
}

#[test]
fn merged_export_predicts_like_the_pet_model() {
    let tok = root().join("data/models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(
        tok.exists(),
        "run data/fetch-model first (scripts/test does)"
    );
    for (family, init) in [
        (Family::Bert, LoraInit::Paper),
        (Family::Roberta, LoraInit::PaperZeroOffset),
        (Family::Bert, LoraInit::PaperZeroOffset),
        (Family::Roberta, LoraInit::Paper),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let model_dir = tmp.path().join("model");
        write_tiny_model(family, &tok, &model_dir, 4).unwrap();
        let dev = Device::Cpu;
        let limits = DataLimits {
            max_train: Some(32),
            max_dev: Some(24),
        };
        let inp = RunInputs::load(
            model_dir.to_str().unwrap(),
            &petnas_train::task::TaskInfo::glue(Task::Rte, &glue_dir()).unwrap(),
            32,
            limits,
            &dev,
        )
        .unwrap();
        let cfg = &inp.model.config;
        let space = SearchSpace::preset("mam", &inventory(cfg)).unwrap();
        let arch = Architecture::maximal(&space, cfg).unwrap();
        let spec = RunSpec {
            task: "rte".into(),
            task_def: None,
            data: None,
            model: model_dir.display().to_string(),
            model_fingerprint: arch.model.clone(),
            method: "mam".into(),
            space: Some("mam".into()),
            mode: None,
            budget: None,
            seed: 1,
            recipe: Recipe {
                batch_size: 8,
                max_len: 32,
                warmup_frac: 0.0,
                max_steps: Some(3),
                ..Recipe::new(1.0, 5e-2)
            },
            criterion: None,
            reinit: None,
            lora_init: init,
            device: "cpu".into(),
            rank_group: None,
            maximal_hash: None,
            precision: Default::default(),
            prune_rounds: None,
        };
        let start = init_map(&arch, 1, init);
        let runs = tmp.path().join("runs");
        execute(
            &inp,
            RunPlan {
                spec,
                arch: Some(&arch),
                start: &start,
                criterion: None,
                progress: None,
            },
            "r",
            &runs,
        )
        .unwrap();
        let run = load_run(&runs.join("r"), None, &dev).unwrap();
        let ours = predict_dev(&run, &glue_dir(), Some(24)).unwrap();
        let merged = tmp.path().join("merged");
        export_merged(&run, &merged).unwrap();
        export_peft(&run, &tmp.path().join("peft")).unwrap();
        // PEFT's config holds PEFT's keys only (PEFT warns about others); ours sit beside it.
        let ac: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("peft/adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert!(
            ac.as_object()
                .unwrap()
                .keys()
                .all(|k| !k.starts_with("petnas")),
            "{ac}"
        );
        assert!(tmp.path().join("peft/petnas_export.json").exists());
        // Load the merged folder as a plain model (prefixed HF keys, no PET parameters).
        let md = ModelDir::open(merged.to_str().unwrap()).unwrap();
        let w = md.weights().unwrap();
        let opts = BuildOptions {
            num_labels: 2,
            seed: 0,
            lora_init: LoraInit::Paper,
            full_finetune: false,
            dtype: DType::F32,
            precision: Default::default(),
        };
        let plain =
            EncoderModel::build(&md.config, &w, None, &HashMap::new(), &opts, &dev).unwrap();
        let plain_run = petnas_train::export::LoadedRun {
            record: run.record.clone(),
            arch: None,
            model_dir: md,
            model: plain,
            task_def: petnas_train::task::glue_def(Task::Rte),
            glue: Some(Task::Rte),
        };
        let theirs = predict_dev(&plain_run, &glue_dir(), Some(24)).unwrap();
        assert_eq!(ours.len(), 24);
        let mut worst = 0f32;
        for (a, b) in ours.iter().zip(&theirs) {
            for (x, y) in a.logits.iter().zip(&b.logits) {
                worst = worst.max((x - y).abs());
            }
        }
        assert!(worst < 1e-4, "{family:?}: merged logits differ by {worst}");
        // Training moved the function: the same architecture at its initial values predicts
        // other logits, so agreement above is not the agreement of two untrained heads.
        let opts0 = BuildOptions {
            num_labels: 2,
            seed: 1,
            lora_init: init,
            full_finetune: false,
            dtype: DType::F32,
            precision: Default::default(),
        };
        let untrained =
            EncoderModel::build(cfg, &inp.weights, Some(&arch), &start, &opts0, &dev).unwrap();
        let md0 = ModelDir::open(model_dir.to_str().unwrap()).unwrap();
        let run0 = petnas_train::export::LoadedRun {
            record: run.record.clone(),
            arch: Some(arch.clone()),
            model_dir: md0,
            model: untrained,
            task_def: petnas_train::task::glue_def(Task::Rte),
            glue: Some(Task::Rte),
        };
        let before = predict_dev(&run0, &glue_dir(), Some(24)).unwrap();
        let moved = ours
            .iter()
            .zip(&before)
            .flat_map(|(a, b)| a.logits.iter().zip(&b.logits).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        assert!(
            moved > 1e-2,
            "{family:?}: training changed the logits by only {moved}"
        );
        // The adapter's B·A is each module's ΔW: the merged weight minus the base weight.
        let adapter =
            candle_core::safetensors::load(tmp.path().join("peft/adapter_model.safetensors"), &dev)
                .unwrap();
        let mut checked = 0;
        for (key, a) in &adapter {
            let Some(stem) = key.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let b = &adapter[&format!("{stem}.lora_B.weight")];
            let path = &stem[stem.find("encoder.").expect("an encoder module")..];
            let base = inp
                .weights
                .get(
                    &format!("{path}.weight"),
                    &[b.dim(0).unwrap(), a.dim(1).unwrap()],
                )
                .unwrap();
            let merged_w = w.get(&format!("{path}.weight"), base.dims()).unwrap();
            let dw = (merged_w - &base).unwrap();
            let ba = b.matmul(a).unwrap();
            let scale = dw
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let err = (ba - &dw)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(scale > 1e-4 && err <= 1e-4 * (1.0 + scale), "{family:?} {init:?} {path}: |B·A − ΔW| = {err}, |ΔW| = {scale} (ΔW = 0: the LoRA factors did not train)");
            checked += 1;
        }
        assert_eq!(
            checked,
            4 * cfg.num_hidden_layers,
            "{family:?}: one adapter per LoRA module"
        );
    }
}
