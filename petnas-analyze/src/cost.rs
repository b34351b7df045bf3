//! What a search costs (Lawton et al., 2023, §4: the search is one training of the maximal space
//! with the criterion accumulated, a pruning, and one retraining of the pruned architecture),
//! against one plain training: the maximal training itself, which is the BitFit (or rank-16 MaM)
//! baseline trained with the same recipe.
//!
//! From the records alone: a pruned run names its maximal training by `maximal_hash` (that run's
//! `config_hash`), so each searched run and seed pairs its retraining's wall time with its
//! maximal training's. Random architectures are left out (they need no criterion). Wall times are
//! what each run measured; on a shared CPU they include other work, so the table also gives the
//! optimizer steps, which no load changes, and each side's examples/s.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::aggregate::{bool_values, f64_values, i64_values, str_values};
use crate::error::Result;
use crate::label::label_order;
use crate::load::Sweep;
use crate::tables::{task_display, task_order};

/// One search (task × searched label) over its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchCost {
    /// Task id.
    pub task: String,
    /// The searched method's label, e.g. `"U-BitFit"` (budget in `budget`).
    pub label: String,
    /// The budget, if any.
    pub budget: Option<i64>,
    /// The maximal training's label: the one plain training the search is compared with.
    pub one_training: String,
    /// Seeds with both runs.
    pub seeds: usize,
    /// Median wall seconds of the maximal training.
    pub maximal_s: f64,
    /// Median wall seconds of the retraining.
    pub retrain_s: f64,
    /// Median over seeds of (maximal + retraining) / maximal wall time.
    pub wall_ratio: f64,
    /// Median over seeds of (maximal + retraining) / maximal optimizer steps.
    pub steps_ratio: f64,
    /// Median examples/s of the maximal training and of the retraining.
    pub maximal_eps: f64,
    /// See `maximal_eps`.
    pub retrain_eps: f64,
}

/// The median of `v` (non-empty), as the findings compute it.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::report::quantile(&v, 0.5)
}

/// The cost of every search in the sweep whose maximal training is among its records, in task
/// order, then label order, then budget.
pub fn search_costs(sweep: &Sweep) -> Result<Vec<SearchCost>> {
    let runs = &sweep.runs;
    let status = str_values(runs, "status")?;
    let group = str_values(runs, "group")?;
    let random = bool_values(runs, "random")?;
    let task = str_values(runs, "task")?;
    let label = str_values(runs, "label")?;
    let budget = i64_values(runs, "budget")?;
    let hash = str_values(runs, "config_hash")?;
    let maximal = str_values(runs, "maximal_hash")?;
    let wall = f64_values(runs, "wall_seconds")?;
    let steps = f64_values(runs, "steps")?;
    let eps = f64_values(runs, "examples_per_second")?;
    let done = |i: usize| status[i].as_deref() == Some("completed");
    let by_hash: HashMap<&str, usize> = (0..runs.height())
        .filter(|&i| done(i))
        .filter_map(|i| hash[i].as_deref().map(|h| (h, i)))
        .collect();
    type Key = ((usize, String), (u32, u32, String), Option<i64>, String);
    let mut pairs: BTreeMap<Key, Vec<(usize, usize)>> = BTreeMap::new();
    for i in 0..runs.height() {
        if !done(i) || group[i].as_deref() != Some("searched") || random[i] == Some(true) {
            continue;
        }
        let Some(&m) = maximal[i].as_deref().and_then(|h| by_hash.get(h)) else {
            continue;
        };
        let (Some(t), Some(l)) = (task[i].as_deref(), label[i].as_deref()) else {
            continue;
        };
        let key = (task_order(t), label_order(l), budget[i], l.to_string());
        pairs.entry(key).or_default().push((m, i));
    }
    let mut out = Vec::new();
    for ((_, _, b, l), ps) in pairs {
        let get = |v: &[Option<f64>], i: usize| v[i].unwrap_or(f64::NAN);
        let (m0, i0) = ps[0];
        out.push(SearchCost {
            task: task[i0].clone().unwrap_or_default(),
            label: l,
            budget: b,
            one_training: label[m0].clone().unwrap_or_default(),
            seeds: ps.len(),
            maximal_s: median(ps.iter().map(|&(m, _)| get(&wall, m)).collect()),
            retrain_s: median(ps.iter().map(|&(_, i)| get(&wall, i)).collect()),
            wall_ratio: median(
                ps.iter()
                    .map(|&(m, i)| (get(&wall, m) + get(&wall, i)) / get(&wall, m))
                    .collect(),
            ),
            steps_ratio: median(
                ps.iter()
                    .map(|&(m, i)| (get(&steps, m) + get(&steps, i)) / get(&steps, m))
                    .collect(),
            ),
            maximal_eps: median(ps.iter().map(|&(m, _)| get(&eps, m)).collect()),
            retrain_eps: median(ps.iter().map(|&(_, i)| get(&eps, i)).collect()),
        });
    }
    Ok(out)
}

