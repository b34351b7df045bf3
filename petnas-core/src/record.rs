//! Run records: the contract between `petnas-train` (which writes them) and `petnas-analyze`
//! (which aggregates them into the paper's tables and figures, Section 4).
//!
//! One JSON file per run, versioned, written atomically. [`RunSpec::hash`] identifies a run's
//! configuration so that a sweep can skip runs that are done and redo runs whose config changed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arch::{ModelFingerprint, ModuleCount, PruneMode};
use crate::criterion::CriterionKind;
use crate::CoreError;

/// Current version of run-record files.
pub const RECORD_VERSION: u32 = 1;

/// Optimisation recipe of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recipe {
    /// Training epochs (fractional allowed).
    pub epochs: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Maximum sequence length in tokens.
    pub max_len: usize,
    /// Fraction of steps of linear warm-up.
    pub warmup_frac: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Hard cap on optimiser steps (tests, smoke runs).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Only the first N training examples were used (absent: all). Part of the spec hash, so a
    /// changed subsample is detected; omitted from JSON when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_train: Option<usize>,
    /// Only the first N dev examples were scored (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dev: Option<usize>,
}

/// How a pruned architecture's PET tensors are initialised before retraining.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reinit {
    /// The same initial values as the search run (the paper's choice).
    Same,
    /// A fresh random initialisation.
    Fresh,
    /// Keep the values trained during the search.
    Keep,
}

/// LoRA initialisation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// The paper's initialisation (Section 3.3): U and V both random, so that both factors
    /// receive gradient and are pruned evenly.
    #[default]
    Paper,
    /// The original LoRA initialisation: one factor random, the other zero.
    Lora,
    /// The paper's initialisation with the initial product subtracted, so ΔW starts at zero.
    PaperZeroOffset,
}

/// Everything that defines a run (its hash decides whether a finished run can be reused).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSpec {
    /// GLUE task name, e.g. `"rte"`.
    pub task: String,
    /// Model path or name.
    pub model: String,
    /// Fingerprint of the model.
    pub model_fingerprint: ModelFingerprint,
    /// `"full"`, `"bitfit"`, `"lora"`, `"mam"`, `"arch:<file>"` or `"search"`.
    pub method: String,
    /// Search space (for `search`).
    #[serde(default)]
    pub space: Option<String>,
    /// Pruning mode (for `search`).
    #[serde(default)]
    pub mode: Option<PruneMode>,
    /// Parameter budget (for `search`).
    #[serde(default)]
    pub budget: Option<usize>,
    /// Random seed.
    pub seed: u64,
    /// Optimisation recipe.
    pub recipe: Recipe,
    /// Criterion (for `search`).
    #[serde(default)]
    pub criterion: Option<CriterionKind>,
    /// Re-initialisation after pruning (for `search`).
    #[serde(default)]
    pub reinit: Option<Reinit>,
    /// LoRA initialisation.
    #[serde(default)]
    pub lora_init: LoraInit,
    /// Device the run used, e.g. `"cpu"`, `"cuda:0"`.
    pub device: String,
}

