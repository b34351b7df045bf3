//! The sweep report: tables, figures, provenance and findings computed from the data, in one
//! `README.md` (Lawton et al., 2023, Section 4 is the model for what a reader needs to judge a
//! result: medians over seeds, parameter counts, where the search puts its parameters).
//!
//! Also the export of the aggregated frames (parquet + CSV) for notebooks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::aggregate::{
    chosen_budget, f64_values, i64_values, labels_in_group, layer_profile, medians, scored_runs,
    str_values, Metric,
};
use crate::error::{AnalyzeError, Result};
use crate::figures::{draw_figures, FigureSet};
use crate::load::Sweep;
use crate::tables::{build_tables, humanize, task_display, task_order, Tables};

/// `(label, budget, task) → median score`.
type MedianMap = BTreeMap<(String, Option<i64>, String), f64>;

fn median_map(med: &DataFrame) -> Result<MedianMap> {
    let labels = str_values(med, "label")?;
    let budgets = i64_values(med, "budget")?;
    let tasks = str_values(med, "task")?;
    let m = f64_values(med, "median")?;
    let mut out = BTreeMap::new();
    for i in 0..med.height() {
        if let (Some(l), Some(t), Some(v)) = (&labels[i], &tasks[i], m[i]) {
            out.insert((l.clone(), budgets[i], t.clone()), v);
        }
    }
    Ok(out)
}

/// Compares two labels task by task at each budget both have: `(budget, wins of a, tasks,
/// mean difference a − b)`. A budget of None on `b` (a baseline) matches every budget of `a`.
fn compare(map: &MedianMap, a: &str, b: &str) -> Vec<(Option<i64>, usize, usize, f64)> {
    let budgets_a: BTreeSet<Option<i64>> = map.keys().filter(|k| k.0 == a).map(|k| k.1).collect();
    let mut out = Vec::new();
    for ba in budgets_a {
        let mut wins = 0;
        let mut n = 0;
        let mut diff = 0.0;
        for ((l, bb, t), va) in map.iter() {
            if l != a || *bb != ba {
                continue;
            }
            let other = map
                .get(&(b.to_string(), ba, t.clone()))
                .or_else(|| map.get(&(b.to_string(), None, t.clone())));
            if let Some(vb) = other {
                n += 1;
                diff += va - vb;
                if va > vb {
                    wins += 1;
                }
            }
        }
        if n > 0 {
            out.push((ba, wins, n, diff / n as f64));
        }
    }
    out
}

/// `(label, budget, task, seed) → score`, for comparisons paired by task and seed.
type SeedMap = BTreeMap<(String, Option<i64>, String, i64), f64>;

fn seed_map(sweep: &Sweep, metric: &Metric) -> Result<SeedMap> {
    let df = scored_runs(&sweep.runs, metric)
        .collect()
        .map_err(AnalyzeError::polars("scoring runs"))?;
    let (l, b, t, s, v) = (
        str_values(&df, "label")?,
        i64_values(&df, "budget")?,
        str_values(&df, "task")?,
        i64_values(&df, "seed")?,
        f64_values(&df, "score")?,
    );
    let mut out = BTreeMap::new();
    for i in 0..df.height() {
        if let (Some(l), Some(t), Some(s), Some(v)) = (&l[i], &t[i], s[i], v[i]) {
            out.insert((l.clone(), b[i], t.clone(), s), v);
        }
    }
    Ok(out)
}

/// The linear-interpolation quantile `q` of sorted values (numpy's default).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// `a` against `b` at one budget over the task-seed pairs both have: the counts and the
/// quartiles of the differences `a − b`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Paired {
    pub n: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
}

