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
    /// Adam's β₁. This and the next fields are omitted from the JSON (and so from the hash) at
    /// their defaults, the values every earlier record was made with, so those records keep
    /// their hashes.
    #[serde(default = "default_beta1", skip_serializing_if = "is_default_beta1")]
    pub adam_beta1: f64,
    /// Adam's β₂.
    #[serde(default = "default_beta2", skip_serializing_if = "is_default_beta2")]
    pub adam_beta2: f64,
    /// Adam's ε.
    #[serde(default = "default_eps", skip_serializing_if = "is_default_eps")]
    pub adam_eps: f64,
    /// Clip the global L2 norm of all trained gradients (PET + head) to this value before each
    /// optimizer step, as transformers' Trainer does (`max_grad_norm`); absent: no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// Length-bucketing window in batches (1: a plain shuffle). It changes which examples share
    /// a batch, so it changes results.
    #[serde(default = "default_bucket", skip_serializing_if = "is_default_bucket")]
    pub bucket: usize,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_bucket() -> usize {
    1
}
fn is_default_beta1(v: &f64) -> bool {
    *v == default_beta1()
}
fn is_default_beta2(v: &f64) -> bool {
    *v == default_beta2()
}
fn is_default_eps(v: &f64) -> bool {
    *v == default_eps()
}
fn is_default_bucket(v: &usize) -> bool {
    *v == default_bucket()
}

impl Recipe {
    /// The paper's recipe (batch 16, max length 128, 6% linear warm-up, Adam with transformers'
    /// defaults, no weight decay) at `epochs` and peak `lr`: the one place these defaults live;
    /// the CLI and sweep configs override fields of it.
    pub fn new(epochs: f64, lr: f64) -> Self {
        Self {
            epochs,
            lr,
            batch_size: 16,
            max_len: 128,
            warmup_frac: 0.06,
            weight_decay: 0.0,
            max_steps: None,
            max_train: None,
            max_dev: None,
            adam_beta1: default_beta1(),
            adam_beta2: default_beta2(),
            adam_eps: default_eps(),
            max_grad_norm: None,
            bucket: default_bucket(),
        }
    }

    /// Checks every field's range; the message names the field (as the CLI and TOML spell it).
    pub fn validate(&self) -> Result<(), String> {
        fn pos(name: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} = {v}: must be a finite number above 0"))
            }
        }
        pos("epochs", self.epochs)?;
        pos("lr", self.lr)?;
        pos("adam_eps", self.adam_eps)?;
        if let Some(g) = self.max_grad_norm {
            pos("max_grad_norm", g)?;
        }
        if !(self.warmup_frac.is_finite() && (0.0..1.0).contains(&self.warmup_frac)) {
            return Err(format!(
                "warmup_frac = {}: must be in [0, 1)",
                self.warmup_frac
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight_decay = {}: must be a finite number, 0 or above",
                self.weight_decay
            ));
        }
        for (name, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                return Err(format!("{name} = {b}: must be in [0, 1)"));
            }
        }
        for (name, v) in [
            ("batch_size", Some(self.batch_size)),
            ("bucket", Some(self.bucket)),
            ("max_steps", self.max_steps),
            ("max_train", self.max_train),
            ("max_dev", self.max_dev),
        ] {
            if v == Some(0) {
                return Err(format!("{name} = 0: must be at least 1"));
            }
        }
        // An epoch count so large that the step count overflows is a typo, not a plan.
        if self.epochs > 1e6 {
            return Err(format!(
                "epochs = {}: more than a million epochs",
                self.epochs
            ));
        }
        Ok(())
    }
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