impl RunSpec {
    /// SHA-256 (hex) of the spec's canonical JSON (object keys sorted, no whitespace).
    pub fn hash(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut text = String::new();
        canonical_json(&value, &mut text);
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Writes `v` as JSON with object keys sorted at every level, independent of serde_json's
/// `preserve_order` feature (which another crate in the build may turn on).
fn canonical_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(xs) => {
            out.push('[');
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Outcome of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunStatus {
    /// Finished normally.
    Completed,
    /// Stopped with an error.
    Failed {
        /// The error message.
        reason: String,
    },
}

/// What a run measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// Completed or failed; serialized inline as `"status": "completed"` (+ `"reason"`).
    #[serde(flatten)]
    pub status: RunStatus,
    /// Dev-set metrics, e.g. `{"accuracy": 0.71}`.
    pub metrics: BTreeMap<String, f64>,
    /// The metric the task is ranked by.
    pub primary_metric: Option<String>,
    /// Trained PET parameters (all encoder parameters for full fine-tuning).
    pub pet_params: usize,
    /// Classification-head parameters (always trained, counted separately).
    pub head_params: usize,
    /// Per-module counts of the trained architecture.
    pub modules: Vec<ModuleCount>,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Mean training loss over the last logging window.
    pub final_train_loss: Option<f64>,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Training throughput.
    pub examples_per_second: f64,
}

impl RunResult {
    /// The primary metric's value, if recorded.
    pub fn primary(&self) -> Option<f64> {
        self.primary_metric
            .as_ref()
            .and_then(|k| self.metrics.get(k))
            .copied()
    }
}

/// One run on disk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// File format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// Run id (unique within a sweep).
    pub id: String,
    /// The configuration.
    pub spec: RunSpec,
    /// The outcome.
    pub result: RunResult,
    /// [`RunSpec::hash`] of `spec` when the run was made.
    pub config_hash: String,
    /// Git commit of the code, if known.
    pub git_commit: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

impl RunRecord {
    /// A new record of the current version, stamped with the spec's hash, `git_commit` and the
    /// current time.
    pub fn new(id: String, spec: RunSpec, result: RunResult, git_commit: Option<String>) -> Self {
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let config_hash = spec.hash();
        Self { version: RECORD_VERSION, id, spec, result, config_hash, git_commit, created_unix }
    }

    /// Writes the record as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<(), CoreError> {
        crate::io::write_json_atomic(path, self, "run record")
    }

    /// Reads a record, rejecting other versions with a clear error.
    pub fn load(path: &Path) -> Result<Self, CoreError> {
        let value: serde_json::Value = crate::io::read_json(path)?;
        let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found != RECORD_VERSION {
            return Err(CoreError::Version {
                path: path.to_path_buf(),
                what: "run record",
                found,
                supported: RECORD_VERSION,
            });
        }
        serde_json::from_value(value).map_err(|source| CoreError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Whether the record's stored hash matches its spec (false after a config change).
    pub fn is_current(&self) -> bool {
        self.config_hash == self.spec.hash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Family;

    pub(crate) fn spec() -> RunSpec {
        RunSpec {
            task: "rte".into(),
            model: "models/minilm".into(),
            model_fingerprint: ModelFingerprint {
                family: Family::Bert,
                num_layers: 6,
                hidden_size: 384,
                intermediate_size: 1536,
            },
            method: "search".into(),
            space: Some("mam16".into()),
            mode: Some(PruneMode::Structured),
            budget: Some(50_000),
            seed: 3,
            recipe: Recipe {
                epochs: 10.0,
                lr: 1e-3,
                batch_size: 32,
                max_len: 128,
                warmup_frac: 0.06,
                weight_decay: 0.0,
                max_steps: None,
                max_train: None,
                max_dev: None,
            },
            criterion: Some(CriterionKind::Mean),
            reinit: Some(Reinit::Same),
            lora_init: LoraInit::PaperZeroOffset,
            device: "cpu".into(),
        }
    }

    fn record(status: RunStatus) -> RunRecord {
        let spec = spec();
        RunRecord {
            version: RECORD_VERSION,
            id: "rte-search-3".into(),
            config_hash: spec.hash(),
            spec,
            result: RunResult {
                status,
                metrics: [("accuracy".to_string(), 0.7)].into_iter().collect(),
                primary_metric: Some("accuracy".into()),
                pet_params: 49_000,
                head_params: 148_226,
                modules: vec![ModuleCount {
                    path: "embeddings.LayerNorm".into(),
                    module_type: crate::inventory::ModuleType::EmbeddingsLayerNorm,
                    layer: None,
                    bias_kept: 384,
                    bias_total: 384,
                    lora_kept: 0,
                    lora_total: 0,
                    kept_rank: None,
                    max_rank: None,
                }],
                steps: 780,
                final_train_loss: Some(0.41),
                wall_seconds: 12.5,
                examples_per_second: 2000.0,
            },
            git_commit: Some("abc123".into()),
            created_unix: 1_700_000_000,
        }
    }

    #[test]
    fn record_round_trip_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        for status in [
            RunStatus::Completed,
            RunStatus::Failed {
                reason: "out of memory".into(),
            },
        ] {
            let r = record(status.clone());
            let p = dir.path().join("runs/r.json");
            r.save(&p).unwrap();
            let back = RunRecord::load(&p).unwrap();
            assert_eq!(back, r);
            assert!(back.is_current());
            assert_eq!(back.result.primary(), Some(0.7));
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            match status {
                RunStatus::Completed => assert_eq!(v["result"]["status"], "completed"),
                RunStatus::Failed { .. } => {
                    assert_eq!(v["result"]["status"], "failed");
                    assert_eq!(v["result"]["reason"], "out of memory");
                }
            }
            assert_eq!(v["spec"]["lora_init"], "paper_zero_offset");
            assert_eq!(v["spec"]["reinit"], "same");
            assert_eq!(v["spec"]["mode"], "structured");
            assert_eq!(v["spec"]["criterion"], "mean");
        }
    }

    #[test]
    fn record_version_and_parse_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let mut v = serde_json::to_value(record(RunStatus::Completed)).unwrap();
        v["version"] = 2.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = RunRecord::load(&p).unwrap_err().to_string();
        assert!(e.contains("version 2") && e.contains("r.json"), "{e}");
        v["version"] = 1.into();
        v["result"]["status"] = "exploded".into();
        std::fs::write(&p, v.to_string()).unwrap();
        assert!(RunRecord::load(&p)
            .unwrap_err()
            .to_string()
            .contains("r.json"));
    }

    #[test]
    fn spec_hash_is_stable_and_sensitive() {
        let a = spec();
        let h = a.hash();
        assert_eq!(h.len(), 64);
        assert_eq!(h, spec().hash());
        let mut b = spec();
        b.seed = 4;
        assert_ne!(b.hash(), h);
        let mut c = spec();
        c.recipe.lr = 2e-3;
        assert_ne!(c.hash(), h);
        // Key order in the JSON does not matter: the hash of the re-parsed spec is the same.
        let text = serde_json::to_string(&a).unwrap();
        let back: RunSpec = serde_json::from_str(&text).unwrap();
        assert_eq!(back.hash(), h);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":2,"y":"x"}],"c":null}}"#).unwrap();
        let mut s = String::new();
        canonical_json(&v, &mut s);
        assert_eq!(s, r#"{"a":{"c":null,"d":[1,{"y":"x","z":2}]},"b":1}"#);
    }

    #[test]
    fn spec_optional_fields_default() {
        let mut v = serde_json::to_value(spec()).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in [
            "space",
            "mode",
            "budget",
            "criterion",
            "reinit",
            "lora_init",
        ] {
            o.remove(k);
        }
        let s: RunSpec = serde_json::from_value(v).unwrap();
        assert_eq!(
            (s.space, s.mode, s.lora_init),
            (None, None, LoraInit::Paper)
        );
    }
}
