//! Our own BERT / RoBERTa encoder with PET modules and HF classification heads.
//!
//! Weights are addressed by HF names (`encoder.layer.3.attention.self.query.weight`), with or without
//! the `bert.` / `roberta.` prefix. Base weights are plain tensors (frozen) unless full fine-tuning
//! asks for them as `Var`s. Heads follow transformers: BERT pooler (dense + tanh on [CLS]) and
//! classifier; RoBERTa `classifier.dense` + tanh + `classifier.out_proj` on `<s>`. RoBERTa position
//! ids start after the padding index (`pad + 1 + i` for real tokens, `pad` for padding).

pub mod cpu;
pub mod fused;
pub mod load;
pub mod ops;
pub mod pet;

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
use petnas_core::arch::{Architecture, ModuleArch};
use petnas_core::inventory::{Activation, EncoderConfig, Family, ModuleType};
use petnas_core::record::{LoraInit, Precision};

use ops::DropoutRng;
use pet::{PetFactory, PetLayerNorm, PetLinear, Role, Trainable};

/// How to build a trainable model.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Outputs of the head: 1 for regression (STS-B), else the class count.
    pub num_labels: usize,
    /// Seeds the head's and the PET tensors' initial values.
    pub seed: u64,
    /// LoRA initialisation.
    pub lora_init: LoraInit,
    /// Train every base weight too (full fine-tuning).
    pub full_finetune: bool,
    /// Parameter dtype.
    pub dtype: DType,
    /// Arithmetic of the frozen matmuls (bf16: on AMX tiles; trained tensors stay `dtype`).
    pub precision: Precision,
}

/// A batch as the encoder takes it. All [batch, seq].
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids (u32).
    pub input_ids: Tensor,
    /// Segment ids (u32).
    pub type_ids: Tensor,
    /// Position ids (u32), family-specific.
    pub position_ids: Tensor,
    /// 1.0 for real tokens, 0.0 for padding (f32).
    pub attention_mask: Tensor,
}

struct Layer {
    query: PetLinear,
    key: PetLinear,
    value: PetLinear,
    attn_out: PetLinear,
    attn_ln: PetLayerNorm,
    inter: PetLinear,
    out: PetLinear,
    out_ln: PetLayerNorm,
}

