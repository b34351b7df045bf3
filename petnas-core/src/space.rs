//! Search spaces: which bias deltas and LoRA factors the maximal PET architecture holds.
//!
//! Lawton et al. (2023), Section 3.1 and Section 4: the search starts from all bias vectors
//! plus rank-16 LoRA on the query, key, intermediate and output modules ("mam16"); the
//! hand-designed baselines (BitFit, LoRA, MaM-style) are subsets of that space.
//!
//! # Spec grammar ([`SearchSpace::from_spec`])
//!
//! ```text
//! spec    := preset | clause (';' clause)*
//! preset  := full | bitfit | lora | mam | mam16
//! clause  := 'bias=' types | 'lora=' types '@' rank | 'layers=' layers
//! types   := 'all' | 'none' | type (',' type)*          type: ModuleType name or alias
//! layers  := item (',' item)*     item: N | N-M (inclusive) | 'emb' (the embeddings LayerNorm)
//! ```
//!
//! `bias=all` means every bias vector, `lora=all@r` every linear module. A `layers` clause
//! restricts both bias and LoRA; the embeddings LayerNorm (which has no layer) is kept by it only
//! if `emb` is listed. Example: `bias=all;lora=query,key,intermediate,output@16;layers=2-5`.
//! The space's `name` is the preset name or the spec text, so `from_spec(&space.name)` rebuilds it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::inventory::{EncoderConfig, ModuleInfo, ModuleKind, ModuleType};
use crate::CoreError;

/// The preset names accepted by [`SearchSpace::preset`].
pub const PRESETS: [&str; 5] = ["full", "bitfit", "lora", "mam", "mam16"];

/// The PET tensors of a maximal architecture.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchSpace {
    /// Preset name or the spec text it was parsed from.
    pub name: String,
    /// Full fine-tuning: no PET tensors, every encoder weight trains.
    pub full_finetune: bool,
    /// Module paths with a bias delta, inventory order.
    pub bias: Vec<String>,
    /// `(path, max rank)` of modules with LoRA, inventory order.
    pub lora: Vec<(String, usize)>,
}

const LORA_TYPES: [ModuleType; 2] = [ModuleType::Query, ModuleType::Key];
const MAM_TYPES: [ModuleType; 4] = [
    ModuleType::Query,
    ModuleType::Key,
    ModuleType::Intermediate,
    ModuleType::Output,
];

impl SearchSpace {
    /// A named preset: `full`, `bitfit` (all biases), `lora` (all biases + rank 8 on query and
    /// key), `mam` (all biases + rank 8 on query, key, intermediate, output), `mam16` (as `mam`
    /// with rank 16: the paper's search start).
    pub fn preset(name: &str, inv: &[ModuleInfo]) -> Result<Self, CoreError> {
        let all_bias: BTreeSet<ModuleType> = ModuleType::ALL.into_iter().collect();
        let (bias, lora, rank): (BTreeSet<ModuleType>, &[ModuleType], usize) = match name {
            "full" => {
                return Ok(SearchSpace {
                    name: name.to_string(),
                    full_finetune: true,
                    bias: vec![],
                    lora: vec![],
                });
            }
            "bitfit" => (all_bias, &[], 0),
            "lora" => (all_bias, &LORA_TYPES, 8),
            "mam" => (all_bias, &MAM_TYPES, 8),
            "mam16" => (all_bias, &MAM_TYPES, 16),
            _ => {
                return Err(CoreError::UnknownPreset {
                    name: name.to_string(),
                    valid: PRESETS.join(", "),
                });
            }
        };
        let lora: BTreeSet<ModuleType> = lora.iter().copied().collect();
        Ok(Self::build(name, inv, &bias, &lora, rank, None))
    }

    fn build(
        name: &str,
        inv: &[ModuleInfo],
        bias: &BTreeSet<ModuleType>,
        lora: &BTreeSet<ModuleType>,
        rank: usize,
        layers: Option<&LayerFilter>,
    ) -> Self {
        let keep = |m: &ModuleInfo| layers.is_none_or(|f| f.admits(m.layer));
        SearchSpace {
            name: name.to_string(),
            full_finetune: false,
            bias: inv
                .iter()
                .filter(|m| bias.contains(&m.module_type) && keep(m))
                .map(|m| m.path.clone())
                .collect(),
            lora: if rank == 0 {
                vec![]
            } else {
                inv.iter()
                    .filter(|m| {
                        m.kind == ModuleKind::Linear && lora.contains(&m.module_type) && keep(m)
                    })
                    .map(|m| (m.path.clone(), rank))
                    .collect()
            },
        }
    }

