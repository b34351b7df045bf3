//! `train` and `search` on their own: divergence, determinism, and the RoBERTa path.

mod common;

use std::path::Path;

use common::*;

fn train_run(model: &Path, task: &str, method: &str, extra: &[&str], out: &Path) -> Run {
    let mut args = vec![
        "train",
        "--task",
        task,
        "--model",
        s(model),
        "--data",
        s(glue()),
        "--method",
        method,
        "--out",
        s(out),
    ];
    args.extend(TINY);
    args.extend(extra);
    train(&args)
}

/// An absurd learning rate makes the loss NaN within the 3 steps: the run is recorded as failed
/// with the reason, `train` says so and exits non-zero, and a sweep goes on with the next run.
#[test]
fn divergence_is_recorded_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let out = tmp.path().join("out");
    let err = train_run(&model, "rte", "mam", &["--lr", "1e30"], &out).fails_with(&[
        "rte-mam-s0 failed",
        "training diverged",
        "NaN",
        "lower the learning rate",
    ]);
    assert!(!err.contains("panicked"));
    let dir = out.join("rte-mam-s0");
    let r = json(&dir.join("record.json"));
    assert_eq!(text(&r, "/result/status"), "failed");
    let reason = text(&r, "/result/reason");
    assert!(
        reason.contains("diverged") && reason.contains("NaN"),
        "{reason}"
    );
    assert!(
        r["result"]["metrics"].as_object().unwrap().is_empty(),
        "a failed run has no scores: {r}"
    );
    assert!(std::fs::read_to_string(dir.join("log.txt"))
        .unwrap()
        .contains("diverged"));
    assert!(
        !dir.join("weights.safetensors").exists(),
        "a diverged run saved weights"
    );
    assert!(leftovers(&out).is_empty());

    // In a sweep: a diverging baseline, a diverging search (its maximal training), then two
    // healthy runs that must still happen.
    let cfg = tmp.path().join("diverge.toml");
    let toml = sweep_toml(
        &model,
        r#"tasks = ["rte"]
seeds = [0]

[[baselines]]
method = "mam"
lr = 1e30
tag = "boom"

[[baselines]]
method = "bitfit"
lr = 1e-3

[[searches]]
space = "mam16"
budgets = [500]
modes = ["unstructured"]
lr = 1e-3
search_lr = 1e30

[[searches]]
space = "bitfit"
budgets = [100]
modes = ["unstructured"]
lr = 1e-3
"#,
    );
    std::fs::write(&cfg, toml).unwrap();
    let sw = tmp.path().join("sweep");
    let r = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&sw),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    assert!(
        r.stdout
            .contains("rte-mam-boom-s0: FAILED (training diverged"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("rte-mam16-maximal-s0: FAILED (training diverged"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("2 failed"), "{}", r.stdout);
    let runs = sw.join("runs");
    let status =
        |id: &str| text(&json(&runs.join(id).join("record.json")), "/result/status").to_string();
    assert_eq!(status("rte-mam-boom-s0"), "failed");
    assert_eq!(status("rte-mam16-maximal-s0"), "failed");
    assert_eq!(status("rte-bitfit-s0"), "completed");
    assert_eq!(status("rte-bitfit-maximal-s0"), "completed");
    assert_eq!(status("rte-bitfit-u100-mean-same-s0"), "completed");
    // Nothing to prune from a diverged search: its pruned run is not attempted.
    assert!(!runs.join("rte-mam16-u500-mean-same-s0").exists());
    assert_eq!(jsonl(&sw.join("index.jsonl")).len(), 5);

    // Rerunning does not retry diverged runs (they are results), and the report leaves them out.
    let again = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&sw),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    assert!(
        again.stdout.contains("0 completed now, 0 failed"),
        "{}",
        again.stdout
    );
    let rep = tmp.path().join("report");
    let a = analyze(&["report", "--runs", s(&sw), "--out", s(&rep)]).ok();
    assert!(
        a.stderr.contains("2 failed run(s) excluded") && a.stderr.contains("rte-mam-boom-s0"),
        "{}",
        a.stderr
    );
    assert!(rep.join("README.md").exists());
}

