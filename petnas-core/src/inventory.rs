//! The encoder's modules that PET can touch, named by their Hugging Face paths.
//!
//! Lawton et al. (2023), Section 3.1: the search space holds a bias update Δb for every bias
//! vector of the encoder and a LoRA update ΔW = U·Vᵀ for chosen linear modules. This module
//! lists those modules for a BERT/RoBERTa config, in a fixed order that every mask, score
//! tensor, figure axis and checkpoint key follows.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::CoreError;

fn default_hidden_act() -> String {
    "gelu".to_string()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_max_position_embeddings() -> usize {
    512
}
fn default_type_vocab_size() -> usize {
    2
}

/// A serde mirror of the fields of a Hugging Face `config.json` that a BERT/RoBERTa encoder
/// needs. Unknown fields are ignored; fields HF may omit take HF's defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EncoderConfig {
    /// `"bert"`, `"roberta"`, `"xlm-roberta"`, `"camembert"`...
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size (model width).
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Activation of the feed-forward block (default `"gelu"`).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Dropout on hidden states (default 0.1).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (default 0.1).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Number of position embeddings (default 512).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Number of token types (default 2; RoBERTa uses 1).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (default 1e-12).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id (default 0; RoBERTa uses 1, which also offsets its positions).
    #[serde(default)]
    pub pad_token_id: usize,
}

/// Encoder family: decides weight prefixes, position ids and the classification head.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// BERT (and MiniLM, which uses BERT's layout).
    Bert,
    /// RoBERTa, XLM-RoBERTa, CamemBERT.
    Roberta,
}

impl Family {
    /// The HF weight prefix of the encoder (`"bert"` or `"roberta"`).
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
        }
    }
}

