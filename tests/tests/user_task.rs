//! A user's own task from CSV, TSV, JSON Lines or Parquet, and GLUE in the hub's Parquet layout:
//! the GLUE files in ../shared are converted at test time (other column names, string labels),
//! and a run on the converted files must score exactly as the run on the TSV (same seed, same
//! examples in the same order: bit-identical metrics and loss).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use polars::prelude::*;

/// Rows of a GLUE TSV (header dropped), split on tabs as the GLUE reader does.
fn tsv_rows(task_dir: &str, split: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(glue().join(task_dir).join(format!("{split}.tsv"))).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn write_csv(path: &Path, delimiter: u8, header: &[&str], rows: &[Vec<String>]) {
    let mut w = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .unwrap();
    w.write_record(header).unwrap();
    for r in rows {
        w.write_record(r).unwrap();
    }
    w.flush().unwrap();
}

fn write_jsonl(path: &Path, header: &[&str], rows: &[Vec<serde_json::Value>]) {
    let mut out = String::new();
    for r in rows {
        let obj: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .map(|h| h.to_string())
            .zip(r.iter().cloned())
            .collect();
        out.push_str(&serde_json::Value::Object(obj).to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn write_parquet(path: &Path, mut df: DataFrame) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

fn col(rows: &[Vec<String>], i: usize) -> Vec<String> {
    rows.iter().map(|r| r[i].clone()).collect()
}

fn run_record(out: &Path) -> serde_json::Value {
    let names = run_names(out);
    assert_eq!(names.len(), 1, "{names:?}");
    json(&out.join(&names[0]).join("record.json"))
}

fn train_on(model: &Path, out: &Path, task_args: &[&str]) -> serde_json::Value {
    // One epoch on both sides: GLUE tasks default to the paper's epochs, user tasks to 3.
    let mut args = vec![
        "train",
        "--model",
        s(model),
        "--method",
        "bitfit",
        "--out",
        s(out),
        "--epochs",
        "1",
    ];
    args.extend(task_args);
    args.extend(TINY);
    train(&args).ok();
    run_record(out)
}

#[track_caller]
fn assert_same_scores(a: &serde_json::Value, b: &serde_json::Value, what: &str) {
    assert_eq!(
        a["result"]["metrics"], b["result"]["metrics"],
        "{what}: metrics differ"
    );
    assert_eq!(
        a["result"]["final_train_loss"], b["result"]["final_train_loss"],
        "{what}: final loss differs"
    );
    assert_eq!(a["result"]["steps"], b["result"]["steps"], "{what}");
}

/// RTE as CSV (quoted texts, string labels), TSV, JSON Lines and Parquet under other column
/// names, and in the hub's Parquet layout: every run scores exactly as the GLUE TSV run.
#[test]
fn rte_from_every_format_scores_as_the_glue_tsv() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let base = train_on(
        &model,
        &tmp.path().join("glue"),
        &["--task", "rte", "--data", s(glue())],
    );
    assert!(
        base["spec"].get("task_def").is_none() && base["spec"].get("data").is_none(),
        "{}",
        base["spec"]
    );

    let (train_rows, dev_rows) = (tsv_rows("RTE", "train"), tsv_rows("RTE", "dev"));
    let (train_r, dev_r) = (&train_rows, &dev_rows);
    let d = tmp.path().join("mine");
    std::fs::create_dir_all(&d).unwrap();
    // Columns: index, sentence1, sentence2, label → premise, claim, gold (strings).
    let pick = |rows: &[Vec<String>]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| vec![r[1].clone(), r[2].clone(), r[3].clone()])
            .collect()
    };
    let header = ["premise", "claim", "gold"];
    write_csv(&d.join("train.csv"), b',', &header, &pick(train_r));
    write_csv(&d.join("dev.csv"), b',', &header, &pick(dev_r));
    write_csv(&d.join("train.tsv"), b'\t', &header, &pick(train_r));
    write_csv(&d.join("dev.tsv"), b'\t', &header, &pick(dev_r));
    let json_rows = |rows: &[Vec<String>]| -> Vec<Vec<serde_json::Value>> {
        pick(rows)
            .into_iter()
            .map(|r| r.into_iter().map(Into::into).collect())
            .collect()
    };
    write_jsonl(&d.join("train.jsonl"), &header, &json_rows(train_r));
    write_jsonl(&d.join("dev.jsonl"), &header, &json_rows(dev_r));
    let frame = |rows: &[Vec<String>]| {
        df!("premise" => col(rows, 1), "claim" => col(rows, 2), "gold" => col(rows, 3)).unwrap()
    };
    write_parquet(&d.join("train.parquet"), frame(train_r));
    write_parquet(&d.join("dev.parquet"), frame(dev_r));

    for ext in ["csv", "tsv", "jsonl", "parquet"] {
        let (tr, dv) = (d.join(format!("train.{ext}")), d.join(format!("dev.{ext}")));
        let r = train_on(
            &model,
            &tmp.path().join(format!("user-{ext}")),
            &[
                "--train",
                s(&tr),
                "--dev",
                s(&dv),
                "--text-columns",
                "premise,claim",
                "--label-column",
                "gold",
                "--task-name",
                "my-rte",
                "--metric",
                "accuracy",
            ],
        );
        assert_same_scores(&base, &r, ext);
        assert_eq!(r["id"], "my-rte-bitfit-s0");
        let def = &r["spec"]["task_def"];
        assert_eq!(
            def["labels"],
            serde_json::json!(["entailment", "not_entailment"]),
            "{ext}: sorted string labels"
        );
        assert_eq!(def["kind"], "classification");
        assert_eq!(
            r["spec"]["data"]["train"].as_str().unwrap().len(),
            64,
            "{ext}: a SHA-256 per file"
        );
    }

    // The hub's layout: <dir>/rte/{train,validation}-00000-of-00001.parquet, integer labels.
    let hub = tmp.path().join("hub");
    let hub_frame = |rows: &[Vec<String>]| {
        let labels: Vec<i64> = rows
            .iter()
            .map(|r| if r[3] == "entailment" { 0 } else { 1 })
            .collect();
        let idx: Vec<i64> = (0..rows.len() as i64).collect();
        df!("sentence1" => col(rows, 1), "sentence2" => col(rows, 2), "label" => labels, "idx" => idx).unwrap()
    };
    write_parquet(
        &hub.join("rte/train-00000-of-00001.parquet"),
        hub_frame(train_r),
    );
    write_parquet(
        &hub.join("rte/validation-00000-of-00001.parquet"),
        hub_frame(dev_r),
    );
    let mut args = vec![
        "train",
        "--model",
        s(&model),
        "--method",
        "bitfit",
        "--task",
        "rte",
        "--data",
        s(&hub),
        "--epochs",
        "1",
    ];
    let out = tmp.path().join("hub-run");
    args.extend(["--out", s(&out)]);
    args.extend(TINY);
    let run = train(&args).ok();
    assert!(
        run.stderr.contains("Hugging Face hub's GLUE Parquet"),
        "the layout found is not said:\n{}",
        run.stderr
    );
    let r = run_record(&out);
    assert_same_scores(&base, &r, "hub parquet");
    assert_eq!(r["id"], base["id"]);
    assert!(
        r["spec"]["data"].is_object(),
        "the hub's files are not the known TSV release: their checksums are in the spec"
    );
    assert_ne!(r["config_hash"], base["config_hash"]);
}

/// STS-B as a CSV with a numeric score column: a regression (inferred), scored with Pearson
/// and Spearman exactly as the GLUE run; then export carries the user task's labels, and a
/// changed training file is a changed spec.
#[test]
fn regression_and_string_classes_through_export_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let base = train_on(
        &model,
        &tmp.path().join("glue"),
        &["--task", "stsb", "--data", s(glue())],
    );
    let d = tmp.path().join("similarity");
    std::fs::create_dir_all(&d).unwrap();
    let pick = |rows: &[Vec<String>]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| vec![r[7].clone(), r[8].clone(), r[9].clone()])
            .collect()
    };
    write_csv(
        &d.join("train.csv"),
        b',',
        &["a", "b", "score"],
        &pick(&tsv_rows("STS-B", "train")),
    );
    write_csv(
        &d.join("dev.csv"),
        b',',
        &["a", "b", "score"],
        &pick(&tsv_rows("STS-B", "dev")),
    );
    let (trf, dvf) = (d.join("train.csv"), d.join("dev.csv"));
    let args = [
        "--train",
        s(&trf),
        "--dev",
        s(&dvf),
        "--text-columns",
        "a,b",
        "--label-column",
        "score",
    ];
    let r = train_on(&model, &tmp.path().join("user"), &args);
    assert_same_scores(&base, &r, "stsb csv");
    assert_eq!(r["spec"]["task_def"]["kind"], "regression");
    assert_eq!(
        r["id"], "similarity-bitfit-s0",
        "the default name is the training file's folder"
    );

    // SST-2 with labels renamed to words: ids follow the stated order, export names them.
    let s2 = tmp.path().join("sentiment");
    std::fs::create_dir_all(&s2).unwrap();
    let words = |rows: Vec<Vec<String>>| -> Vec<Vec<String>> {
        rows.into_iter()
            .map(|r| {
                vec![
                    r[0].clone(),
                    if r[1] == "1" {
                        "positive".into()
                    } else {
                        "negative".into()
                    },
                ]
            })
            .collect()
    };
    write_csv(
        &s2.join("train.csv"),
        b',',
        &["text", "sentiment"],
        &words(tsv_rows("SST-2", "train")[..200].to_vec()),
    );
    write_csv(
        &s2.join("dev.csv"),
        b',',
        &["text", "sentiment"],
        &words(tsv_rows("SST-2", "dev")[..40].to_vec()),
    );
    write_csv(
        &s2.join("test.csv"),
        b',',
        &["text", "sentiment"],
        &words(tsv_rows("SST-2", "dev")[40..50].to_vec()),
    );
    let out = tmp.path().join("sst");
    let mut a = vec![
        "train",
        "--model",
        s(&model),
        "--method",
        "bitfit",
        "--out",
        s(&out),
    ];
    let (tr, dv, te) = (
        s2.join("train.csv"),
        s2.join("dev.csv"),
        s2.join("test.csv"),
    );
    a.extend([
        "--train",
        s(&tr),
        "--dev",
        s(&dv),
        "--test",
        s(&te),
        "--text-columns",
        "text",
        "--label-column",
        "sentiment",
        "--labels",
        "negative,positive",
    ]);
    a.extend(TINY);
    train(&a).ok();
    let run_dir = out.join("sentiment-bitfit-s0");
    let merged = tmp.path().join("merged");
    train(&["export", "--run", s(&run_dir), "--merged", s(&merged)]).ok();
    let cfg = json(&merged.join("config.json"));
    assert_eq!(
        cfg["id2label"],
        serde_json::json!({"0": "negative", "1": "positive"})
    );
    assert_eq!(
        cfg["label2id"],
        serde_json::json!({"negative": 0, "positive": 1})
    );
    let p = train(&["predict", "--run", s(&run_dir), "--split", "test"]).ok();
    let lines: Vec<serde_json::Value> = p
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for l in &lines {
        let logits: Vec<f64> = l["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let want = if logits[1] > logits[0] {
            "positive"
        } else {
            "negative"
        };
        assert_eq!(l["label"], want, "{l}");
    }

    // A changed training file is a changed spec: the same command now refuses to replace it.
    let mut text = std::fs::read_to_string(&tr).unwrap();
    text.push_str("\"one more\",positive\n");
    std::fs::write(&tr, text).unwrap();
    let e = train(&a).fails_with(&["holds a run made with another config", "data.train"]);
    assert!(e.contains("--overwrite"), "{e}");
}