/// `a` against `b` at `budget`, paired by task and seed (a baseline `b` without a budget pairs
/// with every budget of `a`); None when no pair exists.
fn paired(seeds: &SeedMap, a: &str, b: &str, budget: Option<i64>) -> Option<Paired> {
    let mut d: Vec<f64> = seeds
        .iter()
        .filter(|((l, bb, _, _), _)| l == a && *bb == budget)
        .filter_map(|((_, _, t, s), va)| {
            seeds
                .get(&(b.to_string(), budget, t.clone(), *s))
                .or_else(|| seeds.get(&(b.to_string(), None, t.clone(), *s)))
                .map(|vb| va - vb)
        })
        .collect();
    if d.is_empty() {
        return None;
    }
    d.sort_by(f64::total_cmp);
    let ties = d.iter().filter(|x| x.abs() < 1e-9).count();
    let wins = d.iter().filter(|x| **x >= 1e-9).count();
    Some(Paired {
        n: d.len(),
        wins,
        ties,
        losses: d.len() - wins - ties,
        median: quantile(&d, 0.5),
        q1: quantile(&d, 0.25),
        q3: quantile(&d, 0.75),
    })
}

/// ", paired by task and seed: W wins, T ties, L losses of N, median difference ±d (IQR lo to
/// hi)", or nothing when no pair exists.
fn paired_text(seeds: &SeedMap, a: &str, b: &str, budget: Option<i64>) -> String {
    match paired(seeds, a, b, budget) {
        None => String::new(),
        Some(p) => format!(
            "; paired by task and seed: {} wins, {} ties, {} losses of {}, median difference {} (IQR {} to {})",
            p.wins,
            p.ties,
            p.losses,
            p.n,
            fmt_diff(p.median),
            fmt_diff(p.q1),
            fmt_diff(p.q3),
        ),
    }
}

/// The comparisons behind the paper's claims, in the order a reader checks them: `(claim, a,
/// b)` for the labels present. A searched label is held against its random control, the
/// structured search against the unstructured one, a searched MaM against MaM at rank 8 and the
/// rank-16 MaM it prunes, a pruned BitFit against BitFit, and the paper's search setting
/// against each of its ablations (`ablations`: labels of runs flagged as ablations, e.g.
/// `U-BitFit [last]`, held against the label without its suffixes).
fn claim_pairs(searched: &[String], ablations: &[String]) -> Vec<(&'static str, String, String)> {
    let has = |l: &str| searched.iter().any(|x| x == l);
    let mut out = Vec::new();
    for l in searched {
        let random = format!("Random {l}");
        if !l.starts_with("Random ") && !l.contains(" [") && has(&random) {
            out.push((
                "a searched architecture beats a random one of its size",
                l.clone(),
                random,
            ));
        }
    }
    for (s, u) in [("S-BitFit", "U-BitFit"), ("S-MaM", "U-MaM")] {
        if has(s) && has(u) {
            out.push((
                "unstructured pruning beats structured",
                u.to_string(),
                s.to_string(),
            ));
        }
    }
    for l in ["S-MaM", "U-MaM"] {
        if has(l) {
            for base in ["MaM", "MaM (r=16)"] {
                out.push((
                    "a search at half of rank-16 MaM keeps MaM's score",
                    l.to_string(),
                    base.to_string(),
                ));
            }
        }
    }
    for l in ["S-BitFit", "U-BitFit"] {
        if has(l) {
            out.push((
                "a pruned BitFit approaches BitFit",
                l.to_string(),
                "BitFit".to_string(),
            ));
        }
    }
    for l in ablations {
        let base = l.split(" [").next().unwrap_or(l);
        if !l.starts_with("Random ") && has(base) {
            out.push((
                "the paper's search setting beats its ablation",
                base.to_string(),
                l.clone(),
            ));
        }
    }
    out
}

