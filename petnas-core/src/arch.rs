//! PET architectures as data: per module, which bias entries and which LoRA rank components
//! or entries are kept, with exact parameter counts.
//!
//! Lawton et al. (2023), Section 3: structured pruning keeps or drops whole bias vectors and
//! whole LoRA rank components (column k of U together with column k of V); unstructured pruning
//! keeps individual entries of Δb, U and V. An [`Architecture`] records the outcome so that it
//! can be retrained, analysed and plotted without the model code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::inventory::{
    bias_delta_name, inventory, lora_u_name, lora_v_name, EncoderConfig, Family, ModuleType,
};
pub use crate::mask::Mask;
use crate::space::SearchSpace;
use crate::CoreError;

/// Current version of `architecture.json`.
pub const ARCH_VERSION: u32 = 1;
/// File name used by [`Architecture::save`] inside a directory.
pub const ARCH_FILE: &str = "architecture.json";

/// Structured or unstructured pruning (paper Section 3.2).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PruneMode {
    /// Whole bias vectors and whole LoRA rank components.
    Structured,
    /// Individual entries of Δb, U and V.
    Unstructured,
}

/// What identifies a model for an architecture: an architecture saved for one model is rejected
/// for another.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelFingerprint {
    /// Encoder family.
    pub family: Family,
    /// Number of layers.
    pub num_layers: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// FFN inner size.
    pub intermediate_size: usize,
}

impl ModelFingerprint {
    /// The fingerprint of `cfg` (fails if the family is unknown).
    pub fn from_config(cfg: &EncoderConfig) -> Result<Self, CoreError> {
        Ok(ModelFingerprint {
            family: cfg.family()?,
            num_layers: cfg.num_hidden_layers,
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
        })
    }
}

/// The bias delta of a module. Absent (`None` in [`ModuleArch::bias`]) = no bias delta.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum BiasArch {
    /// Every entry kept.
    Full,
    /// Only the set entries kept (unstructured pruning; an all-zero mask is a structurally
    /// pruned vector).
    Masked(Mask),
}

/// The LoRA update of a module.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoraArch {
    /// Rank of the maximal architecture (columns of U and V).
    pub max_rank: usize,
    /// What is kept.
    pub keep: LoraKeep,
}

/// Kept part of a LoRA update.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum LoraKeep {
    /// Kept rank components, sorted (component k = column k of U and of V).
    Ranks(Vec<usize>),
    /// Kept entries: `u` over `in × max_rank` (index `i*max_rank + k`), `v` over
    /// `out × max_rank` (index `j*max_rank + k`).
    Entries {
        /// Mask of U, row-major `[in, r]`.
        u: Mask,
        /// Mask of V, row-major `[out, r]`.
        v: Mask,
    },
}

/// The PET updates of one module.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModuleArch {
    /// HF module path.
    pub path: String,
    /// Module type.
    pub module_type: ModuleType,
    /// Layer (None for the embeddings LayerNorm).
    pub layer: Option<usize>,
    /// Input dimension.
    pub in_dim: usize,
    /// Output dimension (bias length).
    pub out_dim: usize,
    /// Bias delta, if any.
    pub bias: Option<BiasArch>,
    /// LoRA update, if any.
    pub lora: Option<LoraArch>,
}

impl ModuleArch {
    /// Kept bias-delta entries.
    pub fn bias_kept(&self) -> usize {
        match &self.bias {
            None => 0,
            Some(BiasArch::Full) => self.out_dim,
            Some(BiasArch::Masked(m)) => m.count_ones(),
        }
    }

    /// Kept LoRA entries.
    pub fn lora_kept(&self) -> usize {
        match &self.lora {
            None => 0,
            Some(l) => match &l.keep {
                LoraKeep::Ranks(r) => r.len() * (self.in_dim + self.out_dim),
                LoraKeep::Entries { u, v } => u.count_ones() + v.count_ones(),
            },
        }
    }

