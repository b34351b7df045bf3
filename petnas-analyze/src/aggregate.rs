//! Aggregations over the flattened frames, as lazy polars queries: medians over seeds per
//! (task, method, budget) for the score tables, and mean kept fractions per (module type, layer)
//! for the heat maps and layer profiles (Lawton et al., 2023, Section 4, Tables 1–2 and the
//! figures of which modules the search keeps).

use polars::prelude::*;

use crate::error::{AnalyzeError, Result};
use crate::load::METRICS;

/// Which score the tables rank by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Each task's GLUE metric (MCC for CoLA, Pearson for STS-B, accuracy elsewhere).
    Primary,
    /// A named metric column (`"f1"`, `"accuracy"`, ...).
    Named(String),
}

impl Metric {
    /// Parses `primary` or one of [`METRICS`].
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_lowercase();
        if t == "primary" {
            return Ok(Metric::Primary);
        }
        if METRICS.contains(&t.as_str()) {
            return Ok(Metric::Named(t));
        }
        Err(AnalyzeError::UnknownMetric {
            name: s.to_string(),
            valid: METRICS.join(", "),
        })
    }

    /// A short name for captions.
    pub fn name(&self) -> &str {
        match self {
            Metric::Primary => "primary metric",
            Metric::Named(n) => n,
        }
    }

    /// The expression giving the score (× 100) of a run.
    fn expr(&self) -> Expr {
        match self {
            Metric::Primary => col("score"),
            Metric::Named(n) => (col(n.as_str()) * lit(100.0)).alias("score"),
        }
    }
}

/// Completed, non-search-start runs with a non-null score column (× 100) under `metric`.
pub fn scored_runs(runs: &DataFrame, metric: &Metric) -> LazyFrame {
    runs.clone()
        .lazy()
        .filter(
            col("status")
                .eq(lit("completed"))
                .and(col("group").neq(lit("search_start"))),
        )
        .with_column(metric.expr())
        .filter(col("score").is_not_null())
}

/// Median over seeds per (task, label, budget): columns `task, label, group, budget, median,
/// min, max, n, params` (`params` = median PET parameters), sorted by label, budget, task.
pub fn medians(runs: &DataFrame, metric: &Metric) -> Result<DataFrame> {
    scored_runs(runs, metric)
        .group_by([col("task"), col("label"), col("group"), col("budget")])
        .agg([
            col("score").median().alias("median"),
            col("score").min().alias("min"),
            col("score").max().alias("max"),
            len().cast(DataType::Int64).alias("n"),
            col("pet_params")
                .cast(DataType::Float64)
                .median()
                .alias("params"),
        ])
        .sort(
            ["label", "budget", "task"],
            SortMultipleOptions::default().with_nulls_last(true),
        )
        .collect()
        .map_err(AnalyzeError::polars("computing medians over seeds"))
}

/// Median PET parameters per (label, budget) over all its completed runs: `label, budget,
/// params`.
pub fn params_by_row(runs: &DataFrame) -> Result<DataFrame> {
    runs.clone()
        .lazy()
        .filter(col("status").eq(lit("completed")))
        .group_by([col("label"), col("budget")])
        .agg([col("pet_params")
            .cast(DataType::Float64)
            .median()
            .alias("params")])
        .collect()
        .map_err(AnalyzeError::polars("computing median parameter counts"))
}

/// What a heat-map cell measures for one module of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeatValue {
    /// Kept bias-delta entries / bias entries in the space.
    BiasFraction,
    /// Kept LoRA rank / max rank (structured LoRA pruning).
    LoraRank,
    /// Kept LoRA entries / LoRA entries at max rank (unstructured LoRA pruning).
    LoraEntries,
    /// (Kept bias + LoRA entries) / (bias + LoRA entries): the layer profile.
    AllEntries,
}

impl HeatValue {
    fn filter(self) -> Expr {
        match self {
            HeatValue::BiasFraction => col("bias_total").gt(lit(0)),
            HeatValue::LoraRank => col("max_rank")
                .is_not_null()
                .and(col("max_rank").gt(lit(0))),
            HeatValue::LoraEntries => col("lora_total").gt(lit(0)),
            HeatValue::AllEntries => (col("bias_total") + col("lora_total")).gt(lit(0)),
        }
    }

