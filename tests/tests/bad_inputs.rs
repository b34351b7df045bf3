//! Bad inputs get a clear error that names the file, line, field or tensor, a non-zero exit, and
//! leave nothing behind: no output folder, no run folder, no `.partial-*`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A GLUE folder with the first `rows` examples of RTE and STS-B (train and dev).
fn small_glue(dir: &Path, rows: usize) -> PathBuf {
    for task in ["RTE", "STS-B"] {
        std::fs::create_dir_all(dir.join(task)).unwrap();
        for split in ["train", "dev"] {
            let text =
                std::fs::read_to_string(glue().join(task).join(format!("{split}.tsv"))).unwrap();
            let head: Vec<&str> = text.lines().take(rows + 1).collect();
            std::fs::write(
                dir.join(task).join(format!("{split}.tsv")),
                head.join("\n") + "\n",
            )
            .unwrap();
        }
    }
    dir.to_path_buf()
}

fn train_bitfit(task: &str, model: &Path, data: &Path, out: &Path) -> Run {
    let mut args = vec![
        "train",
        "--task",
        task,
        "--model",
        s(model),
        "--data",
        s(data),
        "--method",
        "bitfit",
        "--out",
        s(out),
    ];
    args.extend(TINY);
    train(&args)
}

#[track_caller]
fn assert_nothing_written(out: &Path) {
    assert!(
        !out.exists(),
        "a failed command created {}: {:?}",
        out.display(),
        std::fs::read_dir(out).map(|r| r.count())
    );
}

#[test]
fn malformed_tsv_rows_are_named_by_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let out = tmp.path().join("out");
    // (task, split, what to append to 20 good rows or how to replace the file, expected message)
    type Edit = fn(&str) -> String;
    let cases: Vec<(&str, &str, &str, Edit, Vec<&str>)> = vec![
        (
            "missing column",
            "RTE",
            "train",
            |t| format!("{t}7\tonly one sentence\n"),
            vec![
                "RTE/train.tsv:22:",
                "missing column 2 (sentence2)",
                "2 tab-separated fields",
            ],
        ),
        (
            "extra tab",
            "RTE",
            "train",
            |t| format!("{t}7\ta\tb\tentailment\tstray\n"),
            vec![
                "RTE/train.tsv:22:",
                "5 tab-separated fields but the header has 4",
            ],
        ),
        (
            "bad label",
            "RTE",
            "train",
            |t| format!("{t}7\ta\tb\tmaybe\n"),
            vec!["RTE/train.tsv:22:", "bad label \"maybe\"", "not_entailment"],
        ),
        (
            "bad label in dev",
            "RTE",
            "dev",
            |t| format!("{t}7\ta\tb\tyes\n"),
            vec!["RTE/dev.tsv:22:", "bad label \"yes\""],
        ),
        (
            "non-numeric score",
            "STS-B",
            "train",
            |t| format!("{t}9\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\ta\tb\tfive\n"),
            vec!["STS-B/train.tsv:22:", "bad score \"five\"", "not a number"],
        ),
        (
            "score out of range",
            "STS-B",
            "train",
            |t| format!("{t}9\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\ta\tb\t7.5\n"),
            vec!["STS-B/train.tsv:22:", "bad score \"7.5\"", "0..=5"],
        ),
        (
            "empty line between rows",
            "RTE",
            "train",
            |t| format!("{t}\n7\ta\tb\tentailment\n"),
            vec!["RTE/train.tsv:22:", "empty line between rows"],
        ),
        (
            "empty file",
            "RTE",
            "train",
            |_| String::new(),
            vec!["RTE/train.tsv", "file is empty"],
        ),
        (
            "header only",
            "RTE",
            "dev",
            |t| t.lines().next().unwrap().to_string() + "\n",
            vec!["RTE/dev.tsv", "header but no examples"],
        ),
    ];
    for (what, task_dir, split, edit, needles) in cases {
        let data = small_glue(&tmp.path().join(what.replace(' ', "-")), 20);
        let file = data.join(task_dir).join(format!("{split}.tsv"));
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, edit(&text)).unwrap();
        let task = if task_dir == "RTE" { "rte" } else { "stsb" };
        let err = train_bitfit(task, &model, &data, &out).fails_with(&needles);
        assert!(
            err.lines().count() <= 3,
            "{what}: a short message, not a backtrace:\n{err}"
        );
        assert_nothing_written(&out);
    }

    // Not UTF-8, and a task folder that is not there.
    let data = small_glue(&tmp.path().join("latin1"), 20);
    let mut bytes = std::fs::read(data.join("RTE/train.tsv")).unwrap();
    bytes.extend(b"7\tcaf\xe9\tb\tentailment\n");
    std::fs::write(data.join("RTE/train.tsv"), bytes).unwrap();
    train_bitfit("rte", &model, &data, &out).fails_with(&["RTE/train.tsv:22:", "not valid UTF-8"]);
    std::fs::remove_dir_all(data.join("RTE")).unwrap();
    train_bitfit("rte", &model, &data, &out).fails_with(&[
        "no rte data",
        "RTE/train.tsv",
        "rte/train-00000-of-00001.parquet",
    ]);
    assert_nothing_written(&out);
}

