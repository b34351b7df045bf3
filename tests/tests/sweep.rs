//! `petnas-train sweep` end to end on a tiny model and real (truncated) GLUE data, then
//! `petnas-analyze report` on its output; config changes, dry runs, shards and reindexing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use serde_json::Value;

fn module_sum(r: &Value, field: &str) -> u64 {
    r.pointer("/result/modules")
        .and_then(Value::as_array)
        .expect("modules")
        .iter()
        .map(|m| m[field].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn sweep_end_to_end_then_report() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let cfg = tmp.path().join("study.toml");
    std::fs::write(&cfg, study(&model)).unwrap();
    let out = tmp.path().join("sweep");

    let r = train(&["sweep", "--config", s(&cfg), "--out", s(&out), "--quiet"]).ok();
    assert!(r.stdout.contains("plan: 20 runs"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("20 planned, 0 already done, 20 completed now, 0 failed"),
        "{}",
        r.stdout
    );

    // The plan, the folders and the index agree on the 20 runs.
    let plan: BTreeSet<String> = json(&out.join("plan.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|p| text(p, "/id").to_string())
        .collect();
    assert_eq!(plan.len(), 20);
    let folders: BTreeSet<String> = run_names(&out.join("runs")).into_iter().collect();
    assert_eq!(folders, plan);
    let index = jsonl(&out.join("index.jsonl"));
    assert_eq!(index.len(), 20, "index.jsonl lines");
    let ids: BTreeSet<String> = index.iter().map(|r| text(r, "/id").to_string()).collect();
    assert_eq!(ids, plan);
    assert!(leftovers(&out.join("runs")).is_empty() && leftovers(&out).is_empty());
    assert!(out.join("sweep.log").exists() && out.join("sweep.toml").exists());

    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for r in &index {
        let id = text(r, "/id");
        let dir = out.join("runs").join(id);
        assert_eq!(
            normalized(r.clone()),
            record(&dir),
            "{id}: index line and record.json differ"
        );
        assert_eq!(text(r, "/result/status"), "completed", "{id}");
        let metric = text(r, "/result/primary_metric");
        let v = num(r, &format!("/result/metrics/{metric}"));
        assert!(v.is_finite(), "{id}: {metric} = {v}");
        assert_eq!(num(r, "/result/steps"), 3.0, "{id}");
        // A PET run's count is the sum of what its modules keep.
        assert_eq!(
            num(r, "/result/pet_params") as u64,
            module_sum(r, "bias_kept") + module_sum(r, "lora_kept"),
            "{id}"
        );
        assert!(
            dir.join("architecture.json").exists() && dir.join("weights.safetensors").exists(),
            "{id}"
        );
        by_id.insert(id.to_string(), r.clone());
    }
    for task in ["rte", "stsb"] {
        let bitfit = &by_id[&format!("{task}-bitfit-s0")];
        assert_eq!(
            num(bitfit, "/result/pet_params") as u64,
            module_sum(bitfit, "bias_total")
        );
        assert_eq!(module_sum(bitfit, "lora_total"), 0);
        let maximal = &by_id[&format!("{task}-mam16-maximal-s0")];
        let full = num(maximal, "/result/pet_params") as u64;
        assert_eq!(
            full,
            module_sum(maximal, "bias_total") + module_sum(maximal, "lora_total")
        );
        assert!(out
            .join("runs")
            .join(format!("{task}-mam16-maximal-s0"))
            .join("criterion.safetensors")
            .exists());
        for crit in ["mean", "random"] {
            for budget in [2000u64, 5000] {
                let st = &by_id[&format!("{task}-mam16-s{budget}-{crit}-same-s0")];
                let un = &by_id[&format!("{task}-mam16-u{budget}-{crit}-same-s0")];
                let (sp, up) = (
                    num(st, "/result/pet_params") as u64,
                    num(un, "/result/pet_params") as u64,
                );
                assert!(full > budget);
                // Unstructured pruning removes single entries, so it lands on the budget exactly;
                // structured removes whole vectors and rank components, so it may stay below.
                assert_eq!(up, budget, "{task} U {crit} {budget}");
                assert!(
                    sp <= budget && sp <= up && sp > 0,
                    "{task} S {crit} {budget}: {sp}"
                );
                for (r, mode) in [(st, "structured"), (un, "unstructured")] {
                    assert_eq!(text(r, "/spec/mode"), mode);
                    assert_eq!(num(r, "/spec/budget") as u64, budget);
                    assert_eq!(text(r, "/spec/criterion"), crit);
                    let arch = json(
                        &out.join("runs")
                            .join(text(r, "/id"))
                            .join("architecture.json"),
                    );
                    assert_eq!(text(&arch, "/mode"), mode);
                    assert_eq!(num(&arch, "/budget") as u64, budget);
                }
            }
        }
    }

    // The report: tables with these scores, and the figures it links to.
    let rep = tmp.path().join("report");
    let a = analyze(&["report", "--runs", s(&out), "--out", s(&rep)]).ok();
    let readme_path = rep.join("README.md");
    assert!(a.stdout.contains("README.md"), "{}", a.stdout);
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    for needle in [
        "## Tables",
        "## Figures",
        "| BitFit |",
        "| S-MaM ",
        "| U-MaM ",
        "Random S-MaM",
        "Random U-MaM",
        "RTE",
        "STS-B",
    ] {
        assert!(
            readme.contains(needle),
            "README lacks {needle:?}:\n{readme}"
        );
    }
    // Table 1's BitFit row carries the records' scores × 100.
    let row = readme
        .lines()
        .find(|l| l.starts_with("| BitFit |"))
        .expect("BitFit row");
    let header = readme
        .lines()
        .find(|l| l.starts_with("| Method | #params |"))
        .expect("Table 1 header");
    let cols: Vec<&str> = header.split('|').map(str::trim).collect();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    for (task, col, key) in [("rte", "RTE", "accuracy"), ("stsb", "STS-B", "pearson")] {
        let i = cols
            .iter()
            .position(|c| *c == col)
            .unwrap_or_else(|| panic!("no {col} column in {header}"));
        let shown: f64 = cells[i]
            .parse()
            .unwrap_or_else(|_| panic!("cell {:?} of {row}", cells[i]));
        let want = num(
            &by_id[&format!("{task}-bitfit-s0")],
            &format!("/result/metrics/{key}"),
        ) * 100.0;
        assert!(
            (shown - want).abs() <= 0.051,
            "{col}: table shows {shown}, record says {want}"
        );
    }
    let mut pngs = 0;
    for line in readme.lines() {
        if let Some(start) = line.find("](figures/") {
            let rest = &line[start + 2..];
            let file = &rest[..rest.find(')').expect("closing parenthesis")];
            let bytes = std::fs::read(rep.join(file))
                .unwrap_or_else(|e| panic!("README links {file}: {e}"));
            if file.ends_with(".png") {
                assert!(
                    bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
                    "{file} is not a PNG image"
                );
                pngs += 1;
            }
        }
    }
    for f in ["score_vs_budget_rte.png", "score_vs_budget_stsb.png"] {
        assert!(rep.join("figures").join(f).exists(), "no figure {f}");
    }
    assert!(pngs >= 3, "README shows {pngs} PNG figures");
    assert!(rep.join("table1.csv").exists() && rep.join("table2.csv").exists());
}

/// A sweep small enough to run three times: one baseline and one search on RTE.
fn small(model: &Path, bitfit_lr: &str) -> String {
    sweep_toml(
        model,
        &format!(
            r#"tasks = ["rte"]
seeds = [0]

[[baselines]]
method = "bitfit"
lr = {bitfit_lr}

[[searches]]
space = "bitfit"
budgets = [100]
modes = ["unstructured"]
lr = 1e-3
"#
        ),
    )
}

fn mtimes(runs: &Path) -> BTreeMap<String, std::time::SystemTime> {
    run_names(runs)
        .into_iter()
        .map(|n| {
            let t = std::fs::metadata(runs.join(&n).join("record.json"))
                .unwrap()
                .modified()
                .unwrap();
            (n, t)
        })
        .collect()
}

#[test]
fn changed_config_needs_rerun_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let cfg = tmp.path().join("small.toml");
    let out = tmp.path().join("sweep");
    let original = small(&model, "1e-3");
    std::fs::write(&cfg, &original).unwrap();
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
    assert_eq!(
        run_names(&runs),
        [
            "rte-bitfit-maximal-s0",
            "rte-bitfit-s0",
            "rte-bitfit-u100-mean-same-s0"
        ]
    );
    let before = mtimes(&runs);
    let old_hash = text(
        &json(&runs.join("rte-bitfit-s0/record.json")),
        "/config_hash",
    )
    .to_string();

    // Same config again: nothing to do.
    let r = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    assert!(
        r.stdout
            .contains("3 planned, 3 already done, 0 completed now"),
        "{}",
        r.stdout
    );
    assert_eq!(mtimes(&runs), before);

    // Another LR for the baseline: refused, naming the run and the way out; nothing touched.
    std::fs::write(&cfg, small(&model, "2e-3")).unwrap();
    let dry = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--dry-run",
        "--no-estimate",
    ])
    .ok();
    assert!(dry.stdout.contains("1 changed"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("rte-bitfit-s0 (3 steps) [Changed]"),
        "{}",
        dry.stdout
    );
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--quiet",
        "--no-estimate",
    ])
    .fails_with(&["--rerun-changed", "rte-bitfit-s0", "different config"]);
    assert_eq!(mtimes(&runs), before);
    assert_eq!(
        std::fs::read_to_string(out.join("sweep.toml")).unwrap(),
        original,
        "a refused config replaced sweep.toml"
    );

    // --rerun-changed redoes that run only.
    let r = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--quiet",
        "--no-estimate",
        "--rerun-changed",
    ])
    .ok();
    assert!(
        r.stdout
            .contains("3 planned, 2 already done, 1 completed now"),
        "{}",
        r.stdout
    );
    let after = mtimes(&runs);
    assert_ne!(after["rte-bitfit-s0"], before["rte-bitfit-s0"]);
    assert_eq!(
        after["rte-bitfit-maximal-s0"],
        before["rte-bitfit-maximal-s0"]
    );
    assert_eq!(
        after["rte-bitfit-u100-mean-same-s0"],
        before["rte-bitfit-u100-mean-same-s0"]
    );
    let redone = json(&runs.join("rte-bitfit-s0/record.json"));
    assert_eq!(num(&redone, "/spec/recipe/lr"), 2e-3);
    assert_ne!(text(&redone, "/config_hash"), old_hash);
    let index = jsonl(&out.join("index.jsonl"));
    assert_eq!(index.len(), 3);
    let line = index.iter().find(|r| r["id"] == "rte-bitfit-s0").unwrap();
    assert_eq!(
        num(line, "/spec/recipe/lr"),
        2e-3,
        "index.jsonl not rebuilt"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sweep.toml")).unwrap(),
        small(&model, "2e-3")
    );
}

