//! End-to-end tests of the library on small synthetic sweeps written with `petnas_core` types.

use std::path::Path;

use petnas_analyze::aggregate::{heatmap_frame, medians, HeatValue};
use petnas_analyze::figures::{draw_figures, HEATMAP_SIZE, LINE_SIZE};
use petnas_analyze::load::{find_records, load_sweep};
use petnas_analyze::report::{claims_table, findings, write_report};
use petnas_analyze::synth::{modules, SynthRun};
use petnas_analyze::tables::build_tables;
use petnas_analyze::{AnalyzeError, Metric};
use petnas_core::{CriterionKind, ModuleType, PruneMode, RunRecord, RunStatus};

fn save(dir: &Path, r: &RunRecord) {
    r.save(&dir.join(&r.id).join("record.json")).unwrap();
}

/// Kept fraction for the fixture's searched runs: layer 0 keeps `low`, other layers `high`,
/// the embeddings LayerNorm everything.
fn keep(low: f64, high: f64) -> impl Fn(ModuleType, Option<usize>) -> f64 {
    move |_, l| match l {
        None => 1.0,
        Some(0) => low,
        Some(_) => high,
    }
}

/// Tasks rte, mrpc, cola; BitFit 3 seeds everywhere, Full FT on rte only (1 seed), S-/U-BitFit
/// at 10k on all three tasks, Random S-BitFit on rte, one failed BitFit run that carries a
/// (bogus) metric, and one search-start training.
fn fixture(dir: &Path) {
    let bitfit = [
        ("rte", [0.80, 0.90, 0.85]),
        ("mrpc", [0.70, 0.72, 0.74]),
        ("cola", [0.50, 0.40, 0.60]),
    ];
    for (task, scores) in bitfit {
        for (seed, s) in scores.into_iter().enumerate() {
            save(
                dir,
                &SynthRun::baseline(task, "bitfit", seed as u64, s, 26_500).record(),
            );
        }
    }
    save(
        dir,
        &SynthRun::baseline("rte", "full", 0, 0.75, 22_700_000).record(),
    );
    // A failed run whose metrics would drag the median down if it were used.
    let mut failed = SynthRun::baseline("rte", "bitfit", 3, 0.10, 26_500).record();
    failed.id = "rte-bitfit-failed".into();
    failed.result.status = RunStatus::Failed {
        reason: "CUDA out of memory".into(),
    };
    save(dir, &failed);
    let searched = [
        // (task, low, high, S scores, U scores)
        ("rte", 0.25, 0.5, [0.70, 0.72, 0.71], [0.74, 0.75, 0.76]),
        ("mrpc", 0.75, 0.5, [0.60, 0.61, 0.62], [0.63, 0.64, 0.59]),
        ("cola", 0.5, 0.5, [0.30, 0.32, 0.31], [0.29, 0.28, 0.27]),
    ];
    for (task, low, high, s_scores, u_scores) in searched {
        for seed in 0..3 {
            for (mode, scores) in [
                (PruneMode::Structured, s_scores),
                (PruneMode::Unstructured, u_scores),
            ] {
                let r = SynthRun::searched(
                    task,
                    "bitfit",
                    mode,
                    10_000,
                    CriterionKind::Mean,
                    seed,
                    scores[seed as usize],
                    modules(6, false, keep(low, high)),
                );
                save(dir, &r.record());
            }
        }
    }
    for seed in 0..3 {
        let r = SynthRun::searched(
            "rte",
            "bitfit",
            PruneMode::Structured,
            10_000,
            CriterionKind::Random,
            seed,
            0.60,
            modules(6, false, keep(0.1, 0.1)),
        );
        save(dir, &r.record());
    }
    let mut start = SynthRun::searched(
        "rte",
        "mam16",
        PruneMode::Structured,
        10_000,
        CriterionKind::Mean,
        0,
        0.99,
        modules(6, true, keep(1.0, 1.0)),
    );
    start.mode = None;
    start.id = "rte-mam16-start".into();
    save(dir, &start.record());
}

fn sweep() -> (tempfile::TempDir, petnas_analyze::Sweep) {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let s = load_sweep(dir.path()).unwrap();
    (dir, s)
}