/// LoRA initialisation of ΔW = U·Vᵀ (U: [in, r], V: [out, r]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// The paper's eq. 1 (§3.3): U ~ N(0, σ = in^-½) and V ~ N(0, σ = out^-½), both random, so
    /// that both factors receive gradient from the first step and the criterion can score them.
    #[default]
    Paper,
    /// Hu et al. (2021) as PEFT implements it: V (PEFT's `lora_B`) = 0 and U (`lora_A`ᵀ)
    /// Kaiming-uniform, U(−in^-½, in^-½) (`kaiming_uniform_(a=√5)` on `lora_A` [r, in]), so
    /// ΔW starts at 0. ("We use a random Gaussian initialization for A and zero for B, so
    /// ΔW = BA is zero at the beginning of training", Hu et al. §4.1.)
    Hu,
    /// U = 0 and V random (eq. 1's σ): the input-side factor zero. What this project called
    /// `lora` before version 0.2 (old records still read as this); not Hu et al.'s choice.
    #[serde(alias = "lora")]
    UZero,
    /// The paper's initialisation with the initial product subtracted (a frozen −U₀·V₀ᵀ), so
    /// the model starts at the pre-trained function while both factors are random.
    PaperZeroOffset,
}

impl LoraInit {
    /// Every value, in the order the CLI lists them.
    pub const ALL: [LoraInit; 4] = [
        LoraInit::Paper,
        LoraInit::Hu,
        LoraInit::UZero,
        LoraInit::PaperZeroOffset,
    ];

    /// The name used in the CLI, configs and records.
    pub fn as_str(self) -> &'static str {
        match self {
            LoraInit::Paper => "paper",
            LoraInit::Hu => "hu",
            LoraInit::UZero => "u_zero",
            LoraInit::PaperZeroOffset => "paper_zero_offset",
        }
    }
}