/// A sweep whose dev file is bad stops at that task with the file and line, and leaves no run
/// folder and no `.partial-*`.
#[test]
fn sweep_with_bad_data_leaves_no_run_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let data = small_glue(&tmp.path().join("glue"), 20);
    let dev = data.join("RTE/dev.tsv");
    let text = std::fs::read_to_string(&dev).unwrap();
    std::fs::write(&dev, format!("{text}7\ta\tb\tperhaps\n")).unwrap();
    let cfg = tmp.path().join("bad-data.toml");
    let toml = sweep_toml(
        &model,
        "tasks = [\"rte\"]\nseeds = [0]\n[[baselines]]\nmethod = \"bitfit\"\nlr = 1e-3\n",
    );
    std::fs::write(&cfg, toml).unwrap();
    let out = tmp.path().join("sweep");
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--data",
        s(&data),
        "--quiet",
        "--no-estimate",
    ])
    .fails_with(&["RTE/dev.tsv:22:", "bad label \"perhaps\""]);
    assert!(
        run_names(&out.join("runs")).is_empty(),
        "{:?}",
        run_names(&out.join("runs"))
    );
    assert!(leftovers(&out.join("runs")).is_empty() && leftovers(&out).is_empty());

    // A bad training file is found while planning: not even the output folder is made.
    let out2 = tmp.path().join("sweep2");
    let train_tsv = data.join("RTE/train.tsv");
    let text = std::fs::read_to_string(&train_tsv).unwrap();
    std::fs::write(&train_tsv, format!("{text}7\ta\n")).unwrap();
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out2),
        "--data",
        s(&data),
        "--quiet",
        "--no-estimate",
    ])
    .fails_with(&["RTE/train.tsv:22:", "missing column"]);
    assert_nothing_written(&out2);
}

/// A UTF-8 BOM and CRLF line ends (as Windows tools write them) change nothing in training: the
/// run is the same, bit for bit, as on the plain files (only the files' checksums differ).
#[test]
fn bom_and_crlf_just_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let plain = small_glue(&tmp.path().join("plain"), 64);
    let windows = small_glue(&tmp.path().join("windows"), 64);
    for task in ["RTE", "STS-B"] {
        for split in ["train", "dev"] {
            let p = windows.join(task).join(format!("{split}.tsv"));
            let t = std::fs::read_to_string(&p).unwrap();
            std::fs::write(&p, format!("\u{feff}{}", t.replace('\n', "\r\n"))).unwrap();
        }
    }
    for task in ["rte", "stsb"] {
        let a = tmp.path().join(format!("a-{task}"));
        let b = tmp.path().join(format!("b-{task}"));
        train_bitfit(task, &model, &plain, &a).ok();
        train_bitfit(task, &model, &windows, &b).ok();
        let id = format!("{task}-bitfit-s0");
        assert_eq!(
            text(&json(&b.join(&id).join("record.json")), "/result/status"),
            "completed"
        );
        // The same examples, so the same training bit for bit; but other bytes, so the spec
        // records other file checksums (a changed file is a changed spec) and another hash.
        let (ra, rb) = (record(&a.join(&id)), record(&b.join(&id)));
        assert_eq!(ra["result"], rb["result"], "{task}: results differ");
        assert_ne!(
            ra["spec"]["data"], rb["spec"]["data"],
            "{task}: the checksums do not see the other bytes"
        );
        let strip = |mut r: serde_json::Value| {
            r["spec"].as_object_mut().unwrap().remove("data");
            r.as_object_mut().unwrap().remove("config_hash");
            r
        };
        assert_eq!(
            strip(ra),
            strip(rb),
            "{task}: records differ beyond the data checksums"
        );
        assert_eq!(
            safetensors_content(&a.join(&id).join("weights.safetensors")).1,
            safetensors_content(&b.join(&id).join("weights.safetensors")).1,
            "{task}: trained weights differ"
        );
    }
}