    fn expr(self) -> Expr {
        let f = |e: Expr| e.cast(DataType::Float64);
        match self {
            HeatValue::BiasFraction => f(col("bias_kept")) / f(col("bias_total")),
            HeatValue::LoraRank => f(col("kept_rank").fill_null(lit(0))) / f(col("max_rank")),
            HeatValue::LoraEntries => f(col("lora_kept")) / f(col("lora_total")),
            HeatValue::AllEntries => {
                f(col("bias_kept") + col("lora_kept")) / f(col("bias_total") + col("lora_total"))
            }
        }
        .alias("value")
    }
}

/// The module rows of `label` (at `budget`, if given) with a `value` column for `what`.
fn module_values(
    modules: &DataFrame,
    label: &str,
    budget: Option<i64>,
    what: HeatValue,
) -> LazyFrame {
    let mut lf = modules
        .clone()
        .lazy()
        .filter(col("label").eq(lit(label.to_string())));
    if let Some(b) = budget {
        lf = lf.filter(col("budget").eq(lit(b)));
    }
    lf.filter(what.filter()).with_column(what.expr())
}

/// Mean kept fraction per (module type, layer) for runs of `label` at `budget`: the mean over
/// seeds within each task, then over tasks (so every task weighs the same). Columns:
/// `module_type, layer, value` (layer null for the embeddings LayerNorm).
pub fn heatmap_frame(
    modules: &DataFrame,
    label: &str,
    budget: Option<i64>,
    what: HeatValue,
) -> Result<DataFrame> {
    module_values(modules, label, budget, what)
        .group_by([col("task"), col("module_type"), col("layer")])
        .agg([col("value").mean()])
        .group_by([col("module_type"), col("layer")])
        .agg([col("value").mean()])
        .sort(
            ["module_type", "layer"],
            SortMultipleOptions::default().with_nulls_last(false),
        )
        .collect()
        .map_err(AnalyzeError::polars(format!(
            "computing the {what:?} heat map of {label}"
        )))
}

/// Number of distinct runs and tasks behind [`heatmap_frame`]'s cells.
pub fn heatmap_support(
    modules: &DataFrame,
    label: &str,
    budget: Option<i64>,
    what: HeatValue,
) -> Result<(usize, usize)> {
    let df = module_values(modules, label, budget, what)
        .select([
            col("run_id").n_unique().cast(DataType::Int64).alias("runs"),
            col("task").n_unique().cast(DataType::Int64).alias("tasks"),
        ])
        .collect()
        .map_err(AnalyzeError::polars("counting heat-map runs"))?;
    let runs = i64_values(&df, "runs")?
        .first()
        .copied()
        .flatten()
        .unwrap_or(0);
    let tasks = i64_values(&df, "tasks")?
        .first()
        .copied()
        .flatten()
        .unwrap_or(0);
    Ok((runs as usize, tasks as usize))
}

/// Kept fraction of all PET entries per layer for `label` at `budget`, averaged over module
/// types and seeds within a task, then over tasks: columns `layer, value`, layers ascending
/// (the embeddings LayerNorm, which has no layer, is left out).
pub fn layer_profile(modules: &DataFrame, label: &str, budget: Option<i64>) -> Result<DataFrame> {
    module_values(modules, label, budget, HeatValue::AllEntries)
        .filter(col("layer").is_not_null())
        .group_by([col("task"), col("layer")])
        .agg([col("value").mean()])
        .group_by([col("layer")])
        .agg([col("value").mean()])
        .sort(["layer"], SortMultipleOptions::default())
        .collect()
        .map_err(AnalyzeError::polars(format!(
            "computing the layer profile of {label}"
        )))
}

/// The completed runs of `label` that have a budget.
fn budgeted_runs(runs: &DataFrame, label: &str) -> LazyFrame {
    runs.clone().lazy().filter(
        col("status")
            .eq(lit("completed"))
            .and(col("label").eq(lit(label.to_string())))
            .and(col("budget").is_not_null()),
    )
}