/// The same seed gives the same search on CPU, bit for bit: criterion, masks, weights, scores.
/// Another seed gives other random masks (so the comparison can fail).
#[test]
fn search_is_deterministic_per_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let run = |seed: &str, out: &Path| {
        let mut args = vec![
            "search",
            "--task",
            "stsb",
            "--model",
            s(&model),
            "--data",
            s(glue()),
            "--space",
            "mam16",
            "--mode",
            "both",
            "--budget",
            "1000,3k",
            "--criterion",
            "random",
            "--seed",
            seed,
            "--out",
            s(out),
        ];
        args.extend(TINY);
        train(&args).ok();
        let mut args = vec![
            "search",
            "--task",
            "stsb",
            "--model",
            s(&model),
            "--data",
            s(glue()),
            "--space",
            "mam16",
            "--mode",
            "unstructured",
            "--budget",
            "1000",
            "--criterion",
            "mean",
            "--seed",
            seed,
            "--out",
            s(out),
        ];
        args.extend(TINY);
        // The maximal run is trained again into the same folder: it must come out the same.
        train(&args).ok();
    };
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    run("7", &a);
    run("7", &b);
    run("8", &c);
    let names = run_names(&a);
    assert_eq!(names.len(), 6, "{names:?}");
    assert_eq!(names, run_names(&b));
    for n in &names {
        assert_same_run(&a.join(n), &b.join(n));
    }
    for n in [
        "stsb-mam16-u1000-random-same-s7",
        "stsb-mam16-s3000-random-same-s7",
        "stsb-mam16-u1000-mean-same-s7",
    ] {
        let arch = |d: &Path, n: &str| std::fs::read(d.join(n).join("architecture.json")).unwrap();
        let other = n.replace("-s7", "-s8");
        assert!(
            arch(&a, n) != arch(&c, &other),
            "seeds 7 and 8 give the same masks for {n}"
        );
    }
    let metric =
        |d: &Path, n: &str| json(&d.join(n).join("record.json"))["result"]["metrics"].clone();
    assert_ne!(
        metric(&a, "stsb-mam16-maximal-s7"),
        metric(&c, "stsb-mam16-maximal-s8")
    );
}

/// RoBERTa (padding-offset positions, one token type) through `train` and `search`.
#[test]
fn roberta_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "roberta");
    let out = tmp.path().join("out");
    for task in ["rte", "stsb"] {
        train_run(&model, task, "mam", &[], &out).ok();
        let dir = out.join(format!("{task}-mam-s0"));
        let r = json(&dir.join("record.json"));
        assert_eq!(text(&r, "/result/status"), "completed");
        assert_eq!(text(&r, "/spec/model_fingerprint/family"), "Roberta");
        assert_eq!(num(&r, "/result/steps"), 3.0);
        let metric = text(&r, "/result/primary_metric");
        assert!(num(&r, &format!("/result/metrics/{metric}")).is_finite());
        assert!(num(&r, "/result/final_train_loss").is_finite());
        assert!(num(&r, "/result/pet_params") > 0.0);
        let arch = json(&dir.join("architecture.json"));
        assert_eq!(text(&arch, "/model/family"), "Roberta");
        let (_, tensors) = safetensors_content(&dir.join("weights.safetensors"));
        assert!(
            tensors.keys().any(|k| k.ends_with(".lora_u"))
                && tensors.keys().any(|k| k.ends_with(".bias_delta")),
            "{:?}",
            tensors.keys()
        );
    }
    let mut args = vec![
        "search",
        "--task",
        "rte",
        "--model",
        s(&model),
        "--data",
        s(glue()),
        "--space",
        "mam16",
        "--budget",
        "2000",
        "--out",
        s(&out),
    ];
    args.extend(TINY);
    train(&args).ok();
    for id in [
        "rte-mam16-s2000-mean-same-s0",
        "rte-mam16-u2000-mean-same-s0",
    ] {
        let r = json(&out.join(id).join("record.json"));
        assert_eq!(text(&r, "/result/status"), "completed", "{id}");
        assert!(num(&r, "/result/pet_params") <= 2000.0, "{id}");
    }
}

/// `verify` against the PyTorch parity fixture, when it is there, as the README runs it.
#[test]
fn verify_against_the_pytorch_fixture() {
    let fixture = root().join("../shared/reference/minilm_rte_parity.safetensors");
    if !fixture.exists() {
        eprintln!("skipped: no fixture at {}", fixture.display());
        return;
    }
    let r = train(&["verify", "--model", s(&minilm()), "--fixture", s(&fixture)]).ok();
    let rep: serde_json::Value =
        serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(rep["pass"], true, "{rep}");
}