#[test]
fn unknown_task_and_missing_model_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let out = tmp.path().join("out");
    train_bitfit("glue-ten", &model, glue(), &out)
        .fails_with(&["unknown GLUE task \"glue-ten\"", "rte"]);
    train_bitfit("rte", &tmp.path().join("no-such-model"), glue(), &out)
        .fails_with(&["no-such-model", "does not exist"]);
    train_bitfit("rte", &model, &tmp.path().join("no-such-data"), &out)
        .fails_with(&["no-such-data", "does not exist"]);
    let mut search = vec![
        "search",
        "--task",
        "nli9",
        "--model",
        s(&model),
        "--data",
        s(glue()),
        "--space",
        "bitfit",
        "--budget",
        "100",
        "--out",
        s(&out),
    ];
    search.extend(TINY);
    train(&search).fails_with(&["unknown GLUE task \"nli9\""]);
    assert_nothing_written(&out);
}

/// Rewrites `model.safetensors` without one tensor.
fn drop_tensor(model: &Path, name: &str) {
    let p = model.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    assert_eq!(kept.len() + 1, st.len(), "no tensor {name} to drop");
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&p, out).unwrap();
}

fn drop_tensors(model: &Path, prefix: &str) {
    let p = model.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with(prefix))
        .collect();
    assert!(kept.len() < st.len(), "no tensor under {prefix} to drop");
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&p, out).unwrap();
}

fn edit_config(model: &Path, from: &str, to: &str) {
    let p = model.join("config.json");
    let t = std::fs::read_to_string(&p).unwrap();
    assert!(t.contains(from), "config.json lacks {from}");
    std::fs::write(&p, t.replace(from, to)).unwrap();
}

