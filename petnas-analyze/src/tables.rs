//! The paper's score tables (Lawton et al., 2023, Tables 1 and 2): GLUE dev scores × 100,
//! median over seeds.
//!
//! Table 1: one row per method (searched methods once per budget, the budget in the row name),
//! a `#params` column (median trained PET parameters), one column per task in the paper's order
//! and the average. Table 2: the searched methods (S-/U-BitFit, S-/U-MaM, random and ablation
//! variants) across budgets. Missing cells are shown as "–", never as 0.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use polars::prelude::DataFrame;

use crate::aggregate::{f64_values, i64_values, medians, params_by_row, str_values, Metric};
use crate::error::{AnalyzeError, Result};
use crate::label::label_order;
use crate::load::Sweep;

/// GLUE tasks in the paper's column order, with their display names.
pub const TASKS: [(&str, &str); 9] = [
    ("mnli", "MNLI"),
    ("mnli-mm", "MNLI-mm"),
    ("qqp", "QQP"),
    ("qnli", "QNLI"),
    ("sst2", "SST-2"),
    ("cola", "CoLA"),
    ("stsb", "STS-B"),
    ("mrpc", "MRPC"),
    ("rte", "RTE"),
];

/// The string shown for a missing cell.
pub const MISSING: &str = "–";

/// Sort key of a task: the paper's order, unknown tasks after it alphabetically.
pub fn task_order(task: &str) -> (usize, String) {
    match TASKS.iter().position(|(t, _)| *t == task) {
        Some(i) => (i, String::new()),
        None => (TASKS.len(), task.to_string()),
    }
}

/// Display name of a task (`"sst2"` → `"SST-2"`); a user's own task keeps its name as given.
pub fn task_display(task: &str) -> String {
    TASKS
        .iter()
        .find(|(t, _)| *t == task)
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| task.to_string())
}

/// A parameter count in the paper's style: `850`, `26.5k`, `265k`, `1.2M`, `109M`.
pub fn humanize(n: f64) -> String {
    let (v, unit) = if n >= 1e9 {
        (n / 1e9, "B")
    } else if n >= 1e6 {
        (n / 1e6, "M")
    } else if n >= 1e3 {
        (n / 1e3, "k")
    } else {
        return format!("{}", n.round() as i64);
    };
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    };
    let s = s.strip_suffix(".0").map(str::to_string).unwrap_or(s);
    format!("{s}{unit}")
}

/// One aggregated table cell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    /// Median score over seeds (× 100).
    pub median: f64,
    /// Lowest seed's score.
    pub min: f64,
    /// Highest seed's score.
    pub max: f64,
    /// Number of seeds.
    pub n: usize,
}

/// One table row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Method label.
    pub label: String,
    /// Parameter budget (searched methods).
    pub budget: Option<i64>,
    /// The row name as printed (label, plus the budget for searched methods in Table 1).
    pub name: String,
    /// Median trained PET parameters.
    pub params: Option<f64>,
    /// One cell per column task, None where missing.
    pub cells: Vec<Option<Cell>>,
    /// Mean of the cells over the tasks; None if any is missing.
    pub avg: Option<f64>,
}

/// A score table.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreTable {
    /// Caption.
    pub title: String,
    /// Task keys of the columns (paper order).
    pub tasks: Vec<String>,
    /// Rows in table order.
    pub rows: Vec<Row>,
    /// Whether the table has a `#params` column (Table 1) or a `Budget` column (Table 2).
    pub params_column: bool,
}

/// Tables 1 and 2 of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Tables {
    /// Table 1 (baselines and searched methods).
    pub table1: ScoreTable,
    /// Table 2 (searched methods across budgets), None if there is no searched run.
    pub table2: Option<ScoreTable>,
    /// The metric scored.
    pub metric: Metric,
}

type Key = (String, Option<i64>);

/// Builds both tables from a loaded sweep.
pub fn build_tables(sweep: &Sweep, metric: &Metric) -> Result<Tables> {
    let med = medians(&sweep.runs, metric)?;
    let params = params_by_row(&sweep.runs)?;
    build_tables_from(&med, &params, metric)
}

