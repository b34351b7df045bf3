//! Loading a sweep: finds `record.json` files under a runs directory, parses them (in parallel)
//! and flattens them into two polars frames, one row per run and one row per (run, module).
//!
//! The flattening is plain Rust over the [`RunRecord`] contract of `petnas-core`; everything
//! after it (medians, heat maps, profiles) is a lazy polars query over these frames
//! (Lawton et al., 2023, Section 4 reports medians over seeds and kept-parameter maps).

use std::path::{Path, PathBuf};

use petnas_core::{RunRecord, RunStatus};
use polars::prelude::*;
use rayon::prelude::*;

use crate::error::{AnalyzeError, Result};
use crate::label::{method_label, space_has_lora, Group, MethodLabel};

/// The file name of a run record inside a run directory.
pub const RECORD_FILE: &str = "record.json";

/// How deep below the runs directory a `record.json` may sit (`<runs>/a/b/c/record.json`).
pub const MAX_DEPTH: usize = 3;

/// The metric keys the runs frame has a column for (lowercase, as the trainer writes them).
pub const METRICS: [&str; 5] = ["accuracy", "f1", "mcc", "pearson", "spearman"];

/// A run that failed: counted and listed in reports, never used as a score.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedRun {
    /// Run id.
    pub id: String,
    /// GLUE task.
    pub task: String,
    /// Method label.
    pub label: String,
    /// The error message the trainer recorded.
    pub reason: String,
    /// The record's path.
    pub path: PathBuf,
}

/// A loaded sweep: the flattened frames plus what the report lists about failures.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The runs directory.
    pub dir: PathBuf,
    /// One row per run (failed runs included, with `status == "failed"` and null scores).
    pub runs: DataFrame,
    /// One row per (completed run, module): kept and total bias/LoRA counts.
    pub modules: DataFrame,
    /// Failed runs.
    pub failed: Vec<FailedRun>,
    /// Record files that could not be read (file, reason): skipped, not fatal, so one damaged
    /// file does not hide every other run; the binary names each one.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Records read.
    pub records: usize,
}