#[test]
fn unknown_and_bad_config_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let out = tmp.path().join("never");
    let good = small(&model, "1e-3");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("top-level key", format!("learning_rate = 3e-4\n{good}"), vec!["unknown field `learning_rate`", "line 1"]),
        ("recipe key", good.replace("max_dev = 32", "max_dev = 32\nepoch = 3"), vec!["unknown field `epoch`", "expected one of `epochs`"]),
        ("search key", good.replace("budgets = [100]", "budgets = [100]\nbudget = 5"), vec!["unknown field `budget`"]),
        ("baseline key", good.replace("method = \"bitfit\"", "method = \"bitfit\"\nrate = 1"), vec!["unknown field `rate`"]),
        ("unknown task", good.replace("tasks = [\"rte\"]", "tasks = [\"rte\", \"glue9\"]"), vec!["task `glue9`", "unknown GLUE task"]),
        ("negative budget", good.replace("budgets = [100]", "budgets = [100, -5]"), vec!["line", "cannot be negative"]),
        ("fractional budget", good.replace("budgets = [100]", "budgets = [1.5]"), vec!["line", "not a whole number"]),
        ("text budget", good.replace("budgets = [100]", "budgets = [\"lots\"]"), vec!["line", "\"lots\"", "2k"]),
        ("bad mode", good.replace("modes = [\"unstructured\"]", "modes = [\"sideways\"]"), vec!["sideways", "structured"]),
        ("bad criterion", good.replace("modes = [\"unstructured\"]", "modes = [\"unstructured\"]\ncriteria = [\"vibes\"]"), vec!["vibes"]),
        ("zero lr", good.replace("lr = 1e-3\n\n[[searches]]", "lr = 0.0\n\n[[searches]]"), vec!["lr must be positive"]),
        ("unknown space", good.replace("space = \"bitfit\"", "space = \"nonsense\""), vec!["nonsense"]),
        ("duplicate ids", format!("{good}\n[[searches]]\nspace = \"bitfit\"\nmodes = [\"unstructured\"]\nbudgets = [100]\nlr = 3e-3\n"), vec!["share the id", "tag"]),
        ("duplicate budgets", good.replace("budgets = [100]", "budgets = [100, \"0.1k\"]"), vec!["budget 100 is given twice"]),
        ("budget above the space", good.replace("budgets = [100]", "budgets = [1000]"), vec!["budget 1000 is above the space's 608 parameters"]),
        ("zero budget", good.replace("budgets = [100]", "budgets = [0]"), vec!["budget 0 keeps no parameter"]),
        ("nan lr", good.replace("lr = 1e-3\n\n[[searches]]", "lr = nan\n\n[[searches]]"), vec!["lr must be positive"]),
        ("infinite epochs", good.replace("epochs = 1\n", "epochs = inf\n"), vec!["epochs = inf", "finite"]),
        ("warm-up of 1", good.replace("max_dev = 32", "max_dev = 32\nwarmup_frac = 1.0"), vec!["warmup_frac = 1", "[0, 1)"]),
        ("zero batch", good.replace("batch_size = 8", "batch_size = 0"), vec!["batch_size = 0"]),
        ("text clipping", good.replace("max_dev = 32", "max_dev = 32\nmax_grad_norm = \"off\""), vec!["max_grad_norm = \"off\"", "a number or \"none\""]),
        ("zero clipping", good.replace("max_dev = 32", "max_dev = 32\nmax_grad_norm = 0"), vec!["max_grad_norm = 0", "above 0"]),
        ("ambiguous lora init", good.replace("lr = 1e-3\n\n[[searches]]", "lr = 1e-3\nlora_init = \"lora\"\n\n[[searches]]"), vec!["`lora` is ambiguous", "hu"]),
    ];
    for (what, toml, needles) in cases {
        let cfg = tmp.path().join("bad.toml");
        std::fs::write(&cfg, &toml).unwrap();
        let err = train(&[
            "sweep",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--quiet",
            "--no-estimate",
        ])
        .fails_with(&needles);
        assert!(
            err.contains("bad.toml"),
            "{what}: the message does not name the file:\n{err}"
        );
        assert!(
            !out.exists(),
            "{what}: a refused config created {}",
            out.display()
        );
    }
}