/// The paper's claims as one markdown table, each comparison paired by task and seed at each
/// budget: wins/ties/losses over the pairs, the median difference with its IQR, and on how many
/// tasks the median over seeds is higher. Empty when the sweep has none of the runs a claim
/// needs.
pub fn claims_table(sweep: &Sweep, metric: &Metric) -> Result<String> {
    let med = medians(&sweep.runs, metric)?;
    let map = median_map(&med)?;
    let seeds = seed_map(sweep, metric)?;
    let searched = labels_in_group(&sweep.runs, "searched")?;
    let ablations = ablation_labels(&sweep.runs)?;
    let mut rows = Vec::new();
    for (claim, a, b) in claim_pairs(&searched, &ablations) {
        for (budget, task_wins, tasks, _) in compare(&map, &a, &b) {
            if budget.is_none() {
                continue;
            }
            if let Some(p) = paired(&seeds, &a, &b, budget) {
                rows.push(format!(
                    "| {claim} | {a} vs {b} | {} | {}/{}/{} of {} | {} [{}, {}] | {task_wins} of {tasks} |",
                    humanize(budget.unwrap_or(0) as f64),
                    p.wins,
                    p.ties,
                    p.losses,
                    p.n,
                    fmt_diff(p.median),
                    fmt_diff(p.q1),
                    fmt_diff(p.q3),
                ));
            }
        }
    }
    if rows.is_empty() {
        return Ok(String::new());
    }
    let mut s = String::from(
        "| the paper's claim | comparison | budget | wins/ties/losses (task-seed pairs) | median difference [IQR], points | tasks with the higher median |\n|---|---|---:|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&r);
        s.push('\n');
    }
    Ok(s)
}

/// Labels of the completed runs flagged as ablations (another criterion than mean or random,
/// another re-init, LoRA init or number of pruning rounds), in table order.
fn ablation_labels(runs: &DataFrame) -> Result<Vec<String>> {
    crate::aggregate::completed_labels(runs, col("ablation"), "listing ablation labels")
}

fn budget_text(b: Option<i64>) -> String {
    b.map(|b| format!("budget {}", humanize(b as f64)))
        .unwrap_or_else(|| "no budget".to_string())
}

/// A score difference with its sign, `±0.0` when it rounds to zero.
fn fmt_diff(d: f64) -> String {
    if d.abs() < 0.05 {
        "±0.0".to_string()
    } else {
        format!("{d:+.1}")
    }
}

fn fmt_layers(ls: &[i64]) -> String {
    match (ls.first(), ls.last()) {
        (Some(a), Some(b)) if a == b => format!("layer {a}"),
        (Some(a), Some(b)) => format!("layers {a}–{b}"),
        _ => "no layers".to_string(),
    }
}

/// Findings computed from the data, one sentence each, with the numbers behind them.
pub fn findings(sweep: &Sweep, metric: &Metric, budgets: &[i64]) -> Result<Vec<String>> {
    let med = medians(&sweep.runs, metric)?;
    let map = median_map(&med)?;
    let seeds = seed_map(sweep, metric)?;
    let mut out = Vec::new();
    // Unstructured vs structured (the paper: unstructured pruning is the stronger of the two).
    for (s, u) in [("S-BitFit", "U-BitFit"), ("S-MaM", "U-MaM")] {
        for (b, wins, n, diff) in compare(&map, u, s) {
            if b.is_none() {
                continue;
            }
            out.push(format!(
                "{u} beats {s} at {} on {wins} of {n} tasks (mean difference {} points{}).",
                budget_text(b),
                fmt_diff(diff),
                paired_text(&seeds, u, s, b)
            ));
        }
    }
    // Search vs random pruning at the same budget.
    for label in labels_in_group(&sweep.runs, "searched")? {
        if label.starts_with("Random ") || label.contains(" [") {
            continue;
        }
        let random = format!("Random {label}");
        for (b, wins, n, diff) in compare(&map, &label, &random) {
            if b.is_none() {
                continue;
            }
            out.push(format!(
                "{label} beats {random} (search beats random) at {} on {wins} of {n} tasks (mean difference {} points{}).",
                budget_text(b),
                fmt_diff(diff),
                paired_text(&seeds, &label, &random, b)
            ));
        }
        // Searched vs the baselines of its family: a pruned BitFit against BitFit, a searched MaM
        // against MaM at rank 8 and the rank-16 MaM it prunes (the paper: a search at half of
        // MaM's parameters keeps MaM's score).
        let bases: &[&str] = if label.contains("MaM") {
            &["MaM", "MaM (r=16)"]
        } else {
            &["BitFit"]
        };
        for base in bases {
            for (b, wins, n, diff) in compare(&map, &label, base) {
                out.push(format!(
                    "{label} at {} beats {base} on {wins} of {n} tasks (mean difference {} points{}).",
                    budget_text(b),
                    fmt_diff(diff),
                    paired_text(&seeds, &label, base, b)
                ));
            }
        }
    }
    // Layer preference (the paper: the search keeps middle layers more than the first/last).
    for label in labels_in_group(&sweep.runs, "searched")? {
        if label.contains(" [") {
            continue;
        }
        let b = chosen_budget(&sweep.runs, &label, budgets)?;
        let prof = layer_profile(&sweep.modules, &label, b)?;
        let layers: Vec<i64> = i64_values(&prof, "layer")?.into_iter().flatten().collect();
        let values: Vec<f64> = f64_values(&prof, "value")?.into_iter().flatten().collect();
        let l = layers.len();
        if l < 3 || values.len() != l {
            continue;
        }
        let (a, c) = (l / 3, l - l / 3);
        let mean =
            |r: std::ops::Range<usize>| values[r.clone()].iter().sum::<f64>() / r.len() as f64;
        let (first, middle, last) = (mean(0..a), mean(a..c), mean(c..l));
        let verdict = if middle > first && middle > last {
            "middle layers are preferred"
        } else {
            "middle layers are not preferred"
        };
        out.push(format!(
            "{label} ({}): middle {} keep {:.1}% of PET entries vs {:.1}% for the first ({}) and {:.1}% for the last ({}): {verdict}.",
            budget_text(b),
            fmt_layers(&layers[a..c]),
            100.0 * middle,
            100.0 * first,
            fmt_layers(&layers[..a]),
            100.0 * last,
            fmt_layers(&layers[c..]),
        ));
    }
    Ok(out)
}

