//! Loading an HF model folder: `config.json`, `model.safetensors`, `tokenizer.json`.
//!
//! Tensor names are accepted with or without the `bert.` / `roberta.` prefix of the
//! `*ForSequenceClassification` checkpoints. A hub id (`roberta-large`, `org/name`) resolves as
//! transformers resolves it: the snapshot `refs/main` names in the local Hugging Face cache
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`), else a download into that cache
//! with `hf-hub` (not with `HF_HUB_OFFLINE=1`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use petnas_core::inventory::EncoderConfig;

use crate::error::{Result, TrainError};

/// Base weights by HF name (prefix stripped), with the file they came from for error messages.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    file: PathBuf,
    family: String,
    layers: usize,
}

impl Weights {
    /// Loads a safetensors file (any float dtype; converted to f32) onto the CPU.
    pub fn from_safetensors(file: &Path, cfg: &EncoderConfig) -> Result<Self> {
        if !file.exists() {
            return Err(TrainError::MissingModelFile {
                dir: file.parent().unwrap_or(Path::new(".")).to_path_buf(),
                file: file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                hint: "petnas reads safetensors weights; convert a pytorch_model.bin with transformers' save_pretrained(safe_serialization=True)".into(),
            });
        }
        let raw = candle_core::safetensors::load(file, &Device::Cpu).map_err(|e| {
            TrainError::Invalid(format!(
                "{}: not a readable safetensors file: {e}",
                file.display()
            ))
        })?;
        let mut tensors = HashMap::with_capacity(raw.len());
        // The checkpoint must be the model config.json describes: its family prefix (when it has
        // one) and its layer count, or the run would silently train something else.
        let family = cfg
            .family()
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let foreign = match family {
            petnas_core::inventory::Family::Bert => "roberta.",
            petnas_core::inventory::Family::Roberta => "bert.",
        };
        if let Some(n) = raw.keys().find(|n| n.starts_with(foreign)) {
            return Err(TrainError::Invalid(format!(
                "{}: tensor `{n}` belongs to a {} checkpoint, but config.json says model_type `{}`",
                file.display(),
                foreign.trim_end_matches('.'),
                cfg.model_type
            )));
        }
        let layers = raw
            .keys()
            .filter_map(|n| {
                n.split("encoder.layer.")
                    .nth(1)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        if layers != cfg.num_hidden_layers {
            return Err(TrainError::Invalid(format!(
                "{}: the checkpoint has {layers} encoder layers, config.json's num_hidden_layers is {}",
                file.display(),
                cfg.num_hidden_layers
            )));
        }
        for (name, t) in raw {
            let name = name
                .strip_prefix("bert.")
                .or_else(|| name.strip_prefix("roberta."))
                .map(str::to_string)
                .unwrap_or(name);
            let t = if t.dtype().is_float() && t.dtype() != DType::F32 {
                t.to_dtype(DType::F32)?
            } else {
                t
            };
            tensors.insert(name, t);
        }
        Ok(Self {
            tensors,
            file: file.to_path_buf(),
            family: cfg.model_type.clone(),
            layers: cfg.num_hidden_layers,
        })
    }

    /// Weights held in memory (tests, tiny random models).
    pub fn from_map(tensors: HashMap<String, Tensor>, cfg: &EncoderConfig) -> Self {
        Self {
            tensors,
            file: PathBuf::from("<memory>"),
            family: cfg.model_type.clone(),
            layers: cfg.num_hidden_layers,
        }
    }

    /// Random weights of the right shapes for `cfg` (N(0, 0.02), LayerNorm γ = 1, β = 0, biases
    /// N(0, 0.02)): tiny test models without downloads.
    pub fn random(cfg: &EncoderConfig, seed: u64) -> Result<Self> {
        let mut t = HashMap::new();
        let h = cfg.hidden_size;
        let mut add = |name: String, shape: Vec<usize>, kind: u8| -> Result<()> {
            let n: usize = shape.iter().product();
            let v = match kind {
                1 => vec![1.0; n],
                0 => vec![0.0; n],
                _ => super::pet::normal_values(seed, &name, n, 0.02),
            };
            t.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
            Ok(())
        };
        add(
            "embeddings.word_embeddings.weight".into(),
            vec![cfg.vocab_size, h],
            2,
        )?;
        add(
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
            2,
        )?;
        add(
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab_size, h],
            2,
        )?;
        add("embeddings.LayerNorm.weight".into(), vec![h], 1)?;
        add("embeddings.LayerNorm.bias".into(), vec![h], 0)?;
        for m in petnas_core::inventory::inventory(cfg) {
            if m.path.starts_with("embeddings") {
                continue;
            }
            if m.path.ends_with("LayerNorm") {
                add(format!("{}.weight", m.path), vec![h], 1)?;
                add(format!("{}.bias", m.path), vec![h], 0)?;
            } else {
                add(format!("{}.weight", m.path), vec![m.out_dim, m.in_dim], 2)?;
                add(format!("{}.bias", m.path), vec![m.out_dim], 2)?;
            }
        }
        Ok(Self::from_map(t, cfg))
    }

    /// Inserts or replaces a tensor (e.g. a head taken from a fixture).
    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.try_get(name, shape)?
            .ok_or_else(|| TrainError::MissingTensor {
                file: self.file.clone(),
                name: name.to_string(),
                family: self.family.clone(),
                layers: self.layers,
            })
    }

    /// The tensor `name` if present; a present tensor of another shape is an error.
    pub fn try_get(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match self.tensors.get(name) {
            None => Ok(None),
            Some(t) if t.dims() == shape => Ok(Some(t.clone())),
            Some(t) => Err(TrainError::ShapeMismatch {
                file: self.file.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            }),
        }
    }
}

/// Writes a tiny random model folder (config.json, model.safetensors, tokenizer.json) whose
/// vocabulary matches `tokenizer`: a real HF folder layout for end-to-end tests without downloads.
/// For `roberta`, a BERT (WordPiece, `[CLS]`) tokenizer is turned into a RoBERTa-style one: its
/// special tokens renamed `<s> </s> <pad> <unk> <mask>` and RoBERTa's post-processor
/// (`<s> A </s></s> B </s>`), with `pad_token_id` set to `<pad>`'s id.
pub fn write_tiny_model(
    family: petnas_core::inventory::Family,
    tokenizer: &Path,
    out: &Path,
    seed: u64,
) -> Result<()> {
    let tok_err = |m: String| TrainError::Tokenizer {
        path: tokenizer.to_path_buf(),
        message: m,
    };
    let text = std::fs::read_to_string(tokenizer).map_err(crate::error::io_err(tokenizer))?;
    let mut cfg = EncoderConfig::tiny(family);
    let text = if family == petnas_core::inventory::Family::Roberta {
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| tok_err(e.to_string()))?;
        let pad = roberta_style(&mut v).map_err(tok_err)?;
        cfg.pad_token_id = pad as usize;
        serde_json::to_string(&v).map_err(|e| tok_err(e.to_string()))?
    } else {
        text
    };
    let tok =
        tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| tok_err(e.to_string()))?;
    cfg.vocab_size = tok.get_vocab_size(true);
    if family == petnas_core::inventory::Family::Roberta {
        cfg.max_position_embeddings = 130 + cfg.pad_token_id;
    } else {
        cfg.max_position_embeddings = 128;
    }
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let json =
        serde_json::to_string_pretty(&cfg).map_err(|e| TrainError::Invalid(e.to_string()))?;
    petnas_core::io::write_atomic(&out.join("config.json"), json.as_bytes())?;
    let w = Weights::random(&cfg, seed)?;
    candle_core::safetensors::save(&w.tensors, out.join("model.safetensors"))?;
    petnas_core::io::write_atomic(&out.join("tokenizer.json"), text.as_bytes())?;
    Ok(())
}

/// Renames a BERT tokenizer's special tokens to RoBERTa's and installs RoBERTa's post-processor;
/// returns the id of `<pad>`.
fn roberta_style(v: &mut serde_json::Value) -> std::result::Result<u32, String> {
    const RENAME: [(&str, &str); 5] = [
        ("[CLS]", "<s>"),
        ("[SEP]", "</s>"),
        ("[PAD]", "<pad>"),
        ("[UNK]", "<unk>"),
        ("[MASK]", "<mask>"),
    ];
    let vocab = v
        .pointer_mut("/model/vocab")
        .and_then(|x| x.as_object_mut())
        .ok_or("no model.vocab object (not a WordPiece tokenizer)")?;
    let mut ids = std::collections::HashMap::new();
    for (from, to) in RENAME {
        let id = vocab
            .remove(from)
            .ok_or_else(|| format!("no {from} in the vocabulary"))?;
        ids.insert(to, id.as_u64().ok_or("a non-integer vocabulary id")? as u32);
        vocab.insert(to.to_string(), id);
    }
    if let Some(unk) = v.pointer_mut("/model/unk_token") {
        *unk = "<unk>".into();
    }
    if let Some(added) = v.get_mut("added_tokens").and_then(|a| a.as_array_mut()) {
        for t in added {
            if let Some(c) = t.get_mut("content") {
                if let Some((_, to)) = RENAME.iter().find(|(f, _)| c.as_str() == Some(*f)) {
                    *c = (*to).into();
                }
            }
        }
    }
    v["post_processor"] = serde_json::json!({
        "type": "RobertaProcessing",
        "sep": ["</s>", ids["</s>"]],
        "cls": ["<s>", ids["<s>"]],
        "trim_offsets": true,
        "add_prefix_space": false
    });
    v["padding"] = serde_json::Value::Null;
    v["truncation"] = serde_json::Value::Null;
    Ok(ids["<pad>"])
}

/// A model folder resolved on disk.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The folder.
    pub dir: PathBuf,
    /// Its parsed config.json.
    pub config: EncoderConfig,
}

impl ModelDir {
    /// Resolves `spec` (a folder, or an `org/name` hub id present in the local HF cache) and reads
    /// its config.json.
    pub fn open(spec: &str) -> Result<Self> {
        let dir = resolve(spec)?;
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(TrainError::MissingModelFile {
                dir: dir.clone(),
                file: "config.json".into(),
                hint: "a Hugging Face model folder has config.json, model.safetensors and tokenizer.json".into(),
            });
        }
        let config = EncoderConfig::from_file(&cfg_path)?;
        config.family()?;
        config
            .activation()
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", cfg_path.display())))?;
        Ok(Self { dir, config })
    }

    /// The base weights.
    pub fn weights(&self) -> Result<Weights> {
        Weights::from_safetensors(&self.dir.join("model.safetensors"), &self.config)
    }

    /// tokenizer.json's path (checked to exist).
    pub fn tokenizer_path(&self) -> Result<PathBuf> {
        let p = self.dir.join("tokenizer.json");
        if !p.exists() {
            return Err(TrainError::MissingModelFile {
                dir: self.dir.clone(),
                file: "tokenizer.json".into(),
                hint: "save a fast tokenizer with transformers' tokenizer.save_pretrained(dir)"
                    .into(),
            });
        }
        Ok(p)
    }
}

/// The snapshot of a cached hub repository (`models--org--name`) that `refs/main` names, as
/// transformers resolves it offline; `None` when the repository is not cached. A `refs/main`
/// naming a snapshot that is not there is an error, never a silent fallback to another revision.
pub fn hub_snapshot(repo: &Path) -> Result<Option<PathBuf>> {
    let refs = repo.join("refs").join("main");
    let Ok(commit) = std::fs::read_to_string(&refs) else {
        return Ok(None);
    };
    let commit = commit.trim();
    let snap = repo.join("snapshots").join(commit);
    if !snap.join("config.json").exists() {
        return Err(TrainError::Invalid(format!(
            "{}: refs/main names snapshot {commit}, which has no config.json in {}",
            repo.display(),
            snap.display()
        )));
    }
    Ok(Some(snap))
}

/// The files of a model folder petnas reads, fetched from the hub when a hub id is not cached.
const HUB_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
/// Optional tokenizer files fetched along (exports copy them when present).
const HUB_EXTRA: [&str; 3] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

/// The Hugging Face hub cache folder: `$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`
/// (as `huggingface_hub` resolves it).
pub fn hub_cache_dir() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(c));
    }
    std::env::var_os("HF_HOME")
        .map(|h| PathBuf::from(h).join("hub"))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        })
}

/// Downloads a hub model's files into the standard cache (with `hf-hub`, which writes the
/// layout transformers reads: blobs, snapshots, `refs/main`) and returns its snapshot folder.
fn download(spec: &str, cache: &Path) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.model(spec.to_string());
    let mut dir = None;
    for f in HUB_FILES {
        let p = repo.get(f).map_err(|e| format!("{f}: {e}"))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    for f in HUB_EXTRA {
        let _ = repo.get(f); // optional: absent in many repositories
    }
    dir.ok_or_else(|| "no snapshot folder".to_string())
}

fn resolve(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.is_dir() {
        return Ok(p);
    }
    let looks_like_id = |s: &str| {
        let parts: Vec<&str> = s.split('/').collect();
        parts.len() <= 2
            && parts.iter().all(|x| {
                !x.is_empty()
                    && x.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            })
            && !s.starts_with('.')
    };
    if !p.exists() && looks_like_id(spec) {
        let cache = hub_cache_dir();
        let (org, name) = spec.split_once('/').unwrap_or(("", spec));
        let folder = if org.is_empty() {
            format!("models--{name}")
        } else {
            format!("models--{org}--{name}")
        };
        if let Some(c) = &cache {
            if let Some(d) = hub_snapshot(&c.join(&folder))? {
                return Ok(d);
            }
        }
        let offline = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|x| x == "1"));
        let tried = match (&cache, offline) {
            (None, _) => "no cache folder (set HF_HOME)".to_string(),
            (Some(c), true) => format!(
                "not in the Hugging Face cache {}; HF_HUB_OFFLINE=1, so no download was tried",
                c.display()
            ),
            (Some(c), false) => match download(spec, c) {
                Ok(d) => return Ok(d),
                Err(e) => format!(
                    "not in the Hugging Face cache {}, and the download failed: {e}",
                    c.display()
                ),
            },
        };
        return Err(TrainError::Invalid(format!(
            "model `{spec}`: no such folder; as a hub id: {tried}. Pass a model folder, or fetch it with `huggingface-cli download {spec}` \
             on a machine that is online (`data/fetch-model` fetches the default all-MiniLM-L6-v2)"
        )));
    }
    Err(TrainError::Invalid(format!(
        "model folder `{spec}` does not exist (run data/fetch-model for the default model)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_snapshot_follows_refs_main_not_the_last_name() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--name");
        for c in ["aaaa", "ffff"] {
            let d = repo.join("snapshots").join(c);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
        }
        assert_eq!(
            hub_snapshot(&repo).unwrap(),
            None,
            "no refs/main: not resolved"
        );
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "aaaa\n").unwrap();
        assert_eq!(
            hub_snapshot(&repo).unwrap(),
            Some(repo.join("snapshots/aaaa"))
        );
        std::fs::write(repo.join("refs/main"), "bbbb").unwrap();
        let e = hub_snapshot(&repo).unwrap_err().to_string();
        assert!(e.contains("refs/main names snapshot bbbb"), "{e}");
    }
}