#[test]
fn broken_model_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tiny(tmp.path(), "bert");
    let out = tmp.path().join("out");
    type Break = fn(&Path);
    let cases: Vec<(&str, Break, Vec<&str>)> = vec![
        (
            "hidden size",
            |m| edit_config(m, "\"hidden_size\": 32", "\"hidden_size\": 48"),
            vec![
                "model.safetensors",
                "has shape [30522, 32] but config.json implies [30522, 48]",
            ],
        ),
        (
            "layer count",
            |m| edit_config(m, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
            vec![
                "model.safetensors",
                "the checkpoint has 2 encoder layers, config.json's num_hidden_layers is 3",
            ],
        ),
        // Fewer layers in the config than in the checkpoint used to drop layers silently.
        (
            "fewer layers",
            |m| edit_config(m, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
            vec![
                "model.safetensors",
                "the checkpoint has 2 encoder layers, config.json's num_hidden_layers is 1",
            ],
        ),
        // A RoBERTa config over BERT files (weights and a [CLS] tokenizer) used to train silently.
        (
            "family",
            |m| edit_config(m, "\"model_type\": \"bert\"", "\"model_type\": \"roberta\""),
            vec!["tokenizer.json", "has [CLS], not <s>"],
        ),
        (
            "activation",
            |m| {
                edit_config(
                    m,
                    "\"hidden_act\": \"gelu\"",
                    "\"hidden_act\": \"bogus_act\"",
                )
            },
            vec!["hidden_act \"bogus_act\" is not supported"],
        ),
        (
            "dropped tensor",
            |m| drop_tensor(m, "encoder.layer.1.output.dense.weight"),
            vec![
                "model.safetensors",
                "missing tensor `encoder.layer.1.output.dense.weight`",
            ],
        ),
        (
            "no tokenizer",
            |m| std::fs::remove_file(m.join("tokenizer.json")).unwrap(),
            vec!["missing tokenizer.json"],
        ),
        (
            "no weights",
            |m| std::fs::remove_file(m.join("model.safetensors")).unwrap(),
            vec!["model.safetensors"],
        ),
        (
            "no config",
            |m| std::fs::remove_file(m.join("config.json")).unwrap(),
            vec!["missing config.json"],
        ),
        (
            "config not JSON",
            |m| std::fs::write(m.join("config.json"), "{\"model_type\": \"bert\",").unwrap(),
            vec!["config.json"],
        ),
        (
            "truncated weights",
            |m| {
                let p = m.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            },
            vec!["model.safetensors"],
        ),
        (
            "tokenizer not JSON",
            |m| std::fs::write(m.join("tokenizer.json"), "not json").unwrap(),
            vec!["tokenizer.json"],
        ),
    ];
    for (what, brk, needles) in cases {
        let model = tmp.path().join(what.replace(' ', "-"));
        copy_dir(&good, &model);
        brk(&model);
        let err = train_bitfit("rte", &model, glue(), &out).fails_with(&needles);
        assert!(
            err.contains(s(&model)),
            "{what}: the message does not name the model folder:\n{err}"
        );
        assert_nothing_written(&out);
    }
}

fn search(model: &Path, space: &str, budget: &str, out: &Path) -> Run {
    let budget = format!("--budget={budget}");
    let mut args = vec![
        "search",
        "--task",
        "rte",
        "--model",
        s(model),
        "--data",
        s(glue()),
        "--space",
        space,
        &budget,
        "--out",
        s(out),
    ];
    args.extend(TINY);
    train(&args)
}

/// What a user may type as a budget. Invalid text is refused, and so, before any training, are
/// budgets that cannot mean what they say: 0 (nothing to search for), one above the maximal
/// space's size (nothing to prune) and one given twice (it would train twice). A budget below
/// the smallest structured unit (a whole bias vector: hidden 32 here) leaves structured pruning
/// with nothing, while unstructured pruning keeps exactly that many entries.
#[test]
fn budgets_bad_zero_huge_and_tiny() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let out = tmp.path().join("never");
    for (budget, needles) in [
        ("-5", vec!["--budget", "\"-5\"", "cannot be negative"]),
        ("abc", vec!["\"abc\"", "e.g. 2000, 2k"]),
        ("1.5", vec!["\"1.5\"", "not a whole number"]),
        ("", vec!["empty"]),
        ("99999999999999999999999999999", vec!["too large"]),
    ] {
        search(&model, "bitfit", budget, &out).fails_with(&needles);
        assert_nothing_written(&out);
    }

    let get = |dir: &Path, id: &str| json(&dir.join(id).join("record.json"));
    let maximal_params = |dir: &Path| num(&get(dir, "rte-bitfit-maximal-s0"), "/result/pet_params");

    for (budget, needles) in [
        ("0", vec!["budget 0 keeps no parameter"]),
        (
            "1G",
            vec!["budget 1000000000 is above the space's", "nothing to prune"],
        ),
        ("100,100", vec!["budget 100 is given twice"]),
    ] {
        search(&model, "bitfit", budget, &out).fails_with(&needles);
        assert_nothing_written(&out);
    }

    let below = tmp.path().join("below");
    search(&model, "bitfit", "31", &below).ok();
    assert_eq!(
        num(
            &get(&below, "rte-bitfit-s31-mean-same-s0"),
            "/result/pet_params"
        ),
        0.0
    );
    assert_eq!(
        num(
            &get(&below, "rte-bitfit-u31-mean-same-s0"),
            "/result/pet_params"
        ),
        31.0
    );
    assert!(maximal_params(&below) > 31.0);

    // The same rules in a sweep's TOML, refused at planning (so also by --dry-run).
    let cfg = tmp.path().join("zero.toml");
    let toml = sweep_toml(&model, "tasks = [\"rte\"]\nseeds = [0]\n[[searches]]\nspace = \"bitfit\"\nbudgets = [0]\nmodes = [\"structured\"]\nlr = 1e-3\n");
    std::fs::write(&cfg, toml).unwrap();
    let sw = tmp.path().join("sweep-zero");
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&sw),
        "--quiet",
        "--no-estimate",
    ])
    .fails_with(&["budget 0 keeps no parameter"]);
    assert_nothing_written(&sw);
}