    /// Parses a preset name or a user spec (grammar in the module docs).
    pub fn from_spec(spec: &str, inv: &[ModuleInfo]) -> Result<Self, CoreError> {
        let text = spec.trim();
        if PRESETS.contains(&text) {
            return Self::preset(text, inv);
        }
        let bad = |reason: String| CoreError::BadSpec {
            spec: spec.to_string(),
            reason,
        };
        let Clauses { bias, lora, layers } = Clauses::parse(spec)?;
        if let Some(f) = &layers {
            let n = inv
                .iter()
                .filter_map(|m| m.layer)
                .max()
                .map_or(0, |l| l + 1);
            if let Some(bad_layer) = f.layers.iter().find(|&&l| l >= n) {
                return Err(bad(format!(
                    "layer {bad_layer} does not exist (the model has {n} layers)"
                )));
            }
        }
        let (lora_types, rank) = lora.unwrap_or_default();
        Ok(Self::build(
            text,
            inv,
            &bias.unwrap_or_default(),
            &lora_types,
            rank,
            layers.as_ref(),
        ))
    }

    /// Number of PET parameters of the maximal architecture (0 for full fine-tuning; see
    /// [`SearchSpace::trained_params`]). Paths missing from `inv` count 0; [`crate::Architecture::maximal`]
    /// rejects them.
    pub fn pet_params(&self, inv: &[ModuleInfo]) -> usize {
        let find = |p: &str| inv.iter().find(|m| m.path == p);
        let bias: usize = self
            .bias
            .iter()
            .filter_map(|p| find(p))
            .map(|m| m.out_dim)
            .sum();
        let lora: usize = self
            .lora
            .iter()
            .filter_map(|(p, r)| find(p).map(|m| r * (m.in_dim + m.out_dim)))
            .sum();
        bias + lora
    }

    /// Parameters trained besides the head: all encoder parameters for `full`, else the PET count.
    pub fn trained_params(&self, cfg: &EncoderConfig) -> usize {
        if self.full_finetune {
            cfg.encoder_params()
        } else {
            self.pet_params(&crate::inventory::inventory(cfg))
        }
    }
}

/// The clauses of a space spec (`bias=…; lora=…@r; layers=…`), parsed without a model.
struct Clauses {
    bias: Option<BTreeSet<ModuleType>>,
    lora: Option<(BTreeSet<ModuleType>, usize)>,
    layers: Option<LayerFilter>,
}

impl Clauses {
    fn parse(spec: &str) -> Result<Clauses, CoreError> {
        let bad = |reason: String| CoreError::BadSpec {
            spec: spec.to_string(),
            reason,
        };
        let text = spec.trim();
        let mut bias: Option<BTreeSet<ModuleType>> = None;
        let mut lora: Option<(BTreeSet<ModuleType>, usize)> = None;
        let mut layers: Option<LayerFilter> = None;
        for clause in text.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (key, value) = clause.split_once('=').ok_or_else(|| {
                bad(format!(
                    "clause {clause:?} is not key=value (keys: bias, lora, layers; or a preset: {})",
                    PRESETS.join(", ")
                ))
            })?;
            let (key, value) = (key.trim(), value.trim());
            let dup = |k: &str| bad(format!("clause {k:?} given twice"));
            match key {
                "bias" => {
                    if bias.is_some() {
                        return Err(dup(key));
                    }
                    bias = Some(
                        parse_types(value, false)
                            .map_err(|r| bad(format!("in {clause:?}: {r}")))?,
                    );
                }
                "lora" => {
                    if lora.is_some() {
                        return Err(dup(key));
                    }
                    let (types, rank) = match value.rsplit_once('@') {
                        Some((t, r)) => {
                            let rank: usize = r.trim().parse().map_err(|_| {
                                bad(format!(
                                    "in {clause:?}: rank {:?} is not a positive integer",
                                    r.trim()
                                ))
                            })?;
                            if rank == 0 {
                                return Err(bad(format!("in {clause:?}: rank must be at least 1")));
                            }
                            (t, rank)
                        }
                        None if value == "none" => (value, 1),
                        None => {
                            return Err(bad(format!(
                                "in {clause:?}: missing '@rank', e.g. lora=query,key@8"
                            )))
                        }
                    };
                    let types =
                        parse_types(types, true).map_err(|r| bad(format!("in {clause:?}: {r}")))?;
                    lora = Some((types, rank));
                }
                "layers" => {
                    if layers.is_some() {
                        return Err(dup(key));
                    }
                    layers = Some(
                        LayerFilter::parse(value)
                            .map_err(|r| bad(format!("in {clause:?}: {r}")))?,
                    );
                }
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (keys: bias, lora, layers)"
                    )))
                }
            }
        }
        if bias.is_none() && lora.is_none() {
            return Err(bad(
                "neither bias= nor lora= given: the space would be empty".to_string(),
            ));
        }
        Ok(Clauses { bias, lora, layers })
    }
}