#[test]
fn medians_over_seeds_and_failed_runs_excluded() {
    let (_d, s) = sweep();
    assert_eq!(s.failed.len(), 1);
    assert_eq!(s.failed[0].id, "rte-bitfit-failed");
    assert_eq!(s.failed[0].label, "BitFit");
    let med = medians(&s.runs, &Metric::Primary).unwrap();
    let t = build_tables(&s, &Metric::Primary).unwrap();
    let bitfit = t.table1.rows.iter().find(|r| r.label == "BitFit").unwrap();
    // Column order is the paper's: CoLA, MRPC, RTE.
    assert_eq!(t.table1.tasks, ["cola", "mrpc", "rte"]);
    let cells: Vec<(f64, usize)> = bitfit
        .cells
        .iter()
        .map(|c| {
            let c = c.unwrap();
            (c.median, c.n)
        })
        .collect();
    assert!((cells[2].0 - 85.0).abs() < 1e-9, "{cells:?}");
    assert_eq!(cells[2].1, 3, "the failed fourth seed must not count");
    assert!((cells[1].0 - 72.0).abs() < 1e-9);
    assert!((cells[0].0 - 50.0).abs() < 1e-9);
    assert!((bitfit.avg.unwrap() - (85.0 + 72.0 + 50.0) / 3.0).abs() < 1e-9);
    // The maximal training of the preset mam16 space (score 99) is that preset, trained with the
    // search's recipe: it shows as "MaM (r=16)", never as a searched method.
    assert!(t
        .table1
        .rows
        .iter()
        .all(|r| !r.label.contains("search start")));
    assert!(t.table1.rows.iter().any(|r| r.label == "MaM (r=16)"));
    assert!(med.height() > 0);
}

#[test]
fn table1_markdown_snapshot() {
    let (_d, s) = sweep();
    let t = build_tables(&s, &Metric::Primary).unwrap();
    let md = t.table1.markdown();
    let want = "\
**Table 1: GLUE dev scores (primary metric × 100), median over seeds**

| Method | #params | CoLA | MRPC | RTE | Avg |
|---|---:|---:|---:|---:|---:|
| Full FT | 22.7M | – | – | 75.0 (n=1) |  |
| BitFit | 26.5k | 50.0 | 72.0 | 85.0 | 69.0 |
| MaM (r=16) | 10k | – | – | 99.0 (n=1) |  |
| S-BitFit (10k) | 10k | 31.0 | 61.0 | 71.0 | 54.3 |
| U-BitFit (10k) | 10k | 28.0 | 63.0 | 75.0 | 55.3 |

Median over 1–3 seeds per cell; cells with fewer than 3 seeds show (n=…). –: no completed run.
Avg is left blank where a task is missing: Full FT, MaM (r=16).
";
    assert_eq!(md, want, "got:\n{md}");
    let t2 = t.table2.unwrap().markdown();
    assert!(
        t2.contains(
            "\n| S-BitFit | 10k | 31.0 | 61.0 | 71.0 | 54.3 |\n| Random S-BitFit | 10k | – | – | 60.0 |  |\n| U-BitFit | 10k |"
        ),
        "{t2}"
    );
}

#[test]
fn other_metric_and_csv() {
    let (d, s) = sweep();
    let t = build_tables(&s, &Metric::parse("f1").unwrap()).unwrap();
    // Only accuracy tasks carry f1 (accuracy - 0.02): CoLA disappears.
    assert_eq!(t.table1.tasks, ["mrpc", "rte"]);
    let bitfit = t.table1.rows.iter().find(|r| r.label == "BitFit").unwrap();
    assert!((bitfit.cells[1].unwrap().median - 83.0).abs() < 1e-9);
    assert!(Metric::parse("bleu").is_err());
    let out = d.path().join("out");
    t.write(&out).unwrap();
    let csv = std::fs::read_to_string(out.join("table1.csv")).unwrap();
    assert!(
        csv.starts_with("method,label,budget,params,mrpc,mrpc_n,"),
        "{csv}"
    );
    assert!(csv.contains("\nBitFit,BitFit,,26500,"), "{csv}");
    assert!(out.join("tables.md").is_file() && out.join("table2.csv").is_file());
}