/// `predict` reads the dev split of the data folder the run was trained on (its `inputs.json`),
/// not whatever the default search finds from the current directory.
#[test]
fn predict_uses_the_data_the_run_was_trained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let data = tmp.path().join("my-glue");
    copy_dir(&glue().join("RTE"), &data.join("RTE"));
    let out = tmp.path().join("runs");
    let mut args = vec![
        "train",
        "--task",
        "rte",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--method",
        "bitfit",
        "--out",
        s(&out),
    ];
    args.extend(TINY);
    train(&args).ok();
    let run = out.join("rte-bitfit-s0");
    assert!(json(&run.join("inputs.json"))["data"]
        .as_str()
        .unwrap()
        .ends_with("my-glue"));
    // From a directory where the default search finds nothing.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let o = command("petnas-train")
        .current_dir(&elsewhere)
        .args(["predict", "--run", s(&run), "--max-dev", "5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 5);
}

/// Training learns: MiniLM with MaM on the first 512 SST-2 sentences, 2 epochs, scores clearly
/// above the majority class of SST-2's dev set (50.9%) on its first 300 sentences. A loop that
/// updated nothing, or in the wrong direction, stays at or below it.
#[test]
fn minilm_learns_sst2_above_the_majority_class() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    train(&[
        "train",
        "--task",
        "sst2",
        "--model",
        s(&minilm()),
        "--data",
        s(glue()),
        "--method",
        "mam",
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--max-train",
        "512",
        "--max-dev",
        "300",
        "--bucket",
        "8",
        "--out",
        s(&out),
        "--quiet",
    ])
    .ok();
    let r = json(&out.join("sst2-mam-s0").join("record.json"));
    let acc = num(&r, "/result/metrics/accuracy");
    let dev = std::fs::read_to_string(glue().join("SST-2/dev.tsv")).unwrap();
    let labels: Vec<&str> = dev
        .lines()
        .skip(1)
        .take(300)
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    let ones = labels.iter().filter(|&&l| l == "1").count() as f64 / labels.len() as f64;
    let majority = ones.max(1.0 - ones);
    assert!(
        acc > majority + 0.10,
        "accuracy {acc:.3} is not clearly above the majority class {majority:.3}"
    );
}

/// `--prune-rounds 1,3`: the one-shot runs and the iterative ones (3 rounds of prune → retrain
/// with the criterion → prune) side by side, each within its budget, iterative ones marked in
/// their id and spec, and no intermediate training left behind.
#[test]
fn iterative_pruning_runs_beside_one_shot() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let out = tmp.path().join("runs");
    let mut args = vec![
        "search",
        "--task",
        "rte",
        "--model",
        s(&model),
        "--data",
        s(glue()),
        "--space",
        "bitfit",
        "--budget",
        "200",
        "--prune-rounds",
        "1,3",
        "--out",
        s(&out),
    ];
    args.extend(TINY);
    train(&args).ok();
    let names = run_names(&out);
    for id in [
        "rte-bitfit-s200-mean-same-s0",
        "rte-bitfit-u200-mean-same-s0",
        "rte-bitfit-s200-it3-mean-same-s0",
        "rte-bitfit-u200-it3-mean-same-s0",
    ] {
        assert!(
            names.contains(&id.to_string()),
            "{id} missing from {names:?}"
        );
        let r = json(&out.join(id).join("record.json"));
        assert!(num(&r, "/result/pet_params") <= 200.0, "{id}");
        assert_eq!(
            r["spec"].get("prune_rounds").and_then(|v| v.as_u64()),
            id.contains("-it3-").then_some(3),
            "{id}"
        );
    }
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    assert!(std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".rounds")));
}