    /// Rank components with at least one kept entry in both U and V (for `Ranks`, the kept ranks).
    pub fn kept_rank(&self) -> Option<usize> {
        let l = self.lora.as_ref()?;
        Some(match &l.keep {
            LoraKeep::Ranks(r) => r.len(),
            LoraKeep::Entries { u, v } => {
                let r = l.max_rank;
                let col = |m: &Mask, rows: usize, k: usize| (0..rows).any(|i| m.get(i * r + k));
                (0..r)
                    .filter(|&k| col(u, self.in_dim, k) && col(v, self.out_dim, k))
                    .count()
            }
        })
    }

    /// Bias mask at full shape `[out]`.
    pub fn bias_mask(&self) -> Option<Mask> {
        match &self.bias {
            None => None,
            Some(BiasArch::Full) => Some(Mask::new_full(self.out_dim)),
            Some(BiasArch::Masked(m)) => Some(m.clone()),
        }
    }

    /// U and V masks at full max-rank shapes `[in, r]`, `[out, r]`.
    pub fn lora_masks(&self) -> Option<(Mask, Mask)> {
        let l = self.lora.as_ref()?;
        let r = l.max_rank;
        Some(match &l.keep {
            LoraKeep::Ranks(ks) => {
                let mut keep = vec![false; r];
                for &k in ks {
                    if k < r {
                        keep[k] = true;
                    }
                }
                (
                    Mask::from_fn(self.in_dim * r, |i| keep[i % r]),
                    Mask::from_fn(self.out_dim * r, |i| keep[i % r]),
                )
            }
            LoraKeep::Entries { u, v } => (u.clone(), v.clone()),
        })
    }