#[test]
fn heatmap_frame_values() {
    let (_d, s) = sweep();
    let hm = heatmap_frame(
        &s.modules,
        "S-BitFit",
        Some(10_000),
        HeatValue::BiasFraction,
    )
    .unwrap();
    let types = petnas_analyze::aggregate::str_values(&hm, "module_type").unwrap();
    let layers = petnas_analyze::aggregate::i64_values(&hm, "layer").unwrap();
    let values = petnas_analyze::aggregate::f64_values(&hm, "value").unwrap();
    let get = |t: &str, l: Option<i64>| {
        (0..hm.height())
            .find(|&i| types[i].as_deref() == Some(t) && layers[i] == l)
            .and_then(|i| values[i])
            .unwrap()
    };
    // Layer 0: rte keeps 0.25, mrpc 0.75, cola 0.5 -> 0.5; other layers 0.5; embeddings 1.
    assert!((get("query", Some(0)) - 0.5).abs() < 1e-9);
    assert!((get("intermediate", Some(3)) - 0.5).abs() < 1e-9);
    assert!((get("embeddings_layer_norm", None) - 1.0).abs() < 1e-9);
    assert_eq!(hm.height(), 1 + 8 * 6);
    // The random baseline keeps 10% everywhere (floor(0.1 * 384) / 384).
    let r = heatmap_frame(&s.modules, "Random S-BitFit", None, HeatValue::BiasFraction).unwrap();
    let v = petnas_analyze::aggregate::f64_values(&r, "value").unwrap();
    let q = (0.1f64 * 384.0).floor() / 384.0;
    assert!(v.iter().flatten().any(|x| (x - q).abs() < 1e-12));
}

fn png_size(p: &Path) -> (u32, u32, u64) {
    let bytes = std::fs::read(p).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        p.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h, bytes.len() as u64)
}

#[test]
fn figures_are_drawn_or_skipped() {
    let (d, s) = sweep();
    let out = d.path().join("figs");
    let set = draw_figures(&s, &out, &[], &Metric::Primary).unwrap();
    let stems: Vec<&str> = set.figures.iter().map(|f| f.stem.as_str()).collect();
    for want in [
        "bias_heatmap_structured",
        "bias_heatmap_unstructured",
        "score_vs_budget_cola",
        "score_vs_budget_mrpc",
        "score_vs_budget_rte",
        "layer_profile",
    ] {
        assert!(stems.contains(&want), "{want} missing from {stems:?}");
    }
    // No MaM runs: the LoRA maps are skipped, not drawn empty.
    assert!(!stems.iter().any(|s| s.starts_with("lora_")));
    assert!(
        set.skipped
            .iter()
            .any(|s| s.starts_with("lora_rank_heatmap")),
        "{:?}",
        set.skipped
    );
    for f in &set.figures {
        let (w, h, len) = png_size(&f.png);
        let want = if f.stem.contains("heatmap") {
            HEATMAP_SIZE
        } else {
            LINE_SIZE
        };
        assert_eq!((w, h), want, "{}", f.stem);
        assert!(len > 5_000, "{} is only {len} bytes", f.stem);
        let svg = std::fs::read_to_string(&f.svg).unwrap();
        assert!(svg.starts_with("<svg") && svg.len() > 5_000, "{}", f.stem);
    }
    let heat = std::fs::read_to_string(out.join("bias_heatmap_structured.svg")).unwrap();
    assert!(heat.contains("attention.layernorm") && heat.contains("emb"));
}

#[test]
fn report_has_tables_figures_findings_and_provenance() {
    let (d, s) = sweep();
    let out = d.path().join("reports/test");
    let r = write_report(&s, &out, &Metric::Primary, &[]).unwrap();
    let md = std::fs::read_to_string(&r.readme).unwrap();
    assert!(
        md.contains("| Method | #params | CoLA | MRPC | RTE | Avg |"),
        "{md}"
    );
    assert!(md.contains("![") && md.contains("(figures/bias_heatmap_structured.png)"));
    assert!(out.join("figures/bias_heatmap_structured.png").is_file());
    assert!(
        md.contains("U-BitFit beats S-BitFit at budget 10k on 2 of 3 tasks"),
        "{md}"
    );
    assert!(
        md.contains("; paired by task and seed: ") && md.contains(" losses of "),
        "{md}"
    );
    assert!(
        md.contains(
            "S-BitFit beats Random S-BitFit (search beats random) at budget 10k on 1 of 1 tasks"
        ),
        "{md}"
    );
    assert!(md.contains("rte-bitfit-failed") && md.contains("CUDA out of memory"));
    assert!(md.contains("models/all-MiniLM-L6-v2") && md.contains("`0123abc`"));
    for f in ["runs", "modules", "medians"] {
        assert!(out.join(format!("data/{f}.parquet")).is_file());
        assert!(out.join(format!("data/{f}.csv")).is_file());
    }
    let f = findings(&s, &Metric::Primary, &[]).unwrap();
    // Layers 1..5 keep 0.5, layer 0 keeps 0.5 on average: no middle preference in the fixture.
    assert!(
        f.iter()
            .any(|x| x.starts_with("S-BitFit (budget 10k): middle layers 2–3 keep 50.0%")),
        "{f:?}"
    );
}