/// Run provenance as markdown: models, recipes per method, seeds, commits, wall time, failures.
pub fn provenance(sweep: &Sweep) -> Result<String> {
    let runs = &sweep.runs;
    let mut s = String::new();
    let total = runs.height();
    let status = str_values(runs, "status")?;
    let groups = str_values(runs, "group")?;
    let completed = status
        .iter()
        .filter(|x| x.as_deref() == Some("completed"))
        .count();
    let starts = groups
        .iter()
        .filter(|x| x.as_deref() == Some("search_start"))
        .count();
    let distinct = |name: &str| -> Result<Vec<String>> {
        let v: BTreeSet<String> = str_values(runs, name)?.into_iter().flatten().collect();
        Ok(v.into_iter().collect())
    };
    let seeds: BTreeSet<i64> = i64_values(runs, "seed")?.into_iter().flatten().collect();
    let wall: f64 = f64_values(runs, "wall_seconds")?
        .into_iter()
        .flatten()
        .sum();
    let _ = writeln!(s, "- Runs: {total} ({completed} completed, {} failed; {starts} search-start trainings, not in the tables)", sweep.failed.len());
    let _ = writeln!(s, "- Runs directory: `{}`", sweep.dir.display());
    let _ = writeln!(
        s,
        "- Models: {}",
        distinct("model")?
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- Seeds: {}",
        seeds
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let commits = distinct("git_commit")?;
    let _ = writeln!(
        s,
        "- Git commits: {}",
        if commits.is_empty() {
            "unknown".to_string()
        } else {
            commits
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(s, "- Devices: {}", distinct("device")?.join(", "));
    let _ = writeln!(s, "- Total wall time: {:.2} h ({wall:.0} s)", wall / 3600.0);
    s.push_str("\nRecipes (per method):\n\n| Method | epochs | lr | batch | max_len | runs |\n|---|---:|---:|---:|---:|---:|\n");
    let rec = runs
        .clone()
        .lazy()
        .group_by([
            col("label"),
            col("epochs"),
            col("lr"),
            col("batch_size"),
            col("max_len"),
        ])
        .agg([len().cast(DataType::Int64).alias("n")])
        .collect()
        .map_err(AnalyzeError::polars("summarising recipes"))?;
    let (l, e, lr, b, ml, n) = (
        str_values(&rec, "label")?,
        f64_values(&rec, "epochs")?,
        f64_values(&rec, "lr")?,
        i64_values(&rec, "batch_size")?,
        i64_values(&rec, "max_len")?,
        i64_values(&rec, "n")?,
    );
    let mut rows: Vec<usize> = (0..rec.height()).collect();
    rows.sort_by(|&i, &j| {
        let li = l[i].clone().unwrap_or_default();
        let lj = l[j].clone().unwrap_or_default();
        crate::label::label_order(&li)
            .cmp(&crate::label::label_order(&lj))
            .then(e[i].partial_cmp(&e[j]).unwrap_or(std::cmp::Ordering::Equal))
    });
    for i in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            l[i].clone().unwrap_or_default(),
            e[i].map(|v| format!("{v}")).unwrap_or_default(),
            lr[i].map(|v| format!("{v:e}")).unwrap_or_default(),
            b[i].map(|v| v.to_string()).unwrap_or_default(),
            ml[i].map(|v| v.to_string()).unwrap_or_default(),
            n[i].unwrap_or(0)
        );
    }
    if !sweep.failed.is_empty() {
        s.push_str("\nFailed runs (excluded from every score):\n\n");
        for f in &sweep.failed {
            let _ = writeln!(
                s,
                "- `{}` ({}, {}): {}",
                f.id,
                task_display(&f.task),
                f.label,
                f.reason.lines().next().unwrap_or("")
            );
        }
    }
    Ok(s)
}

/// Writes the aggregated frames (`runs`, `modules`, `medians`) as parquet and CSV into `out`;
/// returns the files written.
pub fn export(sweep: &Sweep, out: &Path, metric: &Metric) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| AnalyzeError::io(out, e))?;
    let mut med = medians(&sweep.runs, metric)?;
    let mut runs = sweep.runs.clone();
    let mut modules = sweep.modules.clone();
    let mut written = Vec::new();
    for (name, df) in [
        ("runs", &mut runs),
        ("modules", &mut modules),
        ("medians", &mut med),
    ] {
        let pq = out.join(format!("{name}.parquet"));
        let f = File::create(&pq).map_err(|e| AnalyzeError::io(&pq, e))?;
        ParquetWriter::new(f)
            .finish(df)
            .map_err(AnalyzeError::polars(format!("writing {}", pq.display())))?;
        written.push(pq);
        let csv = out.join(format!("{name}.csv"));
        let mut f = File::create(&csv).map_err(|e| AnalyzeError::io(&csv, e))?;
        CsvWriter::new(&mut f)
            .finish(df)
            .map_err(AnalyzeError::polars(format!("writing {}", csv.display())))?;
        written.push(csv);
    }
    Ok(written)
}