/// Bad user data is refused before any training, naming file, row and column.
#[test]
fn bad_user_files_are_named_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let d = tmp.path().join("bad");
    std::fs::create_dir_all(&d).unwrap();
    let w = |name: &str, text: &str| -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good_train = w("train.csv", "text,label\nfine,pos\nbad,neg\n");
    let good_dev = w("dev.csv", "text,label\nok,pos\n");
    let out = tmp.path().join("never");
    let run = |train_f: &Path, dev_f: &Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--model",
            s(&model),
            "--method",
            "bitfit",
            "--out",
            s(&out),
            "--train",
            s(train_f),
            "--dev",
            s(dev_f),
            "--text-columns",
            "text",
            "--label-column",
            "label",
        ];
        a.extend(extra);
        a.extend(TINY);
        train(&a)
    };
    let cases: Vec<(PathBuf, PathBuf, Vec<&str>, Vec<&str>)> = vec![
        (
            w("nocol.csv", "sentence,label\na,pos\nb,neg\n"),
            good_dev.clone(),
            vec![],
            vec!["nocol.csv: no column `text`", "`sentence`, `label`"],
        ),
        (
            good_train.clone(),
            w("unseen.csv", "text,label\na,pos\nb,meh\n"),
            vec![],
            vec!["unseen.csv:3", "column `label`", "\"meh\"", "neg, pos"],
        ),
        (
            w("mixed.csv", "text,label\na,1\nb,pos\n"),
            good_dev.clone(),
            vec![],
            vec!["mixed.csv:3", "mixed label types"],
        ),
        (
            w("empty.csv", ""),
            good_dev.clone(),
            vec![],
            vec!["empty.csv: file is empty"],
        ),
        (
            w("header.csv", "text,label\n"),
            good_dev.clone(),
            vec![],
            vec!["header.csv: file has a header but no examples"],
        ),
        (
            w("reg.csv", "text,label\na,0.5\nb,x\n"),
            good_dev.clone(),
            vec!["--task-kind", "regression"],
            vec!["reg.csv:3", "regression label \"x\" is not a number"],
        ),
        (
            w("ragged.csv", "text,label\na,pos\nb,neg,extra\n"),
            good_dev.clone(),
            vec![],
            vec!["ragged.csv:3", "3 fields but the header has 2"],
        ),
        (
            good_train.clone(),
            good_dev.clone(),
            vec!["--metric", "pearson"],
            vec!["pearson does not score a classification"],
        ),
        (
            w("data.xlsx", "x"),
            good_dev.clone(),
            vec![],
            vec!["data.xlsx: unknown file format `.xlsx`"],
        ),
    ];
    for (tr, dv, extra, needles) in cases {
        run(&tr, &dv, &extra).fails_with(&needles);
        assert!(!out.exists(), "a refused run wrote {}", out.display());
    }
    // --task and --train together, and --train without its columns, are refused by the parser.
    train(&[
        "train",
        "--task",
        "rte",
        "--train",
        s(&good_train),
        "--dev",
        s(&good_dev),
        "--text-columns",
        "text",
        "--label-column",
        "label",
        "--method",
        "bitfit",
    ])
    .fails_with(&["cannot be used with"]);
    train(&["train", "--train", s(&good_train), "--method", "bitfit"]).fails_with(&[
        "--dev",
        "--text-columns",
        "--label-column",
    ]);
}