#[test]
fn dry_run_touches_nothing_and_shards_cover_the_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let cfg = tmp.path().join("study.toml");
    std::fs::write(&cfg, study(&model)).unwrap();
    let out = tmp.path().join("sweep");

    // The dry run measures throughput for its estimate, prints the plan, and writes nothing.
    let dry = train(&["sweep", "--config", s(&cfg), "--out", s(&out), "--dry-run"]).ok();
    assert!(!out.exists(), "--dry-run created {}", out.display());
    assert!(
        dry.stdout.contains("estimated training time"),
        "{}",
        dry.stdout
    );
    let planned: Vec<String> = dry
        .stdout
        .lines()
        .filter(|l| l.contains(" [Missing] spec "))
        .map(|l| l.trim().split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(planned.len(), 20, "{}", dry.stdout);
    let all: BTreeSet<String> = planned.iter().cloned().collect();
    assert_eq!(all.len(), 20);

    // Shards as a job array would run them: separate machines, separate folders.
    let mut seen: Vec<String> = Vec::new();
    for k in 0..2 {
        let shard = format!("{k}/2");
        let dir = tmp.path().join(format!("shard{k}"));
        let d = train(&[
            "sweep",
            "--config",
            s(&cfg),
            "--out",
            s(&dir),
            "--dry-run",
            "--no-estimate",
            "--shard",
            &shard,
        ])
        .ok();
        let ids: Vec<String> = d
            .stdout
            .lines()
            .filter(|l| l.contains(" [Missing] spec "))
            .map(|l| l.trim().split(' ').next().unwrap().to_string())
            .collect();
        train(&[
            "sweep",
            "--config",
            s(&cfg),
            "--out",
            s(&dir),
            "--quiet",
            "--no-estimate",
            "--shard",
            &shard,
        ])
        .ok();
        let plan: Vec<String> = json(&dir.join(format!("plan.{k}-of-2.json")))
            .as_array()
            .unwrap()
            .iter()
            .map(|p| text(p, "/id").to_string())
            .collect();
        assert_eq!(plan, ids, "shard {k}: plan file and dry run disagree");
        let index: Vec<String> = jsonl(&dir.join(format!("index.{k}-of-2.jsonl")))
            .iter()
            .map(|r| text(r, "/id").to_string())
            .collect();
        assert_eq!(
            index.iter().cloned().collect::<BTreeSet<_>>(),
            ids.iter().cloned().collect::<BTreeSet<_>>(),
            "shard {k} index"
        );
        assert_eq!(
            run_names(&dir.join("runs"))
                .into_iter()
                .collect::<BTreeSet<_>>(),
            ids.iter().cloned().collect::<BTreeSet<_>>()
        );
        assert!(
            !dir.join("index.jsonl").exists(),
            "a shard wrote the global index"
        );
        // A search's runs stay in one shard (they share its maximal training).
        for id in &ids {
            if id.contains("-mam16-") {
                let task = id.split('-').next().unwrap();
                assert!(
                    ids.contains(&format!("{task}-mam16-maximal-s0")),
                    "shard {k} has {id} without its maximal run"
                );
            }
        }
        seen.extend(ids);
    }
    assert_eq!(seen.len(), 20, "shards overlap or miss runs: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), all);

    // Gather the shards and reindex.
    let merged = tmp.path().join("merged");
    for k in 0..2 {
        let runs = tmp.path().join(format!("shard{k}/runs"));
        for n in run_names(&runs) {
            copy_dir(&runs.join(&n), &merged.join("runs").join(&n));
        }
    }
    let r = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&merged),
        "--reindex",
    ])
    .ok();
    assert!(r.stdout.contains("(20 runs)"), "{}", r.stdout);
    let index = jsonl(&merged.join("index.jsonl"));
    let ids: Vec<String> = index.iter().map(|r| text(r, "/id").to_string()).collect();
    assert_eq!(ids.len(), 20);
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        all,
        "reindex lost or duplicated runs"
    );
    let again = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&merged),
        "--dry-run",
        "--no-estimate",
    ])
    .ok();
    assert!(
        again.stdout.contains("20 done, 0 to do"),
        "{}",
        again.stdout
    );
}