    fn validate(&self) -> Result<(), CoreError> {
        let bad = |reason: String| CoreError::InvalidArch {
            module: self.path.clone(),
            reason,
        };
        if let Some(BiasArch::Masked(m)) = &self.bias {
            if m.len() != self.out_dim {
                return Err(bad(format!(
                    "bias mask has {} entries, out_dim is {}",
                    m.len(),
                    self.out_dim
                )));
            }
        }
        if let Some(l) = &self.lora {
            match &l.keep {
                LoraKeep::Ranks(ks) => {
                    if ks.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(bad(format!(
                            "kept ranks {ks:?} are not strictly increasing"
                        )));
                    }
                    if let Some(k) = ks.iter().find(|&&k| k >= l.max_rank) {
                        return Err(bad(format!("kept rank {k} >= max_rank {}", l.max_rank)));
                    }
                }
                LoraKeep::Entries { u, v } => {
                    if u.len() != self.in_dim * l.max_rank || v.len() != self.out_dim * l.max_rank {
                        return Err(bad(format!(
                            "LoRA masks have {} and {} entries, expected {} and {}",
                            u.len(),
                            v.len(),
                            self.in_dim * l.max_rank,
                            self.out_dim * l.max_rank
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Per-module parameter counts, for tables and figures.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModuleCount {
    /// HF module path.
    pub path: String,
    /// Module type.
    pub module_type: ModuleType,
    /// Layer (None for the embeddings LayerNorm).
    pub layer: Option<usize>,
    /// Kept bias-delta entries.
    pub bias_kept: usize,
    /// Bias-delta entries in the space (out_dim if the module has a bias delta, else 0).
    pub bias_total: usize,
    /// Kept LoRA entries (U and V).
    pub lora_kept: usize,
    /// LoRA entries at max rank (max_rank × (in + out)), 0 without LoRA.
    pub lora_total: usize,
    /// Kept (effective) rank, None without LoRA.
    pub kept_rank: Option<usize>,
    /// Max rank, None without LoRA.
    pub max_rank: Option<usize>,
}

/// A PET architecture: the maximal one of a search space, or a pruned one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Architecture {
    /// File format version ([`ARCH_VERSION`]).
    pub version: u32,
    /// The model it was made for.
    pub model: ModelFingerprint,
    /// Search-space name (preset or spec; [`SearchSpace::from_spec`] rebuilds it).
    pub space: String,
    /// Pruning mode; None for the unpruned maximal architecture.
    pub mode: Option<PruneMode>,
    /// The parameter budget pruned to, if pruned.
    pub budget: Option<usize>,
    /// Modules of the space, inventory order. Pruning keeps every module of the space, with
    /// pruned-away parts shown as all-zero masks or empty rank lists.
    pub modules: Vec<ModuleArch>,
}

impl Architecture {
    /// The unpruned architecture holding every PET tensor of `space`.
    pub fn maximal(space: &SearchSpace, cfg: &EncoderConfig) -> Result<Self, CoreError> {
        let inv = inventory(cfg);
        for p in space.bias.iter().chain(space.lora.iter().map(|(p, _)| p)) {
            if !inv.iter().any(|m| &m.path == p) {
                return Err(CoreError::UnknownModule {
                    space: space.name.clone(),
                    path: p.clone(),
                });
            }
        }
        let modules = inv
            .iter()
            .filter_map(|m| {
                let bias = space
                    .bias
                    .iter()
                    .any(|p| p == &m.path)
                    .then_some(BiasArch::Full);
                let lora = space
                    .lora
                    .iter()
                    .find(|(p, _)| p == &m.path)
                    .map(|&(_, r)| LoraArch {
                        max_rank: r,
                        keep: LoraKeep::Ranks((0..r).collect()),
                    });
                (bias.is_some() || lora.is_some()).then(|| ModuleArch {
                    path: m.path.clone(),
                    module_type: m.module_type,
                    layer: m.layer,
                    in_dim: m.in_dim,
                    out_dim: m.out_dim,
                    bias,
                    lora,
                })
            })
            .collect();
        Ok(Architecture {
            version: ARCH_VERSION,
            model: ModelFingerprint::from_config(cfg)?,
            space: space.name.clone(),
            mode: None,
            budget: None,
            modules,
        })
    }

    /// Exact number of kept PET parameters.
    pub fn pet_params(&self) -> usize {
        self.modules
            .iter()
            .map(|m| m.bias_kept() + m.lora_kept())
            .sum()
    }

    /// PET parameters of the space this architecture was pruned from (every tensor at full size).
    pub fn max_pet_params(&self) -> usize {
        self.module_counts()
            .iter()
            .map(|c| c.bias_total + c.lora_total)
            .sum()
    }

    /// Per-module counts, inventory order.
    pub fn module_counts(&self) -> Vec<ModuleCount> {
        self.modules
            .iter()
            .map(|m| ModuleCount {
                path: m.path.clone(),
                module_type: m.module_type,
                layer: m.layer,
                bias_kept: m.bias_kept(),
                bias_total: if m.bias.is_some() { m.out_dim } else { 0 },
                lora_kept: m.lora_kept(),
                lora_total: m
                    .lora
                    .as_ref()
                    .map_or(0, |l| l.max_rank * (m.in_dim + m.out_dim)),
                kept_rank: m.kept_rank(),
                max_rank: m.lora.as_ref().map(|l| l.max_rank),
            })
            .collect()
    }

    /// Fails with a message naming the differing field when `cfg` is not the model this
    /// architecture was made for, or when a module path or shape does not match it.
    pub fn check_model(&self, cfg: &EncoderConfig) -> Result<(), CoreError> {
        let fp = ModelFingerprint::from_config(cfg)?;
        let mismatch = |field: &str, a: String, m: String| {
            Err(CoreError::ModelMismatch {
                field: field.into(),
                arch: a,
                model: m,
            })
        };
        if fp.family != self.model.family {
            return mismatch(
                "family",
                format!("{:?}", self.model.family),
                format!("{:?}", fp.family),
            );
        }
        if fp.num_layers != self.model.num_layers {
            return mismatch(
                "num_layers",
                self.model.num_layers.to_string(),
                fp.num_layers.to_string(),
            );
        }
        if fp.hidden_size != self.model.hidden_size {
            return mismatch(
                "hidden_size",
                self.model.hidden_size.to_string(),
                fp.hidden_size.to_string(),
            );
        }
        if fp.intermediate_size != self.model.intermediate_size {
            return mismatch(
                "intermediate_size",
                self.model.intermediate_size.to_string(),
                fp.intermediate_size.to_string(),
            );
        }
        let inv = inventory(cfg);
        for m in &self.modules {
            match inv.iter().find(|i| i.path == m.path) {
                None => {
                    return mismatch(
                        &format!("module {}", m.path),
                        "present".into(),
                        "absent".into(),
                    )
                }
                Some(i) if (i.in_dim, i.out_dim) != (m.in_dim, m.out_dim) => {
                    return mismatch(
                        &format!("shape of {}", m.path),
                        format!("[{}→{}]", m.in_dim, m.out_dim),
                        format!("[{}→{}]", i.in_dim, i.out_dim),
                    )
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks internal consistency (mask lengths, rank indices).
    pub fn validate(&self) -> Result<(), CoreError> {
        self.modules.iter().try_for_each(ModuleArch::validate)
    }

    /// Writes `dir/architecture.json` atomically (masks inline, hex-packed). Returns nothing;
    /// see [`Architecture::save_file`] for another file name.
    pub fn save(&self, dir: &Path) -> Result<(), CoreError> {
        self.save_file(&dir.join(ARCH_FILE))
    }

    /// Writes the architecture as JSON to `path` atomically.
    pub fn save_file(&self, path: &Path) -> Result<(), CoreError> {
        crate::io::write_json_atomic(path, self, "architecture")
    }

    /// Reads an architecture from a directory (its `architecture.json`) or a file.
    pub fn load(dir_or_file: &Path) -> Result<Self, CoreError> {
        let path: PathBuf = if dir_or_file.is_dir() {
            dir_or_file.join(ARCH_FILE)
        } else {
            dir_or_file.to_path_buf()
        };
        let value: serde_json::Value = crate::io::read_json(&path)?;
        let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found != ARCH_VERSION {
            return Err(CoreError::Version {
                path,
                what: "architecture",
                found,
                supported: ARCH_VERSION,
            });
        }
        let arch: Architecture =
            serde_json::from_value(value).map_err(|source| CoreError::Json {
                path: path.clone(),
                source,
            })?;
        arch.validate()?;
        Ok(arch)
    }

    /// The 0/1 mask of every PET tensor present, at full max-rank shape, keyed by the
    /// [`bias_delta_name`] / [`lora_u_name`] / [`lora_v_name`] names. A tensor whose mask would
    /// be all zeros is absent (nothing to train); LoRA U and V are present or absent together.
    pub fn pet_masks(&self) -> BTreeMap<String, Vec<f32>> {
        let mut out = BTreeMap::new();
        for m in &self.modules {
            if let Some(b) = m.bias_mask() {
                if !b.none() {
                    out.insert(bias_delta_name(&m.path), b.to_f32());
                }
            }
            if let Some((u, v)) = m.lora_masks() {
                if !(u.none() && v.none()) {
                    out.insert(lora_u_name(&m.path), u.to_f32());
                    out.insert(lora_v_name(&m.path), v.to_f32());
                }
            }
        }
        out
    }

    /// The shape of every PET tensor of the space (present or not), keyed like [`Architecture::pet_masks`].
    pub fn pet_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let mut out = BTreeMap::new();
        for m in &self.modules {
            if m.bias.is_some() {
                out.insert(bias_delta_name(&m.path), vec![m.out_dim]);
            }
            if let Some(l) = &m.lora {
                out.insert(lora_u_name(&m.path), vec![m.in_dim, l.max_rank]);
                out.insert(lora_v_name(&m.path), vec![m.out_dim, l.max_rank]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::minilm;

    #[test]
    fn mask_bit_ops() {
        let mut m = Mask::new_empty(130);
        assert_eq!((m.len(), m.count_ones()), (130, 0));
        m.set(0, true);
        m.set(64, true);
        m.set(129, true);
        assert!(m.get(0) && m.get(64) && m.get(129) && !m.get(1) && !m.get(128));
        assert_eq!(m.count_ones(), 3);
        m.set(64, false);
        assert_eq!(m.count_ones(), 2);
        assert_eq!(m.ones().collect::<Vec<_>>(), vec![0, 129]);
        let f = Mask::new_full(130);
        assert_eq!(f.count_ones(), 130);
        assert!(f.all() && !f.none());
        assert_eq!(Mask::new_full(64).count_ones(), 64);
        assert_eq!(Mask::new_full(0).count_ones(), 0);
        let v = m.to_f32();
        assert_eq!(v.len(), 130);
        assert_eq!(v.iter().sum::<f32>(), 2.0);
        assert_eq!(v[129], 1.0);
        assert_eq!(
            Mask::from_fn(10, |i| i % 3 == 0).ones().collect::<Vec<_>>(),
            vec![0, 3, 6, 9]
        );
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn mask_get_out_of_range_panics() {
        Mask::new_full(5).get(5);
    }

    #[test]
    fn mask_serde_round_trip_and_errors() {
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let m = Mask::from_fn(len, |i| (i * 7) % 5 < 2);
            let s = serde_json::to_string(&m).unwrap();
            assert_eq!(
                serde_json::from_str::<Mask>(&s).unwrap(),
                m,
                "len {len}: {s}"
            );
        }
        let s = serde_json::to_string(&Mask::from_fn(12, |i| i == 0 || i == 9)).unwrap();
        assert_eq!(s, r#"{"len":12,"hex":"0102"}"#);
        assert!(serde_json::from_str::<Mask>(r#"{"len":12,"hex":"01"}"#)
            .unwrap_err()
            .to_string()
            .contains("hex digits"));
        assert!(serde_json::from_str::<Mask>(r#"{"len":4,"hex":"f0"}"#)
            .unwrap_err()
            .to_string()
            .contains("beyond"));
        assert!(serde_json::from_str::<Mask>(r#"{"len":4,"hex":"zz"}"#).is_err());
    }

    fn mam16() -> Architecture {
        let cfg = minilm();
        let space = SearchSpace::preset("mam16", &inventory(&cfg)).unwrap();
        Architecture::maximal(&space, &cfg).unwrap()
    }

    #[test]
    fn maximal_counts_match_space() {
        let cfg = minilm();
        let inv = inventory(&cfg);
        for name in ["bitfit", "lora", "mam", "mam16"] {
            let space = SearchSpace::preset(name, &inv).unwrap();
            let a = Architecture::maximal(&space, &cfg).unwrap();
            assert_eq!(a.pet_params(), space.pet_params(&inv), "{name}");
            assert_eq!(a.max_pet_params(), a.pet_params());
            let masks = a.pet_masks();
            let ones: f32 = masks.values().flatten().sum();
            assert_eq!(ones as usize, a.pet_params(), "{name}");
        }
        let a = mam16();
        assert_eq!(a.modules.len(), 49);
        let counts = a.module_counts();
        let q = &counts[1];
        assert_eq!(
            (q.bias_kept, q.lora_kept, q.kept_rank, q.max_rank),
            (384, 16 * 768, Some(16), Some(16))
        );
        assert_eq!(counts[0].kept_rank, None);
        let full =
            Architecture::maximal(&SearchSpace::preset("full", &inv).unwrap(), &cfg).unwrap();
        assert_eq!((full.modules.len(), full.pet_params()), (0, 0));
    }

    #[test]
    fn pet_masks_shapes_and_absence() {
        let mut a = mam16();
        let masks = a.pet_masks();
        let shapes = a.pet_shapes();
        assert_eq!(masks.len(), shapes.len());
        for (k, m) in &masks {
            assert_eq!(m.len(), shapes[k].iter().product::<usize>(), "{k}");
        }
        let q = "encoder.layer.0.attention.self.query";
        assert_eq!(masks[&lora_u_name(q)].len(), 384 * 16);
        // Keep ranks 1 and 3: U[i, k] kept iff k ∈ {1, 3}.
        a.modules[1].lora.as_mut().unwrap().keep = LoraKeep::Ranks(vec![1, 3]);
        a.modules[1].bias = Some(BiasArch::Masked(Mask::new_empty(384)));
        let masks = a.pet_masks();
        let u = &masks[&lora_u_name(q)];
        assert_eq!(
            &u[16..32],
            &[0., 1., 0., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.]
        );
        assert!(!masks.contains_key(&bias_delta_name(q)));
        a.modules[1].lora.as_mut().unwrap().keep = LoraKeep::Ranks(vec![]);
        let masks = a.pet_masks();
        assert!(!masks.contains_key(&lora_u_name(q)) && !masks.contains_key(&lora_v_name(q)));
        assert_eq!(a.module_counts()[1].lora_total, 16 * 768);
        assert_eq!(a.module_counts()[1].kept_rank, Some(0));
    }

    #[test]
    fn save_load_round_trip_with_masks() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = mam16();
        a.mode = Some(PruneMode::Unstructured);
        a.budget = Some(1000);
        a.modules[0].bias = Some(BiasArch::Masked(Mask::from_fn(384, |i| i % 5 == 0)));
        a.modules[1].lora.as_mut().unwrap().keep = LoraKeep::Entries {
            u: Mask::from_fn(384 * 16, |i| i % 7 == 0),
            v: Mask::from_fn(384 * 16, |i| i % 11 == 0),
        };
        a.modules[2].lora.as_mut().unwrap().keep = LoraKeep::Ranks(vec![0, 5]);
        a.save(dir.path()).unwrap();
        let b = Architecture::load(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(Architecture::load(&dir.path().join(ARCH_FILE)).unwrap(), a);
        assert_eq!(b.pet_params(), a.pet_params());
        let size = std::fs::metadata(dir.path().join(ARCH_FILE)).unwrap().len();
        assert!(size < 100_000, "architecture.json is {size} bytes");
    }

    #[test]
    fn load_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        let a = mam16();
        let mut v = serde_json::to_value(&a).unwrap();
        v["version"] = 99.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = Architecture::load(&p).unwrap_err().to_string();
        assert!(e.contains("version 99") && e.contains("a.json"), "{e}");
        let mut bad = a.clone();
        bad.modules[1].lora.as_mut().unwrap().keep = LoraKeep::Ranks(vec![3, 2]);
        bad.save_file(&p).unwrap();
        let e = Architecture::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("encoder.layer.0.attention.self.query") && e.contains("increasing"),
            "{e}"
        );
        std::fs::write(&p, "{\"version\":1,\"model\":3}").unwrap();
        assert!(Architecture::load(&p)
            .unwrap_err()
            .to_string()
            .contains("a.json"));
    }

    #[test]
    fn check_model_rejects_other_models() {
        let a = mam16();
        a.check_model(&minilm()).unwrap();
        let mut c = minilm();
        c.num_hidden_layers = 12;
        assert!(a
            .check_model(&c)
            .unwrap_err()
            .to_string()
            .contains("num_layers is 6"));
        let mut c = minilm();
        c.model_type = "roberta".into();
        assert!(a
            .check_model(&c)
            .unwrap_err()
            .to_string()
            .contains("family"));
        let tiny = EncoderConfig::tiny(Family::Bert);
        assert!(a.check_model(&tiny).is_err());
    }
}