/// `PETNAS_TRACE` writes the draws another implementation needs to replay a training (the head's
/// initial values, each step's batch and loss, the dropout seed and counters), changes nothing
/// about the run, and refuses a folder that already holds a trace.
#[test]
fn trace_records_the_draws_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let trace = tmp.path().join("trace");
    let run = |out: &Path, trace: Option<&Path>| {
        let mut args = vec![
            "train",
            "--task",
            "rte",
            "--method",
            "bitfit",
            "--model",
            s(&model),
            "--data",
            s(glue()),
            "--seed",
            "3",
            "--out",
            s(out),
        ];
        args.extend(TINY);
        let mut c = command("petnas-train");
        c.args(&args);
        if let Some(t) = trace {
            c.env("PETNAS_TRACE", t);
        }
        c.output().unwrap()
    };
    let plain = tmp.path().join("plain");
    let traced = tmp.path().join("traced");
    assert!(run(&plain, None).status.success());
    let o = run(&traced, Some(&trace));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec = |d: &Path| json(&d.join("rte-bitfit-s3").join("record.json"));
    let (a, b) = (rec(&plain), rec(&traced));
    assert_eq!(a["config_hash"], b["config_hash"]);
    assert_eq!(a["result"]["metrics"], b["result"]["metrics"]);
    assert_eq!(
        a["result"]["final_train_loss"],
        b["result"]["final_train_loss"]
    );

    let steps = jsonl(&trace.join("steps.jsonl"));
    assert_eq!(steps.len() as u64, b["result"]["steps"].as_u64().unwrap());
    // Within an epoch the batches draw distinct examples of the 64 (3 steps of 8 here).
    let mut seen: Vec<u64> = steps
        .iter()
        .flat_map(|l| {
            l["idx"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
        })
        .collect();
    assert_eq!(seen.len(), 3 * 8);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3 * 8, "an example drawn twice in one epoch");
    assert!(seen.iter().all(|&i| i < 64));
    // Dropout counters start at 0 and grow with each forward pass.
    let counters: Vec<u64> = steps
        .iter()
        .map(|l| l["dropout_counter"].as_u64().unwrap())
        .collect();
    assert_eq!(counters[0], 0);
    assert!(counters.windows(2).all(|w| w[1] > w[0]), "{counters:?}");
    let seed = json(&trace.join("dropout.json"))["seed"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(seed.parse::<u64>().is_ok(), "{seed}");
    let init = std::fs::read(trace.join("init.safetensors")).unwrap();
    let text = String::from_utf8_lossy(&init[..init.len().min(64 * 1024)]).into_owned();
    assert!(
        text.contains("classifier.weight"),
        "init.safetensors lacks the head"
    );

    let again = run(&tmp.path().join("again"), Some(&trace));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a trace"));
}

/// `--criterion adalora` prunes by AdaLoRA's importance. A search resumed with it over a
/// maximal run whose criterion file predates AdaLoRA's averages trains the maximal run again
/// (the old file cannot give those scores), and over a current file it does not.
#[test]
fn adalora_criterion_and_resume_over_an_older_criterion_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let out = tmp.path().join("runs");
    let run = |criteria: &str| {
        let mut args = vec![
            "search",
            "--task",
            "rte",
            "--model",
            s(&model),
            "--data",
            s(glue()),
            "--space",
            "bitfit",
            "--mode",
            "unstructured",
            "--budget",
            "200",
            "--criterion",
            criteria,
            "--out",
            s(&out),
        ];
        args.extend(TINY);
        train(&args).ok();
    };
    run("mean");
    let crit = out
        .join("rte-bitfit-maximal-s0")
        .join("criterion.safetensors");
    let bytes = std::fs::read(&crit).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    assert!(names.iter().any(|n| n.ends_with("::ema_ipt")), "{names:?}");
    // The file as the previous version wrote it: without the two averages.
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = names
        .iter()
        .filter(|n| !n.ends_with("::ema_ipt") && !n.ends_with("::ema_unc"))
        .map(|n| (n.clone(), st.tensor(n).unwrap()))
        .collect();
    let old = safetensors::serialize(kept, meta.metadata().clone()).unwrap();
    std::fs::write(&crit, old).unwrap();
    let max_record = out.join("rte-bitfit-maximal-s0").join("record.json");
    let before = json(&max_record)["created_unix"].clone();
    std::thread::sleep(std::time::Duration::from_millis(1100));

    run("mean,adalora");
    let r = json(
        &out.join("rte-bitfit-u200-adalora-same-s0")
            .join("record.json"),
    );
    assert_eq!(text(&r, "/spec/criterion"), "adalora");
    assert_eq!(num(&r, "/result/pet_params"), 200.0);
    let after = json(&max_record)["created_unix"].clone();
    assert_ne!(
        before, after,
        "the maximal run was not trained again for AdaLoRA's scores"
    );
    let a = json(
        &out.join("rte-bitfit-u200-adalora-same-s0")
            .join("architecture.json"),
    );
    let m = json(
        &out.join("rte-bitfit-u200-mean-same-s0")
            .join("architecture.json"),
    );
    assert_ne!(
        a["modules"], m["modules"],
        "AdaLoRA's and the mean criterion kept the same entries"
    );

    // With a current criterion file the maximal run is reused.
    run("mean,adalora,abs");
    assert_eq!(json(&max_record)["created_unix"], after);
    assert!(out
        .join("rte-bitfit-u200-abs-same-s0")
        .join("record.json")
        .exists());
}