/// What [`write_report`] produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// The README path.
    pub readme: PathBuf,
    /// The tables.
    pub tables: Tables,
    /// Figures written and skipped.
    pub figures: FigureSet,
    /// The findings.
    pub findings: Vec<String>,
}

/// Writes `<out>/README.md`, `<out>/figures/*`, `<out>/tables.md`, `table1.csv`,
/// `table2.csv`, `search_cost.csv` (when the sweep has a search with its maximal training) and
/// `<out>/data/*` (the export).
pub fn write_report(sweep: &Sweep, out: &Path, metric: &Metric, budgets: &[i64]) -> Result<Report> {
    std::fs::create_dir_all(out).map_err(|e| AnalyzeError::io(out, e))?;
    let tables = build_tables(sweep, metric)?;
    tables.write(out)?;
    let fig_dir = out.join("figures");
    let figures = draw_figures(sweep, &fig_dir, budgets, metric)?;
    export(sweep, &out.join("data"), metric)?;
    let found = findings(sweep, metric, budgets)?;

    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let mut s = format!("# petnas report: {name}\n\n");
    s.push_str(
        "Neural architecture search for parameter-efficient fine-tuning (Lawton et al., 2023): ",
    );
    s.push_str("scores are GLUE dev-set metrics × 100, medians over seeds. Generated by `petnas-analyze report`.\n\n");
    s.push_str("## Findings\n\n");
    let claims = claims_table(sweep, metric)?;
    if !claims.is_empty() {
        s.push_str(
            "Each comparison pairs two entries on the same task and seed; a difference is in points of the task's primary metric (× 100), so a spread over several tasks mixes their scales: read the win counts first.\n\n",
        );
        s.push_str(&claims);
        s.push('\n');
    }
    if found.is_empty() {
        s.push_str("No comparisons available (the sweep lacks the runs they need).\n");
    }
    for f in &found {
        let _ = writeln!(s, "- {f}");
    }
    s.push_str("\n## Tables\n\n");
    s.push_str(&tables.markdown());
    s.push_str("\nCSV: [table1.csv](table1.csv)");
    if tables.table2.is_some() {
        s.push_str(", [table2.csv](table2.csv)");
    }
    s.push_str("; frames for notebooks in [data/](data/) (parquet and CSV).\n\n");
    let costs = crate::cost::search_costs(sweep)?;
    if !costs.is_empty() {
        let path = out.join("search_cost.csv");
        petnas_core::write_atomic(&path, crate::cost::csv(&costs).as_bytes())?;
        s.push_str("## Search cost\n\n");
        s.push_str(&crate::cost::markdown(&costs));
        s.push_str("\nCSV: [search_cost.csv](search_cost.csv).\n\n");
    }
    s.push_str("## Figures\n\n");
    for f in &figures.figures {
        let _ = writeln!(
            s,
            "### {}\n\n![{}](figures/{}.png)\n\n[SVG](figures/{}.svg)\n",
            f.stem, f.caption, f.stem, f.stem
        );
    }
    if !figures.skipped.is_empty() {
        s.push_str("Skipped figures:\n\n");
        for k in &figures.skipped {
            let _ = writeln!(s, "- {k}");
        }
        s.push('\n');
    }
    s.push_str("## Provenance\n\n");
    s.push_str(&provenance(sweep)?);
    let readme = out.join("README.md");
    petnas_core::write_atomic(&readme, s.as_bytes())?;
    Ok(Report {
        readme,
        tables,
        figures,
        findings: found,
    })
}