/// A study kept as records alone (no weights, no runs folder) resumes: every run whose record is
/// in `records` with the planned hash is done, on a fresh output folder too.
#[test]
fn a_sweep_resumes_from_its_records_folder_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let records = tmp.path().join("committed/records");
    let toml = small(&model, "1e-3").replace(
        "name = \"e2e\"\n",
        &format!("name = \"e2e\"\nrecords = {:?}\n", s(&records)),
    );
    let cfg = tmp.path().join("study.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let first = tmp.path().join("machine-a");
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&first),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    let kept = run_names(&records);
    assert_eq!(kept.len(), 3, "{kept:?}");
    for id in &kept {
        assert!(
            records.join(id).join("record.json").exists()
                && !records.join(id).join("weights.safetensors").exists()
        );
    }
    // Another machine: no runs folder, only the records.
    let second = tmp.path().join("machine-b");
    let out = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&second),
        "--quiet",
        "--no-estimate",
    ])
    .ok()
    .stdout;
    assert!(out.contains("3 already done, 0 completed now"), "{out}");
    // A changed recipe makes the kept record of that run a changed one.
    std::fs::write(
        &cfg,
        toml.replace("lr = 1e-3\n\n[[searches]]", "lr = 2e-3\n\n[[searches]]"),
    )
    .unwrap();
    train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&second),
        "--quiet",
        "--no-estimate",
    ])
    .fails_with(&["made with a different config"]);
}