#[test]
fn discovery_depth_hidden_dirs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let r = SynthRun::baseline("rte", "bitfit", 0, 0.8, 1000).record();
    for sub in ["a", "b/c/d", "x/y/z/w", ".partial-1", "e/.partial-2"] {
        let mut r = r.clone();
        r.id = sub.replace('/', "-");
        r.save(&dir.path().join(sub).join("record.json")).unwrap();
    }
    let found = find_records(dir.path()).unwrap();
    let rel: Vec<String> = found
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(rel, ["a/record.json", "b/c/d/record.json"]);
    // A run directory itself is a sweep of one.
    assert_eq!(find_records(&dir.path().join("a")).unwrap().len(), 1);

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_sweep(empty.path()),
        Err(AnalyzeError::NoRecords { .. })
    ));
    let missing = empty.path().join("nope");
    let e = load_sweep(&missing).unwrap_err();
    assert!(matches!(e, AnalyzeError::NoRunsDir { .. }));
    assert!(e.to_string().contains("nope"));

    std::fs::create_dir_all(dir.path().join("bad")).unwrap();
    std::fs::write(
        dir.path().join("bad/record.json"),
        "{\n  \"version\": 1,\n  \"id\": }",
    )
    .unwrap();
    // One damaged record is skipped and named; the others are still read.
    let sw = load_sweep(dir.path()).unwrap();
    assert_eq!((sw.records, sw.unreadable.len()), (2, 1));
    let (p, e) = &sw.unreadable[0];
    assert!(
        p.ends_with("bad/record.json") && e.contains("bad/record.json") && e.contains("line 3"),
        "{e}"
    );

    let mut v = serde_json::to_value(&r).unwrap();
    v["version"] = 99.into();
    std::fs::write(dir.path().join("bad/record.json"), v.to_string()).unwrap();
    let sw = load_sweep(dir.path()).unwrap();
    assert!(
        sw.unreadable[0].1.contains("bad/record.json") && sw.unreadable[0].1.contains("version 99"),
        "{:?}",
        sw.unreadable
    );

    // A folder whose only records are damaged is an error naming the first.
    let only_bad = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(only_bad.path().join("x")).unwrap();
    std::fs::write(only_bad.path().join("x/record.json"), "{").unwrap();
    let e = load_sweep(only_bad.path()).unwrap_err().to_string();
    assert!(
        e.contains("none of the 1 run record(s) could be read") && e.contains("x/record.json"),
        "{e}"
    );
}

#[test]
fn bench_runs_on_a_small_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let t = petnas_analyze::bench::bench(dir.path(), 224).unwrap();
    assert_eq!(t.records, 224);
    assert!(t.module_rows > 1_000, "{t:?}");
    let s = load_sweep(dir.path()).unwrap();
    let tables = build_tables(&s, &Metric::Primary).unwrap();
    assert!(tables.table1.rows.iter().any(|r| r.label == "S-MaM"));
    assert!(tables
        .table2
        .unwrap()
        .rows
        .iter()
        .any(|r| r.label == "Random U-MaM"));
}