impl std::str::FromStr for LoraInit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "lora" {
            return Err("`lora` is ambiguous: `hu` is Hu et al.'s and PEFT's (V = lora_B = 0), `u_zero` zeroes U instead".into());
        }
        LoraInit::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}`: expected one of {}",
                    LoraInit::ALL.map(|i| i.as_str()).join(", ")
                )
            })
    }
}

/// Arithmetic of the frozen base matmuls (everything trained stays fp32 in both).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// fp32 throughout.
    #[default]
    Fp32,
    /// Mixed precision: the frozen weights in bf16 and their matmuls (forward x·Wᵀ, input
    /// gradient dY·W) as bf16 × bf16 with fp32 accumulation; PET parameters, gradients, Adam
    /// state, the criterion, the head, LayerNorm, softmax and the loss in fp32.
    Bf16,
}

impl Precision {
    /// The name used in the CLI, configs and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
    fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("`{s}`: expected fp32 or bf16")),
        }
    }
}

/// What a run trains. In records it is one string (`"search"`, `"full"`, `"arch:<file>"`, or a
/// space preset / spec such as `"bitfit"` or `"mam"`), which is what spec hashes were made of.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// A search: maximal training, pruning and retraining (the space is `RunSpec::space`).
    Search,
    /// Full fine-tuning of every encoder weight.
    Full,
    /// A fixed architecture from a file (`arch:<file>`).
    Arch(String),
    /// A fixed PET space trained whole: a preset (`bitfit`, `lora`, `mam`, `mam16`) or a spec.
    Space(String),
}

impl Method {
    /// `search` → Search, `full` → Full, `arch:<file>` → Arch, anything else → Space (checked
    /// against the space grammar where a model's inventory is known).
    pub fn parse(s: &str) -> Method {
        match s {
            "search" => Method::Search,
            "full" => Method::Full,
            _ => match s.strip_prefix("arch:") {
                Some(file) => Method::Arch(file.to_string()),
                None => Method::Space(s.to_string()),
            },
        }
    }

    /// The record's spelling.
    pub fn as_string(&self) -> String {
        match self {
            Method::Search => "search".into(),
            Method::Full => "full".into(),
            Method::Arch(f) => format!("arch:{f}"),
            Method::Space(s) => s.clone(),
        }
    }

    /// Whether this is a search.
    pub fn is_search(&self) -> bool {
        *self == Method::Search
    }

    /// Whether this is full fine-tuning.
    pub fn is_full(&self) -> bool {
        *self == Method::Full
    }
}

impl From<&str> for Method {
    fn from(s: &str) -> Method {
        Method::parse(s)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_string())
    }
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Method::parse(&String::deserialize(d)?))
    }
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
    /// What is trained (one string in the record, see [`Method`]).
    pub method: Method,
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
    /// How structured pruning scored a rank component (structured pruned runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_group: Option<crate::prune::RankGroup>,
    /// For a pruned run: the [`RunSpec::hash`] of the maximal training its criterion (and, with
    /// `reinit = keep`, its start) came from. Everything that shaped the scores (the search's
    /// recipe and LR, space, seed, init) is in that hash, so a changed maximal run changes every
    /// pruned run's hash too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximal_hash: Option<String>,
    /// Arithmetic of the frozen matmuls (omitted at fp32, which every earlier record used).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// Iterative pruning (paper §B): rounds of prune → retrain with the criterion → prune again,
    /// over geometric budgets from the maximal size down to `budget`. Absent: one-shot (1 round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_rounds: Option<usize>,
    /// A task from the user's files: its columns, label order and metrics (absent for the
    /// built-in GLUE tasks, which `task` names in full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_def: Option<crate::task::TaskDef>,
    /// SHA-256 of each data file the run read, by split (`train`, `dev`), so a changed file is a
    /// changed spec. Present for user tasks, and for a GLUE task whose files differ from the GLUE
    /// release petnas knows (`petnas-train`'s table of their checksums); absent when they match,
    /// which is what every earlier record was made from, so those keep their hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, String>>,
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
    /// Where the run was computed, if recorded (records before this field have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
}

/// Provenance of a run's arithmetic: not part of the spec or its hash, because the same spec is
/// meant to run anywhere, but it says which processor and matmul path produced the bits. fp32
/// results are bit-identical across some processor kinds and not others, and the bf16 paths
/// (AMX tiles, `vdpbf16ps`, gemm f32 on bf16-rounded values) agree to bf16 accuracy only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Host {
    /// The processor, e.g. "AMD EPYC (AuthenticAMD family 26 model 2)", or the GPU's device.
    pub cpu: String,
    /// The path of the frozen matmuls: "gemm-f32", "amx", "avx512bf16",
    /// "gemm-f32 on bf16-rounded values", or "cuda".
    pub matmuls: String,
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
        Self {
            version: RECORD_VERSION,
            id,
            spec,
            result,
            config_hash,
            git_commit,
            created_unix,
            host: None,
        }
    }

    /// The record with its [`Host`] set.
    pub fn with_host(mut self, host: Host) -> Self {
        self.host = Some(host);
        self
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

    #[test]
    fn method_is_the_record_string() {
        for (text, m) in [
            ("search", Method::Search),
            ("full", Method::Full),
            (
                "arch:archs/best.json",
                Method::Arch("archs/best.json".into()),
            ),
            ("bitfit", Method::Space("bitfit".into())),
            (
                "bias=all; lora=query:8",
                Method::Space("bias=all; lora=query:8".into()),
            ),
        ] {
            assert_eq!(Method::parse(text), m);
            assert_eq!(serde_json::to_value(&m).unwrap(), serde_json::json!(text));
            assert_eq!(
                serde_json::from_value::<Method>(serde_json::json!(text)).unwrap(),
                m
            );
        }
    }
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
            method: Method::Search,
            space: Some("mam16".into()),
            mode: Some(PruneMode::Structured),
            budget: Some(50_000),
            seed: 3,
            recipe: Recipe {
                batch_size: 32,
                ..Recipe::new(10.0, 1e-3)
            },
            criterion: Some(CriterionKind::Mean),
            reinit: Some(Reinit::Same),
            lora_init: LoraInit::PaperZeroOffset,
            device: "cpu".into(),
            rank_group: Some(crate::prune::RankGroup::UV),
            maximal_hash: Some("ab".repeat(32)),
            precision: Precision::Fp32,
            prune_rounds: None,
            task_def: None,
            data: None,
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
            host: Some(Host {
                cpu: "AMD EPYC (AuthenticAMD family 26 model 2)".into(),
                matmuls: "gemm-f32".into(),
            }),
        }
    }

    /// Records written before `host` existed load with none, and a record without one writes no
    /// `host` key (so rewriting an old record keeps its JSON).
    #[test]
    fn host_is_optional_provenance() {
        let r = record(RunStatus::Completed);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["host"]["matmuls"], "gemm-f32");
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("host");
        let back: RunRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.host, None);
        assert!(serde_json::to_value(&back).unwrap().get("host").is_none());
        assert_eq!(back.with_host(r.host.clone().unwrap()), r);
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

    /// Every field of a spec, as its JSON path, with every optional one present. A field added
    /// to `RunSpec` or `Recipe` fails this test until it is listed here, that is, until someone
    /// decided it belongs in the hash (every field does: the hash is of the whole spec; a field
    /// that must not change the hash does not belong in the spec).
    const SPEC_FIELDS: &[&str] = &[
        "budget",
        "criterion",
        "data.dev",
        "data.train",
        "device",
        "lora_init",
        "maximal_hash",
        "method",
        "mode",
        "model",
        "model_fingerprint.family",
        "model_fingerprint.hidden_size",
        "model_fingerprint.intermediate_size",
        "model_fingerprint.num_layers",
        "precision",
        "prune_rounds",
        "rank_group",
        "recipe.adam_beta1",
        "recipe.adam_beta2",
        "recipe.adam_eps",
        "recipe.batch_size",
        "recipe.bucket",
        "recipe.epochs",
        "recipe.lr",
        "recipe.max_dev",
        "recipe.max_grad_norm",
        "recipe.max_len",
        "recipe.max_steps",
        "recipe.max_train",
        "recipe.warmup_frac",
        "recipe.weight_decay",
        "reinit",
        "seed",
        "space",
        "task",
        "task_def.kind",
        "task_def.label_column",
        "task_def.labels",
        "task_def.metrics",
        "task_def.name",
        "task_def.text_columns",
    ];

    fn full_spec() -> RunSpec {
        let mut s = spec();
        s.recipe = Recipe {
            max_steps: Some(7),
            max_train: Some(100),
            max_dev: Some(50),
            adam_beta1: 0.8,
            adam_beta2: 0.99,
            adam_eps: 1e-6,
            max_grad_norm: Some(1.0),
            bucket: 50,
            ..s.recipe
        };
        s.precision = Precision::Bf16;
        s.prune_rounds = Some(3);
        s.task_def = Some(crate::task::TaskDef {
            name: "reviews".into(),
            text_columns: vec!["text".into()],
            label_column: "label".into(),
            kind: crate::task::TaskKind::Classification,
            labels: vec!["neg".into(), "pos".into()],
            metrics: vec![crate::task::Metric::Accuracy],
        });
        s.data = Some(
            [
                ("dev".to_string(), "d".repeat(64)),
                ("train".to_string(), "t".repeat(64)),
            ]
            .into_iter()
            .collect(),
        );
        s
    }

    fn leaves(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(x, &p, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn every_spec_field_is_listed_and_changes_the_hash() {
        let full = serde_json::to_value(full_spec()).unwrap();
        let mut got = Vec::new();
        leaves(&full, "", &mut got);
        got.sort();
        assert_eq!(
            got, SPEC_FIELDS,
            "RunSpec's fields changed: decide each new one's place in the hash and list it"
        );
        let h = full_spec().hash();
        for path in SPEC_FIELDS {
            let mut v = full.clone();
            let mut slot = &mut v;
            for k in path.split('.') {
                slot = slot.get_mut(k).unwrap();
            }
            // A different valid value of the same type.
            *slot = match slot.clone() {
                serde_json::Value::Number(n) if n.is_u64() => (n.as_u64().unwrap() + 1).into(),
                serde_json::Value::Number(n) => ((n.as_f64().unwrap() + 0.1) * 0.5).into(),
                serde_json::Value::String(t) => match *path {
                    "criterion" => "last".into(),
                    "lora_init" => "hu".into(),
                    "mode" => "unstructured".into(),
                    "model_fingerprint.family" => "Roberta".into(),
                    "precision" => "fp32".into(),
                    "rank_group" => "u_only".into(),
                    "reinit" => "fresh".into(),
                    "task_def.kind" => "regression".into(),
                    _ => format!("{t}x").into(),
                },
                serde_json::Value::Array(mut a) => {
                    a.push(if *path == "task_def.metrics" {
                        "f1".into()
                    } else {
                        "extra".into()
                    });
                    a.into()
                }
                other => panic!("{path}: unexpected {other}"),
            };
            let changed: RunSpec =
                serde_json::from_value(v).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_ne!(changed.hash(), h, "{path} does not change the hash");
        }
    }

    #[test]
    fn defaults_of_new_fields_keep_old_hashes() {
        // A spec as version-0.1 records wrote it (no Adam, clipping, bucket, rank-group,
        // maximal-hash or precision keys) reads back to the defaults and hashes the same, so
        // finished runs of earlier sweeps stay done.
        let mut s = spec();
        s.rank_group = None;
        s.maximal_hash = None;
        let v = serde_json::to_value(&s).unwrap();
        for k in [
            "adam_beta1",
            "adam_beta2",
            "adam_eps",
            "max_grad_norm",
            "bucket",
        ] {
            assert!(v["recipe"].get(k).is_none(), "{k} written at its default");
        }
        for k in [
            "rank_group",
            "maximal_hash",
            "precision",
            "prune_rounds",
            "task_def",
            "data",
        ] {
            assert!(v.get(k).is_none(), "{k} written at its default");
        }
        let back: RunSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.hash(), s.hash());
        // A record of `--lora-init lora` (U = 0) made before the rename reads as u_zero.
        let mut v = serde_json::to_value(&s).unwrap();
        v["lora_init"] = "lora".into();
        assert_eq!(
            serde_json::from_value::<RunSpec>(v).unwrap().lora_init,
            LoraInit::UZero
        );
        assert!("lora"
            .parse::<LoraInit>()
            .unwrap_err()
            .contains("ambiguous"));
    }

    #[test]
    fn recipe_validation_names_the_field() {
        let ok = Recipe::new(3.0, 1e-3);
        assert!(ok.validate().is_ok());
        let cases: Vec<(Recipe, &str)> = vec![
            (
                Recipe {
                    lr: f64::NAN,
                    ..ok.clone()
                },
                "lr",
            ),
            (
                Recipe {
                    lr: -1e-3,
                    ..ok.clone()
                },
                "lr",
            ),
            (
                Recipe {
                    lr: 0.0,
                    ..ok.clone()
                },
                "lr",
            ),
            (
                Recipe {
                    epochs: 0.0,
                    ..ok.clone()
                },
                "epochs",
            ),
            (
                Recipe {
                    epochs: f64::INFINITY,
                    ..ok.clone()
                },
                "epochs",
            ),
            (
                Recipe {
                    epochs: 1e9,
                    ..ok.clone()
                },
                "epochs",
            ),
            (
                Recipe {
                    warmup_frac: 1.0,
                    ..ok.clone()
                },
                "warmup_frac",
            ),
            (
                Recipe {
                    warmup_frac: -0.1,
                    ..ok.clone()
                },
                "warmup_frac",
            ),
            (
                Recipe {
                    weight_decay: f64::NAN,
                    ..ok.clone()
                },
                "weight_decay",
            ),
            (
                Recipe {
                    batch_size: 0,
                    ..ok.clone()
                },
                "batch_size",
            ),
            (
                Recipe {
                    max_steps: Some(0),
                    ..ok.clone()
                },
                "max_steps",
            ),
            (
                Recipe {
                    max_dev: Some(0),
                    ..ok.clone()
                },
                "max_dev",
            ),
            (
                Recipe {
                    max_train: Some(0),
                    ..ok.clone()
                },
                "max_train",
            ),
            (
                Recipe {
                    bucket: 0,
                    ..ok.clone()
                },
                "bucket",
            ),
            (
                Recipe {
                    adam_beta2: 1.0,
                    ..ok.clone()
                },
                "adam_beta2",
            ),
            (
                Recipe {
                    adam_eps: 0.0,
                    ..ok.clone()
                },
                "adam_eps",
            ),
            (
                Recipe {
                    max_grad_norm: Some(-1.0),
                    ..ok.clone()
                },
                "max_grad_norm",
            ),
        ];
        for (r, field) in cases {
            let e = r.validate().unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
        }
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