/// Whether a space (preset name or spec) carries LoRA, read by the same grammar as
/// [`SearchSpace::from_spec`] but without a model: `lora`, `mam`, `mam16` do, `bitfit` and
/// `full` do not, a spec does when its `lora=` clause names at least one module type.
pub fn spec_has_lora(spec: &str) -> Result<bool, CoreError> {
    match spec.trim() {
        "full" | "bitfit" => Ok(false),
        "lora" | "mam" | "mam16" => Ok(true),
        text => Ok(Clauses::parse(text)?
            .lora
            .is_some_and(|(types, _)| !types.is_empty())),
    }
}

fn parse_types(value: &str, linear_only: bool) -> Result<BTreeSet<ModuleType>, String> {
    match value.trim() {
        "all" => Ok(ModuleType::ALL
            .into_iter()
            .filter(|t| !linear_only || t.kind() == ModuleKind::Linear)
            .collect()),
        "none" => Ok(BTreeSet::new()),
        "" => Err("empty module-type list".to_string()),
        v => v
            .split(',')
            .map(|t| {
                let ty: ModuleType = t.parse().map_err(|e: CoreError| e.to_string())?;
                if linear_only && ty.kind() != ModuleKind::Linear {
                    return Err(format!(
                        "LoRA needs a linear module, {:?} is a LayerNorm",
                        ty.as_str()
                    ));
                }
                Ok(ty)
            })
            .collect(),
    }
}

struct LayerFilter {
    emb: bool,
    layers: BTreeSet<usize>,
}