/// The budget with the most completed runs of `label` (ties: the smallest budget), or None if
/// the label has no run with a budget.
pub fn most_common_budget(runs: &DataFrame, label: &str) -> Result<Option<i64>> {
    let df = budgeted_runs(runs, label)
        .group_by([col("budget")])
        .agg([len().cast(DataType::Int64).alias("n")])
        .sort(
            ["n", "budget"],
            SortMultipleOptions::default().with_order_descending_multi([true, false]),
        )
        .collect()
        .map_err(AnalyzeError::polars("choosing a budget"))?;
    Ok(i64_values(&df, "budget")?.first().copied().flatten())
}

/// The budgets of `label`'s completed runs, ascending.
pub fn budgets_of(runs: &DataFrame, label: &str) -> Result<Vec<i64>> {
    let df = budgeted_runs(runs, label)
        .select([col("budget")])
        .unique(None, UniqueKeepStrategy::First)
        .sort(["budget"], SortMultipleOptions::default())
        .collect()
        .map_err(AnalyzeError::polars("listing budgets"))?;
    Ok(i64_values(&df, "budget")?.into_iter().flatten().collect())
}

/// The budget figures and findings of `label` use: the first of `budgets` at which `label` has
/// completed runs, else the first of `budgets` (so the figure is reported as skipped there), and
/// with no `budgets` the label's most common budget.
pub fn chosen_budget(runs: &DataFrame, label: &str, budgets: &[i64]) -> Result<Option<i64>> {
    if budgets.is_empty() {
        return most_common_budget(runs, label);
    }
    let have = budgets_of(runs, label)?;
    Ok(Some(
        budgets
            .iter()
            .copied()
            .find(|b| have.contains(b))
            .unwrap_or(budgets[0]),
    ))
}

/// Distinct labels of completed runs in `group`, in table order.
pub fn labels_in_group(runs: &DataFrame, group: &str) -> Result<Vec<String>> {
    completed_labels(
        runs,
        col("group").eq(lit(group.to_string())),
        "listing labels",
    )
}

/// Distinct labels of the completed runs that `filter` keeps, in table order; `what` names the
/// listing in a polars error.
pub fn completed_labels(runs: &DataFrame, filter: Expr, what: &str) -> Result<Vec<String>> {
    let df = runs
        .clone()
        .lazy()
        .filter(col("status").eq(lit("completed")).and(filter))
        .select([col("label")])
        .unique(None, UniqueKeepStrategy::Any)
        .collect()
        .map_err(AnalyzeError::polars(what))?;
    let mut v: Vec<String> = str_values(&df, "label")?.into_iter().flatten().collect();
    v.sort_by_key(|l| crate::label::label_order(l));
    Ok(v)
}

/// A column as `f64` values (casting integers).
pub fn f64_values(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>> {
    let c = df
        .column(name)
        .and_then(|c| c.cast(&DataType::Float64))
        .map_err(AnalyzeError::polars(format!("reading column {name}")))?;
    let ca = c
        .f64()
        .map_err(AnalyzeError::polars(format!("reading column {name}")))?;
    Ok(ca.iter().collect())
}

/// A column as `i64` values (casting other integer types).
pub fn i64_values(df: &DataFrame, name: &str) -> Result<Vec<Option<i64>>> {
    let c = df
        .column(name)
        .and_then(|c| c.cast(&DataType::Int64))
        .map_err(AnalyzeError::polars(format!("reading column {name}")))?;
    let ca = c
        .i64()
        .map_err(AnalyzeError::polars(format!("reading column {name}")))?;
    Ok(ca.iter().collect())
}

/// A string column's values.
pub fn str_values(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    let c = df
        .column(name)
        .map_err(AnalyzeError::polars(format!("reading column {name}")))?;
    let ca = c
        .str()
        .map_err(AnalyzeError::polars(format!("reading column {name}")))?;
    Ok(ca.iter().map(|s| s.map(str::to_string)).collect())
}

/// A boolean column's values.
pub fn bool_values(df: &DataFrame, name: &str) -> Result<Vec<Option<bool>>> {
    let c = df
        .column(name)
        .map_err(AnalyzeError::polars(format!("reading column {name}")))?;
    let ca = c
        .bool()
        .map_err(AnalyzeError::polars(format!("reading column {name}")))?;
    Ok(ca.iter().collect())
}