/// Tasks present in the medians, in paper order (for callers that print summaries).
pub fn tasks_present(med: &DataFrame) -> Result<Vec<String>> {
    let mut t: Vec<String> = str_values(med, "task")?
        .into_iter()
        .flatten()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    t.sort_by_key(|x| task_order(x));
    Ok(t)
}

#[cfg(test)]
mod paired_tests {
    use super::*;

    /// Pairs by task and seed, counts wins, ties and losses, and gives the median and the
    /// quartiles of the differences (linear interpolation, as numpy's default).
    #[test]
    fn paired_text_counts_and_quartiles() {
        let mut m = SeedMap::new();
        let b = Some(1000);
        // (task, seed, a, b): differences +2, 0, −1, +4 and one seed without a partner.
        for (t, s, va, vb) in [
            ("rte", 0, 62.0, 60.0),
            ("rte", 1, 61.0, 61.0),
            ("mrpc", 0, 70.0, 71.0),
            ("mrpc", 1, 75.0, 71.0),
        ] {
            m.insert(("A".into(), b, t.into(), s), va);
            m.insert(("B".into(), b, t.into(), s), vb);
        }
        m.insert(("A".into(), b, "rte".into(), 2), 50.0);
        let got = paired_text(&m, "A", "B", b);
        assert_eq!(
            got,
            "; paired by task and seed: 2 wins, 1 ties, 1 losses of 4, median difference +1.0 (IQR −0.2 to +2.5)".replace('−', "-")
        );
        // A baseline without a budget pairs with every budget.
        let mut base = SeedMap::new();
        base.insert(("A".into(), b, "rte".into(), 0), 62.0);
        base.insert(("BitFit".into(), None, "rte".into(), 0), 61.0);
        assert!(paired_text(&base, "A", "BitFit", b).contains("1 wins, 0 ties, 0 losses of 1"));
        assert_eq!(paired_text(&base, "A", "nobody", b), "");
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.25), 1.75);
    }
}