/// The feed-forward activation of a BERT/RoBERTa-family config (`hidden_act`), as transformers'
/// `ACT2FN` defines each name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: x·Φ(x) with the exact (erf) Φ.
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation
    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu`, `swish`: x·σ(x).
    Silu,
}

impl EncoderConfig {
    /// The activation `hidden_act` names; an unknown name is an error naming the field, never a
    /// silent GELU.
    pub fn activation(&self) -> Result<Activation, CoreError> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(CoreError::UnknownActivation {
                name: other.to_string(),
            }),
        }
    }

    /// The longest sequence the position embeddings can encode: `max_position_embeddings`, less
    /// RoBERTa's offset (its positions start at `pad_token_id + 1`).
    pub fn max_len_limit(&self) -> Result<usize, CoreError> {
        Ok(match self.family()? {
            Family::Bert => self.max_position_embeddings,
            Family::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id + 1),
        })
    }

    /// Reads a HF `config.json`; the error names the file and the serde position.
    pub fn from_file(path: &Path) -> Result<Self, CoreError> {
        crate::io::read_json(path)
    }

    /// The encoder family of `model_type`.
    pub fn family(&self) -> Result<Family, CoreError> {
        match self.model_type.as_str() {
            "bert" => Ok(Family::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Ok(Family::Roberta),
            other => Err(CoreError::UnknownFamily {
                model_type: other.to_string(),
            }),
        }
    }

    /// A tiny config for tests: 2 layers, hidden 32, 4 heads, intermediate 64, vocab 100,
    /// 64 positions, no dropout settings changed.
    pub fn tiny(family: Family) -> Self {
        let roberta = family == Family::Roberta;
        EncoderConfig {
            model_type: if roberta { "roberta" } else { "bert" }.to_string(),
            vocab_size: 100,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            hidden_act: "gelu".to_string(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 64,
            type_vocab_size: if roberta { 1 } else { 2 },
            layer_norm_eps: if roberta { 1e-5 } else { 1e-12 },
            pad_token_id: if roberta { 1 } else { 0 },
        }
    }

    /// Number of encoder parameters trained by full fine-tuning: embeddings (word, position,
    /// token type, LayerNorm) and all layers. The BERT pooler is excluded: it feeds only the
    /// classification head and is counted with it (the paper counts the head separately).
    pub fn encoder_params(&self) -> usize {
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let emb =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * (2 * h) + (h * i + i) + (i * h + h);
        emb + self.num_hidden_layers * layer
    }
}

/// The kind of encoder module a PET update attaches to (the paper's figure axes).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ModuleType {
    /// `embeddings.LayerNorm`.
    EmbeddingsLayerNorm,
    /// `attention.self.query`.
    Query,
    /// `attention.self.key`.
    Key,
    /// `attention.self.value`.
    Value,
    /// `attention.output.dense`.
    AttentionOutput,
    /// `attention.output.LayerNorm`.
    AttentionLayerNorm,
    /// `intermediate.dense` (FFN in).
    Intermediate,
    /// `output.dense` (FFN out).
    Output,
    /// `output.LayerNorm`.
    OutputLayerNorm,
}

impl ModuleType {
    /// All module types, in inventory order within a layer.
    pub const ALL: [ModuleType; 9] = [
        ModuleType::EmbeddingsLayerNorm,
        ModuleType::Query,
        ModuleType::Key,
        ModuleType::Value,
        ModuleType::AttentionOutput,
        ModuleType::AttentionLayerNorm,
        ModuleType::Intermediate,
        ModuleType::Output,
        ModuleType::OutputLayerNorm,
    ];

    /// The snake_case name (same as serde).
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleType::EmbeddingsLayerNorm => "embeddings_layer_norm",
            ModuleType::Query => "query",
            ModuleType::Key => "key",
            ModuleType::Value => "value",
            ModuleType::AttentionOutput => "attention_output",
            ModuleType::AttentionLayerNorm => "attention_layer_norm",
            ModuleType::Intermediate => "intermediate",
            ModuleType::Output => "output",
            ModuleType::OutputLayerNorm => "output_layer_norm",
        }
    }

    /// A short label for figure axes, e.g. `"attn.query"`.
    pub fn label(self) -> &'static str {
        match self {
            ModuleType::EmbeddingsLayerNorm => "emb.ln",
            ModuleType::Query => "attn.query",
            ModuleType::Key => "attn.key",
            ModuleType::Value => "attn.value",
            ModuleType::AttentionOutput => "attn.out",
            ModuleType::AttentionLayerNorm => "attn.ln",
            ModuleType::Intermediate => "ffn.in",
            ModuleType::Output => "ffn.out",
            ModuleType::OutputLayerNorm => "ffn.ln",
        }
    }

    /// Linear or LayerNorm.
    pub fn kind(self) -> ModuleKind {
        match self {
            ModuleType::EmbeddingsLayerNorm
            | ModuleType::AttentionLayerNorm
            | ModuleType::OutputLayerNorm => ModuleKind::LayerNorm,
            _ => ModuleKind::Linear,
        }
    }

    /// The module path inside layer `i` (or the embeddings LayerNorm, which ignores `i`).
    pub fn path(self, i: usize) -> String {
        match self {
            ModuleType::EmbeddingsLayerNorm => "embeddings.LayerNorm".to_string(),
            ModuleType::Query => format!("encoder.layer.{i}.attention.self.query"),
            ModuleType::Key => format!("encoder.layer.{i}.attention.self.key"),
            ModuleType::Value => format!("encoder.layer.{i}.attention.self.value"),
            ModuleType::AttentionOutput => format!("encoder.layer.{i}.attention.output.dense"),
            ModuleType::AttentionLayerNorm => {
                format!("encoder.layer.{i}.attention.output.LayerNorm")
            }
            ModuleType::Intermediate => format!("encoder.layer.{i}.intermediate.dense"),
            ModuleType::Output => format!("encoder.layer.{i}.output.dense"),
            ModuleType::OutputLayerNorm => format!("encoder.layer.{i}.output.LayerNorm"),
        }
    }

    fn valid_names() -> String {
        ModuleType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
            + " (aliases: q, k, v, attn_out, ffn_in, ffn_out, emb_ln, attn_ln, ffn_ln, or the figure labels)"
    }
}

impl fmt::Display for ModuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModuleType {
    type Err = CoreError;

    /// Accepts the snake_case name, the figure label, or a short alias.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(m) = ModuleType::ALL
            .iter()
            .find(|m| m.as_str() == t || m.label() == t)
        {
            return Ok(*m);
        }
        Ok(match t {
            "q" => ModuleType::Query,
            "k" => ModuleType::Key,
            "v" => ModuleType::Value,
            "attn_out" | "o" => ModuleType::AttentionOutput,
            "ffn_in" => ModuleType::Intermediate,
            "ffn_out" => ModuleType::Output,
            "emb_ln" => ModuleType::EmbeddingsLayerNorm,
            "attn_ln" => ModuleType::AttentionLayerNorm,
            "ffn_ln" => ModuleType::OutputLayerNorm,
            _ => {
                return Err(CoreError::UnknownModuleType {
                    name: t.to_string(),
                    valid: ModuleType::valid_names(),
                })
            }
        })
    }
}

/// Whether a module is a linear map (can carry LoRA) or a LayerNorm (bias only).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// A dense layer `y = x·Wᵀ + b` with `W: [out, in]`.
    Linear,
    /// A LayerNorm with weight and bias of size `hidden`.
    LayerNorm,
}

/// One encoder module that PET can touch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModuleInfo {
    /// HF path without the `bert.`/`roberta.` prefix, e.g. `encoder.layer.3.attention.self.query`.
    pub path: String,
    /// The module type.
    pub module_type: ModuleType,
    /// Layer index; `None` for the embeddings LayerNorm.
    pub layer: Option<usize>,
    /// Input dimension (hidden for LayerNorm).
    pub in_dim: usize,
    /// Output dimension = length of the bias vector.
    pub out_dim: usize,
    /// Linear or LayerNorm.
    pub kind: ModuleKind,
}

/// All PET-capable modules of `cfg`, in the canonical order: the embeddings LayerNorm, then
/// per layer query, key, value, attention output, attention LayerNorm, intermediate, output,
/// output LayerNorm. BERT and RoBERTa share the layout.
pub fn inventory(cfg: &EncoderConfig) -> Vec<ModuleInfo> {
    let h = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let mut out = Vec::with_capacity(1 + 8 * cfg.num_hidden_layers);
    let info = |t: ModuleType, layer: Option<usize>| {
        let (in_dim, out_dim) = match t {
            ModuleType::Intermediate => (h, i),
            ModuleType::Output => (i, h),
            _ => (h, h),
        };
        ModuleInfo {
            path: t.path(layer.unwrap_or(0)),
            module_type: t,
            layer,
            in_dim,
            out_dim,
            kind: t.kind(),
        }
    };
    out.push(info(ModuleType::EmbeddingsLayerNorm, None));
    for l in 0..cfg.num_hidden_layers {
        for t in &ModuleType::ALL[1..] {
            out.push(info(*t, Some(l)));
        }
    }
    out
}

/// Name of the bias delta of module `path`: `"{path}.bias_delta"`, shape `[out]`.
pub fn bias_delta_name(path: &str) -> String {
    format!("{path}.bias_delta")
}

/// Name of the LoRA factor U of module `path`: `"{path}.lora_u"`, shape `[in, r]`.
pub fn lora_u_name(path: &str) -> String {
    format!("{path}.lora_u")
}

/// Name of the LoRA factor V of module `path`: `"{path}.lora_v"`, shape `[out, r]`.
pub fn lora_v_name(path: &str) -> String {
    format!("{path}.lora_v")
}

#[cfg(test)]
pub(crate) fn minilm() -> EncoderConfig {
    EncoderConfig {
        model_type: "bert".into(),
        vocab_size: 30522,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        hidden_act: "gelu".into(),
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minilm_inventory_counts() {
        let inv = inventory(&minilm());
        assert_eq!(inv.len(), 1 + 6 * 8);
        // 384 (embeddings LN) + 6 × (q,k,v,attn-out 4×384 + attn LN 384 + intermediate 1536
        // + output 384 + output LN 384) = 384 + 6 × 4224 = 25 728.
        let bias: usize = inv.iter().map(|m| m.out_dim).sum();
        assert_eq!(bias, 25_728);
        assert_eq!(inv[0].path, "embeddings.LayerNorm");
        assert_eq!(inv[0].layer, None);
        assert_eq!(inv[1].path, "encoder.layer.0.attention.self.query");
        assert_eq!(inv[4].path, "encoder.layer.0.attention.output.dense");
        assert_eq!(inv[5].path, "encoder.layer.0.attention.output.LayerNorm");
        assert_eq!(inv[7].path, "encoder.layer.0.output.dense");
        assert_eq!((inv[7].in_dim, inv[7].out_dim), (1536, 384));
        assert_eq!((inv[6].in_dim, inv[6].out_dim), (384, 1536));
        assert_eq!(inv[48].path, "encoder.layer.5.output.LayerNorm");
        assert_eq!(inv[48].kind, ModuleKind::LayerNorm);
    }

    #[test]
    fn minilm_encoder_params() {
        // nreimers/MiniLM-L6-H384-uncased has 22,713,216 parameters with its pooler (147,840).
        assert_eq!(minilm().encoder_params(), 22_713_216 - (384 * 384 + 384));
    }

    #[test]
    fn config_from_file_defaults_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"model_type":"roberta","vocab_size":50265,"hidden_size":768,"num_hidden_layers":12,
               "num_attention_heads":12,"intermediate_size":3072,"max_position_embeddings":514,
               "type_vocab_size":1,"pad_token_id":1,"architectures":["RobertaForMaskedLM"]}"#,
        )
        .unwrap();
        let c = EncoderConfig::from_file(&p).unwrap();
        assert_eq!(c.family().unwrap(), Family::Roberta);
        assert_eq!(c.hidden_act, "gelu");
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.pad_token_id, 1);
        std::fs::write(&p, r#"{"model_type":"bert","vocab_size":"x"}"#).unwrap();
        let e = EncoderConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("line 1"), "{e}");
        let mut c = EncoderConfig::tiny(Family::Bert);
        c.model_type = "gpt2".into();
        assert!(c.family().unwrap_err().to_string().contains("gpt2"));
    }

    #[test]
    fn module_type_names_round_trip() {
        for t in ModuleType::ALL {
            assert_eq!(t.as_str().parse::<ModuleType>().unwrap(), t);
            assert_eq!(t.label().parse::<ModuleType>().unwrap(), t);
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
        assert_eq!("q".parse::<ModuleType>().unwrap(), ModuleType::Query);
        assert_eq!(
            "ffn_in".parse::<ModuleType>().unwrap(),
            ModuleType::Intermediate
        );
        assert!("qq"
            .parse::<ModuleType>()
            .unwrap_err()
            .to_string()
            .contains("\"qq\""));
    }

    #[test]
    fn tiny_configs() {
        for f in [Family::Bert, Family::Roberta] {
            let c = EncoderConfig::tiny(f);
            assert_eq!(c.family().unwrap(), f);
            assert_eq!(inventory(&c).len(), 17);
        }
    }
}
