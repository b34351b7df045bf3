//! GLUE dev-set metrics, computed as the official GLUE evaluation (scikit-learn / SciPy) does.
//!
//! The paper reports each task's standard GLUE metric (§ experimental setup): Matthews correlation
//! for CoLA, accuracy and F1 for MRPC and QQP, Pearson and Spearman correlation for STS-B and
//! accuracy for the rest. [`glue_metrics`] returns them under lowercase keys (`"accuracy"`,
//! `"f1"`, `"mcc"`, `"pearson"`, `"spearman"`); [`Task::primary_metric`] names the one that
//! selects checkpoints.
//!
//! Degenerate inputs score 0 instead of NaN, so a collapsed model (every prediction the same
//! class or the same score) ranks below any informative one and run records stay valid JSON:
//! F1 without predicted or gold positives, MCC with a zero denominator (as scikit-learn) and
//! correlations of a constant series (SciPy would return NaN there). A NaN *prediction* still
//! propagates into the correlations, since it signals a diverged run.

use std::collections::BTreeMap;

use crate::glue::{Label, Task};

/// Model outputs for a whole dev set.
#[derive(Clone, Debug, PartialEq)]
pub enum Predictions {
    /// Predicted class ids (the argmax of the logits) for classification tasks.
    Classes(Vec<usize>),
    /// Predicted scores for the STS-B regression.
    Scores(Vec<f64>),
}

fn check_lengths(what: &str, a: usize, b: usize) {
    assert_eq!(
        a, b,
        "{what}: predictions and gold labels differ in length ({a} vs {b})"
    );
}

/// Fraction of predictions equal to the gold class; 0 for empty input.
///
/// # Panics
/// If the slices differ in length.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    check_lengths("accuracy", pred.len(), gold.len());
    if gold.is_empty() {
        return 0.0;
    }
    let correct = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    correct as f64 / gold.len() as f64
}

/// Binary F1 score with class 1 as the positive class (as GLUE scores MRPC and QQP):
/// `2·tp / (2·tp + fp + fn)`; 0 when there are neither predicted nor gold positives.
///
/// # Panics
/// If the slices differ in length.
pub fn f1(pred: &[usize], gold: &[usize]) -> f64 {
    check_lengths("f1", pred.len(), gold.len());
    let (mut tp, mut fp, mut fne) = (0u64, 0u64, 0u64);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fne += 1,
            (false, false) => {}
        }
    }
    let denom = 2 * tp + fp + fne;
    if denom == 0 {
        0.0
    } else {
        (2 * tp) as f64 / denom as f64
    }
}

/// Matthews correlation coefficient, computed as scikit-learn's `matthews_corrcoef`: for two
/// classes `(tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))`, and its multiclass
/// generalisation otherwise. 0 when the denominator is 0 (all predictions or all gold labels
/// in one class) or the input is empty.
///
/// # Panics
/// If the slices differ in length.
pub fn matthews_corr(pred: &[usize], gold: &[usize]) -> f64 {
    check_lengths("matthews_corr", pred.len(), gold.len());
    // Per class: (gold count, predicted count).
    let mut counts: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    let mut correct = 0.0;
    for (&p, &g) in pred.iter().zip(gold) {
        counts.entry(g).or_default().0 += 1.0;
        counts.entry(p).or_default().1 += 1.0;
        if p == g {
            correct += 1.0;
        }
    }
    let n = gold.len() as f64;
    let t_dot_p: f64 = counts.values().map(|(t, p)| t * p).sum();
    let t_dot_t: f64 = counts.values().map(|(t, _)| t * t).sum();
    let p_dot_p: f64 = counts.values().map(|(_, p)| p * p).sum();
    let cov_ytyp = correct * n - t_dot_p;
    let cov_ypyp = n * n - p_dot_p;
    let cov_ytyt = n * n - t_dot_t;
    let denom = cov_ytyt * cov_ypyp;
    if denom == 0.0 {
        0.0
    } else {
        cov_ytyp / denom.sqrt()
    }
}