/// `--method arch:FILE` with an architecture saved for another model is refused with what differs.
#[test]
fn architecture_of_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    // A one-layer model: layer 1's tensors dropped, the config says one layer.
    let one = tmp.path().join("one-layer");
    copy_dir(&model, &one);
    edit_config(&one, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    drop_tensors(&one, "encoder.layer.1.");
    let roberta = tiny(tmp.path(), "roberta");
    let out = tmp.path().join("out");
    for (other, needle) in [
        (
            &one,
            "num_layers is 1 in the architecture but 2 in the model config",
        ),
        (&roberta, "family is Roberta in the architecture but Bert"),
    ] {
        let runs = tmp.path().join(format!(
            "runs-{}",
            other.file_name().unwrap().to_string_lossy()
        ));
        train_mam(other, &runs).ok();
        let arch = runs.join("rte-mam-s0/architecture.json");
        assert!(arch.exists());
        let method = format!("arch:{}", s(&arch));
        let mut args = vec![
            "train",
            "--task",
            "rte",
            "--model",
            s(&model),
            "--data",
            s(glue()),
            "--method",
            &method,
            "--out",
            s(&out),
        ];
        args.extend(TINY);
        train(&args).fails_with(&[
            "--method arch:",
            "architecture is for another model",
            needle,
        ]);
        assert_nothing_written(&out);
    }
    // The architecture of this model works, by file or by run folder.
    let own = tmp.path().join("own");
    train_mam(&model, &own).ok();
    for file in [
        own.join("rte-mam-s0/architecture.json"),
        own.join("rte-mam-s0"),
    ] {
        let method = format!("arch:{}", s(&file));
        let mut args = vec![
            "train",
            "--task",
            "rte",
            "--model",
            s(&model),
            "--data",
            s(glue()),
            "--method",
            &method,
            "--out",
            s(&out),
        ];
        args.extend(TINY);
        train(&args).ok();
    }
    let bad = format!("arch:{}", s(&tmp.path().join("missing.json")));
    let o2 = tmp.path().join("o2");
    let mut args = vec![
        "train",
        "--task",
        "rte",
        "--model",
        s(&model),
        "--data",
        s(glue()),
        "--method",
        &bad,
        "--out",
        s(&o2),
    ];
    args.extend(TINY);
    train(&args).fails_with(&["missing.json"]);
}

fn train_mam(model: &Path, out: &Path) -> Run {
    let mut args = vec![
        "train",
        "--task",
        "rte",
        "--model",
        s(model),
        "--data",
        s(glue()),
        "--method",
        "mam",
        "--out",
        s(out),
    ];
    args.extend(TINY);
    train(&args)
}

/// A thread count of 0 or far above the cores (a typo: 100000 used to hang spawning threads) is
/// refused before anything runs.
#[test]
fn absurd_thread_counts_are_refused() {
    for n in ["0", "100000"] {
        train(&[
            "--threads",
            n,
            "tiny-model",
            "--tokenizer",
            "none.json",
            "--out",
            "/nonexistent/x",
        ])
        .fails_with(&[&format!("--threads {n}: expected 1 to")]);
    }
}