/// The command line and a sweep file are two spellings of the same options: runs made by `train`
/// and `search` with recipe and search flags are the very runs a sweep plans from the same
/// settings (same ids, same spec hashes), so a sweep whose `records` folder is the command
/// line's output finds them all done.
#[test]
fn command_line_runs_are_the_sweeps_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let cli = tmp.path().join("cli");
    let recipe = [
        "--epochs",
        "1",
        "--warmup",
        "0.1",
        "--weight-decay",
        "0.01",
        "--adam-beta2",
        "0.99",
        "--adam-eps",
        "1e-6",
        "--max-grad-norm",
        "1",
        "--bucket",
        "2",
    ];
    let common = |cmd: &'static str| {
        let mut v = vec![
            cmd,
            "--task",
            "rte",
            "--model",
            s(&model),
            "--data",
            s(glue()),
            "--out",
            s(&cli),
        ];
        v.extend(recipe);
        v.extend(TINY);
        v
    };
    let mut a = common("train");
    a.extend(["--method", "bitfit", "--lr", "2e-3", "--seed", "1"]);
    train(&a).ok();
    let mut a = common("search");
    a.extend([
        "--space",
        "bitfit",
        "--mode",
        "both",
        "--budget",
        "100,0.2k",
        "--criterion",
        "mean,random",
        "--reinit",
        "same,fresh",
        "--search-lr",
        "3e-3",
        "--seed",
        "1",
        "--tag",
        "t",
    ]);
    train(&a).ok();
    // 1 baseline + 1 maximal + 2 modes × 2 budgets × 2 criteria × 2 re-inits.
    assert_eq!(run_names(&cli).len(), 18, "{:?}", run_names(&cli));

    let body = format!(
        r#"tasks = ["rte"]
seeds = [1]
bucket = 2
records = {cli:?}

[[baselines]]
method = "bitfit"
lr = 2e-3

[[searches]]
space = "bitfit"
budgets = [100, "0.2k"]
criteria = ["mean", "random"]
reinit = ["same", "fresh"]
lr = 1e-3
search_lr = 3e-3
tag = "t"
"#,
        cli = s(&cli)
    );
    let cfg = sweep_toml(&model, &body)
        + "warmup_frac = 0.1\nweight_decay = 0.01\nadam_beta2 = 0.99\nadam_eps = 1e-6\nmax_grad_norm = 1\n";
    let path = tmp.path().join("same.toml");
    std::fs::write(&path, &cfg).unwrap();
    let dry = train(&[
        "sweep",
        "--config",
        s(&path),
        "--out",
        s(&tmp.path().join("sweep")),
        "--dry-run",
        "--no-estimate",
    ])
    .ok();
    assert!(
        dry.stdout.contains(", 18 done, 0 to do, 0 changed"),
        "{cfg}\n{}",
        dry.stdout
    );

    // And one setting apart is another run: the sweep sees every run as changed.
    std::fs::write(&path, cfg.replace("adam_eps = 1e-6", "adam_eps = 1e-7")).unwrap();
    let dry = train(&[
        "sweep",
        "--config",
        s(&path),
        "--out",
        s(&tmp.path().join("sweep")),
        "--dry-run",
        "--no-estimate",
    ])
    .ok();
    assert!(
        dry.stdout.contains(", 0 done, 18 to do, 18 changed"),
        "{}",
        dry.stdout
    );
}