/// Builds both tables from the [`medians`] and [`params_by_row`] frames.
pub fn build_tables_from(med: &DataFrame, params: &DataFrame, metric: &Metric) -> Result<Tables> {
    let tasks_col = str_values(med, "task")?;
    let labels = str_values(med, "label")?;
    let groups = str_values(med, "group")?;
    let budgets = i64_values(med, "budget")?;
    let m = f64_values(med, "median")?;
    let lo = f64_values(med, "min")?;
    let hi = f64_values(med, "max")?;
    let n = i64_values(med, "n")?;

    let mut cells: BTreeMap<Key, BTreeMap<String, Cell>> = BTreeMap::new();
    let mut group_of: BTreeMap<Key, String> = BTreeMap::new();
    let mut tasks: Vec<String> = Vec::new();
    for i in 0..med.height() {
        let (Some(task), Some(label), Some(median)) = (&tasks_col[i], &labels[i], m[i]) else {
            continue;
        };
        let key = (label.clone(), budgets[i]);
        group_of.insert(key.clone(), groups[i].clone().unwrap_or_default());
        cells.entry(key).or_default().insert(
            task.clone(),
            Cell {
                median,
                min: lo[i].unwrap_or(median),
                max: hi[i].unwrap_or(median),
                n: n[i].unwrap_or(0) as usize,
            },
        );
        if !tasks.contains(task) {
            tasks.push(task.clone());
        }
    }
    tasks.sort_by_key(|t| task_order(t));

    let mut params_of: BTreeMap<Key, f64> = BTreeMap::new();
    let p_labels = str_values(params, "label")?;
    let p_budgets = i64_values(params, "budget")?;
    let p_values = f64_values(params, "params")?;
    for i in 0..params.height() {
        if let (Some(l), Some(v)) = (&p_labels[i], p_values[i]) {
            params_of.insert((l.clone(), p_budgets[i]), v);
        }
    }

    let mut keys: Vec<Key> = cells.keys().cloned().collect();
    keys.sort_by(|a, b| {
        label_order(&a.0)
            .cmp(&label_order(&b.0))
            .then(b.1.cmp(&a.1))
    });
    let make_row = |key: &Key, with_budget_in_name: bool| -> Row {
        let by_task = &cells[key];
        let row_cells: Vec<Option<Cell>> = tasks.iter().map(|t| by_task.get(t).copied()).collect();
        let avg = if row_cells.iter().all(Option::is_some) && !row_cells.is_empty() {
            Some(row_cells.iter().flatten().map(|c| c.median).sum::<f64>() / row_cells.len() as f64)
        } else {
            None
        };
        let name = match (with_budget_in_name, key.1) {
            (true, Some(b)) => format!("{} ({})", key.0, humanize(b as f64)),
            _ => key.0.clone(),
        };
        Row {
            label: key.0.clone(),
            budget: key.1,
            name,
            params: params_of.get(key).copied(),
            cells: row_cells,
            avg,
        }
    };
    let is_main = |label: &str| !label.starts_with("Random ") && !label.contains(" [");
    let searched = |key: &Key| group_of.get(key).map(String::as_str) == Some("searched");

    let table1 = ScoreTable {
        title: format!(
            "Table 1: GLUE dev scores ({} × 100), median over seeds",
            metric.name()
        ),
        tasks: tasks.clone(),
        rows: keys
            .iter()
            .filter(|k| !searched(k) || is_main(&k.0))
            .map(|k| make_row(k, searched(k)))
            .collect(),
        params_column: true,
    };
    let t2_rows: Vec<Row> = keys
        .iter()
        .filter(|k| searched(k))
        .map(|k| make_row(k, false))
        .collect();
    let table2 = (!t2_rows.is_empty()).then(|| ScoreTable {
        title: format!(
            "Table 2: searched methods across budgets ({} × 100), median over seeds",
            metric.name()
        ),
        tasks,
        rows: t2_rows,
        params_column: false,
    });
    Ok(Tables {
        table1,
        table2,
        metric: metric.clone(),
    })
}