/// All `record.json` files under `dir` (and `dir/record.json` itself), at most [`MAX_DEPTH`]
/// directories deep, sorted by path.
/// Directories whose name starts with `.` (in-progress `.partial-*` runs) are skipped, and the
/// walk does not descend into a directory that holds a record.
pub fn find_records(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(AnalyzeError::NoRunsDir {
            path: dir.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    // A single run directory given as the runs directory is a sweep of one.
    let own = dir.join(RECORD_FILE);
    if own.is_file() {
        out.push(own);
    }
    walk(dir, 1, &mut out)?;
    out.sort();
    if out.is_empty() {
        return Err(AnalyzeError::NoRecords {
            path: dir.to_path_buf(),
        });
    }
    Ok(out)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| AnalyzeError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AnalyzeError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(|e| AnalyzeError::io(&path, e))?
            .is_dir()
            || path.is_dir();
        if !is_dir {
            continue;
        }
        let record = path.join(RECORD_FILE);
        if record.is_file() {
            out.push(record);
        } else if depth < MAX_DEPTH {
            walk(&path, depth + 1, out)?;
        }
    }
    Ok(())
}

/// Parses every record under `dir` (in parallel): the records read, and the files that could not
/// be (malformed, truncated, another version), each with the reason naming its file and serde's
/// line and column.
pub fn load_records(dir: &Path) -> Result<(Vec<(PathBuf, RunRecord)>, Vec<(PathBuf, String)>)> {
    let paths = find_records(dir)?;
    let read: Vec<(PathBuf, std::result::Result<RunRecord, String>)> = paths
        .into_par_iter()
        .map(|p| {
            let r = RunRecord::load(&p).map_err(|e| e.to_string());
            (p, r)
        })
        .collect();
    let mut ok = Vec::with_capacity(read.len());
    let mut bad = Vec::new();
    for (p, r) in read {
        match r {
            Ok(r) => ok.push((p, r)),
            Err(e) => bad.push((p, e)),
        }
    }
    Ok((ok, bad))
}

/// Loads a sweep directory into frames; unreadable records are listed in
/// [`Sweep::unreadable`], and a folder where none is readable is an error.
pub fn load_sweep(dir: &Path) -> Result<Sweep> {
    let (records, unreadable) = load_records(dir)?;
    if records.is_empty() {
        if let Some((p, e)) = unreadable.first() {
            return Err(AnalyzeError::Unreadable {
                path: p.clone(),
                reason: e.clone(),
                count: unreadable.len(),
            });
        }
    }
    let mut sweep = build_frames(dir, &records)?;
    sweep.unreadable = unreadable;
    sweep.records = records.len();
    Ok(sweep)
}

/// A search's maximal training on a preset space is that preset trained (the maximal run of a
/// `bitfit` search is BitFit) and stands in for the baseline, unless the sweep also trained the
/// baseline itself for that task and seed: then the maximal run is a search start, so that no
/// seed counts twice in one median.
fn demote_shadowed_search_starts(records: &[(PathBuf, RunRecord)], labels: &mut [MethodLabel]) {
    use std::collections::BTreeSet;
    let real: BTreeSet<(String, &str, u64)> = labels
        .iter()
        .zip(records)
        .filter(|(ml, (_, r))| ml.group == Group::Baseline && !r.spec.method.is_search())
        .map(|(ml, (_, r))| (ml.label.clone(), r.spec.task.as_str(), r.spec.seed))
        .collect();
    for (ml, (_, r)) in labels.iter_mut().zip(records) {
        if ml.group == Group::Baseline
            && r.spec.method.is_search()
            && real.contains(&(ml.label.clone(), r.spec.task.as_str(), r.spec.seed))
        {
            ml.label = format!("{} (search start)", r.spec.space.as_deref().unwrap_or("?"));
            ml.base = ml.label.clone();
            ml.group = Group::SearchStart;
        }
    }
}

/// Appends to each record's label the recipe fields (peak LR, epochs, batch size, max length)
/// that differ between runs of the same method label on the same task, e.g. `" [lr=3e-3]"` in
/// an LR search: such runs are different methods, not seeds of one, and must not share a
/// median. Recipes that differ only between tasks (epochs per task) add nothing.
fn add_recipe_suffixes(records: &[(PathBuf, RunRecord)], labels: &mut [MethodLabel]) {
    use std::collections::{BTreeMap, BTreeSet};
    let fields = |r: &RunRecord| -> [String; 8] {
        let c = &r.spec.recipe;
        [
            format!("lr={:e}", c.lr),
            format!("epochs={}", c.epochs),
            format!("batch={}", c.batch_size),
            format!("max_len={}", c.max_len),
            format!("bucket={}", c.bucket),
            format!(
                "clip={}",
                c.max_grad_norm
                    .map_or("none".to_string(), |g| g.to_string())
            ),
            format!("precision={}", r.spec.precision.as_str()),
            format!("lora_init={}", r.spec.lora_init.as_str()),
        ]
    };
    let mut seen: BTreeMap<(String, &str), [BTreeSet<String>; 8]> = BTreeMap::new();
    for (ml, (_, r)) in labels.iter().zip(records) {
        let e = seen
            .entry((ml.label.clone(), r.spec.task.as_str()))
            .or_default();
        for (set, f) in e.iter_mut().zip(fields(r)) {
            set.insert(f);
        }
    }
    for (ml, (_, r)) in labels.iter_mut().zip(records) {
        let varying = &seen[&(ml.label.clone(), r.spec.task.as_str())];
        let parts: Vec<String> = fields(r)
            .into_iter()
            .zip(varying)
            .filter(|(_, set)| set.len() > 1)
            .map(|(f, _)| f)
            .collect();
        if !parts.is_empty() {
            ml.label.push_str(&format!(" [{}]", parts.join(", ")));
        }
    }
}

/// Flattens records into the runs and modules frames.
///
/// Runs frame columns: `id, path, task, label, base, group, random, ablation, method, space,
/// mode, budget, seed, criterion, reinit, lora_init, status, reason, primary_metric, score`
/// (primary metric × 100), one column per [`METRICS`] entry (raw, 0–1 or −1–1), `pet_params,
/// head_params, steps, final_train_loss, wall_seconds, examples_per_second, model, num_layers,
/// epochs, lr, batch_size, max_len, device, config_hash, maximal_hash` (a pruned run's maximal
/// training, by its `config_hash`), `git_commit, created_unix`.
///
/// Modules frame columns (completed runs only): `run_id, label, task, seed, budget, path,
/// module_type, layer, bias_kept, bias_total, lora_kept, lora_total, kept_rank, max_rank`.
pub fn build_frames(dir: &Path, records: &[(PathBuf, RunRecord)]) -> Result<Sweep> {
    let n = records.len();
    let mut id = Vec::with_capacity(n);
    let mut path = Vec::with_capacity(n);
    let mut task = Vec::with_capacity(n);
    let mut label = Vec::with_capacity(n);
    let mut base = Vec::with_capacity(n);
    let mut group = Vec::with_capacity(n);
    let mut random = Vec::with_capacity(n);
    let mut ablation = Vec::with_capacity(n);
    let mut method = Vec::with_capacity(n);
    let mut space: Vec<Option<String>> = Vec::with_capacity(n);
    let mut mode: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut budget: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut seed = Vec::with_capacity(n);
    let mut criterion: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut reinit: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut lora_init = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut reason: Vec<Option<String>> = Vec::with_capacity(n);
    let mut primary_metric: Vec<Option<String>> = Vec::with_capacity(n);
    let mut score: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut metrics: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(n); METRICS.len()];
    let mut pet_params = Vec::with_capacity(n);
    let mut head_params = Vec::with_capacity(n);
    let mut steps = Vec::with_capacity(n);
    let mut final_loss = Vec::with_capacity(n);
    let mut wall = Vec::with_capacity(n);
    let mut eps = Vec::with_capacity(n);
    let mut model = Vec::with_capacity(n);
    let mut num_layers = Vec::with_capacity(n);
    let mut epochs = Vec::with_capacity(n);
    let mut lr = Vec::with_capacity(n);
    let mut batch = Vec::with_capacity(n);
    let mut max_len = Vec::with_capacity(n);
    let mut device = Vec::with_capacity(n);
    let mut hash = Vec::with_capacity(n);
    let mut commit: Vec<Option<String>> = Vec::with_capacity(n);
    let mut maximal: Vec<Option<String>> = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);

    let m_cap: usize = records.iter().map(|(_, r)| r.result.modules.len()).sum();
    let mut m_run = Vec::with_capacity(m_cap);
    let mut m_label = Vec::with_capacity(m_cap);
    let mut m_task = Vec::with_capacity(m_cap);
    let mut m_seed = Vec::with_capacity(m_cap);
    let mut m_budget: Vec<Option<i64>> = Vec::with_capacity(m_cap);
    let mut m_path = Vec::with_capacity(m_cap);
    let mut m_type = Vec::with_capacity(m_cap);
    let mut m_layer: Vec<Option<i64>> = Vec::with_capacity(m_cap);
    let mut m_bias_kept = Vec::with_capacity(m_cap);
    let mut m_bias_total = Vec::with_capacity(m_cap);
    let mut m_lora_kept = Vec::with_capacity(m_cap);
    let mut m_lora_total = Vec::with_capacity(m_cap);
    let mut m_kept_rank: Vec<Option<i64>> = Vec::with_capacity(m_cap);
    let mut m_max_rank: Vec<Option<i64>> = Vec::with_capacity(m_cap);

    let mut failed = Vec::new();
    let mut labels: Vec<MethodLabel> = records
        .iter()
        .map(|(_, r)| {
            method_label(
                &r.spec,
                space_has_lora(r.spec.space.as_deref().unwrap_or(""), &r.result.modules),
            )
        })
        .collect();
    demote_shadowed_search_starts(records, &mut labels);
    add_recipe_suffixes(records, &mut labels);
    for ((p, r), ml) in records.iter().zip(&labels) {
        let s = &r.spec;
        let res = &r.result;
        let ok = matches!(res.status, RunStatus::Completed);
        if let RunStatus::Failed { reason: why } = &res.status {
            failed.push(FailedRun {
                id: r.id.clone(),
                task: s.task.clone(),
                label: ml.label.clone(),
                reason: why.clone(),
                path: p.clone(),
            });
            reason.push(Some(why.clone()));
        } else {
            reason.push(None);
        }
        id.push(r.id.clone());
        path.push(p.to_string_lossy().into_owned());
        task.push(s.task.clone());
        label.push(ml.label.clone());
        base.push(ml.base.clone());
        group.push(ml.group.as_str());
        random.push(ml.random);
        ablation.push(ml.ablation);
        method.push(s.method.as_string());
        space.push(s.space.clone());
        mode.push(s.mode.map(|m| match m {
            petnas_core::PruneMode::Structured => "structured",
            petnas_core::PruneMode::Unstructured => "unstructured",
        }));
        let b = s.budget.map(|b| b as i64);
        budget.push(b);
        seed.push(s.seed as i64);
        criterion.push(s.criterion.map(|c| c.as_str()));
        reinit.push(s.reinit.map(|r| match r {
            petnas_core::Reinit::Same => "same",
            petnas_core::Reinit::Fresh => "fresh",
            petnas_core::Reinit::Keep => "keep",
        }));
        lora_init.push(s.lora_init.as_str().to_string());
        status.push(if ok { "completed" } else { "failed" });
        primary_metric.push(res.primary_metric.clone());
        score.push(if ok {
            res.primary().map(|v| v * 100.0)
        } else {
            None
        });
        for (k, col) in METRICS.iter().zip(metrics.iter_mut()) {
            col.push(if ok {
                res.metrics.get(*k).copied()
            } else {
                None
            });
        }
        pet_params.push(res.pet_params as i64);
        head_params.push(res.head_params as i64);
        steps.push(res.steps as i64);
        final_loss.push(res.final_train_loss);
        wall.push(res.wall_seconds);
        eps.push(res.examples_per_second);
        model.push(s.model.clone());
        num_layers.push(s.model_fingerprint.num_layers as i64);
        epochs.push(s.recipe.epochs);
        lr.push(s.recipe.lr);
        batch.push(s.recipe.batch_size as i64);
        max_len.push(s.recipe.max_len as i64);
        device.push(s.device.clone());
        hash.push(r.config_hash.clone());
        commit.push(r.git_commit.clone());
        maximal.push(s.maximal_hash.clone());
        created.push(r.created_unix as i64);

        if ok && ml.group != Group::SearchStart {
            for m in &res.modules {
                m_run.push(r.id.clone());
                m_label.push(ml.label.clone());
                m_task.push(s.task.clone());
                m_seed.push(s.seed as i64);
                m_budget.push(b);
                m_path.push(m.path.clone());
                m_type.push(m.module_type.as_str());
                m_layer.push(m.layer.map(|l| l as i64));
                m_bias_kept.push(m.bias_kept as i64);
                m_bias_total.push(m.bias_total as i64);
                m_lora_kept.push(m.lora_kept as i64);
                m_lora_total.push(m.lora_total as i64);
                m_kept_rank.push(m.kept_rank.map(|v| v as i64));
                m_max_rank.push(m.max_rank.map(|v| v as i64));
            }
        }
    }

    let mut cols: Vec<Column> = vec![
        Column::new("id".into(), id),
        Column::new("path".into(), path),
        Column::new("task".into(), task),
        Column::new("label".into(), label),
        Column::new("base".into(), base),
        Column::new("group".into(), group),
        Column::new("random".into(), random),
        Column::new("ablation".into(), ablation),
        Column::new("method".into(), method),
        Column::new("space".into(), space),
        Column::new("mode".into(), mode),
        Column::new("budget".into(), budget),
        Column::new("seed".into(), seed),
        Column::new("criterion".into(), criterion),
        Column::new("reinit".into(), reinit),
        Column::new("lora_init".into(), lora_init),
        Column::new("status".into(), status),
        Column::new("reason".into(), reason),
        Column::new("primary_metric".into(), primary_metric),
        Column::new("score".into(), score),
    ];
    for (k, col) in METRICS.iter().zip(metrics) {
        cols.push(Column::new((*k).into(), col));
    }
    cols.extend([
        Column::new("pet_params".into(), pet_params),
        Column::new("head_params".into(), head_params),
        Column::new("steps".into(), steps),
        Column::new("final_train_loss".into(), final_loss),
        Column::new("wall_seconds".into(), wall),
        Column::new("examples_per_second".into(), eps),
        Column::new("model".into(), model),
        Column::new("num_layers".into(), num_layers),
        Column::new("epochs".into(), epochs),
        Column::new("lr".into(), lr),
        Column::new("batch_size".into(), batch),
        Column::new("max_len".into(), max_len),
        Column::new("device".into(), device),
        Column::new("config_hash".into(), hash),
        Column::new("maximal_hash".into(), maximal),
        Column::new("git_commit".into(), commit),
        Column::new("created_unix".into(), created),
    ]);
    let runs = DataFrame::new(n, cols).map_err(AnalyzeError::polars("building the runs frame"))?;
    let m = m_run.len();
    let modules = DataFrame::new(
        m,
        vec![
            Column::new("run_id".into(), m_run),
            Column::new("label".into(), m_label),
            Column::new("task".into(), m_task),
            Column::new("seed".into(), m_seed),
            Column::new("budget".into(), m_budget),
            Column::new("path".into(), m_path),
            Column::new("module_type".into(), m_type),
            Column::new("layer".into(), m_layer),
            Column::new("bias_kept".into(), m_bias_kept),
            Column::new("bias_total".into(), m_bias_total),
            Column::new("lora_kept".into(), m_lora_kept),
            Column::new("lora_total".into(), m_lora_total),
            Column::new("kept_rank".into(), m_kept_rank),
            Column::new("max_rank".into(), m_max_rank),
        ],
    )
    .map_err(AnalyzeError::polars("building the modules frame"))?;
    Ok(Sweep {
        dir: dir.to_path_buf(),
        runs,
        modules,
        failed,
        unreadable: Vec::new(),
        records: n,
    })
}