/// `--jobs 2` trains two runs at once (each on one thread): the same runs as `--jobs 1`, with
/// the same records (wall times aside) and the same weights, the index and the folders complete,
/// the retrainings of a search after its maximal run. `--jobs` beyond the compute threads is
/// refused.
#[test]
fn jobs_two_makes_the_runs_of_jobs_one() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let cfg = tmp.path().join("jobs.toml");
    // A baseline and a search with four retrainings: 6 runs.
    let body = r#"tasks = ["rte"]
seeds = [0]

[[baselines]]
method = "bitfit"
lr = 1e-3

[[searches]]
space = "mam16"
budgets = [1000, 2000]
modes = ["unstructured"]
criteria = ["mean", "random"]
lr = 1e-3
"#;
    std::fs::write(&cfg, sweep_toml(&model, body)).unwrap();
    let sweep = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "--threads",
            "2",
            "sweep",
            "--config",
            s(&cfg),
            "--out",
            s(out),
        ];
        a.extend_from_slice(extra);
        train(&a)
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    sweep(&one, &["--quiet", "--no-estimate"]).ok();
    let r = sweep(&two, &["--quiet", "--no-estimate", "--jobs", "2"]).ok();
    assert!(
        r.stdout
            .contains("6 planned, 0 already done, 6 completed now, 0 failed"),
        "{}",
        r.stdout
    );
    let names = run_names(&one.join("runs"));
    assert_eq!(names.len(), 6);
    assert_eq!(run_names(&two.join("runs")), names);
    assert!(leftovers(&two.join("runs")).is_empty() && leftovers(&two).is_empty());
    assert_eq!(jsonl(&two.join("index.jsonl")).len(), 6);
    for n in &names {
        assert_same_run(&one.join("runs").join(n), &two.join("runs").join(n));
    }
    // Each pruned run started after its search's maximal run had finished.
    let created = |n: &str| {
        json(&two.join("runs").join(n).join("record.json"))["created_unix"]
            .as_u64()
            .unwrap()
    };
    for n in &names {
        if !n.contains("maximal") && n.contains("mam16") {
            assert!(created(n) >= created("rte-mam16-maximal-s0"), "{n}");
        }
    }
    sweep(&two, &["--jobs", "3"]).fails_with(&["--jobs 3: expected 1 to 2"]);
}