/// Every recipe option typed on the command line reaches the run's spec as typed (one of them,
/// `--max-grad-norm`, used to panic inside clap on any value), and nonsense values are refused,
/// naming the option, before anything is written.
#[test]
fn recipe_options_reach_the_spec_and_bad_values_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let base = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--task",
            "rte",
            "--model",
            s(&model),
            "--data",
            s(glue()),
            "--method",
            "bitfit",
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(TINY.iter().map(|x| x.to_string()));
        a
    };
    let out = tmp.path().join("set");
    let mut args = base(&out);
    let set = [
        ("--lr", "2e-3"),
        ("--epochs", "2"),
        ("--warmup", "0.1"),
        ("--weight-decay", "0.01"),
        ("--adam-beta1", "0.8"),
        ("--adam-beta2", "0.99"),
        ("--adam-eps", "1e-6"),
        ("--max-grad-norm", "0.5"),
        ("--bucket", "2"),
    ];
    for (k, v) in set {
        args.extend([k.to_string(), v.to_string()]);
    }
    train(&args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let rec = json(&out.join("rte-bitfit-s0").join("record.json"));
    for (field, want) in [
        ("lr", 2e-3),
        ("epochs", 2.0),
        ("warmup_frac", 0.1),
        ("weight_decay", 0.01),
        ("adam_beta1", 0.8),
        ("adam_beta2", 0.99),
        ("adam_eps", 1e-6),
        ("max_grad_norm", 0.5),
        ("bucket", 2.0),
    ] {
        assert_eq!(
            num(&rec, &format!("/spec/recipe/{field}")),
            want,
            "recipe.{field}"
        );
    }

    // `none` is the default: no clipping, and the field stays out of the spec (old hashes hold).
    let none = tmp.path().join("none");
    let mut args = base(&none);
    args.extend(["--max-grad-norm".into(), "none".into()]);
    train(&args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let rec = json(&none.join("rte-bitfit-s0").join("record.json"));
    assert!(
        rec.pointer("/spec/recipe/max_grad_norm")
            .is_none_or(|v| v.is_null()),
        "{rec}"
    );

    let never = tmp.path().join("never");
    for (flag, value, needles) in [
        (
            "--max-grad-norm",
            "abc",
            vec!["--max-grad-norm", "a number or `none`"],
        ),
        (
            "--max-grad-norm",
            "0",
            vec!["--max-grad-norm", "must be a finite number above 0"],
        ),
        ("--max-grad-norm", "nan", vec!["--max-grad-norm"]),
        ("--lr", "nan", vec!["--lr"]),
        ("--lr", "-1e-3", vec!["--lr"]),
        ("--lr", "0", vec!["--lr"]),
        ("--epochs", "0", vec!["--epochs"]),
        ("--epochs", "inf", vec!["--epochs"]),
        ("--warmup", "1", vec!["--warmup"]),
        ("--batch-size", "0", vec!["--batch-size"]),
        ("--adam-beta2", "1", vec!["--adam-beta2"]),
    ] {
        let mut args = base(&never);
        args.push(format!("{flag}={value}"));
        train(&args.iter().map(String::as_str).collect::<Vec<_>>()).fails_with(&needles);
        assert_nothing_written(&never);
    }
}

/// A hub id resolves as transformers resolves it: the snapshot `refs/main` names in the local
/// cache (`HF_HOME`), else a download (here an unreachable endpoint, so it fails and says so), and
/// with `HF_HUB_OFFLINE=1` no download is tried.
#[test]
fn hub_ids_resolve_through_the_cache_or_say_what_was_tried() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let home = tmp.path().join("hf");
    let snap = home.join("hub/models--someorg--tiny-bert/snapshots/0123abcd");
    copy_dir(&model, &snap);
    std::fs::create_dir_all(home.join("hub/models--someorg--tiny-bert/refs")).unwrap();
    std::fs::write(
        home.join("hub/models--someorg--tiny-bert/refs/main"),
        "0123abcd",
    )
    .unwrap();
    let run = |id: &str, offline: bool| {
        let out = tmp.path().join("runs");
        let mut args = vec![
            "train",
            "--task",
            "rte",
            "--model",
            id,
            "--data",
            s(glue()),
            "--method",
            "bitfit",
            "--out",
            s(&out),
        ];
        args.extend(TINY);
        let mut c = command("petnas-train");
        c.args(&args)
            .env("HF_HOME", &home)
            .env_remove("HF_HUB_CACHE")
            .env("HF_ENDPOINT", "http://127.0.0.1:9");
        if offline {
            c.env("HF_HUB_OFFLINE", "1");
        }
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run("someorg/tiny-bert", true);
    assert_eq!(
        code,
        Some(0),
        "a cached hub id did not resolve offline:\n{err}"
    );
    let (code, err) = run("someorg/not-cached", true);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("someorg/not-cached")
            && err.contains("HF_HUB_OFFLINE=1, so no download was tried"),
        "{err}"
    );
    let (code, err) = run("someorg/not-cached", false);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("the download failed") && err.contains("config.json"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