fn budget_cell(b: Option<i64>) -> String {
    b.map(|b| crate::tables::humanize(b as f64))
        .unwrap_or_else(|| crate::tables::MISSING.to_string())
}

/// The search-cost table in markdown (empty when the sweep has no search with its maximal run).
pub fn markdown(costs: &[SearchCost]) -> String {
    if costs.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "| Task | Search | Budget | One training | Seeds | one training (s) | retraining (s) | search / one training (wall) | (steps) | ex/s one training / retraining |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in costs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.1} / {:.1} |",
            task_display(&c.task),
            c.label,
            budget_cell(c.budget),
            c.one_training,
            c.seeds,
            c.maximal_s,
            c.retrain_s,
            c.wall_ratio,
            c.steps_ratio,
            c.maximal_eps,
            c.retrain_eps,
        );
    }
    s.push_str(
        "\nMedians over seeds. A search is its maximal training (the one training it is compared \
         with, criterion accumulated), a pruning (one sort of the criterion's scores), and the \
         retraining of the pruned architecture; random architectures are left out. Wall times \
         are what each run measured: where other work shared the CPU they are longer, which the \
         examples/s show. The step ratio does not depend on load.\n",
    );
    s
}

/// The table as CSV.
pub fn csv(costs: &[SearchCost]) -> String {
    let mut s = String::from("task,search,budget,one_training,seeds,one_training_s,retrain_s,wall_ratio,steps_ratio,one_training_eps,retrain_eps\n");
    for c in costs {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.1},{:.1},{:.4},{:.4},{:.2},{:.2}",
            c.task,
            c.label,
            c.budget.map(|b| b.to_string()).unwrap_or_default(),
            c.one_training,
            c.seeds,
            c.maximal_s,
            c.retrain_s,
            c.wall_ratio,
            c.steps_ratio,
            c.maximal_eps,
            c.retrain_eps,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{modules, SynthRun};
    use petnas_core::{CriterionKind, PruneMode, RunRecord};
    use std::path::PathBuf;

    fn maximal(task: &str, seed: u64, wall: f64) -> RunRecord {
        let mut m = SynthRun::baseline(task, "search", seed, 0.8, 25_728);
        m.id = format!("{task}-bitfit-maximal-s{seed}");
        m.space = Some("bitfit".into());
        let mut r = m.record();
        r.config_hash = format!("max-{task}-{seed}");
        r.result.wall_seconds = wall;
        r
    }

    fn pruned(task: &str, seed: u64, crit: CriterionKind, wall: f64, of: &str) -> RunRecord {
        let mods = modules(6, false, |_, _| 0.2);
        let s = SynthRun::searched(
            task,
            "bitfit",
            PruneMode::Unstructured,
            5000,
            crit,
            seed,
            0.7,
            mods,
        );
        let mut r = s.record();
        r.spec.maximal_hash = Some(of.to_string());
        r.result.wall_seconds = wall;
        r.result.steps = 1000;
        r
    }

    #[test]
    fn a_search_pairs_each_seed_with_its_own_maximal_training() {
        // Seeds 0-2 on MRPC: maximal 100/200/300 s, retraining 50/100/600 s, so per-seed ratios
        // 1.5, 1.5, 3.0 (median 1.5) while the ratio of medians would be 2.0. A random
        // architecture and a run whose maximal training is missing are left out.
        let mut recs = Vec::new();
        for (seed, (mw, rw)) in [(100.0, 50.0), (200.0, 100.0), (300.0, 600.0)]
            .into_iter()
            .enumerate()
        {
            let seed = seed as u64;
            recs.push(maximal("mrpc", seed, mw));
            let of = format!("max-mrpc-{seed}");
            recs.push(pruned("mrpc", seed, CriterionKind::Mean, rw, &of));
            recs.push(pruned("mrpc", seed, CriterionKind::Random, 1.0, &of));
        }
        recs.push(pruned("rte", 0, CriterionKind::Mean, 10.0, "no-such-run"));
        let with_paths: Vec<(PathBuf, RunRecord)> = recs
            .into_iter()
            .map(|r| (PathBuf::from(format!("/x/{}/record.json", r.id)), r))
            .collect();
        let sweep = crate::load::build_frames(std::path::Path::new("/x"), &with_paths).unwrap();
        let costs = search_costs(&sweep).unwrap();
        assert_eq!(costs.len(), 1, "{costs:?}");
        let c = &costs[0];
        assert_eq!((c.task.as_str(), c.label.as_str()), ("mrpc", "U-BitFit"));
        assert_eq!(c.one_training, "BitFit");
        assert_eq!(c.seeds, 3);
        assert_eq!((c.maximal_s, c.retrain_s), (200.0, 100.0));
        assert_eq!(c.wall_ratio, 1.5);
        assert_eq!(c.steps_ratio, 2.0);
        let md = markdown(&costs);
        assert!(
            md.contains("| MRPC | U-BitFit | 5k | BitFit | 3 | 200 | 100 | 1.50× | 2.00× |"),
            "{md}"
        );
        assert!(csv(&costs)
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("mrpc,U-BitFit,5000,BitFit,3,"));
    }
}