/// A sweep's `tasks` mixes a GLUE name with a user task's table; the user task's runs score as
/// `train` scores the same files, and the analysis shows the task under its own name.
#[test]
fn a_sweep_mixes_glue_and_user_tasks_and_analysis_names_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let d = tmp.path().join("files");
    std::fs::create_dir_all(&d).unwrap();
    let pick = |rows: Vec<Vec<String>>| -> Vec<Vec<String>> {
        rows.into_iter()
            .map(|r| vec![r[1].clone(), r[2].clone(), r[3].clone()])
            .collect()
    };
    write_csv(
        &d.join("train.csv"),
        b',',
        &["s1", "s2", "y"],
        &pick(tsv_rows("RTE", "train")),
    );
    write_csv(
        &d.join("dev.csv"),
        b',',
        &["s1", "s2", "y"],
        &pick(tsv_rows("RTE", "dev")),
    );
    let body = "tasks = [\"rte\"]\nseeds = [0]\n\n[[baselines]]\nmethod = \"bitfit\"\nlr = 1e-3\n"
        .to_string();
    // `tasks` as an array of tables needs the GLUE name in a table too; the inline form mixes.
    let body = body.replace(
        "tasks = [\"rte\"]",
        &format!(
            "tasks = [\"rte\", {{ name = \"nli-csv\", train = {:?}, dev = {:?}, text_columns = [\"s1\", \"s2\"], label_column = \"y\", metrics = [\"accuracy\"] }}]",
            s(&d.join("train.csv")),
            s(&d.join("dev.csv"))
        ),
    );
    let cfg = tmp.path().join("mixed.toml");
    std::fs::write(&cfg, sweep_toml(&model, &body)).unwrap();
    let out = tmp.path().join("sweep");
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    let runs = out.join("runs");
    assert_eq!(run_names(&runs), ["nli-csv-bitfit-s0", "rte-bitfit-s0"]);
    let user = json(&runs.join("nli-csv-bitfit-s0/record.json"));
    let glue_run = json(&runs.join("rte-bitfit-s0/record.json"));
    assert_same_scores(&glue_run, &user, "sweep user task");
    let single = train_on(
        &model,
        &tmp.path().join("single"),
        &[
            "--train",
            s(&d.join("train.csv")),
            "--dev",
            s(&d.join("dev.csv")),
            "--text-columns",
            "s1,s2",
            "--label-column",
            "y",
            "--task-name",
            "nli-csv",
            "--metric",
            "accuracy",
        ],
    );
    assert_eq!(
        single["config_hash"], user["config_hash"],
        "train and sweep make one spec of one task"
    );

    // The same sweep written with `[[tasks]]` tables (a GLUE task by `name` alone) plans the
    // same runs with the same hashes.
    let tables = std::fs::read_to_string(&cfg).unwrap().replace(
        &body.lines().next().unwrap().to_string(),
        "",
    ) + &format!(
        "\n[[tasks]]\nname = \"rte\"\n\n[[tasks]]\nname = \"nli-csv\"\ntrain = {:?}\ndev = {:?}\ntext_columns = [\"s1\", \"s2\"]\nlabel_column = \"y\"\nmetrics = [\"accuracy\"]\n",
        s(&d.join("train.csv")),
        s(&d.join("dev.csv"))
    );
    let cfg2 = tmp.path().join("tables.toml");
    std::fs::write(&cfg2, &tables).unwrap();
    let dry = train(&[
        "sweep",
        "--config",
        s(&cfg2),
        "--out",
        s(&out),
        "--dry-run",
        "--no-estimate",
    ])
    .ok();
    assert!(
        dry.stdout.contains("2 done, 0 to do"),
        "{tables}\n{}",
        dry.stdout
    );

    let t = analyze(&["tables", "--runs", s(&runs)]).ok();
    let header = t
        .stdout
        .lines()
        .find(|l| l.starts_with("| Method |"))
        .unwrap_or_else(|| panic!("no table:\n{}", t.stdout));
    assert!(
        header.contains("| RTE |") && header.contains("| nli-csv |"),
        "{header}"
    );

    // A user task without a name, or named like a GLUE task, is refused at planning.
    for (entry, needle) in [
        ("{ train = \"a.csv\", dev = \"b.csv\", text_columns = [\"t\"], label_column = \"y\" }", "needs a `name`"),
        ("{ name = \"mrpc\", train = \"a.csv\", dev = \"b.csv\", text_columns = [\"t\"], label_column = \"y\" }", "is a GLUE task's"),
        ("{ name = \"x\", train = \"a.csv\", dev = \"b.csv\", text_column = [\"t\"], label_column = \"y\" }", "unknown field `text_column`"),
    ] {
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, sweep_toml(&model, &format!("tasks = [{entry}]\nseeds = [0]\n[[baselines]]\nmethod = \"bitfit\"\nlr = 1e-3\n"))).unwrap();
        train(&["sweep", "--config", s(&bad), "--out", s(&tmp.path().join("never")), "--dry-run", "--no-estimate"]).fails_with(&[needle]);
    }
}