/// A layer's module, by its type: the Hugging Face path is `ModuleType::path` (one table, in
/// petnas-core's inventory).
enum LayerModule<'a> {
    Linear(&'a PetLinear),
    Norm(&'a PetLayerNorm),
}

impl Layer {
    /// The layer as the fused encoder-layer op takes it; `None` when a base weight is trained.
    fn fused_parts(&self) -> Result<Option<fused::LayerParts>> {
        let lin = |l: &PetLinear| l.fused_parts();
        let (Some(query), Some(key), Some(value), Some(attn_out), Some(inter), Some(out)) = (
            lin(&self.query)?,
            lin(&self.key)?,
            lin(&self.value)?,
            lin(&self.attn_out)?,
            lin(&self.inter)?,
            lin(&self.out)?,
        ) else {
            return Ok(None);
        };
        let (Some(attn_ln), Some(out_ln)) =
            (self.attn_ln.fused_parts()?, self.out_ln.fused_parts()?)
        else {
            return Ok(None);
        };
        Ok(Some(fused::LayerParts {
            query,
            key,
            value,
            attn_out,
            attn_ln,
            inter,
            out,
            out_ln,
        }))
    }

    /// The layer's modules in inventory order (`ModuleType::ALL` without the embeddings
    /// LayerNorm).
    fn modules(&self) -> [(ModuleType, LayerModule<'_>); 8] {
        use LayerModule::{Linear, Norm};
        [
            (ModuleType::Query, Linear(&self.query)),
            (ModuleType::Key, Linear(&self.key)),
            (ModuleType::Value, Linear(&self.value)),
            (ModuleType::AttentionOutput, Linear(&self.attn_out)),
            (ModuleType::AttentionLayerNorm, Norm(&self.attn_ln)),
            (ModuleType::Intermediate, Linear(&self.inter)),
            (ModuleType::Output, Linear(&self.out)),
            (ModuleType::OutputLayerNorm, Norm(&self.out_ln)),
        ]
    }
}

/// The classification head (always trained, counted apart from the PET budget).
enum Head {
    Bert {
        pool: PetLinear,
        cls: PetLinear,
    },
    Roberta {
        dense: PetLinear,
        out_proj: PetLinear,
    },
}

/// A trainable PET encoder with its head.
pub struct EncoderModel {
    cfg: EncoderConfig,
    family: Family,
    word: Tensor,
    pos: Tensor,
    tok_type: Tensor,
    emb_ln: PetLayerNorm,
    layers: Vec<Layer>,
    head: Head,
    trainables: Vec<Trainable>,
    num_heads: usize,
    act: Activation,
    device: Device,
    dtype: DType,
    /// Run each encoder layer as one fused op where it can (see [`fused::encoder_layer`]).
    layer_fusion: bool,
}

/// HF names of the head's tensors for a family: (dense weight, dense bias, out weight, out bias).
pub fn head_names(family: Family) -> [&'static str; 4] {
    match family {
        Family::Bert => [
            "pooler.dense.weight",
            "pooler.dense.bias",
            "classifier.weight",
            "classifier.bias",
        ],
        Family::Roberta => [
            "classifier.dense.weight",
            "classifier.dense.bias",
            "classifier.out_proj.weight",
            "classifier.out_proj.bias",
        ],
    }
}

impl EncoderModel {
    /// Builds the model from base `weights` (HF names, no prefix), an architecture (`None` = no PET
    /// parameters), and the initial PET values at maximal shape (`start`, by PET tensor name).
    /// Head tensors found in `weights` are used; missing ones are initialised as transformers does
    /// (N(0, 0.02) weights, zero biases) from the seed.
    pub fn build(
        cfg: &EncoderConfig,
        weights: &load::Weights,
        arch: Option<&Architecture>,
        start: &HashMap<String, Vec<f32>>,
        opts: &BuildOptions,
        device: &Device,
    ) -> crate::error::Result<Self> {
        let family = cfg.family()?;
        let act = cfg.activation()?;
        if device.is_cpu() {
            // No denormal stalls on this thread and the compute pool, also for library callers
            // that did not run `cpu::init_process` (see `cpu`).
            cpu::ensure_compute_threads(None);
        }
        if let Some(a) = arch {
            a.check_model(cfg)?;
        }
        let by_path: HashMap<&str, &ModuleArch> = arch
            .map(|a| a.modules.iter().map(|m| (m.path.as_str(), m)).collect())
            .unwrap_or_default();
        let mut reg: Vec<Trainable> = Vec::new();
        let h = cfg.hidden_size;
        let dt = opts.dtype;
        // A base weight: frozen tensor, or a Var under full fine-tuning.
        let mut base = |name: &str,
                        shape: &[usize],
                        reg: &mut Vec<Trainable>|
         -> crate::error::Result<Tensor> {
            let t = weights.get(name, shape)?.to_device(device)?.to_dtype(dt)?;
            if opts.full_finetune {
                let var = Var::from_tensor(&t)?;
                let value = var.as_tensor().clone();
                reg.push(Trainable {
                    name: name.to_string(),
                    var,
                    mask: None,
                    role: Role::Base,
                });
                Ok(value)
            } else {
                Ok(t)
            }
        };
        let fac = PetFactory {
            start,
            lora_init: opts.lora_init,
            device,
            dtype: dt,
        };
        let eps = cfg.layer_norm_eps;

        let word = base(
            "embeddings.word_embeddings.weight",
            &[cfg.vocab_size, h],
            &mut reg,
        )?;
        let pos = base(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
            &mut reg,
        )?;
        let tok_type = base(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
            &mut reg,
        )?;
        let ln = |p: &str,
                  reg: &mut Vec<Trainable>,
                  base: &mut dyn FnMut(
            &str,
            &[usize],
            &mut Vec<Trainable>,
        ) -> crate::error::Result<Tensor>|
         -> crate::error::Result<PetLayerNorm> {
            let g = base(&format!("{p}.weight"), &[h], reg)?;
            let b = base(&format!("{p}.bias"), &[h], reg)?;
            Ok(fac.layer_norm(PetLayerNorm::new(g, b, eps), by_path.get(p).copied(), reg)?)
        };
        let lin = |p: &str,
                   i: usize,
                   o: usize,
                   reg: &mut Vec<Trainable>,
                   base: &mut dyn FnMut(
            &str,
            &[usize],
            &mut Vec<Trainable>,
        ) -> crate::error::Result<Tensor>|
         -> crate::error::Result<PetLinear> {
            let w = base(&format!("{p}.weight"), &[o, i], reg)?;
            let b = base(&format!("{p}.bias"), &[o], reg)?;
            Ok(fac.linear(PetLinear::new(w, b), by_path.get(p).copied(), reg)?)
        };
        let emb_ln = ln(
            &ModuleType::EmbeddingsLayerNorm.path(0),
            &mut reg,
            &mut base,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let f = cfg.intermediate_size;
        for i in 0..cfg.num_hidden_layers {
            let path = |t: ModuleType| t.path(i);
            layers.push(Layer {
                query: lin(&path(ModuleType::Query), h, h, &mut reg, &mut base)?,
                key: lin(&path(ModuleType::Key), h, h, &mut reg, &mut base)?,
                value: lin(&path(ModuleType::Value), h, h, &mut reg, &mut base)?,
                attn_out: lin(
                    &path(ModuleType::AttentionOutput),
                    h,
                    h,
                    &mut reg,
                    &mut base,
                )?,
                attn_ln: ln(&path(ModuleType::AttentionLayerNorm), &mut reg, &mut base)?,
                inter: lin(&path(ModuleType::Intermediate), h, f, &mut reg, &mut base)?,
                out: lin(&path(ModuleType::Output), f, h, &mut reg, &mut base)?,
                out_ln: ln(&path(ModuleType::OutputLayerNorm), &mut reg, &mut base)?,
            });
        }
        if opts.precision == Precision::Bf16 {
            // On CPU the fused linear op runs the bf16 products on AMX tiles; on CUDA, or with
            // the fused op switched off (PETNAS_UNFUSED), the composite path runs them through
            // candle's bf16 matmul (cuBLAS on CUDA), with the same bf16 × bf16 → fp32 rounding.
            let composite = !device.is_cpu() || !fused::linear_enabled();
            for l in &mut layers {
                for lin in [
                    &mut l.query,
                    &mut l.key,
                    &mut l.value,
                    &mut l.attn_out,
                    &mut l.inter,
                    &mut l.out,
                ] {
                    lin.use_bf16(composite)?;
                }
            }
        }
        if let Some(a) = arch {
            // Every module of the architecture must have been placed.
            let known: std::collections::HashSet<String> = petnas_core::inventory::inventory(cfg)
                .into_iter()
                .map(|m| m.path)
                .collect();
            if let Some(m) = a.modules.iter().find(|m| !known.contains(&m.path)) {
                return Err(crate::error::TrainError::Invalid(format!(
                    "architecture module `{}` is not a PET-able module of this {family:?} model",
                    m.path
                )));
            }
        }

        // The head: pre-trained tensors when the checkpoint has them, else transformers' init.
        let names = head_names(family);
        let nl = opts.num_labels;
        let shapes: [Vec<usize>; 4] = [vec![h, h], vec![h], vec![nl, h], vec![nl]];
        let mut head_t = Vec::with_capacity(4);
        for (name, shape) in names.iter().zip(shapes.iter()) {
            let t = match weights.try_get(name, shape)? {
                Some(t) => t.to_device(device)?.to_dtype(dt)?,
                None => {
                    let n: usize = shape.iter().product();
                    let v = if name.ends_with(".weight") {
                        pet::normal_values(opts.seed, name, n, 0.02)
                    } else {
                        vec![0.0; n]
                    };
                    Tensor::from_vec(v, shape.as_slice(), device)?.to_dtype(dt)?
                }
            };
            let var = Var::from_tensor(&t)?;
            head_t.push(var.as_tensor().clone());
            reg.push(Trainable {
                name: name.to_string(),
                var,
                mask: None,
                role: Role::Head,
            });
        }
        let pool = PetLinear::new(head_t[0].clone(), head_t[1].clone());
        let cls = PetLinear::new(head_t[2].clone(), head_t[3].clone());
        let head = match family {
            Family::Bert => Head::Bert { pool, cls },
            Family::Roberta => Head::Roberta {
                dense: pool,
                out_proj: cls,
            },
        };
        Ok(Self {
            cfg: cfg.clone(),
            family,
            word,
            pos,
            tok_type,
            emb_ln,
            layers,
            head,
            trainables: reg,
            num_heads: cfg.num_attention_heads,
            act,
            device: device.clone(),
            dtype: dt,
            layer_fusion: true,
        })
    }

    /// Switches the fused encoder-layer op on or off (on by default; `PETNAS_UNFUSED=layer` turns
    /// it off process-wide). Both paths give bit-identical results; this is for the tests and
    /// benchmarks that compare them.
    pub fn set_layer_fusion(&mut self, on: bool) {
        self.layer_fusion = on;
    }

    /// The trainable tensors (PET, head, and base weights under full fine-tuning).
    pub fn trainables(&self) -> &[Trainable] {
        &self.trainables
    }

    /// The model's config.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Where the model lives.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Parameter count by role (kept PET entries only: masked-out entries are not counted).
    pub fn param_count(&self, role: Role) -> crate::error::Result<usize> {
        let mut n = 0;
        for t in self.trainables.iter().filter(|t| t.role == role) {
            n += match &t.mask {
                Some(m) => m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? as usize,
                None => t.var.elem_count(),
            };
        }
        Ok(n)
    }

    /// Current values of the PET tensors (flattened), by name.
    pub fn pet_values(&self) -> Result<BTreeMap<String, Vec<f32>>> {
        let mut out = BTreeMap::new();
        for t in self.trainables.iter().filter(|t| t.role == Role::Pet) {
            out.insert(
                t.name.clone(),
                t.var
                    .as_tensor()
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1()?,
            );
        }
        Ok(out)
    }

    /// Forward pass: last hidden states [batch, seq, hidden] and logits [batch, labels].
    /// `drop` = `Some` in training (dropout active), `None` for evaluation.
    pub fn forward(
        &self,
        batch: &Batch,
        mut drop: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, l) = batch.input_ids.dims2()?;
        let h = self.cfg.hidden_size;
        let p_hidden = self.cfg.hidden_dropout_prob;
        let p_attn = self.cfg.attention_probs_dropout_prob;
        let ids = batch.input_ids.flatten_all()?;
        let we = self.word.index_select(&ids, 0)?;
        let pe = self
            .pos
            .index_select(&batch.position_ids.flatten_all()?, 0)?;
        let te = self
            .tok_type
            .index_select(&batch.type_ids.flatten_all()?, 0)?;
        let x = (we + pe)?.add(&te)?.reshape((b, l, h))?; // [batch, seq, hidden]
        let x = self.emb_ln.forward(&x)?;
        let mut x = ops::dropout(&x, p_hidden, drop.as_deref_mut())?;
        // Additive attention bias: 0 for tokens, -1e9 for padding. [batch, 1, 1, seq]
        let mask_bias =
            ((batch.attention_mask.to_dtype(self.dtype)? - 1.0)? * 1e9)?.reshape((b, 1, 1, l))?;
        let nh = self.num_heads;
        let dh = h / nh;
        let scale = 1.0 / (dh as f64).sqrt();
        let fused_attn = fused::enabled(fused::Kind::Attention, &x);
        use fused::Kind as K;
        let fuse_layers = self.layer_fusion
            && self.act == Activation::GeluErf
            && [K::Linear, K::Attention, K::LayerNorm, K::Dropout, K::Layer]
                .iter()
                .all(|k| fused::enabled(*k, &x));
        for layer in &self.layers {
            if fuse_layers {
                if let Some(parts) = layer.fused_parts()? {
                    // The same counters as the per-op path below, reserved in its order.
                    let mut d = fused::LayerDropout::default();
                    if let Some(rng) = drop.as_deref_mut() {
                        if p_attn > 0.0 {
                            let (seed, base) = rng.reserve(b * nh * l * l);
                            d.attn = Some((seed, base, p_attn as f32));
                        }
                        if p_hidden > 0.0 {
                            let (seed, base) = rng.reserve(b * l * h);
                            d.hidden1 = Some((seed, base, p_hidden as f32));
                            let (seed, base) = rng.reserve(b * l * h);
                            d.hidden2 = Some((seed, base, p_hidden as f32));
                        }
                    }
                    x = fused::encoder_layer(&x, &batch.attention_mask, nh, scale, &parts, d)?;
                    continue;
                }
            }
            let q = layer.query.forward(&x)?; // [batch, seq, hidden]
            let k = layer.key.forward(&x)?;
            let v = layer.value.forward(&x)?;
            let ctx = if fused_attn {
                // One op over batch × heads; draws the dropout mask at the same counters as below.
                let drop_at = match drop.as_deref_mut() {
                    Some(rng) if p_attn > 0.0 => {
                        let (seed, base) = rng.reserve(b * nh * l * l);
                        Some((seed, base, p_attn as f32))
                    }
                    _ => None,
                };
                fused::attention(&q, &k, &v, &batch.attention_mask, nh, scale, drop_at)?
            } else {
                let heads = |t: Tensor| -> Result<Tensor> {
                    t.reshape((b, l, nh, dh))?.transpose(1, 2)?.contiguous()
                };
                let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?); // [batch, heads, seq, dh]
                let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask_bias)?; // [batch, heads, seq, seq]
                let probs = ops::softmax_last(&scores)?;
                let probs = ops::dropout_composite(&probs, p_attn, drop.as_deref_mut())?;
                probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))? // [batch, seq, hidden]
            };
            let a = layer.attn_out.forward(&ctx)?;
            let a = ops::dropout(&a, p_hidden, drop.as_deref_mut())?;
            let a = layer.attn_ln.forward(&(a + &x)?)?;
            let i = layer.inter.forward_activated(&a, self.act)?;
            let o = layer.out.forward(&i)?;
            let o = ops::dropout(&o, p_hidden, drop.as_deref_mut())?;
            x = layer.out_ln.forward(&(o + &a)?)?;
        }
        let first = x.i((.., 0, ..))?; // [batch, hidden]
        let logits = match &self.head {
            Head::Bert { pool, cls } => {
                let pooled = pool.forward(&first)?.tanh()?;
                let pooled = ops::dropout(&pooled, p_hidden, drop.as_deref_mut())?;
                cls.forward(&pooled)?
            }
            Head::Roberta { dense, out_proj } => {
                let z = ops::dropout(&first, p_hidden, drop.as_deref_mut())?;
                let z = dense.forward(&z)?.tanh()?;
                let z = ops::dropout(&z, p_hidden, drop.as_deref_mut())?;
                out_proj.forward(&z)?
            }
        };
        Ok((x, logits))
    }

    /// Effective LoRA factors per module path in PEFT's layout: (`lora_A` [r, in], `lora_B`
    /// [out, r]) with `lora_B · lora_A` equal to this module's ΔW (masks applied; the zero-offset
    /// init appended as extra ranks with a negated B).
    pub fn lora_factors(&self) -> Result<Vec<(String, (Tensor, Tensor))>> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (t, m) in l.modules() {
                if let LayerModule::Linear(lin) = m {
                    if let Some(f) = lin.lora_factors()? {
                        out.push((t.path(i), f));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Merged base weights (HF names, no prefix) with every Δb and U·Vᵀ folded in, plus the head:
    /// a plain model with the same outputs and no inference overhead.
    pub fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                self.word.detach(),
            ),
            (
                "embeddings.position_embeddings.weight".to_string(),
                self.pos.detach(),
            ),
            (
                "embeddings.token_type_embeddings.weight".to_string(),
                self.tok_type.detach(),
            ),
        ];
        let push_ln =
            |out: &mut Vec<(String, Tensor)>, p: String, ln: &PetLayerNorm| -> Result<()> {
                let (g, b) = ln.merged()?;
                out.push((format!("{p}.weight"), g));
                out.push((format!("{p}.bias"), b));
                Ok(())
            };
        push_ln(
            &mut out,
            ModuleType::EmbeddingsLayerNorm.path(0),
            &self.emb_ln,
        )?;
        let push_lin =
            |out: &mut Vec<(String, Tensor)>, p: String, lin: &PetLinear| -> Result<()> {
                let (w, b) = lin.merged()?;
                out.push((format!("{p}.weight"), w));
                out.push((format!("{p}.bias"), b));
                Ok(())
            };
        for (i, l) in self.layers.iter().enumerate() {
            for (t, m) in l.modules() {
                match m {
                    LayerModule::Linear(lin) => push_lin(&mut out, t.path(i), lin)?,
                    LayerModule::Norm(n) => push_ln(&mut out, t.path(i), n)?,
                }
            }
        }
        let names = head_names(self.family);
        let (a, c) = match &self.head {
            Head::Bert { pool, cls } => (pool, cls),
            Head::Roberta { dense, out_proj } => (dense, out_proj),
        };
        let (w0, b0) = a.merged()?;
        let (w1, b1) = c.merged()?;
        for (n, t) in names.iter().zip([w0, b0, w1, b1]) {
            out.push((n.to_string(), t));
        }
        Ok(out)
    }
}
