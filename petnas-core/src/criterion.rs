//! The pruning criterion, accumulated over training.
//!
//! Lawton et al. (2023), Section 3.2: removing parameter θ changes the loss by about −θ·∂L/∂θ
//! (first-order Taylor expansion), so each PET parameter is scored by that quantity averaged over
//! all training steps of the maximal architecture; structured groups sum it over the group
//! ([`crate::prune::prune`]). The accumulator sits outside the model: the training loop calls
//! [`CriterionAccumulator::observe`] between `backward()` and the optimiser step.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::rng::{counter_uniform, hash_str, mix64};
use crate::CoreError;

/// Version of the criterion safetensors file. Files without AdaLoRA's two averages (written
/// before they were added) still load; they cannot give [`CriterionKind::Adalora`] scores.
pub const CRITERION_VERSION: u32 = 1;

/// AdaLoRA's sensitivity smoothing factor β₁ (PEFT `AdaLoraConfig.beta1`, its default).
pub const ADALORA_BETA1: f64 = 0.85;
/// AdaLoRA's uncertainty smoothing factor β₂ (PEFT `AdaLoraConfig.beta2`, its default).
pub const ADALORA_BETA2: f64 = 0.85;

/// Which score to prune by.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CriterionKind {
    /// The paper's criterion: mean over steps of −θ·g.
    Mean,
    /// −θ·g at the last observed step only.
    Last,
    /// Mean over steps of |θ·g|.
    Abs,
    /// |θ| at the last observed step.
    Magnitude,
    /// Seeded uniform scores (a random-pruning baseline).
    Random,
    /// AdaLoRA's importance (Zhang et al., 2023, eq. 8–10), as PEFT's `RankAllocator` computes
    /// it each step: I = |θ·g|, Ī ← β₁Ī + (1−β₁)I, Ū ← β₂Ū + (1−β₂)|I − Ī|, score Ī·Ū.
    Adalora,
}

impl CriterionKind {
    /// All kinds.
    pub const ALL: [CriterionKind; 6] = [
        CriterionKind::Mean,
        CriterionKind::Last,
        CriterionKind::Abs,
        CriterionKind::Magnitude,
        CriterionKind::Random,
        CriterionKind::Adalora,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CriterionKind::Mean => "mean",
            CriterionKind::Last => "last",
            CriterionKind::Abs => "abs",
            CriterionKind::Magnitude => "magnitude",
            CriterionKind::Random => "random",
            CriterionKind::Adalora => "adalora",
        }
    }
}

impl std::str::FromStr for CriterionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CriterionKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown criterion {s:?}: expected one of {}",
                    <Self as crate::names::Named>::names()
                )
            })
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Acc {
    sum_neg: Vec<f64>,
    sum_abs: Vec<f64>,
    last_neg: Vec<f32>,
    last_theta: Vec<f32>,
    /// AdaLoRA's smoothed sensitivity Ī and uncertainty Ū (empty when loaded from a file that
    /// predates them).
    ema_ipt: Vec<f64>,
    ema_unc: Vec<f64>,
    steps: usize,
}

/// Running sums of −θ·g and |θ·g| per PET tensor, the last −θ·g and θ, and AdaLoRA's two
/// exponential averages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CriterionAccumulator {
    acc: BTreeMap<String, Acc>,
}