#[test]
fn binary_tables_and_report() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let exe = env!("CARGO_BIN_EXE_petnas-analyze");
    let out = std::process::Command::new(exe)
        .args(["tables", "--runs"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("| BitFit | 26.5k | 50.0 | 72.0 | 85.0 | 69.0 |"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rte-bitfit-failed"));
    let bad = std::process::Command::new(exe)
        .args(["tables", "--runs", "/nonexistent/runs"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/runs"));
}

/// Runs of one method at several LRs (an LR search) are separate rows, not seeds of one median;
/// a recipe that differs only between tasks (epochs per task) splits nothing.
#[test]
fn lr_search_runs_are_separate_methods() {
    let dir = tempfile::tempdir().unwrap();
    for (task, epochs) in [("rte", 3.0), ("mrpc", 1.0)] {
        for (lr, score) in [(1e-3, 0.60), (3e-3, 0.70), (1e-2, 0.50)] {
            let mut r = SynthRun::baseline(task, "bitfit", 0, score, 25_728).record();
            r.id = format!("{task}-bitfit-lr{lr:e}-s0");
            r.spec.recipe.lr = lr;
            r.spec.recipe.epochs = epochs;
            save(dir.path(), &r);
        }
        let mut full = SynthRun::baseline(task, "full", 0, 0.8, 22_700_000).record();
        full.spec.recipe.epochs = epochs;
        save(dir.path(), &full);
    }
    let sw = load_sweep(dir.path()).unwrap();
    let t = build_tables(&sw, &Metric::Primary).unwrap();
    let md = t.table1.markdown();
    for (label, score) in [
        ("BitFit [lr=1e-3]", "60.0"),
        ("BitFit [lr=3e-3]", "70.0"),
        ("BitFit [lr=1e-2]", "50.0"),
    ] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no row {label}:\n{md}"));
        assert!(row.contains(&format!("| {score} | {score} |")), "{row}");
    }
    assert!(
        md.lines().any(|l| l.starts_with("| Full FT |")),
        "epochs differing by task must not split Full FT:\n{md}"
    );
    assert!(!md.contains("| BitFit |"), "{md}");
}

#[test]
fn a_search_start_beside_its_baseline_is_not_a_second_seed() {
    // A BitFit baseline and a bitfit search's maximal training of the same task and seed are
    // both BitFit trainings: the median of one seed must not count it twice.
    let dir = tempfile::tempdir().unwrap();
    let base = SynthRun::baseline("rte", "bitfit", 0, 0.70, 25_728).record();
    save(dir.path(), &base);
    let mut start = SynthRun::baseline("rte", "bitfit", 0, 0.50, 25_728).record();
    start.id = "rte-bitfit-maximal-s0".into();
    start.spec.method = "search".into();
    start.spec.space = Some("bitfit".into());
    save(dir.path(), &start);
    // Another task with only the search's maximal run: there it stands in for BitFit.
    let mut alone = SynthRun::baseline("mrpc", "bitfit", 0, 0.80, 25_728).record();
    alone.id = "mrpc-bitfit-maximal-s0".into();
    alone.spec.method = "search".into();
    alone.spec.space = Some("bitfit".into());
    save(dir.path(), &alone);
    let sw = load_sweep(dir.path()).unwrap();
    let t = build_tables(&sw, &Metric::Primary).unwrap();
    let md = t.table1.markdown();
    let row = md
        .lines()
        .find(|l| l.starts_with("| BitFit |"))
        .unwrap_or_else(|| panic!("no BitFit row:\n{md}"));
    assert!(
        row.contains("| 70.0 |"),
        "RTE BitFit must be the baseline's 70.0 alone, not a median with 50.0: {row}"
    );
    assert!(!row.contains("60.0"), "{row}");
    assert!(
        row.contains("| 80.0 |"),
        "MRPC's lone search start stands in for BitFit: {row}"
    );
}

/// `--budget` takes the sweep configs' spelling (`5k` is `5000`; a bad value names itself), and
/// repeated, each method shows the first budget it has runs at.
#[test]
fn budget_flag_takes_the_sweep_spelling_and_a_list() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let exe = env!("CARGO_BIN_EXE_petnas-analyze");
    let report = |budgets: &[&str], out: &Path| {
        let mut c = std::process::Command::new(exe);
        c.args(["report", "--runs"])
            .arg(dir.path())
            .arg("--out")
            .arg(out);
        for b in budgets {
            c.args(["--budget", b]);
        }
        c.output().unwrap()
    };
    // Output folders of one name, so that the reports' titles agree.
    let text = |budgets: &[&str], case: &str| {
        let out = dir.path().join(case).join("rep");
        let o = report(budgets, &out);
        assert!(
            o.status.success(),
            "--budget {budgets:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // The fixture has no S-/U-MaM runs: their skip notes name the first budget asked for.
        std::fs::read_to_string(out.join("README.md"))
            .unwrap()
            .replace(out.to_str().unwrap(), "OUT")
            .lines()
            .filter(|l| !l.contains("MaM runs at budget"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The fixture's searched runs are all at 10,000.
    let ten_k = text(&["10k"], "a");
    assert_eq!(ten_k, text(&["10000"], "b"));
    assert_eq!(
        ten_k,
        text(&["5k", "10k"], "c"),
        "a method takes the first budget it has runs at"
    );
    let five_k = text(&["5k"], "d");
    assert_ne!(ten_k, five_k);
    assert!(
        !five_k.contains("bias_heatmap_structured.png"),
        "no S-BitFit runs at 5k: skipped"
    );
    assert!(ten_k.contains("bias_heatmap_structured.png"));
    let bad = report(&["5kk"], &dir.path().join("e"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("5kk"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// A searched MaM is held against the MaM baselines (rank 8 and the rank-16 space it prunes),
/// paired by seed; a pruned BitFit against BitFit only.
#[test]
fn searched_mam_is_compared_with_the_mam_baselines() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..3u64 {
        let s = seed as f64;
        for (method, score, n) in [
            ("bitfit", 0.80, 25_728),
            ("mam", 0.81, 283_776),
            ("mam16", 0.79 + s / 100.0, 541_824),
        ] {
            save(
                dir.path(),
                &SynthRun::baseline("mrpc", method, seed, score, n).record(),
            );
        }
        let u = SynthRun::searched(
            "mrpc",
            "mam16",
            PruneMode::Unstructured,
            270_912,
            CriterionKind::Mean,
            seed,
            0.805,
            vec![],
        );
        save(dir.path(), &u.record());
    }
    let s = load_sweep(dir.path()).unwrap();
    let f = findings(&s, &Metric::Primary, &[]).unwrap();
    let has = |p: &str| f.iter().any(|x| x.starts_with(p));
    assert!(
        has("U-MaM at budget 271k beats MaM on 0 of 1 tasks (mean difference -0.5 points; paired by task and seed: 0 wins, 0 ties, 3 losses of 3"),
        "{f:?}"
    );
    // Rank 16 scores 79, 80, 81 over the seeds: U-MaM's 80.5 wins twice.
    assert!(
        has("U-MaM at budget 271k beats MaM (r=16) on 1 of 1 tasks (mean difference +0.5 points; paired by task and seed: 2 wins, 0 ties, 1 losses of 3"),
        "{f:?}"
    );
    assert!(
        !f.iter()
            .any(|x| x.contains("U-MaM at budget 271k beats BitFit")),
        "{f:?}"
    );
    // The same comparisons as rows of the claims table; the differences are +1.5, +0.5, -0.5
    // against rank 16 and -0.5 three times against rank 8.
    let t = claims_table(&s, &Metric::Primary).unwrap();
    assert!(
        t.contains("| a search at half of rank-16 MaM keeps MaM's score | U-MaM vs MaM (r=16) | 271k | 2/0/1 of 3 | +0.5 [±0.0, +1.0] | 1 of 1 |"),
        "{t}"
    );
    assert!(
        t.contains("| U-MaM vs MaM | 271k | 0/0/3 of 3 | -0.5 [-0.5, -0.5] | 0 of 1 |"),
        "{t}"
    );
    assert_eq!(t.lines().count(), 4, "{t}");
}

/// An ablation (here the last-step criterion) is held against the paper's setting of the same
/// search, paired by seed, in the claims table.
#[test]
fn ablations_are_compared_with_the_papers_setting() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..3u64 {
        for (criterion, score) in [
            (CriterionKind::Mean, 0.76),
            (CriterionKind::Last, 0.75 + seed as f64 / 100.0),
        ] {
            let r = SynthRun::searched(
                "mrpc",
                "bitfit",
                PruneMode::Unstructured,
                5_000,
                criterion,
                seed,
                score,
                vec![],
            );
            save(dir.path(), &r.record());
        }
    }
    let s = load_sweep(dir.path()).unwrap();
    // Differences of the mean against last: +1, 0, -1 points.
    let t = claims_table(&s, &Metric::Primary).unwrap();
    assert!(
        t.contains("| the paper's search setting beats its ablation | U-BitFit vs U-BitFit [last] | 5k | 1/1/1 of 3 | ±0.0 [-0.5, +0.5] | 0 of 1 |"),
        "{t}"
    );
    assert_eq!(t.lines().count(), 3, "{t}");
}