impl LayerFilter {
    fn parse(value: &str) -> Result<Self, String> {
        let mut f = LayerFilter {
            emb: false,
            layers: BTreeSet::new(),
        };
        for item in value.split(',').map(str::trim) {
            if item == "emb" {
                f.emb = true;
                continue;
            }
            let num = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{item:?} is not a layer number or N-M range"))
            };
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("empty range {item:?}"));
                    }
                    f.layers.extend(a..=b);
                }
                None => {
                    f.layers.insert(num(item)?);
                }
            }
        }
        Ok(f)
    }

    fn admits(&self, layer: Option<usize>) -> bool {
        match layer {
            None => self.emb,
            Some(l) => self.layers.contains(&l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_has_lora_reads_the_grammar() {
        for (spec, want) in [
            ("bitfit", false),
            ("full", false),
            ("lora", true),
            ("mam16", true),
            ("bias=all", false),
            ("bias=all; lora=none", false),
            ("lora=query,key@8", true),
            ("bias=all; lora=all@4; layers=0-2", true),
        ] {
            assert_eq!(spec_has_lora(spec).unwrap(), want, "{spec}");
        }
        assert!(
            spec_has_lora("lora=query").is_err(),
            "a missing rank is an error"
        );
    }
    use crate::inventory::{inventory, minilm, Family};

    #[test]
    fn preset_counts_minilm() {
        let cfg = minilm();
        let inv = inventory(&cfg);
        let p = |n: &str| SearchSpace::preset(n, &inv).unwrap();
        assert_eq!(p("bitfit").pet_params(&inv), 25_728);
        assert_eq!(p("bitfit").bias.len(), 49);
        // LoRA rank 8 on query and key: 6 layers × 2 modules × 8 × (384 + 384) = 73 728.
        assert_eq!(p("lora").pet_params(&inv), 25_728 + 73_728);
        // MaM: q, k: 8×768 each; intermediate, output: 8×1920 each → 6 × 8 × 5376 = 258 048.
        assert_eq!(p("mam").pet_params(&inv), 25_728 + 258_048);
        assert_eq!(p("mam16").pet_params(&inv), 25_728 + 2 * 258_048);
        assert_eq!(p("mam16").lora.len(), 24);
        assert!(p("mam16").lora.iter().all(|(_, r)| *r == 16));
        let full = p("full");
        assert!(full.full_finetune);
        assert_eq!(full.pet_params(&inv), 0);
        assert_eq!(full.trained_params(&cfg), cfg.encoder_params());
        assert_eq!(p("bitfit").trained_params(&cfg), 25_728);
    }

    #[test]
    fn unknown_preset_lists_valid() {
        let inv = inventory(&EncoderConfig::tiny(Family::Bert));
        let e = SearchSpace::preset("adapter", &inv)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("adapter") && e.contains("mam16") && e.contains("bitfit"),
            "{e}"
        );
    }

    #[test]
    fn spec_parsing() {
        let inv = inventory(&minilm());
        let s = SearchSpace::from_spec(
            "bias=all;lora=query,key,intermediate,output@16;layers=2-5",
            &inv,
        )
        .unwrap();
        assert_eq!(s.bias.len(), 4 * 8);
        assert_eq!(s.lora.len(), 4 * 4);
        assert!(s.bias.iter().all(|p| !p.starts_with("embeddings")
            && !p.contains("layer.0.")
            && !p.contains("layer.1.")));
        assert_eq!(
            s.lora[0],
            ("encoder.layer.2.attention.self.query".to_string(), 16)
        );
        assert_eq!(SearchSpace::from_spec(&s.name, &inv).unwrap(), s);

        let s = SearchSpace::from_spec("bias=q,v;layers=emb,0", &inv).unwrap();
        assert_eq!(
            s.bias,
            vec![
                "encoder.layer.0.attention.self.query",
                "encoder.layer.0.attention.self.value"
            ]
        );
        let s = SearchSpace::from_spec("bias=embeddings_layer_norm;layers=emb", &inv).unwrap();
        assert_eq!(s.bias, vec!["embeddings.LayerNorm"]);
        let s = SearchSpace::from_spec("lora=all@4", &inv).unwrap();
        assert!(s.bias.is_empty());
        assert_eq!(s.lora.len(), 36);
        assert_eq!(
            SearchSpace::from_spec(" mam ", &inv).unwrap(),
            SearchSpace::preset("mam", &inv).unwrap()
        );
        // Same as the preset up to the name.
        let mut s = SearchSpace::from_spec("bias=all;lora=q,k,ffn_in,ffn_out@16", &inv).unwrap();
        s.name = "mam16".into();
        assert_eq!(s, SearchSpace::preset("mam16", &inv).unwrap());
    }

    #[test]
    fn spec_errors_are_clear() {
        let inv = inventory(&minilm());
        let err = |s: &str| SearchSpace::from_spec(s, &inv).unwrap_err().to_string();
        assert!(err("bias=all;lora=query@x").contains("\"x\""));
        assert!(err("lora=query").contains("@rank"));
        assert!(err("lora=query@0").contains("at least 1"));
        assert!(err("lora=output_layer_norm@4").contains("LayerNorm"));
        assert!(err("bias=quer").contains("\"quer\""));
        assert!(err("bias=all;layers=3-9").contains("layer 6 does not exist"));
        assert!(err("bias=all;layers=4-2").contains("empty range"));
        assert!(err("foo=1").contains("unknown key"));
        assert!(err("nonsense").contains("not key=value"));
        assert!(err("layers=1").contains("empty"));
        assert!(err("bias=all;bias=none").contains("twice"));
    }
}