impl CriterionAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one step of tensor `name`: its values `theta` and gradient `grad` (same length,
    /// flattened row-major). The first call fixes the tensor's length.
    pub fn observe(&mut self, name: &str, theta: &[f32], grad: &[f32]) -> Result<(), CoreError> {
        if theta.len() != grad.len() {
            return Err(CoreError::LengthMismatch {
                name: format!("{name} (gradient vs value)"),
                expected: theta.len(),
                found: grad.len(),
            });
        }
        let n = theta.len();
        let a = match self.acc.get_mut(name) {
            Some(a) => a,
            None => self.acc.entry(name.to_string()).or_insert_with(|| Acc {
                sum_neg: vec![0.0; n],
                sum_abs: vec![0.0; n],
                last_neg: vec![0.0; n],
                last_theta: vec![0.0; n],
                ema_ipt: vec![0.0; n],
                ema_unc: vec![0.0; n],
                steps: 0,
            }),
        };
        if a.sum_neg.len() != n {
            return Err(CoreError::LengthMismatch {
                name: name.to_string(),
                expected: a.sum_neg.len(),
                found: n,
            });
        }
        if a.ema_ipt.len() != n {
            // Loaded from a file without AdaLoRA's averages: they cannot be resumed.
            return Err(CoreError::LengthMismatch {
                name: format!("{name} (AdaLoRA averages)"),
                expected: n,
                found: a.ema_ipt.len(),
            });
        }
        a.last_theta.copy_from_slice(theta);
        for (((((t, g), s), sa), l), (e, u)) in theta
            .iter()
            .zip(grad)
            .zip(a.sum_neg.iter_mut())
            .zip(a.sum_abs.iter_mut())
            .zip(a.last_neg.iter_mut())
            .zip(a.ema_ipt.iter_mut().zip(a.ema_unc.iter_mut()))
        {
            let p = -(*t as f64) * (*g as f64);
            *s += p;
            *sa += p.abs();
            *l = p as f32;
            // PEFT's order: the sensitivity average first, then the uncertainty against it.
            *e = ADALORA_BETA1 * *e + (1.0 - ADALORA_BETA1) * p.abs();
            *u = ADALORA_BETA2 * *u + (1.0 - ADALORA_BETA2) * (p.abs() - *e).abs();
        }
        a.steps += 1;
        Ok(())
    }

    /// Steps observed for `name` (0 if never observed).
    pub fn steps(&self, name: &str) -> usize {
        self.acc.get(name).map_or(0, |a| a.steps)
    }

    /// Names of the observed tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.acc.keys().map(String::as_str).collect()
    }

    /// Whether nothing was observed.
    pub fn is_empty(&self) -> bool {
        self.acc.is_empty()
    }

    /// Whether [`CriterionAccumulator::scores`] can give `kind`: every kind but AdaLoRA's
    /// always; AdaLoRA's unless the accumulator was loaded from a file that predates it.
    pub fn supports(&self, kind: CriterionKind) -> bool {
        kind != CriterionKind::Adalora
            || self
                .acc
                .values()
                .all(|a| a.ema_ipt.len() == a.sum_neg.len())
    }

    /// The score of every observed tensor under `kind`. Higher = more important (pruning
    /// removes the lowest first). `seed` only matters for [`CriterionKind::Random`], whose score
    /// of entry `i` of tensor `name` depends only on `(seed, name, i)`. AdaLoRA's scores need
    /// [`CriterionAccumulator::supports`]; without it they are empty.
    pub fn scores(&self, kind: CriterionKind, seed: u64) -> BTreeMap<String, Vec<f32>> {
        self.acc
            .iter()
            .map(|(name, a)| {
                let steps = a.steps.max(1) as f64;
                let v: Vec<f32> = match kind {
                    CriterionKind::Mean => a.sum_neg.iter().map(|s| (s / steps) as f32).collect(),
                    CriterionKind::Last => a.last_neg.clone(),
                    CriterionKind::Abs => a.sum_abs.iter().map(|s| (s / steps) as f32).collect(),
                    CriterionKind::Magnitude => a.last_theta.iter().map(|t| t.abs()).collect(),
                    CriterionKind::Random => {
                        let s = mix64(seed ^ hash_str(name));
                        (0..a.sum_neg.len() as u64)
                            .map(|i| counter_uniform(s, i))
                            .collect()
                    }
                    CriterionKind::Adalora => a
                        .ema_ipt
                        .iter()
                        .zip(&a.ema_unc)
                        .map(|(i, u)| (i * u) as f32)
                        .collect(),
                };
                (name.clone(), v)
            })
            .collect()
    }

    /// Writes the accumulator to a safetensors file (f64 sums, f32 last values, step counts in
    /// the metadata), atomically.
    pub fn save(&self, path: &Path) -> Result<(), CoreError> {
        let st_err = |e: safetensors::SafeTensorError| CoreError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut bufs: Vec<(String, Dtype, usize, Vec<u8>)> = Vec::new();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "petnas-criterion".to_string());
        meta.insert("version".to_string(), CRITERION_VERSION.to_string());
        for (name, a) in &self.acc {
            let n = a.sum_neg.len();
            bufs.push((
                format!("{name}::sum_neg"),
                Dtype::F64,
                n,
                a.sum_neg.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
            bufs.push((
                format!("{name}::sum_abs"),
                Dtype::F64,
                n,
                a.sum_abs.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
            bufs.push((
                format!("{name}::last_neg"),
                Dtype::F32,
                n,
                a.last_neg.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
            bufs.push((
                format!("{name}::last_theta"),
                Dtype::F32,
                n,
                a.last_theta.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
            if a.ema_ipt.len() == n {
                for (what, v) in [("ema_ipt", &a.ema_ipt), ("ema_unc", &a.ema_unc)] {
                    bufs.push((
                        format!("{name}::{what}"),
                        Dtype::F64,
                        n,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ));
                }
            }
            meta.insert(format!("steps::{name}"), a.steps.to_string());
        }
        let views = bufs
            .iter()
            .map(|(k, dt, n, b)| Ok((k.clone(), TensorView::new(*dt, vec![*n], b)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(st_err)?;
        let bytes = safetensors::serialize(views, Some(meta)).map_err(st_err)?;
        crate::io::write_atomic(path, &bytes)
    }

    /// Reads a file written by [`CriterionAccumulator::save`].
    pub fn load(path: &Path) -> Result<Self, CoreError> {
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        let bad = |message: String| CoreError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let (_, md) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = md.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some("petnas-criterion") {
            return Err(bad(
                "not a petnas criterion file (metadata format != petnas-criterion)".into(),
            ));
        }
        let found: u32 = meta
            .get("version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if found != CRITERION_VERSION {
            return Err(CoreError::Version {
                path: path.to_path_buf(),
                what: "criterion",
                found,
                supported: CRITERION_VERSION,
            });
        }
        let f64s = |name: &str| -> Result<Vec<f64>, CoreError> {
            let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
            if t.dtype() != Dtype::F64 {
                return Err(bad(format!("{name}: expected F64, found {}", t.dtype())));
            }
            Ok(t.data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect())
        };
        let f32s = |name: &str| -> Result<Vec<f32>, CoreError> {
            let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!("{name}: expected F32, found {}", t.dtype())));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
                .collect())
        };
        let mut acc = BTreeMap::new();
        for (key, steps) in &meta {
            let Some(name) = key.strip_prefix("steps::") else {
                continue;
            };
            let steps: usize = steps
                .parse()
                .map_err(|_| bad(format!("metadata {key} = {steps:?} is not a count")))?;
            let a = Acc {
                sum_neg: f64s(&format!("{name}::sum_neg"))?,
                sum_abs: f64s(&format!("{name}::sum_abs"))?,
                last_neg: f32s(&format!("{name}::last_neg"))?,
                last_theta: f32s(&format!("{name}::last_theta"))?,
                // Absent from files written before AdaLoRA's score was added.
                ema_ipt: match st.tensor(&format!("{name}::ema_ipt")) {
                    Ok(_) => f64s(&format!("{name}::ema_ipt"))?,
                    Err(_) => Vec::new(),
                },
                ema_unc: match st.tensor(&format!("{name}::ema_unc")) {
                    Ok(_) => f64s(&format!("{name}::ema_unc"))?,
                    Err(_) => Vec::new(),
                },
                steps,
            };
            let n = a.sum_neg.len();
            if a.ema_ipt.len() != a.ema_unc.len() {
                return Err(bad(format!(
                    "{name}: ema_ipt has {} entries, ema_unc {}",
                    a.ema_ipt.len(),
                    a.ema_unc.len()
                )));
            }
            let ema = if a.ema_ipt.is_empty() {
                n
            } else {
                a.ema_ipt.len()
            };
            for (what, len) in [
                ("sum_abs", a.sum_abs.len()),
                ("last_neg", a.last_neg.len()),
                ("last_theta", a.last_theta.len()),
                ("ema_ipt", ema),
            ] {
                if len != n {
                    return Err(bad(format!(
                        "{name}::{what} has {len} entries, sum_neg has {n}"
                    )));
                }
            }
            acc.insert(name.to_string(), a);
        }
        Ok(CriterionAccumulator { acc })
    }
}

/// Writes score tensors (e.g. from [`CriterionAccumulator::scores`]) to a safetensors file as
/// 1-D f32 tensors, atomically; for analysis of what the criterion preferred.
pub fn save_scores(path: &Path, scores: &BTreeMap<String, Vec<f32>>) -> Result<(), CoreError> {
    let st_err = |e: safetensors::SafeTensorError| CoreError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let bufs: Vec<(String, Vec<u8>, usize)> = scores
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                v.len(),
            )
        })
        .collect();
    let views = bufs
        .iter()
        .map(|(k, b, n)| Ok((k.clone(), TensorView::new(Dtype::F32, vec![*n], b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(st_err)?;
    let bytes = safetensors::serialize(views, None).map_err(st_err)?;
    crate::io::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> CriterionAccumulator {
        let mut c = CriterionAccumulator::new();
        // step 1: θ = [1, 2, -1], g = [0.5, -1, 2]  → −θg = [-0.5, 2, 2]
        c.observe("a", &[1.0, 2.0, -1.0], &[0.5, -1.0, 2.0])
            .unwrap();
        // step 2: θ = [2, -3, 0.5], g = [1, 1, -4] → −θg = [-2, 3, 2]
        c.observe("a", &[2.0, -3.0, 0.5], &[1.0, 1.0, -4.0])
            .unwrap();
        c.observe("b", &[4.0], &[0.25]).unwrap();
        c
    }

    #[test]
    fn criterion_math_on_hand_example() {
        let c = example();
        assert_eq!(c.steps("a"), 2);
        assert_eq!(c.steps("b"), 1);
        assert_eq!(c.steps("zzz"), 0);
        assert_eq!(c.scores(CriterionKind::Mean, 0)["a"], vec![-1.25, 2.5, 2.0]);
        assert_eq!(c.scores(CriterionKind::Last, 0)["a"], vec![-2.0, 3.0, 2.0]);
        assert_eq!(c.scores(CriterionKind::Abs, 0)["a"], vec![1.25, 2.5, 2.0]);
        assert_eq!(
            c.scores(CriterionKind::Magnitude, 0)["a"],
            vec![2.0, 3.0, 0.5]
        );
        assert_eq!(c.scores(CriterionKind::Mean, 0)["b"], vec![-1.0]);
    }

    #[test]
    fn random_scores_are_seeded() {
        let c = example();
        let r1 = c.scores(CriterionKind::Random, 1);
        assert_eq!(r1, c.scores(CriterionKind::Random, 1));
        assert_ne!(r1["a"], c.scores(CriterionKind::Random, 2)["a"]);
        assert!(r1["a"].iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut c = example();
        let e = c
            .observe("a", &[1.0, 2.0], &[1.0, 2.0])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"a\"") && e.contains("expected 3") && e.contains("got 2"),
            "{e}"
        );
        let e = c.observe("c", &[1.0, 2.0], &[1.0]).unwrap_err().to_string();
        assert!(e.contains("c (gradient vs value)"), "{e}");
        assert_eq!(c.steps("a"), 2, "a failed observe must not count");
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("criterion.safetensors");
        let c = example();
        c.save(&p).unwrap();
        let d = CriterionAccumulator::load(&p).unwrap();
        assert_eq!(c, d);
        assert_eq!(
            d.scores(CriterionKind::Mean, 0),
            c.scores(CriterionKind::Mean, 0)
        );
        std::fs::write(&p, b"garbage").unwrap();
        assert!(CriterionAccumulator::load(&p)
            .unwrap_err()
            .to_string()
            .contains("criterion.safetensors"));
        save_scores(&p, &c.scores(CriterionKind::Mean, 0)).unwrap();
        assert!(CriterionAccumulator::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not a petnas criterion"));
    }

    /// AdaLoRA's score against the numbers worked by hand from PEFT's `update_ipt` and
    /// `_element_score` (β₁ = β₂ = 0.85) over two steps.
    #[test]
    fn adalora_score_follows_peft_update_ipt() {
        let mut c = CriterionAccumulator::new();
        c.observe("a", &[1.0, 2.0], &[-0.5, 1.0]).unwrap();
        c.observe("a", &[1.0, 2.0], &[2.0, -1.0]).unwrap();
        // Step 1: I = [0.5, 2], Ī = [0.075, 0.3], Ū = 0.15·|I − Ī| = [0.06375, 0.255].
        // Step 2: I = [2, 2], Ī = [0.36375, 0.555], Ū = [0.299625, 0.4335].
        let got = &c.scores(CriterionKind::Adalora, 0)["a"];
        let want = [0.36375f64 * 0.299625, 0.555 * 0.4335];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{got:?} vs {want:?}");
        }
        assert!(c.supports(CriterionKind::Adalora));
    }

    /// A criterion file written before AdaLoRA's averages existed still loads and scores every
    /// other kind; it says it cannot give AdaLoRA's (so a resumed search trains again).
    #[test]
    fn criterion_file_without_adalora_averages_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = CriterionAccumulator::new();
        c.observe("a", &[1.0, 2.0], &[-0.5, 1.0]).unwrap();
        let mut old = c.clone();
        for a in old.acc.values_mut() {
            a.ema_ipt.clear();
            a.ema_unc.clear();
        }
        let p = dir.path().join("old.safetensors");
        old.save(&p).unwrap();
        let back = CriterionAccumulator::load(&p).unwrap();
        assert_eq!(back, old);
        assert!(!back.supports(CriterionKind::Adalora));
        assert!(back.supports(CriterionKind::Mean));
        assert_eq!(
            back.scores(CriterionKind::Mean, 0),
            c.scores(CriterionKind::Mean, 0)
        );
        let p2 = dir.path().join("new.safetensors");
        c.save(&p2).unwrap();
        assert_eq!(CriterionAccumulator::load(&p2).unwrap(), c);
    }
}