/// Entries whose maximal training is the same training (a tagged entry asking only for a fresh
/// re-initialisation or iterative pruning, as the ablation sweep does) share one maximal run:
/// it is planned and trained once, and the shared entries' retrainings give the bits they give
/// from a maximal run of their own. An entry whose maximal spec differs (another LR) keeps its own.
#[test]
fn entries_with_the_same_maximal_training_share_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path(), "bert");
    let entry = |extra: &str| {
        format!(
            "\n[[searches]]\nspace = \"bitfit\"\nbudgets = [100]\nmodes = [\"unstructured\"]\ncriteria = [\"mean\"]\n{extra}\n"
        )
    };
    let head = "tasks = [\"rte\"]\nseeds = [0]\n";
    let shared = format!(
        "{head}{}{}{}{}",
        entry("lr = 1e-3"),
        entry("lr = 1e-3\nreinit = [\"fresh\"]\ntag = \"fresh\""),
        entry("lr = 1e-3\nrounds = [2]\ntag = \"iter\""),
        entry("lr = 2e-3\ntag = \"lr2\""),
    );
    let alone = format!(
        "{head}{}",
        entry("lr = 1e-3\nreinit = [\"fresh\"]\ntag = \"fresh\"")
    );
    let (cfg, cfg_alone) = (
        tmp.path().join("shared.toml"),
        tmp.path().join("alone.toml"),
    );
    std::fs::write(&cfg, sweep_toml(&model, &shared)).unwrap();
    std::fs::write(&cfg_alone, sweep_toml(&model, &alone)).unwrap();
    let (out, out_alone) = (tmp.path().join("shared"), tmp.path().join("alone"));

    let dry = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--dry-run",
        "--no-estimate",
    ])
    .ok();
    assert!(
        dry.stdout
            .contains("plan: 6 runs (2 trainings of a maximal search space serve 4 pruned runs)"),
        "{}",
        dry.stdout
    );
    let r = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    assert!(
        r.stdout
            .contains("6 planned, 0 already done, 6 completed now, 0 failed"),
        "{}",
        r.stdout
    );
    let names = run_names(&out.join("runs"));
    assert_eq!(
        names,
        [
            "rte-bitfit-fresh-u100-mean-fresh-s0",
            "rte-bitfit-iter-u100-it2-mean-same-s0",
            "rte-bitfit-lr2-maximal-s0",
            "rte-bitfit-lr2-u100-mean-same-s0",
            "rte-bitfit-maximal-s0",
            "rte-bitfit-u100-mean-same-s0",
        ]
        .map(String::from)
        .to_vec()
    );
    // The fresh retraining from the shared maximal run is the one from a maximal run of its own.
    train(&[
        "sweep",
        "--config",
        s(&cfg_alone),
        "--out",
        s(&out_alone),
        "--quiet",
        "--no-estimate",
    ])
    .ok();
    assert_eq!(
        run_names(&out_alone.join("runs")),
        [
            "rte-bitfit-fresh-maximal-s0",
            "rte-bitfit-fresh-u100-mean-fresh-s0"
        ]
        .map(String::from)
        .to_vec()
    );
    assert_same_run(
        &out.join("runs/rte-bitfit-fresh-u100-mean-fresh-s0"),
        &out_alone.join("runs/rte-bitfit-fresh-u100-mean-fresh-s0"),
    );
    // Resumed, nothing is left: the shared entries' runs count as done.
    let again = train(&[
        "sweep",
        "--config",
        s(&cfg),
        "--out",
        s(&out),
        "--dry-run",
        "--no-estimate",
    ])
    .ok();
    assert!(again.stdout.contains("6 done, 0 to do"), "{}", again.stdout);
}