/// Macro-averaged F1 over `classes` classes, as scikit-learn's `f1_score(average="macro")` with
/// `labels=range(classes)`: the unweighted mean of each class's one-vs-rest F1 (0 for a class
/// with neither predicted nor gold examples).
///
/// # Panics
/// If the slices differ in length.
pub fn macro_f1(pred: &[usize], gold: &[usize], classes: usize) -> f64 {
    check_lengths("macro_f1", pred.len(), gold.len());
    if classes == 0 {
        return 0.0;
    }
    let mut sum = 0.0;
    for c in 0..classes {
        let (mut tp, mut fp, mut fne) = (0u64, 0u64, 0u64);
        for (&p, &g) in pred.iter().zip(gold) {
            match (p == c, g == c) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fne += 1,
                _ => {}
            }
        }
        let d = 2 * tp + fp + fne;
        if d > 0 {
            sum += (2 * tp) as f64 / d as f64;
        }
    }
    sum / classes as f64
}

/// Pearson correlation coefficient (SciPy's `pearsonr` statistic), clamped to `[-1, 1]`.
/// 0 for fewer than two points or a constant series; NaN if an input is NaN.
///
/// # Panics
/// If the slices differ in length.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    check_lengths("pearson", x.len(), y.len());
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxy.is_nan() || sxx.is_nan() || syy.is_nan() {
        return f64::NAN;
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Spearman rank correlation (SciPy's `spearmanr` statistic): the Pearson correlation of the
/// ranks, tied values sharing their average rank. 0 for fewer than two points or a constant
/// series; NaN if an input is NaN.
///
/// # Panics
/// If the slices differ in length.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    check_lengths("spearman", x.len(), y.len());
    if x.iter().chain(y).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// 1-based ranks, ties sharing the mean of the ranks they span (SciPy's `rankdata(method="average")`).
fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        // `==` rather than `total_cmp` so that 0.0 and -0.0 tie, as in SciPy.
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1 ..= end; their mean is (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// The GLUE metrics of a task's dev predictions, keyed by lowercase name:
///
/// | task | keys |
/// |---|---|
/// | CoLA | `mcc`, `accuracy` |
/// | MRPC, QQP | `accuracy`, `f1` |
/// | STS-B | `pearson`, `spearman` |
/// | others | `accuracy` |
///
/// # Panics
/// If the prediction kind does not fit the task (scores for STS-B, classes otherwise), a gold
/// label has the wrong kind, or predictions and gold labels differ in length. These are
/// programming errors in the caller, not data errors: [`crate::glue::load`] only produces
/// labels of the task's kind.
pub fn glue_metrics(task: Task, pred: &Predictions, gold: &[Label]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if task.is_regression() {
        let Predictions::Scores(pred) = pred else {
            panic!("glue_metrics: {task} is a regression task and needs Predictions::Scores");
        };
        let gold: Vec<f64> = gold
            .iter()
            .map(|l| match l {
                Label::Score(s) => f64::from(*s),
                Label::Class(c) => {
                    panic!("glue_metrics: class label {c} in regression task {task}")
                }
            })
            .collect();
        out.insert("pearson".to_string(), pearson(pred, &gold));
        out.insert("spearman".to_string(), spearman(pred, &gold));
        return out;
    }
    let Predictions::Classes(pred) = pred else {
        panic!("glue_metrics: {task} is a classification task and needs Predictions::Classes");
    };
    let gold: Vec<usize> = gold
        .iter()
        .map(|l| match l {
            Label::Class(c) => *c,
            Label::Score(s) => {
                panic!("glue_metrics: score label {s} in classification task {task}")
            }
        })
        .collect();
    out.insert("accuracy".to_string(), accuracy(pred, &gold));
    match task {
        Task::Cola => {
            out.insert("mcc".to_string(), matthews_corr(pred, &gold));
        }
        Task::Mrpc | Task::Qqp => {
            out.insert("f1".to_string(), f1(pred, &gold));
        }
        _ => {}
    }
    out
}

/// The metrics of any task: a GLUE task's as [`glue_metrics`] computes them, a user task's as its
/// definition lists them.
///
/// # Panics
/// As [`glue_metrics`], if predictions or labels do not fit the task's kind.
pub fn task_metrics(
    task: &crate::task::TaskInfo,
    pred: &Predictions,
    gold: &[Label],
) -> BTreeMap<String, f64> {
    use petnas_core::task::Metric;
    if let Some(t) = task.glue_task() {
        return glue_metrics(t, pred, gold);
    }
    let mut out = BTreeMap::new();
    match pred {
        Predictions::Scores(p) => {
            let g: Vec<f64> = gold
                .iter()
                .map(|l| match l {
                    Label::Score(s) => f64::from(*s),
                    Label::Class(c) => panic!("task_metrics: class label {c} in a regression task"),
                })
                .collect();
            for m in &task.def.metrics {
                let v = match m {
                    Metric::Pearson => pearson(p, &g),
                    Metric::Spearman => spearman(p, &g),
                    other => panic!("task_metrics: {} on a regression task", other.as_str()),
                };
                out.insert(m.as_str().to_string(), v);
            }
        }
        Predictions::Classes(p) => {
            let g: Vec<usize> = gold
                .iter()
                .map(|l| match l {
                    Label::Class(c) => *c,
                    Label::Score(s) => {
                        panic!("task_metrics: score label {s} in a classification task")
                    }
                })
                .collect();
            for m in &task.def.metrics {
                let v = match m {
                    Metric::Accuracy => accuracy(p, &g),
                    Metric::F1 => f1(p, &g),
                    Metric::MacroF1 => macro_f1(p, &g, task.num_labels()),
                    Metric::Mcc => matthews_corr(p, &g),
                    other => panic!("task_metrics: {} on a classification task", other.as_str()),
                };
                out.insert(m.as_str().to_string(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_matches_scikit_learn() {
        // sklearn.metrics.f1_score([0,1,2,0,1,2], [0,2,1,0,0,1], average="macro") = 0.26666...
        let gold = [0, 1, 2, 0, 1, 2];
        let pred = [0, 2, 1, 0, 0, 1];
        assert!((macro_f1(&pred, &gold, 3) - 0.8 / 3.0).abs() < 1e-12);
        // Two classes: the mean of both classes' F1, not the binary F1 of class 1.
        let gold = [1, 1, 0, 0];
        let pred = [1, 0, 0, 0];
        assert!((macro_f1(&pred, &gold, 2) - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            assert!(close(a, b), "{} = {a}, expected {b}", stringify!($a));
        }};
    }

    // Reference values below come from scikit-learn 1.9.1 / SciPy 1.17.1:
    //   python3 -c "from sklearn.metrics import matthews_corrcoef as m, f1_score as f; \
    //     from scipy.stats import pearsonr, spearmanr; print(m(g, p), f(g, p), ...)"
    // with the same vectors.
    const G20: [usize; 20] = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1];
    const P20: [usize; 20] = [0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1];

    #[test]
    fn accuracy_counts_matches() {
        assert_close!(accuracy(&[1, 0, 1, 1], &[1, 1, 1, 0]), 0.5);
        assert_close!(accuracy(&P20, &G20), 0.75);
        assert_close!(accuracy(&[2, 1, 0], &[2, 1, 0]), 1.0);
        assert_close!(accuracy(&[], &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn length_mismatch_panics() {
        accuracy(&[1, 0], &[1]);
    }

    #[test]
    fn f1_positive_class_is_one() {
        // tp = 2, fp = 1, fn = 1: precision = recall = 2/3.
        assert_close!(f1(&[1, 0, 1, 1], &[1, 1, 1, 0]), 2.0 / 3.0);
        assert_close!(f1(&P20, &G20), 0.782608695652174);
        // Swapping the roles of the classes changes F1 (class 0 is not the positive class).
        let flip = |v: &[usize]| v.iter().map(|&x| 1 - x).collect::<Vec<_>>();
        // Class 0 as positive: tp = 6, fp = 3, fn = 2 -> 12/17 (sklearn pos_label=0: 0.70588...).
        assert_close!(f1(&flip(&P20), &flip(&G20)), 12.0 / 17.0);
        // Undefined (no predicted and no gold positives) -> 0, as sklearn with zero_division=0.
        assert_close!(f1(&[0, 0], &[0, 0]), 0.0);
        // No predicted positives but gold positives: recall 0 -> F1 0.
        assert_close!(f1(&[0, 0, 0], &[1, 0, 1]), 0.0);
        assert_close!(f1(&[1, 1], &[1, 1]), 1.0);
    }

    #[test]
    fn mcc_matches_sklearn() {
        // sklearn's documentation example ([+1,+1,+1,-1] vs [+1,-1,+1,+1]) = -1/3.
        assert_close!(matthews_corr(&[1, 0, 1, 1], &[1, 1, 1, 0]), -1.0 / 3.0);
        assert_close!(matthews_corr(&P20, &G20), 0.4923659639173309);
        assert_close!(matthews_corr(&G20, &G20), 1.0);
        let inverted: Vec<usize> = G20.iter().map(|&x| 1 - x).collect();
        assert_close!(matthews_corr(&inverted, &G20), -1.0);
        // Symmetric in its arguments.
        assert_close!(matthews_corr(&G20, &P20), matthews_corr(&P20, &G20));
        // Multiclass generalisation, sklearn: 0.5.
        assert_close!(matthews_corr(&[0, 2, 2, 1, 1, 0], &[0, 1, 2, 2, 1, 0]), 0.5);
    }

    #[test]
    fn mcc_degenerate_is_zero() {
        // All predictions one class (a collapsed model): denominator 0.
        assert_close!(matthews_corr(&[1, 1, 1, 1], &[0, 1, 0, 1]), 0.0);
        // All gold labels one class.
        assert_close!(matthews_corr(&[0, 1, 0], &[1, 1, 1]), 0.0);
        // Both constant and equal.
        assert_close!(matthews_corr(&[1, 1, 1], &[1, 1, 1]), 0.0);
        assert_close!(matthews_corr(&[], &[]), 0.0);
    }

    #[test]
    fn mcc_hand_computed_from_the_confusion_matrix() {
        // tp = 3, tn = 2, fp = 1, fn = 2:
        // (3·2 − 1·2) / sqrt(4·5·3·4) = 4 / sqrt(240).
        let gold = [1, 1, 1, 1, 1, 0, 0, 0];
        let pred = [1, 1, 1, 0, 0, 0, 0, 1];
        assert_close!(matthews_corr(&pred, &gold), 4.0 / 240f64.sqrt());
    }

    #[test]
    fn pearson_matches_scipy() {
        // SciPy's documentation example.
        assert_close!(
            pearson(&[1.0, 2.0, 3.0, 4.0, 5.0], &[10.0, 9.0, 2.5, 6.0, 4.0]),
            -0.7426106572325057
        );
        let x = [1.2, -0.3, 4.4, 2.1, 0.0, 3.3, 2.2, 5.0, 1.1, 0.7];
        let y = [0.8, 0.1, 3.9, 2.5, 0.2, 2.9, 1.0, 4.6, 1.7, 0.3];
        assert_close!(pearson(&x, &y), 0.9526634495055708);
        // Invariant under positive affine maps; exact ±1 for linear relations.
        let y2: Vec<f64> = x.iter().map(|v| 3.0 * v - 7.0).collect();
        assert_close!(pearson(&x, &y2), 1.0);
        let y3: Vec<f64> = x.iter().map(|v| -0.5 * v + 2.0).collect();
        assert_close!(pearson(&x, &y3), -1.0);
    }

    #[test]
    fn correlations_of_degenerate_input_are_zero_and_nan_propagates() {
        assert_close!(pearson(&[2.0, 2.0, 2.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_close!(spearman(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), 0.0);
        assert_close!(pearson(&[1.0], &[2.0]), 0.0);
        assert_close!(spearman(&[], &[]), 0.0);
        assert!(pearson(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]).is_nan());
        assert!(spearman(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]).is_nan());
    }

    #[test]
    fn spearman_matches_scipy_with_ties() {
        // SciPy's documentation example: a tie (two 7s) in y.
        assert_close!(
            spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]),
            0.8207826816681233
        );
        // Ties in both series.
        let x = [0.5, 2.0, 2.0, 3.5, 1.0, 2.0, 4.0, 4.0];
        let y = [1.0, 3.0, 2.0, 3.0, 0.0, 5.0, 4.5, 3.0];
        assert_close!(spearman(&x, &y), 0.654100987054616);
        assert_close!(pearson(&x, &y), 0.6402292380930503);
        // No ties.
        let x = [1.2, -0.3, 4.4, 2.1, 0.0, 3.3, 2.2, 5.0, 1.1, 0.7];
        let y = [0.8, 0.1, 3.9, 2.5, 0.2, 2.9, 1.0, 4.6, 1.7, 0.3];
        assert_close!(spearman(&x, &y), 0.9393939393939393);
        // Monotone but nonlinear: Spearman 1, Pearson below 1.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y: Vec<f64> = x.iter().map(|v: &f64| v.powi(4)).collect();
        assert_close!(spearman(&x, &y), 1.0);
        assert!(pearson(&x, &y) < 0.99);
    }

    #[test]
    fn average_ranks_match_rankdata() {
        // scipy.stats.rankdata([0.5, 2, 2, 3.5, 1, 2, 4, 4]) = [1, 4, 4, 6, 2, 4, 7.5, 7.5]
        assert_eq!(
            average_ranks(&[0.5, 2.0, 2.0, 3.5, 1.0, 2.0, 4.0, 4.0]),
            [1.0, 4.0, 4.0, 6.0, 2.0, 4.0, 7.5, 7.5]
        );
        assert_eq!(average_ranks(&[3.0, 3.0, 3.0]), [2.0, 2.0, 2.0]);
        assert_eq!(average_ranks(&[0.0, -0.0, 1.0]), [1.5, 1.5, 3.0]);
    }

    #[test]
    fn glue_metrics_keys_per_task() {
        let gold: Vec<Label> = G20.iter().map(|&c| Label::Class(c)).collect();
        let pred = Predictions::Classes(P20.to_vec());

        let cola = glue_metrics(Task::Cola, &pred, &gold);
        assert_eq!(cola.keys().collect::<Vec<_>>(), ["accuracy", "mcc"]);
        assert_close!(cola["mcc"], 0.4923659639173309);
        assert_close!(cola["accuracy"], 0.75);

        for task in [Task::Mrpc, Task::Qqp] {
            let m = glue_metrics(task, &pred, &gold);
            assert_eq!(m.keys().collect::<Vec<_>>(), ["accuracy", "f1"], "{task}");
            assert_close!(m["f1"], 0.782608695652174);
        }
        for task in [Task::Sst2, Task::Qnli, Task::Rte, Task::Mnli, Task::MnliMm] {
            let m = glue_metrics(task, &pred, &gold);
            assert_eq!(m.keys().collect::<Vec<_>>(), ["accuracy"], "{task}");
            assert_close!(m["accuracy"], 0.75);
        }
        let mnli = glue_metrics(
            Task::Mnli,
            &Predictions::Classes(vec![0, 1, 2, 2]),
            &[
                Label::Class(0),
                Label::Class(1),
                Label::Class(2),
                Label::Class(0),
            ],
        );
        assert_close!(mnli["accuracy"], 0.75);

        let gold: Vec<Label> = [5.0f32, 6.0, 7.0, 8.0, 7.0]
            .iter()
            .map(|&s| Label::Score(s))
            .collect();
        let m = glue_metrics(
            Task::Stsb,
            &Predictions::Scores(vec![1.0, 2.0, 3.0, 4.0, 5.0]),
            &gold,
        );
        assert_eq!(m.keys().collect::<Vec<_>>(), ["pearson", "spearman"]);
        assert_close!(m["spearman"], 0.8207826816681233);
        assert_close!(m["pearson"], 0.8320502943378436);
        // Every task's primary metric is among its keys.
        for task in Task::ALL {
            let m = if task.is_regression() {
                glue_metrics(
                    task,
                    &Predictions::Scores(vec![1.0, 2.0]),
                    &[Label::Score(1.0), Label::Score(2.0)],
                )
            } else {
                glue_metrics(
                    task,
                    &Predictions::Classes(vec![0, 1]),
                    &[Label::Class(0), Label::Class(1)],
                )
            };
            assert!(m.contains_key(task.primary_metric()), "{task}");
        }
    }

    #[test]
    #[should_panic(expected = "needs Predictions::Scores")]
    fn glue_metrics_rejects_classes_for_stsb() {
        glue_metrics(
            Task::Stsb,
            &Predictions::Classes(vec![1]),
            &[Label::Score(1.0)],
        );
    }
}