impl ScoreTable {
    /// The largest seed count of any cell.
    fn max_n(&self) -> usize {
        self.rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten())
            .map(|c| c.n)
            .max()
            .unwrap_or(0)
    }

    /// The table as GitHub markdown, with footnotes on seed counts and blank averages.
    pub fn markdown(&self) -> String {
        let max_n = self.max_n();
        let min_n = self
            .rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten())
            .map(|c| c.n)
            .min()
            .unwrap_or(0);
        let mut s = format!("**{}**\n\n", self.title);
        let mut header = vec!["Method".to_string()];
        header.push(
            if self.params_column {
                "#params"
            } else {
                "Budget"
            }
            .to_string(),
        );
        header.extend(self.tasks.iter().map(|t| task_display(t)));
        header.push("Avg".to_string());
        let _ = writeln!(s, "| {} |", header.join(" | "));
        let mut rule = vec!["---".to_string()];
        rule.extend(std::iter::repeat_n("---:".to_string(), header.len() - 1));
        let _ = writeln!(s, "|{}|", rule.join("|"));
        let mut blank_avg = Vec::new();
        for r in &self.rows {
            let mut line = vec![r.name.clone()];
            line.push(if self.params_column {
                r.params
                    .map(humanize)
                    .unwrap_or_else(|| MISSING.to_string())
            } else {
                r.budget
                    .map(|b| humanize(b as f64))
                    .unwrap_or_else(|| MISSING.to_string())
            });
            for c in &r.cells {
                line.push(match c {
                    Some(c) if c.n < max_n => format!("{:.1} (n={})", c.median, c.n),
                    Some(c) => format!("{:.1}", c.median),
                    None => MISSING.to_string(),
                });
            }
            match r.avg {
                Some(a) => line.push(format!("{a:.1}")),
                None => {
                    line.push(String::new());
                    blank_avg.push(r.name.clone());
                }
            }
            let _ = writeln!(s, "| {} |", line.join(" | "));
        }
        s.push('\n');
        if min_n == max_n {
            let _ = writeln!(
                s,
                "Median over n = {max_n} seeds per cell. {MISSING}: no completed run."
            );
        } else {
            let _ = writeln!(
                s,
                "Median over {min_n}–{max_n} seeds per cell; cells with fewer than {max_n} seeds show (n=…). {MISSING}: no completed run."
            );
        }
        if !blank_avg.is_empty() {
            let _ = writeln!(
                s,
                "Avg is left blank where a task is missing: {}.",
                blank_avg.join(", ")
            );
        }
        s
    }

    /// The table as CSV: `method,label,budget,params,<task>,<task>_n,...,avg` (empty fields for
    /// missing values).
    pub fn csv(&self) -> String {
        let mut header = vec!["method", "label", "budget", "params"]
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        for t in &self.tasks {
            header.push(t.clone());
            header.push(format!("{t}_n"));
            header.push(format!("{t}_min"));
            header.push(format!("{t}_max"));
        }
        header.push("avg".to_string());
        let mut s = header.join(",") + "\n";
        for r in &self.rows {
            let mut f = vec![
                csv_field(&r.name),
                csv_field(&r.label),
                r.budget.map(|b| b.to_string()).unwrap_or_default(),
                r.params.map(|p| format!("{p}")).unwrap_or_default(),
            ];
            for c in &r.cells {
                match c {
                    Some(c) => f.extend([
                        format!("{:.4}", c.median),
                        c.n.to_string(),
                        format!("{:.4}", c.min),
                        format!("{:.4}", c.max),
                    ]),
                    None => f.extend(std::iter::repeat_n(String::new(), 4)),
                }
            }
            f.push(r.avg.map(|a| format!("{a:.4}")).unwrap_or_default());
            s.push_str(&f.join(","));
            s.push('\n');
        }
        s
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Tables {
    /// Both tables as markdown.
    pub fn markdown(&self) -> String {
        let mut s = self.table1.markdown();
        if let Some(t2) = &self.table2 {
            s.push('\n');
            s.push_str(&t2.markdown());
        }
        s
    }

    /// Writes `tables.md`, `table1.csv` and (if any) `table2.csv` into `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(|e| AnalyzeError::io(out, e))?;
        let w = |name: &str, text: &str| -> Result<()> {
            petnas_core::write_atomic(&out.join(name), text.as_bytes())?;
            Ok(())
        };
        w("tables.md", &self.markdown())?;
        w("table1.csv", &self.table1.csv())?;
        if let Some(t2) = &self.table2 {
            w("table2.csv", &t2.csv())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_counts() {
        assert_eq!(humanize(850.0), "850");
        assert_eq!(humanize(26_500.0), "26.5k");
        assert_eq!(humanize(50_000.0), "50k");
        assert_eq!(humanize(265_000.0), "265k");
        assert_eq!(humanize(1_230_000.0), "1.2M");
        assert_eq!(humanize(109_482_240.0), "109M");
    }

    #[test]
    fn tasks_in_paper_order() {
        let mut t = vec!["rte", "cola", "mnli", "wnli", "sst2", "qqp"];
        t.sort_by_key(|t| task_order(t));
        assert_eq!(t, ["mnli", "qqp", "sst2", "cola", "rte", "wnli"]);
        assert_eq!(task_display("stsb"), "STS-B");
        assert_eq!(task_display("rte"), "RTE");
        assert_eq!(task_display("my-reviews"), "my-reviews");
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("ab"), "ab");
    }
}
